//! The small file layer the WAL is written against.
//!
//! Production uses [`StdFs`] (real files). Tests use [`SimFs`], an in-memory
//! layer that remembers how much of every file was fsynced and which names
//! were made durable by a directory fsync, so a simulated power loss can cut
//! every file back to what the disk is guaranteed to hold.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Cursor, Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

/// A file opened for appending a WAL segment.
pub trait WalFile: Send + Sync {
    /// Appends `buf` at the end of the file (not durable until [`WalFile::sync_data`]).
    fn append(&self, buf: &[u8]) -> io::Result<()>;
    /// Makes every appended byte durable (`fdatasync`).
    fn sync_data(&self) -> io::Result<()>;
}

/// Something that can be read and seeked (a segment being recovered).
pub trait ReadSeek: Read + Seek + Send {}
impl<T: Read + Seek + Send> ReadSeek for T {}

/// The directory-level operations the WAL needs.
pub trait WalFs: Send + Sync {
    /// Creates the directory (and parents) if missing.
    fn create_dir_all(&self, dir: &Path) -> io::Result<()>;
    /// Names of regular files directly inside `dir`.
    fn list(&self, dir: &Path) -> io::Result<Vec<String>>;
    /// Length of a file in bytes.
    fn len(&self, path: &Path) -> io::Result<u64>;
    /// Opens a file for reading from the start.
    fn open_read(&self, path: &Path) -> io::Result<Box<dyn ReadSeek>>;
    /// Creates (or truncates) a file and opens it for appending.
    fn create(&self, path: &Path) -> io::Result<Arc<dyn WalFile>>;
    /// Opens an existing file for appending after cutting it to `len` bytes
    /// (the cut is fsynced before this returns).
    fn open_append_at(&self, path: &Path, len: u64) -> io::Result<Arc<dyn WalFile>>;
    /// Deletes a file (durable after [`WalFs::sync_dir`]).
    fn remove(&self, path: &Path) -> io::Result<()>;
    /// Makes creations and removals in `dir` durable.
    fn sync_dir(&self, dir: &Path) -> io::Result<()>;
}

/// Real files through `std::fs`.
#[derive(Debug, Default, Clone, Copy)]
pub struct StdFs;

/// A `std::fs::File` behind the [`WalFile`] trait.
struct StdFile(File);

impl WalFile for StdFile {
    fn append(&self, buf: &[u8]) -> io::Result<()> {
        (&self.0).write_all(buf)
    }
    fn sync_data(&self) -> io::Result<()> {
        self.0.sync_data()
    }
}

impl WalFs for StdFs {
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        fs::create_dir_all(dir)
    }
    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        for entry in fs::read_dir(dir)? {
            let entry = entry?;
            if entry.file_type()?.is_file() {
                names.push(entry.file_name().to_string_lossy().into_owned());
            }
        }
        Ok(names)
    }
    fn len(&self, path: &Path) -> io::Result<u64> {
        Ok(fs::metadata(path)?.len())
    }
    fn open_read(&self, path: &Path) -> io::Result<Box<dyn ReadSeek>> {
        Ok(Box::new(File::open(path)?))
    }
    fn create(&self, path: &Path) -> io::Result<Arc<dyn WalFile>> {
        let file = OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .open(path)?;
        Ok(Arc::new(StdFile(file)))
    }
    fn open_append_at(&self, path: &Path, len: u64) -> io::Result<Arc<dyn WalFile>> {
        let file = OpenOptions::new().write(true).open(path)?;
        if file.metadata()?.len() != len {
            file.set_len(len)?;
            file.sync_all()?;
        }
        let mut file = file;
        file.seek(io::SeekFrom::Start(len))?;
        Ok(Arc::new(StdFile(file)))
    }
    fn remove(&self, path: &Path) -> io::Result<()> {
        fs::remove_file(path)
    }
    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        crate::storage::fsutil::sync_dir(dir)
    }
}

/// One simulated file: its bytes, how many are durable, and whether its
/// name survives a crash.
#[derive(Debug, Default)]
struct SimFileState {
    data: Vec<u8>,
    synced_len: usize,
    name_durable: bool,
}

