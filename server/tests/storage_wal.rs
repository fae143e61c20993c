//! WAL behaviour on real files and on the power-loss simulator.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use titan_server::raft::{Entry, EntryKind, HardState};
use titan_server::storage::wal_fs::{SimFs, WalFs};
use titan_server::storage::{Wal, WalError, WalOptions};

fn entry(index: u64, term: u64, len: usize) -> Entry {
    Entry {
        index,
        term,
        kind: EntryKind::Normal,
        data: (0..len).map(|i| (index as usize * 31 + i) as u8).collect(),
    }
}

fn hs(term: u64, commit: u64) -> HardState {
    HardState {
        term,
        vote: 1,
        commit,
    }
}

fn small_segments() -> WalOptions {
    WalOptions {
        segment_bytes: 4096,
        compact_margin_entries: 0,
        ..WalOptions::default()
    }
}

fn segments(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "wal"))
        .collect();
    files.sort();
    files
}

/// A deterministic byte generator (splitmix64) so garbage is reproducible.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

#[test]
fn entries_and_hard_state_round_trip_across_reopen_and_rotation() {
    let dir = tempfile::tempdir().unwrap();
    let expected: Vec<Entry> = (1..=100).map(|i| entry(i, 1 + i / 40, 100)).collect();
    {
        let (wal, rec) = Wal::open(dir.path(), small_segments()).unwrap();
        assert!(rec.entries.is_empty());
        for chunk in expected.chunks(7) {
            wal.append(chunk, Some(hs(3, chunk[0].index))).unwrap();
        }
        assert!(wal.stats().segment_count > 2, "small segments must rotate");
    }
    let (wal, rec) = Wal::open(dir.path(), small_segments()).unwrap();
    assert_eq!(rec.entries, expected);
    assert_eq!(rec.hard_state, hs(3, 99));
    assert_eq!(rec.dropped_tail_bytes, 0);
    assert_eq!(wal.last_index(), 100);
}

#[test]
fn hard_state_survives_when_the_segment_that_wrote_it_is_compacted() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (wal, _) = Wal::open(dir.path(), small_segments()).unwrap();
        wal.append(&[entry(1, 1, 10)], Some(hs(7, 1))).unwrap();
        for i in 2..=80 {
            wal.append(&[entry(i, 7, 100)], None).unwrap();
        }
        wal.compact(70, 7).unwrap();
    }
    let (_, rec) = Wal::open(dir.path(), small_segments()).unwrap();
    assert_eq!(rec.hard_state, hs(7, 1));
    assert_eq!(rec.snapshot, Some((70, 7)));
    assert!(rec.entries.first().unwrap().index <= 71);
    assert_eq!(rec.entries.last().unwrap().index, 80);
}

#[test]
fn conflicting_suffix_is_replaced_and_stays_replaced_after_reopen() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (wal, _) = Wal::open(dir.path(), small_segments()).unwrap();
        let first: Vec<Entry> = (1..=10).map(|i| entry(i, 1, 50)).collect();
        wal.append(&first, None).unwrap();
        wal.append(&[entry(6, 2, 5), entry(7, 2, 5)], None).unwrap();
        assert_eq!(wal.last_index(), 7);
    }
    let (wal, rec) = Wal::open(dir.path(), small_segments()).unwrap();
    let indexes: Vec<(u64, u64)> = rec.entries.iter().map(|e| (e.index, e.term)).collect();
    let mut expected: Vec<(u64, u64)> = (1..=5).map(|i| (i, 1)).collect();
    expected.extend([(6, 2), (7, 2)]);
    assert_eq!(indexes, expected);
    assert!(matches!(
        wal.append(&[entry(9, 2, 1)], None),
        Err(WalError::Gap { first: 9, last: 7 })
    ));
}

