//! The node's adapter over the storage layer: maps node-level types
//! (`WriteOp`, `Member`, `KvEntry`) to the storage crate's (`Command`,
//! `MemberInfo`, `Versioned`), boots storage, and wraps the snapshot store
//! with what the runtime needs (newest file, async background writes).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;

use super::env::NodeEnv;
use super::{Header, KvEntry, Member, NodeError, SnapshotInfo, WriteOp, WriteResult};
use crate::config::Config;
use crate::metrics::Metrics;
use crate::raft::{Entry, NodeId, SnapshotMeta};
use crate::storage::mvcc::MvccError;
use crate::storage::{
    self, ApplyError, ApplyOutcome, BootOptions, Command, MemberInfo, SnapshotFile, SnapshotStore,
    StateMachine, Wal,
};

/// A storage failure the runtime cannot recover from (the node stops).
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct StorageFailure(pub String);

impl StorageFailure {
    /// Wraps any error text.
    pub fn other(e: impl ToString) -> Self {
        StorageFailure(e.to_string())
    }
}

impl From<storage::WalError> for StorageFailure {
    fn from(e: storage::WalError) -> Self {
        StorageFailure(e.to_string())
    }
}

impl From<storage::SnapshotError> for StorageFailure {
    fn from(e: storage::SnapshotError) -> Self {
        StorageFailure(e.to_string())
    }
}

/// Encodes a client write as a Normal entry payload.
pub fn encode_write(op: &WriteOp) -> Vec<u8> {
    let cmd = match op {
        WriteOp::Put { key, value, cond } => Command::Put {
            key: key.to_vec(),
            value: value.to_vec(),
            cond: *cond,
        },
        WriteOp::Delete { key, cond } => Command::Delete {
            key: key.to_vec(),
            cond: *cond,
        },
        WriteOp::Txn(t) => return Command::encode_txn(t),
        WriteOp::Compact(rev) => Command::Compact(*rev),
        WriteOp::LeaseGrant { id, ttl_s } => Command::LeaseGrant {
            id: *id,
            ttl_s: *ttl_s,
        },
        WriteOp::LeaseRevoke(id) => Command::LeaseRevoke(*id),
    };
    cmd.encode()
}

/// Applies one entry; for Normal entries returns the write's result (the
/// caller fills in the header's cluster, member and term).
pub fn apply(sm: &mut StateMachine, e: &Entry) -> Result<WriteResult, NodeError> {
    let header = Header {
        revision: sm.kv().revision(),
        ..Header::default()
    };
    match sm.apply(e) {
        ApplyOutcome::Write(w) => Ok(WriteResult {
            succeeded: w.succeeded,
            version: w.version,
            existed: w.existed,
            header: Header {
                revision: w.revision,
                ..header
            },
            txn: w.txn,
            lease: w.lease,
        }),
        ApplyOutcome::Rejected(ApplyError::Mvcc(err)) => Err(NodeError::Mvcc(err)),
        ApplyOutcome::Rejected(err) => Err(NodeError::Invalid(err.to_string())),
        ApplyOutcome::Noop | ApplyOutcome::ConfChange(_) => Ok(WriteResult {
            succeeded: true,
            version: e.index,
            existed: false,
            header,
            txn: None,
            lease: None,
        }),
    }
}

/// Reads one key. The value is shared with the map, not copied inside the
/// runtime task.
pub fn get(sm: &StateMachine, key: &[u8]) -> Result<Option<KvEntry>, MvccError> {
    Ok(sm.get(key)?.map(|v| KvEntry {
        key: Bytes::copy_from_slice(key),
        value: Bytes::from_owner(v.value.clone()),
        version: v.version,
    }))
}

