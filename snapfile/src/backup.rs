//! The backup envelope: what etcd's `Maintenance.Snapshot` streams and
//! `etcdctl snapshot save` / `titanctl snapshot save` store.
//!
//! ```text
//! snapshot file (see the crate docs) | zero padding to a multiple of 512 bytes
//! | SHA-256 of everything before it (32 bytes)
//! ```
//! etcd clients accept a snapshot only when its size is `512·n + 32`
//! (`hasChecksum` in etcd's `snapshot` package: bbolt files are page
//! aligned), so the padding is what lets `etcdctl snapshot save` keep it.

use std::fmt::Write as _;
use std::io::{self, BufReader, Read, Seek, SeekFrom};

use sha2::{Digest, Sha256};

use crate::{BodyItem, FileHeader, SnapshotDecodeError, SnapshotLimits, decode_stream};

/// Alignment of the content before the checksum.
pub const BACKUP_ALIGN: u64 = 512;
/// Length of the SHA-256 trailer.
pub const CHECKSUM_LEN: usize = 32;

/// Zero bytes added after a snapshot of `content_len` bytes.
pub fn padding_len(content_len: u64) -> u64 {
    (BACKUP_ALIGN - content_len % BACKUP_ALIGN) % BACKUP_ALIGN
}

/// Total backup size for a snapshot of `content_len` bytes.
pub fn backup_len(content_len: u64) -> u64 {
    content_len + padding_len(content_len) + CHECKSUM_LEN as u64
}

/// Whether `len` is a size a backup can have (etcd's `hasChecksum`).
pub fn has_checksum_size(len: u64) -> bool {
    len % BACKUP_ALIGN == CHECKSUM_LEN as u64
}

/// A SHA-256 digest in lowercase hex.
pub fn hex(digest: &[u8]) -> String {
    digest.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// Why a backup file is not a good backup.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    /// Reading failed.
    #[error("I/O error: {0}")]
    Io(#[from] io::Error),
    /// The size cannot hold padding plus a SHA-256 trailer.
    #[error(
        "no SHA-256 trailer: size {0} is not 512·n + 32 bytes (truncated, or not a snapshot backup)"
    )]
    NoChecksum(u64),
    /// The trailer does not match the content.
    #[error("SHA-256 mismatch: file says {expected}, content hashes to {actual} (corrupt file)")]
    ChecksumMismatch {
        /// Hex digest stored in the file.
        expected: String,
        /// Hex digest of the content.
        actual: String,
    },
    /// The checksum holds but the snapshot inside does not decode.
    #[error("snapshot content: {0}")]
    Snapshot(#[from] SnapshotDecodeError),
    /// Bytes between the snapshot trailer and the checksum are not the
    /// zero padding expected.
    #[error("bad padding: {0}")]
    Padding(String),
}

/// What a verified backup holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupSummary {
    /// The snapshot header.
    pub header: FileHeader,
    /// Store revision.
    pub revision: i64,
    /// Compaction point.
    pub compact_revision: i64,
    /// Key histories.
    pub keys: u64,
    /// Records over every history.
    pub records: u64,
    /// Keys whose newest record is a put.
    pub live_keys: u64,
    /// Leases.
    pub leases: u64,
    /// Whole file size.
    pub file_bytes: u64,
    /// SHA-256 of the whole file, hex: what `sha256sum` prints and what a
    /// TitanBackup's manifest records.
    pub sha256: String,
    /// etcd's trailer (the SHA-256 of everything before it), hex.
    pub trailer_sha256: String,
}

/// A writer that hashes everything passing through it; [`Sha256Writer::finish`]
/// adds the zero padding and hands back the digest, which the caller writes
/// last (as the final message of a stream, or the file's last bytes).
pub struct Sha256Writer<W> {
    inner: W,
    hasher: Sha256,
    written: u64,
}

impl<W: io::Write> Sha256Writer<W> {
    /// Wraps `inner`.
    pub fn new(inner: W) -> Self {
        Self {
            inner,
            hasher: Sha256::new(),
            written: 0,
        }
    }

    /// Writes the padding; returns the inner writer and the digest of all
    /// bytes written (padding included).
    pub fn finish(mut self) -> io::Result<(W, [u8; CHECKSUM_LEN])> {
        let pad = [0u8; BACKUP_ALIGN as usize];
        let n = usize::try_from(padding_len(self.written)).unwrap_or(0);
        io::Write::write_all(&mut self, &pad[..n])?;
        Ok((self.inner, self.hasher.finalize().into()))
    }
}