/// Writes `n` single-entry batches into one segment; returns the file and
/// its length before the last batch.
fn write_single_segment(dir: &Path, n: u64) -> (PathBuf, u64) {
    let (wal, _) = Wal::open(dir, WalOptions::default()).unwrap();
    for i in 1..n {
        wal.append(&[entry(i, 1, 40)], Some(hs(1, i))).unwrap();
    }
    let seg = segments(dir).pop().unwrap();
    let before_last = fs::metadata(&seg).unwrap().len();
    wal.append(&[entry(n, 1, 40)], None).unwrap();
    (seg, before_last)
}

#[test]
fn torn_tail_is_truncated_at_every_offset_of_the_last_record() {
    let src = tempfile::tempdir().unwrap();
    let (seg, before_last) = write_single_segment(src.path(), 5);
    let full = fs::read(&seg).unwrap();
    let name = seg.file_name().unwrap();
    for cut in before_last..full.len() as u64 {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join(name), &full[..cut as usize]).unwrap();
        let (wal, rec) = Wal::open(dir.path(), WalOptions::default())
            .unwrap_or_else(|e| panic!("cut at {cut}: {e}"));
        let got: Vec<u64> = rec.entries.iter().map(|e| e.index).collect();
        assert_eq!(got, vec![1, 2, 3, 4], "cut at {cut}");
        assert_eq!(rec.dropped_tail_bytes, cut - before_last, "cut at {cut}");
        wal.append(&[entry(5, 2, 3)], None).unwrap();
        drop(wal);
        let (_, rec) = Wal::open(dir.path(), WalOptions::default()).unwrap();
        assert_eq!(rec.entries.len(), 5, "append after recovery at cut {cut}");
    }
}

#[test]
fn random_garbage_or_zeroes_after_the_last_record_are_dropped() {
    let src = tempfile::tempdir().unwrap();
    let (seg, _) = write_single_segment(src.path(), 5);
    let full = fs::read(&seg).unwrap();
    let mut rng = Rng(42);
    for len in [1usize, 3, 7, 8, 9, 63, 500, 4096, 70_000] {
        for zeroes in [false, true] {
            let dir = tempfile::tempdir().unwrap();
            let mut data = full.clone();
            let tail = if zeroes { vec![0; len] } else { rng.bytes(len) };
            data.extend_from_slice(&tail);
            fs::write(dir.path().join(seg.file_name().unwrap()), &data).unwrap();
            let (_, rec) = Wal::open(dir.path(), WalOptions::default()).unwrap();
            assert_eq!(rec.entries.len(), 5, "garbage len {len} zeroes {zeroes}");
            assert_eq!(rec.hard_state, hs(1, 4));
            assert_eq!(rec.dropped_tail_bytes, len as u64);
        }
    }
}

/// Offset of the first entry record in a fresh segment: header (32) plus
/// the preamble's hard-state frame (8 + 1 + 24) and, since format version
/// 2, its nonce frame (8 + 17).
const FIRST_RECORD_OFFSET: u64 = 90;

#[test]
fn flipped_byte_in_an_earlier_segment_is_an_error_naming_file_and_offset() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (wal, _) = Wal::open(dir.path(), small_segments()).unwrap();
        for i in 1..=100 {
            wal.append(&[entry(i, 1, 100)], None).unwrap();
        }
    }
    let first = segments(dir.path()).remove(0);
    let mut data = fs::read(&first).unwrap();
    data[FIRST_RECORD_OFFSET as usize + 12] ^= 0x40;
    fs::write(&first, &data).unwrap();
    match Wal::open(dir.path(), small_segments()) {
        Err(WalError::Corrupt { path, offset, .. }) => {
            assert_eq!(path, first);
            assert_eq!(offset, FIRST_RECORD_OFFSET);
        }
        other => panic!("expected Corrupt, got {other:?}"),
    }
}

