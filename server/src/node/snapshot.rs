//! Snapshot orchestration: taking snapshots (automatically past the
//! threshold and on demand), compacting the log behind them, streaming them
//! to followers that fell behind the log, and installing received ones.
//!
//! A received snapshot arrives staged (not loadable). It is kept only if
//! the core accepts it (a stale one is deleted at once) and published as a
//! loadable `snap-*.snap` only after the WAL's snapshot marker is durable,
//! so a crash at any point leaves a bootable node.

use std::collections::HashSet;
use tokio::time::Instant;

use tokio::sync::oneshot;
use tracing::{info, warn};

use super::handle::{AdminReply, PeerInput};
use super::log::RawNode;
use super::outbound::SnapshotTransfer;
use super::runtime::Runtime;
use super::store::{self as adapter, SnapshotFiles, StorageFailure};
use super::{NodeError, SnapshotInfo};
use crate::raft::{Message, NodeId, SnapshotMeta, Storage};
use crate::storage::StagedSnapshot;

/// Entries kept in the log behind a snapshot so slightly slow followers can
/// still catch up from the log instead of needing a snapshot.
pub const LOG_MARGIN_ENTRIES: u64 = 1000;

/// Snapshot bookkeeping owned by the runtime.
pub struct SnapshotState {
    /// The snapshot files on disk.
    pub files: SnapshotFiles,
    /// A snapshot is being written on a background thread.
    pub in_progress: bool,
    /// When the in-progress snapshot started (for the duration metric).
    pub started: Option<Instant>,
    /// Admin callers waiting for the in-progress snapshot.
    pub waiters: Vec<oneshot::Sender<Result<AdminReply, NodeError>>>,
    /// Index of the newest snapshot (0 = none).
    pub last_index: u64,
    /// Newest snapshot's description.
    pub latest: Option<SnapshotInfo>,
    /// Followers currently receiving a snapshot.
    pub sending: HashSet<NodeId>,
    /// A received snapshot the core accepted, waiting for its Ready.
    pub staged: Option<StagedSnapshot>,
    /// Entries between automatic snapshots.
    pub threshold_entries: u64,
    /// WAL size, in percent of the newest snapshot's size, that an
    /// automatic snapshot also waits for (0 = none).
    pub log_percent: u64,
    /// Entries kept in the log behind a snapshot ([`LOG_MARGIN_ENTRIES`]
    /// unless the environment says otherwise).
    pub margin_entries: u64,
}

impl SnapshotState {
    /// Wraps the snapshot files found at boot.
    pub fn new(
        files: SnapshotFiles,
        threshold_entries: u64,
        log_percent: u64,
        margin_entries: u64,
    ) -> Self {
        let latest = files.latest_info();
        SnapshotState {
            last_index: latest.map(|l| l.index).unwrap_or(0),
            latest,
            files,
            in_progress: false,
            started: None,
            waiters: Vec::new(),
            sending: HashSet::new(),
            staged: None,
            threshold_entries,
            log_percent,
            margin_entries,
        }
    }

    /// Whether an automatic snapshot is due with `applied` entries applied;
    /// `wal_bytes` (the WAL's size on disk) is asked for only when the
    /// entry count is reached.
    fn due(&self, applied: u64, wal_bytes: impl FnOnce() -> u64) -> bool {
        let entries = applied.saturating_sub(self.last_index);
        if entries < self.threshold_entries {
            return false;
        }
        let last_size = self.latest.map_or(0, |l| l.size_bytes);
        log_grown_enough(wal_bytes(), last_size, self.log_percent)
    }

    /// The newest snapshot, for Admin.Status.
    pub fn latest_info(&self) -> Option<SnapshotInfo> {
        self.latest
    }
}

/// The size half of the automatic snapshot rule (the other half is
/// `--snapshot-threshold` entries): unless `log_percent` is 0, the WAL on
/// disk must have reached `log_percent`% of the newest snapshot's size. It
/// bounds the bytes rewritten per byte logged (a 300 MB state is not
/// rewritten every 10,000 small writes), while the WAL replayed at boot stays
/// a fixed fraction of the snapshot. It reads the WAL's size rather than
/// counting appends, so it holds across restarts; the segments a snapshot
/// keeps as a margin count too, so a small state snapshots on the entry
/// count alone.
fn log_grown_enough(wal_bytes: u64, last_snapshot_bytes: u64, log_percent: u64) -> bool {
    u128::from(wal_bytes) * 100 >= u128::from(last_snapshot_bytes) * u128::from(log_percent)
}

