//! The core's view of the log: durable entries in [`Storage`] plus an
//! in-memory *unstable* suffix (entries and possibly a snapshot) that has been
//! handed to the node in a [`super::Ready`] but not yet confirmed durable.

use super::{Entry, SnapshotMeta, Storage, StorageError};

/// A commit index this log cannot honour.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error(
    "commit index {index} is past the last log entry {last_index}: the leader believes \
     this log holds entries it does not (lost or truncated log); not committing entries \
     that were never verified against the leader's log"
)]
pub(crate) struct CommitPastLog {
    /// The commit index that was asked for.
    pub index: u64,
    /// The last entry this log holds.
    pub last_index: u64,
}

/// Entries (and a snapshot) not yet known to be durable.
#[derive(Debug, Default)]
pub(crate) struct Unstable {
    /// A received snapshot waiting to be installed by the node.
    pub snapshot: Option<SnapshotMeta>,
    /// Entries waiting to be persisted; `entries[0].index == offset`.
    pub entries: Vec<Entry>,
    /// Index of the first unstable entry.
    pub offset: u64,
}

/// Storage plus the unstable suffix plus commit/apply positions.
#[derive(Debug)]
pub(crate) struct RaftLog<S: Storage> {
    /// Durable entries, owned by the node (it appends what `Ready` hands out).
    pub storage: S,
    /// The not-yet-durable suffix.
    pub unstable: Unstable,
    /// Highest index known committed.
    pub committed: u64,
    /// Highest index handed out for applying.
    pub applied: u64,
}

impl<S: Storage> RaftLog<S> {
    /// Wraps `storage`; commit and apply start at the snapshot.
    pub fn new(storage: S) -> Self {
        let first = storage.first_index();
        let offset = storage.last_index() + 1;
        RaftLog {
            storage,
            unstable: Unstable {
                snapshot: None,
                entries: Vec::new(),
                offset,
            },
            committed: first - 1,
            applied: first - 1,
        }
    }

    pub fn first_index(&self) -> u64 {
        match &self.unstable.snapshot {
            Some(s) => s.index + 1,
            None => self.storage.first_index(),
        }
    }

    pub fn last_index(&self) -> u64 {
        if let Some(e) = self.unstable.entries.last() {
            return e.index;
        }
        match &self.unstable.snapshot {
            Some(s) => s.index,
            None => self.storage.last_index(),
        }
    }

    /// Term of the entry at `index`.
    pub fn term(&self, index: u64) -> Result<u64, StorageError> {
        if let Some(s) = &self.unstable.snapshot {
            if index == s.index {
                return Ok(s.term);
            }
            if index < s.index {
                return Err(StorageError::Compacted);
            }
        }
        if index >= self.unstable.offset {
            let k = (index - self.unstable.offset) as usize;
            return self
                .unstable
                .entries
                .get(k)
                .map(|e| e.term)
                .ok_or(StorageError::Unavailable);
        }
        if index > self.last_index() {
            return Err(StorageError::Unavailable);
        }
        self.storage.term(index)
    }

    pub fn last_term(&self) -> u64 {
        self.term(self.last_index()).unwrap_or(0)
    }

    pub fn match_term(&self, index: u64, term: u64) -> bool {
        self.term(index) == Ok(term)
    }

    /// Raft §5.4.1: a candidate's log is at least as up to date as ours.
    pub fn is_up_to_date(&self, last_index: u64, last_term: u64) -> bool {
        let my_term = self.last_term();
        last_term > my_term || (last_term == my_term && last_index >= self.last_index())
    }

    /// Index of the first entry of `ents` that is new or conflicts; `0` if all match.
    pub fn find_conflict(&self, ents: &[Entry]) -> u64 {
        ents.iter()
            .find(|e| !self.match_term(e.index, e.term))
            .map_or(0, |e| e.index)
    }

