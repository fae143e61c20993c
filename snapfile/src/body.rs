//! The snapshot body: the store's revisions, key histories and the lease
//! table.
//!
//! ```text
//! revision i64 | compact_revision i64
//! key_count × (key_len u32 | key | n u32 | n × record)
//! record: mod_revision i64 | 0 (tombstone)
//!                          | 1 | create i64 | version i64 | lease i64 | value_len u32 | value
//! then (version 3 on): lease_count u32 | lease_count × (id i64 | ttl_s i64),
//! ids strictly ascending; attached keys are rebuilt from the live keys.
//! ```

use std::io::{self, Read, Write};

use crate::{MAX_LEASE_TTL_S, SnapshotDecodeError, eof_to_truncated};

/// A live key's state after a put, as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawLive {
    /// Value bytes.
    pub value: Vec<u8>,
    /// First revision of this generation.
    pub create_revision: i64,
    /// Writes in this generation.
    pub version: i64,
    /// Attached lease (0: none).
    pub lease: i64,
}

/// One write to a key: a put (`Some`) or a tombstone (`None`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawRecord {
    /// Revision of the write.
    pub mod_revision: i64,
    /// The key's state after the write; `None` = deleted.
    pub live: Option<RawLive>,
}

/// A record to write, borrowed from the caller's store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordRef<'a> {
    /// Revision of the write.
    pub mod_revision: i64,
    /// Value; `None` = tombstone (the other fields are then ignored).
    pub value: Option<&'a [u8]>,
    /// First revision of this generation.
    pub create_revision: i64,
    /// Writes in this generation.
    pub version: i64,
    /// Attached lease.
    pub lease: i64,
}

/// Writes the store's revision state (the body preamble).
pub fn write_revisions<W: Write>(w: &mut W, revision: i64, compact: i64) -> io::Result<u64> {
    w.write_all(&revision.to_le_bytes())?;
    w.write_all(&compact.to_le_bytes())?;
    Ok(16)
}

/// Reads the body preamble.
pub fn read_revisions<R: Read>(r: &mut R) -> io::Result<(i64, i64)> {
    Ok((read_i64(r)?, read_i64(r)?))
}

/// Writes one key's history of `len` records; returns the bytes written.
pub fn write_history<'a, W, I>(w: &mut W, key: &[u8], len: usize, records: I) -> io::Result<u64>
where
    W: Write,
    I: IntoIterator<Item = RecordRef<'a>>,
{
    w.write_all(&(key.len() as u32).to_le_bytes())?;
    w.write_all(key)?;
    w.write_all(&(len as u32).to_le_bytes())?;
    let mut n = 8 + key.len() as u64;
    for rec in records {
        w.write_all(&rec.mod_revision.to_le_bytes())?;
        let Some(value) = rec.value else {
            w.write_all(&[0])?;
            n += 9;
            continue;
        };
        w.write_all(&[1])?;
        for v in [rec.create_revision, rec.version, rec.lease] {
            w.write_all(&v.to_le_bytes())?;
        }
        w.write_all(&(value.len() as u32).to_le_bytes())?;
        w.write_all(value)?;
        n += 37 + value.len() as u64;
    }
    Ok(n)
}

/// Writes the lease table (after every key history); returns the bytes
/// written.
pub fn write_leases<W: Write>(w: &mut W, leases: &[(i64, i64)]) -> io::Result<u64> {
    w.write_all(&(leases.len() as u32).to_le_bytes())?;
    for (id, ttl_s) in leases {
        w.write_all(&id.to_le_bytes())?;
        w.write_all(&ttl_s.to_le_bytes())?;
    }
    Ok(4 + 16 * leases.len() as u64)
}