/// What a snapshot of the state applied through `index` records: its term
/// and the membership as of `index` (snapshot conf plus the log's conf
/// changes up to it). Never `status().conf`: membership takes effect when
/// appended, so that may include a change that is not committed and may
/// still be truncated.
pub(super) fn snapshot_meta_at(raw: &RawNode, index: u64) -> SnapshotMeta {
    let storage = raw.storage();
    SnapshotMeta {
        index,
        term: storage.term(index).unwrap_or(0),
        conf: storage.conf_at(index),
    }
}

impl Runtime {
    /// Starts an automatic snapshot once enough entries were applied.
    pub(super) fn maybe_snapshot(&mut self) {
        let wal = &self.wal;
        if !self.snap.in_progress && self.snap.due(self.applied, || wal.stats().total_bytes) {
            self.start_snapshot();
        }
    }

    /// Admin.TakeSnapshot: joins the running snapshot or starts one.
    pub(super) fn snapshot_on_demand(
        &mut self,
        reply: oneshot::Sender<Result<AdminReply, NodeError>>,
    ) {
        if !self.snap.in_progress
            && self.applied == self.snap.last_index
            && let Some(info) = self.snap.latest
        {
            let _ = reply.send(Ok(AdminReply::Snapshot(info)));
            return;
        }
        self.snap.waiters.push(reply);
        if !self.snap.in_progress {
            self.start_snapshot();
        }
    }

    fn start_snapshot(&mut self) {
        let index = self.applied;
        if index == 0 {
            self.finish_waiters(Err(NodeError::Unavailable("nothing applied yet".into())));
            return;
        }
        let meta = snapshot_meta_at(&self.raw, index);
        self.snap.in_progress = true;
        self.snap.started = Some(Instant::now());
        let pending = adapter::start_snapshot(&self.blocking, &self.snap.files, &self.sm, meta);
        let tx = self.peer_tx.clone();
        tokio::spawn(async move {
            let result = pending.await;
            let _ = tx.send(PeerInput::SnapshotWritten(result)).await;
        });
    }

    /// The background write finished: compact and answer waiters.
    pub(super) fn on_snapshot_written(
        &mut self,
        result: Result<(SnapshotMeta, crate::storage::SnapshotFile), String>,
    ) {
        self.snap.in_progress = false;
        if let Some(started) = self.snap.started.take() {
            self.metrics
                .snapshot_seconds
                .observe(started.elapsed().as_secs_f64());
        }
        match result {
            Ok((meta, file)) => {
                let info = self.snap.files.set_latest(file);
                self.metrics.snapshots.inc();
                info!(
                    index = info.index,
                    bytes = info.size_bytes,
                    "snapshot written"
                );
                self.snap.last_index = info.index;
                self.snap.latest = Some(info);
                self.compact_behind(&meta);
                self.finish_waiters(Ok(AdminReply::Snapshot(info)));
            }
            Err(e) => {
                warn!(error = %e, "snapshot failed");
                self.finish_waiters(Err(NodeError::Unavailable(format!("snapshot failed: {e}"))));
            }
        }
    }

    fn finish_waiters(&mut self, result: Result<AdminReply, NodeError>) {
        for w in self.snap.waiters.drain(..) {
            let _ = w.send(result.clone());
        }
    }

    /// Drops log entries the snapshot covers, minus a margin for slow followers.
    fn compact_behind(&mut self, meta: &SnapshotMeta) {
        let keep_from = meta.index.saturating_sub(self.snap.margin_entries);
        if keep_from > 0 {
            self.raw_storage_compact(keep_from);
        }
        // The WAL keeps the same margin itself (`compact_margin_entries`).
        if let Err(e) = self.wal.compact(meta.index, meta.term) {
            warn!(error = %e, "WAL compaction failed; segments stay on disk");
        }
        self.metrics
            .wal_segments
            .set(adapter::wal_segments(&self.wal));
    }

    /// The core wants `m.to` to get a snapshot: stream the newest file.
    pub(super) fn send_snapshot(&mut self, m: Message) {
        let to = m.to;
        if self.snap.sending.contains(&to) {
            return;
        }
        let newest = self.snap.files.store.newest().ok().flatten();
        let (Some(addr), Some((file, header))) = (self.peers.outbound().peer_addr(to), newest)
        else {
            self.raw.report_snapshot(to, false);
            return;
        };
        // The file on disk is what the follower will load; describe exactly it.
        let mut m = m;
        m.snapshot = Some(header.meta);
        let file = file.path;
        self.snap.sending.insert(to);
        info!(
            to,
            index = m.snapshot.as_ref().map(|s| s.index),
            "streaming snapshot to follower"
        );
        let transfer = SnapshotTransfer {
            addr,
            msg: m,
            file,
            cluster_id: self.identity.cluster_id.clone(),
        };
        let tx = self.peer_tx.clone();
        let send = self.peers.outbound().send_snapshot(transfer);
        tokio::spawn(async move {
            let result = send.await;
            if let Err(e) = &result {
                warn!(to, error = %e, "snapshot transfer failed");
            }
            let _ = tx
                .send(PeerInput::SnapshotSent {
                    to,
                    ok: result.is_ok(),
                })
                .await;
        });
    }