/// Reads `[start, end)` (empty end = unbounded), at most `limit` keys and
/// about `max_bytes` of keys plus values (always at least one pair), and
/// whether more matched. Values are shared with the map, not copied, so the
/// runtime task spends time only on the pairs it returns.
pub fn range(
    sm: &StateMachine,
    start: &[u8],
    end: &[u8],
    (limit, max_bytes): (usize, usize),
) -> Result<(Vec<KvEntry>, bool), MvccError> {
    let end = (!end.is_empty()).then_some(end);
    let found = sm.range(start, end, limit.saturating_add(1))?;
    let mut kvs = Vec::with_capacity(found.len().min(limit));
    let mut bytes = 0usize;
    for (k, v) in &found {
        bytes = bytes.saturating_add(k.len() + v.value.len());
        if kvs.len() == limit || (!kvs.is_empty() && bytes > max_bytes) {
            return Ok((kvs, true));
        }
        kvs.push(KvEntry {
            key: Bytes::copy_from_slice(k),
            value: Bytes::from_owner(v.value.clone()),
            version: v.version,
        });
    }
    Ok((kvs, false))
}

/// The member directory as node-level members.
pub fn directory(sm: &StateMachine) -> BTreeMap<NodeId, Member> {
    sm.members()
        .iter()
        .map(|(id, m)| (*id, member_from_info(*id, m)))
        .collect()
}

fn member_from_info(id: NodeId, m: &MemberInfo) -> Member {
    Member {
        id,
        name: m.name.clone(),
        peer_addr: m.peer_addr.clone(),
        client_addr: m.client_addr.clone(),
        grpc_addr: m.grpc_addr.clone(),
    }
}

/// Encodes a member as a ConfChange context.
pub fn encode_member(m: &Member) -> Vec<u8> {
    MemberInfo {
        name: m.name.clone(),
        peer_addr: m.peer_addr.clone(),
        client_addr: m.client_addr.clone(),
        grpc_addr: m.grpc_addr.clone(),
    }
    .encode()
}

/// The snapshot directory plus what the runtime remembers about it.
pub struct SnapshotFiles {
    /// The storage layer's store (cheap to clone).
    pub store: SnapshotStore,
    /// Newest file written or installed.
    latest: Option<(SnapshotFile, SnapshotInfo)>,
}

fn info_for(file: &SnapshotFile) -> SnapshotInfo {
    let md = std::fs::metadata(&file.path).ok();
    let unix_ms = md
        .as_ref()
        .and_then(|m| m.modified().ok())
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    SnapshotInfo {
        index: file.index,
        term: file.term,
        unix_ms,
        size_bytes: md.map(|m| m.len()).unwrap_or(0),
    }
}

impl SnapshotFiles {
    /// Wraps the store, finding the newest file on disk.
    pub fn new(store: SnapshotStore) -> Self {
        let latest = store
            .list()
            .ok()
            .and_then(|l| l.into_iter().next())
            .map(|f| {
                let info = info_for(&f);
                (f, info)
            });
        SnapshotFiles { store, latest }
    }

    /// Newest snapshot's description.
    pub fn latest_info(&self) -> Option<SnapshotInfo> {
        self.latest.as_ref().map(|(_, i)| *i)
    }

    /// Newest snapshot's file.
    pub fn latest_path(&self) -> Option<PathBuf> {
        self.latest.as_ref().map(|(f, _)| f.path.clone())
    }

    /// Records a newly written or installed file.
    pub fn set_latest(&mut self, file: SnapshotFile) -> SnapshotInfo {
        let info = info_for(&file);
        self.latest = Some((file, info));
        info
    }
}

/// Writes a snapshot of an O(1) copy of `sm` as blocking work.
pub fn start_snapshot(
    blocking: &super::env::Blocking,
    files: &SnapshotFiles,
    sm: &StateMachine,
    meta: SnapshotMeta,
) -> impl Future<Output = Result<(SnapshotMeta, SnapshotFile), String>> + Send + 'static {
    let store = files.store.clone();
    let view = sm.snapshot_view();
    let job = blocking.start(move || store.write(&meta, &view).map(|f| (meta, f)));
    async move { job.join().await?.map_err(|e| e.to_string()) }
}

