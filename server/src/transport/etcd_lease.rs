//! `etcdserverpb.Lease` on the client gRPC port: Grant, Revoke, KeepAlive
//! (a bidirectional stream), TimeToLive and Leases.
//!
//! Grant and Revoke are log entries (the MVCC store owns leases; the runtime
//! picks the id of a Grant with ID 0 before proposing). KeepAlive,
//! TimeToLive and Leases are answered by the leader's lease clock
//! (`node::lease_clock`, which also owns expiry). A follower forwards every
//! call to the leader, marked so it is never forwarded twice, and answers
//! the client itself; a keep-alive stream on a follower forwards each
//! keep-alive as it arrives.
//!
//! Bounds: [`MAX_KEEPALIVE_STREAMS`] open keep-alive streams per node, each
//! with a [`KEEPALIVE_STREAM_BUFFER`]-response queue, handled one request at
//! a time; the store holds at most `mvcc::MAX_LEASES` leases.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Mutex, Semaphore, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use tonic::{Request, Response, Status, Streaming};

use titan_proto::etcdserverpb as pb;
use titan_proto::etcdserverpb::lease_client::LeaseClient;
use titan_proto::etcdserverpb::lease_server::Lease;

use super::etcd_convert::header_to_pb;
use super::etcd_forward::{
    FORWARD_CONNECT_TIMEOUT_MS, FORWARD_TIMEOUT_MS, FORWARDED_HEADER, forwarded_error,
};
use super::etcd_kv::etcd_status;
use crate::node::{LeaseAnswer, LeaseQuery, NodeHandle, WriteOp};

/// Most keep-alive streams open on one node at once.
pub const MAX_KEEPALIVE_STREAMS: usize = 10_000;
/// How long a relayed keep-alive waits for the leader to close its stream
/// after the answer before dropping it anyway.
const RELAY_DRAIN_TIMEOUT: Duration = Duration::from_secs(1);
/// Responses queued per keep-alive stream before the stream stops reading.
pub const KEEPALIVE_STREAM_BUFFER: usize = 16;

/// Implements `etcdserverpb.Lease`.
pub struct EtcdLeaseService {
    /// The local node.
    node: NodeHandle,
    /// Followers send lease calls to the leader through this.
    fwd: Arc<LeaseForwarder>,
    /// One permit per open keep-alive stream.
    streams: Arc<Semaphore>,
}

impl EtcdLeaseService {
    /// Serves `node`; forwarded calls are dialled through `dialer`.
    pub fn new(node: NodeHandle, dialer: super::tls::Dialer) -> Self {
        EtcdLeaseService {
            node,
            fwd: Arc::new(LeaseForwarder {
                client: Mutex::new(None),
                dialer,
            }),
            streams: Arc::new(Semaphore::new(MAX_KEEPALIVE_STREAMS)),
        }
    }

    /// The leader's gRPC address when this node should forward `req`.
    fn forward_to<T>(&self, req: &Request<T>) -> Option<String> {
        if req.metadata().contains_key(FORWARDED_HEADER) {
            return None;
        }
        leader_addr(&self.node)
    }

    /// Asks the local (leader's) lease clock; a node that lost leadership
    /// meanwhile answers etcd's retryable "leader changed".
    async fn query(&self, query: LeaseQuery) -> Result<(LeaseAnswer, pb::ResponseHeader), Status> {
        let r = self.node.lease(query).await.map_err(etcd_status)?;
        Ok((r.answer, header_to_pb(&r.header)))
    }
}

/// The leader's gRPC address when this node follows a known leader.
fn leader_addr(node: &NodeHandle) -> Option<String> {
    let view = node.leader_view();
    let addr = view.leader.map(|m| m.grpc_addr).unwrap_or_default();
    (!view.is_self && view.leader_id != 0 && !addr.is_empty()).then_some(addr)
}

