//! The Raft state machine proper: roles, terms, ticks and message dispatch.
//! Handlers for each message family live in `election.rs`,
//! `replication.rs`, `read_only.rs` and `membership.rs`.

use std::collections::BTreeMap;

use super::log::RaftLog;
use super::progress::Progress;
use super::read_only::ReadOnly;
use super::rng::SplitMix64;
use super::{
    ConfState, Config, HardState, Message, MessageType, NO_NODE, NodeId, RaftError, ReadState,
    Role, Storage, quorum,
};

/// `Message::context` of Vote/PreVote requests sent because of a leadership
/// transfer: receivers skip the leader-stickiness check (`in_lease`) for them.
pub const CAMPAIGN_TRANSFER: &[u8] = b"transfer";

/// Terms and indexes above this are treated as corrupt or hostile: a real
/// cluster would need centuries to get there, and refusing them keeps every
/// `+ 1` on terms and indexes free of overflow.
pub const MAX_SANE_TERM_OR_INDEX: u64 = u64::MAX >> 2;

/// Bound on the log scan done at startup to rebuild membership (entries per read).
const CONF_SCAN_BATCH_BYTES: usize = 4 << 20;

/// The consensus state of one member.
pub(crate) struct Raft<S: Storage> {
    /// This member's id.
    pub id: NodeId,
    /// Current term (persisted).
    pub term: u64,
    /// Vote in `term` (persisted).
    pub vote: NodeId,
    pub role: Role,
    /// Known leader of `term`, or `NO_NODE`.
    pub leader: NodeId,
    pub log: RaftLog<S>,
    /// Membership in effect: snapshot conf plus every conf change in the log.
    pub conf: ConfState,
    /// `(index, conf before it)` for each conf change entry above the commit
    /// index, oldest first; used to roll membership back on truncation.
    pub conf_history: Vec<(u64, ConfState)>,
    /// Leader only: per-member replication state (including self).
    pub progress: BTreeMap<NodeId, Progress>,
    /// Candidate only: votes received in this (pre-)election.
    pub votes: BTreeMap<NodeId, bool>,
    /// Outgoing messages that may leave before persisting.
    pub msgs: Vec<Message>,
    /// Outgoing messages that may leave only after persisting.
    pub msgs_after_persist: Vec<Message>,
    /// Reads whose index is known, waiting for the node.
    pub read_states: Vec<ReadState>,
    /// Leader only: pending ReadIndex requests and the heartbeat round.
    pub reads: ReadOnly,
    /// Ticks since the last leader contact (follower) or CheckQuorum (leader).
    pub election_elapsed: u32,
    pub heartbeat_elapsed: u32,
    /// This term's election timeout, drawn from `[min, max)`.
    pub randomized_election_tick: u32,
    /// Leader only: target of an in-progress leadership transfer.
    pub transferee: NodeId,
    /// Ticks since the transfer started (abandoned at `election_tick_min`).
    pub transfer_elapsed: u32,
    /// Leader only: bytes of proposals appended but not yet handed out as committed.
    pub uncommitted_bytes: usize,
    /// Leader only: proposals appended since the last broadcast.
    pub pending_bcast: bool,
    pub rng: SplitMix64,
    pub cfg: Config,
}

impl<S: Storage> Raft<S> {
    /// Restores a member from `storage`.
    pub fn new(cfg: &Config, storage: S) -> Result<Self, RaftError> {
        validate(cfg)?;
        let (hs, _) = storage.initial_state();
        let mut log = RaftLog::new(storage);
        let first = log.first_index();
        if hs.commit > log.last_index() {
            return Err(RaftError::InconsistentState(format!(
                "hard state commit {} is past the last log index {}",
                hs.commit,
                log.last_index()
            )));
        }
        // A snapshot may be newer than the recorded commit: it is committed.
        log.committed = hs.commit.max(first - 1);
        log.applied = start_applied(cfg.applied, first - 1, log.committed)?;
        let mut raft = Raft {
            id: cfg.id,
            term: hs.term,
            vote: hs.vote,
            role: Role::Follower,
            leader: NO_NODE,
            conf: log.storage.snapshot_meta().conf,
            conf_history: Vec::new(),
            log,
            progress: BTreeMap::new(),
            votes: BTreeMap::new(),
            msgs: Vec::new(),
            msgs_after_persist: Vec::new(),
            read_states: Vec::new(),
            reads: ReadOnly::default(),
            election_elapsed: 0,
            heartbeat_elapsed: 0,
            randomized_election_tick: cfg.election_tick_min,
            transferee: NO_NODE,
            transfer_elapsed: 0,
            uncommitted_bytes: 0,
            pending_bcast: false,
            rng: SplitMix64::new(cfg.seed),
            cfg: cfg.clone(),
        };
        raft.replay_conf_changes()?;
        raft.reset_timers();
        Ok(raft)
    }