/// WAL segment count as a gauge value.
pub fn wal_segments(wal: &Wal) -> i64 {
    i64::try_from(wal.stats().segment_count).unwrap_or(i64::MAX)
}

/// What storage recovered at boot.
pub struct Booted {
    /// The open WAL.
    pub wal: Arc<Wal>,
    /// Snapshot files.
    pub files: SnapshotFiles,
    /// Recovered state.
    pub sm: StateMachine,
    /// The newest snapshot's meta (default if none).
    pub snapshot_meta: SnapshotMeta,
    /// Recovered hard state.
    pub hard_state: crate::raft::HardState,
    /// Log entries after the snapshot.
    pub entries: Vec<Entry>,
    /// Last applied index.
    pub applied: u64,
}

impl Booted {
    /// True for a brand-new data dir (no log, no snapshot, no vote).
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty() && self.snapshot_meta.index == 0 && self.hard_state.term == 0
    }
}

/// Opens the WAL (over the environment's file layer) and snapshots under
/// the data dir and replays them.
pub fn boot(cfg: &Config, metrics: &Arc<Metrics>, env: &NodeEnv) -> Result<Booted, String> {
    let mut opts = BootOptions::default();
    if let Some(fs) = &env.wal_fs {
        opts.wal.fs = fs.clone();
    }
    if let Some(bytes) = env.wal_segment_bytes {
        opts.wal.segment_bytes = bytes;
    }
    let m = metrics.clone();
    opts.wal.fsync_observer = Some(Arc::new(move |d| {
        m.wal_fsync_seconds.observe(d.as_secs_f64())
    }));
    opts.wal.compact_margin_entries = env.log_margin_entries();
    opts.snapshot.max_install_bytes = cfg.max_snapshot_bytes;
    if let Some(threshold) = cfg.value_log_threshold {
        let dir = cfg.data_dir.join(storage::boot::VLOG_DIR);
        let log = storage::vlog::ValueLog::open(&dir, env.value_log().file_bytes)
            .map_err(|e| format!("value log {}: {e}", dir.display()))?;
        let threshold = usize::try_from(threshold).unwrap_or(usize::MAX);
        opts.snapshot.values = storage::value::ValueStore::logged(log, threshold);
    }
    let b = storage::boot(&cfg.data_dir, opts).map_err(|e| e.to_string())?;
    if b.dropped_tail_bytes > 0 {
        tracing::warn!(bytes = b.dropped_tail_bytes, "truncated a torn WAL tail");
    }
    metrics.wal_segments.set(wal_segments(&b.wal));
    Ok(Booted {
        wal: Arc::new(b.wal),
        files: SnapshotFiles::new(b.snapshots),
        sm: b.state_machine,
        snapshot_meta: b.snapshot_meta,
        hard_state: b.hard_state,
        entries: b.entries,
        applied: b.applied_index,
    })
}

/// The bootstrap log of `members` (one AddLearner + Promote pair per
/// member, as the core defines them) and its hard state.
fn bootstrap_log(members: &[Member]) -> (Vec<Entry>, crate::raft::HardState) {
    let voters: Vec<(NodeId, Vec<u8>)> = members.iter().map(|m| (m.id, encode_member(m))).collect();
    crate::raft::bootstrap_entries(&voters)
}

/// Makes the initial configuration durable: the bootstrap entries and hard
/// state. Entries a restored snapshot already covers stay only in the WAL.
pub fn write_bootstrap(booted: &mut Booted, members: &[Member]) -> Result<(), String> {
    let (entries, mut hs) = bootstrap_log(members);
    booted
        .wal
        .append(&entries, Some(hs))
        .map_err(|e| e.to_string())?;
    let covered = booted.snapshot_meta.index;
    booted.entries = entries.into_iter().filter(|e| e.index > covered).collect();
    hs.commit = hs.commit.max(covered);
    booted.hard_state = hs;
    Ok(())
}

