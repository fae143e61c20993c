//! The runtime task: the only owner of the Raft core, the WAL and the state
//! machine.
//!
//! Each loop iteration:
//! 1. takes input (a tick, a batch of peer messages, a batch of client
//!    requests) and feeds it to the core (`tick` / `step` / `propose` /
//!    `read_index`);
//! 2. if the core has a `Ready`: sends `messages` at once (the leader's
//!    appends overlap its own fsync, Raft thesis §10.2.1), starts persisting
//!    entries and hard state with ONE WAL append (one fsync, on the blocking
//!    pool), applies the committed entries and answers the clients waiting
//!    on them while that fsync runs (they were durable on a majority before
//!    this Ready), then, once the append is durable, sends
//!    `persisted_messages` (votes and acks only after they are durable) and
//!    calls `advance`.
//!
//! Inputs that arrive during the fsync queue up in the bounded channels and
//! form the next batch, peers' and clients' together: that is the group
//! commit.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tracing::{info, warn};

use super::handle::{ClientInput, LeaderView, PeerInput};
use super::identity::Identity;
use super::log::RawNode;
use super::peers::Peers;
use super::proposals::Proposals;
use super::reads::{PendingRead, ReadQueue, ctx_bytes};
use super::snapshot::SnapshotState;
use super::store::StorageFailure;
use super::view::View;
use super::{Member, NodeError, reason};
use crate::config::Config;
use crate::metrics::{Metrics, gauge_value};
use crate::raft::{Message, NodeId, Ready, Role};
use crate::storage::{StateMachine, Wal};

/// Client inputs taken per loop iteration before the core is asked for a Ready.
const MAX_CLIENT_INPUTS_PER_BATCH: usize = 4096;
/// Peer batches taken per loop iteration.
const MAX_PEER_INPUTS_PER_BATCH: usize = 256;
/// Applied may trail commit by this much and the node still counts as ready.
const READY_MAX_APPLY_LAG: u64 = 1000;
/// Reads queued at most; more get `UNAVAILABLE overloaded`.
const MAX_PENDING_READS: usize = 100_000;

/// A WAL append running on the blocking pool (inline in the simulator).
type PersistTask = super::env::BlockingJob<Result<(), crate::storage::WalError>>;

/// Everything the runtime task owns.
pub struct Runtime {
    /// Validated flags.
    pub(super) cfg: Arc<Config>,
    /// This node's durable identity.
    pub(super) identity: Identity,
    /// The Raft core.
    pub(super) raw: RawNode,
    /// The WAL (appends run as `blocking` work; it group-commits internally).
    pub(super) wal: Arc<Wal>,
    /// The replicated key-value state and member directory.
    pub(super) sm: StateMachine,
    /// Snapshot files and in-progress snapshot work.
    pub(super) snap: SnapshotState,
    /// Value-log merge in flight and its waiters.
    pub(super) merges: super::merge::Merges,
    /// Outbound peer streams and what peers advertise about themselves.
    pub(super) peers: Peers,
    /// Stamped on outbound batches; set once when a joining node is adopted.
    pub(super) cluster_id_tx: watch::Sender<String>,
    /// Published leader view and the leaderless clock.
    pub(super) view: View,
    /// Metrics.
    pub(super) metrics: Arc<Metrics>,
    /// Client requests.
    pub(super) client_rx: mpsc::Receiver<ClientInput>,
    /// Peer traffic and internal completions.
    pub(super) peer_rx: mpsc::Receiver<PeerInput>,
    /// For tasks the runtime spawns (snapshot transfers) to report back.
    pub(super) peer_tx: mpsc::Sender<PeerInput>,
    /// Writes and membership changes waiting for apply.
    pub(super) proposals: Proposals,
    /// Linearizable reads.
    pub(super) reads: ReadQueue,
    /// Last known leader and role.
    pub(super) leader: NodeId,
    /// Last known role.
    pub(super) role: Role,
    /// Highest index applied to the state machine.
    pub(super) applied: u64,
    /// Set by SIGTERM.
    pub(super) shutdown: watch::Receiver<bool>,
    /// Lease deadlines (kept while leading) and lease-id generation.
    pub(super) lease_clock: super::lease_clock::LeaseClock,
    /// Where WAL appends and snapshot IO run (see [`super::env`]).
    pub(super) blocking: super::env::Blocking,
}

