//! The MVCC key-value store (etcd's data model), pure and deterministic.
//!
//! - A cluster-wide `revision` starts at 1 and advances by one per committed
//!   transaction that changed at least one key (a txn that only reads, or a
//!   delete that matched nothing, does not advance it).
//! - Each key has a history: records `(mod_revision, Some(live) | None)`,
//!   where `None` is a tombstone. A key's *generation* runs from a put after
//!   a tombstone (or the first put) to the next tombstone: `create_revision`
//!   is the generation's first revision, `version` counts its writes.
//! - Reads at a past revision pick, per key, the newest record at or below
//!   that revision. Revisions below `compact_revision` are gone.
//! - `compact(rev)` keeps, per key, the newest record at or below `rev` (or
//!   nothing, when that record is a tombstone) and every later record.
//! - History is bounded: [`AUTO_COMPACT_RETENTION_REVISIONS`] and
//!   [`MAX_HISTORY_BYTES`] trigger a deterministic compaction on apply, so
//!   every replica compacts at the same revision. [`MvccStore::stats`]
//!   reports the history held.
//! - Leases (etcd's Lease service) are replicated state here too: each
//!   lease has an id, its granted TTL and the live keys attached to it.
//!   [`MvccStore::lease_grant`] and [`MvccStore::lease_revoke`] run from log
//!   entries; a revoke deletes every attached key in one revision. Deadlines
//!   are not replicated: the leader keeps them (`node::lease_clock`).
//!
//! The index is a persistent map ([`imbl::OrdMap`]) of persistent vectors:
//! cloning the store for a snapshot is O(1). Values are kept where the
//! store's [`ValueStore`] puts them: in memory, or in the value log
//! (`storage::vlog`) above a size threshold; reads fetch them, so every
//! read that returns values can fail with [`MvccError::ValueUnreadable`].

use std::num::NonZeroI64;
use std::ops::Bound;
use std::sync::Arc;

use imbl::{OrdMap, OrdSet, Vector};

use super::value::{Value, ValueStore};
use super::vlog::ValueRef;

/// Revisions kept by the automatic compaction: once the store is this many
/// revisions past its compaction point twice over, it compacts to
/// `revision - AUTO_COMPACT_RETENTION_REVISIONS`.
pub const AUTO_COMPACT_RETENTION_REVISIONS: i64 = 10_000;
/// Value bytes held in superseded records before an automatic compaction
/// halves the retained revision window.
pub const MAX_HISTORY_BYTES: u64 = 256 << 20;
/// A generation's first write.
pub const FIRST_VERSION: NonZeroI64 = NonZeroI64::new(1).expect("1 is not 0");
/// Deepest nesting of a txn inside a txn.
pub const MAX_TXN_DEPTH: usize = 4;
/// Largest lease TTL granted (etcd's `MaxLeaseTTL`).
pub const MAX_LEASE_TTL_S: i64 = 9_000_000_000;
/// Most leases the store holds at once; a grant beyond it is refused, so
/// lease state (and the leader's deadline table) stays bounded.
pub const MAX_LEASES: usize = 1_000_000;

/// One lease: its granted TTL and the live keys attached to it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Lease {
    /// TTL granted (seconds, already raised to the minimum by the proposer).
    pub ttl_s: i64,
    /// Live keys whose `lease` is this lease.
    pub keys: OrdSet<Arc<[u8]>>,
}

/// A granted lease as a grant reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LeaseGrant {
    /// Lease id.
    pub id: i64,
    /// Granted TTL in seconds.
    pub ttl_s: i64,
}

/// A key-value pair as etcd clients see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyValue {
    /// Key bytes.
    pub key: Arc<[u8]>,
    /// Value bytes (empty for keys-only reads).
    pub value: Arc<[u8]>,
    /// Revision that created the key's current generation.
    pub create_revision: i64,
    /// Revision of the key's last write.
    pub mod_revision: i64,
    /// Writes since creation (1 after the first put).
    pub version: i64,
    /// Attached lease (0 = none).
    pub lease: i64,
}

/// A live key's state at one record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Live {
    /// The value, in memory or in the value log (see `storage::value`).
    pub value: Value,
    /// First revision of this generation.
    pub create_revision: i64,
    /// Writes in this generation (never 0, which gives `Option<Live>` its
    /// niche).
    pub version: NonZeroI64,
    /// Attached lease.
    pub lease: i64,
}

/// One write to a key: a put (`Some`) or a tombstone (`None`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Revision of the write.
    pub mod_revision: i64,
    /// The key's state after the write; `None` = deleted.
    pub live: Option<Live>,
}

// `imbl::Vector` keeps a history inline (no heap chunk) only while its
// records fit its inline array: at 48 bytes one record does. At 56 every
// key's history took a 64-record chunk (3.5 KiB a key, measured with
// heaptrack after a snapshot load).
const _: () = assert!(std::mem::size_of::<Record>() <= 48);

