//! The [`Storage`] trait between the core and the durable log, and
//! [`MemStorage`], the in-memory log the node and the simulator use (the node
//! makes entries durable in the WAL before handing them here).

use super::{
    ConfChange, ConfState, Entry, EntryKind, HardState, SnapshotMeta, StorageError,
    membership::apply_change,
};

/// Read access to the log as far as it is known to this node.
///
/// Errors mean: [`StorageError::Compacted`] — the index is at or below the
/// snapshot, the leader must send a snapshot instead; [`StorageError::Unavailable`]
/// — the index is past the last entry (a caller bug or a race with truncation).
pub trait Storage {
    /// Hard state and membership at startup. The core uses only the hard
    /// state: it rebuilds membership itself from `snapshot_meta().conf` plus
    /// the conf changes in the log (the effect-on-append rule), so the two
    /// can never disagree.
    fn initial_state(&self) -> (HardState, ConfState);
    /// Entries in `[lo, hi)`, stopping early once `max_bytes` is reached
    /// (always at least one entry when the range is non-empty).
    fn entries(&self, lo: u64, hi: u64, max_bytes: usize) -> Result<Vec<Entry>, StorageError>;
    /// Term of the entry at `index` (the snapshot's index yields its term).
    fn term(&self, index: u64) -> Result<u64, StorageError>;
    /// First index still available in the log (snapshot index + 1).
    fn first_index(&self) -> u64;
    /// Last index in the log (or the snapshot index if the log is empty).
    fn last_index(&self) -> u64;
    /// Metadata of the newest snapshot.
    fn snapshot_meta(&self) -> SnapshotMeta;
}

/// An in-memory log: the entries after the newest snapshot, the snapshot's
/// metadata and the hard state. The node keeps it in step with its WAL.
#[derive(Debug, Default, Clone)]
pub struct MemStorage {
    /// Last persisted hard state.
    hard_state: HardState,
    /// Position and membership of the newest snapshot (index 0: none).
    snapshot: SnapshotMeta,
    /// Entries `snapshot.index + 1 ..= last_index`, contiguous.
    entries: Vec<Entry>,
}

impl MemStorage {
    /// An empty log (a node that has never been bootstrapped: a joining learner).
    pub fn new() -> Self {
        Self::default()
    }

    /// Rebuilds storage from recovered state (WAL replay). Fails with
    /// `Unavailable` if `entries` are not contiguous after `snapshot.index`.
    pub fn from_parts(
        hard_state: HardState,
        snapshot: SnapshotMeta,
        entries: Vec<Entry>,
    ) -> Result<Self, StorageError> {
        let contiguous = entries
            .iter()
            .enumerate()
            .all(|(i, e)| e.index == snapshot.index + 1 + i as u64);
        if !contiguous {
            return Err(StorageError::Unavailable);
        }
        Ok(MemStorage {
            hard_state,
            snapshot,
            entries,
        })
    }

    /// Storage of an initial member: the identical bootstrap log
    /// (see [`super::bootstrap_entries`]).
    pub fn new_bootstrapped(voters: &[(super::NodeId, Vec<u8>)]) -> Self {
        let (entries, hard_state) = super::bootstrap_entries(voters);
        MemStorage {
            hard_state,
            snapshot: SnapshotMeta::default(),
            entries,
        }
    }

    /// Appends entries, truncating any existing suffix from `ents[0].index`.
    /// Entries at or below the snapshot are skipped; a gap is `Unavailable`.
    pub fn append(&mut self, ents: &[Entry]) -> Result<(), StorageError> {
        let ents: Vec<&Entry> = ents
            .iter()
            .filter(|e| e.index > self.snapshot.index)
            .collect();
        let Some(first) = ents.first().map(|e| e.index) else {
            return Ok(());
        };
        if first > self.last_index() + 1 {
            return Err(StorageError::Unavailable);
        }
        self.entries
            .truncate((first - self.snapshot.index - 1) as usize);
        self.entries.extend(ents.into_iter().cloned());
        Ok(())
    }

    /// Like [`MemStorage::append`] but takes ownership (no copy of the payloads).
    pub fn append_owned(&mut self, mut ents: Vec<Entry>) -> Result<(), StorageError> {
        ents.retain(|e| e.index > self.snapshot.index);
        let Some(first) = ents.first().map(|e| e.index) else {
            return Ok(());
        };
        if first > self.last_index() + 1 {
            return Err(StorageError::Unavailable);
        }
        self.entries
            .truncate((first - self.snapshot.index - 1) as usize);
        self.entries.append(&mut ents);
        Ok(())
    }

    /// Records the hard state (after the node has made it durable).
    pub fn set_hard_state(&mut self, hs: HardState) {
        self.hard_state = hs;
    }

    /// The last recorded hard state.
    pub fn hard_state(&self) -> HardState {
        self.hard_state
    }

    /// Installs a received snapshot: entries it covers are discarded, and a
    /// suffix that agrees with it (same term at `meta.index`) is kept.
    pub fn apply_snapshot(&mut self, meta: SnapshotMeta) -> Result<(), StorageError> {
        if meta.index <= self.snapshot.index {
            return Err(StorageError::SnapshotOutOfDate);
        }
        if self.term(meta.index) == Ok(meta.term) {
            self.entries
                .drain(..(meta.index - self.snapshot.index) as usize);
        } else {
            self.entries.clear();
        }
        self.hard_state.commit = self.hard_state.commit.max(meta.index);
        self.snapshot = meta;
        Ok(())
    }

