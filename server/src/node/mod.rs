//! The node: one tokio task (the [`runtime`]) owns the Raft core, the WAL and
//! the state machine; everything else talks to it through a cloneable
//! [`NodeHandle`] over bounded channels.
//!
//! Architecture invariant: only the runtime task touches `RawNode`, the WAL
//! and the state machine. Handlers never block on IO of their own; they wait
//! on a oneshot reply that the runtime sends after commit + apply (writes) or
//! after `applied >= read index` (linearizable reads).
//!
//! Boundaries: the node names neither the transport nor the API layer.
//! Inbound peer traffic arrives through [`PeerInbox`]; outbound traffic and
//! the pre-bootstrap probe leave through the node's own traits
//! ([`Outbound`], [`StatusProbe`]), which the tonic transport implements.
//! [`build()`] makes a node from its flags and those implementations; the
//! top-level `server` module owns the listeners and wires everything.

mod admin;
mod apply;
pub mod bootstrap;
pub mod build;
pub mod env;
pub mod handle;
pub mod identity;
mod lease_clock;
pub mod limits;
pub mod log;
pub mod merge;
pub mod outbound;
mod peers;
mod proposals;
pub mod reads;
pub mod runtime;
pub mod snapshot;
pub mod store;
mod view;

pub use build::{BuildError, BuiltNode, NodeNet, build, build_with_env};
pub use env::{Blocking, InlineSchedule, NodeEnv, ValueLogTuning};
pub use handle::{NodeHandle, PeerInbox};
pub use outbound::{Outbound, OutboundContext, StatusProbe};

use bytes::Bytes;

use crate::raft::NodeId;

/// Why the node could not serve a request. `Display` is the text after `ERR `
/// on the TCP protocol.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NodeError {
    /// Writes go to the leader, reachable for clients at these addresses.
    #[error("NOT_LEADER {client_addr}")]
    NotLeader {
        /// The leader's advertised TCP client address.
        client_addr: String,
        /// The leader's advertised gRPC client address.
        grpc_addr: String,
    },
    /// No leader, overload, shutdown or an unknown outcome; the text (one of
    /// [`reason`] where the node writes it) says which.
    #[error("UNAVAILABLE {0}")]
    Unavailable(String),
    /// The request itself is invalid (e.g. removing an unknown member).
    #[error("INVALID {0}")]
    Invalid(String),
    /// A key, value or request larger than storage can hold, refused at the
    /// edge before it reaches Raft (see [`limits`]).
    #[error("{what} too large (max {max_bytes} bytes)")]
    TooLarge {
        /// What was too large: `key`, `value` or `request`.
        what: &'static str,
        /// The limit.
        max_bytes: usize,
    },
    /// The MVCC store refused the request (compacted or future revision, ...).
    #[error("{0}")]
    Mvcc(MvccError),
}

impl NodeError {
    /// `UNAVAILABLE <reason>`.
    pub fn unavailable(reason: &str) -> Self {
        NodeError::Unavailable(reason.to_string())
    }
}