#[tonic::async_trait]
impl Lease for EtcdLeaseService {
    async fn lease_grant(
        &self,
        req: Request<pb::LeaseGrantRequest>,
    ) -> Result<Response<pb::LeaseGrantResponse>, Status> {
        if let Some(leader) = self.forward_to(&req) {
            let mut c = self.fwd.client(&leader).await?;
            let resp = c.lease_grant(marked(req.into_inner())).await;
            return resp.map_err(forwarded_error);
        }
        let r = req.into_inner();
        let op = WriteOp::LeaseGrant {
            id: r.id,
            ttl_s: r.ttl,
        };
        let w = self.node.write(op).await.map_err(etcd_status)?;
        let g = w
            .lease
            .ok_or_else(|| Status::internal("grant applied without a lease"))?;
        Ok(Response::new(pb::LeaseGrantResponse {
            header: Some(header_to_pb(&w.header)),
            id: g.id,
            ttl: g.ttl_s,
            error: String::new(),
        }))
    }

    async fn lease_revoke(
        &self,
        req: Request<pb::LeaseRevokeRequest>,
    ) -> Result<Response<pb::LeaseRevokeResponse>, Status> {
        if let Some(leader) = self.forward_to(&req) {
            let mut c = self.fwd.client(&leader).await?;
            let resp = c.lease_revoke(marked(req.into_inner())).await;
            return resp.map_err(forwarded_error);
        }
        let id = req.into_inner().id;
        let w = self
            .node
            .write(WriteOp::LeaseRevoke(id))
            .await
            .map_err(etcd_status)?;
        Ok(Response::new(pb::LeaseRevokeResponse {
            header: Some(header_to_pb(&w.header)),
        }))
    }

    type LeaseKeepAliveStream = ReceiverStream<Result<pb::LeaseKeepAliveResponse, Status>>;

