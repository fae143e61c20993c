//! [`RawNode`]: the thin driver the node uses — input methods, then
//! `ready()` / `advance()` (see the module docs for the contract).

use super::core::Raft;
use super::{
    ConfChange, Config, EntryKind, HardState, Message, NodeId, PeerProgress, RaftError, Ready,
    SnapshotMeta, SoftState, Status, Storage, progress::ProgressState,
};

/// Bound on the bytes of committed entries handed out in one `Ready`.
pub const MAX_COMMITTED_BYTES_PER_READY: usize = 16 << 20;

/// The Raft core for one member, plus what was last handed to the node.
pub struct RawNode<S: Storage> {
    /// The state machine.
    raft: Raft<S>,
    /// Soft state in the last `Ready`, to report only changes.
    prev_soft: SoftState,
    /// Hard state in the last `Ready` (or as loaded), to report only changes.
    prev_hard: HardState,
    /// What the outstanding `Ready` handed out, so `advance` does not depend
    /// on the node giving the `Ready` back intact (it may move entries out).
    handed: Handed,
}

/// Positions handed out by the last `ready()`.
#[derive(Debug, Default, Clone, Copy)]
struct Handed {
    /// `(index, term)` of the last entry to persist.
    last_entry: Option<(u64, u64)>,
    /// Index of the snapshot to install.
    snapshot: Option<u64>,
    /// Index of the last committed entry to apply.
    last_committed: Option<u64>,
}

impl<S: Storage> RawNode<S> {
    /// Restores a member from `storage` (hard state, snapshot and log; the
    /// membership is rebuilt from the snapshot plus conf changes in the log).
    pub fn new(cfg: &Config, storage: S) -> Result<Self, RaftError> {
        let raft = Raft::new(cfg, storage)?;
        let prev_soft = SoftState {
            leader: raft.leader,
            role: raft.role,
        };
        let prev_hard = raft.hard_state();
        Ok(RawNode {
            raft,
            prev_soft,
            prev_hard,
            handed: Handed::default(),
        })
    }

    /// The durable log (read side).
    pub fn storage(&self) -> &S {
        &self.raft.log.storage
    }

    /// The durable log, for the node to append what a `Ready` handed out.
    pub fn storage_mut(&mut self) -> &mut S {
        &mut self.raft.log.storage
    }

    /// Advances logical time by one tick.
    pub fn tick(&mut self) {
        self.raft.tick();
    }

    /// Feeds a message from a peer. Malformed or stale messages are dropped.
    pub fn step(&mut self, m: Message) -> Result<(), RaftError> {
        self.raft.step(m)
    }

    /// Proposes a command; returns its `(index, term)`. The entry is
    /// committed once it shows up in `committed_entries` with that term.
    pub fn propose(&mut self, data: Vec<u8>) -> Result<(u64, u64), RaftError> {
        self.raft.propose(vec![data], EntryKind::Normal)
    }

    /// Proposes several commands at consecutive indexes; returns the first
    /// `(index, term)`.
    pub fn propose_batch(&mut self, datas: Vec<Vec<u8>>) -> Result<(u64, u64), RaftError> {
        self.raft.propose(datas, EntryKind::Normal)
    }

    /// Proposes a single-server membership change.
    pub fn propose_conf_change(&mut self, cc: ConfChange) -> Result<(u64, u64), RaftError> {
        self.raft.propose_conf_change(cc)
    }

    /// Follower: sends commands to the leader, which appends them or drops
    /// them; see the crate docs ("Proposals on a follower").
    pub fn forward(&mut self, datas: Vec<Vec<u8>>) -> Result<(), RaftError> {
        self.raft.forward(datas)
    }

    /// Requests a linearizable read; its `ReadState` arrives in a later `Ready`.
    pub fn read_index(&mut self, ctx: Vec<u8>) -> Result<(), RaftError> {
        self.raft.read_index(ctx)
    }

    /// Starts a leadership transfer to `target`.
    pub fn transfer_leader(&mut self, target: NodeId) -> Result<(), RaftError> {
        self.raft.transfer_leader(target)
    }

    /// Starts an election now (a pre-election first if PreVote is on).
    pub fn campaign(&mut self) {
        self.raft.hup(false);
    }

    /// The node finished (or failed) streaming a snapshot to `to`.
    pub fn report_snapshot(&mut self, to: NodeId, success: bool) {
        self.raft.report_snapshot(to, success);
    }

    /// The transport could not reach `to`: stop pipelining to it.
    pub fn report_unreachable(&mut self, to: NodeId) {
        self.raft.report_unreachable(to);
    }

    /// A received snapshot the core accepted and has not handed out in a
    /// `Ready` yet (the node keeps its file until then).
    pub fn pending_snapshot(&self) -> Option<&SnapshotMeta> {
        self.raft.log.unstable.snapshot.as_ref()
    }

    /// Whether `ready()` would return anything.
    pub fn has_ready(&self) -> bool {
        let r = &self.raft;
        r.pending_bcast
            || r.read_round_startable()
            || self.soft_state() != self.prev_soft
            || r.hard_state() != self.prev_hard
            || !r.log.unstable.entries.is_empty()
            || r.log.unstable.snapshot.is_some()
            || !r.msgs.is_empty()
            || !r.msgs_after_persist.is_empty()
            || !r.read_states.is_empty()
            || r.log.has_next_committed()
    }