    /// The largest `(index, term)` with `index <= index` and `term <= term`:
    /// the fast-backtracking hint (etcd `findConflictByTerm`).
    pub fn find_conflict_by_term(&self, mut index: u64, term: u64) -> (u64, u64) {
        loop {
            match self.term(index) {
                Ok(t) if t <= term => return (index, t),
                Ok(_) if index > 0 => index -= 1,
                _ => return (index, 0),
            }
        }
    }

    /// Entries in `[lo, hi)` limited to `max_bytes` (at least one).
    pub fn slice(&self, lo: u64, hi: u64, max_bytes: usize) -> Result<Vec<Entry>, StorageError> {
        if lo >= hi {
            return Ok(Vec::new());
        }
        if lo < self.first_index() {
            return Err(StorageError::Compacted);
        }
        if hi > self.last_index() + 1 {
            return Err(StorageError::Unavailable);
        }
        let offset = self.unstable.offset;
        let mut out = Vec::new();
        let mut bytes = 0usize;
        if lo < offset {
            let stable_hi = hi.min(offset);
            out = self.storage.entries(lo, stable_hi, max_bytes)?;
            bytes = out.iter().map(Entry::size_bytes).sum();
            if (out.len() as u64) < stable_hi - lo {
                return Ok(out);
            }
        }
        for index in lo.max(offset)..hi {
            let Some(e) = self.unstable.entries.get((index - offset) as usize) else {
                break;
            };
            if !out.is_empty() && bytes + e.size_bytes() > max_bytes {
                break;
            }
            bytes += e.size_bytes();
            out.push(e.clone());
        }
        Ok(out)
    }

    /// Appends `ents` (contiguous), replacing any conflicting unstable suffix.
    ///
    /// Panics if `ents` would start past the end of the log: callers (the
    /// leader's own proposals, a follower's append after its match check)
    /// always build contiguous runs, so a gap is a bug in the core and would
    /// otherwise leave entries whose predecessors were never written.
    pub fn append(&mut self, ents: &[Entry]) {
        let Some(first) = ents.first().map(|e| e.index) else {
            return;
        };
        let u = &mut self.unstable;
        let end = u.offset + u.entries.len() as u64;
        assert!(
            first <= end,
            "append of entries from index {first} leaves a gap after the unstable end {end}"
        );
        if first == end {
            u.entries.extend_from_slice(ents);
        } else if first <= u.offset {
            u.offset = first;
            u.entries = ents.to_vec();
        } else {
            u.entries.truncate((first - u.offset) as usize);
            u.entries.extend_from_slice(ents);
        }
    }

    /// Appends owned entries, without cloning on the common (contiguous) path.
    pub fn append_owned(&mut self, ents: Vec<Entry>) {
        let end = self.unstable.offset + self.unstable.entries.len() as u64;
        if ents.first().map(|e| e.index) == Some(end) {
            self.unstable.entries.extend(ents);
        } else {
            self.append(&ents);
        }
    }

    /// Moves the commit index forward. An index past the last entry is
    /// refused (the commit index is left unchanged): the entries up to it were
    /// never verified against the leader's log, so neither it nor a clamped
    /// value may be committed.
    pub fn commit_to(&mut self, index: u64) -> Result<(), CommitPastLog> {
        let last_index = self.last_index();
        if index > last_index {
            return Err(CommitPastLog { index, last_index });
        }
        if index > self.committed {
            self.committed = index;
        }
        Ok(())
    }

    /// Commits `index` if it carries `term` (the Figure 8 rule's check).
    pub fn maybe_commit(&mut self, index: u64, term: u64) -> bool {
        if index > self.committed && self.match_term(index, term) {
            self.committed = index;
            return true;
        }
        false
    }

    /// Entries up to `(index, term)` are now durable.
    pub fn stable_to(&mut self, index: u64, term: u64) {
        let u = &mut self.unstable;
        if index < u.offset {
            return;
        }
        let k = (index - u.offset) as usize;
        if u.entries.get(k).map(|e| e.term) == Some(term) {
            u.entries.drain(..=k);
            u.offset = index + 1;
        }
    }