    /// Rebuilds membership from the snapshot plus the log (effect-on-append).
    fn replay_conf_changes(&mut self) -> Result<(), RaftError> {
        let mut lo = self.log.first_index();
        let hi = self.log.last_index() + 1;
        while lo < hi {
            let batch = self.log.slice(lo, hi, CONF_SCAN_BATCH_BYTES)?;
            let Some(last) = batch.last().map(|e| e.index) else {
                break;
            };
            self.apply_conf_entries(&batch);
            lo = last + 1;
        }
        let committed = self.log.committed;
        self.conf_history.retain(|(index, _)| *index > committed);
        Ok(())
    }

    pub fn hard_state(&self) -> HardState {
        HardState {
            term: self.term,
            vote: self.vote,
            commit: self.log.committed,
        }
    }

    /// Whether this member may campaign: only voters do.
    pub fn promotable(&self) -> bool {
        self.conf.voters.contains(&self.id)
    }

    /// Whether the leader has committed an entry of its own term yet.
    pub fn committed_in_term(&self) -> bool {
        self.log.term(self.log.committed) == Ok(self.term)
    }

    pub fn send(&mut self, mut m: Message) {
        m.from = self.id;
        self.msgs.push(m);
    }

    pub fn send_after_persist(&mut self, mut m: Message) {
        m.from = self.id;
        self.msgs_after_persist.push(m);
    }

    fn reset_timers(&mut self) {
        self.election_elapsed = 0;
        self.heartbeat_elapsed = 0;
        let span = self
            .cfg
            .election_tick_max
            .saturating_sub(self.cfg.election_tick_min);
        self.randomized_election_tick =
            self.cfg.election_tick_min + self.rng.below(span as u64) as u32;
    }

    /// Clears per-role state when the role or term changes.
    fn reset(&mut self, term: u64) {
        if term != self.term {
            self.term = term;
            self.vote = NO_NODE;
        }
        self.leader = NO_NODE;
        self.reset_timers();
        self.votes.clear();
        self.progress.clear();
        self.transferee = NO_NODE;
        self.transfer_elapsed = 0;
        self.reads = ReadOnly::default();
        self.uncommitted_bytes = 0;
        self.pending_bcast = false;
    }

    pub fn become_follower(&mut self, term: u64, leader: NodeId) {
        self.reset(term);
        self.role = Role::Follower;
        self.leader = leader;
    }

    pub fn become_pre_candidate(&mut self) {
        // Term and vote are untouched: a pre-election changes nothing durable.
        let term = self.term;
        self.reset(term);
        self.role = Role::PreCandidate;
    }

    pub fn become_candidate(&mut self) {
        let term = self.term + 1;
        self.reset(term);
        self.vote = self.id;
        self.role = Role::Candidate;
    }

    pub fn become_leader(&mut self) {
        let term = self.term;
        self.reset(term);
        self.role = Role::Leader;
        self.leader = self.id;
        self.sync_progress();
        let stable = self.log.stable_last();
        if let Some(pr) = self.progress.get_mut(&self.id) {
            pr.maybe_update(stable);
            pr.become_replicate();
        }
        // Raft §8: a no-op of the new term lets earlier entries commit (Figure 8).
        self.append_as_leader(vec![super::Entry {
            index: 0,
            term: 0,
            kind: super::EntryKind::Noop,
            data: Vec::new(),
        }]);
        self.bcast_append();
    }

    /// Advances time by one tick.
    pub fn tick(&mut self) {
        if self.role == Role::Leader {
            self.tick_leader();
        } else {
            self.tick_election();
        }
    }

    fn tick_election(&mut self) {
        self.election_elapsed += 1;
        if self.promotable() && self.election_elapsed >= self.randomized_election_tick {
            self.election_elapsed = 0;
            self.hup(false);
        }
    }

    fn tick_leader(&mut self) {
        self.heartbeat_elapsed += 1;
        self.election_elapsed += 1;
        if self.election_elapsed >= self.cfg.election_tick_min {
            self.election_elapsed = 0;
            if self.cfg.check_quorum && !self.quorum_active() {
                let term = self.term;
                self.become_follower(term, NO_NODE);
                return;
            }
        }
        if self.transferee != NO_NODE {
            self.transfer_elapsed += 1;
            if self.transfer_elapsed >= self.cfg.election_tick_min {
                self.transferee = NO_NODE;
                self.transfer_elapsed = 0;
            }
        }
        if self.heartbeat_elapsed >= self.cfg.heartbeat_tick {
            self.heartbeat_elapsed = 0;
            self.bcast_heartbeat();
        }
    }

    /// CheckQuorum: a majority of voters was heard from this round. Resets
    /// the per-peer flags for the next round.
    fn quorum_active(&mut self) -> bool {
        let id = self.id;
        let progress = &self.progress;
        let active = quorum::has_quorum(&self.conf.voters, |v| {
            v == id || progress.get(&v).is_some_and(|p| p.recent_active)
        });
        for pr in self.progress.values_mut() {
            pr.recent_active = false;
        }
        active
    }

