//! The snapshot file format, encoded and decoded as a stream.
//!
//! ```text
//! header:  magic "TITANSNP" | version u32 | header_len u32
//!          | header body (header_len bytes):
//!              index u64 | term u64 | key_count u64
//!              | voters: n u32, n × id u64 | learners: n u32, n × id u64
//!              | members: n u32, n × (id u64 | info_len u32 | MemberInfo)
//!          | header_crc u32 (over everything before it)
//! body:    key_count × (key_len u32 | key | value_len u32 | value | version u64),
//!          keys strictly ascending
//! trailer: body_crc u32 (over the body) | end magic "TSNPEND!"
//! ```
//! Encoding walks the (cloned, immutable) map and writes through the given
//! writer; decoding inserts pairs into a fresh map as they are read. Neither
//! holds a second full copy. Every length is checked against [`SnapshotLimits`]
//! and read incrementally, so a hostile file cannot force a large allocation.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{self, Read, Write};
use std::sync::Arc;

use super::state_machine::{DecodeError, MemberInfo, StateMachine, Versioned};
use super::wal_record::ByteReader;
use crate::raft::{ConfState, NodeId, SnapshotMeta};

/// Snapshot file magic.
pub const SNAPSHOT_MAGIC: &[u8; 8] = b"TITANSNP";
/// Trailer magic, written last.
pub const SNAPSHOT_END_MAGIC: &[u8; 8] = b"TSNPEND!";
/// Format version written by this code.
pub const SNAPSHOT_VERSION: u32 = 1;

/// Bounds applied while decoding untrusted snapshot bytes.
#[derive(Debug, Clone, Copy)]
pub struct SnapshotLimits {
    /// Largest header body accepted.
    pub max_header_bytes: u32,
    /// Largest key accepted (must be ≥ what the WAL accepts in one record).
    pub max_key_bytes: u32,
    /// Largest value accepted (must be ≥ what the WAL accepts in one record).
    pub max_value_bytes: u32,
}

impl Default for SnapshotLimits {
    fn default() -> Self {
        Self {
            max_header_bytes: 16 << 20,
            max_key_bytes: 16 << 20,
            max_value_bytes: 16 << 20,
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
    /// A newer or unknown format.
    #[error("unsupported snapshot format version {0}")]
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
    };
    let header = encode_header(&header);
    w.write_all(&header)?;
    let mut body = CrcWriter {
        inner: &mut *w,
        hasher: crc32fast::Hasher::new(),
    };
    let mut bytes = header.len() as u64;
    for (key, v) in sm.iter() {
        body.write_all(&(key.len() as u32).to_le_bytes())?;
        body.write_all(key)?;
        body.write_all(&(v.value.len() as u32).to_le_bytes())?;
        body.write_all(&v.value)?;
        body.write_all(&v.version.to_le_bytes())?;
        bytes += 16 + key.len() as u64 + v.value.len() as u64;
    }
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
    if version != SNAPSHOT_VERSION {
        return Err(SnapshotDecodeError::UnsupportedVersion(version));
    }
    parse_header_body(&body).map_err(|e| SnapshotDecodeError::Malformed(format!("header: {e}")))
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
    })
}

/// Decodes a whole snapshot stream into a state machine positioned at the
/// snapshot's index. Validates both checksums, key order and that nothing
/// follows the trailer. This is the fuzzed entry point.
pub fn decode_snapshot<R: Read>(
    r: &mut R,
    limits: &SnapshotLimits,
) -> Result<(SnapshotHeader, StateMachine), SnapshotDecodeError> {
    let mut sm = None;
    let header = decode_stream(r, limits, |header| {
        let sm = sm.insert(StateMachine::at_snapshot(
            header.meta.index,
            header.members.clone(),
        ));
        move |key, value| sm.insert_loaded(key, value)
    })?;
    let sm = sm.unwrap_or_default();
    Ok((header, sm))
}

/// Validates a whole snapshot stream without keeping its contents.
pub fn verify_snapshot<R: Read>(
    r: &mut R,
    limits: &SnapshotLimits,
) -> Result<SnapshotHeader, SnapshotDecodeError> {
    decode_stream(r, limits, |_| |_, _| {})
}

/// Decodes the header, then feeds each pair to the sink `make_sink` builds.
fn decode_stream<'s, R, F, S>(
    r: &mut R,
    limits: &SnapshotLimits,
    make_sink: F,
) -> Result<SnapshotHeader, SnapshotDecodeError>
where
    R: Read,
    F: FnOnce(&SnapshotHeader) -> S,
    S: FnMut(Arc<[u8]>, Versioned) + 's,
{
    let header = decode_header(r, limits)?;
    let mut sink = make_sink(&header);
    let mut body = CrcReader {
        inner: &mut *r,
        hasher: crc32fast::Hasher::new(),
    };
    let mut prev: Option<Arc<[u8]>> = None;
    for _ in 0..header.key_count {
        let (key, value) = decode_pair(&mut body, limits)?;
        if prev.as_deref().is_some_and(|p| p >= &*key) {
            return Err(SnapshotDecodeError::Malformed("keys out of order".into()));
        }
        prev = Some(key.clone());
        sink(key, value);
    }
    let body_crc = body.hasher.finalize();
    check_trailer(r, body_crc)?;
    Ok(header)
}

fn read_len<R: Read>(r: &mut R, what: &'static str, max: u32) -> Result<u64, SnapshotDecodeError> {
    let mut b = [0u8; 4];
    r.read_exact(&mut b).map_err(eof_to_truncated)?;
    let len = u32::from_le_bytes(b);
    if len > max {
        return Err(SnapshotDecodeError::TooLarge {
            what,
            len: len.into(),
            max: max.into(),
        });
    }
    Ok(len.into())
}

fn decode_pair<R: Read>(
    r: &mut R,
    limits: &SnapshotLimits,
) -> Result<(Arc<[u8]>, Versioned), SnapshotDecodeError> {
    let key_len = read_len(r, "key", limits.max_key_bytes)?;
    let key = read_bounded(r, key_len)?;
    let value_len = read_len(r, "value", limits.max_value_bytes)?;
    let value = read_bounded(r, value_len)?;
    let mut version = [0u8; 8];
    r.read_exact(&mut version).map_err(eof_to_truncated)?;
    let value = Versioned {
        value: value.into(),
        version: u64::from_le_bytes(version),
    };
    Ok((key.into(), value))
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
