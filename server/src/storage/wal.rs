//! The write-ahead log: segmented, CRC-framed, group-committed.
//!
//! Writers encode their batch and `write(2)` it under a short lock, then wait
//! for durability. One waiter at a time becomes the syncer: it notes the
//! newest written batch, fsyncs without holding the write lock, and wakes
//! everyone that batch covers. N writers arriving during one fsync are made
//! durable by the next, so they share about one fsync between them.
//!
//! Every segment starts with a header and a *preamble* (the current hard
//! state and snapshot marker), so deleting older segments never loses the
//! newest hard state. See [`super::wal_record`] for the byte layout.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::wal_fs::{StdFs, WalFile, WalFs};
use super::wal_record::{
    HARD_STATE_FRAME_BYTES, SEGMENT_HEADER_BYTES, SegmentHeader, TRUNCATE_FRAME_BYTES, WalRecord,
};
use super::wal_recovery::{Recovered, recover_dir, segment_name};
use crate::raft::{Entry, HardState};

/// Largest encode buffer kept between appends (a bigger one is freed).
const MAX_RETAINED_BUF_BYTES: usize = 4 << 20;

/// Default (and the node's) largest record frame: every client write must fit
/// one entry record this size, so the edge derives its key/value limits from it.
pub const DEFAULT_MAX_RECORD_BYTES: u32 = 16 << 20;
/// Default (and the node's) largest append batch.
pub const DEFAULT_MAX_BATCH_BYTES: u64 = 64 << 20;
/// Bytes one batch can carry besides its entry records: a Truncate record
/// (when the batch replaces a suffix) and a HardState record.
pub const BATCH_NON_ENTRY_BYTES: usize = TRUNCATE_FRAME_BYTES + HARD_STATE_FRAME_BYTES;

/// A callback that observes every fsync's latency (for a metrics histogram).
pub type FsyncObserver = Arc<dyn Fn(Duration) + Send + Sync>;

/// WAL tunables.
#[derive(Clone)]
pub struct WalOptions {
    /// A segment is rotated once appending would take it past this size.
    pub segment_bytes: u64,
    /// Largest accepted record frame body; bounds every read during recovery.
    pub max_record_bytes: u32,
    /// Largest accepted append batch in bytes (bounds one write and one torn tail).
    pub max_batch_bytes: u64,
    /// Entries kept behind a snapshot when compacting, for slow followers.
    pub compact_margin_entries: u64,
    /// Largest tail scanned (held in memory) to tell a torn tail from corruption.
    pub max_tail_scan_bytes: u64,
    /// The file layer (real files by default; a simulator in tests).
    pub fs: Arc<dyn WalFs>,
    /// Called with the duration of every fsync.
    pub fsync_observer: Option<FsyncObserver>,
}

impl Default for WalOptions {
    fn default() -> Self {
        Self {
            segment_bytes: 64 << 20,
            max_record_bytes: DEFAULT_MAX_RECORD_BYTES,
            max_batch_bytes: DEFAULT_MAX_BATCH_BYTES,
            compact_margin_entries: 10_000,
            max_tail_scan_bytes: 64 << 20,
            fs: Arc::new(StdFs),
            fsync_observer: None,
        }
    }
}

impl WalOptions {
    /// Largest entry data (a Raft entry payload) one record can hold.
    pub fn max_entry_data_bytes(&self) -> usize {
        (self.max_record_bytes as usize).saturating_sub(crate::raft::ENTRY_RECORD_OVERHEAD_BYTES)
    }

    /// Most entry-record bytes ([`Entry::size_bytes`]) one batch can hold
    /// whatever else it carries: the node gives this to the Raft core as
    /// `max_ready_entry_bytes`, so a `Ready` always fits one batch.
    pub fn max_entry_bytes_per_batch(&self) -> usize {
        usize::try_from(self.max_batch_bytes)
            .unwrap_or(usize::MAX)
            .saturating_sub(BATCH_NON_ENTRY_BYTES)
    }
}

