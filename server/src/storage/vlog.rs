//! The value log: values of the MVCC store kept in append-only data files
//! (Bitcask's data files) instead of memory, each read back with one `pread`.
//!
//! ```text
//! record: crc u32 | timestamp_ms u64 | key_len u32 | value_len u32 | key | value
//!         crc = CRC32 of everything after it
//! files:  <dir>/NNNNNNNN.vlog, appended in order, rotated at `file_limit`
//! ```
//!
//! The store keeps a [`ValueRef`] (file, offset, value length) per record;
//! a read checks the record's CRC, its lengths and that it holds the key
//! asked for, so a flipped byte or a stale reference is reported with the
//! file and offset instead of returning wrong bytes.
//!
//! **Durability.** In this first step the log is a cache of what the
//! snapshot and the WAL already hold: [`ValueLog::open`] removes every file
//! left by an earlier run and boot appends the values again as it loads the
//! snapshot and replays the WAL. So nothing here is fsynced, a torn or
//! corrupted file never outlives a restart, and a crash at any point leaves
//! nothing to repair. (Merge, hint files and snapshots that reference the
//! files instead of copying the values are the next steps; see
//! ARCHITECTURE.md.)
//!
//! Appends come from the applying task only; reads come from any task and
//! never take the append lock.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{SystemTime, UNIX_EPOCH};

/// Bytes of a record before its key.
pub const RECORD_HEADER_LEN: usize = 20;
/// Default size at which the active file is closed and a new one started.
pub const DEFAULT_FILE_LIMIT: u64 = 256 << 20;
const SUFFIX: &str = ".vlog";

/// Where one value lives: its record's file and offset, and the value's
/// length (kept here so history accounting never reads the file).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ValueRef {
    /// File sequence number.
    pub file: u32,
    /// Value length in bytes.
    pub value_len: u32,
    /// Offset of the record (its CRC) in the file.
    pub offset: u64,
}

/// A value that could not be read back.
#[derive(Debug, thiserror::Error)]
#[error("value log {}: record at offset {offset}: {what}", path.display())]
pub struct ValueLogError {
    /// The data file.
    pub path: PathBuf,
    /// The record's offset.
    pub offset: u64,
    /// What was wrong.
    pub what: String,
}

/// A record a merge copied: its key, old place and new place.
pub type Move = (Arc<[u8]>, ValueRef, ValueRef);

/// Counters for metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ValueLogStats {
    /// Data files.
    pub files: u64,
    /// Bytes in every data file (live and dead records).
    pub bytes: u64,
    /// Appends that failed (the value then stayed in memory).
    pub append_failures: u64,
}

struct Active {
    seq: u32,
    file: Arc<File>,
    len: u64,
}

/// Files a merge emptied, unlinked already and kept open until no reader
/// that might still hold a reference into them is left (`epoch`).
struct Retired {
    files: Vec<u32>,
    epoch: Box<dyn Fn() -> bool + Send + Sync>,
}

/// The value log of one member (see the module docs).
pub struct ValueLog {
    dir: PathBuf,
    file_limit: u64,
    /// Every readable file by sequence number; readers clone the `Arc` and
    /// `pread`.
    files: RwLock<BTreeMap<u32, Arc<File>>>,
    /// Sizes of the closed (sealed) files still on disk.
    sealed: Mutex<BTreeMap<u32, u64>>,
    active: Mutex<Active>,
    retired: Mutex<Vec<Retired>>,
    bytes: AtomicU64,
    append_failures: AtomicU64,
    failing: AtomicBool,
}

impl std::fmt::Debug for ValueLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ValueLog")
            .field("dir", &self.dir)
            .field("stats", &self.stats())
            .finish()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn file_name(seq: u32) -> String {
    format!("{seq:08}{SUFFIX}")
}

fn create(dir: &Path, seq: u32) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(dir.join(file_name(seq)))
}

/// CRC of a record's bytes after the CRC field.
fn record_crc(header_tail: &[u8], key: &[u8], value: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(header_tail);
    h.update(key);
    h.update(value);
    h.finalize()
}