impl Runtime {
    /// Runs until shutdown completes.
    pub async fn run(mut self) {
        let mut ticker = tokio::time::interval(self.cfg.tick);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        self.sync_peers_from_directory();
        self.publish_view();
        loop {
            tokio::select! {
                biased;
                _ = self.shutdown.changed() => break,
                _ = ticker.tick() => self.on_tick(),
                Some(input) = self.peer_rx.recv() => self.on_peer_input(input),
                Some(input) = self.client_rx.recv() => self.on_client_input(input),
            }
            // Whatever else waits, on either channel, goes into the same
            // Ready: one fsync for the acks and proposals that queued up
            // during the previous one.
            self.take_queued_inputs();
            if !self.drive().await {
                return;
            }
        }
        self.graceful_shutdown(&mut ticker).await;
    }

    /// Issues pending read batches and processes every available Ready.
    /// Returns false when the node must stop (fatal storage error).
    async fn drive(&mut self) -> bool {
        self.start_read_batch();
        while self.raw.has_ready() {
            let rd = self.raw.ready();
            if let Err(e) = self.handle_ready(rd).await {
                self.on_fatal_storage_error(&e);
                return false;
            }
        }
        self.answer_reads();
        self.maybe_snapshot();
        self.maybe_merge();
        self.publish_view();
        true
    }

    /// The node can no longer persist (a batch the WAL refused, ENOSPC, an
    /// fsync error, a poisoned WAL). Nothing is retried: an fsync that failed
    /// once may have dropped dirty pages, so the only safe answer is to stop.
    /// Every waiter learns the outcome is unknown, health fails at once, and
    /// `main` exits non-zero after a short drain so the pod restarts.
    fn on_fatal_storage_error(&mut self, e: &StorageFailure) {
        tracing::error!(
            error = %e,
            data_dir = %self.cfg.data_dir.display(),
            "fatal storage error: cannot persist; failing every waiter, marking unhealthy and exiting"
        );
        self.metrics.storage_fatal.set(1);
        self.view.mark_failed();
        self.fail_everything(&NodeError::unavailable(reason::STORAGE_FAILURE));
    }

    fn on_tick(&mut self) {
        self.raw.tick();
        let retry_after = self.cfg.tick * self.cfg.election_ticks;
        let now = Instant::now();
        self.reads.retry_stale(now, retry_after, false);
        self.fail_reads_without_leader(now);
        self.update_progress_metrics();
        self.expire_leases(now);
        let unknown = NodeError::unavailable(reason::TIMED_OUT);
        self.proposals.expire_forwarded(Some(now), &unknown);
    }

    /// Linearizable reads cannot be served without a leader; after
    /// `leader_wait` they fail instead of hanging.
    fn fail_reads_without_leader(&mut self, now: Instant) {
        let Some(leaderless) = self.view.leaderless_for(self.leader, now) else {
            return;
        };
        if leaderless >= self.cfg.leader_wait() && !self.reads.is_empty() {
            self.reads
                .fail_all(&NodeError::unavailable(reason::NO_LEADER));
        }
    }

    /// Takes the inputs already queued, peers first (their acks may commit
    /// entries), up to a bound per channel so one loop turn stays short.
    fn take_queued_inputs(&mut self) {
        self.take_queued_peer_inputs();
        for _ in 0..MAX_CLIENT_INPUTS_PER_BATCH {
            match self.client_rx.try_recv() {
                Ok(i) => self.on_client_input(i),
                Err(_) => break,
            }
        }
    }

