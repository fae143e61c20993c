//! Property tests: the WAL against an in-memory model under random
//! append / truncate-suffix / compact / crash / reopen sequences, and the
//! decoders against arbitrary and mutated bytes (the CI stand-in for the
//! cargo-fuzz targets in `server/fuzz`).
//!
//! Case counts are modest by default; set `PROPTEST_CASES` to raise them.

use std::io::Cursor;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use proptest::prelude::*;
use titan_server::raft::{Entry, EntryKind, HardState, SnapshotMeta};
use titan_server::storage::snapshot_codec::{decode_snapshot, encode_snapshot};
use titan_server::storage::wal_fs::{SimFs, WalFs};
use titan_server::storage::wal_record::{WalRecord, decode_frame};
use titan_server::storage::{
    Command, Condition, SnapshotLimits, StateMachine, Wal, WalOptions, WalRecovery,
};

const MARGIN: u64 = 3;

fn cases(default: u32) -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default);
    ProptestConfig::with_cases(cases)
}

#[derive(Debug, Clone)]
enum Op {
    /// Append `count` entries starting `back` entries before the end
    /// (`back > 0` overwrites a suffix).
    Append { back: u64, count: u64, len: usize },
    /// Compact at a point `frac`% of the way from the last snapshot to the end.
    Compact { frac: u64 },
    /// Power loss, leaving `garbage` on the newest segment.
    Crash { garbage: Vec<u8> },
    /// Clean close and reopen.
    Reopen,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0u64..4, 1u64..6, 0usize..120).prop_map(|(back, count, len)| Op::Append { back, count, len }),
        1 => (0u64..=100).prop_map(|frac| Op::Compact { frac }),
        1 => proptest::collection::vec(any::<u8>(), 0..40).prop_map(|garbage| Op::Crash { garbage }),
        1 => Just(Op::Reopen),
    ]
}

/// What the WAL must contain.
#[derive(Default)]
struct Model {
    log: Vec<Entry>,
    hard_state: HardState,
    snapshot: Option<(u64, u64)>,
    term: u64,
}

impl Model {
    fn last_index(&self) -> u64 {
        let last = self.log.last().map_or(0, |e| e.index);
        last.max(self.snapshot.map_or(0, |s| s.0))
    }

    fn append(&mut self, back: u64, count: u64, len: usize) -> (Vec<Entry>, HardState) {
        let snap = self.snapshot.map_or(0, |s| s.0);
        let first = (self.last_index() + 1).saturating_sub(back).max(snap + 1);
        if first <= self.last_index() {
            self.term += 1;
        }
        let entries: Vec<Entry> = (first..first + count)
            .map(|index| Entry {
                index,
                term: self.term,
                kind: EntryKind::Normal,
                data: vec![index as u8; len],
            })
            .collect();
        self.log.retain(|e| e.index < first);
        if self.log.last().is_some_and(|e| e.index + 1 != first) {
            self.log.clear();
        }
        self.log.extend(entries.iter().cloned());
        self.hard_state = HardState {
            term: self.term,
            vote: 1,
            commit: snap,
        };
        (entries, self.hard_state)
    }

    /// Checks a recovery against the model.
    fn check(&self, rec: &WalRecovery) {
        assert_eq!(rec.hard_state, self.hard_state);
        assert_eq!(rec.snapshot, self.snapshot);
        let keep_from = self.snapshot.map_or(0, |s| s.0).saturating_sub(MARGIN);
        let must_have: Vec<&Entry> = self.log.iter().filter(|e| e.index > keep_from).collect();
        let skip = self.log.len() - rec.entries.len().min(self.log.len());
        let suffix: Vec<&Entry> = self.log[skip..].iter().collect();
        let got: Vec<&Entry> = rec.entries.iter().collect();
        assert_eq!(got, suffix, "recovered log must be a suffix of the model");
        assert!(
            got.len() >= must_have.len(),
            "entries after the margin were lost"
        );
    }
}