impl ValueLog {
    /// Opens the log in `dir` (created if missing), removing every data file
    /// an earlier run left (see the module docs on durability).
    pub fn open(dir: &Path, file_limit: u64) -> io::Result<Arc<Self>> {
        fs::create_dir_all(dir)?;
        for entry in fs::read_dir(dir)? {
            let entry = entry?;
            if entry.file_name().to_string_lossy().ends_with(SUFFIX) {
                fs::remove_file(entry.path())?;
            }
        }
        let first = Arc::new(create(dir, 0)?);
        Ok(Arc::new(ValueLog {
            dir: dir.to_path_buf(),
            file_limit: file_limit.max(RECORD_HEADER_LEN as u64),
            files: RwLock::new(BTreeMap::from([(0, first.clone())])),
            sealed: Mutex::new(BTreeMap::new()),
            active: Mutex::new(Active {
                seq: 0,
                file: first,
                len: 0,
            }),
            retired: Mutex::new(Vec::new()),
            bytes: AtomicU64::new(0),
            append_failures: AtomicU64::new(0),
            failing: AtomicBool::new(false),
        }))
    }

    /// The directory holding the data files.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Appends one record; the returned reference reads it back. On an IO
    /// error nothing is referenced (the next append overwrites any partial
    /// bytes) and the caller keeps the value in memory.
    pub fn append(&self, key: &[u8], value: &[u8]) -> io::Result<ValueRef> {
        let result = self.try_append(key, value);
        match &result {
            Ok(_) => {
                if self.failing.swap(false, Ordering::Relaxed) {
                    tracing::info!(dir = %self.dir.display(), "value log appends succeed again");
                }
            }
            Err(e) => {
                self.append_failures.fetch_add(1, Ordering::Relaxed);
                if !self.failing.swap(true, Ordering::Relaxed) {
                    tracing::error!(dir = %self.dir.display(), error = %e,
                        "value log append failed; values stay in memory until appends succeed");
                }
            }
        }
        result
    }

    fn try_append(&self, key: &[u8], value: &[u8]) -> io::Result<ValueRef> {
        let too_long = |what| io::Error::new(io::ErrorKind::InvalidInput, what);
        let key_len = u32::try_from(key.len()).map_err(|_| too_long("key too long"))?;
        let value_len = u32::try_from(value.len()).map_err(|_| too_long("value too long"))?;
        let ts = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let mut rec = Vec::with_capacity(RECORD_HEADER_LEN + key.len() + value.len());
        rec.extend_from_slice(&[0; 4]);
        rec.extend_from_slice(&ts.to_le_bytes());
        rec.extend_from_slice(&key_len.to_le_bytes());
        rec.extend_from_slice(&value_len.to_le_bytes());
        rec.extend_from_slice(key);
        rec.extend_from_slice(value);
        let crc = record_crc(&rec[4..RECORD_HEADER_LEN], key, value);
        rec[..4].copy_from_slice(&crc.to_le_bytes());

        let mut active = self.active.lock().unwrap_or_else(PoisonError::into_inner);
        if active.len > 0 && active.len + rec.len() as u64 > self.file_limit {
            self.rotate_locked(&mut active)?;
        }
        active.file.write_all_at(&rec, active.len)?;
        let offset = active.len;
        active.len += rec.len() as u64;
        self.bytes.fetch_add(rec.len() as u64, Ordering::Relaxed);
        Ok(ValueRef {
            file: active.seq,
            value_len,
            offset,
        })
    }

    /// Closes the active file (if it holds anything) and starts a new one,
    /// so a merge can take every record written so far.
    pub fn rotate(&self) -> io::Result<()> {
        let mut active = self.active.lock().unwrap_or_else(PoisonError::into_inner);
        if active.len > 0 {
            self.rotate_locked(&mut active)?;
        }
        Ok(())
    }

    fn rotate_locked(&self, active: &mut Active) -> io::Result<()> {
        let seq = active.seq + 1;
        let file = Arc::new(create(&self.dir, seq)?);
        lock(&self.sealed).insert(active.seq, active.len);
        self.files
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(seq, file.clone());
        *active = Active { seq, file, len: 0 };
        Ok(())
    }