    async fn lease_keep_alive(
        &self,
        req: Request<Streaming<pb::LeaseKeepAliveRequest>>,
    ) -> Result<Response<Self::LeaseKeepAliveStream>, Status> {
        let permit = self.streams.clone().try_acquire_owned().map_err(|_| {
            Status::resource_exhausted("etcdserver: too many lease keep-alive streams")
        })?;
        let forwarded = req.metadata().contains_key(FORWARDED_HEADER);
        let mut input = req.into_inner();
        let (tx, rx) = mpsc::channel(KEEPALIVE_STREAM_BUFFER);
        let (node, fwd) = (self.node.clone(), self.fwd.clone());
        tokio::spawn(async move {
            let _permit = permit;
            while let Ok(Some(msg)) = input.message().await {
                let resp = keep_alive_once(&node, &fwd, msg.id, forwarded).await;
                let failed = resp.is_err();
                if tx.send(resp).await.is_err() || failed {
                    break;
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn lease_time_to_live(
        &self,
        req: Request<pb::LeaseTimeToLiveRequest>,
    ) -> Result<Response<pb::LeaseTimeToLiveResponse>, Status> {
        if let Some(leader) = self.forward_to(&req) {
            let mut c = self.fwd.client(&leader).await?;
            let resp = c.lease_time_to_live(marked(req.into_inner())).await;
            return resp.map_err(forwarded_error);
        }
        let r = req.into_inner();
        let query = LeaseQuery::TimeToLive {
            id: r.id,
            keys: r.keys,
        };
        match self.query(query).await? {
            (
                LeaseAnswer::TimeToLive {
                    remaining_s,
                    granted_ttl_s,
                    keys,
                },
                header,
            ) => Ok(Response::new(pb::LeaseTimeToLiveResponse {
                header: Some(header),
                id: r.id,
                ttl: remaining_s,
                granted_ttl: granted_ttl_s,
                keys,
            })),
            _ => Err(Status::internal("wrong lease answer")),
        }
    }

    async fn lease_leases(
        &self,
        req: Request<pb::LeaseLeasesRequest>,
    ) -> Result<Response<pb::LeaseLeasesResponse>, Status> {
        if let Some(leader) = self.forward_to(&req) {
            let mut c = self.fwd.client(&leader).await?;
            let resp = c.lease_leases(marked(req.into_inner())).await;
            return resp.map_err(forwarded_error);
        }
        match self.query(LeaseQuery::List).await? {
            (LeaseAnswer::List(ids), header) => Ok(Response::new(pb::LeaseLeasesResponse {
                header: Some(header),
                leases: ids.into_iter().map(|id| pb::LeaseStatus { id }).collect(),
            })),
            _ => Err(Status::internal("wrong lease answer")),
        }
    }
}

/// One keep-alive: answered by the local clock when this node leads, else
/// forwarded to the leader (unless it was forwarded here already).
async fn keep_alive_once(
    node: &NodeHandle,
    fwd: &LeaseForwarder,
    id: i64,
    forwarded: bool,
) -> Result<pb::LeaseKeepAliveResponse, Status> {
    if !forwarded && let Some(leader) = leader_addr(node) {
        return fwd.keep_alive(&leader, id).await;
    }
    match node.lease(LeaseQuery::KeepAlive(id)).await {
        Ok(r) => match r.answer {
            LeaseAnswer::KeepAlive { ttl_s } => Ok(pb::LeaseKeepAliveResponse {
                header: Some(header_to_pb(&r.header)),
                id,
                ttl: ttl_s,
            }),
            _ => Err(Status::internal("wrong lease answer")),
        },
        Err(e) => Err(etcd_status(e)),
    }
}

/// Wraps a forwarded message with [`FORWARDED_HEADER`].
fn marked<T>(msg: T) -> Request<T> {
    let mut req = Request::new(msg);
    req.metadata_mut().insert(
        FORWARDED_HEADER,
        tonic::metadata::MetadataValue::from_static("1"),
    );
    req
}

/// A cached Lease client for the current leader's client gRPC port.
pub struct LeaseForwarder {
    /// (leader gRPC address, dialer generation, client); replaced when the
    /// leader changes or reloaded TLS files changed the dial settings.
    client: Mutex<Option<(String, u64, LeaseClient<Channel>)>>,
    /// Plaintext or TLS, as the client port is served.
    dialer: super::tls::Dialer,
}

impl LeaseForwarder {
    /// The client for `leader_grpc`, connecting lazily.
    async fn client(&self, leader_grpc: &str) -> Result<LeaseClient<Channel>, Status> {
        let mut cached = self.client.lock().await;
        // Read before building: a reload in between only means one more
        // rebuild next time.
        let generation = self.dialer.generation();
        if let Some((addr, built, c)) = cached.as_ref()
            && addr == leader_grpc
            && *built == generation
        {
            return Ok(c.clone());
        }
        let endpoint = self
            .dialer
            .endpoint(leader_grpc)
            .map_err(|e| Status::unavailable(format!("etcdserver: bad leader address: {e}")))?
            .connect_timeout(Duration::from_millis(FORWARD_CONNECT_TIMEOUT_MS))
            .timeout(Duration::from_millis(FORWARD_TIMEOUT_MS))
            .tcp_nodelay(true);
        let client = LeaseClient::new(endpoint.connect_lazy());
        *cached = Some((leader_grpc.to_string(), generation, client.clone()));
        Ok(client)
    }

    /// Forwards one keep-alive as a one-message stream and relays the
    /// leader's single answer.
    async fn keep_alive(
        &self,
        leader: &str,
        id: i64,
    ) -> Result<pb::LeaseKeepAliveResponse, Status> {
        let mut c = self.client(leader).await?;
        let once = tokio_stream::iter([pb::LeaseKeepAliveRequest { id }]);
        let mut answers = c
            .lease_keep_alive(marked(once))
            .await
            .map_err(forwarded_error)?
            .into_inner();
        let answer = answers
            .message()
            .await
            .map_err(forwarded_error)?
            .ok_or_else(|| Status::unavailable("etcdserver: leader changed"))?;
        // Read the stream to its end (the leader closes it after its one
        // answer): dropping it early resets it, and h2 closes a connection
        // once it has had to reset 1,024 streams whose frames were still
        // arriving, failing every relay in flight on it.
        // Off the answer's path, so the client does not wait for it.
        tokio::spawn(async move {
            let _ = tokio::time::timeout(RELAY_DRAIN_TIMEOUT, answers.message()).await;
        });
        Ok(answer)
    }
}