#[test]
fn flipped_byte_mid_last_segment_before_valid_records_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let (seg, _) = write_single_segment(dir.path(), 5);
    let mut data = fs::read(&seg).unwrap();
    for flip_at in [
        FIRST_RECORD_OFFSET,
        FIRST_RECORD_OFFSET + 4,
        FIRST_RECORD_OFFSET + 30,
    ] {
        let mut bad = data.clone();
        bad[flip_at as usize] ^= 1;
        fs::write(&seg, &bad).unwrap();
        match Wal::open(dir.path(), WalOptions::default()) {
            Err(WalError::Corrupt { path, offset, .. }) => {
                assert_eq!((path, offset), (seg.clone(), FIRST_RECORD_OFFSET));
            }
            other => panic!("flip at {flip_at}: expected Corrupt, got {other:?}"),
        }
    }
    data[3] ^= 1;
    fs::write(&seg, &data).unwrap();
    assert!(matches!(
        Wal::open(dir.path(), WalOptions::default()),
        Err(WalError::Corrupt { offset: 0, .. })
    ));
}

#[test]
fn a_missing_middle_segment_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (wal, _) = Wal::open(dir.path(), small_segments()).unwrap();
        for i in 1..=100 {
            wal.append(&[entry(i, 1, 100)], None).unwrap();
        }
    }
    let segs = segments(dir.path());
    fs::remove_file(&segs[1]).unwrap();
    assert!(matches!(
        Wal::open(dir.path(), small_segments()),
        Err(WalError::MissingSegment { seq: 2, .. })
    ));
}

#[test]
fn oversized_length_field_is_rejected_without_allocating() {
    let dir = tempfile::tempdir().unwrap();
    let (seg, _) = write_single_segment(dir.path(), 3);
    let mut data = fs::read(&seg).unwrap();
    data[FIRST_RECORD_OFFSET as usize..FIRST_RECORD_OFFSET as usize + 4]
        .copy_from_slice(&u32::MAX.to_le_bytes());
    fs::write(&seg, &data).unwrap();
    let err = Wal::open(dir.path(), WalOptions::default()).unwrap_err();
    let at = format!("byte offset {FIRST_RECORD_OFFSET}");
    assert!(err.to_string().contains(&at), "{err}");
}

#[test]
fn compaction_removes_covered_segments_but_keeps_the_margin() {
    let dir = tempfile::tempdir().unwrap();
    let opts = WalOptions {
        compact_margin_entries: 30,
        ..small_segments()
    };
    let (wal, _) = Wal::open(dir.path(), opts.clone()).unwrap();
    for i in 1..=200 {
        wal.append(&[entry(i, 1, 100)], None).unwrap();
    }
    let before = wal.stats().segment_count;
    wal.compact(150, 1).unwrap();
    let after = wal.stats().segment_count;
    assert!(after < before, "{after} < {before}");
    assert_eq!(segments(dir.path()).len() as u64, after);
    drop(wal);
    let (wal, rec) = Wal::open(dir.path(), opts).unwrap();
    let first = rec.entries.first().unwrap().index;
    assert!(first <= 121, "margin kept: first {first}");
    assert_eq!(rec.entries.last().unwrap().index, 200);
    assert_eq!(rec.snapshot, Some((150, 1)));
    wal.append(&[entry(201, 1, 1)], None).unwrap();
}

#[test]
fn snapshot_beyond_the_log_restarts_the_log_after_it() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (wal, _) = Wal::open(dir.path(), small_segments()).unwrap();
        wal.append(&[entry(1, 1, 1), entry(2, 1, 1)], None).unwrap();
        wal.compact(500, 4).unwrap();
        assert!(matches!(
            wal.append(&[entry(400, 4, 1)], None),
            Err(WalError::TruncateCompacted { .. })
        ));
        wal.append(&[entry(501, 4, 1)], None).unwrap();
    }
    let (_, rec) = Wal::open(dir.path(), small_segments()).unwrap();
    let got: Vec<u64> = rec.entries.iter().map(|e| e.index).collect();
    assert_eq!(got, vec![501]);
}

