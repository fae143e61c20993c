//! Boot: snapshot + WAL replay, and the corrupt-snapshot fallback rules.

use std::fs;
use std::path::Path;

use titan_server::raft::{ConfState, Entry, EntryKind, HardState, SnapshotMeta};
use titan_server::storage::{
    BootError, BootOptions, Command, Condition, SnapshotOptions, SnapshotStore, StateMachine,
    WalOptions, boot,
};

fn put(index: u64, key: &str) -> Entry {
    Entry {
        index,
        term: 1,
        kind: EntryKind::Normal,
        data: Command::Put {
            key: key.into(),
            value: index.to_le_bytes().to_vec(),
            cond: Condition::None,
        }
        .encode(),
    }
}

fn hs(commit: u64) -> HardState {
    HardState {
        term: 1,
        vote: 1,
        commit,
    }
}

fn opts(margin: u64) -> BootOptions {
    BootOptions {
        wal: WalOptions {
            segment_bytes: 2048,
            compact_margin_entries: margin,
            ..WalOptions::default()
        },
        ..BootOptions::default()
    }
}

fn meta(index: u64) -> SnapshotMeta {
    SnapshotMeta {
        index,
        term: 1,
        conf: ConfState::default(),
    }
}

/// Writes entries 1..=last (keys k{i % 7}), committing through `commit`,
/// snapshotting at each index in `snapshots`.
fn populate(dir: &Path, last: u64, commit: u64, snapshots: &[u64], margin: u64) {
    let b = boot(dir, opts(margin)).unwrap();
    let mut sm = b.state_machine;
    for i in 1..=last {
        let e = put(i, &format!("k{}", i % 7));
        b.wal
            .append(std::slice::from_ref(&e), Some(hs(i.min(commit))))
            .unwrap();
        if i <= commit {
            sm.apply(&e);
        }
        if snapshots.contains(&i) {
            b.snapshots.write(&meta(i), &sm.snapshot_view()).unwrap();
            b.wal.compact(i, 1).unwrap();
        }
    }
}

fn expected_state(commit: u64) -> StateMachine {
    let mut sm = StateMachine::new();
    for i in 1..=commit {
        sm.apply(&put(i, &format!("k{}", i % 7)));
    }
    sm
}

fn same_state(a: &StateMachine, b: &StateMachine) -> bool {
    a.iter().eq(b.iter()) && a.applied_index() == b.applied_index()
}

#[test]
fn boot_replays_committed_entries_after_the_snapshot_and_returns_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    populate(dir.path(), 100, 90, &[40, 80], 5);
    let b = boot(dir.path(), opts(5)).unwrap();
    assert_eq!(b.snapshot_meta.index, 80);
    assert_eq!(b.applied_index, 90);
    assert_eq!(b.hard_state.commit, 90);
    let indexes: Vec<u64> = b.entries.iter().map(|e| e.index).collect();
    assert_eq!(indexes, (81..=100).collect::<Vec<_>>());
    assert!(same_state(&b.state_machine, &expected_state(90)));
}

#[test]
fn corrupt_newest_snapshot_falls_back_when_the_wal_covers_the_gap() {
    let dir = tempfile::tempdir().unwrap();
    // A large margin keeps every entry in the WAL.
    populate(dir.path(), 100, 100, &[40, 80], 1000);
    corrupt_newest_snapshot(dir.path());
    let b = boot(dir.path(), opts(1000)).unwrap();
    assert_eq!(b.snapshot_meta.index, 40);
    assert_eq!(b.skipped_snapshots.len(), 1);
    assert_eq!(b.applied_index, 100);
    assert!(same_state(&b.state_machine, &expected_state(100)));
}

#[test]
fn corrupt_newest_snapshot_without_wal_coverage_stops_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    populate(dir.path(), 100, 100, &[40, 80], 0);
    corrupt_newest_snapshot(dir.path());
    match boot(dir.path(), opts(0)) {
        Err(e @ BootError::CorruptSnapshotNotCovered { .. }) => {
            let msg = e.to_string();
            assert!(msg.contains("00000000000000000080"), "{msg}");
            assert!(msg.contains("41..=80"), "{msg}");
        }
        other => panic!("expected CorruptSnapshotNotCovered, got {other:?}"),
    }
}

#[test]
fn a_lost_snapshot_behind_a_compacted_wal_is_a_log_gap() {
    let dir = tempfile::tempdir().unwrap();
    populate(dir.path(), 100, 100, &[80], 0);
    for f in fs::read_dir(dir.path().join("snap")).unwrap() {
        fs::remove_file(f.unwrap().path()).unwrap();
    }
    assert!(matches!(
        boot(dir.path(), opts(0)),
        Err(BootError::LogGap {
            snapshot_index: 0,
            ..
        })
    ));
}