    fn take_queued_peer_inputs(&mut self) {
        for _ in 0..MAX_PEER_INPUTS_PER_BATCH {
            match self.peer_rx.try_recv() {
                Ok(i) => self.on_peer_input(i),
                Err(_) => break,
            }
        }
    }

    fn on_peer_input(&mut self, input: PeerInput) {
        match input {
            PeerInput::Messages {
                msgs,
                sender,
                cluster_id,
            } => {
                if !self.accept_cluster(&cluster_id) {
                    return;
                }
                if let Some(from) = msgs.first().map(|m| m.from) {
                    let sm = &self.sm;
                    self.peers
                        .observe(from, sender, || super::store::directory(sm));
                }
                for m in msgs {
                    self.step(m);
                }
            }
            PeerInput::Snapshot {
                msg,
                cluster_id,
                staged,
                done,
            } => {
                if !self.accept_cluster(&cluster_id) {
                    let _ = done.send(Err("cluster id mismatch".into()));
                    return;
                }
                let result = self.stage_received_snapshot(msg, *staged);
                let _ = done.send(result);
            }
            PeerInput::SnapshotSent { to, ok } => self.on_snapshot_sent(to, ok),
            PeerInput::SnapshotWritten(result) => self.on_snapshot_written(result),
            PeerInput::MergeCopied(done) => self.on_merge_copied(*done),
        }
    }

    /// Checks a peer's cluster id; a joining node adopts the first one it sees.
    fn accept_cluster(&mut self, cluster_id: &str) -> bool {
        if self.identity.cluster_id == cluster_id {
            return true;
        }
        if self.identity.cluster_id.is_empty() && !cluster_id.is_empty() {
            info!(cluster = %cluster_id, "joined cluster");
            self.identity.cluster_id = cluster_id.to_string();
            if let Err(e) = self.identity.save(&self.cfg.data_dir) {
                warn!(error = %e, "could not persist the adopted cluster id");
            }
            self.cluster_id_tx.send_replace(cluster_id.to_string());
            return true;
        }
        warn!(ours = %self.identity.cluster_id, theirs = %cluster_id, "dropping traffic from another cluster");
        false
    }

    pub(super) fn step(&mut self, m: Message) {
        if let Err(e) = self.raw.step(m) {
            tracing::debug!(error = %e, "step rejected a message");
        }
    }

    fn on_client_input(&mut self, input: ClientInput) {
        match input {
            ClientInput::Propose {
                op,
                forward,
                reply,
                received,
            } => self.propose_write(op, forward, reply, received),
            ClientInput::Read {
                query,
                linearizable,
                reply,
            } => {
                let read = PendingRead {
                    query,
                    reply,
                    min_index: self.proposals.last_proposed(),
                };
                if !linearizable {
                    self.answer_read(self.applied, read);
                } else if self.reads.len() >= MAX_PENDING_READS {
                    let _ = read
                        .reply
                        .send(Err(NodeError::unavailable(reason::OVERLOADED)));
                } else {
                    self.reads.push(read);
                }
            }
            ClientInput::Admin { cmd, reply } => self.on_admin(cmd, reply),
            ClientInput::Lease { query, reply } => {
                let _ = reply.send(self.answer_lease(query));
            }
        }
    }

    fn start_read_batch(&mut self) {
        if self.leader == 0 {
            return;
        }
        if let Some(ctx) = self.reads.start_batch(Instant::now())
            && let Err(e) = self.raw.read_index(ctx_bytes(ctx))
        {
            tracing::debug!(error = %e, "read_index refused; will retry");
            self.reads.abort_batch(ctx);
        }
    }

    fn answer_reads(&mut self) {
        for (_, read) in self.reads.take_ready(self.applied) {
            self.answer_read(self.applied, read);
        }
    }