impl fmt::Debug for WalOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WalOptions")
            .field("segment_bytes", &self.segment_bytes)
            .field("max_record_bytes", &self.max_record_bytes)
            .field("max_batch_bytes", &self.max_batch_bytes)
            .field("compact_margin_entries", &self.compact_margin_entries)
            .field("max_tail_scan_bytes", &self.max_tail_scan_bytes)
            .finish_non_exhaustive()
    }
}

/// WAL failures. Callers branch on `Corrupt` (stop the node) versus the
/// programming errors (`Gap`, `NotConsecutive`, `TruncateCompacted`).
#[derive(Debug, thiserror::Error)]
pub enum WalError {
    /// An operating-system error on a named file.
    #[error("WAL I/O error on {path}: {source}")]
    Io {
        /// The file or directory involved.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// Damaged data that is not a torn tail. The node must stop.
    #[error("WAL corrupt: {path} at byte offset {offset}: {reason}")]
    Corrupt {
        /// The damaged segment.
        path: PathBuf,
        /// Byte offset of the bad record or header.
        offset: u64,
        /// What is wrong.
        reason: String,
    },
    /// Segment numbers are not consecutive: a middle segment is missing.
    #[error("WAL segment {seq} is missing from {dir}")]
    MissingSegment {
        /// The WAL directory.
        dir: PathBuf,
        /// The missing sequence number.
        seq: u64,
    },
    /// The batch's first index is past `last + 1`.
    #[error("append at index {first} leaves a gap after last index {last}")]
    Gap {
        /// First index of the batch.
        first: u64,
        /// Last index in the log.
        last: u64,
    },
    /// Entries in one batch must have consecutive indexes.
    #[error("batch entries are not consecutive at index {index}")]
    NotConsecutive {
        /// The first out-of-place index.
        index: u64,
    },
    /// A suffix truncation would remove entries a snapshot already covers.
    #[error("cannot truncate from index {from_index}: a snapshot covers up to {snapshot_index}")]
    TruncateCompacted {
        /// Requested truncation point.
        from_index: u64,
        /// Index covered by the newest snapshot marker.
        snapshot_index: u64,
    },
    /// The encoded batch or one record exceeds the configured limits.
    #[error(
        "batch too large: {bytes} bytes (max_batch_bytes {max_batch_bytes}, max_record_bytes {max_record_bytes})"
    )]
    TooLarge {
        /// Encoded size of the offending batch or record.
        bytes: u64,
        /// Configured batch limit.
        max_batch_bytes: u64,
        /// Configured record limit.
        max_record_bytes: u32,
    },
    /// An earlier write or fsync failed; durability of later data is unknown.
    #[error("WAL is unusable after an earlier write or fsync failure; restart the node")]
    Poisoned,
}

impl WalError {
    pub(crate) fn io(path: &Path, source: io::Error) -> Self {
        WalError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
    pub(crate) fn corrupt(path: &Path, offset: u64, reason: impl Into<String>) -> Self {
        WalError::Corrupt {
            path: path.to_path_buf(),
            offset,
            reason: reason.into(),
        }
    }
}

/// What [`Wal::open`] recovered.
#[derive(Debug, Clone, Default)]
pub struct WalRecovery {
    /// The newest durable hard state (default if none was ever written).
    pub hard_state: HardState,
    /// Live log entries, consecutive, after truncation records are applied.
    /// May start before the snapshot marker (the compaction margin).
    pub entries: Vec<Entry>,
    /// The newest snapshot marker `(index, term)` written by [`Wal::compact`].
    pub snapshot: Option<(u64, u64)>,
    /// Bytes cut from a torn tail of the last segment.
    pub dropped_tail_bytes: u64,
}

/// Counters for metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WalStats {
    /// Segment files currently on disk.
    pub segment_count: u64,
    /// Total bytes across segment files.
    pub total_bytes: u64,
    /// Fsyncs issued since open.
    pub fsync_count: u64,
    /// Sum of fsync durations in microseconds since open.
    pub fsync_total_micros: u64,
    /// Append batches made durable since open.
    pub batches: u64,
    /// Last index in the log.
    pub last_index: u64,
}