    /// Discards entries up to `index` after the node has snapshotted its
    /// state machine there; the snapshot metadata (term and membership at
    /// `index`) is derived from the log.
    pub fn compact(&mut self, index: u64) -> Result<(), StorageError> {
        if index <= self.snapshot.index {
            return Err(StorageError::SnapshotOutOfDate);
        }
        if index > self.last_index() {
            return Err(StorageError::Unavailable);
        }
        let term = self.term(index)?;
        let conf = self.conf_at(index);
        self.entries.drain(..(index - self.snapshot.index) as usize);
        self.snapshot = SnapshotMeta { index, term, conf };
        Ok(())
    }

    /// Membership after replaying the log's configuration changes up to
    /// `index` on top of the snapshot's (effect-on-append rule).
    pub fn conf_at(&self, index: u64) -> ConfState {
        let mut conf = self.snapshot.conf.clone();
        for e in self.entries.iter().take_while(|e| e.index <= index) {
            if e.kind != EntryKind::ConfChange {
                continue;
            }
            if let Ok(cc) = ConfChange::decode(&e.data)
                && let Ok(next) = apply_change(&conf, &cc)
            {
                conf = next;
            }
        }
        conf
    }
}

impl Storage for MemStorage {
    fn initial_state(&self) -> (HardState, ConfState) {
        (self.hard_state, self.conf_at(self.last_index()))
    }

    fn entries(&self, lo: u64, hi: u64, max_bytes: usize) -> Result<Vec<Entry>, StorageError> {
        if lo <= self.snapshot.index {
            return Err(StorageError::Compacted);
        }
        if hi > self.last_index() + 1 {
            return Err(StorageError::Unavailable);
        }
        let base = self.snapshot.index + 1;
        let mut out = Vec::new();
        let mut bytes = 0usize;
        for e in &self.entries[(lo - base) as usize..(hi.max(lo) - base) as usize] {
            if !out.is_empty() && bytes + e.size_bytes() > max_bytes {
                break;
            }
            bytes += e.size_bytes();
            out.push(e.clone());
        }
        Ok(out)
    }

    fn term(&self, index: u64) -> Result<u64, StorageError> {
        if index < self.snapshot.index {
            return Err(StorageError::Compacted);
        }
        if index == self.snapshot.index {
            return Ok(self.snapshot.term);
        }
        self.entries
            .get((index - self.snapshot.index - 1) as usize)
            .map(|e| e.term)
            .ok_or(StorageError::Unavailable)
    }

    fn first_index(&self) -> u64 {
        self.snapshot.index + 1
    }

    fn last_index(&self) -> u64 {
        self.snapshot.index + self.entries.len() as u64
    }

    fn snapshot_meta(&self) -> SnapshotMeta {
        self.snapshot.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ent(index: u64, term: u64) -> Entry {
        Entry {
            index,
            term,
            kind: EntryKind::Normal,
            data: vec![index as u8],
        }
    }

    #[test]
    fn append_truncates_conflicting_suffix_and_rejects_gaps() {
        let mut s = MemStorage::new();
        s.append(&[ent(1, 1), ent(2, 1), ent(3, 1)]).unwrap();
        s.append(&[ent(2, 2)]).unwrap();
        assert_eq!(s.last_index(), 2);
        assert_eq!(s.term(2), Ok(2));
        assert_eq!(s.append(&[ent(5, 2)]), Err(StorageError::Unavailable));
        s.append_owned(vec![ent(2, 3), ent(3, 3)]).unwrap();
        assert_eq!((s.last_index(), s.term(2)), (3, Ok(3)));
        assert_eq!(
            s.append_owned(vec![ent(9, 3)]),
            Err(StorageError::Unavailable)
        );
    }

    #[test]
    fn compact_keeps_term_and_membership_of_the_compaction_point() {
        let mut s = MemStorage::new_bootstrapped(&[(1, vec![]), (2, vec![])]);
        s.append(&[ent(5, 2), ent(6, 2)]).unwrap();
        s.compact(5).unwrap();
        assert_eq!(s.first_index(), 6);
        assert_eq!(s.term(5), Ok(2));
        assert_eq!(s.term(4), Err(StorageError::Compacted));
        assert_eq!(s.entries(5, 7, usize::MAX), Err(StorageError::Compacted));
        assert_eq!(s.snapshot_meta().conf.voters.len(), 2);
        assert_eq!(s.compact(5), Err(StorageError::SnapshotOutOfDate));
    }

    #[test]
    fn entries_respect_byte_limit_but_return_at_least_one() {
        let mut s = MemStorage::new();
        s.append(&[ent(1, 1), ent(2, 1), ent(3, 1)]).unwrap();
        assert_eq!(s.entries(1, 4, 0).unwrap().len(), 1);
        // Entries count their WAL record size (27 bytes for one data byte).
        let two = 2 * ent(1, 1).size_bytes();
        assert_eq!(s.entries(1, 4, two + 1).unwrap().len(), 2);
    }

    #[test]
    fn apply_snapshot_discards_covered_prefix() {
        let mut s = MemStorage::new();
        s.append(&[ent(1, 1), ent(2, 1), ent(3, 1)]).unwrap();
        let meta = SnapshotMeta {
            index: 2,
            term: 1,
            conf: ConfState::default(),
        };
        s.apply_snapshot(meta.clone()).unwrap();
        assert_eq!((s.first_index(), s.last_index()), (3, 3));
        assert_eq!(s.apply_snapshot(meta), Err(StorageError::SnapshotOutOfDate));
        let newer = SnapshotMeta {
            index: 9,
            term: 4,
            conf: ConfState::default(),
        };
        s.apply_snapshot(newer).unwrap();
        assert_eq!(
            (s.first_index(), s.last_index(), s.hard_state().commit),
            (10, 9, 9)
        );
    }
}
