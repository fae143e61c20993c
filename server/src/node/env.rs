//! What a node takes from its surroundings besides flags and the network:
//! how blocking storage work runs ([`Blocking`]), the WAL's file layer and
//! a few storage sizes, and the entropy behind per-start nonces, lease ids,
//! election timeouts and a joining member's id.
//!
//! Production uses [`NodeEnv::production`]: a thread pool, real files,
//! default sizes and OS-seeded randomness, exactly what the node always did.
//! The whole-replica simulator (`server/tests/replica_sim.rs`) runs every
//! replica on one current-thread tokio runtime with a paused clock, and
//! needs all of it deterministic: blocking work inline (still a future, so
//! the runtime's apply-during-fsync overlap is exercised, in a seeded
//! order), an in-memory `SimFs` under the WAL, and one seed for every random
//! number. Time needs nothing here: the node reads `tokio::time::Instant`,
//! which the paused clock controls.

use std::future::Future;
use std::sync::{Arc, Mutex};

use futures::future::BoxFuture;

use crate::raft::rng::SplitMix64;
use crate::storage::wal_fs::WalFs;

/// Where a node's environment-dependent choices come from.
#[derive(Clone)]
pub struct NodeEnv {
    /// How blocking storage work (WAL appends, snapshot IO) runs.
    pub blocking: Blocking,
    /// The WAL's file layer; `None` means real files.
    pub wal_fs: Option<Arc<dyn WalFs>>,
    /// WAL segment size; `None` keeps the default. The simulator uses small
    /// segments so rotation, compaction and damage to a closed segment occur.
    pub wal_segment_bytes: Option<u64>,
    /// Entries kept behind a snapshot; `None` keeps
    /// [`LOG_MARGIN_ENTRIES`](super::snapshot::LOG_MARGIN_ENTRIES). The
    /// simulator keeps few, so lagging followers need a snapshot.
    pub log_margin_entries: Option<u64>,
    /// Seed for nonces, read incarnations, election timeouts and a joining
    /// member's id; `None` means OS randomness (ids keep their defaults).
    pub seed: Option<u64>,
    /// Value-log file size and merge cadence; `None` keeps the defaults.
    /// The simulator uses tiny files and frequent checks so files close and
    /// merges run.
    pub value_log: Option<ValueLogTuning>,
}

/// Value-log sizes and merge cadence (see `node::merge`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ValueLogTuning {
    /// Data file size.
    pub file_bytes: u64,
    /// Smallest log a periodic merge looks at.
    pub merge_min_bytes: u64,
    /// How often the runtime looks for files worth merging.
    pub merge_check_interval: std::time::Duration,
}

impl Default for ValueLogTuning {
    fn default() -> Self {
        ValueLogTuning {
            file_bytes: crate::storage::vlog::DEFAULT_FILE_LIMIT,
            merge_min_bytes: super::merge::MERGE_MIN_LOG_BYTES,
            merge_check_interval: super::merge::MERGE_CHECK_INTERVAL,
        }
    }
}

impl NodeEnv {
    /// The production environment: thread pool, real files, OS randomness.
    pub fn production() -> Self {
        NodeEnv {
            blocking: Blocking::Pool,
            wal_fs: None,
            wal_segment_bytes: None,
            log_margin_entries: None,
            seed: None,
            value_log: None,
        }
    }

    /// Value-log sizes and merge cadence.
    pub(super) fn value_log(&self) -> ValueLogTuning {
        self.value_log.unwrap_or_default()
    }

    /// Entries the log keeps behind a snapshot (in memory and in the WAL).
    pub(super) fn log_margin_entries(&self) -> u64 {
        self.log_margin_entries
            .unwrap_or(super::snapshot::LOG_MARGIN_ENTRIES)
    }

    /// A 64-bit value for `purpose`: derived from the seed when there is
    /// one, else from `os` (the caller's OS-seeded source).
    pub(super) fn entropy(&self, purpose: &str, os: impl FnOnce() -> u64) -> u64 {
        let Some(seed) = self.seed else {
            return os();
        };
        let salt = super::cluster_id_u64(purpose);
        SplitMix64::new(seed ^ salt).next_u64()
    }
}

