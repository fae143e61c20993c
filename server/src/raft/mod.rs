//! The Raft consensus core: a sans-IO state machine (no tokio, files, sockets,
//! clocks or OS randomness).
//!
//! API CONTRACT (frozen by the skeleton commit; the implementation fills it in
//! and documents the Ready contract here as numbered steps):
//!
//! ```text
//! RawNode::new(&Config, storage) -> Result<RawNode, RaftError>
//! tick(); step(Message); propose(data) -> (index, term); propose_conf_change(ConfChange)
//! read_index(ctx); transfer_leader(target); campaign()
//! has_ready(); ready() -> Ready; advance(Ready)
//! report_snapshot(to, ok); report_unreachable(to); status() -> Status
//! ```

mod storage;
mod types;

pub use storage::{MemStorage, Storage};

pub use types::*;

use std::collections::BTreeMap;

/// Tunables. Times are in ticks; the node decides how long a tick is.
#[derive(Debug, Clone)]
pub struct Config {
    pub id: NodeId,
    /// Election timeout is drawn uniformly from `[election_tick_min, election_tick_max)`.
    pub election_tick_min: u32,
    pub election_tick_max: u32,
    pub heartbeat_tick: u32,
    /// Max AppendEntries messages in flight per follower (pipelining window).
    pub max_inflight_msgs: usize,
    /// Max entry bytes in flight per follower.
    pub max_inflight_bytes: usize,
    /// Max entries in one Append message.
    pub max_msg_entries: usize,
    /// Max entry bytes in one Append message (at least one entry is always sent).
    pub max_msg_bytes: usize,
    /// Proposals are refused once this many bytes are appended but uncommitted.
    pub max_uncommitted_bytes: usize,
    pub pre_vote: bool,
    pub check_quorum: bool,
    /// Lease-based reads (assumes bounded clock drift; see module docs).
    pub lease_read: bool,
    /// Seed of the core's deterministic RNG (election timeouts).
    pub seed: u64,
}

impl Config {
    /// Defaults for a 10 ms tick: elections 150–300 ms, heartbeats 50 ms.
    pub fn new(id: NodeId) -> Self {
        Config {
            id,
            election_tick_min: 15,
            election_tick_max: 30,
            heartbeat_tick: 5,
            max_inflight_msgs: 256,
            max_inflight_bytes: 32 << 20,
            max_msg_entries: 1024,
            max_msg_bytes: 1 << 20,
            max_uncommitted_bytes: 64 << 20,
            pre_vote: true,
            check_quorum: true,
            lease_read: false,
            seed: id,
        }
    }
}

/// Errors from the [`Storage`] trait.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StorageError {
    /// The requested index is at or below the snapshot (compacted away).
    #[error("log compacted")]
    Compacted,
    /// The requested index is past the last entry.
    #[error("log entry unavailable")]
    Unavailable,
    /// A snapshot older than the current one was offered.
    #[error("snapshot out of date")]
    SnapshotOutOfDate,
}

/// Errors returned to callers of the core.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RaftError {
    #[error("not leader (leader hint: {leader})")]
    NotLeader { leader: NodeId },
    #[error("proposal dropped")]
    ProposalDropped,
    #[error("leadership transfer in progress")]
    TransferInProgress,
    #[error("a configuration change is already pending")]
    ConfChangePending,
    #[error("too many uncommitted bytes")]
    TooManyUncommitted,
    #[error("invalid configuration change: {0}")]
    InvalidConfChange(String),
    #[error("invalid config: {0}")]
    InvalidConfig(String),
    #[error("storage: {0}")]
    Storage(#[from] StorageError),
}

/// The node's role.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Follower,
    PreCandidate,
    Candidate,
    Leader,
}

/// Volatile state reported in a [`Ready`] when it changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SoftState {
    pub leader: NodeId,
    pub role: Role,
}

/// A linearizable read is safe once the state machine has applied `index`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadState {
    pub index: u64,
    pub context: Vec<u8>,
}

/// Work the core hands to the node. See the module docs for the order.
#[derive(Debug, Default)]
pub struct Ready {
    pub soft_state: Option<SoftState>,
    /// Persist before sending `persisted_messages`.
    pub hard_state: Option<HardState>,
    /// Append to the log, truncating any existing suffix from `entries[0].index`.
    pub entries: Vec<Entry>,
    /// A received snapshot to install (the node holds its data).
    pub snapshot: Option<SnapshotMeta>,
    /// May be sent at once, even before persisting (leader appends and heartbeats).
    pub messages: Vec<Message>,
    /// Send only after `hard_state`, `entries` and `snapshot` are durable.
    pub persisted_messages: Vec<Message>,
    /// Apply in order.
    pub committed_entries: Vec<Entry>,
    pub read_states: Vec<ReadState>,
    /// Whether persisting needs an fsync.
    pub must_sync: bool,
}

/// Replication progress of one peer, as seen by the leader.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerProgress {
    pub match_index: u64,
    pub next_index: u64,
    pub voter: bool,
}

/// A read-only view of the core.
#[derive(Debug, Clone)]
pub struct Status {
    pub id: NodeId,
    pub term: u64,
    pub vote: NodeId,
    pub role: Role,
    pub leader: NodeId,
    pub commit: u64,
    pub applied: u64,
    pub last_index: u64,
    pub conf: ConfState,
    /// Empty unless leader.
    pub progress: BTreeMap<NodeId, PeerProgress>,
    pub transferring_to: NodeId,
}