/// Why an MVCC request failed; `Display` is etcd's message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum MvccError {
    /// The revision asked for was compacted away.
    #[error("etcdserver: mvcc: required revision has been compacted")]
    Compacted,
    /// The revision asked for is newer than the store.
    #[error("etcdserver: mvcc: required revision is a future revision")]
    FutureRevision,
    /// `ignore_value`/`ignore_lease` on a key that does not exist.
    #[error("etcdserver: key not found")]
    KeyNotFound,
    /// A lease id that no lease has.
    #[error("etcdserver: requested lease not found")]
    LeaseNotFound,
    /// Txn nesting deeper than [`MAX_TXN_DEPTH`].
    #[error("etcdserver: txn nested too deeply")]
    TxnTooDeep,
    /// A grant for an id that a lease already has.
    #[error("etcdserver: lease already exists")]
    LeaseExists,
    /// A grant with a TTL above [`MAX_LEASE_TTL_S`].
    #[error("etcdserver: too large lease TTL")]
    LeaseTtlTooLarge,
    /// A grant while [`MAX_LEASES`] leases exist.
    #[error("etcdserver: too many leases")]
    TooManyLeases,
    /// A value in the value log could not be read back (the file and
    /// offset are in the member's log). Never a client's fault; while
    /// applying, the member stops rather than diverge.
    #[error("etcdserver: value log read failed")]
    ValueUnreadable,
}

/// Sort order of a range.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SortOrder {
    /// Key order, as stored.
    #[default]
    None,
    /// Lowest target first.
    Ascend,
    /// Highest target first.
    Descend,
}

/// Field a range sorts by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SortTarget {
    /// The key.
    #[default]
    Key,
    /// `version`.
    Version,
    /// `create_revision`.
    Create,
    /// `mod_revision`.
    Mod,
    /// The value bytes.
    Value,
}

/// etcd's RangeRequest (minus `serializable`, which the node handles).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RangeRequest {
    /// First key.
    pub key: Vec<u8>,
    /// Empty: `key` only; `[0]`: every key ≥ `key`; else `[key, range_end)`.
    pub range_end: Vec<u8>,
    /// Most keys returned (0 = no limit).
    pub limit: i64,
    /// Revision to read at (≤ 0 = newest).
    pub revision: i64,
    /// Order of the results.
    pub sort_order: SortOrder,
    /// What to sort by.
    pub sort_target: SortTarget,
    /// Leave values out.
    pub keys_only: bool,
    /// Only count.
    pub count_only: bool,
    /// Filters (0 = none).
    pub min_mod_revision: i64,
    /// Filters (0 = none).
    pub max_mod_revision: i64,
    /// Filters (0 = none).
    pub min_create_revision: i64,
    /// Filters (0 = none).
    pub max_create_revision: i64,
}

/// etcd's RangeResponse (without header).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RangeResponse {
    /// Matching pairs after filters, sort and limit.
    pub kvs: Vec<KeyValue>,
    /// Whether the limit cut the result.
    pub more: bool,
    /// Keys in the range, unaffected by limit and filters.
    pub count: i64,
}

/// etcd's PutRequest.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PutRequest {
    /// Key.
    pub key: Vec<u8>,
    /// Value.
    pub value: Vec<u8>,
    /// Lease (0 = none).
    pub lease: i64,
    /// Return the previous pair.
    pub prev_kv: bool,
    /// Keep the current value (the key must exist).
    pub ignore_value: bool,
    /// Keep the current lease (the key must exist).
    pub ignore_lease: bool,
}

/// etcd's PutResponse (without header).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PutResponse {
    /// The pair before the put, when asked for and present.
    pub prev_kv: Option<KeyValue>,
}

/// etcd's DeleteRangeRequest.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DeleteRangeRequest {
    /// First key.
    pub key: Vec<u8>,
    /// Range end, as in [`RangeRequest::range_end`].
    pub range_end: Vec<u8>,
    /// Return the deleted pairs.
    pub prev_kv: bool,
}

/// etcd's DeleteRangeResponse (without header).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DeleteRangeResponse {
    /// Keys deleted.
    pub deleted: i64,
    /// The deleted pairs, when asked for.
    pub prev_kvs: Vec<KeyValue>,
}

/// One operation of a txn branch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RequestOp {
    /// A read.
    Range(RangeRequest),
    /// A put.
    Put(PutRequest),
    /// A delete.
    DeleteRange(DeleteRangeRequest),
    /// A nested txn.
    Txn(TxnRequest),
}

/// The result of one [`RequestOp`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResponseOp {
    /// For [`RequestOp::Range`].
    Range(RangeResponse),
    /// For [`RequestOp::Put`].
    Put(PutResponse),
    /// For [`RequestOp::DeleteRange`].
    DeleteRange(DeleteRangeResponse),
    /// For [`RequestOp::Txn`].
    Txn(TxnResponse),
}

