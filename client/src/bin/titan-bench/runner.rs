//! Runs the workers, the progress line and the optional preload.

use crate::conn::{ConnSlot, Op, OpError, OpSettings, Outcome};
use crate::etcd_ops::{list_revisions, prefix_end};
use crate::stats::{Recorder, Summary};
use crate::workload::Mix;
use crate::workload::{Workload, value_of_size};
use crate::{Args, ReadConsistency};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Redirects one operation may follow before it counts as `not_leader`.
const MAX_REDIRECTS_PER_OP: u32 = 4;
/// Pause after a failed operation, so a down cluster is not hammered in a
/// tight loop (the pause is part of the closed loop, not of the latency).
const ERROR_PAUSE: Duration = Duration::from_millis(10);
/// How often the controller checks whether the run is over; bounds the
/// error of the measured elapsed time.
const CONTROL_TICK: Duration = Duration::from_millis(5);
/// Interval of the progress line.
const PROGRESS_INTERVAL: Duration = Duration::from_secs(1);

/// State shared by the workers and the controller.
#[derive(Debug, Default)]
struct Shared {
    /// Set when the run is over.
    stop: AtomicBool,
    /// Set once warm-up is over; results before that are discarded.
    measuring: AtomicBool,
    /// Operations still to start in `--ops` mode.
    ops_left: Option<AtomicU64>,
    /// Completed measured operations (for the progress line).
    done_ops: AtomicU64,
    /// Failed measured operations (for the progress line).
    done_errors: AtomicU64,
    /// Workers still running; the run is over when none is left.
    live_workers: AtomicU64,
}

/// Whether the run starts with an unmeasured warm-up (`--ops` runs never do).
fn warms_up(args: &Args) -> bool {
    args.warmup_secs > 0.0 && args.ops.is_none()
}

pub async fn run(args: Args) -> anyhow::Result<Summary> {
    let workload = Arc::new(Workload::new(
        args.mix,
        args.read_ratio,
        args.keys,
        args.dist,
        args.zipf_s,
        args.key_prefix.clone(),
    )?);
    let settings = Arc::new(OpSettings {
        value: Arc::from(value_of_size(args.value_size)),
        serializable: args.consistency == ReadConsistency::Serializable,
        timeout: Duration::from_millis(args.timeout_ms),
        range_end: prefix_end(args.key_prefix.as_bytes()),
        range_limit: args.range_limit,
    });
    let slots = make_slots(&args);
    if args.preload {
        preload(&args, &slots, &workload, &settings).await;
    }
    let revisions = Arc::new(Mutex::new(HashMap::new()));
    if args.mix == Mix::Txn {
        let listed = list_revisions(&args.endpoints[0], &args.key_prefix).await?;
        if !args.quiet {
            eprintln!("txn: listed the mod_revision of {} keys", listed.len());
        }
        *lock(&revisions) = listed;
    }
    let shared = Arc::new(Shared {
        ops_left: args.ops.map(AtomicU64::new),
        // Without a warm-up every operation counts from the start. Setting
        // this only after the workers are spawned would let an early
        // operation use up its `--ops` budget without being counted, and
        // the run would then wait for it forever.
        measuring: AtomicBool::new(!warms_up(&args)),
        live_workers: AtomicU64::new(args.clients as u64),
        ..Default::default()
    });
    let mut handles = Vec::with_capacity(args.clients);
    for id in 0..args.clients {
        let slot = slots[id % slots.len()].clone();
        let ctx = WorkerCtx {
            slot,
            workload: workload.clone(),
            settings: settings.clone(),
            shared: shared.clone(),
            revisions: revisions.clone(),
        };
        handles.push(tokio::spawn(worker(args.seed.wrapping_add(id as u64), ctx)));
    }
    let elapsed = control(&args, &shared).await;
    let mut total = Recorder::new();
    for handle in handles {
        total.merge(&handle.await?);
    }
    let params = serde_json::to_value(&args)?;
    Ok(Summary::from_recorder(&total, elapsed, params))
}

pub fn make_slots(args: &Args) -> Vec<Arc<ConnSlot>> {
    let count = match args.connections {
        0 => args.clients,
        n => n.min(args.clients),
    };
    let endpoints = Arc::new(args.endpoints.clone());
    (0..count)
        .map(|i| Arc::new(ConnSlot::new(args.target, endpoints.clone(), i)))
        .collect()
}

/// Warm-up, then the measured phase, printing progress; returns the measured
/// wall time.
async fn control(args: &Args, shared: &Shared) -> Duration {
    if warms_up(args) {
        tokio::time::sleep(Duration::from_secs_f64(args.warmup_secs)).await;
    }
    shared.measuring.store(true, Ordering::SeqCst);
    let started = Instant::now();
    let limit = Duration::from_secs_f64(args.duration_secs.max(0.0));
    let mut progress = Progress {
        next_at: started + PROGRESS_INTERVAL,
        last_ops: 0,
    };
    loop {
        tokio::time::sleep(CONTROL_TICK).await;
        if !args.quiet {
            progress.maybe_print(started, shared);
        }
        let finished =
            shared.done_ops.load(Ordering::Relaxed) + shared.done_errors.load(Ordering::Relaxed);
        let done = match args.ops {
            Some(target) => finished >= target,
            None => started.elapsed() >= limit,
        } || shared.live_workers.load(Ordering::SeqCst) == 0;
        if done {
            break;
        }
    }
    shared.stop.store(true, Ordering::SeqCst);
    started.elapsed()
}