fn newest_segment(fs: &SimFs, dir: &Path) -> PathBuf {
    let names = WalFs::list(fs, dir).unwrap_or_default();
    dir.join(names.into_iter().max().unwrap_or_default())
}

fn run_ops(ops: Vec<Op>) {
    let fs = SimFs::new();
    let dir = Path::new("/sim/wal");
    let opts = WalOptions {
        segment_bytes: 512,
        compact_margin_entries: MARGIN,
        fs: Arc::new(fs.clone()),
        ..WalOptions::default()
    };
    let mut model = Model::default();
    let (mut wal, rec) = Wal::open(dir, opts.clone()).unwrap();
    model.check(&rec);
    for op in ops {
        match op {
            Op::Append { back, count, len } => {
                let (entries, hs) = model.append(back, count, len);
                wal.append(&entries, Some(hs)).unwrap();
            }
            Op::Compact { frac } => {
                let Some(last) = model.log.last().map(|e| e.index) else {
                    continue;
                };
                let snap = model.snapshot.map_or(0, |s| s.0);
                let index = snap + (last.saturating_sub(snap)) * frac / 100;
                let Some(term) = model.log.iter().find(|e| e.index == index).map(|e| e.term) else {
                    continue;
                };
                wal.compact(index, term).unwrap();
                model.snapshot = Some((index, term));
            }
            Op::Crash { garbage } => {
                drop(wal);
                let newest = newest_segment(&fs, dir);
                fs.crash(|p| {
                    if p == newest {
                        garbage.clone()
                    } else {
                        Vec::new()
                    }
                });
                let (w, rec) = Wal::open(dir, opts.clone()).unwrap();
                model.check(&rec);
                wal = w;
            }
            Op::Reopen => {
                drop(wal);
                let (w, rec) = Wal::open(dir, opts.clone()).unwrap();
                model.check(&rec);
                wal = w;
            }
        }
    }
    drop(wal);
    let (_, rec) = Wal::open(dir, opts).unwrap();
    model.check(&rec);
}

proptest! {
    #![proptest_config(cases(64))]

    #[test]
    fn wal_matches_the_model_across_truncation_compaction_and_crashes(
        ops in proptest::collection::vec(op(), 1..60)
    ) {
        run_ops(ops);
    }

    #[test]
    fn record_decoder_never_panics_on_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
        let _ = decode_frame(&bytes, 1 << 20);
    }

    #[test]
    fn record_decoder_rejects_or_round_trips_mutated_frames(
        data in proptest::collection::vec(any::<u8>(), 0..64),
        pos in any::<prop::sample::Index>(),
        xor in 1u8..,
    ) {
        let rec = WalRecord::Entry(Entry { index: 3, term: 2, kind: EntryKind::Normal, data });
        let mut buf = Vec::new();
        rec.encode_into(&mut buf);
        prop_assert_eq!(decode_frame(&buf, 1 << 20), Ok((rec, buf.len())));
        let i = pos.index(buf.len());
        buf[i] ^= xor;
        prop_assert!(decode_frame(&buf, 1 << 20).is_err());
    }

    #[test]
    fn snapshot_decoder_never_panics_on_arbitrary_or_mutated_bytes(
        bytes in proptest::collection::vec(any::<u8>(), 0..300),
        pos in any::<prop::sample::Index>(),
        xor in any::<u8>(),
    ) {
        let limits = SnapshotLimits::default();
        let _ = decode_snapshot(&mut Cursor::new(&bytes), &limits);
        let mut sm = StateMachine::new();
        for (i, chunk) in bytes.chunks(7).enumerate() {
            let cmd = Command::Put { key: chunk.to_vec(), value: bytes.clone(), cond: Condition::None };
            sm.apply(&Entry { index: i as u64 + 1, term: 1, kind: EntryKind::Normal, data: cmd.encode() });
        }
        let mut buf = Vec::new();
        encode_snapshot(&mut buf, &SnapshotMeta::default(), &sm).unwrap();
        let i = pos.index(buf.len());
        buf[i] ^= xor;
        let decoded = decode_snapshot(&mut Cursor::new(&buf), &limits);
        prop_assert_eq!(decoded.is_ok(), xor == 0);
    }
}