/// Every reason the node itself writes after `UNAVAILABLE`, each written
/// once here (the TCP error table test walks [`reason::ALL`]). A reason is
/// lower-case prose and never repeats the code word.
pub mod reason {
    /// No leader is known (a read or proposal found none).
    pub const NO_LEADER: &str = "no leader";
    /// No leader appeared within the leader wait.
    pub const NO_LEADER_ELECTED: &str = "no leader elected";
    /// SIGTERM: the node is draining.
    pub const SHUTTING_DOWN: &str = "node is shutting down";
    /// A fatal storage error: the node fails every waiter and exits.
    pub const STORAGE_FAILURE: &str = "storage failure; node is stopping; outcome unknown";
    /// The request timed out; a write may or may not have happened.
    pub const TIMED_OUT: &str = "request timed out; outcome unknown";
    /// A queue or the uncommitted-bytes bound is full.
    pub const OVERLOADED: &str = "overloaded";
    /// The leader stepped down with the write in flight.
    pub const LEADERSHIP_LOST: &str = "leadership lost; outcome unknown";
    /// A new leader replaced the write's entry; it did not happen.
    pub const OVERWRITTEN: &str = "entry was overwritten by a new leader; not applied";
    /// Leadership is being handed over; retry shortly.
    pub const TRANSFERRING: &str = "leadership transfer in progress";
    /// Another membership change is pending.
    pub const MEMBERSHIP_CHANGE: &str = "a membership change is in progress";
    /// Every reason above.
    pub const ALL: &[&str] = &[
        NO_LEADER,
        NO_LEADER_ELECTED,
        SHUTTING_DOWN,
        STORAGE_FAILURE,
        TIMED_OUT,
        OVERLOADED,
        LEADERSHIP_LOST,
        OVERWRITTEN,
        TRANSFERRING,
        MEMBERSHIP_CHANGE,
    ];
}

pub use crate::storage::mvcc::{
    Event, EventBatch, HistoryStats, LeaseGrant, MvccError, RangeRequest, RangeResponse,
    TxnRequest, TxnResponse,
};

/// What an etcd `ResponseHeader` carries, filled in by the runtime.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Header {
    /// The cluster id (a stable 64-bit hash of the cluster's id string).
    pub cluster_id: u64,
    /// This node's member id.
    pub member_id: u64,
    /// The store revision the request saw or produced.
    pub revision: i64,
    /// The Raft term when the request was answered.
    pub raft_term: u64,
}

/// FNV-1a 64 of the cluster id string: etcd clients want a number.
pub fn cluster_id_u64(cluster_id: &str) -> u64 {
    cluster_id.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// A compare-and-set precondition (the state machine's own type: a write
/// carries it unchanged into the log).
pub use crate::storage::Condition;

/// A client write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WriteOp {
    /// Set `key` to `value`.
    Put {
        /// Key bytes.
        key: Bytes,
        /// Value bytes.
        value: Bytes,
        /// Precondition.
        cond: Condition,
    },
    /// Remove `key`.
    Delete {
        /// Key bytes.
        key: Bytes,
        /// Precondition.
        cond: Condition,
    },
    /// An etcd transaction (etcd's Put and DeleteRange travel as one too).
    Txn(Box<TxnRequest>),
    /// Compact the MVCC history up to a revision.
    Compact(i64),
    /// Grant a lease. Id 0 asks the runtime to choose one (member id plus a
    /// counter) before proposing; a TTL below the minimum is raised to it.
    LeaseGrant {
        /// Requested id (0 = choose).
        id: i64,
        /// Requested TTL in seconds.
        ttl_s: i64,
    },
    /// Revoke a lease, deleting its keys.
    LeaseRevoke(i64),
}

/// The applied result of a write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WriteResult {
    /// False only when a condition failed (nothing was written).
    pub succeeded: bool,
    /// New version (mod_revision) on success, current version on a failed
    /// condition (Put/Delete).
    pub version: u64,
    /// Whether the key existed before (Put/Delete).
    pub existed: bool,
    /// etcd response header.
    pub header: Header,
    /// The etcd response ([`WriteOp::Txn`] only).
    pub txn: Option<Box<TxnResponse>>,
    /// The granted lease ([`WriteOp::LeaseGrant`] only).
    pub lease: Option<LeaseGrant>,
}

/// One key with its value and version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KvEntry {
    /// Key bytes.
    pub key: Bytes,
    /// Value bytes.
    pub value: Bytes,
    /// The key's mod_revision (revision of its last write).
    pub version: u64,
}