/// How a compare relates the key's field to the given operand.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CompareResult {
    /// `==`.
    Equal,
    /// `>`.
    Greater,
    /// `<`.
    Less,
    /// `!=`.
    NotEqual,
}

/// The field compared and the operand.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CompareTarget {
    /// `version`.
    Version(i64),
    /// `create_revision`.
    Create(i64),
    /// `mod_revision`.
    Mod(i64),
    /// The value.
    Value(Vec<u8>),
    /// The lease.
    Lease(i64),
}

/// One guard of a txn.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Compare {
    /// The relation.
    pub result: CompareResult,
    /// Field and operand.
    pub target: CompareTarget,
    /// Key.
    pub key: Vec<u8>,
    /// Range end (every key in the range must satisfy the compare).
    pub range_end: Vec<u8>,
}

/// etcd's TxnRequest.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TxnRequest {
    /// All must hold for `success` to run.
    pub compare: Vec<Compare>,
    /// Run when every compare holds.
    pub success: Vec<RequestOp>,
    /// Run otherwise.
    pub failure: Vec<RequestOp>,
}

/// etcd's TxnResponse (without header).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TxnResponse {
    /// Whether the compares held.
    pub succeeded: bool,
    /// One response per op of the branch that ran.
    pub responses: Vec<ResponseOp>,
}

/// One change to a key, as a watcher sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// Whether the key was put (`false`: deleted).
    pub is_put: bool,
    /// After a put: the new pair. After a delete: the key with the
    /// deletion's mod_revision (other fields zero).
    pub kv: KeyValue,
    /// The pair before the change, when asked for and still in history.
    pub prev_kv: Option<KeyValue>,
}

/// Events of a range from a revision on, for watchers.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct EventBatch {
    /// Events in revision order (key order within a revision).
    pub events: Vec<Event>,
    /// Every event up to this revision is in `events` (or there was none).
    pub complete_through: i64,
}

/// What the store holds besides live keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct HistoryStats {
    /// Keys with at least one record (live or tombstoned).
    pub indexed_keys: u64,
    /// Records that are not a key's newest.
    pub history_records: u64,
    /// Value bytes in records that are not a key's newest.
    pub history_value_bytes: u64,
}

/// The MVCC store. `clone()` is O(1).
#[derive(Debug, Clone)]
pub struct MvccStore {
    /// Key → history, oldest record first; never empty.
    index: OrdMap<Arc<[u8]>, Vector<Record>>,
    /// Current revision (1 for an empty store).
    revision: i64,
    /// Reads below this revision fail (0 = never compacted).
    compact_revision: i64,
    /// Every record in the index.
    records: u64,
    /// Value bytes in superseded records.
    history_value_bytes: u64,
    /// Lease id → lease.
    leases: OrdMap<i64, Lease>,
    /// Where values are kept (memory, or the value log above a threshold).
    values: ValueStore,
}

impl Default for MvccStore {
    fn default() -> Self {
        Self::new()
    }
}

/// Key bounds of a `(key, range_end)` pair in etcd's encoding.
fn bounds<'a>(key: &'a [u8], range_end: &'a [u8]) -> (Bound<&'a [u8]>, Bound<&'a [u8]>) {
    match range_end {
        [] => (Bound::Included(key), Bound::Included(key)),
        [0] => (Bound::Included(key), Bound::Unbounded),
        end => (Bound::Included(key), Bound::Excluded(end)),
    }
}

/// Whether the bounds select nothing (imbl panics on inverted ranges).
fn empty_bounds(key: &[u8], range_end: &[u8]) -> bool {
    !matches!(range_end, [] | [0]) && range_end <= key
}

/// The record visible at `rev`: the newest one at or below it.
fn visible(history: &Vector<Record>, rev: i64) -> Option<&Record> {
    // Most reads are at the current revision: the newest record answers.
    match history.last() {
        Some(newest) if newest.mod_revision <= rev => Some(newest),
        _ => history.iter().rev().find(|r| r.mod_revision <= rev),
    }
}

/// The empty value of keys-only answers and tombstone events: one shared
/// allocation, cloned (compares and deletes build many of these).
fn empty_value() -> Arc<[u8]> {
    static EMPTY: std::sync::LazyLock<Arc<[u8]>> = std::sync::LazyLock::new(|| Arc::from([]));
    EMPTY.clone()
}

impl MvccStore {
    /// An empty store at revision 1.
    pub fn new() -> Self {
        MvccStore {
            index: OrdMap::new(),
            revision: 1,
            compact_revision: 0,
            records: 0,
            history_value_bytes: 0,
            leases: OrdMap::new(),
            values: ValueStore::in_memory(),
        }
    }

    /// An empty store at revision 1 that places values with `values` (in
    /// an epoch of its own).
    pub fn with_values(values: ValueStore) -> Self {
        MvccStore {
            values: values.next_epoch(),
            ..MvccStore::new()
        }
    }