/// Boot-level operations on real files: committed writes, snapshots (with
/// WAL compaction) and restarts.
#[derive(Debug, Clone)]
enum NodeOp {
    Put { key: u8, value: u8 },
    Snapshot,
    Restart,
}

fn node_op() -> impl Strategy<Value = NodeOp> {
    prop_oneof![
        8 => (0u8..16, any::<u8>()).prop_map(|(key, value)| NodeOp::Put { key, value }),
        1 => Just(NodeOp::Snapshot),
        1 => Just(NodeOp::Restart),
    ]
}

/// Boot options; with `value_log`, every value goes to a value log that
/// each boot opens afresh (as the server does).
fn boot_opts(dir: &Path, value_log: bool) -> titan_server::storage::BootOptions {
    let mut opts = titan_server::storage::BootOptions {
        wal: WalOptions {
            segment_bytes: 1024,
            compact_margin_entries: 2,
            ..WalOptions::default()
        },
        ..Default::default()
    };
    if value_log {
        let log = titan_server::storage::vlog::ValueLog::open(&dir.join("vlog"), 256).unwrap();
        opts.snapshot.values = titan_server::storage::value::ValueStore::logged(log, 0);
    }
    opts
}

fn run_node_ops(ops: Vec<NodeOp>, value_log: bool) {
    use std::collections::BTreeMap;
    use titan_server::storage::boot;
    let dir = tempfile::tempdir().unwrap();
    // key -> (value, version). A version is the key's MVCC mod_revision: the
    // store starts at revision 1 and every put advances it by one.
    let mut model: BTreeMap<Vec<u8>, (Vec<u8>, u64)> = BTreeMap::new();
    let mut revision = 1u64;
    let mut node = boot(dir.path(), boot_opts(dir.path(), value_log)).unwrap();
    for op in ops {
        match op {
            NodeOp::Put { key, value } => {
                let index = node.wal.last_index() + 1;
                let cmd = Command::Put {
                    key: vec![key],
                    value: vec![value],
                    cond: Condition::None,
                };
                let e = Entry {
                    index,
                    term: 1,
                    kind: EntryKind::Normal,
                    data: cmd.encode(),
                };
                let hs = HardState {
                    term: 1,
                    vote: 1,
                    commit: index,
                };
                node.wal.append(std::slice::from_ref(&e), Some(hs)).unwrap();
                node.state_machine.apply(&e);
                revision += 1;
                model.insert(vec![key], (vec![value], revision));
            }
            NodeOp::Snapshot => {
                let index = node.state_machine.applied_index();
                let meta = SnapshotMeta {
                    index,
                    term: 1,
                    ..SnapshotMeta::default()
                };
                node.snapshots
                    .write(&meta, &node.state_machine.snapshot_view())
                    .unwrap();
                node.wal.compact(index, 1).unwrap();
            }
            NodeOp::Restart => {
                drop(node);
                node = boot(dir.path(), boot_opts(dir.path(), value_log)).unwrap();
            }
        }
        let got: BTreeMap<Vec<u8>, (Vec<u8>, u64)> = node
            .state_machine
            .iter()
            .map(|kv| kv.expect("value readable"))
            .map(|(k, v)| (k.to_vec(), (v.value.to_vec(), v.version)))
            .collect();
        assert_eq!(got, model);
    }
}

proptest! {
    #![proptest_config(cases(16))]

    #[test]
    fn boot_restores_the_model_state_across_snapshots_and_restarts(
        ops in proptest::collection::vec(node_op(), 1..80)
    ) {
        run_node_ops(ops.clone(), false);
        run_node_ops(ops, true);
    }
}