/// A disk fault a [`SimFs`] injects into its next matching operation, once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SimFault {
    /// The next `sync_data` fails (EIO); nothing more becomes durable.
    SyncFails,
    /// The next `append` stores only the first half of its bytes, then
    /// fails with ENOSPC.
    NoSpace,
}

/// An in-memory file layer that can simulate power loss and disk faults.
///
/// A crash ([`SimFs::crash`]) cuts every file back to its fsynced length,
/// optionally appends garbage (a torn write), and forgets files whose
/// creation was never made durable by a directory fsync.
/// [`SimFs::set_fault`] makes the next sync or append fail.
#[derive(Debug, Default, Clone)]
pub struct SimFs {
    files: Arc<Mutex<BTreeMap<PathBuf, SimFileState>>>,
    /// A fault waiting for its operation (see [`SimFault`]).
    fault: Arc<Mutex<Option<SimFault>>>,
}

/// A handle to a [`SimFs`] file.
struct SimFile {
    fs: SimFs,
    path: PathBuf,
}

fn not_found(path: &Path) -> io::Error {
    io::Error::new(io::ErrorKind::NotFound, path.display().to_string())
}

impl SimFs {
    /// An empty file system.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, BTreeMap<PathBuf, SimFileState>> {
        self.files.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Simulates power loss in place: every file is cut back to its synced
    /// length, `garbage(path)` bytes are appended to it (a torn write), and
    /// files whose names were never made durable disappear.
    pub fn crash(&self, garbage: impl FnMut(&Path) -> Vec<u8>) {
        let image = self.crash_image(garbage);
        let taken = std::mem::take(&mut *image.lock());
        *self.lock() = taken;
    }

    /// The disk image a power loss at this instant would leave, as a new,
    /// independent file system (this one is unchanged). Lets a test "crash"
    /// while writer threads are still running.
    pub fn crash_image(&self, mut garbage: impl FnMut(&Path) -> Vec<u8>) -> SimFs {
        let files = self.lock();
        let mut image = BTreeMap::new();
        for (path, f) in files.iter().filter(|(_, f)| f.name_durable) {
            let mut data = f.data[..f.synced_len.min(f.data.len())].to_vec();
            data.extend_from_slice(&garbage(path));
            let synced_len = data.len();
            let state = SimFileState {
                data,
                synced_len,
                name_durable: true,
            };
            image.insert(path.clone(), state);
        }
        SimFs {
            files: Arc::new(Mutex::new(image)),
            fault: Arc::default(),
        }
    }

    /// Makes the next operation `fault` names fail (once); `None` clears
    /// a fault that has not fired yet.
    pub fn set_fault(&self, fault: Option<SimFault>) {
        *self.fault.lock().unwrap_or_else(|e| e.into_inner()) = fault;
    }

    /// Takes the pending fault if it is `kind`.
    fn take_fault(&self, kind: SimFault) -> bool {
        let mut f = self.fault.lock().unwrap_or_else(|e| e.into_inner());
        let hit = *f == Some(kind);
        if hit {
            *f = None;
        }
        hit
    }

    /// A copy of a file's current bytes (for tests that corrupt files).
    pub fn read_all(&self, path: &Path) -> Option<Vec<u8>> {
        self.lock().get(path).map(|f| f.data.clone())
    }

    /// Replaces a file's bytes (treated as durable), for corruption tests.
    pub fn write_all(&self, path: &Path, data: Vec<u8>) {
        let mut files = self.lock();
        let f = files.entry(path.to_path_buf()).or_default();
        f.synced_len = data.len();
        f.data = data;
        f.name_durable = true;
    }
}

impl WalFile for SimFile {
    fn append(&self, buf: &[u8]) -> io::Result<()> {
        let no_space = self.fs.take_fault(SimFault::NoSpace);
        let mut files = self.fs.lock();
        let f = files
            .get_mut(&self.path)
            .ok_or_else(|| not_found(&self.path))?;
        if no_space {
            f.data.extend_from_slice(&buf[..buf.len() / 2]);
            return Err(io::Error::new(
                io::ErrorKind::StorageFull,
                "no space left on device (simulated)",
            ));
        }
        f.data.extend_from_slice(buf);
        Ok(())
    }
    fn sync_data(&self) -> io::Result<()> {
        if self.fs.take_fault(SimFault::SyncFails) {
            return Err(io::Error::other("fsync failed: EIO (simulated)"));
        }
        let mut files = self.fs.lock();
        let f = files
            .get_mut(&self.path)
            .ok_or_else(|| not_found(&self.path))?;
        f.synced_len = f.data.len();
        Ok(())
    }
}

