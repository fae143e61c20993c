//! Writes on any node: a follower forwards etcd KV writes (Put, DeleteRange,
//! Txn, Compact) to the leader's etcd KV service and relays the answer, so
//! etcd clients (which expect any member to take writes) work through a
//! follower or a Kubernetes Service. The TCP protocol keeps its
//! `ERR NOT_LEADER` redirect; this is the gRPC etcd API only.
//!
//! Outcomes: the leader's own answers (including etcd errors) are relayed
//! unchanged; a leader that could not be reached at all means the write was
//! not sent (`Unavailable`); a failure after the request left (reset,
//! timeout) means the outcome is unknown, reported as `DeadlineExceeded`
//! with a message that says so, never as a plain failure.

use std::time::Duration;

use tokio::sync::Mutex;
use tonic::transport::Channel;
use tonic::{Code, Status};

use titan_proto::etcdserverpb as pb;
use titan_proto::etcdserverpb::kv_client::KvClient;

use super::etcd_kv::MAX_GRPC_MESSAGE_BYTES;
use super::tls::Dialer;

/// Upper bound on one forwarded request (connect + leader commit + reply).
pub const FORWARD_TIMEOUT_MS: u64 = 10_000;
/// Upper bound on connecting to the leader.
pub const FORWARD_CONNECT_TIMEOUT_MS: u64 = 1_000;

/// The message of a write whose outcome is unknown.
pub const UNKNOWN_OUTCOME: &str =
    "etcdserver: request timed out, outcome unknown (the leader was lost mid-write)";

/// Metadata marking a forwarded request: its receiver never forwards it
/// again (two nodes with stale leader views cannot bounce it forever).
pub const FORWARDED_HEADER: &str = "titan-forwarded";

/// Wraps a forwarded message with [`FORWARDED_HEADER`].
fn marked<T>(msg: T) -> tonic::Request<T> {
    let mut req = tonic::Request::new(msg);
    req.metadata_mut().insert(
        FORWARDED_HEADER,
        tonic::metadata::MetadataValue::from_static("1"),
    );
    req
}

/// A cached channel to the current leader's client gRPC port.
pub struct Forwarder {
    /// (leader gRPC address, client); replaced when the leader changes.
    client: Mutex<Option<(String, KvClient<Channel>)>>,
    /// Plaintext or TLS, as the client port is served.
    dialer: Dialer,
}

/// Whether the status came from the transport failing to connect (the
/// request never left this node).
fn never_sent(s: &Status) -> bool {
    let mut source = std::error::Error::source(s);
    while let Some(e) = source {
        let text = e.to_string();
        if text.contains("Connection refused") || text.contains("connect") {
            return true;
        }
        source = e.source();
    }
    false
}

/// Maps a failed forwarded call to what the client sees.
pub fn forwarded_error(s: Status) -> Status {
    let from_leader = s.message().starts_with("etcdserver:")
        || !matches!(
            s.code(),
            Code::Unavailable | Code::Unknown | Code::Cancelled | Code::DeadlineExceeded
        );
    if from_leader {
        return s;
    }
    if never_sent(&s) {
        return Status::unavailable("etcdserver: leader unreachable; request not sent");
    }
    Status::deadline_exceeded(UNKNOWN_OUTCOME)
}

impl Forwarder {
    /// A forwarder that dials the leader through `dialer`.
    pub fn new(dialer: Dialer) -> Self {
        Forwarder {
            client: Mutex::new(None),
            dialer,
        }
    }

    async fn client(&self, leader_grpc: &str) -> Result<KvClient<Channel>, Status> {
        let mut cached = self.client.lock().await;
        if let Some((addr, c)) = cached.as_ref()
            && addr == leader_grpc
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
        let client = KvClient::new(endpoint.connect_lazy())
            .max_decoding_message_size(MAX_GRPC_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_GRPC_MESSAGE_BYTES);
        *cached = Some((leader_grpc.to_string(), client.clone()));
        Ok(client)
    }

    /// Forwards a Put.
    pub async fn put(&self, leader: &str, r: pb::PutRequest) -> Result<pb::PutResponse, Status> {
        let mut c = self.client(leader).await?;
        c.put(marked(r))
            .await
            .map(|r| r.into_inner())
            .map_err(forwarded_error)
    }

    /// Forwards a DeleteRange.
    pub async fn delete_range(
        &self,
        leader: &str,
        r: pb::DeleteRangeRequest,
    ) -> Result<pb::DeleteRangeResponse, Status> {
        let mut c = self.client(leader).await?;
        c.delete_range(marked(r))
            .await
            .map(|r| r.into_inner())
            .map_err(forwarded_error)
    }

    /// Forwards a Txn.
    pub async fn txn(&self, leader: &str, r: pb::TxnRequest) -> Result<pb::TxnResponse, Status> {
        let mut c = self.client(leader).await?;
        c.txn(marked(r))
            .await
            .map(|r| r.into_inner())
            .map_err(forwarded_error)
    }

    /// Forwards a Compact.
    pub async fn compact(
        &self,
        leader: &str,
        r: pb::CompactionRequest,
    ) -> Result<pb::CompactionResponse, Status> {
        let mut c = self.client(leader).await?;
        c.compact(marked(r))
            .await
            .map(|r| r.into_inner())
            .map_err(forwarded_error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leader_answers_pass_through_and_lost_calls_are_unknown_outcomes() {
        let table = [
            (
                Status::out_of_range("etcdserver: mvcc: required revision has been compacted"),
                Code::OutOfRange,
            ),
            (
                Status::unavailable("etcdserver: leader changed"),
                Code::Unavailable,
            ),
            (Status::invalid_argument("bad"), Code::InvalidArgument),
            (Status::unknown("h2 protocol error"), Code::DeadlineExceeded),
            (Status::cancelled("timeout expired"), Code::DeadlineExceeded),
        ];
        for (i, (s, want)) in table.into_iter().enumerate() {
            assert_eq!(forwarded_error(s).code(), want, "row {i}");
        }
        assert_eq!(
            forwarded_error(Status::unknown("reset")).message(),
            UNKNOWN_OUTCOME
        );
    }
}
