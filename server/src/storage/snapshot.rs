//! The snapshot directory: atomic writes, keeping the newest two, loading
//! the newest valid one, and staging a snapshot received from a leader.
//!
//! Files are named `snap-{index:020}-{term:020}.snap`, so name order is
//! log order. A write goes to a `.tmp` file that is fsynced, renamed into
//! place, and then the directory is fsynced: a crash at any point leaves the
//! previous snapshots intact (leftover `.tmp` files are deleted on open).
//!
//! A received snapshot is never loadable on arrival:
//! it is validated and fsynced as `staged-{index:020}-{term:020}.{unique}.staged`,
//! which boot neither loads, prunes with nor streams. The node publishes it
//! as `snap-*.snap` only after the Raft core accepted it and the WAL's
//! snapshot marker is durable; boot promotes a staged file whose index and
//! term equal the WAL's newest marker (a crash between marker and rename)
//! and deletes every other staged file.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use super::fsutil::sync_dir;
use super::snapshot_codec::{
    SnapshotDecodeError, SnapshotHeader, SnapshotLimits, decode_header, decode_snapshot_into,
    encode_snapshot, verify_snapshot,
};
use super::state_machine::StateMachine;
use super::value::ValueStore;
use crate::raft::SnapshotMeta;

const SNAP_PREFIX: &str = "snap-";
const SNAP_EXT: &str = ".snap";
const TMP_EXT: &str = ".tmp";
const STAGED_PREFIX: &str = "staged-";
const STAGED_EXT: &str = ".staged";

/// Default bound on one received snapshot (`--max-snapshot-bytes`).
pub const DEFAULT_MAX_INSTALL_BYTES: u64 = 8 << 30;

/// Snapshot store tunables.
#[derive(Debug, Clone)]
pub struct SnapshotOptions {
    /// Decoding limits for untrusted snapshot bytes.
    pub limits: SnapshotLimits,
    /// How many snapshot files to keep (newest first); at least 1.
    pub keep_count: usize,
    /// Largest snapshot accepted from a leader.
    pub max_install_bytes: u64,
    /// Where a loaded snapshot's values go (memory, or the value log).
    pub values: ValueStore,
}

impl Default for SnapshotOptions {
    fn default() -> Self {
        Self {
            limits: SnapshotLimits::default(),
            keep_count: 2,
            max_install_bytes: DEFAULT_MAX_INSTALL_BYTES,
            values: ValueStore::in_memory(),
        }
    }
}

/// Snapshot store failures.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// An operating-system error on a named path.
    #[error("snapshot I/O error on {path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// A snapshot file failed validation.
    #[error("snapshot {path} is corrupt: {source}")]
    Corrupt {
        /// The damaged file.
        path: PathBuf,
        /// What is wrong.
        source: SnapshotDecodeError,
    },
    /// A received snapshot exceeded `max_install_bytes`.
    #[error("received snapshot exceeds max_install_bytes {max_install_bytes}")]
    InstallTooLarge {
        /// The configured limit.
        max_install_bytes: u64,
    },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> SnapshotError + '_ {
    move |source| SnapshotError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// A snapshot file on disk, as named.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotFile {
    /// Full path.
    pub path: PathBuf,
    /// Index from the file name.
    pub index: u64,
    /// Term from the file name.
    pub term: u64,
}

/// A snapshot that failed to load and was skipped.
#[derive(Debug, Clone)]
pub struct SkippedSnapshot {
    /// The file.
    pub file: SnapshotFile,
    /// Why it was rejected.
    pub reason: String,
}

/// A snapshot that loaded and validated.
#[derive(Debug)]
pub struct LoadedSnapshot {
    /// The file it came from.
    pub file: SnapshotFile,
    /// Its header (meta and member directory).
    pub header: SnapshotHeader,
    /// The state machine at `header.meta.index`.
    pub state_machine: StateMachine,
}

/// The result of looking for the newest valid snapshot.
#[derive(Debug, Default)]
pub struct NewestSnapshot {
    /// The newest snapshot that validated, if any.
    pub loaded: Option<LoadedSnapshot>,
    /// Newer snapshots that were corrupt, newest first. If non-empty, the
    /// caller must check that the WAL covers the gap before using `loaded`.
    pub skipped: Vec<SkippedSnapshot>,
}

/// The snapshot directory.
#[derive(Debug, Clone)]
pub struct SnapshotStore {
    dir: PathBuf,
    opts: SnapshotOptions,
}

static TMP_COUNTER: AtomicU64 = AtomicU64::new(0);

fn parse_name(name: &str) -> Option<(u64, u64)> {
    parse_index_term(name.strip_prefix(SNAP_PREFIX)?.strip_suffix(SNAP_EXT)?)
}