    /// The value placement policy (and value log) of this store.
    pub fn values(&self) -> &ValueStore {
        &self.values
    }

    /// The bytes of a record's value.
    pub fn value_of(&self, key: &[u8], live: &Live) -> Result<Arc<[u8]>, MvccError> {
        self.values.read(key, &live.value).map_err(|e| {
            tracing::error!(error = %e, "a stored value could not be read");
            MvccError::ValueUnreadable
        })
    }

    /// A record as etcd clients see it; the value is read only when asked for.
    fn kv_of(
        &self,
        key: &Arc<[u8]>,
        mod_revision: i64,
        live: &Live,
        with_value: bool,
    ) -> Result<KeyValue, MvccError> {
        Ok(KeyValue {
            key: key.clone(),
            value: if with_value {
                self.value_of(key, live)?
            } else {
                empty_value()
            },
            create_revision: live.create_revision,
            mod_revision,
            version: live.version.get(),
            lease: live.lease,
        })
    }

    /// The current revision.
    pub fn revision(&self) -> i64 {
        self.revision
    }

    /// The compaction point (0 = never compacted).
    pub fn compact_revision(&self) -> i64 {
        self.compact_revision
    }

    /// History held, for metrics and `Maintenance.Status`.
    pub fn stats(&self) -> HistoryStats {
        HistoryStats {
            indexed_keys: self.index.len() as u64,
            history_records: self.records - self.index.len() as u64,
            history_value_bytes: self.history_value_bytes,
        }
    }

    /// Checks a read revision: ≤ 0 means the newest.
    pub fn resolve_revision(&self, rev: i64) -> Result<i64, MvccError> {
        match rev {
            r if r <= 0 => Ok(self.revision),
            r if r > self.revision => Err(MvccError::FutureRevision),
            r if r < self.compact_revision => Err(MvccError::Compacted),
            r => Ok(r),
        }
    }