    /// Closed files and their sizes (a merge chooses among these).
    pub fn sealed_files(&self) -> BTreeMap<u32, u64> {
        lock(&self.sealed).clone()
    }

    /// Removes merged files from disk. They stay open, and readable by
    /// sequence number, until `unreferenced()` says no reader can still
    /// reach them; [`ValueLog::release_retired`] then closes them.
    pub fn retire(
        &self,
        files: Vec<u32>,
        unreferenced: impl Fn() -> bool + Send + Sync + 'static,
    ) -> io::Result<()> {
        let mut sealed = lock(&self.sealed);
        for seq in &files {
            if let Some(size) = sealed.remove(seq) {
                fs::remove_file(self.dir.join(file_name(*seq)))?;
                self.bytes.fetch_sub(size, Ordering::Relaxed);
            }
        }
        drop(sealed);
        lock(&self.retired).push(Retired {
            files,
            epoch: Box::new(unreferenced),
        });
        Ok(())
    }

    /// Closes retired files nothing can reach any more; returns how many.
    pub fn release_retired(&self) -> usize {
        let mut retired = lock(&self.retired);
        let mut closed = 0;
        let mut files = self.files.write().unwrap_or_else(PoisonError::into_inner);
        retired.retain(|r| {
            if !(r.epoch)() {
                return true;
            }
            for seq in &r.files {
                closed += usize::from(files.remove(seq).is_some());
            }
            false
        });
        closed
    }

    /// Copies the records `refs` (which must be in sealed files) to the end
    /// of the log, at most `rate` bytes per second (0 = unlimited), and
    /// returns each record's old and new place. Any unreadable record stops
    /// the copy: nothing is moved, and the error names the record.
    pub fn copy_records(
        &self,
        refs: &[(Arc<[u8]>, ValueRef)],
        rate: u64,
    ) -> Result<Vec<Move>, ValueLogError> {
        let started = std::time::Instant::now();
        let mut copied = 0u64;
        let mut moves = Vec::with_capacity(refs.len());
        for (key, from) in refs {
            let value = self.read(key, *from)?;
            let to = self.append(key, &value).map_err(|e| ValueLogError {
                path: self.dir.clone(),
                offset: 0,
                what: format!("merge append failed: {e}"),
            })?;
            moves.push((key.clone(), *from, to));
            copied += (RECORD_HEADER_LEN + key.len() + value.len()) as u64;
            if rate > 0 {
                let due = std::time::Duration::from_secs_f64(copied as f64 / rate as f64);
                if let Some(wait) = due.checked_sub(started.elapsed()) {
                    std::thread::sleep(wait);
                }
            }
        }
        Ok(moves)
    }

    /// Reads the value `r` points at, checking that its record is intact and
    /// belongs to `key`.
    pub fn read(&self, key: &[u8], r: ValueRef) -> Result<Vec<u8>, ValueLogError> {
        let fail = |what: String| ValueLogError {
            path: self.dir.join(file_name(r.file)),
            offset: r.offset,
            what,
        };
        let file = {
            let files = self.files.read().unwrap_or_else(PoisonError::into_inner);
            files.get(&r.file).cloned()
        }
        .ok_or_else(|| fail("no such data file".into()))?;
        let mut rec = vec![0u8; RECORD_HEADER_LEN + key.len() + r.value_len as usize];
        file.read_exact_at(&mut rec, r.offset)
            .map_err(|e| fail(format!("read failed: {e}")))?;
        let u32_at = |i: usize| u32::from_le_bytes(rec[i..i + 4].try_into().expect("4 bytes"));
        let (crc, key_len, value_len) = (u32_at(0), u32_at(12), u32_at(16));
        if key_len as usize != key.len() || value_len != r.value_len {
            return Err(fail(format!(
                "lengths {key_len}/{value_len} where {}/{} were expected",
                key.len(),
                r.value_len
            )));
        }
        let (head, body) = rec.split_at(RECORD_HEADER_LEN);
        let (stored_key, value) = body.split_at(key.len());
        if record_crc(&head[4..], stored_key, value) != crc {
            return Err(fail("CRC mismatch".into()));
        }
        if stored_key != key {
            return Err(fail("record holds another key".into()));
        }
        rec.drain(..RECORD_HEADER_LEN + key.len());
        Ok(rec)
    }