/// One segment on disk.
#[derive(Debug)]
struct Segment {
    seq: u64,
    path: PathBuf,
    bytes: u64,
    /// Highest entry index written (0 if none); decides compaction.
    max_entry_index: u64,
}

/// State guarded by the write lock.
struct Inner {
    /// Oldest first; the last one is the active segment.
    segments: Vec<Segment>,
    active: Arc<dyn WalFile>,
    /// Highest index covered: last live entry or the snapshot marker.
    last_index: u64,
    hard_state: HardState,
    snapshot: Option<(u64, u64)>,
    /// Sequence number of the newest batch written (not necessarily synced).
    written_seq: u64,
    /// The active segment's random nonce (stamped on its `Synced` records).
    nonce: u64,
    /// Bytes of the active segment known durable (never an overestimate).
    synced_bytes: u64,
    /// Reused encode buffer.
    buf: Vec<u8>,
    poisoned: bool,
}

/// Group-commit bookkeeping.
#[derive(Default)]
struct SyncState {
    synced_seq: u64,
    syncing: bool,
    poisoned: bool,
}

/// The write-ahead log. `Send + Sync`; share it behind an `Arc`.
pub struct Wal {
    dir: PathBuf,
    opts: WalOptions,
    inner: Mutex<Inner>,
    sync: Mutex<SyncState>,
    synced: Condvar,
    fsync_count: AtomicU64,
    fsync_total_micros: AtomicU64,
}

