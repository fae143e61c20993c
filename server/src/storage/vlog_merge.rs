//! Merge (Bitcask's compaction) of the value log: which closed files to
//! rewrite, and the copy. Runs on a store clone, off the Raft loop; the
//! node then points the live store at the copies
//! ([`MvccStore::relocate`]) and retires the old files.
//!
//! A file is merged when at least `min_dead_ratio` of its bytes are dead:
//! records no key history references any more (overwritten and compacted,
//! deleted, or written by a txn that failed). Live bytes are counted from
//! the index itself, so the count is exact and needs no bookkeeping on the
//! write path.
//!
//! Crash safety: the log is rebuilt from the snapshot and the WAL at every
//! start (see `storage::vlog`), so a crash at any step of a merge loses
//! nothing; the live store is only repointed, on the Raft loop, once every
//! copy is written.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use super::mvcc::MvccStore;
use super::value::ValueStore;
use super::vlog::{Move, ValueLog, ValueLogError, ValueRef};

/// What a merge would do.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MergePlan {
    /// Closed files to rewrite.
    pub files: Vec<u32>,
    /// Live records in them (each place once), in file order.
    pub records: Vec<(Arc<[u8]>, ValueRef)>,
    /// Bytes in the chosen files.
    pub file_bytes: u64,
    /// Live bytes in the chosen files (what the copy writes).
    pub live_bytes: u64,
}

/// A finished copy, for the node to apply.
#[derive(Debug, Default)]
pub struct MergeCopy {
    /// Files to retire once the store is repointed.
    pub files: Vec<u32>,
    /// Per record: key, old place, new place.
    pub moves: Vec<Move>,
    /// Bytes the retired files held.
    pub file_bytes: u64,
    /// Bytes copied.
    pub live_bytes: u64,
}

/// Most records one merge copies (about 40 MB of plan and moves); the
/// remaining candidate files wait for the next check.
pub const MAX_MERGE_RECORDS: usize = 1 << 20;

