//! `titan.v1.KV` on the client gRPC port: versioned reads and
//! compare-and-set writes over the same [`NodeHandle`] the TCP API uses.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tonic::{Request, Response, Status};

use titan_proto::v1 as pb;
use titan_proto::v1::kv_server::Kv;

use super::status_from_error;
use crate::metrics::{Metrics, Op};
use crate::node::{Condition, KvEntry, NodeHandle, ReadAnswer, ReadQuery, WriteOp};

/// Range results returned when the request gives no limit.
pub const DEFAULT_RANGE_LIMIT: usize = 1000;
/// Hard cap on range results per call.
pub const MAX_RANGE_LIMIT: usize = 10_000;
/// Byte budget (keys plus values) of one Range answer; a longer result is
/// cut (at least one pair is returned) and reported with `more = true`.
pub const MAX_RANGE_REPLY_BYTES: usize = 32 << 20;

/// Requests served at once on the client gRPC port; more get
/// `RESOURCE_EXHAUSTED` at once instead of queueing without bound.
pub const MAX_GRPC_INFLIGHT_REQUESTS: usize = 4096;

/// Implements `titan.v1.KV`.
pub struct KvService {
    /// The local node.
    node: NodeHandle,
    /// Request latency histograms.
    metrics: Arc<Metrics>,
    /// One permit per request in progress (`MAX_GRPC_INFLIGHT_REQUESTS`).
    inflight: Arc<Semaphore>,
}

impl KvService {
    /// Serves `node`.
    pub fn new(node: NodeHandle, metrics: Arc<Metrics>) -> Self {
        Self::with_inflight_limit(node, metrics, MAX_GRPC_INFLIGHT_REQUESTS)
    }

    /// Serves `node` with at most `max_inflight` requests at once.
    pub fn with_inflight_limit(
        node: NodeHandle,
        metrics: Arc<Metrics>,
        max_inflight: usize,
    ) -> Self {
        KvService {
            node,
            metrics,
            inflight: Arc::new(Semaphore::new(max_inflight)),
        }
    }

    /// A permit for one request, or `RESOURCE_EXHAUSTED` when the port is
    /// at its concurrency bound.
    fn admit(&self) -> Result<OwnedSemaphorePermit, Status> {
        self.inflight.clone().try_acquire_owned().map_err(|_| {
            self.metrics.refused("grpc_concurrency");
            Status::resource_exhausted("too many concurrent requests; retry with backoff")
        })
    }

    fn observe<T>(&self, op: Op, started: Instant, r: &Result<T, Status>) {
        self.metrics
            .observe_request(op, started.elapsed(), r.is_err());
    }
}

fn cond_from_pb(c: Option<pb::Condition>) -> Condition {
    match c.and_then(|c| c.kind) {
        Some(pb::condition::Kind::ExpectedVersion(v)) => Condition::ExpectedVersion(v),
        Some(pb::condition::Kind::MustBeAbsent(true)) => Condition::MustBeAbsent,
        _ => Condition::None,
    }
}

fn kv_to_pb(e: KvEntry) -> pb::KeyValue {
    pb::KeyValue {
        key: e.key.to_vec(),
        value: e.value.to_vec(),
        version: e.version,
    }
}

fn linearizable(c: i32) -> bool {
    c != pb::Consistency::Serializable as i32
}

/// The smallest key greater than every key starting with `prefix`.
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    Vec::new()
}

/// The gRPC edge for `Get`: the key and whether the read is linearizable.
/// (Each `*_from_pb` is what the service checks and converts before the
/// node sees a request; the fuzz target `grpc_request` drives them.)
pub fn get_from_pb(r: pb::GetRequest) -> Result<(Bytes, bool), Status> {
    Ok((Bytes::from(r.key), linearizable(r.consistency)))
}

/// The gRPC edge for `Put`.
pub fn put_from_pb(r: pb::PutRequest) -> Result<WriteOp, Status> {
    Ok(WriteOp::Put {
        key: Bytes::from(r.key),
        value: Bytes::from(r.value),
        cond: cond_from_pb(r.condition),
    })
}

/// The gRPC edge for `Delete`.
pub fn delete_from_pb(r: pb::DeleteRequest) -> Result<WriteOp, Status> {
    Ok(WriteOp::Delete {
        key: Bytes::from(r.key),
        cond: cond_from_pb(r.condition),
    })
}

/// The gRPC edge for `Range`: the bounded query and whether it is linearizable.
pub fn range_from_pb(r: pb::RangeRequest) -> Result<(ReadQuery, bool), Status> {
    let (start, end) = if r.prefix.is_empty() {
        (r.start, r.end)
    } else {
        let end = prefix_end(&r.prefix);
        (r.prefix, end)
    };
    let limit = match r.limit as usize {
        0 => DEFAULT_RANGE_LIMIT,
        n => n.min(MAX_RANGE_LIMIT),
    };
    let query = ReadQuery::Range {
        start: Bytes::from(start),
        end: Bytes::from(end),
        limit,
        max_bytes: MAX_RANGE_REPLY_BYTES,
    };
    Ok((query, linearizable(r.consistency)))
}