    /// Processes one Ready in the documented order, with one overlap: the
    /// committed entries are applied (and their clients answered) while the
    /// WAL syncs this Ready's new entries. The core hands out only committed
    /// entries that are already durable here and on a majority, so neither
    /// the answers nor the state machine depend on this Ready's fsync; what
    /// does (the in-memory log, the leader counting its own log, and the
    /// acknowledgements in `persisted_messages`) still waits for it.
    async fn handle_ready(&mut self, mut rd: Ready) -> Result<(), StorageFailure> {
        let stepped_down = match rd.soft_state.take() {
            Some(ss) => self.on_soft_state(ss.leader, ss.role),
            None => false,
        };
        self.send_all(std::mem::take(&mut rd.messages));
        if let Some(meta) = rd.snapshot.clone() {
            self.install_snapshot(&meta)?;
        }
        let syncing = self.start_persist(&rd);
        // `advance` reads `committed_entries`, `entries` and `snapshot`, so
        // they stay in the Ready; entries are applied by reference.
        let committed = std::mem::take(&mut rd.committed_entries);
        let applied = committed.iter().try_for_each(|e| self.apply_entry(e));
        rd.committed_entries = committed;
        // Wait for the WAL even when applying failed: nothing may touch it
        // while the write is in flight.
        let persisted = self.finish_persist(&rd, syncing).await;
        applied?;
        persisted?;
        self.send_all(std::mem::take(&mut rd.persisted_messages));
        if stepped_down {
            // After applying: a leader that removed itself still answers the
            // removal it committed in this Ready.
            self.fail_pending_writes(&NodeError::unavailable(reason::LEADERSHIP_LOST));
        }
        for rs in std::mem::take(&mut rd.read_states) {
            self.reads.confirm(&rs.context, rs.index);
        }
        self.raw.advance(rd);
        Ok(())
    }

    /// Starts the Ready's one WAL append (one fsync) as `blocking` work (the
    /// blocking pool in production); `None` when there is nothing to write.
    fn start_persist(&self, rd: &Ready) -> Option<PersistTask> {
        if rd.entries.is_empty() && rd.hard_state.is_none() {
            return None;
        }
        let wal = self.wal.clone();
        let entries = rd.entries.clone();
        let hs = rd.hard_state;
        // Only the commit index moved: no fsync (see `record_commit_unsynced`).
        let sync = rd.must_sync || !entries.is_empty();
        Some(self.blocking.start(move || match hs {
            Some(hs) if !sync => wal.record_commit_unsynced(hs),
            _ => wal.append(&entries, hs),
        }))
    }

    /// Waits for the append `start_persist` started, then records the
    /// entries in the in-memory log the core reads.
    async fn finish_persist(
        &mut self,
        rd: &Ready,
        syncing: Option<PersistTask>,
    ) -> Result<(), StorageFailure> {
        let Some(task) = syncing else {
            return Ok(());
        };
        task.join().await.map_err(StorageFailure::other)??;
        let bytes: usize = rd.entries.iter().map(|e| e.size_bytes()).sum();
        self.metrics.wal_bytes.inc_by(bytes as u64);
        if let (Some(first), Some(last)) = (rd.entries.first(), rd.entries.last()) {
            for received in self.proposals.local_received(first.index..=last.index) {
                self.metrics.observe_stage(
                    crate::metrics::Stage::durable,
                    crate::metrics::WritePath::local,
                    received,
                );
            }
        }
        self.raw_storage_append(rd)
    }

    /// Records a leader/role change; returns whether this node stopped leading.
    fn on_soft_state(&mut self, leader: NodeId, role: Role) -> bool {
        if leader != self.leader {
            self.metrics.leader_changes.inc();
            info!(leader, ?role, "leader changed");
            // A ReadIndex request sent to the old leader may be lost.
            self.reads.retry_stale(Instant::now(), Duration::ZERO, true);
        }
        let was_leader = self.role == Role::Leader;
        self.leader = leader;
        self.role = role;
        self.on_lease_role(was_leader, role == Role::Leader);
        self.metrics.is_leader.set(i64::from(role == Role::Leader));
        was_leader && role != Role::Leader
    }

    /// Fails writes whose entries may never commit under this node.
    pub(super) fn fail_pending_writes(&mut self, err: &NodeError) {
        self.proposals.fail_all(err);
    }