fn parse_staged_name(name: &str) -> Option<(u64, u64)> {
    let body = name.strip_prefix(STAGED_PREFIX)?.strip_suffix(STAGED_EXT)?;
    let (stem, _unique) = body.split_once('.')?;
    parse_index_term(stem)
}

fn parse_index_term(stem: &str) -> Option<(u64, u64)> {
    let (index, term) = stem.split_once('-')?;
    if index.len() != 20 || term.len() != 20 {
        return None;
    }
    Some((index.parse().ok()?, term.parse().ok()?))
}

impl SnapshotStore {
    /// Opens (creating if needed) the directory and deletes leftover temp files.
    pub fn open(dir: &Path, opts: SnapshotOptions) -> Result<Self, SnapshotError> {
        fs::create_dir_all(dir).map_err(io_err(dir))?;
        for entry in fs::read_dir(dir).map_err(io_err(dir))? {
            let path = entry.map_err(io_err(dir))?.path();
            if path.extension().is_some_and(|e| e == &TMP_EXT[1..]) {
                fs::remove_file(&path).map_err(io_err(&path))?;
            }
        }
        Ok(Self {
            dir: dir.to_path_buf(),
            opts,
        })
    }

    /// A store over `dir` for reading only: nothing is created or deleted
    /// (see `storage::check`).
    pub fn read_only(dir: &Path, opts: SnapshotOptions) -> Self {
        Self {
            dir: dir.to_path_buf(),
            opts,
        }
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Snapshot files, newest first.
    pub fn list(&self) -> Result<Vec<SnapshotFile>, SnapshotError> {
        self.list_by(parse_name)
    }

    /// Staged (received, not yet accepted) snapshot files, newest first.
    pub fn list_staged(&self) -> Result<Vec<SnapshotFile>, SnapshotError> {
        self.list_by(parse_staged_name)
    }

    fn list_by(
        &self,
        parse: fn(&str) -> Option<(u64, u64)>,
    ) -> Result<Vec<SnapshotFile>, SnapshotError> {
        let mut files = Vec::new();
        for entry in fs::read_dir(&self.dir).map_err(io_err(&self.dir))? {
            let path = entry.map_err(io_err(&self.dir))?.path();
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
            if let Some((index, term)) = parse(name) {
                files.push(SnapshotFile { path, index, term });
            }
        }
        files.sort_by_key(|f| std::cmp::Reverse((f.index, f.term)));
        Ok(files)
    }

    /// Boot: publishes the staged snapshot whose `(index, term)` equals the
    /// WAL's newest snapshot marker when no published snapshot reaches it
    /// (the node crashed after the marker became durable, before the
    /// rename), and deletes every other staged file. Returns the promoted
    /// file, if any.
    pub fn settle_staged(
        &self,
        wal_marker: Option<(u64, u64)>,
    ) -> Result<Option<SnapshotFile>, SnapshotError> {
        let newest_published = self.list()?.first().map_or(0, |f| f.index);
        let mut promoted = None;
        for staged in self.list_staged()? {
            let accepted = wal_marker == Some((staged.index, staged.term));
            if accepted && promoted.is_none() && staged.index > newest_published {
                tracing::warn!(file = %staged.path.display(), "publishing a received snapshot the WAL had already accepted");
                promoted = Some(self.publish(&staged.path, staged.index, staged.term)?);
            } else {
                fs::remove_file(&staged.path).map_err(io_err(&staged.path))?;
            }
        }
        sync_dir(&self.dir).map_err(io_err(&self.dir))?;
        Ok(promoted)
    }

    fn final_path(&self, index: u64, term: u64) -> PathBuf {
        self.dir
            .join(format!("{SNAP_PREFIX}{index:020}-{term:020}{SNAP_EXT}"))
    }

    /// Unique per receive, so two transfers of one snapshot never share a file.
    fn staged_path(&self, index: u64, term: u64) -> PathBuf {
        let n = TMP_COUNTER.fetch_add(1, Ordering::Relaxed);
        let pid = std::process::id();
        self.dir.join(format!(
            "{STAGED_PREFIX}{index:020}-{term:020}.{pid}-{n}{STAGED_EXT}"
        ))
    }

    fn temp_path(&self) -> PathBuf {
        let n = TMP_COUNTER.fetch_add(1, Ordering::Relaxed);
        self.dir
            .join(format!("incoming-{}-{n}{TMP_EXT}", std::process::id()))
    }

    /// Writes a snapshot of `sm` (usually a [`StateMachine::snapshot_view`])
    /// atomically, then deletes all but the newest `keep_count` files.
    pub fn write(
        &self,
        meta: &SnapshotMeta,
        sm: &StateMachine,
    ) -> Result<SnapshotFile, SnapshotError> {
        let tmp = self.temp_path();
        let result = self.write_temp(&tmp, meta, sm);
        if result.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        result?;
        self.publish(&tmp, meta.index, meta.term)
    }

    fn write_temp(
        &self,
        tmp: &Path,
        meta: &SnapshotMeta,
        sm: &StateMachine,
    ) -> Result<(), SnapshotError> {
        let file = File::create(tmp).map_err(io_err(tmp))?;
        let mut w = BufWriter::with_capacity(1 << 20, file);
        encode_snapshot(&mut w, meta, sm).map_err(io_err(tmp))?;
        let file = w.into_inner().map_err(|e| io_err(tmp)(e.into_error()))?;
        file.sync_all().map_err(io_err(tmp))
    }

    /// Renames a complete, fsynced temp file into place, fsyncs the
    /// directory and prunes old snapshots.
    fn publish(&self, tmp: &Path, index: u64, term: u64) -> Result<SnapshotFile, SnapshotError> {
        let path = self.final_path(index, term);
        fs::rename(tmp, &path).map_err(io_err(&path))?;
        sync_dir(&self.dir).map_err(io_err(&self.dir))?;
        self.prune()?;
        Ok(SnapshotFile { path, index, term })
    }

    /// Deletes all but the newest `keep_count` snapshot files.
    pub fn prune(&self) -> Result<(), SnapshotError> {
        let files = self.list()?;
        let keep = self.opts.keep_count.max(1);
        if files.len() <= keep {
            return Ok(());
        }
        for f in &files[keep..] {
            fs::remove_file(&f.path).map_err(io_err(&f.path))?;
        }
        sync_dir(&self.dir).map_err(io_err(&self.dir))
    }

    /// Loads and fully validates one snapshot file.
    pub fn load(&self, path: &Path) -> Result<(SnapshotHeader, StateMachine), SnapshotError> {
        let file = File::open(path).map_err(io_err(path))?;
        let mut r = BufReader::with_capacity(1 << 20, file);
        let values = self.opts.values.clone();
        decode_snapshot_into(&mut r, &self.opts.limits, values).map_err(|source| {
            SnapshotError::Corrupt {
                path: path.to_path_buf(),
                source,
            }
        })
    }

    /// Reads and validates only the header of a snapshot file.
    pub fn read_header(&self, path: &Path) -> Result<SnapshotHeader, SnapshotError> {
        let file = File::open(path).map_err(io_err(path))?;
        let mut r = BufReader::new(file);
        decode_header(&mut r, &self.opts.limits).map_err(|source| SnapshotError::Corrupt {
            path: path.to_path_buf(),
            source,
        })
    }

    /// Loads the newest snapshot that validates, reporting (with a warning)
    /// every newer one that did not.
    pub fn load_newest(&self) -> Result<NewestSnapshot, SnapshotError> {
        let mut skipped = Vec::new();
        for file in self.list()? {
            match self.load(&file.path) {
                Ok((header, state_machine)) => {
                    let loaded = LoadedSnapshot {
                        file,
                        header,
                        state_machine,
                    };
                    return Ok(NewestSnapshot {
                        loaded: Some(loaded),
                        skipped,
                    });
                }
                Err(e @ SnapshotError::Corrupt { .. }) => {
                    tracing::warn!(file = %file.path.display(), error = %e, "snapshot failed validation");
                    let reason = e.to_string();
                    skipped.push(SkippedSnapshot { file, reason });
                }
                Err(e) => return Err(e),
            }
        }
        Ok(NewestSnapshot {
            loaded: None,
            skipped,
        })
    }

    /// The newest snapshot file and its header, for streaming to a follower.
    pub fn newest(&self) -> Result<Option<(SnapshotFile, SnapshotHeader)>, SnapshotError> {
        let Some(file) = self.list()?.into_iter().next() else {
            return Ok(None);
        };
        let header = self.read_header(&file.path)?;
        Ok(Some((file, header)))
    }

    /// The largest snapshot [`SnapshotStore::begin_install`] accepts.
    pub fn max_install_bytes(&self) -> u64 {
        self.opts.max_install_bytes
    }

    /// Starts receiving a snapshot from a leader, chunk by chunk.
    pub fn begin_install(&self) -> Result<SnapshotInstaller, SnapshotError> {
        let tmp = self.temp_path();
        let file = OpenOptions::new()
            .create_new(true)
            .write(true)
            .open(&tmp)
            .map_err(io_err(&tmp))?;
        Ok(SnapshotInstaller {
            store: self.clone(),
            writer: Some(BufWriter::with_capacity(1 << 20, file)),
            tmp,
            written_bytes: 0,
        })
    }
}

/// A snapshot being received. Chunks go to a temp file; [`finish`] fsyncs
/// it, validates it completely and stages it (not loadable yet).
/// Dropping an unfinished installer deletes the temp file.
///
/// [`finish`]: SnapshotInstaller::finish
#[derive(Debug)]
pub struct SnapshotInstaller {
    store: SnapshotStore,
    writer: Option<BufWriter<File>>,
    tmp: PathBuf,
    written_bytes: u64,
}

impl SnapshotInstaller {
    /// Appends the next chunk.
    pub fn write_chunk(&mut self, chunk: &[u8]) -> Result<(), SnapshotError> {
        let max = self.store.opts.max_install_bytes;
        if self.written_bytes + chunk.len() as u64 > max {
            return Err(SnapshotError::InstallTooLarge {
                max_install_bytes: max,
            });
        }
        let w = self.writer.as_mut().ok_or_else(|| SnapshotError::Io {
            path: self.tmp.clone(),
            source: io::Error::other("installer already finished"),
        })?;
        w.write_all(chunk).map_err(io_err(&self.tmp))?;
        self.written_bytes += chunk.len() as u64;
        Ok(())
    }