impl fmt::Debug for Wal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Wal")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Wal {
    /// Opens (or creates) the WAL in `dir`, recovering its contents. A torn
    /// tail of the last segment is cut off and logged; any other damage is
    /// a [`WalError::Corrupt`] naming the file and offset.
    pub fn open(dir: &Path, opts: WalOptions) -> Result<(Wal, WalRecovery), WalError> {
        let fs = opts.fs.clone();
        fs.create_dir_all(dir).map_err(|e| WalError::io(dir, e))?;
        let rec = recover_dir(fs.as_ref(), dir, &opts)?;
        let recovery = WalRecovery {
            hard_state: rec.state.hard_state,
            entries: Vec::new(),
            snapshot: rec.state.snapshot,
            dropped_tail_bytes: rec.dropped_tail_bytes,
        };
        let (inner, entries) = Self::resume(dir, &opts, rec)?;
        let wal = Wal {
            dir: dir.to_path_buf(),
            opts,
            inner: Mutex::new(inner),
            sync: Mutex::new(SyncState::default()),
            synced: Condvar::new(),
            fsync_count: AtomicU64::new(0),
            fsync_total_micros: AtomicU64::new(0),
        };
        Ok((
            wal,
            WalRecovery {
                entries,
                ..recovery
            },
        ))
    }

    /// Reads the WAL in `dir` as [`Wal::open`] would, changing nothing (no
    /// directory is created, no torn tail cut): the recovered log, and the
    /// number of segment files. A missing directory is an empty log.
    pub fn inspect(dir: &Path, opts: &WalOptions) -> Result<(WalRecovery, usize), WalError> {
        if !dir.exists() {
            return Ok((WalRecovery::default(), 0));
        }
        let rec = recover_dir(opts.fs.as_ref(), dir, opts)?;
        let recovery = WalRecovery {
            hard_state: rec.state.hard_state,
            entries: rec.state.entries,
            snapshot: rec.state.snapshot,
            dropped_tail_bytes: rec.dropped_tail_bytes,
        };
        Ok((recovery, rec.segments.len()))
    }

    /// Builds the writer state from what recovery found, cutting the torn
    /// tail and recreating a last segment whose header was torn.
    fn resume(
        dir: &Path,
        opts: &WalOptions,
        rec: Recovered,
    ) -> Result<(Inner, Vec<Entry>), WalError> {
        let fs = opts.fs.as_ref();
        let mut inner = Inner {
            segments: Vec::new(),
            active: Arc::new(NullFile),
            last_index: rec.state.last_index(),
            hard_state: rec.state.hard_state,
            snapshot: rec.state.snapshot,
            written_seq: 0,
            nonce: 0,
            synced_bytes: 0,
            buf: Vec::new(),
            poisoned: false,
        };
        let mut torn_seq = None;
        let mut last_nonce = None;
        for seg in rec.segments {
            if seg.scan.header_torn {
                torn_seq = Some(seg.seq);
                break;
            }
            last_nonce = seg.scan.nonce;
            inner.segments.push(Segment {
                seq: seg.seq,
                path: seg.path,
                bytes: seg.scan.valid_bytes,
                max_entry_index: seg.scan.max_entry_index,
            });
        }
        match (torn_seq, inner.segments.last()) {
            (None, Some(last)) => {
                let (path, bytes, seq) = (last.path.clone(), last.bytes, last.seq);
                let file = fs
                    .open_append_at(&path, bytes)
                    .map_err(|e| WalError::io(&path, e))?;
                // What recovery kept is made durable before any batch claims it.
                file.sync_data().map_err(|e| WalError::io(&path, e))?;
                inner.active = file;
                inner.synced_bytes = bytes;
                match last_nonce {
                    Some(nonce) => inner.nonce = nonce,
                    // A version 1 segment: continue in a version 2 one.
                    None => inner.create_segment(dir, fs, seq + 1)?,
                }
            }
            (Some(seq), _) => inner.create_segment(dir, fs, seq)?,
            (None, None) => inner.create_segment(dir, fs, 1)?,
        }
        Ok((inner, rec.state.entries))
    }

    /// Appends `entries` (and the hard state, if given) as one batch and
    /// returns once it is durable. If `entries[0].index <= last_index`, the
    /// conflicting suffix is truncated first, in the same durable batch.
    pub fn append(&self, entries: &[Entry], hard_state: Option<HardState>) -> Result<(), WalError> {
        if entries.is_empty() && hard_state.is_none() {
            return Ok(());
        }
        let seq = self.write_batch(entries, hard_state)?;
        self.wait_durable(seq)
    }

    /// Writes a hard state that only moved the commit index, without an
    /// fsync. Raft does not need the commit index durable (the core's
    /// `Ready::must_sync` is false for such a Ready): the record becomes
    /// durable with the next synced batch or rotation, and a power loss that
    /// drops it only makes boot replay fewer committed entries, which the
    /// leader then commits again. Taking it off the fsync path removes one
    /// fsync per write from the leader's commit-to-apply step and halves a
    /// follower's fsyncs.
    pub fn record_commit_unsynced(&self, hard_state: HardState) -> Result<(), WalError> {
        self.write_batch(&[], Some(hard_state)).map(|_| ())
    }

    /// Like [`Wal::append`], but the batch is built under the write lock
    /// from the current last index, so concurrent callers can assign
    /// consecutive indexes without their own lock (and still share fsyncs).
    pub fn append_with<F>(&self, build: F) -> Result<(), WalError>
    where
        F: FnOnce(u64) -> (Vec<Entry>, Option<HardState>),
    {
        let seq = {
            let mut inner = lock(&self.inner);
            let (entries, hs) = build(inner.last_index);
            if entries.is_empty() && hs.is_none() {
                return Ok(());
            }
            self.write_locked(&mut inner, &entries, hs)?
        };
        self.wait_durable(seq)
    }

    /// Encodes and writes one batch; returns its sequence number.
    fn write_batch(&self, entries: &[Entry], hs: Option<HardState>) -> Result<u64, WalError> {
        let mut inner = lock(&self.inner);
        self.write_locked(&mut inner, entries, hs)
    }

    fn write_locked(
        &self,
        inner: &mut Inner,
        entries: &[Entry],
        hs: Option<HardState>,
    ) -> Result<u64, WalError> {
        check_consecutive(entries)?;
        if inner.poisoned {
            return Err(WalError::Poisoned);
        }
        let mut buf = std::mem::take(&mut inner.buf);
        buf.clear();
        let encoded = inner.encode_batch(entries, hs, &self.opts, &mut buf);
        let result = encoded.and_then(|()| self.write_encoded(inner, &buf, entries, hs));
        if buf.capacity() <= MAX_RETAINED_BUF_BYTES {
            inner.buf = buf;
        }
        result
    }

    fn write_encoded(
        &self,
        inner: &mut Inner,
        buf: &[u8],
        entries: &[Entry],
        hs: Option<HardState>,
    ) -> Result<u64, WalError> {
        let active_bytes = inner.segments.last().map_or(0, |s| s.bytes);
        if active_bytes + buf.len() as u64 > self.opts.segment_bytes
            && active_bytes > self.preamble_bytes(inner)
        {
            self.rotate(inner)?;
        }
        // The trailer tells recovery how much of the segment was durable
        // when this batch was written (see `wal_record`).
        let mut trailer = Vec::with_capacity(32);
        WalRecord::Synced {
            nonce: inner.nonce,
            synced_bytes: inner.synced_bytes,
        }
        .encode_into(&mut trailer);
        if let Err(e) = inner
            .active
            .append(buf)
            .and_then(|()| inner.active.append(&trailer))
        {
            return Err(self.poison(inner, e));
        }
        let seg = inner.segments.last_mut().ok_or(WalError::Poisoned)?;
        seg.bytes += (buf.len() + trailer.len()) as u64;
        if let Some(last) = entries.last() {
            seg.max_entry_index = seg.max_entry_index.max(last.index);
            inner.last_index = last.index;
        }
        if let Some(hs) = hs {
            inner.hard_state = hs;
        }
        inner.written_seq += 1;
        Ok(inner.written_seq)
    }

    fn preamble_bytes(&self, inner: &Inner) -> u64 {
        let mut buf = Vec::new();
        inner.encode_preamble(&mut buf);
        (SEGMENT_HEADER_BYTES + buf.len()) as u64
    }

    /// Marks the WAL unusable after a failed write or fsync.
    fn poison(&self, inner: &mut Inner, e: io::Error) -> WalError {
        inner.poisoned = true;
        lock(&self.sync).poisoned = true;
        self.synced.notify_all();
        let path = inner
            .segments
            .last()
            .map_or(self.dir.clone(), |s| s.path.clone());
        tracing::error!(file = %path.display(), error = %e, "WAL write failed; WAL poisoned");
        WalError::io(&path, e)
    }

    /// Fsyncs the active segment, starts a new one and fsyncs the directory.
    fn rotate(&self, inner: &mut Inner) -> Result<(), WalError> {
        let old = inner.active.clone();
        if let Err(e) = self.timed_sync(old.as_ref()) {
            return Err(self.poison(inner, e));
        }
        {
            let mut st = lock(&self.sync);
            st.synced_seq = st.synced_seq.max(inner.written_seq);
        }
        self.synced.notify_all();
        let next = inner.segments.last().map_or(1, |s| s.seq + 1);
        inner.create_segment(&self.dir, self.opts.fs.as_ref(), next)
    }

    fn timed_sync(&self, file: &dyn WalFile) -> io::Result<()> {
        let start = Instant::now();
        let result = file.sync_data();
        let elapsed = start.elapsed();
        self.fsync_count.fetch_add(1, Ordering::Relaxed);
        let micros = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
        self.fsync_total_micros.fetch_add(micros, Ordering::Relaxed);
        if let Some(observer) = &self.opts.fsync_observer {
            observer(elapsed);
        }
        result
    }

    /// After an fsync: `(segment seq, bytes)` of the active segment are durable.
    fn note_synced(&self, segment: Option<(u64, u64)>) {
        let Some((seq, bytes)) = segment else { return };
        let mut inner = lock(&self.inner);
        if inner.segments.last().map(|s| s.seq) == Some(seq) {
            inner.synced_bytes = inner.synced_bytes.max(bytes);
        }
    }

    /// Blocks until batch `seq` is durable, becoming the syncer if nobody is.
    fn wait_durable(&self, seq: u64) -> Result<(), WalError> {
        let mut st = lock(&self.sync);
        loop {
            if st.synced_seq >= seq {
                return Ok(());
            }
            if st.poisoned {
                return Err(WalError::Poisoned);
            }
            if st.syncing {
                st = self.synced.wait(st).unwrap_or_else(|e| e.into_inner());
                continue;
            }
            st.syncing = true;
            drop(st);
            let (file, target, segment) = {
                let inner = lock(&self.inner);
                let segment = inner.segments.last().map(|s| (s.seq, s.bytes));
                (inner.active.clone(), inner.written_seq, segment)
            };
            let result = self.timed_sync(file.as_ref());
            if result.is_ok() {
                self.note_synced(segment);
            }
            st = lock(&self.sync);
            st.syncing = false;
            match result {
                Ok(()) => st.synced_seq = st.synced_seq.max(target),
                Err(e) => {
                    st.poisoned = true;
                    drop(st);
                    let mut inner = lock(&self.inner);
                    inner.poisoned = true;
                    self.synced.notify_all();
                    tracing::error!(error = %e, "WAL fsync failed; WAL poisoned");
                    let path = inner
                        .segments
                        .last()
                        .map_or(self.dir.clone(), |s| s.path.clone());
                    return Err(WalError::io(&path, e));
                }
            }
            self.synced.notify_all();
        }
    }

    /// Records that a snapshot covers the log up to `snapshot_index`, then
    /// deletes the oldest segments whose entries all lie at or below
    /// `snapshot_index - compact_margin_entries`. The marker is durable
    /// before any file is removed, and files are removed oldest first, so a
    /// crash at any point leaves a consecutive, readable log.
    pub fn compact(&self, snapshot_index: u64, snapshot_term: u64) -> Result<(), WalError> {
        let record = WalRecord::Snapshot {
            index: snapshot_index,
            term: snapshot_term,
        };
        let mut buf = Vec::new();
        record.encode_into(&mut buf);
        let seq = {
            let mut inner = lock(&self.inner);
            if inner.poisoned {
                return Err(WalError::Poisoned);
            }
            let seq = self.write_encoded(&mut inner, &buf, &[], None)?;
            inner.snapshot = Some((snapshot_index, snapshot_term));
            inner.last_index = inner.last_index.max(snapshot_index);
            seq
        };
        self.wait_durable(seq)?;
        let keep_from = snapshot_index.saturating_sub(self.opts.compact_margin_entries);
        self.remove_covered_segments(keep_from)
    }

    fn remove_covered_segments(&self, keep_from: u64) -> Result<(), WalError> {
        let mut inner = lock(&self.inner);
        let fs = self.opts.fs.as_ref();
        let mut removed = 0;
        while inner.segments.len() > 1 && inner.segments[0].max_entry_index <= keep_from {
            let seg = inner.segments.remove(0);
            fs.remove(&seg.path)
                .map_err(|e| WalError::io(&seg.path, e))?;
            removed += 1;
        }
        if removed > 0 {
            fs.sync_dir(&self.dir)
                .map_err(|e| WalError::io(&self.dir, e))?;
        }
        Ok(())
    }

    /// Current counters.
    pub fn stats(&self) -> WalStats {
        let (segment_count, total_bytes, batches, last_index) = {
            let inner = lock(&self.inner);
            let bytes = inner.segments.iter().map(|s| s.bytes).sum();
            (
                inner.segments.len() as u64,
                bytes,
                inner.written_seq,
                inner.last_index,
            )
        };
        WalStats {
            segment_count,
            total_bytes,
            fsync_count: self.fsync_count.load(Ordering::Relaxed),
            fsync_total_micros: self.fsync_total_micros.load(Ordering::Relaxed),
            batches,
            last_index,
        }
    }

    /// Last index the log covers (last entry, or the snapshot marker).
    pub fn last_index(&self) -> u64 {
        lock(&self.inner).last_index
    }

    /// The WAL directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

