//! Value-log merges, driven by the runtime (the merge itself is
//! `storage::vlog_merge`).
//!
//! - Every [`MERGE_CHECK_INTERVAL`], when the log holds at least
//!   [`MERGE_MIN_LOG_BYTES`], a merge plans on an O(1) store clone and
//!   copies the live records of closed files whose dead share reached
//!   `--value-log-merge-ratio`, at most `--value-log-merge-rate` bytes per
//!   second, on the blocking pool.
//! - `Admin.MergeValueLog` closes the active file and merges every closed
//!   file with a dead byte (joining a forced merge in flight, or starting
//!   one after the periodic one finishes).
//! - Back on the loop, the live store is repointed at the copies and the
//!   old files retired; they close once every older store clone is gone.

use std::time::Duration;

use tokio::sync::oneshot;
use tokio::time::Instant;
use tracing::{info, warn};

use super::env::ValueLogTuning;
use super::handle::{AdminReply, PeerInput};
use super::runtime::Runtime;
use super::{MergeInfo, NodeError};
use crate::storage::value::ValueStore;
use crate::storage::vlog_merge::{self, MergeCopy};

/// How often the runtime looks for files worth merging.
pub const MERGE_CHECK_INTERVAL: Duration = Duration::from_secs(10);
/// A log smaller than this is never merged on its own.
pub const MERGE_MIN_LOG_BYTES: u64 = 64 << 20;

/// The runtime's merge state (own state, own constructor).
#[derive(Debug)]
pub(super) struct Merges {
    /// A merge is copying; `Some(true)` when it was forced.
    in_flight: Option<bool>,
    next_check: Instant,
    /// Admin calls waiting for a forced merge.
    waiters: Vec<oneshot::Sender<Result<AdminReply, NodeError>>>,
    tuning: ValueLogTuning,
}

impl Merges {
    pub(super) fn new(tuning: ValueLogTuning) -> Self {
        Merges {
            in_flight: None,
            next_check: Instant::now() + tuning.merge_check_interval,
            waiters: Vec::new(),
            tuning,
        }
    }
}

/// A finished background copy, back to the loop.
#[derive(Debug)]
pub(crate) struct MergeDone {
    planned_on: ValueStore,
    forced: bool,
    result: Result<MergeCopy, String>,
}

impl Runtime {
    /// Closes files nothing reads any more, and starts a periodic merge
    /// when one is due.
    pub(super) fn maybe_merge(&mut self) {
        let Some(log) = self.sm.kv().values().log() else {
            return;
        };
        log.release_retired();
        let now = Instant::now();
        if self.merges.in_flight.is_some() || now < self.merges.next_check {
            return;
        }
        self.merges.next_check = now + self.merges.tuning.merge_check_interval;
        let bytes = log.stats().bytes;
        self.update_value_log_metrics();
        if bytes >= self.merges.tuning.merge_min_bytes {
            self.start_merge(false);
        }
    }

    /// Admin.MergeValueLog.
    pub(super) fn merge_on_demand(
        &mut self,
        reply: oneshot::Sender<Result<AdminReply, NodeError>>,
    ) {
        if self.sm.kv().values().log().is_none() {
            let _ = reply.send(Err(NodeError::Invalid(
                "this member keeps every value in memory (no --value-log-threshold)".into(),
            )));
            return;
        }
        self.merges.waiters.push(reply);
        if self.merges.in_flight.is_none() {
            self.start_merge(true);
        }
    }

    fn start_merge(&mut self, forced: bool) {
        // The clone and the closed files are taken together, here on the
        // loop, before anything else is applied (see `closed_files`).
        let view = self.sm.kv().clone();
        let closed = vlog_merge::closed_files(&view, forced);
        let planned_on = view.values().clone();
        let ratio = self.cfg.value_log_merge_ratio;
        let rate = self.cfg.value_log_merge_rate;
        self.merges.in_flight = Some(forced);
        let job = self.blocking.start(move || {
            let closed = closed?;
            vlog_merge::run(&view, &closed, ratio, forced, rate)
        });
        let tx = self.peer_tx.clone();
        tokio::spawn(async move {
            let result = job.join().await.and_then(|r| r.map_err(|e| e.to_string()));
            let done = MergeDone {
                planned_on,
                forced,
                result,
            };
            let _ = tx.send(PeerInput::MergeCopied(Box::new(done))).await;
        });
    }

    /// The copy finished: repoint the store, retire the files, answer.
    pub(super) fn on_merge_copied(&mut self, done: MergeDone) {
        self.merges.in_flight = None;
        let MergeDone {
            planned_on,
            forced,
            result,
        } = done;
        let reply = match result {
            Ok(copy) => {
                let (files, file_bytes, live_bytes) =
                    (copy.files.len() as u64, copy.file_bytes, copy.live_bytes);
                match vlog_merge::apply(self.sm.kv_mut(), &planned_on, copy) {
                    Ok(Some(moved)) => {
                        if files > 0 {
                            self.metrics.value_log_merges.inc();
                            self.metrics
                                .value_log_reclaimed_bytes
                                .inc_by(file_bytes.saturating_sub(live_bytes));
                            info!(files, file_bytes, live_bytes, moved, "value log merged");
                        }
                        Ok(MergeInfo {
                            files,
                            file_bytes,
                            live_bytes,
                        })
                    }
                    Ok(None) => {
                        Err("the store was replaced while the merge copied; try again".into())
                    }
                    Err(e) => Err(format!("retiring merged files failed: {e}")),
                }
            }
            Err(e) => Err(e),
        };
        drop(planned_on);
        if let Err(e) = &reply {
            warn!(error = %e, "value log merge failed");
        }
        self.update_value_log_metrics();
        if forced {
            let reply = reply.map(AdminReply::Merge).map_err(NodeError::Unavailable);
            for w in self.merges.waiters.drain(..) {
                let _ = w.send(reply.clone());
            }
        } else if !self.merges.waiters.is_empty() {
            self.start_merge(true);
        }
    }

    /// Value-log gauges.
    pub(super) fn update_value_log_metrics(&self) {
        let stats = self.sm.kv().values().stats();
        self.metrics.value_log_bytes.set(stats.bytes as i64);
        self.metrics.value_log_files.set(stats.files as i64);
        self.metrics
            .value_log_append_failures
            .set(stats.append_failures as i64);
    }
}