/// The once-a-second progress line on stderr.
struct Progress {
    next_at: Instant,
    last_ops: u64,
}

impl Progress {
    fn maybe_print(&mut self, started: Instant, shared: &Shared) {
        if Instant::now() < self.next_at {
            return;
        }
        self.next_at += PROGRESS_INTERVAL;
        let ops = shared.done_ops.load(Ordering::Relaxed);
        eprintln!(
            "[{:>6.1}s] ops {ops:>9}  {:>8} ops/s  errors {}",
            started.elapsed().as_secs_f64(),
            ops - self.last_ops,
            shared.done_errors.load(Ordering::Relaxed)
        );
        self.last_ops = ops;
    }
}

/// The mod_revision last seen per key (`--op txn`), shared by all workers
/// like a kube-apiserver's cache: at most one entry per key of the prefix.
type Revisions = Arc<Mutex<HashMap<String, i64>>>;

fn lock(r: &Revisions) -> std::sync::MutexGuard<'_, HashMap<String, i64>> {
    r.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// What one worker shares with the others.
struct WorkerCtx {
    slot: Arc<ConnSlot>,
    workload: Arc<Workload>,
    settings: Arc<OpSettings>,
    shared: Arc<Shared>,
    revisions: Revisions,
}

async fn worker(seed: u64, ctx: WorkerCtx) -> Recorder {
    let WorkerCtx {
        slot,
        workload,
        settings,
        shared,
        revisions,
    } = ctx;
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut rec = Recorder::new();
    while !shared.stop.load(Ordering::Relaxed) {
        if let Some(left) = &shared.ops_left
            && left
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
                .is_err()
        {
            break;
        }
        let mut op = workload.next_op(&mut rng);
        if let Op::Txn {
            key,
            expected_mod_revision,
        } = &mut op
        {
            *expected_mod_revision = lock(&revisions).get(key).copied().unwrap_or(0);
        }
        let started = Instant::now();
        let result = run_op(&slot, &op, &settings, &mut rec).await;
        let latency = started.elapsed();
        if let (Op::Txn { key, .. }, Ok(Outcome::Txn { mod_revision, .. })) = (&op, &result) {
            lock(&revisions).insert(key.clone(), *mod_revision);
        }
        if !shared.measuring.load(Ordering::Relaxed) {
            continue;
        }
        match result {
            Ok(outcome) => {
                if let Outcome::Txn {
                    succeeded: false, ..
                } = outcome
                {
                    rec.txn_conflicts += 1;
                }
                rec.ok(latency);
                shared.done_ops.fetch_add(1, Ordering::Relaxed);
            }
            Err(kind) => {
                rec.error(kind);
                shared.done_errors.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(ERROR_PAUSE).await;
            }
        }
    }
    shared.live_workers.fetch_sub(1, Ordering::SeqCst);
    rec
}

/// One operation, following up to [`MAX_REDIRECTS_PER_OP`] redirects.
pub async fn run_op(
    slot: &ConnSlot,
    op: &Op,
    settings: &OpSettings,
    rec: &mut Recorder,
) -> Result<Outcome, &'static str> {
    for _ in 0..=MAX_REDIRECTS_PER_OP {
        match slot.run(op, settings).await {
            Ok(outcome) => return Ok(outcome),
            Err(OpError::NotLeader(hint)) => {
                rec.redirects += 1;
                if hint.is_none() {
                    tokio::time::sleep(ERROR_PAUSE).await;
                }
            }
            Err(OpError::Failed(kind)) => return Err(kind),
        }
    }
    Err("not_leader")
}

/// Writes every key once, spread over the connections; failures are counted
/// and reported, not fatal.
async fn preload(
    args: &Args,
    slots: &[Arc<ConnSlot>],
    workload: &Arc<Workload>,
    settings: &Arc<OpSettings>,
) {
    let started = Instant::now();
    let workers = args.clients.min(workload.keys()).max(1);
    let mut handles = Vec::with_capacity(workers);
    for id in 0..workers {
        let slot = slots[id % slots.len()].clone();
        let (w, s) = (workload.clone(), settings.clone());
        handles.push(tokio::spawn(async move {
            let mut rec = Recorder::new();
            let mut failed = 0u64;
            for i in (id..w.keys()).step_by(workers) {
                if run_op(&slot, &Op::Put { key: w.key(i) }, &s, &mut rec)
                    .await
                    .is_err()
                {
                    failed += 1;
                }
            }
            failed
        }));
    }
    let mut failed = 0;
    for h in handles {
        failed += h.await.unwrap_or(0);
    }
    if !args.quiet {
        eprintln!(
            "preloaded {} keys in {:.1}s ({failed} failed)",
            workload.keys(),
            started.elapsed().as_secs_f64()
        );
    }
}
