//! The Raft consensus core: a sans-IO state machine (no tokio, files, sockets,
//! clocks or OS randomness). Time enters as [`RawNode::tick`], input as
//! [`RawNode::step`] / [`RawNode::propose`], and everything the node must do
//! comes out as a [`Ready`].
//!
//! # The Ready contract
//!
//! Loop: feed input (`tick`, `step`, `propose`, `read_index`, ...); when
//! `has_ready()`, take `ready()` and do, in this order:
//!
//! 1. **Persist** `snapshot` (install the data the node received with the
//!    Snapshot message, then `MemStorage::apply_snapshot`), `entries`
//!    (append, truncating any stored suffix from `entries[0].index`) and
//!    `hard_state`, durably (fsync if `must_sync`). `messages` may be sent
//!    before or while persisting: they are leader Appends/Heartbeats and
//!    other messages that promise nothing about local disk (Raft thesis
//!    §10.2.1: a leader may write its log in parallel with replicating it).
//!    `persisted_messages` — vote grants, vote requests (they carry our own
//!    vote), Append acknowledgements — go out **only after** the write is
//!    durable: each one is a promise that the state it reflects survives a
//!    crash, and breaking it loses acknowledged entries or lets a node vote
//!    twice in a term. `entries` holds at most `Config::max_ready_entry_bytes`
//!    (counted with [`entry_record_bytes`], the WAL's own record size; at
//!    least one entry), so one Ready always fits one WAL batch. When that
//!    cuts the unstable log short, `persisted_messages` wait for the Ready
//!    that hands out its last entry and `hard_state.commit` is clamped to the
//!    entries handed out.
//! 2. **Apply** `committed_entries` in order. They are always durable locally
//!    (the core never hands out a committed entry it has not seen persisted)
//!    and on a majority, so they may be applied, and their clients answered,
//!    while step 1's write is still syncing.
//! 3. **Reads**: answer each `read_states` entry once the applied index is
//!    at least its `index`.
//! 4. **`advance(ready)`**: tells the core the entries are durable and the
//!    committed ones applied. Only now does the leader count its own log
//!    toward the commit index, and only now may `ready()` be called again.
//!
//! # A drive loop
//!
//! A one-member cluster, driven to commit one proposal. A real node does the
//! same with a WAL instead of `MemStorage`, a network instead of dropping
//! messages, and a timer calling `tick`:
//!
//! ```
//! use titan_raft::{Config, EntryKind, MemStorage, RawNode, Role};
//!
//! let storage = MemStorage::new_bootstrapped(&[(1, b"addr-of-1".to_vec())]);
//! let mut node = RawNode::new(&Config::new(1), storage).expect("valid config");
//! node.campaign();
//! let mut proposed = false;
//! let mut applied = Vec::new();
//! for _ in 0..100 {
//!     if node.status().role == Role::Leader && !proposed {
//!         node.propose(b"hello".to_vec()).expect("leader accepts");
//!         proposed = true;
//!     }
//!     if !node.has_ready() {
//!         node.tick();
//!         continue;
//!     }
//!     let rd = node.ready();
//!     // 1. Persist (here: in memory; a real node fsyncs when must_sync).
//!     if let Some(hs) = rd.hard_state.clone() {
//!         node.storage_mut().set_hard_state(hs);
//!     }
//!     node.storage_mut().append(&rd.entries).expect("contiguous");
//!     // 1b. Only now may `rd.persisted_messages` leave (none: one member).
//!     // 2. Apply committed entries in order.
//!     for e in &rd.committed_entries {
//!         if e.kind == EntryKind::Normal && !e.data.is_empty() {
//!             applied.push(e.data.clone());
//!         }
//!     }
//!     // 3. Answer reads in rd.read_states once applied; 4. advance.
//!     node.advance(rd);
//!     if !applied.is_empty() {
//!         break;
//!     }
//! }
//! assert_eq!(applied, vec![b"hello".to_vec()]);
//! ```
//!
//! # Membership
//!
//! Single-server changes (`AddLearner`, `PromoteLearner`, `RemoveNode`),
//! taking effect **when the entry is appended** to a log, committed or not
//! (Raft thesis §4.1). With one change at a time, any two consecutive voter
//! sets differ by one member, so every majority of the old set overlaps every
//! majority of the new one: two leaders cannot be elected in one term and a
//! committed entry is held by a majority of whichever set is in force. The
//! leader refuses a new change while the previous one is uncommitted and
//! until it has committed an entry of its own term (Ongaro, raft-dev 2015:
//! without that rule, changes made by leaders of different terms can
//! interleave). On truncation the conflicting changes are rolled back. On
//! restart the membership is rebuilt as the snapshot's conf plus every conf
//! change in the log, consistent with the effect-on-append rule. A removed
//! leader keeps leading until the removal commits, then steps down. A node
//! that is not a voter never campaigns but accepts Append/Snapshot (a
//! joining learner starts with an empty log). [`bootstrap_entries`] gives
//! every founding member the same initial log.
//!
//! # Snapshots
//!
//! The core never holds snapshot data. When a follower needs compacted
//! entries the leader emits `MessageType::Snapshot` with `snapshot: Some(meta)`
//! (from `Storage::snapshot_meta`); the node streams the file and then calls
//! `report_snapshot(to, ok)`. A follower stepping a Snapshot newer than its
//! commit index returns it in `Ready::snapshot` (covered prefix discarded)
//! and acknowledges with an AppendResp at the snapshot index.
//!
//! # Reads
//!
//! `read_index(ctx)` on the leader queues the read; at the next `ready()` one
//! heartbeat round, shared by every read queued by then, confirms
//! leadership (reads arriving while a round is in flight wait for the next
//! one, which starts as soon as the current round completes), and the
//! read's `ReadState { index: commit at round start }` follows. On a follower
//! the request goes to the leader (ReadIndex / ReadIndexResp). Reads are
//! dropped, not failed, on leader change or message loss: the node must time
//! them out. There are no lease reads: ticks stall while the node blocks on
//! an fsync or a snapshot load, so a tick-based lease cannot bound real time
//! and every linearizable read pays for one heartbeat round.
//!
//! # Proposals on a follower
//!
//! `forward(datas)` on a follower sends the commands to the leader it
//! knows in a `Propose` message (consecutive forwards before the next
//! `ready()` share one message); the leader appends them exactly as its own
//! `propose_batch` would, or drops them (not leader, transfer in progress,
//! too many uncommitted bytes). Nothing answers: the node tags its commands
//! so it recognises them when it applies them, and times out the ones that
//! never come back (their outcome is unknown). A `Propose` must be
//! delivered at most once, or the commands are appended twice.
//!
//! # Message fields by type
//!
//! | type | `index` / `log_term` | `entries` | `commit` | `reject*`, `hint_term` | `context` |
//! |---|---|---|---|---|---|
//! | PreVote/Vote | candidate's last index/term | | | | `transfer` when forced |
//! | PreVoteResp/VoteResp | | | | `reject` | |
//! | Append | previous index/term | new entries | leader commit | | |
//! | AppendResp | last matched (or rejected prev) index | | | hint index/term | |
//! | Heartbeat(Resp) | | | min(match, commit) | | read round id |
//! | Snapshot | snapshot index/term | | | | (`snapshot` set) |
//! | ReadIndex(Resp) | read index (resp) | | | | caller's read id |
//! | Propose | | proposed commands (no index/term) | | | |
//!
//! # Code map
//!
//! `core.rs` roles, ticks, term rules and dispatch; `election.rs` PreVote,
//! Vote, TimeoutNow; `replication.rs` proposals, Append/Heartbeat, flow
//! control, commit rule, snapshots; `read_only.rs` ReadIndex rounds;
//! `membership.rs` conf changes, bootstrap, leadership transfer; `log.rs`
//! storage plus unstable suffix; `progress.rs` per-peer replication state;
//! `quorum.rs` majority math; `raw_node.rs` the `RawNode`/`Ready` API;
//! `storage.rs` the `Storage` trait and `MemStorage`; `rng.rs` SplitMix64.

