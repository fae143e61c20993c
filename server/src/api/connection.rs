//! Bytes → request lines for one client connection, with an owned, bounded
//! read buffer. Lines over `max_line_bytes` are discarded as they stream in
//! (never buffered whole) and surface as [`Frame::TooLong`].
//!
//! A line longer than one read chunk grows the buffer only with bytes taken
//! from the server-wide [`MemoryBudget`]; when the budget is spent the line is
//! discarded and surfaces as [`Frame::Overloaded`]. The bytes charged for a
//! line move with its request ([`FrameReader::take_charge`]) until the reply
//! is written, so all connections together never hold more than the budget
//! beyond one chunk each.

use std::sync::Arc;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

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
    /// A line that did not fit the server-wide memory budget (discarded).
    Overloaded,
}

/// The server-wide bound on request bytes buffered or in flight over TCP
/// (`MAX_TCP_BUFFERED_BYTES`): one permit per byte.
pub type MemoryBudget = Arc<Semaphore>;

/// Takes `bytes` from `budget` into `charge`; false when the budget is spent.
pub fn charge_more(
    budget: &MemoryBudget,
    charge: &mut Option<OwnedSemaphorePermit>,
    bytes: usize,
) -> bool {
    if bytes == 0 {
        return true;
    }
    let Ok(n) = u32::try_from(bytes) else {
        return false;
    };
    match budget.clone().try_acquire_many_owned(n) {
        Ok(p) => {
            match charge {
                Some(c) => c.merge(p),
                None => *charge = Some(p),
            }
            true
        }
        Err(_) => false,
    }
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
    /// Where bytes beyond the first chunk come from (None: unbounded, tests).
    budget: Option<MemoryBudget>,
    /// Bytes taken from the budget for the line being read.
    charge: Option<OwnedSemaphorePermit>,
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
            budget: None,
            charge: None,
        }
    }

    /// Draws buffer growth past one chunk from `budget`.
    pub fn with_budget(mut self, budget: MemoryBudget) -> Self {
        self.budget = Some(budget);
        self
    }

    /// The budget bytes charged for the frame just returned; the caller
    /// keeps them until that request is answered. An oversized buffer is
    /// dropped here, so the connection holds one chunk again.
    pub fn take_charge(&mut self) -> Option<OwnedSemaphorePermit> {
        if self.buffer.capacity() > 2 * READ_CHUNK_BYTES && self.buffer.len() <= READ_CHUNK_BYTES {
            let mut fresh = BytesMut::with_capacity(READ_CHUNK_BYTES);
            fresh.extend_from_slice(&self.buffer);
            self.buffer = fresh;
        }
        self.charge.take()
    }

    /// After the buffer grew: charge its capacity beyond one chunk to the
    /// budget, or discard the line (false) when the budget is spent.
    fn charge_growth(&mut self) -> bool {
        let Some(budget) = &self.budget else {
            return true;
        };
        let want = self.buffer.capacity().saturating_sub(READ_CHUNK_BYTES);
        let have = self.charge.as_ref().map_or(0, |c| c.num_permits());
        if want <= have || charge_more(budget, &mut self.charge, want - have) {
            return true;
        }
        self.charge = None;
        self.buffer = BytesMut::with_capacity(READ_CHUNK_BYTES);
        self.discarding = true;
        false
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
            if !self.discarding && !self.charge_growth() {
                return Ok(Some(Frame::Overloaded));
            }
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
    async fn a_line_beyond_the_memory_budget_is_refused_and_the_next_line_parses() {
        let budget: MemoryBudget = Arc::new(Semaphore::new(64 << 10));
        let mut input = b"SET k ".to_vec();
        input.resize(200 << 10, b'x');
        input.extend_from_slice(b"\nPING\n");
        let mut r = FrameReader::new(&input[..], 1 << 20).with_budget(budget.clone());
        assert_eq!(r.read_frame().await.unwrap(), Some(Frame::Overloaded));
        assert_eq!(r.take_charge().map(|c| c.num_permits()), None);
        assert_eq!(
            budget.available_permits(),
            64 << 10,
            "nothing stays charged"
        );
        assert_eq!(
            r.read_frame().await.unwrap(),
            Some(Frame::Request(Request::Ping))
        );
    }

    #[tokio::test]
    async fn a_long_line_within_the_budget_carries_its_charge_until_answered() {
        let budget: MemoryBudget = Arc::new(Semaphore::new(1 << 20));
        let mut input = b"SET k ".to_vec();
        input.resize(100 << 10, b'x');
        input.extend_from_slice(b"\n");
        let mut r = FrameReader::new(&input[..], 1 << 20).with_budget(budget.clone());
        assert!(matches!(
            r.read_frame().await.unwrap(),
            Some(Frame::Request(Request::Set { .. }))
        ));
        let charge = r.take_charge().expect("a long line is charged");
        assert!(charge.num_permits() >= (100 << 10) - READ_CHUNK_BYTES);
        assert!(
            charge.num_permits() <= 4 * (100 << 10),
            "charged what it holds"
        );
        assert_eq!(budget.available_permits(), (1 << 20) - charge.num_permits());
        drop(charge);
        assert_eq!(budget.available_permits(), 1 << 20);
    }

    #[tokio::test]
    async fn garbage_bytes_become_malformed_frames() {
        let got = frames(b"\xff\xfe\x00\n\nPING\r\n", 64).await;
        assert!(matches!(got[0], Frame::Malformed(_)), "{got:?}");
        assert_eq!(got[1], Frame::Request(Request::Ping));
    }
}