impl WalFs for SimFs {
    fn create_dir_all(&self, _dir: &Path) -> io::Result<()> {
        Ok(())
    }
    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        let files = self.lock();
        let names = files
            .keys()
            .filter(|p| p.parent() == Some(dir))
            .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
            .collect();
        Ok(names)
    }
    fn len(&self, path: &Path) -> io::Result<u64> {
        let files = self.lock();
        let f = files.get(path).ok_or_else(|| not_found(path))?;
        Ok(f.data.len() as u64)
    }
    fn open_read(&self, path: &Path) -> io::Result<Box<dyn ReadSeek>> {
        let data = self.read_all(path).ok_or_else(|| not_found(path))?;
        Ok(Box::new(Cursor::new(data)))
    }
    fn create(&self, path: &Path) -> io::Result<Arc<dyn WalFile>> {
        let mut files = self.lock();
        let f = files.entry(path.to_path_buf()).or_default();
        f.data.clear();
        f.synced_len = 0;
        drop(files);
        Ok(Arc::new(SimFile {
            fs: self.clone(),
            path: path.to_path_buf(),
        }))
    }
    fn open_append_at(&self, path: &Path, len: u64) -> io::Result<Arc<dyn WalFile>> {
        let mut files = self.lock();
        let f = files.get_mut(path).ok_or_else(|| not_found(path))?;
        let len = usize::try_from(len).map_err(io::Error::other)?;
        f.data.truncate(len);
        f.synced_len = f.data.len();
        drop(files);
        Ok(Arc::new(SimFile {
            fs: self.clone(),
            path: path.to_path_buf(),
        }))
    }
    fn remove(&self, path: &Path) -> io::Result<()> {
        self.lock()
            .remove(path)
            .map(|_| ())
            .ok_or_else(|| not_found(path))
    }
    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        for (path, f) in self.lock().iter_mut() {
            if path.parent() == Some(dir) {
                f.name_durable = true;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::raft::{Entry, EntryKind};
    use crate::storage::{Wal, WalOptions};

    fn entry(index: u64) -> Entry {
        Entry {
            index,
            term: 1,
            kind: EntryKind::Normal,
            data: vec![7; 32],
        }
    }

    fn open(fs: &SimFs) -> (Wal, Vec<u64>) {
        let opts = WalOptions {
            fs: Arc::new(fs.clone()),
            ..WalOptions::default()
        };
        let (wal, rec) = Wal::open(Path::new("/wal"), opts).expect("open");
        (wal, rec.entries.iter().map(|e| e.index).collect())
    }

    /// A failed fsync or a full disk fails the append, poisons the WAL (no
    /// later append can claim durability) and leaves nothing of the batch
    /// after a power loss.
    #[test]
    fn injected_faults_fail_the_append_and_poison_the_wal() {
        for fault in [SimFault::SyncFails, SimFault::NoSpace] {
            let fs = SimFs::new();
            let (wal, _) = open(&fs);
            wal.append(&[entry(1), entry(2)], None)
                .expect("healthy append");
            fs.set_fault(Some(fault));
            assert!(wal.append(&[entry(3)], None).is_err(), "{fault:?}");
            assert!(
                wal.append(&[entry(4)], None).is_err(),
                "{fault:?}: poisoned"
            );
            drop(wal);
            let (_, recovered) = open(&fs.crash_image(|_| Vec::new()));
            assert_eq!(recovered, vec![1, 2], "{fault:?}");
        }
    }

    #[test]
    fn a_cleared_fault_never_fires() {
        let fs = SimFs::new();
        let (wal, _) = open(&fs);
        fs.set_fault(Some(SimFault::SyncFails));
        fs.set_fault(None);
        wal.append(&[entry(1)], None).expect("no fault pending");
    }
}