fn corrupt_newest_snapshot(dir: &Path) {
    let mut files: Vec<_> = fs::read_dir(dir.join("snap"))
        .unwrap()
        .map(|f| f.unwrap().path())
        .collect();
    files.sort();
    let newest = files.pop().unwrap();
    let mut data = fs::read(&newest).unwrap();
    let last = data.len() - 1;
    data[last] ^= 0xff;
    fs::write(&newest, data).unwrap();
}

/// A leader's snapshot of `expected_state(index)`, as the bytes it streams.
fn leader_snapshot_bytes(index: u64) -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let store = SnapshotStore::open(dir.path(), SnapshotOptions::default()).unwrap();
    let file = store.write(&meta(index), &expected_state(index)).unwrap();
    fs::read(&file.path).unwrap()
}

/// Receives `bytes` on the follower at `dir` the way the Raft service does
/// (chunks, then validate and stage), then "crashes": the staged snapshot
/// is leaked, so nothing cleans up after it. `accept` also writes the WAL
/// marker, as the runtime does once the core accepted the snapshot.
fn receive_then_crash(dir: &Path, bytes: &[u8], accept: Option<u64>) {
    let b = boot(dir, opts(5)).unwrap();
    let mut installer = b.snapshots.begin_install().unwrap();
    for chunk in bytes.chunks(4096) {
        installer.write_chunk(chunk).unwrap();
    }
    let staged = installer.finish().unwrap();
    if let Some(index) = accept {
        b.wal.compact(index, 1).unwrap();
    }
    std::mem::forget(staged);
}

fn snap_dir_names(dir: &Path) -> Vec<String> {
    fs::read_dir(dir.join("snap"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect()
}

/// Regression: a received snapshot was renamed to `snap-*.snap`
/// before the core accepted it and before the WAL marker; a crash then left
/// "newest snapshot 200, WAL ends at 10" and the first append failed with
/// a gap, forever. Now the unaccepted snapshot is dropped at boot.
#[test]
fn crash_between_receiving_a_snapshot_and_accepting_it_leaves_a_bootable_node() {
    let dir = tempfile::tempdir().unwrap();
    populate(dir.path(), 10, 10, &[], 5);
    receive_then_crash(dir.path(), &leader_snapshot_bytes(200), None);
    let b = boot(dir.path(), opts(5)).unwrap();
    assert_eq!(
        b.snapshot_meta.index, 0,
        "an unaccepted snapshot was loaded"
    );
    assert_eq!(b.applied_index, 10);
    assert!(same_state(&b.state_machine, &expected_state(10)));
    assert!(
        snap_dir_names(dir.path()).is_empty(),
        "{:?}",
        snap_dir_names(dir.path())
    );
    b.wal.append(&[put(11, "k4")], Some(hs(11))).unwrap();
}

/// The other crash window: the WAL marker is durable but the staged file
/// was not renamed yet. Boot publishes exactly that snapshot.
#[test]
fn crash_after_the_wal_accepted_a_received_snapshot_publishes_it_at_boot() {
    let dir = tempfile::tempdir().unwrap();
    populate(dir.path(), 10, 10, &[], 5);
    receive_then_crash(dir.path(), &leader_snapshot_bytes(200), Some(200));
    let b = boot(dir.path(), opts(5)).unwrap();
    assert_eq!(b.snapshot_meta.index, 200);
    assert_eq!(b.applied_index, 200);
    assert!(same_state(&b.state_machine, &expected_state(200)));
    let names = snap_dir_names(dir.path());
    assert_eq!(names.len(), 1, "{names:?}");
    assert!(
        names[0].starts_with("snap-00000000000000000200-"),
        "{names:?}"
    );
    b.wal.append(&[put(201, "k5")], Some(hs(201))).unwrap();
}

/// Every file under `dir` with its bytes, to show a check wrote nothing.
fn dir_image(dir: &Path) -> Vec<(std::path::PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                out.push((path.clone(), fs::read(&path).unwrap()));
            }
        }
    }
    out.sort();
    out
}

