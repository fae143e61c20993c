//! The offline check of a member's data dir (`titan-server
//! --check-data-dir`). It reads what a start reads, in the same order and
//! with the same decoders (WAL recovery, staged-snapshot settling, the
//! newest valid snapshot with the corrupt-newer fallback, the log after it,
//! the replay of committed entries), and writes nothing: no directory is
//! created, no torn tail cut, no staged snapshot published or deleted. Its
//! verdict is the start's: a dir it passes boots, and one it refuses stops
//! boot with the same error.
//!
//! Memory: what a start needs (the state machine is rebuilt).

use std::path::Path;

use super::boot::{BootError, BootOptions, SNAP_DIR, WAL_DIR, entries_after};
use super::snapshot::{SkippedSnapshot, SnapshotError, SnapshotFile, SnapshotStore};
use super::state_machine::StateMachine;
use super::wal::Wal;

/// What a start from the dir would begin with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StartPoint {
    /// Index of the snapshot it would load (0: none).
    pub snapshot_index: u64,
    /// Log entries after the snapshot handed to Raft.
    pub entries: usize,
    /// Index of the last committed entry replayed.
    pub applied_index: u64,
    /// Store revision after the replay.
    pub revision: i64,
    /// Keys in the MVCC index after the replay (live, or deleted with
    /// history not yet compacted).
    pub keys: usize,
}

/// The report: one line per finding, then the verdict.
#[derive(Debug)]
pub struct CheckReport {
    /// Findings, in the order a start meets them.
    pub lines: Vec<String>,
    /// Where a start would begin, or why it would refuse.
    pub verdict: Result<StartPoint, BootError>,
}

/// Checks `data_dir` (see the module docs).
pub fn check_data_dir(data_dir: &Path, opts: &BootOptions) -> CheckReport {
    let mut lines = Vec::new();
    let verdict = check(data_dir, opts, &mut lines);
    CheckReport { lines, verdict }
}

fn check(
    data_dir: &Path,
    opts: &BootOptions,
    lines: &mut Vec<String>,
) -> Result<StartPoint, BootError> {
    let (recovery, segments) = Wal::inspect(&data_dir.join(WAL_DIR), &opts.wal)?;
    let (first, last) = (
        recovery.entries.first().map_or(0, |e| e.index),
        recovery.entries.last().map_or(0, |e| e.index),
    );
    let hs = recovery.hard_state;
    lines.push(format!(
        "wal: {segments} segments, entries {first}..={last}, term {} commit {}, snapshot marker {:?}",
        hs.term, hs.commit, recovery.snapshot
    ));
    if recovery.dropped_tail_bytes > 0 {
        lines.push(format!(
            "wal: a torn tail of {} bytes at the end of the last segment (cut at the next start)",
            recovery.dropped_tail_bytes
        ));
    }
    let store = SnapshotStore::read_only(&data_dir.join(SNAP_DIR), opts.snapshot.clone());
    let candidates = candidates(&store, recovery.snapshot, lines)?;
    let mut skipped = Vec::new();
    let mut loaded = None;
    for file in candidates {
        match store.load(&file.path) {
            Ok((header, sm)) => {
                lines.push(format!(
                    "snapshot {}: valid, index {} term {}, {} keys, format {}",
                    file.path.display(),
                    header.meta.index,
                    header.meta.term,
                    header.key_count,
                    header.version
                ));
                loaded = Some((header.meta.index, sm));
                break;
            }
            Err(e @ SnapshotError::Corrupt { .. }) => {
                lines.push(format!("snapshot {}: {e}", file.path.display()));
                let reason = e.to_string();
                skipped.push(SkippedSnapshot { file, reason });
            }
            Err(e) => return Err(e.into()),
        }
    }
    let (base, mut sm) =
        loaded.unwrap_or_else(|| (0, StateMachine::with_values(opts.snapshot.values.clone())));
    let entries = entries_after(&skipped, base, recovery.entries)?;
    let commit = hs.commit.max(base);
    for e in entries.iter().take_while(|e| e.index <= commit) {
        sm.apply(e);
    }
    Ok(StartPoint {
        snapshot_index: base,
        entries: entries.len(),
        applied_index: sm.applied_index().max(base),
        revision: sm.kv().revision(),
        keys: sm.len(),
    })
}

/// The snapshot files a start would try, newest first: the published ones,
/// plus the staged one the WAL's marker names when it is newer than all of
/// them (a start publishes it; every other staged file is deleted).
fn candidates(
    store: &SnapshotStore,
    marker: Option<(u64, u64)>,
    lines: &mut Vec<String>,
) -> Result<Vec<SnapshotFile>, BootError> {
    if !store.dir().exists() {
        return Ok(Vec::new());
    }
    let mut files = store.list()?;
    let newest = files.first().map_or(0, |f| f.index);
    let mut promoted = false;
    for staged in store.list_staged()? {
        let accepted = marker == Some((staged.index, staged.term));
        if accepted && !promoted && staged.index > newest {
            lines.push(format!(
                "snapshot {}: received and accepted by the WAL (published at the next start)",
                staged.path.display()
            ));
            files.insert(0, staged);
            promoted = true;
        } else {
            lines.push(format!(
                "snapshot {}: received, not accepted (deleted at the next start)",
                staged.path.display()
            ));
        }
    }
    Ok(files)
}