    /// Fsyncs and validates the received snapshot and stages it durably
    /// under a name boot never loads; see [`StagedSnapshot`].
    pub fn finish(mut self) -> Result<StagedSnapshot, SnapshotError> {
        let w = self.writer.take().ok_or_else(|| SnapshotError::Io {
            path: self.tmp.clone(),
            source: io::Error::other("installer already finished"),
        })?;
        let file = w
            .into_inner()
            .map_err(|e| io_err(&self.tmp)(e.into_error()))?;
        file.sync_all().map_err(io_err(&self.tmp))?;
        drop(file);
        let reader = File::open(&self.tmp).map_err(io_err(&self.tmp))?;
        let mut reader = BufReader::with_capacity(1 << 20, reader);
        let header = verify_snapshot(&mut reader, &self.store.opts.limits).map_err(|source| {
            SnapshotError::Corrupt {
                path: self.tmp.clone(),
                source,
            }
        })?;
        let (index, term) = (header.meta.index, header.meta.term);
        let path = self.store.staged_path(index, term);
        fs::rename(&self.tmp, &path).map_err(io_err(&path))?;
        self.tmp = PathBuf::new();
        let file = SnapshotFile { path, index, term };
        let staged = StagedSnapshot {
            store: self.store.clone(),
            file: Some(file),
            header,
        };
        sync_dir(&self.store.dir).map_err(io_err(&self.store.dir))?;
        Ok(staged)
    }
}

/// A received, validated, fsynced snapshot that is not loadable yet.
/// [`publish`] it once the Raft core accepted it and the WAL's snapshot
/// marker is durable; dropping it unpublished deletes the file.
///
/// [`publish`]: StagedSnapshot::publish
#[derive(Debug)]
pub struct StagedSnapshot {
    store: SnapshotStore,
    /// `None` once published.
    file: Option<SnapshotFile>,
    header: SnapshotHeader,
}

impl StagedSnapshot {
    /// The validated header (meta and member directory).
    pub fn header(&self) -> &SnapshotHeader {
        &self.header
    }

    /// Loads and validates the staged state.
    pub fn load(&self) -> Result<StateMachine, SnapshotError> {
        let file = self.staged_file()?;
        self.store.load(&file.path).map(|(_, sm)| sm)
    }

    /// Renames the file to its loadable `snap-*.snap` name, fsyncs the
    /// directory and prunes older snapshots.
    pub fn publish(mut self) -> Result<SnapshotFile, SnapshotError> {
        let file = self.staged_file()?.clone();
        let published = self.store.publish(&file.path, file.index, file.term)?;
        self.file = None;
        Ok(published)
    }

    fn staged_file(&self) -> Result<&SnapshotFile, SnapshotError> {
        self.file.as_ref().ok_or_else(|| SnapshotError::Io {
            path: self.store.dir.clone(),
            source: io::Error::other("staged snapshot already published"),
        })
    }
}

impl Drop for StagedSnapshot {
    fn drop(&mut self) {
        if let Some(f) = self.file.take() {
            let _ = fs::remove_file(&f.path);
        }
    }
}

impl Drop for SnapshotInstaller {
    fn drop(&mut self) {
        if !self.tmp.as_os_str().is_empty() {
            let _ = fs::remove_file(&self.tmp);
        }
    }
}
