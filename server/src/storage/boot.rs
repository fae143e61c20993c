//! Startup: load the newest valid snapshot, open the WAL, replay committed
//! entries after the snapshot into the state machine, and hand the rest of
//! the log to Raft.
//!
//! Layout under the data directory: `wal/` (segments) and `snap/` (snapshots).
//! Staged received snapshots are settled first: the one the WAL's newest
//! snapshot marker names is published, every other one deleted.

use std::path::{Path, PathBuf};

use super::snapshot::{
    NewestSnapshot, SkippedSnapshot, SnapshotError, SnapshotOptions, SnapshotStore,
};
use super::state_machine::StateMachine;
use super::wal::{Wal, WalError, WalOptions};
use crate::raft::{Entry, HardState, SnapshotMeta};

/// Subdirectory holding WAL segments.
pub const WAL_DIR: &str = "wal";
/// Subdirectory holding snapshot files.
pub const SNAP_DIR: &str = "snap";
/// Value log directory under the data dir (see `storage::vlog`).
pub const VLOG_DIR: &str = "vlog";

/// Options for [`boot`].
#[derive(Debug, Clone, Default)]
pub struct BootOptions {
    /// WAL tunables.
    pub wal: WalOptions,
    /// Snapshot store tunables.
    pub snapshot: SnapshotOptions,
}

/// Why the node cannot start. Every variant means "stop and tell the operator".
#[derive(Debug, thiserror::Error)]
pub enum BootError {
    /// The WAL could not be opened (I/O error or mid-log corruption).
    #[error(transparent)]
    Wal(#[from] WalError),
    /// The snapshot directory could not be read.
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
    /// The newest snapshot is corrupt and the WAL no longer holds the
    /// entries needed to rebuild its state from an older one.
    #[error(
        "snapshot {corrupt} is corrupt ({reason}) and the WAL does not cover indexes {from_index}..={through_index} needed to fall back to an older snapshot"
    )]
    CorruptSnapshotNotCovered {
        /// The newest corrupt snapshot.
        corrupt: PathBuf,
        /// Why it failed validation.
        reason: String,
        /// First index the fallback needs from the WAL.
        from_index: u64,
        /// Last index the fallback needs from the WAL.
        through_index: u64,
    },
    /// The WAL does not continue where the snapshot ends.
    #[error(
        "WAL starts at index {wal_first_index} but the snapshot ends at {snapshot_index}: entries are missing"
    )]
    LogGap {
        /// The loaded snapshot's index (0 if none).
        snapshot_index: u64,
        /// The first entry index in the WAL.
        wal_first_index: u64,
    },
}

/// Everything the node needs after startup.
#[derive(Debug)]
pub struct Boot {
    /// The open WAL, ready for appends.
    pub wal: Wal,
    /// The snapshot directory.
    pub snapshots: SnapshotStore,
    /// The state machine with committed entries applied.
    pub state_machine: StateMachine,
    /// The loaded snapshot's meta (default if none).
    pub snapshot_meta: SnapshotMeta,
    /// The recovered hard state; `commit` is raised to the snapshot index
    /// if it was lower (snapshots only ever cover committed entries).
    pub hard_state: HardState,
    /// Every log entry after the snapshot index, for Raft's log.
    pub entries: Vec<Entry>,
    /// Index of the last entry applied to `state_machine`.
    pub applied_index: u64,
    /// Bytes cut from a torn WAL tail.
    pub dropped_tail_bytes: u64,
    /// Corrupt newer snapshots that were skipped (newest first).
    pub skipped_snapshots: Vec<SkippedSnapshot>,
}

/// Starts the storage layer from `data_dir`.
pub fn boot(data_dir: &Path, opts: BootOptions) -> Result<Boot, BootError> {
    let values = opts.snapshot.values.clone();
    let snapshots = SnapshotStore::open(&data_dir.join(SNAP_DIR), opts.snapshot)?;
    let (wal, recovery) = Wal::open(&data_dir.join(WAL_DIR), opts.wal)?;
    // A received snapshot becomes loadable only if the WAL accepted it.
    snapshots.settle_staged(recovery.snapshot)?;
    let NewestSnapshot { loaded, skipped } = snapshots.load_newest()?;
    let (mut sm, meta) = match loaded {
        Some(l) => (l.state_machine, l.header.meta),
        None => (StateMachine::with_values(values), SnapshotMeta::default()),
    };
    let entries = entries_after(&skipped, meta.index, recovery.entries)?;
    let mut hard_state = recovery.hard_state;
    hard_state.commit = hard_state.commit.max(meta.index);
    for e in entries.iter().take_while(|e| e.index <= hard_state.commit) {
        sm.apply(e);
    }
    let applied_index = sm.applied_index().max(meta.index);
    Ok(Boot {
        wal,
        snapshots,
        state_machine: sm,
        snapshot_meta: meta,
        hard_state,
        entries,
        applied_index,
        dropped_tail_bytes: recovery.dropped_tail_bytes,
        skipped_snapshots: skipped,
    })
}

/// When newer snapshots were corrupt, the WAL must hold every entry from
/// the fallback's index + 1 through the newest corrupt snapshot's index.
/// The log entries after the snapshot at `base_index`, checked the way a
/// start needs them: a corrupt newer snapshot must be covered by the WAL,
/// and the entries must continue right after the snapshot.
pub(crate) fn entries_after(
    skipped: &[SkippedSnapshot],
    base_index: u64,
    mut entries: Vec<Entry>,
) -> Result<Vec<Entry>, BootError> {
    check_fallback(skipped, base_index, &entries)?;
    entries.retain(|e| e.index > base_index);
    if let Some(first) = entries.first()
        && first.index != base_index + 1
    {
        return Err(BootError::LogGap {
            snapshot_index: base_index,
            wal_first_index: first.index,
        });
    }
    Ok(entries)
}

fn check_fallback(
    skipped: &[SkippedSnapshot],
    base_index: u64,
    entries: &[Entry],
) -> Result<(), BootError> {
    let Some(newest) = skipped.first() else {
        return Ok(());
    };
    let from_index = base_index + 1;
    let through_index = newest.file.index;
    let first = entries.first().map_or(u64::MAX, |e| e.index);
    let last = entries.last().map_or(0, |e| e.index);
    if first <= from_index && last >= through_index {
        tracing::warn!(
            corrupt = %newest.file.path.display(),
            fallback_index = base_index,
            "newest snapshot is corrupt; falling back to an older one and replaying the WAL"
        );
        return Ok(());
    }
    Err(BootError::CorruptSnapshotNotCovered {
        corrupt: newest.file.path.clone(),
        reason: newest.reason.clone(),
        from_index,
        through_index,
    })
}
