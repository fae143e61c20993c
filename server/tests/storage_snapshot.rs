//! Snapshot files: round trip, retention, install, and hostile input.

use std::collections::BTreeSet;
use std::fs;
use std::io::Cursor;

use titan_server::raft::{ConfState, Entry, EntryKind, SnapshotMeta};
use titan_server::storage::snapshot_codec::{
    SnapshotDecodeError, decode_snapshot, encode_snapshot,
};
use titan_server::storage::{
    Command, Condition, MemberInfo, SnapshotError, SnapshotLimits, SnapshotOptions, SnapshotStore,
    StateMachine,
};

fn state_machine(keys: u64) -> StateMachine {
    let mut sm = StateMachine::new();
    for i in 1..=keys {
        let cmd = Command::Put {
            key: format!("key-{i:05}").into_bytes(),
            value: vec![i as u8; (i % 50) as usize],
            cond: Condition::None,
        };
        sm.apply(&Entry {
            index: i,
            term: 1,
            kind: EntryKind::Normal,
            data: cmd.encode(),
        });
    }
    sm
}

fn meta(index: u64) -> SnapshotMeta {
    SnapshotMeta {
        index,
        term: 2,
        conf: ConfState {
            voters: BTreeSet::from([1, 2, 3]),
            learners: BTreeSet::from([4]),
        },
    }
}

fn encoded(sm: &StateMachine) -> Vec<u8> {
    let mut buf = Vec::new();
    encode_snapshot(&mut buf, &meta(sm.applied_index()), sm).unwrap();
    buf
}

fn pairs(sm: &StateMachine) -> Vec<(Vec<u8>, Vec<u8>, u64)> {
    sm.iter()
        .map(|kv| kv.expect("in-memory read"))
        .map(|(k, v)| (k.to_vec(), v.value.to_vec(), v.version))
        .collect()
}

#[test]
fn snapshot_round_trips_keys_versions_conf_and_members() {
    let mut sm = state_machine(300);
    let info = MemberInfo {
        name: "n5".into(),
        ..MemberInfo::default()
    };
    let cc = titan_server::raft::ConfChange {
        change: titan_server::raft::ConfChangeType::AddLearner,
        node_id: 5,
        context: info.encode(),
    };
    sm.apply(&Entry {
        index: 301,
        term: 2,
        kind: EntryKind::ConfChange,
        data: cc.encode(),
    });
    let buf = encoded(&sm);
    let (header, loaded) =
        decode_snapshot(&mut Cursor::new(&buf), &SnapshotLimits::default()).unwrap();
    assert_eq!(header.meta, meta(301));
    assert_eq!(header.key_count, 300);
    assert_eq!(loaded.members().get(&5), Some(&info));
    assert_eq!(loaded.applied_index(), 301);
    assert_eq!(pairs(&loaded), pairs(&sm));
}

#[test]
fn every_truncation_and_every_flipped_byte_is_rejected() {
    let buf = encoded(&state_machine(5));
    let limits = SnapshotLimits::default();
    for cut in 0..buf.len() {
        assert!(
            decode_snapshot(&mut Cursor::new(&buf[..cut]), &limits).is_err(),
            "cut {cut}"
        );
    }
    for i in 0..buf.len() {
        let mut bad = buf.clone();
        bad[i] ^= 0x10;
        assert!(
            decode_snapshot(&mut Cursor::new(&bad), &limits).is_err(),
            "flip {i}"
        );
    }
    let mut extra = buf.clone();
    extra.push(0);
    assert!(decode_snapshot(&mut Cursor::new(&extra), &limits).is_err());
}

#[test]
fn hostile_length_fields_are_rejected_before_allocating() {
    let limits = SnapshotLimits::default();
    // Header length far beyond the limit.
    let mut hostile = b"TITANSNP".to_vec();
    hostile.extend_from_slice(&1u32.to_le_bytes());
    hostile.extend_from_slice(&u32::MAX.to_le_bytes());
    assert!(matches!(
        decode_snapshot(&mut Cursor::new(&hostile), &limits),
        Err(SnapshotDecodeError::TooLarge { what: "header", .. })
    ));
    // Header length within the limit but longer than the file.
    let mut short = b"TITANSNP".to_vec();
    short.extend_from_slice(&1u32.to_le_bytes());
    short.extend_from_slice(&(8u32 << 20).to_le_bytes());
    assert!(matches!(
        decode_snapshot(&mut Cursor::new(&short), &limits),
        Err(SnapshotDecodeError::Truncated)
    ));
    // A valid header claiming 2^64-1 keys with an empty body.
    let empty = encoded(&StateMachine::new());
    let mut many = empty.clone();
    let count_at = 16 + 16;
    many[count_at..count_at + 8].copy_from_slice(&u64::MAX.to_le_bytes());
    let header_end = many.len() - 12 - 4;
    let crc = crc32fast::hash(&many[..header_end]);
    many[header_end..header_end + 4].copy_from_slice(&crc.to_le_bytes());
    assert!(decode_snapshot(&mut Cursor::new(&many), &limits).is_err());
    // A key length above the limit.
    let tight = SnapshotLimits {
        max_key_bytes: 4,
        ..limits
    };
    assert!(matches!(
        decode_snapshot(&mut Cursor::new(&encoded(&state_machine(1))), &tight),
        Err(SnapshotDecodeError::TooLarge { what: "key", .. })
    ));
}