/// Reads the lease table written by [`write_leases`]: at most `max_leases`
/// entries, ids strictly ascending, TTLs within etcd's bounds.
pub fn read_leases<R: Read>(
    r: &mut R,
    max_leases: usize,
) -> Result<Vec<(i64, i64)>, SnapshotDecodeError> {
    let n = read_u32(r).map_err(eof_to_truncated)?;
    if n as usize > max_leases {
        return Err(SnapshotDecodeError::TooLarge {
            what: "lease table",
            len: n.into(),
            max: max_leases as u64,
        });
    }
    let mut out: Vec<(i64, i64)> = Vec::new();
    for _ in 0..n {
        let (id, ttl_s) = (read_i64(r), read_i64(r));
        let (id, ttl_s) = (
            id.map_err(eof_to_truncated)?,
            ttl_s.map_err(eof_to_truncated)?,
        );
        if id == 0 || out.last().is_some_and(|(prev, _)| *prev >= id) {
            return Err(malformed("lease ids out of order"));
        }
        if !(0..=MAX_LEASE_TTL_S).contains(&ttl_s) {
            return Err(malformed("lease ttl out of range"));
        }
        out.push((id, ttl_s));
    }
    Ok(out)
}

fn malformed(what: &str) -> SnapshotDecodeError {
    SnapshotDecodeError::Malformed(format!("key history or lease table: {what}"))
}

fn read_i64<R: Read>(r: &mut R) -> io::Result<i64> {
    let mut b = [0u8; 8];
    r.read_exact(&mut b)?;
    Ok(i64::from_le_bytes(b))
}

fn read_u32<R: Read>(r: &mut R) -> io::Result<u32> {
    let mut b = [0u8; 4];
    r.read_exact(&mut b)?;
    Ok(u32::from_le_bytes(b))
}

/// Reads `len ≤ max` bytes, growing the buffer only as data arrives.
fn read_field<R: Read>(
    r: &mut R,
    what: &'static str,
    max: u32,
) -> Result<Vec<u8>, SnapshotDecodeError> {
    let len = read_u32(r).map_err(eof_to_truncated)?;
    if len > max {
        return Err(SnapshotDecodeError::TooLarge {
            what,
            len: len.into(),
            max: max.into(),
        });
    }
    let mut buf = Vec::new();
    r.by_ref().take(len.into()).read_to_end(&mut buf)?;
    if buf.len() < len as usize {
        return Err(SnapshotDecodeError::Truncated);
    }
    Ok(buf)
}

/// Reads one key's history written by [`write_history`]: at least one
/// record, revisions strictly ascending.
pub fn read_history<R: Read>(
    r: &mut R,
    max_key_bytes: u32,
    max_value_bytes: u32,
) -> Result<(Vec<u8>, Vec<RawRecord>), SnapshotDecodeError> {
    let key = read_field(r, "key", max_key_bytes)?;
    let n = read_u32(r).map_err(eof_to_truncated)?;
    if n == 0 {
        return Err(malformed("empty history"));
    }
    let mut history = Vec::new();
    let mut prev_rev = i64::MIN;
    for _ in 0..n {
        let mod_revision = read_i64(r).map_err(eof_to_truncated)?;
        if mod_revision <= prev_rev {
            return Err(malformed("revisions out of order"));
        }
        prev_rev = mod_revision;
        history.push(RawRecord {
            mod_revision,
            live: read_live(r, max_value_bytes)?,
        });
    }
    Ok((key, history))
}

fn read_live<R: Read>(
    r: &mut R,
    max_value_bytes: u32,
) -> Result<Option<RawLive>, SnapshotDecodeError> {
    let mut tag = [0u8; 1];
    r.read_exact(&mut tag).map_err(eof_to_truncated)?;
    match tag[0] {
        0 => Ok(None),
        1 => {
            let mut v = [0i64; 3];
            for x in &mut v {
                *x = read_i64(r).map_err(eof_to_truncated)?;
            }
            if v[1] < 1 {
                return Err(malformed("a live record with a version below 1"));
            }
            let value = read_field(r, "value", max_value_bytes)?;
            Ok(Some(RawLive {
                value,
                create_revision: v[0],
                version: v[1],
                lease: v[2],
            }))
        }
        _ => Err(malformed("unknown record tag")),
    }
}
