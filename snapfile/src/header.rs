//! The snapshot header: magic, format version, index/term/membership and
//! the member directory (opaque `MemberInfo` bytes, decoded by the server),
//! guarded by its own CRC.

use std::collections::BTreeSet;
use std::io::Read;

use crate::{
    SNAPSHOT_MAGIC, SNAPSHOT_VERSION, SNAPSHOT_VERSION_NO_LEASES, SnapshotDecodeError,
    SnapshotLimits, eof_to_truncated,
};

/// The header as stored.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct FileHeader {
    /// Format version the file was written in.
    pub version: u32,
    /// Last Raft index the snapshot covers.
    pub index: u64,
    /// Term of that index.
    pub term: u64,
    /// Number of key histories in the body.
    pub key_count: u64,
    /// Voters as of `index`.
    pub voters: BTreeSet<u64>,
    /// Learners as of `index`.
    pub learners: BTreeSet<u64>,
    /// Member directory: id and encoded `MemberInfo`, in stored order.
    pub members: Vec<(u64, Vec<u8>)>,
}

fn put_id_set(out: &mut Vec<u8>, ids: &BTreeSet<u64>) {
    out.extend_from_slice(&(ids.len() as u32).to_le_bytes());
    for id in ids {
        out.extend_from_slice(&id.to_le_bytes());
    }
}

/// Encodes the header (magic, [`SNAPSHOT_VERSION`] whatever `header.version`
/// says, body and CRC).
pub fn encode_header(header: &FileHeader) -> Vec<u8> {
    encode_header_as(header, SNAPSHOT_VERSION)
}

/// Encodes the header stamped with `version` (tests write old and future
/// versions with it).
pub fn encode_header_as(header: &FileHeader, version: u32) -> Vec<u8> {
    let mut body = Vec::new();
    body.extend_from_slice(&header.index.to_le_bytes());
    body.extend_from_slice(&header.term.to_le_bytes());
    body.extend_from_slice(&header.key_count.to_le_bytes());
    put_id_set(&mut body, &header.voters);
    put_id_set(&mut body, &header.learners);
    body.extend_from_slice(&(header.members.len() as u32).to_le_bytes());
    for (id, info) in &header.members {
        body.extend_from_slice(&id.to_le_bytes());
        body.extend_from_slice(&(info.len() as u32).to_le_bytes());
        body.extend_from_slice(info);
    }
    let mut out = Vec::with_capacity(body.len() + 20);
    out.extend_from_slice(SNAPSHOT_MAGIC);
    out.extend_from_slice(&version.to_le_bytes());
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    out.extend_from_slice(&body);
    let crc = crc32fast::hash(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

/// Reads and validates the header only.
pub fn decode_header<R: Read>(
    r: &mut R,
    limits: &SnapshotLimits,
) -> Result<FileHeader, SnapshotDecodeError> {
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
    let mut body = Vec::new();
    r.by_ref().take(header_len.into()).read_to_end(&mut body)?;
    if body.len() < header_len as usize {
        return Err(SnapshotDecodeError::Truncated);
    }
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
    let mut header = parse_header_body(&body).ok_or_else(|| {
        SnapshotDecodeError::Malformed("header: truncated or trailing bytes".into())
    })?;
    header.version = version;
    Ok(header)
}

/// A bounds-checked cursor over a byte slice.
struct Cursor<'a>(&'a [u8]);

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }
    fn u32(&mut self) -> Option<u32> {
        let b = self.take(4)?;
        Some(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn u64(&mut self) -> Option<u64> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Some(u64::from_le_bytes(a))
    }
    fn id_set(&mut self) -> Option<BTreeSet<u64>> {
        let n = self.u32()?;
        let mut ids = BTreeSet::new();
        for _ in 0..n {
            ids.insert(self.u64()?);
        }
        Some(ids)
    }
}

fn parse_header_body(body: &[u8]) -> Option<FileHeader> {
    let mut r = Cursor(body);
    let (index, term, key_count) = (r.u64()?, r.u64()?, r.u64()?);
    let voters = r.id_set()?;
    let learners = r.id_set()?;
    let n = r.u32()?;
    let mut members = Vec::new();
    for _ in 0..n {
        let id = r.u64()?;
        let len = r.u32()? as usize;
        members.push((id, r.take(len)?.to_vec()));
    }
    if !r.0.is_empty() {
        return None;
    }
    Some(FileHeader {
        version: SNAPSHOT_VERSION,
        index,
        term,
        key_count,
        voters,
        learners,
        members,
    })
}