    fn soft_state(&self) -> SoftState {
        SoftState {
            leader: self.raft.leader,
            role: self.raft.role,
        }
    }

    /// Collects the work for the node. Call `advance` with it before the
    /// next `ready()`.
    pub fn ready(&mut self) -> Ready {
        self.raft.flush_proposals();
        self.raft.maybe_start_read_round();
        let r = &mut self.raft;
        let soft = SoftState {
            leader: r.leader,
            role: r.role,
        };
        let hard = r.hard_state();
        let committed_entries = r.log.next_committed(MAX_COMMITTED_BYTES_PER_READY);
        if r.role == super::Role::Leader {
            let bytes: usize = committed_entries
                .iter()
                .filter(|e| e.kind == EntryKind::Normal)
                .map(|e| e.size_bytes())
                .sum();
            r.uncommitted_bytes = r.uncommitted_bytes.saturating_sub(bytes);
        }
        let entries = entries_to_persist(&r.log.unstable.entries, r.cfg.max_ready_entry_bytes);
        let all_handed = entries.len() == r.log.unstable.entries.len();
        let hard = if all_handed {
            hard
        } else {
            clamp_commit(hard, self.prev_hard, entries.last().map_or(0, |e| e.index))
        };
        let snapshot = r.log.unstable.snapshot.clone();
        let hard_changed = hard != self.prev_hard;
        let must_sync = !entries.is_empty()
            || snapshot.is_some()
            || hard.term != self.prev_hard.term
            || hard.vote != self.prev_hard.vote;
        let ready = Ready {
            soft_state: (soft != self.prev_soft).then_some(soft),
            hard_state: hard_changed.then_some(hard),
            entries,
            snapshot,
            messages: std::mem::take(&mut r.msgs),
            // Acks may cover the whole unstable suffix: they wait until
            // the Ready that hands out its last entry.
            persisted_messages: if all_handed {
                std::mem::take(&mut r.msgs_after_persist)
            } else {
                Vec::new()
            },
            committed_entries,
            read_states: std::mem::take(&mut r.read_states),
            must_sync,
        };
        self.prev_soft = soft;
        self.prev_hard = hard;
        self.handed = Handed {
            last_entry: ready.entries.last().map(|e| (e.index, e.term)),
            snapshot: ready.snapshot.as_ref().map(|s| s.index),
            last_committed: ready.committed_entries.last().map(|e| e.index),
        };
        ready
    }

    /// The node has done everything the last `ready()` asked: its entries,
    /// hard state and snapshot are durable (and in storage), its committed
    /// entries applied. The node may have moved data out of `ready`; the
    /// core remembers what it handed out.
    pub fn advance(&mut self, _ready: Ready) {
        let handed = std::mem::take(&mut self.handed);
        let r = &mut self.raft;
        if let Some(index) = handed.snapshot {
            r.log.stable_snap_to(index);
            r.log.applied = r.log.applied.max(index);
        }
        if let Some((index, term)) = handed.last_entry {
            r.log.stable_to(index, term);
        }
        if let Some(index) = handed.last_committed {
            r.log.applied = r.log.applied.max(index);
        }
        if r.role == super::Role::Leader {
            r.on_persisted();
        }
    }

    /// A read-only snapshot of the core's state.
    pub fn status(&self) -> Status {
        let r = &self.raft;
        let progress = r
            .progress
            .iter()
            .map(|(&id, p)| {
                let pp = PeerProgress {
                    match_index: p.match_index,
                    next_index: p.next_index,
                    voter: !p.learner,
                };
                (id, pp)
            })
            .collect();
        Status {
            id: r.id,
            term: r.term,
            vote: r.vote,
            role: r.role,
            leader: r.leader,
            commit: r.log.committed,
            applied: r.log.applied,
            last_index: r.log.last_index(),
            conf: r.conf.clone(),
            progress,
            transferring_to: r.transferee,
        }
    }

    /// Whether replication to `id` is paused for a snapshot (for tests and metrics).
    pub fn is_sending_snapshot_to(&self, id: NodeId) -> bool {
        self.raft
            .progress
            .get(&id)
            .is_some_and(|p| p.state == ProgressState::Snapshot)
    }
}

/// The longest prefix of `unstable` within `max_bytes` (at least one entry):
/// one `Ready` never asks the node to persist more than one WAL batch holds.
fn entries_to_persist(unstable: &[super::Entry], max_bytes: usize) -> Vec<super::Entry> {
    let mut bytes = 0usize;
    let mut n = 0;
    for e in unstable {
        bytes = bytes.saturating_add(e.size_bytes());
        if n > 0 && bytes > max_bytes {
            break;
        }
        n += 1;
    }
    unstable[..n].to_vec()
}

/// While only part of the unstable log is handed out, the durable commit
/// index must not point past the entries made durable with it.
fn clamp_commit(hard: HardState, prev: HardState, last_handed: u64) -> HardState {
    HardState {
        commit: hard.commit.min(last_handed.max(prev.commit)),
        ..hard
    }
}
