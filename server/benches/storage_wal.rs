//! WAL benchmarks: the disk's raw fsync rate, one writer with one fsync per
//! 256 B record, 64 concurrent writers sharing fsyncs (group commit), and
//! recovery of 1M entries of 256 B.
//!
//! Files go to `$TITAN_BENCH_DIR` (default: the system temp dir).
//! Run: `cargo bench -p titan-server --bench storage_wal`

use std::fs::OpenOptions;
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use titan_server::raft::{Entry, EntryKind};
use titan_server::storage::{Wal, WalOptions};

const RECORD_BYTES: usize = 256;
const WRITERS: u64 = 64;
const RECOVERY_ENTRIES: u64 = 1_000_000;

fn bench_dir() -> PathBuf {
    std::env::var_os("TITAN_BENCH_DIR").map_or_else(std::env::temp_dir, PathBuf::from)
}

fn entry(index: u64) -> Entry {
    Entry {
        index,
        term: 1,
        kind: EntryKind::Normal,
        data: vec![0x5a; RECORD_BYTES],
    }
}

fn raw_fsync(c: &mut Criterion) {
    let dir = tempfile::tempdir_in(bench_dir()).unwrap();
    let mut file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.path().join("raw"))
        .unwrap();
    let buf = [0u8; RECORD_BYTES];
    let mut g = c.benchmark_group("wal");
    g.throughput(Throughput::Elements(1));
    g.bench_function("raw_write_256b_fdatasync", |b| {
        b.iter(|| {
            file.write_all(&buf).unwrap();
            file.sync_data().unwrap();
        })
    });
    g.finish();
}

fn one_writer(c: &mut Criterion) {
    let dir = tempfile::tempdir_in(bench_dir()).unwrap();
    let (wal, _) = Wal::open(dir.path(), WalOptions::default()).unwrap();
    let mut g = c.benchmark_group("wal");
    g.throughput(Throughput::Elements(1));
    g.bench_function("one_writer_256b_append", |b| {
        b.iter(|| {
            wal.append_with(|last| (vec![entry(last + 1)], None))
                .unwrap()
        })
    });
    g.finish();
}

fn concurrent_writers(c: &mut Criterion) {
    let dir = tempfile::tempdir_in(bench_dir()).unwrap();
    let (wal, _) = Wal::open(dir.path(), WalOptions::default()).unwrap();
    let wal = Arc::new(wal);
    let mut g = c.benchmark_group("wal");
    g.throughput(Throughput::Elements(1));
    g.bench_function("64_writers_256b_append_group_commit", |b| {
        b.iter_custom(|iters| run_writers(&wal, iters))
    });
    g.finish();
    let s = wal.stats();
    eprintln!(
        "group commit: {} batches, {} fsyncs ({:.1} appends per fsync)",
        s.batches,
        s.fsync_count,
        s.batches as f64 / s.fsync_count.max(1) as f64
    );
}

/// `iters` appends spread over 64 threads; returns the wall time.
fn run_writers(wal: &Arc<Wal>, iters: u64) -> Duration {
    let per_writer = iters.div_ceil(WRITERS);
    let start = Instant::now();
    let handles: Vec<_> = (0..WRITERS)
        .map(|_| {
            let wal = wal.clone();
            std::thread::spawn(move || {
                for _ in 0..per_writer {
                    wal.append_with(|last| (vec![entry(last + 1)], None))
                        .unwrap();
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    start.elapsed()
}

fn recovery(c: &mut Criterion) {
    let dir = tempfile::tempdir_in(bench_dir()).unwrap();
    {
        let (wal, _) = Wal::open(dir.path(), WalOptions::default()).unwrap();
        for start in (1..=RECOVERY_ENTRIES).step_by(1000) {
            let batch: Vec<Entry> = (start..start + 1000).map(entry).collect();
            wal.append(&batch, None).unwrap();
        }
    }
    let mut g = c.benchmark_group("wal");
    g.sample_size(10);
    g.bench_function("recover_1m_entries_256b", |b| {
        b.iter(|| {
            let (_, rec) = Wal::open(dir.path(), WalOptions::default()).unwrap();
            assert_eq!(rec.entries.len() as u64, RECOVERY_ENTRIES);
        })
    });
    g.finish();
}

fn config() -> Criterion {
    Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(5))
}

criterion_group! {
    name = benches;
    config = config();
    targets = raw_fsync, one_writer, concurrent_writers, recovery
}
criterion_main!(benches);