/// Seeds a bootstrapping member with a backup's keys, history, leases and
/// revision; the member list is the new cluster's, never the backup's. The
/// state after the bootstrap entries plus the backup is written (atomically)
/// as a snapshot at the last bootstrap index before anything reaches the
/// WAL, so every member restored from the same file with the same peers
/// starts from the identical state, and a crash before the snapshot is
/// published leaves an empty data dir that restores again.
pub fn restore_backup(booted: &mut Booted, members: &[Member], path: &Path) -> Result<(), String> {
    let limits = storage::SnapshotLimits::default();
    let kv = std::fs::File::open(path)
        .map_err(|e| e.to_string())
        .and_then(|f| {
            let mut r = std::io::BufReader::with_capacity(1 << 20, f);
            let values = booted.sm.kv().values().clone();
            storage::snapshot_codec::load_backup(&mut r, &limits, values).map_err(|e| e.to_string())
        })
        .map_err(|e| format!("--restore-from {}: {e}", path.display()))?;
    let (entries, _) = bootstrap_log(members);
    let mut directory = StateMachine::new();
    for e in &entries {
        if let ApplyOutcome::Rejected(err) = directory.apply(e) {
            return Err(format!("bootstrap entry {} did not apply: {err}", e.index));
        }
    }
    let last = entries.last().ok_or("no initial members to restore into")?;
    let conf = crate::raft::ConfState {
        voters: members.iter().map(|m| m.id).collect(),
        learners: Default::default(),
    };
    let meta = SnapshotMeta {
        index: last.index,
        term: last.term,
        conf,
    };
    let sm = StateMachine::at_snapshot(last.index, directory.members().clone(), kv);
    let file = booted
        .files
        .store
        .write(&meta, &sm)
        .map_err(|e| e.to_string())?;
    booted.files.set_latest(file);
    booted.sm = sm;
    booted.snapshot_meta = meta;
    booted.applied = last.index;
    Ok(())
}

/// Unix ms now (for logs and status).
pub fn now_unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::raft::EntryKind;
    use crate::storage::Condition;

    fn sm_with(values: &[(&str, usize)]) -> StateMachine {
        let mut sm = StateMachine::new();
        for (i, (key, len)) in values.iter().enumerate() {
            let op = WriteOp::Put {
                key: Bytes::copy_from_slice(key.as_bytes()),
                value: Bytes::from(vec![b'v'; *len]),
                cond: Condition::None,
            };
            let e = Entry {
                index: i as u64 + 1,
                term: 1,
                kind: EntryKind::Normal,
                data: encode_write(&op),
            };
            apply(&mut sm, &e).expect("put applies");
        }
        sm
    }

    #[test]
    fn range_stops_at_its_byte_budget_and_reports_more() {
        let sm = sm_with(&[("a", 400), ("b", 400), ("c", 400)]);
        let (kvs, more) = range(&sm, b"", b"", (100, 1000)).unwrap();
        assert_eq!(kvs.len(), 2, "two pairs of 401 bytes fit 1000");
        assert!(more);
        let (kvs, more) = range(&sm, b"", b"", (100, 10_000)).unwrap();
        assert_eq!((kvs.len(), more), (3, false));
    }

    #[test]
    fn range_returns_one_oversize_pair_rather_than_nothing() {
        let sm = sm_with(&[("a", 5000), ("b", 1)]);
        let (kvs, more) = range(&sm, b"", b"", (100, 10)).unwrap();
        assert_eq!((kvs.len(), more), (1, true));
        assert_eq!(kvs[0].value.len(), 5000);
    }

    #[test]
    fn range_limit_still_counts_keys() {
        let sm = sm_with(&[("a", 1), ("b", 1), ("c", 1)]);
        assert!(range(&sm, b"", b"", (2, usize::MAX)).unwrap().1);
        assert!(!range(&sm, b"b", b"", (2, usize::MAX)).unwrap().1);
    }
}