/// A snapshot installed from a leader over a log that diverged at the
/// snapshot's index (entries of an older term) discards that log on
/// recovery, as the in-memory log does; one that matches keeps what
/// follows it.
#[test]
fn a_snapshot_marker_keeps_the_log_after_it_only_when_its_entry_matches() {
    // (log terms for entries 1..=6, marker (index, term), entries recovered)
    type Case = (&'static [u64], (u64, u64), &'static [u64]);
    let cases: [Case; 5] = [
        (&[1, 1, 2, 2, 2, 2], (4, 3), &[]),
        (&[1, 1, 2, 2, 2, 2], (4, 2), &[1, 2, 3, 4, 5, 6]),
        (&[1, 1, 2, 2, 2, 2], (6, 2), &[1, 2, 3, 4, 5, 6]),
        (&[1, 1, 2, 2, 2, 2], (6, 3), &[]),
        (&[1, 1], (5, 3), &[]),
    ];
    for (i, (terms, (index, term), want)) in cases.into_iter().enumerate() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (wal, _) = Wal::open(dir.path(), WalOptions::default()).unwrap();
            let log: Vec<Entry> = terms
                .iter()
                .enumerate()
                .map(|(j, t)| entry(j as u64 + 1, *t, 1))
                .collect();
            wal.append(&log, Some(hs(2, 2))).unwrap();
            wal.compact(index, term).unwrap();
        }
        let (_, rec) = Wal::open(dir.path(), WalOptions::default()).unwrap();
        let got: Vec<u64> = rec.entries.iter().map(|e| e.index).collect();
        assert_eq!(got, want, "case {i}");
        assert_eq!(rec.snapshot, Some((index, term)), "case {i}");
    }
}

/// A hard state that only moved the commit index is written without an
/// fsync; a clean restart reads it back, a power loss may drop it (leaving
/// every synced entry and the last synced hard state), and the next synced
/// batch makes it durable.
#[test]
fn commit_only_hard_states_skip_the_fsync_and_a_power_loss_may_drop_only_them() {
    let fs = SimFs::new();
    let opts = WalOptions {
        fs: Arc::new(fs.clone()),
        ..small_segments()
    };
    let dir = Path::new("/sim/wal");
    let batch: Vec<Entry> = (1..=3).map(|i| entry(i, 1, 100)).collect();
    let (wal, _) = Wal::open(dir, opts.clone()).unwrap();
    wal.append(&batch, Some(hs(1, 1))).unwrap();
    let fsyncs = wal.stats().fsync_count;
    wal.record_commit_unsynced(hs(1, 3)).unwrap();
    assert_eq!(
        wal.stats().fsync_count,
        fsyncs,
        "a commit-only record is not fsynced"
    );
    drop(wal);

    // Clean restart: the file still holds it.
    let (wal, rec) = Wal::open(dir, opts.clone()).unwrap();
    assert_eq!(
        (rec.entries.clone(), rec.hard_state),
        (batch.clone(), hs(1, 3))
    );
    wal.record_commit_unsynced(hs(1, 2)).unwrap();
    drop(wal);

    // Power loss: the unsynced record is gone, nothing synced is.
    fs.crash(|_| Vec::new());
    let (wal, rec) = Wal::open(dir, opts.clone()).unwrap();
    assert_eq!(rec.entries, batch);
    assert!(rec.hard_state.commit <= 3, "{:?}", rec.hard_state);

    // A later synced batch makes an earlier unsynced commit durable.
    wal.record_commit_unsynced(hs(1, 3)).unwrap();
    wal.append(&[entry(4, 1, 10)], None).unwrap();
    drop(wal);
    fs.crash(|_| Vec::new());
    let (_, rec) = Wal::open(dir, opts).unwrap();
    assert_eq!(rec.entries.len(), 4);
    assert_eq!(rec.hard_state, hs(1, 3));
}