    /// Live pairs at `rev` in the range, in key order.
    fn live_at<'a>(
        &'a self,
        key: &'a [u8],
        range_end: &'a [u8],
        rev: i64,
    ) -> impl Iterator<Item = Result<KeyValue, MvccError>> + 'a {
        self.visible_live(key, range_end, rev)
            .map(|(k, mod_rev, l)| self.kv_of(k, mod_rev, l, true))
    }

    /// Live keys in `[key, range_end)` at `rev`, by reference: counting or
    /// skipping one costs no allocation and no reference-count traffic.
    fn visible_live<'a>(
        &'a self,
        key: &'a [u8],
        range_end: &'a [u8],
        rev: i64,
    ) -> impl Iterator<Item = (&'a Arc<[u8]>, i64, &'a Live)> + 'a {
        let empty = empty_bounds(key, range_end);
        let range = (!empty).then(|| self.index.range::<_, [u8]>(bounds(key, range_end)));
        range.into_iter().flatten().filter_map(move |(k, h)| {
            let rec = visible(h, rev)?;
            rec.live.as_ref().map(|l| (k, rec.mod_revision, l))
        })
    }

    /// The live pair under `key` now.
    pub fn get(&self, key: &[u8]) -> Result<Option<KeyValue>, MvccError> {
        let Some((k, h)) = self.index.get_key_value(key) else {
            return Ok(None);
        };
        match h.last() {
            Some(Record {
                mod_revision,
                live: Some(l),
            }) => self.kv_of(k, *mod_revision, l, true).map(Some),
            _ => Ok(None),
        }
    }

    /// The `mod_revision` of the live key `key` now, without its value.
    pub fn mod_revision_of(&self, key: &[u8]) -> Option<i64> {
        let rec = self.index.get(key)?.last()?;
        rec.live.as_ref().map(|_| rec.mod_revision)
    }

    /// Every live pair now, in key order.
    pub fn iter_live(&self) -> impl Iterator<Item = Result<KeyValue, MvccError>> + '_ {
        self.live_at(&[0], &[0], self.revision)
    }

    /// Every key's history (snapshot encoding).
    pub fn histories(&self) -> impl Iterator<Item = (&Arc<[u8]>, &Vector<Record>)> {
        self.index.iter()
    }

    /// Runs a range read. `count` is every live key in the range at the
    /// revision (filters and limit aside, as in etcd). In key order, pairs
    /// past the limit are counted but never built.
    pub fn range(&self, req: &RangeRequest) -> Result<RangeResponse, MvccError> {
        let rev = self.resolve_revision(req.revision)?;
        let key_order = matches!(
            (req.sort_order, req.sort_target),
            (SortOrder::None | SortOrder::Ascend, SortTarget::Key)
        );
        let keep = match (req.count_only, key_order, usize::try_from(req.limit)) {
            (true, _, _) => 0,
            (false, true, Ok(limit)) if limit > 0 => limit.saturating_add(1),
            _ => usize::MAX,
        };
        // keys_only still reads values to sort by them (stripped below).
        let with_value = !req.keys_only || req.sort_target == SortTarget::Value;
        let mut count = 0i64;
        let mut kvs: Vec<KeyValue> = Vec::new();
        for (k, mod_rev, live) in self.visible_live(&req.key, &req.range_end, rev) {
            count += 1;
            if kvs.len() < keep && passes(req, mod_rev, live) {
                kvs.push(self.kv_of(k, mod_rev, live, with_value)?);
            }
        }
        if req.count_only {
            return Ok(RangeResponse {
                kvs,
                more: false,
                count,
            });
        }
        sort_kvs(&mut kvs, req.sort_order, req.sort_target);
        let more = req.limit > 0 && kvs.len() as i64 > req.limit;
        if more {
            kvs.truncate(req.limit as usize);
        }
        if req.keys_only && with_value {
            let empty = empty_value();
            kvs.iter_mut().for_each(|kv| kv.value = empty.clone());
        }
        Ok(RangeResponse { kvs, more, count })
    }

    /// Applies a txn atomically: all of the chosen branch, or nothing (on an
    /// error). The revision advances by one if any key changed.
    pub fn txn(&mut self, req: &TxnRequest) -> Result<TxnResponse, MvccError> {
        let mut next = self.clone();
        let write_rev = self.revision + 1;
        let mut wrote = false;
        let resp = next.run_txn(req, write_rev, &mut wrote, 0)?;
        if wrote {
            next.revision = write_rev;
            next.auto_compact();
        }
        *self = next;
        Ok(resp)
    }

    fn run_txn(
        &mut self,
        req: &TxnRequest,
        rev: i64,
        wrote: &mut bool,
        depth: usize,
    ) -> Result<TxnResponse, MvccError> {
        if depth > MAX_TXN_DEPTH {
            return Err(MvccError::TxnTooDeep);
        }
        let mut succeeded = true;
        for c in &req.compare {
            if !self.compare_holds(c)? {
                succeeded = false;
                break;
            }
        }
        let ops = if succeeded {
            &req.success
        } else {
            &req.failure
        };
        let mut responses = Vec::with_capacity(ops.len());
        for op in ops {
            responses.push(self.run_op(op, rev, wrote, depth)?);
        }
        Ok(TxnResponse {
            succeeded,
            responses,
        })
    }

    fn run_op(
        &mut self,
        op: &RequestOp,
        rev: i64,
        wrote: &mut bool,
        depth: usize,
    ) -> Result<ResponseOp, MvccError> {
        Ok(match op {
            RequestOp::Range(r) => ResponseOp::Range(self.range_in_txn(r, rev)?),
            RequestOp::Put(p) => {
                *wrote = true;
                ResponseOp::Put(self.put(p, rev)?)
            }
            RequestOp::DeleteRange(d) => {
                let resp = self.delete_range(d, rev)?;
                *wrote |= resp.deleted > 0;
                ResponseOp::DeleteRange(resp)
            }
            RequestOp::Txn(t) => ResponseOp::Txn(self.run_txn(t, rev, wrote, depth + 1)?),
        })
    }

    /// A read inside a txn sees the txn's own earlier writes (at `rev`).
    fn range_in_txn(&self, r: &RangeRequest, rev: i64) -> Result<RangeResponse, MvccError> {
        if r.revision > 0 {
            return self.range(r);
        }
        let mut at = r.clone();
        at.revision = rev;
        let mut view = self.clone();
        view.revision = rev;
        view.range(&at)
    }

    /// Whether every live key the guard names satisfies it (a missing key
    /// compares as all-zero fields, and never equal on its value). Values
    /// are read only for a value compare.
    fn compare_holds(&self, c: &Compare) -> Result<bool, MvccError> {
        let on_value = matches!(c.target, CompareTarget::Value(_));
        let mut any = false;
        for (k, mod_rev, live) in self.visible_live(&c.key, &c.range_end, i64::MAX) {
            any = true;
            if !compare_kv(c, Some(&self.kv_of(k, mod_rev, live, on_value)?)) {
                return Ok(false);
            }
        }
        Ok(any || (!on_value && compare_kv(c, None)))
    }

    fn put(&mut self, p: &PutRequest, rev: i64) -> Result<PutResponse, MvccError> {
        let key: Arc<[u8]> = Arc::from(p.key.as_slice());
        let prev = self.index.get(&key).and_then(|h| h.last()).cloned();
        let prev_live = prev.as_ref().and_then(|r| r.live.as_ref());
        if (p.ignore_value || p.ignore_lease) && prev_live.is_none() {
            return Err(MvccError::KeyNotFound);
        }
        let value = match (p.ignore_value, prev_live) {
            (true, Some(l)) => l.value.clone(),
            _ => self.values.store(&key, &p.value),
        };
        let lease = match (p.ignore_lease, prev_live) {
            (true, Some(l)) => l.lease,
            _ => p.lease,
        };
        if lease != 0 && !self.leases.contains_key(&lease) {
            return Err(MvccError::LeaseNotFound);
        }
        self.move_lease(&key, prev_live.map_or(0, |l| l.lease), lease);
        let live = Live {
            value,
            create_revision: prev_live.map_or(rev, |l| l.create_revision),
            version: prev_live.map_or(FIRST_VERSION, |l| {
                NonZeroI64::new(l.version.get().saturating_add(1)).unwrap_or(NonZeroI64::MAX)
            }),
            lease,
        };
        let prev_kv = match (&prev, p.prev_kv) {
            (Some(r), true) => r
                .live
                .as_ref()
                .map(|l| self.kv_of(&key, r.mod_revision, l, true))
                .transpose()?,
            _ => None,
        };
        self.push_record(key, rev, Some(live));
        Ok(PutResponse { prev_kv })
    }

    fn delete_range(
        &mut self,
        d: &DeleteRangeRequest,
        rev: i64,
    ) -> Result<DeleteRangeResponse, MvccError> {
        // Values are read only when the caller wants the deleted pairs.
        let doomed: Vec<KeyValue> = self
            .visible_live(&d.key, &d.range_end, i64::MAX)
            .map(|(k, mod_rev, l)| self.kv_of(k, mod_rev, l, d.prev_kv))
            .collect::<Result<_, _>>()?;
        for kv in &doomed {
            self.move_lease(&kv.key, kv.lease, 0);
            self.push_record(kv.key.clone(), rev, None);
        }
        Ok(DeleteRangeResponse {
            deleted: doomed.len() as i64,
            prev_kvs: if d.prev_kv { doomed } else { Vec::new() },
        })
    }

    /// Detaches `key` from lease `from` and attaches it to `to` (0 = none).
    fn move_lease(&mut self, key: &Arc<[u8]>, from: i64, to: i64) {
        if from == to {
            return;
        }
        if let Some(l) = self.leases.get_mut(&from) {
            l.keys.remove(key);
        }
        if let Some(l) = self.leases.get_mut(&to) {
            l.keys.insert(key.clone());
        }
    }

    /// Grants lease `id` with `ttl_s` (the proposer chose both). Does not
    /// advance the revision, as in etcd.
    pub fn lease_grant(&mut self, id: i64, ttl_s: i64) -> Result<LeaseGrant, MvccError> {
        if ttl_s > MAX_LEASE_TTL_S {
            return Err(MvccError::LeaseTtlTooLarge);
        }
        if id == 0 {
            return Err(MvccError::LeaseNotFound);
        }
        if self.leases.contains_key(&id) {
            return Err(MvccError::LeaseExists);
        }
        if self.leases.len() >= MAX_LEASES {
            return Err(MvccError::TooManyLeases);
        }
        let lease = Lease {
            ttl_s,
            keys: OrdSet::new(),
        };
        self.leases.insert(id, lease);
        Ok(LeaseGrant { id, ttl_s })
    }

    /// Revokes lease `id`: every attached key is deleted in one new
    /// revision (none when no key is attached), then the lease is gone.
    pub fn lease_revoke(&mut self, id: i64) -> Result<(), MvccError> {
        let lease = self.leases.remove(&id).ok_or(MvccError::LeaseNotFound)?;
        if lease.keys.is_empty() {
            return Ok(());
        }
        let rev = self.revision + 1;
        for key in lease.keys {
            self.push_record(key, rev, None);
        }
        self.revision = rev;
        self.auto_compact();
        Ok(())
    }

    /// One lease by id.
    pub fn lease(&self, id: i64) -> Option<&Lease> {
        self.leases.get(&id)
    }

    /// Every lease, by id.
    pub fn leases(&self) -> impl Iterator<Item = (i64, &Lease)> {
        self.leases.iter().map(|(id, l)| (*id, l))
    }

    /// Number of leases.
    pub fn lease_count(&self) -> usize {
        self.leases.len()
    }

    /// Adds a lease read from a snapshot (keys are attached by
    /// [`MvccStore::attach_lease_keys`] once every history is in).
    pub(crate) fn insert_lease(&mut self, id: i64, ttl_s: i64) {
        let lease = Lease {
            ttl_s,
            keys: OrdSet::new(),
        };
        self.leases.insert(id, lease);
    }

    /// Rebuilds every lease's key set from the live keys (snapshot load).
    pub(crate) fn attach_lease_keys(&mut self) {
        let leased: Vec<(Arc<[u8]>, i64)> = self
            .visible_live(&[0], &[0], self.revision)
            .filter(|(_, _, l)| l.lease != 0)
            .map(|(k, _, l)| (k.clone(), l.lease))
            .collect();
        for (key, id) in leased {
            if let Some(l) = self.leases.get_mut(&id) {
                l.keys.insert(key);
            }
        }
    }

    /// Appends a record at `rev`, replacing one already written at `rev`
    /// (the same key written twice in one txn).
    fn push_record(&mut self, key: Arc<[u8]>, rev: i64, live: Option<Live>) {
        let bytes = |r: &Record| r.live.as_ref().map_or(0, |l| l.value.len() as u64);
        let record = Record {
            mod_revision: rev,
            live,
        };
        let history = self.index.entry(key).or_default();
        match history.last() {
            Some(last) if last.mod_revision == rev => {
                history.pop_back();
            }
            Some(last) => {
                self.history_value_bytes += bytes(last);
                self.records += 1;
            }
            None => self.records += 1,
        }
        history.push_back(record);
    }

    /// Drops history below `rev`; reads at `rev` and later are unchanged.
    pub fn compact(&mut self, rev: i64) -> Result<(), MvccError> {
        if rev <= self.compact_revision {
            return Err(MvccError::Compacted);
        }
        if rev > self.revision {
            return Err(MvccError::FutureRevision);
        }
        self.compact_unchecked(rev);
        Ok(())
    }

    fn compact_unchecked(&mut self, rev: i64) {
        let mut changed: Vec<(Arc<[u8]>, Vector<Record>)> = Vec::new();
        for (key, history) in &self.index {
            let Some(keep_from) = history.iter().rposition(|r| r.mod_revision <= rev) else {
                continue;
            };
            let drop_kept = history[keep_from].live.is_none();
            let cut = keep_from + usize::from(drop_kept);
            if cut > 0 {
                changed.push((key.clone(), history.skip(cut)));
            }
        }
        for (key, kept) in changed {
            self.replace_history(key, kept);
        }
        self.compact_revision = rev;
    }

    fn replace_history(&mut self, key: Arc<[u8]>, kept: Vector<Record>) {
        let Some(old) = self.index.remove(&key) else {
            return;
        };
        let superseded = |h: &Vector<Record>| -> u64 {
            let n = h.len().saturating_sub(1);
            h.iter()
                .take(n)
                .map(|r| r.live.as_ref().map_or(0, |l| l.value.len() as u64))
                .sum()
        };
        self.history_value_bytes -= superseded(&old) - superseded(&kept);
        self.records -= (old.len() - kept.len()) as u64;
        if !kept.is_empty() {
            self.index.insert(key, kept);
        }
    }

    /// The deterministic retention rule run after each write.
    fn auto_compact(&mut self) {
        let window = self.revision - self.compact_revision;
        if window >= 2 * AUTO_COMPACT_RETENTION_REVISIONS {
            self.compact_unchecked(self.revision - AUTO_COMPACT_RETENTION_REVISIONS);
        } else if self.history_value_bytes > MAX_HISTORY_BYTES && window > 1 {
            self.compact_unchecked(self.compact_revision + window / 2);
        }
    }

    /// The events of `[key, range_end)` with `from ≤ revision`, whole
    /// revisions only, stopping after the revision where `max_events` is
    /// reached. `from` below the compaction point is [`MvccError::Compacted`].
    pub fn events(
        &self,
        key: &[u8],
        range_end: &[u8],
        from: i64,
        prev_kv: bool,
        max_events: usize,
    ) -> Result<EventBatch, MvccError> {
        if from < self.compact_revision {
            return Err(MvccError::Compacted);
        }
        let mut events = Vec::new();
        let range = (!empty_bounds(key, range_end))
            .then(|| self.index.range::<_, [u8]>(bounds(key, range_end)));
        for (k, history) in range.into_iter().flatten() {
            self.collect_events(k, history, from, prev_kv, &mut events)?;
        }
        events.sort_by(|a, b| (a.kv.mod_revision, &a.kv.key).cmp(&(b.kv.mod_revision, &b.kv.key)));
        let mut complete_through = self.revision;
        if events.len() > max_events {
            let cut_rev = events[max_events - 1].kv.mod_revision;
            events.retain(|e| e.kv.mod_revision <= cut_rev);
            complete_through = cut_rev;
        }
        Ok(EventBatch {
            events,
            complete_through,
        })
    }

    /// Sets the revisions of a store being restored from a snapshot (see
    /// `snapshot_codec`), which must still be empty.
    pub(crate) fn set_revisions(&mut self, revision: i64, compact_revision: i64) {
        debug_assert!(self.index.is_empty());
        self.revision = revision;
        self.compact_revision = compact_revision;
    }

    /// Inserts one key's history read from a snapshot.
    pub(crate) fn insert_history(&mut self, key: Arc<[u8]>, history: Vector<Record>) {
        let n = history.len();
        if n == 0 {
            return;
        }
        self.records += n as u64;
        self.history_value_bytes += history
            .iter()
            .take(n - 1)
            .map(|r| r.live.as_ref().map_or(0, |l| l.value.len() as u64))
            .sum::<u64>();
        self.index.insert(key, history);
    }
}

