//! The [`Storage`] trait between the core and the durable log, and
//! [`MemStorage`], the in-memory log the node and the simulator use (the node
//! makes entries durable in the WAL before handing them here).

use super::{ConfState, Entry, HardState, SnapshotMeta, StorageError};

/// Read access to the log as far as it is known to this node.
pub trait Storage {
    /// Hard state and membership at startup.
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

/// An in-memory log. Implementation pending (raft branch).
#[derive(Debug, Default, Clone)]
pub struct MemStorage {}