#[test]
fn concurrent_appends_share_fsyncs() {
    let dir = tempfile::tempdir().unwrap();
    let (wal, _) = Wal::open(dir.path(), WalOptions::default()).unwrap();
    let wal = Arc::new(wal);
    let threads = 16;
    let per_thread = 20;
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            let wal = wal.clone();
            std::thread::spawn(move || {
                for _ in 0..per_thread {
                    wal.append_with(|last| (vec![entry(last + 1, 1, 256)], None))
                        .unwrap();
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    let stats = wal.stats();
    assert_eq!(stats.last_index, threads * per_thread);
    assert!(stats.fsync_count <= stats.batches, "{stats:?}");
    drop(wal);
    let (_, rec) = Wal::open(dir.path(), WalOptions::default()).unwrap();
    assert_eq!(rec.entries.len() as u64, threads * per_thread);
}

/// Only the newest segment can hold an in-flight write when the power
/// fails (older ones were fsynced before rotation and never written again).
fn newest_segment(fs: &SimFs, dir: &Path) -> PathBuf {
    let names = WalFs::list(fs, dir).unwrap();
    dir.join(names.into_iter().max().unwrap())
}

/// The power-loss image of `fs` at this instant, with `torn` appended to the
/// newest segment *of that image* (the only file a write can have been in
/// flight to).
///
/// The file must be chosen from the image, not from the live file system:
/// writer threads keep running, so a segment picked before the image is taken
/// may have been sealed by a rotation in between. Tearing a sealed segment
/// models an image no real disk can produce (rotation fsyncs the old segment
/// before the next one is created, and nothing is written to it again), and
/// recovery rightly reports such an image as corruption.
fn crash_image_with_torn_tail(fs: &SimFs, dir: &Path, torn: &[u8]) -> SimFs {
    let image = fs.crash_image(|_| Vec::new());
    let newest = newest_segment(&image, dir);
    let mut bytes = image.read_all(&newest).unwrap();
    bytes.extend_from_slice(torn);
    image.write_all(&newest, bytes);
    image
}

#[test]
fn every_acknowledged_batch_survives_power_loss_with_torn_garbage() {
    let fs = SimFs::new();
    let opts = WalOptions {
        fs: Arc::new(fs.clone()),
        ..small_segments()
    };
    let dir = Path::new("/sim/wal");
    let mut rng = Rng(7);
    let mut acked: Vec<Entry> = Vec::new();
    for round in 0..40 {
        let (wal, rec) = Wal::open(dir, opts.clone()).unwrap();
        assert_eq!(rec.entries, acked, "round {round}");
        for _ in 0..(rng.next() % 8) {
            let first = acked.last().map_or(1, |e| e.index + 1);
            let n = 1 + rng.next() % 5;
            let batch: Vec<Entry> = (first..first + n)
                .map(|i| entry(i, 1, (rng.next() % 300) as usize))
                .collect();
            wal.append(&batch, Some(hs(1, first))).unwrap();
            acked.extend(batch);
        }
        // The write in flight when the power failed left torn bytes behind.
        let garbage_len = (rng.next() % 64) as usize;
        let garbage = rng.bytes(garbage_len);
        drop(wal);
        let newest = newest_segment(&fs, dir);
        fs.crash(|p| {
            if p == newest {
                garbage.clone()
            } else {
                Vec::new()
            }
        });
    }
}

#[test]
fn acknowledged_concurrent_writes_survive_a_crash_image_taken_mid_flight() {
    let fs = SimFs::new();
    let opts = WalOptions {
        fs: Arc::new(fs.clone()),
        ..small_segments()
    };
    let dir = Path::new("/sim/wal");
    let (wal, _) = Wal::open(dir, opts.clone()).unwrap();
    let wal = Arc::new(wal);
    let acked = Arc::new(Mutex::new(Vec::new()));
    let handles: Vec<_> = (0..8)
        .map(|_| {
            let (wal, acked) = (wal.clone(), acked.clone());
            std::thread::spawn(move || {
                for _ in 0..200 {
                    let mut mine = 0;
                    wal.append_with(|last| {
                        mine = last + 1;
                        (vec![entry(last + 1, 1, 64)], None)
                    })
                    .unwrap();
                    acked.lock().unwrap().push(mine);
                }
            })
        })
        .collect();
    let mut images = Vec::new();
    for _ in 0..5 {
        std::thread::sleep(std::time::Duration::from_millis(2));
        let acked_before: Vec<u64> = acked.lock().unwrap().clone();
        let image = crash_image_with_torn_tail(&fs, dir, &[0xAB; 13]);
        images.push((acked_before, image));
    }
    for h in handles {
        h.join().unwrap();
    }
    for (acked_before, image) in images {
        let opts = WalOptions {
            fs: Arc::new(image),
            ..small_segments()
        };
        let (_, rec) = Wal::open(dir, opts).unwrap();
        let last = rec.entries.last().map_or(0, |e| e.index);
        let max_acked = acked_before.iter().copied().max().unwrap_or(0);
        assert!(
            last >= max_acked,
            "acked {max_acked} but recovered up to {last}"
        );
        for (i, e) in rec.entries.iter().enumerate() {
            assert_eq!(e.index, i as u64 + 1);
        }
    }
}

/// Writes single-entry batches until the WAL has rotated from segment 1 to
/// segment 2; returns the file system and the number of entries written.
fn sim_wal_just_past_first_rotation(dir: &Path) -> (SimFs, u64) {
    let fs = SimFs::new();
    let opts = WalOptions {
        fs: Arc::new(fs.clone()),
        ..small_segments()
    };
    let (wal, _) = Wal::open(dir, opts).unwrap();
    let mut written = 0;
    while WalFs::list(&fs, dir).unwrap().len() < 2 {
        written += 1;
        wal.append(&[entry(written, 1, 64)], None).unwrap();
    }
    (fs, written)
}

/// The image from the one failure of
/// `acknowledged_concurrent_writes_survive_a_crash_image_taken_mid_flight`:
/// 13 bytes of 0xAB after the last record of a segment that a rotation had
/// already sealed. The bad "length" 0xABABABAB = 2880154539 is the garbage
/// itself. A real crash cannot tear a sealed segment, so the bytes are
/// damage, not an unacknowledged tail, and recovery must stop and name them.
#[test]
fn torn_bytes_after_a_sealed_segment_are_corruption_not_a_torn_tail() {
    let dir = Path::new("/sim/wal");
    let (fs, _) = sim_wal_just_past_first_rotation(dir);
    let sealed = dir.join(WalFs::list(&fs, dir).unwrap().into_iter().min().unwrap());
    let sealed_len = fs.read_all(&sealed).unwrap().len() as u64;
    let image = fs.crash_image(|p| {
        if p == sealed {
            vec![0xAB; 13]
        } else {
            Vec::new()
        }
    });
    let opts = WalOptions {
        fs: Arc::new(image),
        ..small_segments()
    };
    match Wal::open(dir, opts) {
        Err(WalError::Corrupt {
            path,
            offset,
            reason,
        }) => {
            assert_eq!(path, sealed);
            assert_eq!(offset, sealed_len);
            assert!(reason.contains("2880154539"), "{reason}");
        }
        other => panic!("expected Corrupt, got {other:?}"),
    }
}

/// The legal counterpart of the image above: the same torn bytes on the
/// segment the rotation just created are cut, and every entry survives.
#[test]
fn torn_tail_right_after_a_rotation_is_cut_from_the_new_segment() {
    let dir = Path::new("/sim/wal");
    let (fs, written) = sim_wal_just_past_first_rotation(dir);
    let image = crash_image_with_torn_tail(&fs, dir, &[0xAB; 13]);
    let opts = WalOptions {
        fs: Arc::new(image),
        ..small_segments()
    };
    let (_, rec) = Wal::open(dir, opts).unwrap();
    assert_eq!(rec.dropped_tail_bytes, 13);
    let indexes: Vec<u64> = rec.entries.iter().map(|e| e.index).collect();
    assert_eq!(indexes, (1..=written).collect::<Vec<u64>>());
}

#[test]
fn torn_header_of_a_freshly_rotated_segment_is_dropped_and_rewritten() {
    for torn in [vec![0u8; 10], vec![0u8; 32], b"TITANWAL\x01".to_vec()] {
        let dir = tempfile::tempdir().unwrap();
        {
            let (wal, _) = Wal::open(dir.path(), small_segments()).unwrap();
            for i in 1..=60 {
                wal.append(&[entry(i, 1, 100)], Some(hs(1, i))).unwrap();
            }
        }
        let last = segments(dir.path()).pop().unwrap();
        let next = dir.path().join(format!(
            "{:020}.wal",
            last.file_stem()
                .unwrap()
                .to_str()
                .unwrap()
                .parse::<u64>()
                .unwrap()
                + 1
        ));
        fs::write(&next, &torn).unwrap();
        let (wal, rec) = Wal::open(dir.path(), small_segments()).unwrap();
        assert_eq!(rec.entries.len(), 60);
        assert_eq!(rec.dropped_tail_bytes, torn.len() as u64);
        wal.append(&[entry(61, 1, 1)], None).unwrap();
        drop(wal);
        let (_, rec) = Wal::open(dir.path(), small_segments()).unwrap();
        assert_eq!(rec.entries.len(), 61, "torn header {torn:?}");
        assert_eq!(rec.hard_state, hs(1, 60));
    }
}

// ---- Regression: torn tails that contain valid-looking frames ----

use titan_server::storage::wal_record::{WalRecord, decode_frame};

/// The segment's nonce and durable length, read from the trailer that
/// ends the last acknowledged batch.
fn last_trailer(data: &[u8]) -> (u64, u64) {
    let trailer = &data[data.len() - 25..];
    match decode_frame(trailer, u32::MAX) {
        Ok((WalRecord::Synced { nonce, .. }, _)) => (nonce, data.len() as u64),
        other => panic!("no batch trailer at the end: {other:?}"),
    }
}

/// One batch as the writer lays it out: the entry, then the trailer.
fn batch(e: &Entry, nonce: u64, synced_bytes: u64) -> Vec<u8> {
    let mut out = Vec::new();
    WalRecord::Entry(e.clone()).encode_into(&mut out);
    WalRecord::Synced {
        nonce,
        synced_bytes,
    }
    .encode_into(&mut out);
    out
}

/// Two batches written in one fsync window; the power fails and the pages
/// of the first one are lost while the second one persisted (pages of an
/// unsynced write reach the disk in any order). The old rule saw a valid
/// frame after a bad one and refused to boot.
#[test]
fn torn_batch_followed_by_a_complete_unsynced_batch_is_a_torn_tail_not_corruption() {
    let dir = tempfile::tempdir().unwrap();
    let (seg, _) = write_single_segment(dir.path(), 4);
    let mut data = fs::read(&seg).unwrap();
    let (nonce, durable) = last_trailer(&data);
    let mut fifth = batch(&entry(5, 1, 300), nonce, durable);
    let sixth = batch(&entry(6, 1, 40), nonce, durable);
    for b in &mut fifth[40..200] {
        *b = 0;
    }
    let tail = (fifth.len() + sixth.len()) as u64;
    data.extend_from_slice(&fifth);
    data.extend_from_slice(&sixth);
    fs::write(&seg, &data).unwrap();
    let (wal, rec) = Wal::open(dir.path(), WalOptions::default())
        .unwrap_or_else(|e| panic!("a legitimate torn tail was refused: {e}"));
    let got: Vec<u64> = rec.entries.iter().map(|e| e.index).collect();
    assert_eq!(got, vec![1, 2, 3, 4]);
    assert_eq!(rec.dropped_tail_bytes, tail);
    wal.append(&[entry(5, 2, 10)], None).unwrap();
    drop(wal);
    let (_, rec) = Wal::open(dir.path(), WalOptions::default()).unwrap();
    assert_eq!(rec.entries.len(), 5);
}

/// A client value can embed bytes that form valid frames, including a
/// forged durability claim (it cannot know the segment's random nonce).
/// When the write carrying it is torn, recovery must still cut the tail.
#[test]
fn torn_batch_whose_value_embeds_valid_frames_is_a_torn_tail() {
    let dir = tempfile::tempdir().unwrap();
    let (wal, _) = Wal::open(dir.path(), WalOptions::default()).unwrap();
    for i in 1..=3 {
        wal.append(&[entry(i, 1, 40)], Some(hs(1, i))).unwrap();
    }
    let seg = segments(dir.path()).pop().unwrap();
    let before = fs::metadata(&seg).unwrap().len();
    let mut value = vec![b'x'; 64];
    WalRecord::Entry(entry(99, 9, 16)).encode_into(&mut value);
    let forged = WalRecord::Synced {
        nonce: 0x5eed_5eed_5eed_5eed,
        synced_bytes: u64::MAX >> 1,
    };
    forged.encode_into(&mut value);
    value.extend_from_slice(&[b'y'; 64]);
    let evil = Entry {
        index: 4,
        term: 1,
        kind: EntryKind::Normal,
        data: value,
    };
    wal.append(&[evil], None).unwrap();
    drop(wal);
    let full = fs::read(&seg).unwrap();
    // Torn inside the trailing 'y' bytes: the embedded frames persisted.
    let cut = full.len() - 25 - 30;
    fs::write(&seg, &full[..cut]).unwrap();
    let (_, rec) = Wal::open(dir.path(), WalOptions::default())
        .unwrap_or_else(|e| panic!("embedded frames made a torn tail look corrupt: {e}"));
    let got: Vec<u64> = rec.entries.iter().map(|e| e.index).collect();
    assert_eq!(got, vec![1, 2, 3]);
    assert_eq!(rec.dropped_tail_bytes, cut as u64 - before);
}

/// Damage to a batch that was durable (a later batch's trailer says so)
/// is still mid-log corruption: refused, naming the file and offset.
#[test]
fn damage_to_a_durable_batch_followed_by_more_batches_is_refused_with_file_and_offset() {
    let dir = tempfile::tempdir().unwrap();
    let (seg, _) = write_single_segment(dir.path(), 5);
    let mut data = fs::read(&seg).unwrap();
    data[FIRST_RECORD_OFFSET as usize + 20] ^= 0x40;
    fs::write(&seg, &data).unwrap();
    match Wal::open(dir.path(), WalOptions::default()) {
        Err(WalError::Corrupt {
            path,
            offset,
            reason,
        }) => {
            assert_eq!((path, offset), (seg, FIRST_RECORD_OFFSET));
            assert!(reason.contains("as durable"), "{reason}");
        }
        other => panic!("expected Corrupt, got {other:?}"),
    }
}

/// A segment written before format version 2 (no nonce, no trailers) is
/// still read, and writing continues in a new version 2 segment.
#[test]
fn version_1_segment_is_still_read_and_writing_continues_in_a_new_segment() {
    let dir = tempfile::tempdir().unwrap();
    let mut data = Vec::new();
    data.extend_from_slice(b"TITANWAL");
    data.extend_from_slice(&1u32.to_le_bytes());
    data.extend_from_slice(&1u64.to_le_bytes());
    data.extend_from_slice(&1u64.to_le_bytes());
    let crc = crc32fast::hash(&data);
    data.extend_from_slice(&crc.to_le_bytes());
    WalRecord::HardState(hs(1, 0)).encode_into(&mut data);
    for i in 1..=3 {
        WalRecord::Entry(entry(i, 1, 20)).encode_into(&mut data);
    }
    WalRecord::HardState(hs(1, 3)).encode_into(&mut data);
    fs::write(dir.path().join("00000000000000000001.wal"), &data).unwrap();
    let (wal, rec) = Wal::open(dir.path(), WalOptions::default()).unwrap();
    assert_eq!(rec.entries.len(), 3);
    assert_eq!(rec.hard_state, hs(1, 3));
    wal.append(&[entry(4, 1, 20)], Some(hs(1, 4))).unwrap();
    drop(wal);
    assert_eq!(segments(dir.path()).len(), 2, "continued in a new segment");
    let (_, rec) = Wal::open(dir.path(), WalOptions::default()).unwrap();
    let got: Vec<u64> = rec.entries.iter().map(|e| e.index).collect();
    assert_eq!(got, vec![1, 2, 3, 4]);
    assert_eq!(rec.hard_state, hs(1, 4));
}