/// Value-log upkeep: what a merge needs from the index.
impl MvccStore {
    /// Every record whose value is in the value log, with its key.
    pub fn logged_values(&self) -> impl Iterator<Item = (&Arc<[u8]>, ValueRef)> + '_ {
        self.index.iter().flat_map(|(k, h)| {
            h.iter()
                .filter_map(move |r| match r.live.as_ref().map(|l| &l.value) {
                    Some(Value::Logged(v)) => Some((k, **v)),
                    _ => None,
                })
        })
    }

    /// Points every record of `key` whose value is at `from` to `to` (the
    /// same bytes, copied by a merge). Returns how many records changed;
    /// none when the key or the record is gone since the merge looked.
    pub fn relocate(&mut self, key: &[u8], from: ValueRef, to: ValueRef) -> usize {
        let Some(history) = self.index.get_mut(key) else {
            return 0;
        };
        let mut moved = 0;
        for r in history.iter_mut() {
            if let Some(l) = r.live.as_mut()
                && matches!(&l.value, Value::Logged(r) if **r == from)
            {
                l.value = Value::Logged(Box::new(to));
                moved += 1;
            }
        }
        moved
    }

    /// Starts a new value-log epoch after a merge (see
    /// [`ValueStore::next_epoch`]).
    pub fn next_value_epoch(&mut self) -> ValueStore {
        let old = self.values.clone();
        self.values = self.values.next_epoch();
        old
    }
}

