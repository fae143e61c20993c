//! Bytes → request lines for one client connection, with an owned, bounded
//! read buffer. Lines over `max_line_bytes` are discarded as they stream in
//! (never buffered whole) and surface as [`Frame::TooLong`].

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt};

use super::protocol::{self, Check, ParseError, Request};

/// One unit of input from the client, in arrival order.
#[derive(Debug, PartialEq, Eq)]
pub enum Frame {
    /// A well-formed request.
    Request(Request),
    /// A line that did not parse.
    Malformed(ParseError),
    /// A line longer than the limit (already discarded).
    TooLong,
}

/// The read side of a client connection.
#[derive(Debug)]
pub struct FrameReader<R> {
    /// The socket's read half.
    stream: R,
    /// Bytes received but not yet parsed; never grows past `max_line_bytes` + one read.
    buffer: BytesMut,
    /// Longest accepted line.
    max_line_bytes: usize,
    /// Set while skipping the rest of an oversize line.
    discarding: bool,
}

/// Bytes requested from the socket per read.
const READ_CHUNK_BYTES: usize = 16 * 1024;

impl<R: AsyncRead + Unpin> FrameReader<R> {
    /// Wraps a read half.
    pub fn new(stream: R, max_line_bytes: usize) -> Self {
        FrameReader {
            stream,
            buffer: BytesMut::with_capacity(READ_CHUNK_BYTES),
            max_line_bytes,
            discarding: false,
        }
    }

    /// The next frame if one is already buffered, without reading.
    pub fn try_frame(&mut self) -> Option<Frame> {
        loop {
            if self.discarding {
                match self.buffer.iter().position(|&b| b == b'\n') {
                    Some(nl) => {
                        self.buffer.advance(nl + 1);
                        self.discarding = false;
                    }
                    None => {
                        self.buffer.clear();
                        return None;
                    }
                }
            }
            match protocol::check(&self.buffer, self.max_line_bytes) {
                Check::Incomplete => return None,
                Check::TooLong => {
                    self.discarding = true;
                    return Some(Frame::TooLong);
                }
                Check::Complete { line_len, consumed } => {
                    let frame = match protocol::parse(&self.buffer[..line_len]) {
                        Ok(req) => Frame::Request(req),
                        // Blank lines are ignored, like a shell prompt would.
                        Err(ParseError::Empty) => {
                            self.buffer.advance(consumed);
                            continue;
                        }
                        Err(e) => Frame::Malformed(e),
                    };
                    self.buffer.advance(consumed);
                    return Some(frame);
                }
            }
        }
    }

    /// Reads until a frame is available. `Ok(None)` means the client closed
    /// its write side; a trailing unterminated line is treated as a last line.
    pub async fn read_frame(&mut self) -> std::io::Result<Option<Frame>> {
        loop {
            if let Some(frame) = self.try_frame() {
                return Ok(Some(frame));
            }
            self.buffer.reserve(READ_CHUNK_BYTES);
            if self.stream.read_buf(&mut self.buffer).await? == 0 {
                return Ok(self.final_frame());
            }
        }
    }

    fn final_frame(&mut self) -> Option<Frame> {
        if self.discarding || self.buffer.is_empty() {
            self.buffer.clear();
            return None;
        }
        self.buffer.extend_from_slice(b"\n");
        let frame = self.try_frame();
        self.buffer.clear();
        frame
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    async fn frames(input: &[u8], max: usize) -> Vec<Frame> {
        let mut r = FrameReader::new(input, max);
        let mut out = Vec::new();
        while let Some(f) = r.read_frame().await.expect("in-memory read") {
            out.push(f);
        }
        out
    }

    #[tokio::test]
    async fn oversize_line_is_reported_once_and_next_line_still_parses() {
        let mut input = vec![b'x'; 100];
        input.extend_from_slice(b"\nPING\n");
        let got = frames(&input, 16).await;
        assert_eq!(got, vec![Frame::TooLong, Frame::Request(Request::Ping)]);
    }

    #[tokio::test]
    async fn unterminated_last_line_is_still_answered() {
        let got = frames(b"GET a\nGET b", 64).await;
        assert_eq!(
            got,
            vec![
                Frame::Request(Request::Get {
                    key: Bytes::from_static(b"a")
                }),
                Frame::Request(Request::Get {
                    key: Bytes::from_static(b"b")
                }),
            ]
        );
    }

    #[tokio::test]
    async fn garbage_bytes_become_malformed_frames() {
        let got = frames(b"\xff\xfe\x00\n\nPING\r\n", 64).await;
        assert!(matches!(got[0], Frame::Malformed(_)), "{got:?}");
        assert_eq!(got[1], Frame::Request(Request::Ping));
    }
}