    /// The snapshot at `index` is now installed.
    pub fn stable_snap_to(&mut self, index: u64) {
        if self.unstable.snapshot.as_ref().map(|s| s.index) == Some(index) {
            self.unstable.snapshot = None;
        }
    }

    /// Replaces the log with `meta` (a received snapshot); the node installs it.
    pub fn restore(&mut self, meta: SnapshotMeta) {
        self.committed = meta.index;
        self.unstable.entries.clear();
        self.unstable.offset = meta.index + 1;
        self.unstable.snapshot = Some(meta);
    }

    /// Last index that is durable and still part of this log; `0` while a
    /// received snapshot is pending installation.
    pub fn stable_last(&self) -> u64 {
        if self.unstable.snapshot.is_some() {
            return 0;
        }
        if self.unstable.entries.is_empty() {
            self.storage.last_index()
        } else {
            self.unstable.offset - 1
        }
    }

    fn committed_range(&self) -> (u64, u64) {
        if self.unstable.snapshot.is_some() {
            return (1, 0);
        }
        let lo = (self.applied + 1).max(self.first_index());
        (lo, self.committed.min(self.stable_last()))
    }

    /// Whether durable committed entries wait to be applied.
    pub fn has_next_committed(&self) -> bool {
        let (lo, hi) = self.committed_range();
        lo <= hi
    }

    /// Durable committed entries not yet handed out, up to `max_bytes`.
    pub fn next_committed(&self, max_bytes: usize) -> Vec<Entry> {
        let (lo, hi) = self.committed_range();
        self.slice(lo, hi + 1, max_bytes).unwrap_or_default()
    }

    /// The newest snapshot (a pending received one first).
    pub fn snapshot_meta(&self) -> SnapshotMeta {
        match &self.unstable.snapshot {
            Some(s) => s.clone(),
            None => self.storage.snapshot_meta(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{EntryKind, MemStorage};

    fn ent(index: u64, term: u64) -> Entry {
        Entry {
            index,
            term,
            kind: EntryKind::Normal,
            data: Vec::new(),
        }
    }

    fn log_with(last: u64) -> RaftLog<MemStorage> {
        let mut log = RaftLog::new(MemStorage::new());
        let ents: Vec<Entry> = (1..=last).map(|i| ent(i, 1)).collect();
        log.append(&ents);
        log
    }

    #[test]
    fn commit_index_past_the_last_entry_is_refused_not_clamped() {
        let mut log = log_with(3);
        assert_eq!(log.commit_to(2), Ok(()));
        let err = log.commit_to(7).expect_err("index 7 is past the log");
        assert_eq!(
            err,
            CommitPastLog {
                index: 7,
                last_index: 3
            }
        );
        assert!(err.to_string().contains("lost or truncated log"), "{err}");
        assert_eq!(log.committed, 2, "a refused commit leaves the index alone");
        assert_eq!(log.commit_to(3), Ok(()));
        assert_eq!(log.committed, 3);
        assert_eq!(log.commit_to(1), Ok(()), "commit never moves backwards");
        assert_eq!(log.committed, 3);
    }

    #[test]
    #[should_panic(expected = "leaves a gap after the unstable end 4")]
    fn append_that_would_leave_a_gap_is_a_core_bug_not_accepted() {
        let mut log = log_with(3);
        log.append(&[ent(6, 2)]);
    }

    #[test]
    fn append_at_or_before_the_end_replaces_the_conflicting_suffix() {
        let mut log = log_with(3);
        log.append(&[ent(3, 2), ent(4, 2)]);
        assert_eq!(log.last_index(), 4);
        assert_eq!(log.unstable.entries[2].term, 2);
        log.append(&[ent(5, 2)]);
        assert_eq!(log.last_index(), 5);
    }
}
