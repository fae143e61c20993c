//! The snapshot file format, encoded and decoded as a stream.
//!
//! ```text
//! header:  magic "TITANSNP" | version u32 | header_len u32
//!          | header body (header_len bytes):
//!              index u64 | term u64 | key_count u64
//!              | voters: n u32, n × id u64 | learners: n u32, n × id u64
//!              | members: n u32, n × (id u64 | info_len u32 | MemberInfo)
//!          | header_crc u32 (over everything before it)
//! body:    the MVCC store (see `mvcc_codec`): revision i64 | compact_revision i64
//!          | key_count × key history (every record since the compaction point),
//!          keys strictly ascending
//!          | lease table (version 3 on): n u32, n × (id i64 | ttl_s i64)
//! trailer: body_crc u32 (over the body) | end magic "TSNPEND!"
//! ```
//! Encoding walks the (cloned, immutable) map and writes through the given
//! writer; decoding inserts pairs into a fresh map as they are read. Neither
//! holds a second full copy. Every length is checked against [`SnapshotLimits`]
//! and read incrementally, so a hostile file cannot force a large allocation.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{self, Read, Write};
use std::sync::Arc;

use super::mvcc::{MvccStore, Record};
use super::mvcc_codec::{self, HistoryDecodeError};
use super::state_machine::{DecodeError, MemberInfo, StateMachine};
use super::wal_record::ByteReader;
use crate::raft::{ConfState, NodeId, SnapshotMeta};

/// Snapshot file magic.
pub const SNAPSHOT_MAGIC: &[u8; 8] = b"TITANSNP";
/// Trailer magic, written last.
pub const SNAPSHOT_END_MAGIC: &[u8; 8] = b"TSNPEND!";
/// Format version written by this code (3: the MVCC store plus its lease
/// table). Version 2 (the MVCC store before leases, when no lease could
/// exist) still loads, with no leases. Version 1 (a plain key → value map,
/// before MVCC) is refused: such a node restores from a newer snapshot or
/// from the WAL, whose pre-MVCC entries still decode.
pub const SNAPSHOT_VERSION: u32 = 3;
/// The MVCC format before leases, still read.
pub const SNAPSHOT_VERSION_NO_LEASES: u32 = 2;

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
            max_leases: super::mvcc::MAX_LEASES,
        }
    }
}

/// The decoded snapshot header.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SnapshotHeader {
    /// Index, term and membership covered.
    pub meta: SnapshotMeta,
    /// Number of key-value pairs in the body.
    pub key_count: u64,
    /// The member directory as of `meta.index`.
    pub members: BTreeMap<NodeId, MemberInfo>,
    /// Format version the file was written in (see [`SNAPSHOT_VERSION`]).
    pub version: u32,
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

fn eof_to_truncated(e: io::Error) -> SnapshotDecodeError {
    if e.kind() == io::ErrorKind::UnexpectedEof {
        SnapshotDecodeError::Truncated
    } else {
        SnapshotDecodeError::Io(e)
    }
}