/// What a read asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReadQuery {
    /// One key.
    Get(Bytes),
    /// Keys in `[start, end)` (empty end = unbounded), at most `limit` keys
    /// and `max_bytes` of keys plus values (at least one pair); `more` in the
    /// answer reports a truncated result.
    Range {
        /// Inclusive start.
        start: Bytes,
        /// Exclusive end; empty means no upper bound.
        end: Bytes,
        /// Most keys returned.
        limit: usize,
        /// Byte budget of one answer.
        max_bytes: usize,
    },
    /// An etcd range.
    Etcd(Box<RangeRequest>),
    /// The MVCC store's history statistics (etcd's Maintenance.Status).
    EtcdStats,
    /// Watch events of a range from a revision on (always local).
    EtcdEvents(Box<EventsQuery>),
    /// A point-in-time copy of the applied state (etcd's
    /// Maintenance.Snapshot; asked locally, as etcd serves it).
    EtcdSnapshot,
}

/// What a watcher polls for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventsQuery {
    /// First key.
    pub key: Vec<u8>,
    /// Range end (etcd encoding).
    pub range_end: Vec<u8>,
    /// First revision wanted.
    pub from: i64,
    /// Include the previous pair.
    pub prev_kv: bool,
    /// Stop after the revision where this many events are reached.
    pub max_events: usize,
}

/// An etcd range and a point-in-time view of the store to run it on. The
/// runtime only takes the view (O(1)); the caller's task runs the range, so
/// a range over many keys never stalls the Raft loop.
#[derive(Debug, Clone)]
pub struct RangeAt {
    store: crate::storage::mvcc::MvccStore,
    req: Box<RangeRequest>,
}

impl RangeAt {
    /// The range `req` on the view `store`.
    pub(crate) fn new(store: crate::storage::mvcc::MvccStore, req: Box<RangeRequest>) -> Self {
        Self { store, req }
    }

    /// Runs the range on the view.
    pub fn run(&self) -> Result<RangeResponse, MvccError> {
        self.store.range(&self.req)
    }
}

/// A point-in-time copy of the applied state for etcd's
/// Maintenance.Snapshot: an O(1) view of the state machine (persistent
/// maps) and the snapshot metadata of its applied index, exactly what the
/// node's own snapshots record. The runtime only takes the view; the
/// caller's task encodes it, so a large store never stalls the Raft loop.
#[derive(Debug, Clone)]
pub struct SnapshotAt {
    sm: crate::storage::StateMachine,
    meta: crate::raft::SnapshotMeta,
}

impl SnapshotAt {
    /// The view `sm` as of `meta`.
    pub(crate) fn new(sm: crate::storage::StateMachine, meta: crate::raft::SnapshotMeta) -> Self {
        Self { sm, meta }
    }

    /// Index, term and membership the copy covers.
    pub fn meta(&self) -> &crate::raft::SnapshotMeta {
        &self.meta
    }

    /// The store revision of the copy.
    pub fn revision(&self) -> i64 {
        self.sm.kv().revision()
    }

    /// Writes the copy in the snapshot file format; returns the bytes
    /// written. Writing it twice gives the same bytes.
    pub fn encode<W: std::io::Write>(&self, w: &mut W) -> std::io::Result<u64> {
        crate::storage::snapshot_codec::encode_snapshot(w, &self.meta, &self.sm)
    }
}

/// The answer to a [`ReadQuery`].
#[derive(Debug, Clone)]
pub enum ReadAnswer {
    /// Result of [`ReadQuery::Get`].
    Get(Option<KvEntry>),
    /// Result of [`ReadQuery::Range`]: entries and whether more matched.
    Range(Vec<KvEntry>, bool),
    /// Answer to [`ReadQuery::Etcd`]: the range and a view to run it on.
    Etcd(RangeAt),
    /// Result of [`ReadQuery::EtcdStats`].
    EtcdStats(HistoryStats),
    /// Result of [`ReadQuery::EtcdEvents`], with the compaction point.
    EtcdEvents(Result<EventBatch, MvccError>, i64),
    /// Answer to [`ReadQuery::EtcdSnapshot`].
    EtcdSnapshot(SnapshotAt),
}