mod core;
mod election;
mod log;
mod membership;
mod progress;
pub mod quorum;
mod raw_node;
mod read_only;
mod replication;
pub mod rng;
mod storage;
mod types;

pub use core::CAMPAIGN_TRANSFER;
pub use membership::{apply_change, bootstrap_entries};
pub use raw_node::{MAX_COMMITTED_BYTES_PER_READY, RawNode};
pub use read_only::MAX_PENDING_READS;
pub use storage::{MemStorage, Storage};

pub use types::*;

use std::collections::BTreeMap;

/// Tunables. Times are in ticks; the node decides how long a tick is.
#[derive(Debug, Clone)]
pub struct Config {
    /// This member's id (never [`NO_NODE`]).
    pub id: NodeId,
    /// Election timeout is drawn uniformly from `[election_tick_min, election_tick_max)`.
    pub election_tick_min: u32,
    /// Upper bound (exclusive) of the election timeout.
    pub election_tick_max: u32,
    /// Ticks between a leader's heartbeats (below `election_tick_min`).
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
    /// Most entry bytes ([`Entry::size_bytes`], i.e. WAL record bytes) handed
    /// out to persist in one `Ready` (at least one entry is always handed
    /// out). The node sets it from the WAL's batch limit minus the records a
    /// batch adds besides entries, so no `Ready` can build a batch the WAL
    /// refuses, whatever was proposed or received.
    pub max_ready_entry_bytes: usize,
    /// Run a PreVote round before raising the term, so a partitioned node
    /// cannot disrupt a healthy leader when it returns.
    pub pre_vote: bool,
    /// A leader that has not heard from a quorum within an election timeout
    /// steps down; followers ignore votes while they hear from a leader.
    pub check_quorum: bool,
    /// Seed of the core's deterministic RNG (election timeouts).
    pub seed: u64,
    /// Highest index the node's state machine has already applied when the
    /// core starts (etcd-raft's `Config.Applied`): committed entries are
    /// handed out from the one after it, so none is delivered twice after a
    /// restart. 0 means "the snapshot's index". Must lie between the
    /// snapshot's index and the durable commit index, or `new` fails.
    pub applied: u64,
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
            max_ready_entry_bytes: 32 << 20,
            pre_vote: true,
            check_quorum: true,
            seed: id,
            applied: 0,
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
    /// Only the leader takes proposals.
    #[error("not leader (leader hint: {leader})")]
    NotLeader {
        /// The leader this node knows of, or [`NO_NODE`].
        leader: NodeId,
    },
    /// The proposal was not appended (for example empty or malformed).
    #[error("proposal dropped")]
    ProposalDropped,
    /// A leadership transfer is under way; proposals wait for its end.
    #[error("leadership transfer in progress")]
    TransferInProgress,
    /// One membership change at a time: the previous one is not applied yet.
    #[error("a configuration change is already pending")]
    ConfChangePending,
    /// `max_uncommitted_bytes` is reached; retry once commits catch up.
    #[error("too many uncommitted bytes")]
    TooManyUncommitted,
    /// The membership change is not allowed (for example removing the last
    /// voter, or promoting a node that is not a learner).
    #[error("invalid configuration change: {0}")]
    InvalidConfChange(String),
    /// A [`Config`] that cannot work (zero id, inverted timeouts, an applied
    /// index outside the log).
    #[error("invalid config: {0}")]
    InvalidConfig(String),
    /// The durable state handed to `new` contradicts itself (a commit index
    /// past the last entry): a broken invariant, never repaired by clamping.
    #[error("inconsistent durable state: {0}")]
    InconsistentState(String),
    /// The log storage refused a read.
    #[error("storage: {0}")]
    Storage(#[from] StorageError),
}

/// The node's role.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Follows a leader (or waits for one).
    Follower,
    /// Running a PreVote round, term unchanged.
    PreCandidate,
    /// Asking for votes in a new term.
    Candidate,
    /// Replicates the log and takes proposals.
    Leader,
}

