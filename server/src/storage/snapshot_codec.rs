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
//! The byte layout itself lives in the `titan-snapfile` crate (shared with
//! `titanctl snapshot verify`); this module maps the MVCC store onto it.
//! Encoding walks the (cloned, immutable) map and writes through the given
//! writer; decoding inserts pairs into a fresh map as they are read. Neither
//! holds a second full copy. Every length is checked against [`SnapshotLimits`]
//! and read incrementally, so a hostile file cannot force a large allocation.

use std::collections::BTreeMap;
use std::io::{self, Read, Write};
use std::num::NonZeroI64;
use std::sync::Arc;

use titan_snapfile::{BodyItem, CrcWriter, FileHeader, RawRecord, RecordRef};

use super::mvcc::{self, Live, MvccStore, Record};
use super::state_machine::{MemberInfo, StateMachine};
use super::value::ValueStore;
use crate::raft::{ConfState, NodeId, SnapshotMeta};

pub use titan_snapfile::{
    SNAPSHOT_END_MAGIC, SNAPSHOT_MAGIC, SNAPSHOT_VERSION, SNAPSHOT_VERSION_NO_LEASES,
    SnapshotDecodeError, SnapshotLimits,
};

// The file format's bounds are the store's own.
const _: () = assert!(titan_snapfile::DEFAULT_MAX_LEASES == mvcc::MAX_LEASES);
const _: () = assert!(titan_snapfile::MAX_LEASE_TTL_S == mvcc::MAX_LEASE_TTL_S);

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

impl SnapshotHeader {
    fn to_file(&self) -> FileHeader {
        FileHeader {
            version: self.version,
            index: self.meta.index,
            term: self.meta.term,
            key_count: self.key_count,
            voters: self.meta.conf.voters.clone(),
            learners: self.meta.conf.learners.clone(),
            members: self
                .members
                .iter()
                .map(|(id, m)| (*id, m.encode()))
                .collect(),
        }
    }

    fn from_file(f: FileHeader) -> Result<Self, SnapshotDecodeError> {
        let mut members = BTreeMap::new();
        for (id, info) in f.members {
            let info = MemberInfo::decode(&info)
                .map_err(|e| SnapshotDecodeError::Malformed(format!("header: {e}")))?;
            members.insert(id, info);
        }
        let conf = ConfState {
            voters: f.voters,
            learners: f.learners,
        };
        Ok(Self {
            meta: SnapshotMeta {
                index: f.index,
                term: f.term,
                conf,
            },
            key_count: f.key_count,
            members,
            version: f.version,
        })
    }
}

/// Encodes the header (including magic, version and header CRC).
pub fn encode_header(header: &SnapshotHeader) -> Vec<u8> {
    titan_snapfile::encode_header(&header.to_file())
}

fn record_ref<'a>(r: &Record, value: Option<&'a Arc<[u8]>>) -> RecordRef<'a> {
    let (create_revision, version, lease) = match &r.live {
        Some(l) => (l.create_revision, l.version.get(), l.lease),
        None => (0, 0, 0),
    };
    RecordRef {
        mod_revision: r.mod_revision,
        value: value.map(|v| &v[..]),
        create_revision,
        version,
        lease,
    }
}

fn record_from_raw(
    key: &[u8],
    r: RawRecord,
    values: &ValueStore,
) -> Result<Record, SnapshotDecodeError> {
    let live = match r.live {
        None => None,
        Some(l) => Some(Live {
            // The decoder refuses versions below 1; this only types it.
            version: NonZeroI64::new(l.version).ok_or_else(|| {
                SnapshotDecodeError::Malformed("a live record with version 0".into())
            })?,
            value: values.store_vec(key, l.value),
            create_revision: l.create_revision,
            lease: l.lease,
        }),
    };
    Ok(Record {
        mod_revision: r.mod_revision,
        live,
    })
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
    let mut body = CrcWriter::new(&mut *w);
    let kv = sm.kv();
    let mut bytes = header.len() as u64;
    bytes += titan_snapfile::write_revisions(&mut body, kv.revision(), kv.compact_revision())?;
    let mut values: Vec<Option<Arc<[u8]>>> = Vec::new();
    for (key, history) in kv.histories() {
        // Values in the value log are read one key history at a time.
        values.clear();
        for r in history {
            let value = r.live.as_ref().map(|l| kv.value_of(key, l)).transpose();
            values.push(value.map_err(io::Error::other)?);
        }
        let records = history
            .iter()
            .zip(&values)
            .map(|(r, v)| record_ref(r, v.as_ref()));
        bytes += titan_snapfile::write_history(&mut body, key, history.len(), records)?;
    }
    let leases: Vec<(i64, i64)> = kv.leases().map(|(id, l)| (id, l.ttl_s)).collect();
    bytes += titan_snapfile::write_leases(&mut body, &leases)?;
    Ok(bytes + body.finish()?)
}