/// A lease request answered by the leader's lease clock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaseQuery {
    /// Refresh a lease's deadline to now + TTL.
    KeepAlive(i64),
    /// A lease's granted and remaining TTL, with its keys when asked.
    TimeToLive {
        /// Lease id.
        id: i64,
        /// List the attached keys.
        keys: bool,
    },
    /// Every lease id.
    List,
}

/// The answer to a [`LeaseQuery`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaseAnswer {
    /// The TTL the lease now has (0: no such lease, as etcd answers).
    KeepAlive {
        /// Seconds.
        ttl_s: i64,
    },
    /// For [`LeaseQuery::TimeToLive`]; `remaining_s` is -1 for no lease.
    TimeToLive {
        /// Seconds left (rounded up); -1 when the lease does not exist.
        remaining_s: i64,
        /// TTL granted.
        granted_ttl_s: i64,
        /// Attached keys (when asked).
        keys: Vec<Vec<u8>>,
    },
    /// Every lease id, ascending.
    List(Vec<i64>),
}

/// A lease answer with its etcd header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseResult {
    /// The data.
    pub answer: LeaseAnswer,
    /// etcd response header.
    pub header: Header,
}

/// A read result with the applied index it was served at.
#[derive(Debug, Clone)]
pub struct ReadResult {
    /// The data.
    pub answer: ReadAnswer,
    /// Applied index at the time of the read.
    pub read_index: u64,
    /// etcd response header.
    pub header: Header,
}

/// A cluster member as recorded in the replicated member directory.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Member {
    /// Raft id.
    pub id: NodeId,
    /// Node name.
    pub name: String,
    /// Advertised peer (Raft/Admin) address.
    pub peer_addr: String,
    /// Advertised TCP client address.
    pub client_addr: String,
    /// Advertised gRPC client address.
    pub grpc_addr: String,
}

/// Role as shown by Admin.Status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeRole {
    /// Voter following a leader.
    Follower,
    /// Pre-vote phase.
    PreCandidate,
    /// Asking for votes.
    Candidate,
    /// The leader.
    Leader,
    /// Non-voting member.
    Learner,
    /// Started with --join, not yet part of a configuration.
    Joining,
}

/// One member in a [`NodeStatus`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberStatus {
    /// Directory entry.
    pub member: Member,
    /// Voter (true) or learner.
    pub voter: bool,
    /// Leader's view of the member's log (0 elsewhere).
    pub match_index: u64,
    /// Entries behind the leader's last index (0 elsewhere).
    pub lag_entries: u64,
}

/// What a value-log merge did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MergeInfo {
    /// Closed files merged away.
    pub files: u64,
    /// Bytes those files held.
    pub file_bytes: u64,
    /// Live bytes copied out of them.
    pub live_bytes: u64,
}

/// Description of the newest local snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SnapshotInfo {
    /// Last included log index.
    pub index: u64,
    /// Its term.
    pub term: u64,
    /// When it was written (Unix ms).
    pub unix_ms: u64,
    /// File size.
    pub size_bytes: u64,
}

/// A point-in-time view of the node for Admin.Status and /readyz.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeStatus {
    /// This node's member id.
    pub id: NodeId,
    /// This node's name.
    pub name: String,
    /// The cluster this node belongs to ("" while joining).
    pub cluster_id: String,
    /// Current role.
    pub role: NodeRole,
    /// Current term.
    pub term: u64,
    /// Known leader (0 = none).
    pub leader_id: NodeId,
    /// The leader's directory entry, if known.
    pub leader: Option<Member>,
    /// Commit index.
    pub commit: u64,
    /// Applied index.
    pub applied: u64,
    /// Last log index.
    pub last_index: u64,
    /// Members with role and lag.
    pub members: Vec<MemberStatus>,
    /// Newest local snapshot.
    pub last_snapshot: Option<SnapshotInfo>,
}