#[test]
fn store_keeps_the_newest_two_and_cleans_temp_files() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("incoming-1-1.tmp"), b"partial").unwrap();
    let store = SnapshotStore::open(dir.path(), SnapshotOptions::default()).unwrap();
    assert!(!dir.path().join("incoming-1-1.tmp").exists());
    let sm = state_machine(10);
    for index in [10, 20, 30] {
        store.write(&meta(index), &sm).unwrap();
    }
    let indexes: Vec<u64> = store.list().unwrap().iter().map(|f| f.index).collect();
    assert_eq!(indexes, vec![30, 20]);
    let newest = store.load_newest().unwrap();
    assert_eq!(newest.loaded.unwrap().header.meta.index, 30);
    assert!(newest.skipped.is_empty());
}

#[test]
fn corrupt_newest_snapshot_is_reported_and_the_older_one_loaded() {
    let dir = tempfile::tempdir().unwrap();
    let store = SnapshotStore::open(dir.path(), SnapshotOptions::default()).unwrap();
    let sm = state_machine(10);
    store.write(&meta(10), &sm).unwrap();
    let newest = store.write(&meta(20), &sm).unwrap();
    let mut data = fs::read(&newest.path).unwrap();
    let mid = data.len() / 2;
    data[mid] ^= 1;
    fs::write(&newest.path, &data).unwrap();
    let found = store.load_newest().unwrap();
    assert_eq!(found.loaded.unwrap().header.meta.index, 10);
    assert_eq!(found.skipped.len(), 1);
    assert_eq!(found.skipped[0].file.index, 20);
    assert!(
        found.skipped[0].reason.contains("is corrupt"),
        "{}",
        found.skipped[0].reason
    );
}

#[test]
fn installed_snapshot_is_validated_before_it_is_published() {
    let src = tempfile::tempdir().unwrap();
    let dst = tempfile::tempdir().unwrap();
    let leader = SnapshotStore::open(src.path(), SnapshotOptions::default()).unwrap();
    let follower = SnapshotStore::open(dst.path(), SnapshotOptions::default()).unwrap();
    let sm = state_machine(200);
    leader.write(&meta(200), &sm).unwrap();
    let (file, header) = leader.newest().unwrap().unwrap();
    assert_eq!(header.meta, meta(200));
    let bytes = fs::read(&file.path).unwrap();

    let mut bad = follower.begin_install().unwrap();
    let mut corrupted = bytes.clone();
    corrupted[bytes.len() - 20] ^= 1;
    for chunk in corrupted.chunks(1000) {
        bad.write_chunk(chunk).unwrap();
    }
    assert!(matches!(bad.finish(), Err(SnapshotError::Corrupt { .. })));
    assert!(
        fs::read_dir(dst.path()).unwrap().next().is_none(),
        "nothing published"
    );

    let mut good = follower.begin_install().unwrap();
    for chunk in bytes.chunks(777) {
        good.write_chunk(chunk).unwrap();
    }
    let staged = good.finish().unwrap();
    assert_eq!(staged.header().meta.index, 200);
    // Staged, not loadable: publishing is the runtime's step once the core
    // accepted it and the WAL marker is durable.
    assert!(
        follower.list().unwrap().is_empty(),
        "loadable before acceptance"
    );
    let installed = staged.publish().unwrap();
    let (_, loaded) = follower.load(&installed.path).unwrap();
    assert_eq!(pairs(&loaded), pairs(&sm));
}

#[test]
fn oversized_install_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let opts = SnapshotOptions {
        max_install_bytes: 10,
        ..SnapshotOptions::default()
    };
    let store = SnapshotStore::open(dir.path(), opts).unwrap();
    let mut inst = store.begin_install().unwrap();
    inst.write_chunk(&[0; 10]).unwrap();
    assert!(matches!(
        inst.write_chunk(&[0; 1]),
        Err(SnapshotError::InstallTooLarge { .. })
    ));
    drop(inst);
    assert!(
        fs::read_dir(dir.path()).unwrap().next().is_none(),
        "temp file removed"
    );
}

#[test]
fn atomic_write_via_fsutil_round_trips() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("node-id");
    titan_server::storage::fsutil::atomic_write(&path, b"7").unwrap();
    assert_eq!(fs::read(&path).unwrap(), b"7");
}