impl MvccStore {
    fn collect_events(
        &self,
        key: &Arc<[u8]>,
        history: &Vector<Record>,
        from: i64,
        want_prev: bool,
        out: &mut Vec<Event>,
    ) -> Result<(), MvccError> {
        let mut prev: Option<&Record> = None;
        for rec in history {
            if rec.mod_revision >= from {
                let prev_kv = match prev.filter(|_| want_prev) {
                    Some(Record {
                        mod_revision,
                        live: Some(l),
                    }) => Some(self.kv_of(key, *mod_revision, l, true)?),
                    _ => None,
                };
                let kv = match &rec.live {
                    Some(l) => self.kv_of(key, rec.mod_revision, l, true)?,
                    None => KeyValue {
                        key: key.clone(),
                        value: empty_value(),
                        create_revision: 0,
                        mod_revision: rec.mod_revision,
                        version: 0,
                        lease: 0,
                    },
                };
                out.push(Event {
                    is_put: rec.live.is_some(),
                    kv,
                    prev_kv,
                });
            }
            prev = Some(rec);
        }
        Ok(())
    }
}

fn passes(req: &RangeRequest, mod_revision: i64, live: &Live) -> bool {
    let min = |bound: i64, v: i64| bound == 0 || v >= bound;
    let max = |bound: i64, v: i64| bound == 0 || v <= bound;
    min(req.min_mod_revision, mod_revision)
        && max(req.max_mod_revision, mod_revision)
        && min(req.min_create_revision, live.create_revision)
        && max(req.max_create_revision, live.create_revision)
}