/// Reads and validates the header only (for listing snapshots or sending
/// one to a follower).
pub fn decode_header<R: Read>(
    r: &mut R,
    limits: &SnapshotLimits,
) -> Result<SnapshotHeader, SnapshotDecodeError> {
    SnapshotHeader::from_file(titan_snapfile::decode_header(r, limits)?)
}

/// Decodes a whole snapshot stream into a state machine positioned at the
/// snapshot's index. Validates both checksums, key order and that nothing
/// follows the trailer. This is the fuzzed entry point.
pub fn decode_snapshot<R: Read>(
    r: &mut R,
    limits: &SnapshotLimits,
) -> Result<(SnapshotHeader, StateMachine), SnapshotDecodeError> {
    decode_snapshot_into(r, limits, ValueStore::in_memory())
}

/// [`decode_snapshot`], placing values with `values` (into the member's
/// value log as they are read, so the snapshot's values are never all in
/// memory at once).
pub fn decode_snapshot_into<R: Read>(
    r: &mut R,
    limits: &SnapshotLimits,
    values: ValueStore,
) -> Result<(SnapshotHeader, StateMachine), SnapshotDecodeError> {
    let mut kv = MvccStore::with_values(values);
    let header = titan_snapfile::decode_stream(r, limits, |item| absorb(&mut kv, item))?;
    titan_snapfile::expect_end(r)?;
    let header = SnapshotHeader::from_file(header)?;
    kv.attach_lease_keys();
    let sm = StateMachine::at_snapshot(header.meta.index, header.members.clone(), kv);
    Ok((header, sm))
}

/// Adds one body item to the store being rebuilt.
fn absorb(kv: &mut MvccStore, item: BodyItem) -> Result<(), SnapshotDecodeError> {
    match item {
        BodyItem::Revisions { revision, compact } => kv.set_revisions(revision, compact),
        BodyItem::Key(key, history) => {
            let values = kv.values().clone();
            let history = history
                .into_iter()
                .map(|r| record_from_raw(&key, r, &values))
                .collect::<Result<_, _>>()?;
            kv.insert_history(Arc::from(key), history);
        }
        BodyItem::Lease(id, ttl_s) => kv.insert_lease(id, ttl_s),
    }
    Ok(())
}

/// The keys, history, leases and revisions of a backup file (the
/// `Maintenance.Snapshot` format: a snapshot, zero padding, a SHA-256
/// trailer), checked whole first (see `titan_snapfile::backup::read_backup`).
/// The backup's member list is not returned: a restored cluster has its
/// own.
pub fn load_backup<R: Read + io::Seek>(
    r: &mut R,
    limits: &SnapshotLimits,
    values: ValueStore,
) -> Result<MvccStore, titan_snapfile::backup::BackupError> {
    let mut kv = MvccStore::with_values(values);
    titan_snapfile::backup::read_backup(r, limits, |item| absorb(&mut kv, item.clone()))?;
    kv.attach_lease_keys();
    Ok(kv)
}

/// Validates a whole snapshot stream without keeping its contents.
pub fn verify_snapshot<R: Read>(
    r: &mut R,
    limits: &SnapshotLimits,
) -> Result<SnapshotHeader, SnapshotDecodeError> {
    let header = titan_snapfile::decode_stream(r, limits, |_| Ok(()))?;
    titan_snapfile::expect_end(r)?;
    SnapshotHeader::from_file(header)
}