/// How the node runs storage work that blocks a thread.
#[derive(Clone)]
pub enum Blocking {
    /// On tokio's blocking pool (`spawn_blocking`, `block_in_place`): the
    /// production choice, so the runtime task keeps applying while an
    /// fsync runs.
    Pool,
    /// On the calling task, for a single-threaded deterministic simulation.
    /// A started job runs either at once or only when awaited, after a
    /// seeded latency (simulated time; a yield when zero), so both
    /// production orders (the append finishing before or after the apply
    /// that overlaps it) occur, and a simulated crash can strike while an
    /// append is still in flight.
    Inline(InlineSchedule),
}

/// The seeded choices of [`Blocking::Inline`].
#[derive(Clone)]
pub struct InlineSchedule {
    /// Draws: run now or later, and the latency of a deferred job.
    rng: Arc<Mutex<SplitMix64>>,
    /// Longest latency of a deferred job, in milliseconds.
    max_latency_ms: u64,
}

impl InlineSchedule {
    /// A schedule driven by `seed`, deferring a job by at most
    /// `max_latency_ms` of (simulated) time.
    pub fn new(seed: u64, max_latency_ms: u64) -> Self {
        InlineSchedule {
            rng: Arc::new(Mutex::new(SplitMix64::new(seed))),
            max_latency_ms,
        }
    }

    /// `None`: run now; `Some(ms)`: run when awaited, `ms` later.
    fn draw(&self) -> Option<u64> {
        let mut rng = self.rng.lock().unwrap_or_else(|e| e.into_inner());
        if rng.chance(1, 2) {
            None
        } else {
            Some(rng.below(self.max_latency_ms + 1))
        }
    }
}

/// A started blocking job; [`BlockingJob::join`] waits for its result.
pub struct BlockingJob<T>(BoxFuture<'static, Result<T, String>>);

impl<T: Send + 'static> BlockingJob<T> {
    /// The job's result; `Err` only when the pool lost the job (a panic).
    pub fn join(self) -> impl Future<Output = Result<T, String>> + Send + 'static {
        self.0
    }
}

impl Blocking {
    /// Starts `job` (see the variants for where and when it runs).
    pub fn start<T, F>(&self, job: F) -> BlockingJob<T>
    where
        T: Send + 'static,
        F: FnOnce() -> T + Send + 'static,
    {
        match self {
            Blocking::Pool => {
                let handle = tokio::task::spawn_blocking(job);
                BlockingJob(Box::pin(
                    async move { handle.await.map_err(|e| e.to_string()) },
                ))
            }
            Blocking::Inline(schedule) => match schedule.draw() {
                None => {
                    let done = job();
                    BlockingJob(Box::pin(async move { Ok(done) }))
                }
                Some(0) => BlockingJob(Box::pin(async move {
                    tokio::task::yield_now().await;
                    Ok(job())
                })),
                Some(ms) => BlockingJob(Box::pin(async move {
                    tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
                    Ok(job())
                })),
            },
        }
    }

    /// Runs `job` now on the calling task: through `block_in_place` on the
    /// pool (other tasks move off this worker), directly when inline.
    pub fn run_now<T>(&self, job: impl FnOnce() -> T) -> T {
        match self {
            Blocking::Pool => tokio::task::block_in_place(job),
            Blocking::Inline(_) => job(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn inline_jobs_run_on_the_task_and_seeded_schedules_repeat() {
        let draws = |seed| {
            let s = InlineSchedule::new(seed, 3);
            (0..32).map(|_| s.draw()).collect::<Vec<_>>()
        };
        assert_eq!(draws(7), draws(7));
        assert!(draws(7).iter().any(Option::is_none));
        assert!(draws(7).iter().any(Option::is_some));
        let inline = Blocking::Inline(InlineSchedule::new(1, 2));
        for i in 0..8u64 {
            assert_eq!(inline.start(move || i * 2).join().await, Ok(i * 2));
        }
        assert_eq!(inline.run_now(|| 5), 5);
    }

    #[test]
    fn entropy_is_seeded_per_purpose_or_comes_from_the_os_source() {
        let mut env = NodeEnv::production();
        assert_eq!(env.entropy("nonce", || 42), 42);
        env.seed = Some(9);
        let a = env.entropy("nonce", || 42);
        assert_eq!(a, env.entropy("nonce", || 0));
        assert_ne!(a, env.entropy("incarnation", || 0));
    }
}