fn last_segment(dir: &Path) -> std::path::PathBuf {
    let mut segs: Vec<_> = fs::read_dir(dir.join("wal"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    segs.sort();
    segs.pop().unwrap()
}

fn append_torn_tail(dir: &Path) {
    let seg = last_segment(dir);
    let mut data = fs::read(&seg).unwrap();
    data.extend_from_slice(&[0x5a; 7]);
    fs::write(&seg, data).unwrap();
}

fn flip_a_byte_mid_log(dir: &Path) {
    let mut segs: Vec<_> = fs::read_dir(dir.join("wal"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    segs.sort();
    let mut data = fs::read(&segs[0]).unwrap();
    let mid = data.len() / 2;
    data[mid] ^= 0x01;
    fs::write(&segs[0], data).unwrap();
}

fn delete_snapshots(dir: &Path) {
    for f in fs::read_dir(dir.join("snap")).unwrap() {
        fs::remove_file(f.unwrap().path()).unwrap();
    }
}

/// `--check-data-dir` agrees with boot on each kind of dir: where boot
/// starts, the check reports the same starting point; where boot refuses,
/// the check refuses with the same error. The check changes no byte.
#[test]
fn the_offline_check_agrees_with_boot_and_writes_nothing() {
    use titan_server::storage::check::check_data_dir;
    type Damage = fn(&Path);
    let none: Damage = |_| {};
    // (what, margin, damage, the error boot and the check must share)
    let table: [(&str, u64, Damage, Option<&str>); 6] = [
        ("a clean dir", 5, none, None),
        ("a torn tail", 5, append_torn_tail, None),
        (
            "a flipped byte mid-log",
            1000,
            flip_a_byte_mid_log,
            Some("WAL"),
        ),
        (
            "a corrupt newest snapshot the WAL covers",
            1000,
            corrupt_newest_snapshot,
            None,
        ),
        (
            "a corrupt newest snapshot the WAL does not cover",
            0,
            corrupt_newest_snapshot,
            Some("is corrupt"),
        ),
        (
            "lost snapshots behind a compacted WAL",
            0,
            delete_snapshots,
            Some("entries are missing"),
        ),
    ];
    for (what, margin, damage, refused) in table {
        let dir = tempfile::tempdir().unwrap();
        populate(dir.path(), 100, 90, &[40, 80], margin);
        damage(dir.path());
        let before = dir_image(dir.path());
        let report = check_data_dir(dir.path(), &opts(margin));
        assert_eq!(dir_image(dir.path()), before, "{what}: the check wrote");
        match (boot(dir.path(), opts(margin)), report.verdict, refused) {
            (Ok(b), Ok(start), None) => {
                assert_eq!(start.snapshot_index, b.snapshot_meta.index, "{what}");
                assert_eq!(start.applied_index, b.applied_index, "{what}");
                assert_eq!(start.entries, b.entries.len(), "{what}");
                assert_eq!(start.revision, b.state_machine.kv().revision(), "{what}");
                assert_eq!(start.keys, b.state_machine.len(), "{what}");
            }
            (Err(booted), Err(checked), Some(want)) => {
                assert_eq!(checked.to_string(), booted.to_string(), "{what}");
                assert!(checked.to_string().contains(want), "{what}: {checked}");
            }
            (booted, checked, want) => panic!(
                "{what}: boot {:?}, check {:?}, expected refusal {want:?}; report {:?}",
                booted.map(|b| b.applied_index),
                checked,
                report.lines
            ),
        }
        if what == "a torn tail" {
            assert!(
                report
                    .lines
                    .iter()
                    .any(|l| l.contains("torn tail of 7 bytes")),
                "{:?}",
                report.lines
            );
        }
    }
}

/// The flag itself: a report and exit 0 on a good dir, "refused" and exit 1
/// on one a start would refuse.
#[test]
fn check_data_dir_flag_exits_zero_on_a_good_dir_and_one_on_a_refused_one() {
    let dir = tempfile::tempdir().unwrap();
    populate(dir.path(), 100, 90, &[40, 80], 0);
    let run = |d: &Path| {
        std::process::Command::new(env!("CARGO_BIN_EXE_titan-server"))
            .arg("--check-data-dir")
            .arg(format!("--data-dir={}", d.display()))
            .output()
            .unwrap()
    };
    let good = run(dir.path());
    let out = String::from_utf8_lossy(&good.stdout);
    assert!(good.status.success(), "{out}");
    assert!(out.contains("would start from snapshot index 80"), "{out}");
    corrupt_newest_snapshot(dir.path());
    let bad = run(dir.path());
    let out = String::from_utf8_lossy(&bad.stdout);
    assert_eq!(bad.status.code(), Some(1), "{out}");
    assert!(
        out.contains("refused:") && out.contains("is corrupt"),
        "{out}"
    );
}
