//! A pipelined connection to Titan's plaintext TCP protocol (README.md, "Protocol"): many
//! workers share it, requests are written as they come and replies are matched
//! to requests by order.

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader, BufWriter};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::{mpsc, oneshot};

/// Requests queued for writing on one connection; senders wait when full.
const MAX_QUEUED_REQUESTS: usize = 1024;
/// Requests written but not yet answered on one connection.
const MAX_INFLIGHT_REQUESTS: usize = 4096;
/// Longest reply line accepted; a GET reply is one value plus a few bytes.
pub const MAX_REPLY_BYTES: usize = 2 * 1024 * 1024;

type Reply = oneshot::Sender<String>;

/// Handle to one pipelined connection. Cloning is not needed: workers share
/// it through an `Arc`.
#[derive(Debug)]
pub struct TcpConn {
    /// Lines to write, each with the slot for its reply.
    requests: mpsc::Sender<(String, Reply)>,
}

/// Why a request got no reply.
#[derive(Debug, thiserror::Error)]
pub enum TcpError {
    #[error("connect to {0}: {1}")]
    Connect(String, std::io::Error),
    #[error("connection closed before the reply")]
    Closed,
}

impl TcpConn {
    /// Connects and starts the writer and reader tasks.
    pub async fn connect(addr: &str) -> Result<TcpConn, TcpError> {
        let stream = TcpStream::connect(addr)
            .await
            .map_err(|e| TcpError::Connect(addr.to_string(), e))?;
        // Latency matters more than packet count for a benchmark client.
        let _ = stream.set_nodelay(true);
        let (read, write) = stream.into_split();
        let (req_tx, req_rx) = mpsc::channel(MAX_QUEUED_REQUESTS);
        let (pending_tx, pending_rx) = mpsc::channel(MAX_INFLIGHT_REQUESTS);
        tokio::spawn(write_loop(write, req_rx, pending_tx));
        tokio::spawn(read_loop(read, pending_rx));
        Ok(TcpConn { requests: req_tx })
    }

    /// Sends one request line (without newline) and waits for its reply line
    /// (without newline).
    pub async fn call(&self, line: String) -> Result<String, TcpError> {
        let (tx, rx) = oneshot::channel();
        self.requests
            .send((line, tx))
            .await
            .map_err(|_| TcpError::Closed)?;
        rx.await.map_err(|_| TcpError::Closed)
    }
}

/// Writes queued requests, flushing only when the queue is momentarily empty
/// so that concurrent requests share a syscall.
async fn write_loop(
    write: OwnedWriteHalf,
    mut requests: mpsc::Receiver<(String, Reply)>,
    pending: mpsc::Sender<Reply>,
) {
    let mut out = BufWriter::new(write);
    while let Some((line, reply)) = requests.recv().await {
        // Register the reply slot before writing, so replies stay in order.
        if pending.send(reply).await.is_err() {
            return;
        }
        let ok = out.write_all(line.as_bytes()).await.is_ok() && out.write_all(b"\n").await.is_ok();
        if !ok {
            return;
        }
        if requests.is_empty() && out.flush().await.is_err() {
            return;
        }
    }
}

/// Reads reply lines and hands each to the oldest waiting request. On EOF or
/// error every waiting request is dropped, which its caller sees as `Closed`.
async fn read_loop(read: OwnedReadHalf, mut pending: mpsc::Receiver<Reply>) {
    let mut input = BufReader::new(read);
    let mut line = String::new();
    loop {
        line.clear();
        match (&mut input)
            .take(MAX_REPLY_BYTES as u64)
            .read_line(&mut line)
            .await
        {
            Ok(0) | Err(_) => return,
            Ok(_) if !line.ends_with('\n') => return,
            Ok(_) => {}
        }
        let Some(reply) = pending.recv().await else {
            return;
        };
        let _ = reply.send(line.trim_end_matches(['\r', '\n']).to_string());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    /// A fake server that answers each line with "R <line>" after reading a
    /// whole batch, so requests really are pipelined.
    async fn echo_server() -> String {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let addr = listener
            .local_addr()
            .unwrap_or_else(|e| panic!("{e}"))
            .to_string();
        tokio::spawn(async move {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let (r, mut w) = stream.into_split();
            let mut lines = BufReader::new(r).lines();
            while let Ok(Some(l)) = lines.next_line().await {
                if w.write_all(format!("R {l}\n").as_bytes()).await.is_err() {
                    return;
                }
            }
        });
        addr
    }

    #[tokio::test]
    async fn concurrent_calls_get_their_own_replies_in_order() {
        let conn = std::sync::Arc::new(
            TcpConn::connect(&echo_server().await)
                .await
                .unwrap_or_else(|e| panic!("{e}")),
        );
        let mut tasks = Vec::new();
        for i in 0..200 {
            let conn = conn.clone();
            tasks.push(tokio::spawn(async move {
                (i, conn.call(format!("GET k{i}")).await)
            }));
        }
        for t in tasks {
            let (i, reply) = t.await.unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(
                reply.unwrap_or_else(|e| panic!("{e}")),
                format!("R GET k{i}")
            );
        }
    }

    #[tokio::test]
    async fn closed_server_fails_calls_instead_of_hanging() {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let addr = listener
            .local_addr()
            .unwrap_or_else(|e| panic!("{e}"))
            .to_string();
        tokio::spawn(async move {
            let _ = listener.accept().await; // accept, then drop: EOF
        });
        let conn = TcpConn::connect(&addr)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(matches!(
            conn.call("PING".into()).await,
            Err(TcpError::Closed)
        ));
    }
}