impl<W: io::Write> io::Write for Sha256Writer<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.written += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// SHA-256 of the first `len` bytes of `r`, read in bounded chunks.
/// The hasher after the first `len` bytes of `r`.
fn sha256_prefix<R: Read>(r: &mut R, len: u64) -> io::Result<Sha256> {
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 64 << 10];
    let mut left = len;
    while left > 0 {
        let want = usize::try_from(left.min(buf.len() as u64)).unwrap_or(buf.len());
        let n = r.read(&mut buf[..want])?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        hasher.update(&buf[..n]);
        left -= n as u64;
    }
    Ok(hasher)
}

/// A reader that counts the bytes passing through it.
struct Counting<R> {
    inner: R,
    n: u64,
}

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.n += n as u64;
        Ok(n)
    }
}

/// Checks a backup offline: the size, the SHA-256 trailer (first pass),
/// then every header, record, lease and CRC of the snapshot inside and the
/// zero padding (second pass), handing each body item to `sink`. Memory is
/// bounded by the largest key or value, never the file.
pub fn read_backup<R, S>(
    r: &mut R,
    limits: &SnapshotLimits,
    mut sink: S,
) -> Result<BackupSummary, BackupError>
where
    R: Read + Seek,
    S: FnMut(&BodyItem) -> Result<(), SnapshotDecodeError>,
{
    let file_bytes = r.seek(SeekFrom::End(0))?;
    if !has_checksum_size(file_bytes) {
        return Err(BackupError::NoChecksum(file_bytes));
    }
    let content = file_bytes - CHECKSUM_LEN as u64;
    r.seek(SeekFrom::Start(0))?;
    let mut whole = sha256_prefix(r, content)?;
    let actual: [u8; CHECKSUM_LEN] = whole.clone().finalize().into();
    let mut stored = [0u8; CHECKSUM_LEN];
    r.read_exact(&mut stored)?;
    whole.update(stored);
    if actual != stored {
        return Err(BackupError::ChecksumMismatch {
            expected: hex(&stored),
            actual: hex(&actual),
        });
    }
    r.seek(SeekFrom::Start(0))?;
    let mut summary = BackupSummary {
        header: FileHeader::default(),
        revision: 0,
        compact_revision: 0,
        keys: 0,
        records: 0,
        live_keys: 0,
        leases: 0,
        file_bytes,
        sha256: hex(&whole.finalize()),
        trailer_sha256: hex(&stored),
    };
    let mut reader = Counting {
        inner: BufReader::new(r.by_ref().take(content)),
        n: 0,
    };
    let header = decode_stream(&mut reader, limits, |item| {
        tally(&mut summary, &item);
        sink(&item)
    })?;
    summary.header = header;
    check_padding(&mut reader, content)?;
    Ok(summary)
}

/// Checks a backup offline without keeping its contents (see
/// [`read_backup`]).
pub fn verify_backup<R: Read + Seek>(
    r: &mut R,
    limits: &SnapshotLimits,
) -> Result<BackupSummary, BackupError> {
    read_backup(r, limits, |_| Ok(()))
}

fn tally(summary: &mut BackupSummary, item: &BodyItem) {
    match item {
        BodyItem::Revisions { revision, compact } => {
            summary.revision = *revision;
            summary.compact_revision = *compact;
        }
        BodyItem::Key(_, history) => {
            summary.keys += 1;
            summary.records += history.len() as u64;
            if history.last().is_some_and(|r| r.live.is_some()) {
                summary.live_keys += 1;
            }
        }
        BodyItem::Lease(..) => summary.leases += 1,
    }
}

/// After the snapshot trailer: exactly the padding its length calls for,
/// all zero.
fn check_padding<R: Read>(reader: &mut Counting<R>, content: u64) -> Result<(), BackupError> {
    let snapshot_len = reader.n;
    let want = padding_len(snapshot_len);
    if snapshot_len + want != content {
        return Err(BackupError::Padding(format!(
            "snapshot ends at byte {snapshot_len}, so the checksum belongs at {}, not {content}",
            snapshot_len + want
        )));
    }
    let mut rest = Vec::new();
    reader.by_ref().take(BACKUP_ALIGN).read_to_end(&mut rest)?;
    if rest.iter().any(|b| *b != 0) {
        return Err(BackupError::Padding("non-zero byte in the padding".into()));
    }
    Ok(())
}
