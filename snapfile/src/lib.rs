//! Titan's snapshot file format, both directions, with no server types.
//!
//! ```text
//! header:  magic "TITANSNP" | version u32 | header_len u32
//!          | header body (header_len bytes):
//!              index u64 | term u64 | key_count u64
//!              | voters: n u32, n × id u64 | learners: n u32, n × id u64
//!              | members: n u32, n × (id u64 | info_len u32 | MemberInfo)
//!          | header_crc u32 (over everything before it)
//! body:    revision i64 | compact_revision i64
//!          | key_count × key history (every record since the compaction point),
//!          keys strictly ascending
//!          | lease table (version 3 on): n u32, n × (id i64 | ttl_s i64)
//! trailer: body_crc u32 (over the body) | end magic "TSNPEND!"
//! ```
//! The server's `storage::snapshot_codec` maps its MVCC store onto these
//! items; `titanctl snapshot verify` reads them without the server crate.
//! [`backup`] wraps a snapshot file in etcd's `Maintenance.Snapshot` envelope
//! (zero padding to a multiple of 512 bytes, then a SHA-256 of all of it).
//!
//! Decoding never panics and never allocates ahead of the bytes it has read:
//! every length is checked against [`SnapshotLimits`] and read incrementally.

pub mod backup;
mod body;
mod header;

use std::io::{self, Read, Write};

pub use body::{
    RawLive, RawRecord, RecordRef, read_history, read_leases, read_revisions, write_history,
    write_leases, write_revisions,
};
pub use header::{FileHeader, decode_header, encode_header, encode_header_as};

/// Snapshot file magic.
pub const SNAPSHOT_MAGIC: &[u8; 8] = b"TITANSNP";
/// Trailer magic, written last.
pub const SNAPSHOT_END_MAGIC: &[u8; 8] = b"TSNPEND!";
/// Format version written (3: the MVCC store plus its lease table).
/// Version 2 (the MVCC store before leases) still loads, with no leases.
/// Version 1 (a plain key → value map, before MVCC) is refused.
pub const SNAPSHOT_VERSION: u32 = 3;
/// The MVCC format before leases, still read.
pub const SNAPSHOT_VERSION_NO_LEASES: u32 = 2;
/// Longest lease TTL a snapshot may carry (the store's own bound; the
/// server checks the two agree at compile time).
pub const MAX_LEASE_TTL_S: i64 = 9_000_000_000;
/// Default bound on the lease table (the store's `MAX_LEASES`).
pub const DEFAULT_MAX_LEASES: usize = 1_000_000;

/// Bounds applied while decoding untrusted snapshot bytes.
#[derive(Debug, Clone, Copy)]
pub struct SnapshotLimits {
    /// Largest header body accepted.
    pub max_header_bytes: u32,
    /// Largest key accepted (must be ≥ what the WAL accepts in one record).
    pub max_key_bytes: u32,
    /// Largest value accepted (must be ≥ what the WAL accepts in one record).
    pub max_value_bytes: u32,
    /// Most leases accepted (the store's own bound).
    pub max_leases: usize,
}

impl Default for SnapshotLimits {
    fn default() -> Self {
        Self {
            max_header_bytes: 16 << 20,
            max_key_bytes: 16 << 20,
            max_value_bytes: 16 << 20,
            max_leases: DEFAULT_MAX_LEASES,
        }
    }
}

/// Why a snapshot stream could not be decoded.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotDecodeError {
    /// Reading failed.
    #[error("I/O error: {0}")]
    Io(#[from] io::Error),
    /// The stream ended early.
    #[error("snapshot is truncated")]
    Truncated,
    /// Not a snapshot file.
    #[error("bad magic")]
    BadMagic,
    /// A newer or unknown format (1 = the pre-MVCC map, no longer read).
    #[error(
        "unsupported snapshot format version {0} (this build reads versions 2 and 3, the MVCC store without and with leases; version 1 snapshots predate MVCC and are not migrated)"
    )]
    UnsupportedVersion(u32),
    /// A length field exceeds its limit.
    #[error("{what} length {len} exceeds limit {max}")]
    TooLarge {
        /// Which field.
        what: &'static str,
        /// Its value.
        len: u64,
        /// The limit.
        max: u64,
    },
    /// Header or body checksum mismatch.
    #[error("{0} checksum mismatch")]
    Checksum(&'static str),
    /// Structurally invalid content.
    #[error("malformed snapshot: {0}")]
    Malformed(String),
}

