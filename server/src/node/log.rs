//! The runtime's handle on the core's in-memory log ([`MemStorage`]): the
//! WAL is the durable copy, `MemStorage` is what the core reads from. Every
//! mutation here happens after the WAL made the same change durable.

use super::runtime::Runtime;
use super::store::{Booted, SnapshotFiles, StorageFailure};
use crate::raft::{self, MemStorage, Ready, SnapshotMeta};

/// The core over the in-memory log.
pub type RawNode = raft::RawNode<MemStorage>;
use crate::storage::{StateMachine, Wal};

/// The pieces the runtime is built from.
pub struct CoreParts {
    /// The Raft core over the recovered log.
    pub raw: RawNode,
    /// The WAL.
    pub wal: std::sync::Arc<Wal>,
    /// Recovered state machine.
    pub sm: StateMachine,
    /// Snapshot files.
    pub files: SnapshotFiles,
    /// Applied index.
    pub applied: u64,
}

/// Loads the recovered log into a `MemStorage` and starts the core on it.
pub fn into_parts(b: Booted, config: &raft::Config) -> Result<CoreParts, StorageFailure> {
    let mem = MemStorage::from_parts(b.hard_state, b.snapshot_meta, b.entries)
        .map_err(|e| StorageFailure(format!("recovered log is not contiguous: {e}")))?;
    // The state machine already applied the WAL up to the durable commit;
    // the core hands out committed entries from the one after it.
    let config = raft::Config {
        applied: b.applied,
        ..config.clone()
    };
    let raw = RawNode::new(&config, mem).map_err(StorageFailure::other)?;
    Ok(CoreParts {
        raw,
        wal: b.wal,
        sm: b.sm,
        files: b.files,
        applied: b.applied,
    })
}

impl Runtime {
    /// Mirrors a persisted Ready into the core's log. The WAL already made
    /// these entries durable, so a refusal here means the two copies of the
    /// log disagree: an internal invariant is broken and the node must stop
    /// rather than carry on with a core that no longer sees what is on disk.
    pub(super) fn raw_storage_append(&mut self, rd: &Ready) -> Result<(), StorageFailure> {
        let mem = self.raw.storage_mut();
        if !rd.entries.is_empty() {
            mem.append(&rd.entries).map_err(|e| {
                StorageFailure(format!(
                    "internal invariant broken: the in-memory log refused entries {}..={} \
                     that the WAL made durable: {e}",
                    rd.entries[0].index,
                    rd.entries[rd.entries.len() - 1].index
                ))
            })?;
        }
        if let Some(hs) = rd.hard_state {
            mem.set_hard_state(hs);
        }
        Ok(())
    }

    /// Drops in-memory entries before `index`.
    pub(super) fn raw_storage_compact(&mut self, index: u64) {
        if let Err(e) = self.raw.storage_mut().compact(index) {
            tracing::debug!(error = %e, index, "in-memory log compaction skipped");
        }
    }

    /// Replaces the in-memory log with a received snapshot the node has
    /// already made durable; a refusal is a broken invariant (see
    /// [`Self::raw_storage_append`]) and stops the node.
    pub(super) fn raw_storage_apply_snapshot(
        &mut self,
        meta: &SnapshotMeta,
    ) -> Result<(), StorageFailure> {
        self.raw
            .storage_mut()
            .apply_snapshot(meta.clone())
            .map_err(|e| {
                StorageFailure(format!(
                    "internal invariant broken: the in-memory log refused the installed \
                     snapshot at index {} term {}: {e}",
                    meta.index, meta.term
                ))
            })
    }
}