/// Volatile state reported in a [`Ready`] when it changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SoftState {
    /// The leader this node knows of, or [`NO_NODE`].
    pub leader: NodeId,
    /// This node's role.
    pub role: Role,
}

/// A linearizable read is safe once the state machine has applied `index`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadState {
    /// The commit index confirmed by a quorum when the read was asked.
    pub index: u64,
    /// The context the read was asked with.
    pub context: Vec<u8>,
}

/// Work the core hands to the node. See the module docs for the order.
#[derive(Debug, Default)]
pub struct Ready {
    /// Leader or role changed since the last Ready.
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
    /// Confirmed reads: answer each once applied reaches its index.
    pub read_states: Vec<ReadState>,
    /// Whether persisting needs an fsync.
    pub must_sync: bool,
}

/// Replication progress of one peer, as seen by the leader.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerProgress {
    /// Highest index known replicated on the peer.
    pub match_index: u64,
    /// Next index the leader will send.
    pub next_index: u64,
    /// Voter (true) or learner.
    pub voter: bool,
}

/// A read-only view of the core.
#[derive(Debug, Clone)]
pub struct Status {
    /// This member's id.
    pub id: NodeId,
    /// Current term.
    pub term: u64,
    /// Vote cast in `term`, or [`NO_NODE`].
    pub vote: NodeId,
    /// Current role.
    pub role: Role,
    /// Known leader, or [`NO_NODE`].
    pub leader: NodeId,
    /// Highest index known committed.
    pub commit: u64,
    /// Highest index handed out for applying.
    pub applied: u64,
    /// Last index in the log (durable or not).
    pub last_index: u64,
    /// Membership in force (effective on append).
    pub conf: ConfState,
    /// Empty unless leader.
    pub progress: BTreeMap<NodeId, PeerProgress>,
    /// Target of a leadership transfer in progress, or [`NO_NODE`].
    pub transferring_to: NodeId,
}
