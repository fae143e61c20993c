//! What the node needs from the network, owned by the node: the outbound
//! half of peer traffic ([`Outbound`], the counterpart of the inbound
//! [`PeerInbox`](super::PeerInbox)) and the pre-bootstrap status probe
//! ([`StatusProbe`]). The tonic transport implements both; the node never
//! names it, so no transport or protobuf type reaches `node/`.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use tokio::sync::watch;

use super::Member;
use crate::metrics::Metrics;
use crate::raft::{Message, NodeId};

/// Outbound peer traffic, owned by the runtime task: one stream per known
/// peer, kept in step with the member directory.
pub trait Outbound: Send + 'static {
    /// Adds a peer or updates its address.
    fn set_peer(&mut self, id: NodeId, addr: &str);
    /// Whether a stream to `id` exists.
    fn has_peer(&self, id: NodeId) -> bool;
    /// The address last set for `id`.
    fn peer_addr(&self, id: NodeId) -> Option<String>;
    /// Stops the stream to `id`.
    fn remove_peer(&mut self, id: NodeId);
    /// Ids with a stream.
    fn peer_ids(&self) -> Vec<NodeId>;
    /// Queues `msg`; `false` when the peer is unknown or its queue is full,
    /// in which case the caller reports it unreachable to the core.
    fn send(&self, msg: Message) -> bool;
    /// Streams a snapshot file to a follower and resolves with its verdict.
    /// Nothing happens until the future is polled; it owns what it needs.
    fn send_snapshot(
        &self,
        transfer: SnapshotTransfer,
    ) -> BoxFuture<'static, Result<(), SnapshotSendError>>;
}

/// What an [`Outbound`] implementation is built from once the node knows
/// who it is.
#[derive(Clone)]
pub struct OutboundContext {
    /// This node as a directory entry (sent with every batch).
    pub self_member: Member,
    /// The cluster id stamped on outbound batches (adopted when joining).
    pub cluster_id: watch::Receiver<String>,
    /// Metrics (links, dropped messages).
    pub metrics: Arc<Metrics>,
}

/// What to send where: one snapshot stream request.
#[derive(Debug, Clone)]
pub struct SnapshotTransfer {
    /// Follower's peer address.
    pub addr: String,
    /// The core's `Snapshot` message (goes in the first chunk).
    pub msg: Message,
    /// The snapshot file.
    pub file: PathBuf,
    /// Stamped on the first chunk.
    pub cluster_id: String,
}

/// Why a snapshot transfer failed. Network errors arrive as text: the node
/// only logs them and reports the follower unreachable.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotSendError {
    /// Reading the local file failed.
    #[error("reading snapshot: {0}")]
    Io(#[from] std::io::Error),
    /// Dialling the follower failed.
    #[error("connecting: {0}")]
    Connect(String),
    /// The RPC failed.
    #[error("rpc: {0}")]
    Rpc(String),
    /// The follower refused the snapshot.
    #[error("rejected by follower: {0}")]
    Rejected(String),
}

/// Asks a listed peer for its status before bootstrapping (see
/// [`bootstrap`](super::bootstrap)).
pub trait StatusProbe: Send + Sync {
    /// The status of the node at `addr`; `None` if it does not answer
    /// within `timeout`.
    fn probe(&self, addr: String, timeout: Duration) -> BoxFuture<'static, Option<PeerView>>;
}

/// What a pre-bootstrap probe learns from a peer's status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerView {
    /// The peer's cluster id ("" if it has none yet).
    pub cluster_id: String,
    /// The peer's member id (0 if it has no identity).
    pub id: u64,
    /// Members the peer knows, with the leader's match index (0 on followers).
    pub members: Vec<(u64, u64)>,
    /// The peer's current term (1 right after bootstrap, before any election).
    pub term: u64,
    /// The leader the peer follows (0 if none).
    pub leader_id: u64,
    /// The peer's commit index.
    pub commit_index: u64,
    /// The peer's last log index.
    pub last_index: u64,
}