impl KvService {
    async fn do_range(&self, r: pb::RangeRequest) -> Result<pb::RangeResponse, Status> {
        let (query, linearizable) = range_from_pb(r)?;
        let res = self
            .node
            .read(query, linearizable)
            .await
            .map_err(status_from_error)?;
        match res.answer {
            ReadAnswer::Range(kvs, more) => Ok(pb::RangeResponse {
                kvs: kvs.into_iter().map(kv_to_pb).collect(),
                more,
                read_index: res.read_index,
            }),
            _ => Err(Status::internal("wrong read answer")),
        }
    }
}

#[tonic::async_trait]
impl Kv for KvService {
    async fn get(&self, req: Request<pb::GetRequest>) -> Result<Response<pb::GetResponse>, Status> {
        let _permit = self.admit()?;
        let started = Instant::now();
        let res = async {
            let (key, linearizable) = get_from_pb(req.into_inner())?;
            let g = self.node.get(key, linearizable).await;
            g.map_err(status_from_error).map(|g| pb::GetResponse {
                kv: g.value.map(kv_to_pb),
                read_index: g.read_index,
            })
        }
        .await;
        self.observe(Op::Get, started, &res);
        res.map(Response::new)
    }

    async fn put(&self, req: Request<pb::PutRequest>) -> Result<Response<pb::PutResponse>, Status> {
        let _permit = self.admit()?;
        let started = Instant::now();
        let res = async {
            let w = self.node.write(put_from_pb(req.into_inner())?).await;
            w.map_err(status_from_error).map(|w| pb::PutResponse {
                succeeded: w.succeeded,
                version: w.version,
            })
        }
        .await;
        self.observe(Op::Set, started, &res);
        res.map(Response::new)
    }

    async fn delete(
        &self,
        req: Request<pb::DeleteRequest>,
    ) -> Result<Response<pb::DeleteResponse>, Status> {
        let _permit = self.admit()?;
        let started = Instant::now();
        let res = async {
            let w = self.node.write(delete_from_pb(req.into_inner())?).await;
            w.map_err(status_from_error).map(|w| pb::DeleteResponse {
                succeeded: w.succeeded,
                existed: w.existed,
                version: w.version,
            })
        }
        .await;
        self.observe(Op::Delete, started, &res);
        res.map(Response::new)
    }

    async fn range(
        &self,
        req: Request<pb::RangeRequest>,
    ) -> Result<Response<pb::RangeResponse>, Status> {
        let _permit = self.admit()?;
        let started = Instant::now();
        let res = self.do_range(req.into_inner()).await;
        self.observe(Op::Range, started, &res);
        res.map(Response::new)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::node::handle::LeaderView;
    use titan_proto::v1::kv_server::Kv;

    type Stuck = (
        NodeHandle,
        tokio::sync::mpsc::Receiver<crate::node::handle::ClientInput>,
        tokio::sync::watch::Sender<LeaderView>,
    );

    /// A handle whose runtime never answers: every admitted request hangs.
    fn stuck_node() -> Stuck {
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        let view = LeaderView {
            leader_id: 1,
            is_self: true,
            ..LeaderView::default()
        };
        let (leader_tx, leader) = tokio::sync::watch::channel(view);
        let handle = NodeHandle {
            tx,
            leader,
            leader_wait: std::time::Duration::from_secs(1),
            request_timeout: std::time::Duration::from_secs(30),
        };
        (handle, rx, leader_tx)
    }

    fn put_req(key: &str) -> Request<pb::PutRequest> {
        Request::new(pb::PutRequest {
            key: key.into(),
            value: b"v".to_vec(),
            condition: None,
        })
    }

    #[tokio::test]
    async fn requests_over_the_grpc_concurrency_bound_are_refused_not_queued() {
        let (node, _rx, _view) = stuck_node();
        let svc = Arc::new(KvService::with_inflight_limit(
            node,
            Arc::new(Metrics::new()),
            2,
        ));
        let mut hung = Vec::new();
        for k in ["a", "b"] {
            let svc = svc.clone();
            hung.push(tokio::spawn(async move { svc.put(put_req(k)).await }));
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        let err = svc.put(put_req("c")).await.expect_err("over the bound");
        assert_eq!(err.code(), tonic::Code::ResourceExhausted);
        for h in hung {
            h.abort();
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert_eq!(svc.inflight.available_permits(), 2, "permits come back");
    }

    #[tokio::test]
    async fn an_oversize_put_is_resource_exhausted_before_the_runtime() {
        let (node, mut rx, _view) = stuck_node();
        let svc = KvService::new(node, Arc::new(Metrics::new()));
        let req = Request::new(pb::PutRequest {
            key: b"k".to_vec(),
            value: vec![0; crate::node::limits::MAX_VALUE_BYTES + 1],
            condition: None,
        });
        let err = svc.put(req).await.expect_err("too large");
        assert_eq!(err.code(), tonic::Code::ResourceExhausted);
        assert!(rx.try_recv().is_err(), "nothing reached the runtime");
    }

    #[test]
    fn prefix_end_is_the_next_key_after_the_prefix_space() {
        assert_eq!(prefix_end(b"ab"), b"ac".to_vec());
        assert_eq!(prefix_end(b"a\xff"), b"b".to_vec());
        assert_eq!(prefix_end(b"\xff\xff"), Vec::<u8>::new());
    }
}