/// A fresh random segment nonce (OS-seeded hasher, time and a counter).
fn random_nonce() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    h.write_u128(nanos);
    h.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    h.finish()
}

fn check_consecutive(entries: &[Entry]) -> Result<(), WalError> {
    for pair in entries.windows(2) {
        if pair[1].index != pair[0].index + 1 {
            return Err(WalError::NotConsecutive {
                index: pair[1].index,
            });
        }
    }
    Ok(())
}

impl Inner {
    /// Encodes a batch, prefixed by a truncation record when it overwrites
    /// a suffix. Validates continuity and size limits.
    fn encode_batch(
        &self,
        entries: &[Entry],
        hs: Option<HardState>,
        opts: &WalOptions,
        buf: &mut Vec<u8>,
    ) -> Result<(), WalError> {
        if let Some(first) = entries.first().map(|e| e.index) {
            let snapshot_index = self.snapshot.map_or(0, |s| s.0);
            if first > self.last_index + 1 {
                return Err(WalError::Gap {
                    first,
                    last: self.last_index,
                });
            }
            if first <= snapshot_index {
                return Err(WalError::TruncateCompacted {
                    from_index: first,
                    snapshot_index,
                });
            }
            if first <= self.last_index {
                WalRecord::Truncate { from_index: first }.encode_into(buf);
            }
        }
        let too_large = |bytes: u64| WalError::TooLarge {
            bytes,
            max_batch_bytes: opts.max_batch_bytes,
            max_record_bytes: opts.max_record_bytes,
        };
        for e in entries {
            let frame = WalRecord::entry_frame_bytes(e) as u64;
            if frame > u64::from(opts.max_record_bytes) {
                return Err(too_large(frame));
            }
            WalRecord::encode_entry_into(e, buf);
        }
        if let Some(hs) = hs {
            WalRecord::HardState(hs).encode_into(buf);
        }
        if buf.len() as u64 > opts.max_batch_bytes {
            return Err(too_large(buf.len() as u64));
        }
        Ok(())
    }