/// etcd's rules: sorting by key ascending is the stored order, and a target
/// other than the key with no order means ascending.
fn sort_kvs(kvs: &mut [KeyValue], order: SortOrder, target: SortTarget) {
    let order = match (order, target) {
        (SortOrder::None, SortTarget::Key) | (SortOrder::Ascend, SortTarget::Key) => return,
        (SortOrder::None, _) => SortOrder::Ascend,
        (o, _) => o,
    };
    kvs.sort_by(|a, b| {
        let ord = match target {
            SortTarget::Key => a.key.cmp(&b.key),
            SortTarget::Version => a.version.cmp(&b.version),
            SortTarget::Create => a.create_revision.cmp(&b.create_revision),
            SortTarget::Mod => a.mod_revision.cmp(&b.mod_revision),
            SortTarget::Value => a.value.cmp(&b.value),
        };
        if order == SortOrder::Descend {
            ord.reverse()
        } else {
            ord
        }
    });
}

/// Compares one key (absent = all-zero fields) against a guard.
fn compare_kv(c: &Compare, kv: Option<&KeyValue>) -> bool {
    use std::cmp::Ordering;
    let field = |f: fn(&KeyValue) -> i64| kv.map_or(0, f);
    let ord: Ordering = match &c.target {
        CompareTarget::Version(v) => field(|k| k.version).cmp(v),
        CompareTarget::Create(v) => field(|k| k.create_revision).cmp(v),
        CompareTarget::Mod(v) => field(|k| k.mod_revision).cmp(v),
        CompareTarget::Lease(v) => field(|k| k.lease).cmp(v),
        CompareTarget::Value(v) => kv.map_or(&[][..], |k| &k.value[..]).cmp(v.as_slice()),
    };
    match c.result {
        CompareResult::Equal => ord == Ordering::Equal,
        CompareResult::Greater => ord == Ordering::Greater,
        CompareResult::Less => ord == Ordering::Less,
        CompareResult::NotEqual => ord != Ordering::Equal,
    }
}

#[cfg(test)]
#[path = "mvcc_tests.rs"]
mod tests;