    /// A transfer finished.
    pub(super) fn on_snapshot_sent(&mut self, to: NodeId, ok: bool) {
        self.snap.sending.remove(&to);
        self.raw.report_snapshot(to, ok);
    }

    /// A complete, validated snapshot arrived from the leader, staged; the
    /// core decides whether to use it. A stale one is deleted at once.
    pub(super) fn stage_received_snapshot(
        &mut self,
        msg: Message,
        staged: StagedSnapshot,
    ) -> Result<(), String> {
        if msg.snapshot.is_none() {
            return Err("snapshot message without metadata".into());
        }
        let index = staged.header().meta.index;
        self.step(msg);
        if self.raw.pending_snapshot().map(|m| m.index) == Some(index) {
            self.snap.staged = Some(staged);
        } else {
            info!(index, "received snapshot not needed (stale); discarded");
        }
        Ok(())
    }

    /// The core accepted a snapshot: load it as the new state. The staged
    /// file becomes loadable only after the WAL marker is durable.
    pub(super) fn install_snapshot(&mut self, meta: &SnapshotMeta) -> Result<(), StorageFailure> {
        let staged = self
            .snap
            .staged
            .take()
            .filter(|s| s.header().meta.index == meta.index && s.header().meta.term == meta.term)
            .ok_or_else(|| {
                StorageFailure(format!(
                    "no staged snapshot for index {} term {}",
                    meta.index, meta.term
                ))
            })?;
        let sm = self.blocking.run_now(|| staged.load())?;
        // The marker makes entries after the snapshot consecutive in the WAL.
        self.wal.compact(meta.index, meta.term)?;
        let file = self.blocking.run_now(|| staged.publish())?;
        self.sm = sm;
        self.applied = meta.index;
        self.raw_storage_apply_snapshot(meta)?;
        self.snap.latest = Some(self.snap.files.set_latest(file));
        self.snap.last_index = meta.index;
        self.metrics.snapshots_installed.inc();
        self.sync_peers_from_directory();
        info!(index = meta.index, "installed snapshot from leader");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn automatic_snapshot_waits_for_the_wal_to_reach_its_share_of_the_snapshot() {
        // (wal bytes, last snapshot bytes, percent, due)
        let cases = [
            (0, 0, 50, true),                      // no snapshot yet
            (1, 1_000, 0, true),                   // size condition off
            (499, 1_000, 50, false),               // below half
            (500, 1_000, 50, true),                // exactly half
            (300_000_000, 300_000_000, 100, true), // as big as the state
            (10_000_000, 300_000_000, 50, false),  // a big state, little log
            (u64::MAX, u64::MAX, u64::MAX, false), // no overflow
            (u64::MAX, 1, u64::MAX, true),
        ];
        for (wal, last, pct, want) in cases {
            assert_eq!(log_grown_enough(wal, last, pct), want, "{wal} {last} {pct}");
        }
    }
    use crate::raft::{
        ConfChange, ConfChangeType, Config, Entry, EntryKind, HardState, MemStorage,
        bootstrap_entries,
    };

    /// Regression: snapshots stored the current configuration,
    /// which includes an appended but uncommitted membership change.
    #[test]
    fn snapshot_records_membership_at_the_applied_index_not_an_uncommitted_change() {
        let voters: Vec<(NodeId, Vec<u8>)> = (1..=3).map(|id| (id, Vec::new())).collect();
        let (mut entries, hs) = bootstrap_entries(&voters);
        let applied = hs.commit;
        let add = ConfChange {
            change: ConfChangeType::AddLearner,
            node_id: 4,
            context: Vec::new(),
        };
        entries.push(Entry {
            index: applied + 1,
            term: 1,
            kind: EntryKind::ConfChange,
            data: add.encode(),
        });
        let hs = HardState {
            commit: applied,
            ..hs
        };
        let mem = MemStorage::from_parts(hs, SnapshotMeta::default(), entries)
            .unwrap_or_else(|e| panic!("log: {e}"));
        let raw = RawNode::new(&Config::new(1), mem).unwrap_or_else(|e| panic!("core: {e}"));
        assert!(
            raw.status().conf.learners.contains(&4),
            "precondition: the uncommitted change is in effect"
        );
        let meta = snapshot_meta_at(&raw, applied);
        assert_eq!(meta.index, applied);
        assert_eq!(meta.term, 1);
        assert!(!meta.conf.contains(4), "snapshot recorded {:?}", meta.conf);
        assert_eq!(meta.conf.voters, (1..=3).collect());
    }
}