    /// The records every segment starts with: hard state, snapshot marker,
    /// and the `Synced` record that sets the segment's nonce (and ends the
    /// preamble as a batch).
    fn encode_preamble(&self, buf: &mut Vec<u8>) {
        WalRecord::HardState(self.hard_state).encode_into(buf);
        if let Some((index, term)) = self.snapshot {
            WalRecord::Snapshot { index, term }.encode_into(buf);
        }
        WalRecord::Synced {
            nonce: self.nonce,
            synced_bytes: 0,
        }
        .encode_into(buf);
    }

    /// Creates segment `seq` with header and preamble, fsyncs it and the
    /// directory, and makes it the active segment.
    fn create_segment(&mut self, dir: &Path, fs: &dyn WalFs, seq: u64) -> Result<(), WalError> {
        let path = dir.join(segment_name(seq));
        let header = SegmentHeader {
            seq,
            first_index: self.last_index + 1,
        };
        self.nonce = random_nonce();
        let mut buf = header.encode().to_vec();
        self.encode_preamble(&mut buf);
        let file = fs.create(&path).map_err(|e| WalError::io(&path, e))?;
        file.append(&buf)
            .and_then(|()| file.sync_data())
            .and_then(|()| fs.sync_dir(dir))
            .map_err(|e| WalError::io(&path, e))?;
        self.active = file;
        self.synced_bytes = buf.len() as u64;
        self.segments.push(Segment {
            seq,
            path,
            bytes: buf.len() as u64,
            max_entry_index: 0,
        });
        Ok(())
    }
}

/// Placeholder active file before the first segment is opened.
struct NullFile;

impl WalFile for NullFile {
    fn append(&self, _buf: &[u8]) -> io::Result<()> {
        Err(io::Error::other("no active WAL segment"))
    }
    fn sync_data(&self) -> io::Result<()> {
        Ok(())
    }
}