    fn fail_everything(&mut self, err: &NodeError) {
        self.fail_pending_writes(err);
        // A forwarded write may still commit: its outcome is unknown.
        let unknown = NodeError::unavailable(reason::TIMED_OUT);
        self.proposals.expire_forwarded(None, &unknown);
        self.reads.fail_all(err);
        self.view.mark_stopping();
    }

    /// Routes outbound messages: snapshots go through a streaming transfer,
    /// everything else onto the peer's queue.
    pub(super) fn send_all(&mut self, msgs: Vec<Message>) {
        for m in msgs {
            if m.msg_type == crate::raft::MessageType::Snapshot {
                self.send_snapshot(m);
                continue;
            }
            let to = m.to;
            if !self.peers.send(m) {
                self.raw.report_unreachable(to);
            }
        }
    }

    /// Publishes the leader view when it changed.
    pub(super) fn publish_view(&mut self) {
        let status = self.raw.status();
        let leader = self.member(self.leader);
        let member = status.conf.contains(self.identity.id);
        let ready = member
            && self.leader != 0
            && status.commit.saturating_sub(self.applied) <= READY_MAX_APPLY_LAG;
        let view = LeaderView {
            leader_id: self.leader,
            is_self: self.leader == self.identity.id && self.role == Role::Leader,
            leader,
            ready,
            stopping: false,
            failed: false,
        };
        self.view.publish(view, *self.shutdown.borrow());
        self.metrics.term.set(gauge_value(status.term));
        self.metrics.commit_index.set(gauge_value(status.commit));
        self.metrics.applied_index.set(gauge_value(self.applied));
    }

    fn update_progress_metrics(&mut self) {
        if self.role != Role::Leader {
            return;
        }
        let status = self.raw.status();
        for (id, p) in &status.progress {
            let lag = status.last_index.saturating_sub(p.match_index);
            self.metrics
                .follower_lag
                .get_or_create(&crate::metrics::PeerLabels { peer: *id })
                .set(gauge_value(lag));
        }
    }

    /// A member's directory entry.
    pub(super) fn member(&self, id: NodeId) -> Option<Member> {
        if id == 0 {
            return None;
        }
        let seen = if id == self.identity.id {
            // This node's own addresses come from its flags (the bootstrap
            // entries leave its gRPC address empty, see `initial_members`).
            Some(super::bootstrap::self_member(&self.cfg, id))
        } else {
            self.peers.observed(id).cloned()
        };
        let mut m = self.directory().remove(&id)?;
        if let Some(seen) = seen {
            for (field, value) in [
                (&mut m.client_addr, &seen.client_addr),
                (&mut m.grpc_addr, &seen.grpc_addr),
            ] {
                if field.is_empty() {
                    field.clone_from(value);
                }
            }
        }
        Some(m)
    }

    /// SIGTERM: a leader hands over first, then the loop keeps serving
    /// in-flight work until the grace period ends or nothing is pending.
    async fn graceful_shutdown(&mut self, ticker: &mut tokio::time::Interval) {
        info!("shutting down");
        let deadline = Instant::now() + self.cfg.shutdown_grace;
        if self.role == Role::Leader
            && let Some(target) = self.best_transfer_target()
        {
            info!(target, "transferring leadership before exit");
            let _ = self.raw.transfer_leader(target);
        }
        while Instant::now() < deadline {
            let handed_over = self.role != Role::Leader || self.best_transfer_target().is_none();
            if handed_over && self.proposals.no_writes() {
                break;
            }
            tokio::select! {
                _ = ticker.tick() => self.on_tick(),
                Some(input) = self.peer_rx.recv() => self.on_peer_input(input),
            }
            self.take_queued_peer_inputs();
            if !self.drive().await {
                break;
            }
        }
        self.fail_everything(&NodeError::unavailable(reason::SHUTTING_DOWN));
        info!("runtime stopped");
    }
}
