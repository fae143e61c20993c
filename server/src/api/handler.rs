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
use tokio::sync::{OwnedSemaphorePermit, oneshot, watch};

use super::connection::{Frame, FrameReader, MemoryBudget, charge_more};
use super::protocol::{ParseError, Reply, Request};
use super::server::ListenerConfig;
use crate::metrics::{Metrics, Op};
use crate::node::handle::{GetResult, get_result};
use crate::node::{Condition, NodeError, NodeHandle, ReadQuery, WriteOp};

type ReplyFuture = Pin<Box<dyn Future<Output = Reply> + Send>>;

/// Replies encoded into one write before it is flushed (bounds the per-
/// connection encode buffer when many large values are ready at once).
const MAX_REPLY_BATCH_BYTES: usize = 1 << 20;

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
    /// Server-wide bound on request bytes held by all connections.
    budget: MemoryBudget,
}

impl Handler {
    /// Wraps an accepted socket.
    pub fn new(
        socket: TcpStream,
        config: ListenerConfig,
        node: NodeHandle,
        metrics: Arc<Metrics>,
        (shutdown, budget): (watch::Receiver<bool>, MemoryBudget),
    ) -> Self {
        let (r, w) = socket.into_split();
        Handler {
            reader: FrameReader::new(r, config.max_line_bytes).with_budget(budget.clone()),
            budget,
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
                    Ok(Some(frame)) => {
                        let reply = self.admit(frame);
                        pending.push_back(reply);
                    }
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
        while out.len() < MAX_REPLY_BATCH_BYTES
            && let Some(Some(reply)) = pending.next().now_or_never()
        {
            reply.encode(&mut out);
        }
        self.writer.write_all(&out).await?;
        self.writer.flush().await
    }

    /// Charges the request's bytes to the server-wide budget (the reader
    /// already charged a long line's growth) and dispatches it; the charge
    /// is held until the reply is ready. Over budget: `ERR UNAVAILABLE
    /// overloaded`, nothing executed.
    fn admit(&mut self, frame: Frame) -> ReplyFuture {
        let mut charge = self.reader.take_charge();
        let have = charge.as_ref().map_or(0, OwnedSemaphorePermit::num_permits);
        let need = match &frame {
            Frame::Request(req) => request_bytes(req),
            _ => 0,
        };
        if need > have && !charge_more(&self.budget, &mut charge, need - have) {
            return self.dispatch(Frame::Overloaded);
        }
        let reply = self.dispatch(frame);
        Box::pin(async move {
            let r = reply.await;
            drop(charge);
            r
        })
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
            Frame::Malformed(e) => Box::pin(std::future::ready(malformed_reply(&e))),
            Frame::TooLong => Box::pin(std::future::ready(too_long_reply())),
            Frame::Overloaded => {
                self.metrics.refused("tcp_memory");
                let e = NodeError::unavailable(crate::node::reason::OVERLOADED);
                Box::pin(std::future::ready(error_reply(&e)))
            }
        }
    }
}

/// Bytes a parsed request holds (key plus value).
fn request_bytes(req: &Request) -> usize {
    match req {
        Request::Get { key } | Request::Delete { key } => key.len(),
        Request::Set { key, value } => key.len() + value.len(),
        Request::Ping => 0,
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

/// `ERR <text>` for a request the node refused or failed. Every error text
/// is written once, by the error's `Display` (see `node::reason`).
fn error_reply(e: &NodeError) -> Reply {
    Reply::Err(e.to_string())
}

/// `ERR <text>` for a line that did not parse.
fn malformed_reply(e: &ParseError) -> Reply {
    Reply::Err(e.to_string())
}

/// `ERR line too long` for a line over `--max-line-bytes` (discarded).
fn too_long_reply() -> Reply {
    Reply::Err("line too long".into())
}

fn get_reply(result: Result<GetResult, NodeError>) -> Reply {
    match result {
        Ok(read) => match read.value {
            Some(kv) => Reply::Value(kv.value),
            None => Reply::NotFound,
        },
        Err(e) => error_reply(&e),
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
        Err(e) => error_reply(&e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::protocol::parse;
    use crate::node::limits::{MAX_KEY_BYTES, MAX_VALUE_BYTES};
    use crate::node::reason;

    fn line(r: &Reply) -> String {
        let mut out = Vec::new();
        r.encode(&mut out);
        String::from_utf8(out).expect("error replies are UTF-8")
    }

    fn malformed(input: &str) -> Reply {
        malformed_reply(&parse(input.as_bytes()).expect_err("malformed"))
    }

    /// Every error reply the TCP protocol can send, with its exact line.
    fn every_error_reply() -> Vec<(Reply, String)> {
        let not_leader = NodeError::NotLeader {
            client_addr: "node3:6003".into(),
            grpc_addr: "node3:7003".into(),
        };
        let too_large = |what, max_bytes| NodeError::TooLarge { what, max_bytes };
        let mut cases = vec![
            (too_long_reply(), "ERR line too long".to_string()),
            (malformed("FLY k"), "ERR unknown command 'FLY'".into()),
            (
                malformed("GET"),
                "ERR wrong number of arguments for 'get'".into(),
            ),
            (
                malformed("SET k"),
                "ERR wrong number of arguments for 'set'".into(),
            ),
            (
                malformed("DELETE"),
                "ERR wrong number of arguments for 'delete'".into(),
            ),
            (
                malformed("PING x"),
                "ERR wrong number of arguments for 'ping'".into(),
            ),
            (malformed("GET k\x01"), "ERR invalid key".into()),
            (malformed("SET k v\x00"), "ERR invalid value".into()),
            (malformed(""), "ERR empty command".into()),
            (error_reply(&not_leader), "ERR NOT_LEADER node3:6003".into()),
            (
                error_reply(&NodeError::Invalid("unknown member 9".into())),
                "ERR INVALID unknown member 9".into(),
            ),
            (
                error_reply(&too_large("value", MAX_VALUE_BYTES)),
                format!("ERR value too large (max {MAX_VALUE_BYTES} bytes)"),
            ),
            (
                error_reply(&too_large("key", MAX_KEY_BYTES)),
                format!("ERR key too large (max {MAX_KEY_BYTES} bytes)"),
            ),
        ];
        for r in reason::ALL {
            let e = NodeError::unavailable(r);
            cases.push((error_reply(&e), format!("ERR UNAVAILABLE {r}")));
        }
        cases
    }

    #[test]
    fn every_tcp_error_reply_is_one_line_written_once_without_a_doubled_word() {
        for (reply, want) in every_error_reply() {
            let got = line(&reply);
            assert_eq!(got, format!("{want}\n"));
            let words: Vec<&str> = got.split_whitespace().collect();
            for pair in words.windows(2) {
                assert_ne!(pair[0], pair[1], "doubled word in {got:?}");
            }
        }
    }

    #[test]
    fn the_storage_failure_reply_names_the_unknown_outcome_once() {
        let e = NodeError::unavailable(reason::STORAGE_FAILURE);
        assert_eq!(
            line(&error_reply(&e)),
            "ERR UNAVAILABLE storage failure; node is stopping; outcome unknown\n"
        );
    }
}
