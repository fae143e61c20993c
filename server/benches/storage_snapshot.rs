//! Snapshot benchmarks on a 1M-key state machine (16 B keys, 256 B values):
//! write time (stream + fsync + rename), load time (stream + validate +
//! rebuild), and the writer stall: how long the apply loop is blocked to
//! take the snapshot view, and its apply latency while a snapshot is being
//! written in the background.
//!
//! Files go to `$TITAN_BENCH_DIR` (default: the system temp dir).
//! Run: `cargo bench -p titan-server --bench storage_snapshot`

use std::path::PathBuf;
use std::time::{Duration, Instant};

use titan_server::raft::{ConfState, Entry, EntryKind, SnapshotMeta};
use titan_server::storage::{Command, Condition, SnapshotOptions, SnapshotStore, StateMachine};

const KEYS: u64 = 1_000_000;
const VALUE_BYTES: usize = 256;
const RUNS: usize = 5;

fn bench_dir() -> PathBuf {
    std::env::var_os("TITAN_BENCH_DIR").map_or_else(std::env::temp_dir, PathBuf::from)
}

fn put(index: u64, key: u64) -> Entry {
    let cmd = Command::Put {
        key: format!("{key:016}").into_bytes(),
        value: vec![(index % 251) as u8; VALUE_BYTES],
        cond: Condition::None,
    };
    Entry {
        index,
        term: 1,
        kind: EntryKind::Normal,
        data: cmd.encode(),
    }
}

fn median(mut xs: Vec<Duration>) -> Duration {
    xs.sort();
    xs[xs.len() / 2]
}

fn timed<T>(f: impl FnOnce() -> T) -> (T, Duration) {
    let start = Instant::now();
    let out = f();
    (out, start.elapsed())
}

fn main() {
    let dir = tempfile::tempdir_in(bench_dir()).unwrap();
    let store = SnapshotStore::open(dir.path(), SnapshotOptions::default()).unwrap();
    let mut sm = StateMachine::new();
    let (_, build) = timed(|| {
        for i in 1..=KEYS {
            sm.apply(&put(i, i));
        }
    });
    println!("build 1M keys by apply: {build:?}");
    let meta = SnapshotMeta {
        index: KEYS,
        term: 1,
        conf: ConfState::default(),
    };
    let mut writes = Vec::new();
    let mut file = None;
    for _ in 0..RUNS {
        let (f, t) = timed(|| store.write(&meta, &sm.snapshot_view()).unwrap());
        writes.push(t);
        file = Some(f);
    }
    let file = file.unwrap();
    let size = std::fs::metadata(&file.path).unwrap().len();
    println!(
        "snapshot write 1M keys: median {:?} ({size} bytes)",
        median(writes)
    );
    let loads: Vec<Duration> = (0..RUNS)
        .map(|_| timed(|| store.load(&file.path).unwrap()).1)
        .collect();
    println!("snapshot load 1M keys: median {:?}", median(loads));
    stall(&store, &meta, &mut sm);
}

/// Apply latency with and without a concurrent snapshot write.
fn stall(store: &SnapshotStore, meta: &SnapshotMeta, sm: &mut StateMachine) {
    let clones: Vec<Duration> = (0..1000).map(|_| timed(|| sm.snapshot_view()).1).collect();
    println!("snapshot_view (clone) time: median {:?}", median(clones));
    let mut next = KEYS + 1;
    let mut apply_for = |sm: &mut StateMachine, dur: Duration| {
        let mut lat = Vec::new();
        let end = Instant::now() + dur;
        while Instant::now() < end {
            let key = (next * 7919) % KEYS + 1;
            lat.push(timed(|| sm.apply(&put(next, key))).1);
            next += 1;
        }
        lat
    };
    let baseline = apply_for(sm, Duration::from_secs(1));
    let (view, clone_time) = timed(|| sm.snapshot_view());
    let store2 = store.clone();
    let meta2 = meta.clone();
    let start = Instant::now();
    let writer = std::thread::spawn(move || store2.write(&meta2, &view).unwrap());
    let mut during = Vec::new();
    while !writer.is_finished() {
        during.extend(apply_for(sm, Duration::from_millis(50)));
    }
    let write_time = start.elapsed();
    writer.join().unwrap();
    report("apply latency, no snapshot", baseline);
    println!("writer blocked for the view: {clone_time:?}; background write took {write_time:?}");
    report("apply latency during snapshot write", during);
}

fn report(label: &str, mut lat: Vec<Duration>) {
    lat.sort();
    let p = |q: f64| lat[((lat.len() - 1) as f64 * q) as usize];
    println!(
        "{label}: n={} median {:?} p99 {:?} max {:?}",
        lat.len(),
        p(0.5),
        p(0.99),
        p(1.0)
    );
}
