//! One client connection: reads frames, dispatches each to the node as its
//! own future, and writes replies strictly in request order while later
//! requests are already in flight (pipelining, bounded per connection).

use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use futures::stream::FuturesOrdered;
use futures::{FutureExt, StreamExt};
use tokio::io::{AsyncWriteExt, BufWriter};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::{oneshot, watch};

use super::connection::{Frame, FrameReader};
use super::protocol::{Reply, Request};
use super::server::ListenerConfig;
use crate::metrics::{Metrics, Op};
use crate::node::handle::{GetResult, get_result};
use crate::node::{Condition, NodeError, NodeHandle, ReadQuery, WriteOp};

type ReplyFuture = Pin<Box<dyn Future<Output = Reply> + Send>>;

/// Serves one connection.
pub struct Handler {
    /// Incoming frames.
    reader: FrameReader<OwnedReadHalf>,
    /// Buffered reply writer.
    writer: BufWriter<OwnedWriteHalf>,
    /// Listener settings (pipelining window).
    config: ListenerConfig,
    /// Where requests go.
    node: NodeHandle,
    /// Per-op latency histograms.
    metrics: Arc<Metrics>,
    /// Server shutdown: stop reading, finish what was read.
    shutdown: watch::Receiver<bool>,
    /// Signalled when the newest request reached the runtime (see [`Order`]).
    prev_submitted: Option<oneshot::Receiver<()>>,
}

impl Handler {
    /// Wraps an accepted socket.
    pub fn new(
        socket: TcpStream,
        config: ListenerConfig,
        node: NodeHandle,
        metrics: Arc<Metrics>,
        shutdown: watch::Receiver<bool>,
    ) -> Self {
        let (r, w) = socket.into_split();
        Handler {
            reader: FrameReader::new(r, config.max_line_bytes),
            writer: BufWriter::new(w),
            config,
            node,
            metrics,
            shutdown,
            prev_submitted: None,
        }
    }

    /// Runs until the client closes its write side (after answering every
    /// request it sent), the socket fails, or the server shuts down.
    pub async fn run(mut self) {
        let mut pending: FuturesOrdered<ReplyFuture> = FuturesOrdered::new();
        let mut reading = !*self.shutdown.borrow();
        loop {
            if !reading && pending.is_empty() {
                break;
            }
            let room = pending.len() < self.config.max_pipelined_requests;
            tokio::select! {
                Some(reply) = pending.next(), if !pending.is_empty() => {
                    if self.write_ready(reply, &mut pending).await.is_err() {
                        return;
                    }
                }
                frame = self.reader.read_frame(), if reading && room => match frame {
                    Ok(Some(frame)) => pending.push_back(self.dispatch(frame)),
                    Ok(None) | Err(_) => reading = false,
                },
                _ = self.shutdown.changed(), if reading => reading = false,
            }
        }
        let _ = self.writer.flush().await;
        let _ = self.writer.shutdown().await;
    }

    /// Writes `first` plus every reply that is already complete, then flushes.
    async fn write_ready(
        &mut self,
        first: Reply,
        pending: &mut FuturesOrdered<ReplyFuture>,
    ) -> std::io::Result<()> {
        let mut out = Vec::with_capacity(64);
        first.encode(&mut out);
        while let Some(Some(reply)) = pending.next().now_or_never() {
            reply.encode(&mut out);
        }
        self.writer.write_all(&out).await?;
        self.writer.flush().await
    }

    fn dispatch(&mut self, frame: Frame) -> ReplyFuture {
        match frame {
            Frame::Request(req) => {
                let (submitted, next) = oneshot::channel();
                let prev = self.prev_submitted.replace(next);
                let node = self.node.clone();
                let metrics = self.metrics.clone();
                Box::pin(execute(node, metrics, req, Order { prev, submitted }))
            }
            Frame::Malformed(e) => Box::pin(std::future::ready(Reply::Err(e.to_string()))),
            Frame::TooLong => Box::pin(std::future::ready(Reply::Err("line too long".into()))),
        }
    }
}

/// Keeps one connection's requests in order on their way to the runtime, so
/// a pipelined `SET k v` / `GET k` pair reads its own write.
struct Order {
    /// Fires once the previous request was handed to the runtime.
    prev: Option<oneshot::Receiver<()>>,
    /// Fired once this request was handed over (or failed before that).
    submitted: oneshot::Sender<()>,
}

/// Runs one request against the node and maps the outcome to a reply.
async fn execute(node: NodeHandle, metrics: Arc<Metrics>, req: Request, order: Order) -> Reply {
    let started = Instant::now();
    if let Some(prev) = order.prev {
        // An error only means the previous request finished without submitting.
        let _ = prev.await;
    }
    let (op, reply) = match req {
        Request::Ping => {
            let _ = order.submitted.send(());
            (Op::Ping, Reply::Pong)
        }
        Request::Get { key } => {
            let waiter = node.submit_read(ReadQuery::Get(key), true).await;
            let _ = order.submitted.send(());
            let result = match waiter {
                Ok(w) => w.wait().await.and_then(get_result),
                Err(e) => Err(e),
            };
            (Op::Get, get_reply(result))
        }
        Request::Set { key, value } => {
            let op = WriteOp::Put {
                key,
                value,
                cond: Condition::None,
            };
            (Op::Set, write(&node, op, order.submitted).await)
        }
        Request::Delete { key } => {
            let op = WriteOp::Delete {
                key,
                cond: Condition::None,
            };
            (Op::Delete, write(&node, op, order.submitted).await)
        }
    };
    metrics.observe_request(op, started.elapsed(), matches!(reply, Reply::Err(_)));
    reply
}

fn get_reply(result: Result<GetResult, NodeError>) -> Reply {
    match result {
        Ok(read) => match read.value {
            Some(kv) => Reply::Value(kv.value),
            None => Reply::NotFound,
        },
        Err(e) => Reply::Err(e.to_string()),
    }
}

async fn write(node: &NodeHandle, op: WriteOp, submitted: oneshot::Sender<()>) -> Reply {
    let waiter = node.submit_write(op).await;
    let _ = submitted.send(());
    let result = match waiter {
        Ok(w) => w.wait().await,
        Err(e) => Err(e),
    };
    match result {
        Ok(_) => Reply::Ok,
        Err(e) => Reply::Err(e.to_string()),
    }
}