    /// Bytes a record for `key` with `value_len` bytes of value takes.
    pub fn record_len(key_len: usize, value_len: u32) -> u64 {
        (RECORD_HEADER_LEN + key_len) as u64 + u64::from(value_len)
    }

    /// Current counters.
    pub fn stats(&self) -> ValueLogStats {
        ValueLogStats {
            files: self
                .files
                .read()
                .unwrap_or_else(PoisonError::into_inner)
                .len() as u64,
            bytes: self.bytes.load(Ordering::Relaxed),
            append_failures: self.append_failures.load(Ordering::Relaxed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn log(limit: u64) -> (tempfile::TempDir, Arc<ValueLog>) {
        let dir = tempfile::tempdir().unwrap();
        let log = ValueLog::open(&dir.path().join("vlog"), limit).unwrap();
        (dir, log)
    }

    #[test]
    fn appended_values_read_back_across_file_rotation() {
        let (_d, log) = log(100);
        let cases: Vec<(Vec<u8>, Vec<u8>)> = vec![
            (b"a".to_vec(), b"first".to_vec()),
            (b"bb".to_vec(), vec![7; 60]),
            (b"c".to_vec(), Vec::new()),
            (b"big".to_vec(), vec![9; 500]),
            (b"d".to_vec(), b"after the big one".to_vec()),
        ];
        let refs: Vec<ValueRef> = cases
            .iter()
            .map(|(k, v)| log.append(k, v).unwrap())
            .collect();
        for ((k, v), r) in cases.iter().zip(&refs) {
            assert_eq!(&log.read(k, *r).unwrap(), v);
        }
        assert!(log.stats().files >= 3, "{:?}", log.stats());
        assert_eq!(refs[3].value_len, 500);
    }

    #[test]
    fn a_flipped_byte_is_reported_with_file_and_offset() {
        let (_d, log) = log(DEFAULT_FILE_LIMIT);
        log.append(b"k0", b"v0").unwrap();
        let r = log.append(b"k1", b"value one").unwrap();
        let path = log.dir().join(file_name(0));
        let mut bytes = fs::read(&path).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 0x40;
        fs::write(&path, bytes).unwrap();
        let err = log.read(b"k1", r).unwrap_err();
        assert_eq!(err.offset, r.offset);
        assert_eq!(err.path, path);
        assert!(err.to_string().contains("CRC mismatch"), "{err}");
    }

    #[test]
    fn a_reference_to_another_record_or_past_the_end_fails_cleanly() {
        let (_d, log) = log(DEFAULT_FILE_LIMIT);
        let a = log.append(b"ka", b"aaaa").unwrap();
        let b = log.append(b"kb", b"bbbb").unwrap();
        let cases = [
            (b"kb".as_slice(), a, "another key"),
            (b"ka".as_slice(), ValueRef { value_len: 3, ..a }, "lengths"),
            (
                b"kb".as_slice(),
                ValueRef {
                    offset: b.offset + 1,
                    ..b
                },
                "",
            ),
            (
                b"kb".as_slice(),
                ValueRef {
                    offset: 1 << 20,
                    ..b
                },
                "read failed",
            ),
            (
                b"kb".as_slice(),
                ValueRef { file: 5, ..b },
                "no such data file",
            ),
        ];
        for (key, r, want) in cases {
            let err = log.read(key, r).unwrap_err();
            assert!(err.to_string().contains(want), "{r:?}: {err}");
        }
    }

    #[test]
    fn opening_removes_files_of_an_earlier_run() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vlog");
        let first = ValueLog::open(&path, 64).unwrap();
        for i in 0..10u8 {
            first.append(&[i], &[i; 40]).unwrap();
        }
        fs::write(path.join("keep.txt"), b"not ours").unwrap();
        drop(first);
        let second = ValueLog::open(&path, 64).unwrap();
        let mut names: Vec<String> = fs::read_dir(&path)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names, vec![file_name(0), "keep.txt".to_string()]);
        assert_eq!(second.stats().bytes, 0);
    }
}