/// Each place `store` references in a closed file, once. A place is shared
/// only by consecutive records of one key (an `ignore_value` put copies the
/// reference of the record before it), so comparing with the previous one
/// suffices; a duplicate that slipped through would only be copied twice,
/// the second copy left dead.
fn closed_places<'a>(
    store: &'a MvccStore,
    closed: &'a BTreeMap<u32, u64>,
) -> impl Iterator<Item = (&'a Arc<[u8]>, ValueRef)> + 'a {
    let mut prev: Option<(&Arc<[u8]>, ValueRef)> = None;
    store.logged_values().filter(move |(k, r)| {
        let repeat = prev.is_some_and(|(pk, pr)| Arc::ptr_eq(pk, k) && pr == *r);
        prev = Some((*k, *r));
        closed.contains_key(&r.file) && !repeat
    })
}

/// Chooses the closed files whose dead share is at least `min_dead_ratio`
/// (every closed file with a dead byte when `all`), in file order, up to
/// `max_records` live records (always at least one file).
pub fn plan(
    store: &MvccStore,
    sealed: &BTreeMap<u32, u64>,
    (min_dead_ratio, all): (f64, bool),
    max_records: usize,
) -> MergePlan {
    // Per closed file: live bytes and live records.
    let mut live: BTreeMap<u32, (u64, usize)> = BTreeMap::new();
    for (key, r) in closed_places(store, sealed) {
        let e = live.entry(r.file).or_default();
        e.0 += ValueLog::record_len(key.len(), r.value_len);
        e.1 += 1;
    }
    let mut chosen: BTreeSet<u32> = BTreeSet::new();
    let mut planned_records = 0usize;
    for (seq, size) in sealed {
        let (live_bytes, records) = live.get(seq).copied().unwrap_or((0, 0));
        let dead = size.saturating_sub(live_bytes);
        // Never a file without a dead byte (a ratio of 0 would copy fully
        // live files at every check).
        let worth = dead > 0 && (all || dead as f64 >= min_dead_ratio * *size as f64);
        if !worth {
            continue;
        }
        if !chosen.is_empty() && planned_records + records > max_records {
            break;
        }
        planned_records += records;
        chosen.insert(*seq);
    }
    let mut records: Vec<(Arc<[u8]>, ValueRef)> = closed_places(store, sealed)
        .filter(|(_, r)| chosen.contains(&r.file))
        .map(|(k, r)| (k.clone(), r))
        .collect();
    records.sort_by_key(|(_, r)| (r.file, r.offset));
    MergePlan {
        file_bytes: chosen.iter().map(|seq| sealed[seq]).sum(),
        live_bytes: chosen
            .iter()
            .map(|seq| live.get(seq).map_or(0, |l| l.0))
            .sum(),
        files: chosen.into_iter().collect(),
        records,
    }
}

/// The foreground part of a merge, run with the clone it will plan on:
/// closes the active file when `all`, then names the closed files. Only
/// these may be merged: every record in them was appended before the
/// clone, so the clone knows every live reference into them. (A file
/// closed later can hold records the clone has never seen, which a plan
/// would count as dead.)
pub fn closed_files(store: &MvccStore, all: bool) -> Result<BTreeMap<u32, u64>, ValueLogError> {
    let Some(log) = store.values().log() else {
        return Ok(BTreeMap::new());
    };
    if all {
        log.rotate().map_err(|e| ValueLogError {
            path: log.dir().to_path_buf(),
            offset: 0,
            what: format!("closing the active file failed: {e}"),
        })?;
    }
    Ok(log.sealed_files())
}

/// Plans and copies: the background part of a merge, over a store clone
/// and the files [`closed_files`] named with it. `rate` bounds the copy in
/// bytes per second (0 = unlimited).
pub fn run(
    store: &MvccStore,
    closed: &BTreeMap<u32, u64>,
    min_dead_ratio: f64,
    all: bool,
    rate: u64,
) -> Result<MergeCopy, ValueLogError> {
    let Some(log) = store.values().log() else {
        return Ok(MergeCopy::default());
    };
    let plan = plan(store, closed, (min_dead_ratio, all), MAX_MERGE_RECORDS);
    let moves = log.copy_records(&plan.records, rate)?;
    Ok(MergeCopy {
        files: plan.files,
        moves,
        file_bytes: plan.file_bytes,
        live_bytes: plan.live_bytes,
    })
}

/// Points `store` at the copies and retires the merged files; they close
/// once every store clone from before (readers, snapshot writers) is gone.
/// `planned_on` is the clone the merge planned on: if the store was
/// replaced since (a snapshot install), older clones are outside the epoch
/// check, so nothing is retired (the copies are dead bytes the next merge
/// reclaims). Returns the records repointed, or `None` when discarded.
pub fn apply(
    store: &mut MvccStore,
    planned_on: &ValueStore,
    copy: MergeCopy,
) -> Result<Option<usize>, std::io::Error> {
    let Some(log) = store.values().log().cloned() else {
        return Ok(None);
    };
    if !store.values().same_epoch(planned_on) {
        return Ok(None);
    }
    let mut moved = 0;
    for (key, from, to) in &copy.moves {
        moved += store.relocate(key, *from, *to);
    }
    let before = store.next_value_epoch();
    log.retire(copy.files, before.epoch_released())?;
    log.release_retired();
    Ok(Some(moved))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::mvcc::{PutRequest, RequestOp, TxnRequest};
    use crate::storage::vlog::ValueLog;

    fn logged_store(file_limit: u64) -> (tempfile::TempDir, MvccStore) {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = ValueLog::open(&dir.path().join("vlog"), file_limit).expect("log");
        (dir, MvccStore::with_values(ValueStore::logged(log, 0)))
    }

    fn put(s: &mut MvccStore, key: &str, value: &str) {
        let op = RequestOp::Put(PutRequest {
            key: key.into(),
            value: value.into(),
            ..PutRequest::default()
        });
        let req = TxnRequest {
            success: vec![op],
            ..TxnRequest::default()
        };
        s.txn(&req).expect("put");
    }

    fn live(s: &MvccStore) -> Vec<(Vec<u8>, Vec<u8>)> {
        s.iter_live()
            .map(|kv| kv.map(|kv| (kv.key.to_vec(), kv.value.to_vec())))
            .collect::<Result<_, _>>()
            .expect("readable")
    }

    fn vlog_files(dir: &tempfile::TempDir) -> usize {
        std::fs::read_dir(dir.path().join("vlog"))
            .expect("dir")
            .count()
    }

    #[test]
    fn plan_takes_closed_files_by_their_dead_share() {
        // Each record is 20 + 1 + 10 = 31 bytes; 62-byte files hold two.
        let (_d, mut s) = logged_store(62);
        for (k, v) in [
            ("a", "0000000000"),
            ("b", "1111111111"),
            ("c", "2222222222"),
        ] {
            put(&mut s, k, v);
        }
        put(&mut s, "a", "3333333333"); // file 0: a (dead), b; file 1: c, a
        s.compact(s.revision()).expect("compact");
        let sealed = s.values().log().expect("log").sealed_files();
        assert_eq!(sealed, BTreeMap::from([(0, 62)]));
        // (min dead ratio, all, files chosen, live bytes copied)
        let table = [
            (0.0, false, vec![0], 31),
            (0.5, false, vec![0], 31),
            (0.6, false, vec![], 0),
            (0.9, true, vec![0], 31),
        ];
        for (ratio, all, files, live_bytes) in table {
            let p = plan(&s, &sealed, (ratio, all), MAX_MERGE_RECORDS);
            assert_eq!(
                (p.files.clone(), p.live_bytes),
                (files, live_bytes),
                "{ratio} {all}"
            );
            assert_eq!(p.records.len(), usize::from(live_bytes > 0));
        }
    }

    #[test]
    fn one_merge_copies_at_most_its_record_budget_but_always_one_file() {
        // 31-byte records, two per 62-byte file: files 0-2 each end up with
        // one dead and one live record, file 3 with two live ones.
        let (_d, mut s) = logged_store(62);
        let writes = [
            ("a", 0),
            ("b", 0),
            ("a", 1),
            ("c", 0),
            ("c", 1),
            ("d", 0),
            ("d", 1),
            ("e", 0),
        ];
        for (k, round) in writes {
            put(&mut s, k, &format!("{k}{}", round.to_string().repeat(9)));
        }
        s.compact(s.revision()).expect("compact");
        let sealed = closed_files(&s, true).expect("closed files");
        // (record budget, files taken): at least one file, then whole files
        // while the budget lasts.
        for (budget, want) in [
            (0, vec![0]),
            (1, vec![0]),
            (2, vec![0, 1]),
            (3, vec![0, 1, 2]),
        ] {
            let p = plan(&s, &sealed, (0.5, false), budget);
            assert_eq!(p.files, want, "budget {budget}");
            assert_eq!(p.records.len(), want.len(), "one live record a file");
        }
    }

    #[test]
    fn a_merge_moves_live_values_and_frees_dead_files_once_old_readers_are_gone() {
        let (dir, mut s) = logged_store(256);
        for round in 0..20 {
            for k in ["a", "b", "c", "d"] {
                put(&mut s, k, &format!("{k} value of round {round}"));
            }
        }
        s.compact(s.revision()).expect("compact");
        let want = live(&s);
        let files_before = vlog_files(&dir);
        let reader = s.clone(); // a range view handed out before the merge
        let planned_on = s.values().clone();
        let closed = closed_files(&s, true).expect("closed files");
        let copy = run(&s.clone(), &closed, 0.5, true, 0).expect("copy");
        assert!(!copy.files.is_empty() && copy.live_bytes < copy.file_bytes);
        let copied = copy.moves.len();
        assert!(copied > 0);
        let moved = apply(&mut s, &planned_on, copy).expect("apply");
        drop(planned_on);
        assert_eq!(moved, Some(copied), "every copied record is repointed");
        assert_eq!(live(&s), want, "the merged store reads the same");
        assert!(vlog_files(&dir) < files_before, "merged files are unlinked");
        assert_eq!(
            live(&reader),
            want,
            "an older view still reads the retired files"
        );
        let log = s.values().log().expect("log").clone();
        assert_eq!(
            log.release_retired(),
            0,
            "kept open while the old view lives"
        );
        drop(reader);
        assert!(log.release_retired() > 0, "closed once it is gone");
        assert_eq!(live(&s), want);
        // Writes after the merge still work and a second merge finds
        // nothing dead to take.
        put(&mut s, "e", "after");
        let closed = closed_files(&s, false).expect("closed files");
        let again = run(&s.clone(), &closed, 0.5, false, 0).expect("copy");
        assert!(again.files.is_empty(), "{:?}", again.files);
    }

    #[test]
    fn files_closed_after_the_plans_clone_are_never_merged() {
        // Found by the VOPR (seed 90034): a file closed between the clone
        // and the plan held records the clone had never seen, which the
        // plan counted as dead; the file was retired under them.
        let (_d, mut s) = logged_store(64);
        for round in 0..6 {
            put(&mut s, "k", &format!("value {round}"));
        }
        s.compact(s.revision()).expect("compact");
        let view = s.clone();
        let closed = closed_files(&view, false).expect("closed files");
        let planned_on = s.values().clone();
        for k in ["x", "y", "z", "w"] {
            put(&mut s, k, &format!("{k} written after the clone"));
        }
        let copy = run(&view, &closed, 0.0, false, 0).expect("copy");
        drop(view);
        apply(&mut s, &planned_on, copy).expect("apply");
        drop(planned_on);
        s.values().log().expect("log").release_retired();
        let got = live(&s);
        assert_eq!(got.len(), 5, "{got:?}");
        assert!(
            got.iter()
                .any(|(k, v)| k == b"z" && v == b"z written after the clone")
        );
    }

    #[test]
    fn a_merge_planned_before_the_store_was_replaced_is_discarded() {
        let (_d, mut s) = logged_store(64);
        for round in 0..6 {
            put(&mut s, "k", &format!("value {round}"));
        }
        s.compact(s.revision()).expect("compact");
        let planned_on = s.values().clone();
        let closed = closed_files(&s, true).expect("closed files");
        let copy = run(&s.clone(), &closed, 0.1, true, 0).expect("copy");
        assert!(!copy.files.is_empty());
        // An installed snapshot: a new store from the same log.
        let mut installed = MvccStore::with_values(s.values().clone());
        put(&mut installed, "k", "installed");
        assert_eq!(
            apply(&mut installed, &planned_on, copy).expect("apply"),
            None
        );
        assert_eq!(live(&s), vec![(b"k".to_vec(), b"value 5".to_vec())]);
    }
}