/// Maps an early end of input to [`SnapshotDecodeError::Truncated`].
pub(crate) fn eof_to_truncated(e: io::Error) -> SnapshotDecodeError {
    if e.kind() == io::ErrorKind::UnexpectedEof {
        SnapshotDecodeError::Truncated
    } else {
        SnapshotDecodeError::Io(e)
    }
}

/// One piece of the snapshot body, in stream order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BodyItem {
    /// The store's revision and compaction point (first).
    Revisions {
        /// Store revision.
        revision: i64,
        /// Compaction point.
        compact: i64,
    },
    /// One key's history, oldest record first.
    Key(Vec<u8>, Vec<RawRecord>),
    /// One lease: id and TTL (after every key).
    Lease(i64, i64),
}

/// A writer that checksums everything passing through it.
pub struct CrcWriter<W> {
    inner: W,
    hasher: crc32fast::Hasher,
}

impl<W: Write> CrcWriter<W> {
    /// Wraps `inner`.
    pub fn new(inner: W) -> Self {
        Self {
            inner,
            hasher: crc32fast::Hasher::new(),
        }
    }

    /// Writes the trailer (CRC of everything written so far, end magic).
    pub fn finish(self) -> io::Result<u64> {
        let crc = self.hasher.finalize();
        let mut inner = self.inner;
        inner.write_all(&crc.to_le_bytes())?;
        inner.write_all(SNAPSHOT_END_MAGIC)?;
        inner.flush()?;
        Ok(12)
    }
}

impl<W: Write> Write for CrcWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// A reader that checksums everything passing through it.
struct CrcReader<R> {
    inner: R,
    hasher: crc32fast::Hasher,
}

impl<R: Read> Read for CrcReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

/// Decodes the header, then feeds each body item to `sink` and checks the
/// trailer. Whatever follows the trailer is left unread (see
/// [`expect_end`]). A `sink` error stops decoding and is returned.
pub fn decode_stream<R, S>(
    r: &mut R,
    limits: &SnapshotLimits,
    mut sink: S,
) -> Result<FileHeader, SnapshotDecodeError>
where
    R: Read,
    S: FnMut(BodyItem) -> Result<(), SnapshotDecodeError>,
{
    let header = decode_header(r, limits)?;
    let mut body = CrcReader {
        inner: &mut *r,
        hasher: crc32fast::Hasher::new(),
    };
    let (revision, compact) = read_revisions(&mut body).map_err(eof_to_truncated)?;
    if revision < 1 || compact < 0 || compact > revision {
        return Err(SnapshotDecodeError::Malformed("bad store revisions".into()));
    }
    sink(BodyItem::Revisions { revision, compact })?;
    let mut prev: Option<Vec<u8>> = None;
    for _ in 0..header.key_count {
        let (key, history) = read_history(&mut body, limits.max_key_bytes, limits.max_value_bytes)?;
        if prev.as_deref().is_some_and(|p| p >= &key[..]) {
            return Err(SnapshotDecodeError::Malformed("keys out of order".into()));
        }
        if history.last().is_some_and(|h| h.mod_revision > revision) {
            return Err(SnapshotDecodeError::Malformed(
                "record after the store revision".into(),
            ));
        }
        prev = Some(key.clone());
        sink(BodyItem::Key(key, history))?;
    }
    if header.version >= SNAPSHOT_VERSION {
        for (id, ttl_s) in read_leases(&mut body, limits.max_leases)? {
            sink(BodyItem::Lease(id, ttl_s))?;
        }
    }
    let body_crc = body.hasher.finalize();
    check_trailer(r, body_crc)?;
    Ok(header)
}

fn check_trailer<R: Read>(r: &mut R, body_crc: u32) -> Result<(), SnapshotDecodeError> {
    let mut trailer = [0u8; 12];
    r.read_exact(&mut trailer).map_err(eof_to_truncated)?;
    if u32::from_le_bytes([trailer[0], trailer[1], trailer[2], trailer[3]]) != body_crc {
        return Err(SnapshotDecodeError::Checksum("body"));
    }
    if &trailer[4..12] != SNAPSHOT_END_MAGIC {
        return Err(SnapshotDecodeError::Malformed("bad end magic".into()));
    }
    Ok(())
}

/// Checks that nothing follows the trailer (a snapshot file, not a backup).
pub fn expect_end<R: Read>(r: &mut R) -> Result<(), SnapshotDecodeError> {
    let mut extra = [0u8; 1];
    if r.read(&mut extra)? != 0 {
        return Err(SnapshotDecodeError::Malformed(
            "trailing bytes after the trailer".into(),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests;