/// A writer that checksums everything passing through it.
struct CrcWriter<W> {
    inner: W,
    hasher: crc32fast::Hasher,
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

fn put_id_set(out: &mut Vec<u8>, ids: &BTreeSet<NodeId>) {
    out.extend_from_slice(&(ids.len() as u32).to_le_bytes());
    for id in ids {
        out.extend_from_slice(&id.to_le_bytes());
    }
}

/// Encodes the header (including magic, version and header CRC).
pub fn encode_header(header: &SnapshotHeader) -> Vec<u8> {
    let mut body = Vec::new();
    body.extend_from_slice(&header.meta.index.to_le_bytes());
    body.extend_from_slice(&header.meta.term.to_le_bytes());
    body.extend_from_slice(&header.key_count.to_le_bytes());
    put_id_set(&mut body, &header.meta.conf.voters);
    put_id_set(&mut body, &header.meta.conf.learners);
    body.extend_from_slice(&(header.members.len() as u32).to_le_bytes());
    for (id, info) in &header.members {
        let info = info.encode();
        body.extend_from_slice(&id.to_le_bytes());
        body.extend_from_slice(&(info.len() as u32).to_le_bytes());
        body.extend_from_slice(&info);
    }
    let mut out = Vec::with_capacity(body.len() + 20);
    out.extend_from_slice(SNAPSHOT_MAGIC);
    out.extend_from_slice(&SNAPSHOT_VERSION.to_le_bytes());
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    out.extend_from_slice(&body);
    let crc = crc32fast::hash(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

/// Streams a snapshot of `sm` at `meta` into `w`. Returns the bytes written.
/// `sm` is typically an O(1) [`StateMachine::snapshot_view`] taken by the
/// node, so writers are not blocked while this runs.
pub fn encode_snapshot<W: Write>(
    w: &mut W,
    meta: &SnapshotMeta,
    sm: &StateMachine,
) -> io::Result<u64> {
    let header = SnapshotHeader {
        meta: meta.clone(),
        key_count: sm.len() as u64,
        members: sm.members().clone(),
        version: SNAPSHOT_VERSION,
    };
    let header = encode_header(&header);
    w.write_all(&header)?;
    let mut body = CrcWriter {
        inner: &mut *w,
        hasher: crc32fast::Hasher::new(),
    };
    let kv = sm.kv();
    let mut bytes = header.len() as u64;
    bytes += mvcc_codec::write_revisions(&mut body, kv.revision(), kv.compact_revision())?;
    for (key, history) in kv.histories() {
        bytes += mvcc_codec::write_history(&mut body, key, history)?;
    }
    let leases: Vec<(i64, i64)> = kv.leases().map(|(id, l)| (id, l.ttl_s)).collect();
    bytes += mvcc_codec::write_leases(&mut body, &leases)?;
    let crc = body.hasher.finalize();
    w.write_all(&crc.to_le_bytes())?;
    w.write_all(SNAPSHOT_END_MAGIC)?;
    w.flush()?;
    Ok(bytes + 12)
}

/// Reads and validates the header only (for listing snapshots or sending
/// one to a follower).
pub fn decode_header<R: Read>(
    r: &mut R,
    limits: &SnapshotLimits,
) -> Result<SnapshotHeader, SnapshotDecodeError> {
    let mut fixed = [0u8; 16];
    r.read_exact(&mut fixed).map_err(eof_to_truncated)?;
    if &fixed[0..8] != SNAPSHOT_MAGIC {
        return Err(SnapshotDecodeError::BadMagic);
    }
    let version = u32::from_le_bytes([fixed[8], fixed[9], fixed[10], fixed[11]]);
    let header_len = u32::from_le_bytes([fixed[12], fixed[13], fixed[14], fixed[15]]);
    if header_len > limits.max_header_bytes {
        return Err(SnapshotDecodeError::TooLarge {
            what: "header",
            len: header_len.into(),
            max: limits.max_header_bytes.into(),
        });
    }
    let body = read_bounded(r, header_len.into())?;
    let mut crc = [0u8; 4];
    r.read_exact(&mut crc).map_err(eof_to_truncated)?;
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&fixed);
    hasher.update(&body);
    if hasher.finalize() != u32::from_le_bytes(crc) {
        return Err(SnapshotDecodeError::Checksum("header"));
    }
    if version != SNAPSHOT_VERSION && version != SNAPSHOT_VERSION_NO_LEASES {
        return Err(SnapshotDecodeError::UnsupportedVersion(version));
    }
    let mut header = parse_header_body(&body)
        .map_err(|e| SnapshotDecodeError::Malformed(format!("header: {e}")))?;
    header.version = version;
    Ok(header)
}

/// Reads exactly `len` bytes, growing the buffer only as data arrives.
fn read_bounded<R: Read>(r: &mut R, len: u64) -> Result<Vec<u8>, SnapshotDecodeError> {
    let mut buf = Vec::new();
    r.by_ref().take(len).read_to_end(&mut buf)?;
    if (buf.len() as u64) < len {
        return Err(SnapshotDecodeError::Truncated);
    }
    Ok(buf)
}

fn parse_id_set(r: &mut ByteReader<'_>) -> Result<BTreeSet<NodeId>, DecodeError> {
    let n = r.u32().ok_or(DecodeError::Short)?;
    let mut ids = BTreeSet::new();
    for _ in 0..n {
        ids.insert(r.u64().ok_or(DecodeError::Short)?);
    }
    Ok(ids)
}

fn parse_header_body(body: &[u8]) -> Result<SnapshotHeader, DecodeError> {
    let mut r = ByteReader::new(body);
    let index = r.u64().ok_or(DecodeError::Short)?;
    let term = r.u64().ok_or(DecodeError::Short)?;
    let key_count = r.u64().ok_or(DecodeError::Short)?;
    let voters = parse_id_set(&mut r)?;
    let learners = parse_id_set(&mut r)?;
    let n = r.u32().ok_or(DecodeError::Short)?;
    let mut members = BTreeMap::new();
    for _ in 0..n {
        let id = r.u64().ok_or(DecodeError::Short)?;
        let len = r.u32().ok_or(DecodeError::Short)? as usize;
        let info = MemberInfo::decode(r.take(len).ok_or(DecodeError::Short)?)?;
        members.insert(id, info);
    }
    if !r.is_empty() {
        return Err(DecodeError::Trailing);
    }
    let conf = ConfState { voters, learners };
    Ok(SnapshotHeader {
        meta: SnapshotMeta { index, term, conf },
        key_count,
        members,
        version: SNAPSHOT_VERSION,
    })
}

/// Decodes a whole snapshot stream into a state machine positioned at the
/// snapshot's index. Validates both checksums, key order and that nothing
/// follows the trailer. This is the fuzzed entry point.
pub fn decode_snapshot<R: Read>(
    r: &mut R,
    limits: &SnapshotLimits,
) -> Result<(SnapshotHeader, StateMachine), SnapshotDecodeError> {
    let mut kv = MvccStore::new();
    let header = decode_stream(r, limits, |item| match item {
        BodyItem::Revisions(rev, compact) => kv = MvccStore::from_parts(rev, compact),
        BodyItem::Key(key, history) => kv.insert_history(key, history),
        BodyItem::Lease(id, ttl_s) => kv.insert_lease(id, ttl_s),
    })?;
    kv.attach_lease_keys();
    let sm = StateMachine::at_snapshot(header.meta.index, header.members.clone(), kv);
    Ok((header, sm))
}

/// Validates a whole snapshot stream without keeping its contents.
pub fn verify_snapshot<R: Read>(
    r: &mut R,
    limits: &SnapshotLimits,
) -> Result<SnapshotHeader, SnapshotDecodeError> {
    decode_stream(r, limits, |_| {})
}

/// One piece of the snapshot body, in stream order.
enum BodyItem {
    /// The store's revision and compaction point (first).
    Revisions(i64, i64),
    /// One key's history.
    Key(Arc<[u8]>, imbl::Vector<Record>),
    /// One lease: id and TTL (after every key).
    Lease(i64, i64),
}

fn history_error(e: HistoryDecodeError) -> SnapshotDecodeError {
    match e {
        HistoryDecodeError::Io(e) => eof_to_truncated(e),
        HistoryDecodeError::TooLarge { what, len, max } => {
            SnapshotDecodeError::TooLarge { what, len, max }
        }
        HistoryDecodeError::Malformed(m) => SnapshotDecodeError::Malformed(m.into()),
    }
}

/// Decodes the header, then feeds each body item to `sink`.
fn decode_stream<R, S>(
    r: &mut R,
    limits: &SnapshotLimits,
    mut sink: S,
) -> Result<SnapshotHeader, SnapshotDecodeError>
where
    R: Read,
    S: FnMut(BodyItem),
{
    let header = decode_header(r, limits)?;
    let mut body = CrcReader {
        inner: &mut *r,
        hasher: crc32fast::Hasher::new(),
    };
    let (rev, compact) = mvcc_codec::read_revisions(&mut body).map_err(eof_to_truncated)?;
    if rev < 1 || compact < 0 || compact > rev {
        return Err(SnapshotDecodeError::Malformed("bad store revisions".into()));
    }
    sink(BodyItem::Revisions(rev, compact));
    let mut prev: Option<Arc<[u8]>> = None;
    for _ in 0..header.key_count {
        let (key, history) =
            mvcc_codec::read_history(&mut body, limits.max_key_bytes, limits.max_value_bytes)
                .map_err(history_error)?;
        if prev.as_deref().is_some_and(|p| p >= &*key) {
            return Err(SnapshotDecodeError::Malformed("keys out of order".into()));
        }
        if history.last().is_some_and(|h| h.mod_revision > rev) {
            return Err(SnapshotDecodeError::Malformed(
                "record after the store revision".into(),
            ));
        }
        prev = Some(key.clone());
        sink(BodyItem::Key(key, history));
    }
    if header.version >= SNAPSHOT_VERSION {
        let leases =
            mvcc_codec::read_leases(&mut body, limits.max_leases).map_err(history_error)?;
        for (id, ttl_s) in leases {
            sink(BodyItem::Lease(id, ttl_s));
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
    let mut extra = [0u8; 1];
    if r.read(&mut extra)? != 0 {
        return Err(SnapshotDecodeError::Malformed(
            "trailing bytes after the trailer".into(),
        ));
    }
    Ok(())
}