    /// A follower that heard from a leader less than a minimum election
    /// timeout ago ignores (pre-)vote requests (thesis §4.2.3).
    pub fn in_lease(&self) -> bool {
        self.cfg.check_quorum
            && self.election_elapsed < self.cfg.election_tick_min
            && self.leader != NO_NODE
    }

    /// Entry point for every message from a peer.
    pub fn step(&mut self, m: Message) -> Result<(), RaftError> {
        if m.to != self.id || m.from == NO_NODE || m.from == self.id || !is_sane(&m) {
            return Ok(());
        }
        if m.term > self.term {
            if !self.step_higher_term(&m) {
                return Ok(());
            }
        } else if m.term < self.term {
            self.step_lower_term(&m);
            return Ok(());
        }
        self.dispatch(m)
    }

    /// Returns `false` if the message must be dropped.
    fn step_higher_term(&mut self, m: &Message) -> bool {
        use MessageType::*;
        let is_vote = matches!(m.msg_type, PreVote | Vote);
        if is_vote && m.context.as_slice() != CAMPAIGN_TRANSFER && self.in_lease() {
            return false;
        }
        match m.msg_type {
            // A pre-vote changes nothing: our term stays.
            PreVote => {}
            PreVoteResp if !m.reject => {}
            Append | Heartbeat | Snapshot => self.become_follower(m.term, m.from),
            _ => self.become_follower(m.term, NO_NODE),
        }
        true
    }

    fn step_lower_term(&mut self, m: &Message) {
        match m.msg_type {
            // Tell a stale leader about the newer term so it steps down
            // (needed with CheckQuorum/PreVote, where our term may have
            // moved while the old leader could not hear us).
            MessageType::Append | MessageType::Heartbeat
                if self.cfg.check_quorum || self.cfg.pre_vote =>
            {
                let resp = Message::new(MessageType::AppendResp, self.id, m.from, self.term);
                self.send(resp);
            }
            MessageType::PreVote => {
                let mut resp = Message::new(MessageType::PreVoteResp, self.id, m.from, self.term);
                resp.reject = true;
                self.send(resp);
            }
            _ => {}
        }
    }

    fn dispatch(&mut self, m: Message) -> Result<(), RaftError> {
        use MessageType::*;
        match m.msg_type {
            PreVote | Vote => self.handle_vote_request(&m),
            PreVoteResp | VoteResp => self.handle_vote_response(&m),
            Append => self.handle_append(m),
            AppendResp => self.handle_append_response(&m),
            Heartbeat => self.handle_heartbeat(&m),
            HeartbeatResp => self.handle_heartbeat_response(&m),
            Snapshot => self.handle_snapshot(m),
            TimeoutNow => self.handle_timeout_now(),
            ReadIndex => self.handle_read_index_request(m),
            ReadIndexResp => self.handle_read_index_response(m),
            Propose => self.handle_forwarded_proposal(m),
        }
        Ok(())
    }

    /// Records that a leader's message arrived: follow it, reset the timer.
    pub fn follow(&mut self, leader: NodeId) {
        if self.role != Role::Follower {
            let term = self.term;
            self.become_follower(term, leader);
        }
        self.leader = leader;
        self.election_elapsed = 0;
    }
}

/// Every term and index in `m` is at most [`MAX_SANE_TERM_OR_INDEX`].
fn is_sane(m: &Message) -> bool {
    let ok = |v: u64| v <= MAX_SANE_TERM_OR_INDEX;
    let fields = [
        m.term,
        m.log_term,
        m.index,
        m.commit,
        m.reject_hint,
        m.hint_term,
    ];
    fields.into_iter().all(ok)
        && m.entries.iter().all(|e| ok(e.index) && ok(e.term))
        && m.snapshot
            .as_ref()
            .is_none_or(|s| ok(s.index) && ok(s.term))
}

/// Where applying resumes: `applied` (0 = the snapshot's index), refused
/// outside `[snapshot, commit]`: a state machine ahead of the durable commit,
/// or behind the snapshot the log starts at, cannot be continued.
fn start_applied(applied: u64, snapshot: u64, commit: u64) -> Result<u64, RaftError> {
    if applied == 0 {
        return Ok(snapshot);
    }
    if applied < snapshot || applied > commit {
        return Err(RaftError::InvalidConfig(format!(
            "applied index {applied} is outside [snapshot {snapshot}, commit {commit}]"
        )));
    }
    Ok(applied)
}

fn validate(cfg: &Config) -> Result<(), RaftError> {
    let bad = |s: &str| Err(RaftError::InvalidConfig(s.to_string()));
    if cfg.id == NO_NODE {
        return bad("id must not be 0");
    }
    if cfg.heartbeat_tick == 0 || cfg.election_tick_min <= cfg.heartbeat_tick {
        return bad("need 0 < heartbeat_tick < election_tick_min");
    }
    if cfg.election_tick_max <= cfg.election_tick_min {
        return bad("need election_tick_min < election_tick_max");
    }
    if cfg.max_inflight_msgs == 0 || cfg.max_msg_entries == 0 {
        return bad("max_inflight_msgs and max_msg_entries must be positive");
    }
    Ok(())
}
