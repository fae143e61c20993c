//! The replicated state machine: the MVCC store ([`super::mvcc`]), the
//! member directory (names and addresses) carried by membership entries, and
//! the applied index. Every client API writes through here: etcd txns and
//! compactions directly, titan.v1/TCP writes as the equivalent txn (their
//! "version" is the key's `mod_revision`). Byte codecs live in
//! [`super::mvcc_codec`].
//!
//! The store is persistent ([`imbl`]): cloning it is O(1), so the node can
//! take a consistent view for a snapshot and serialize it on a background
//! thread while writers keep applying entries.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::mvcc::{
    Compare, CompareResult, CompareTarget, DeleteRangeRequest, KeyValue, LeaseGrant, MvccError,
    MvccStore, PutRequest, RangeRequest, RequestOp, TxnRequest, TxnResponse,
};
use super::value::ValueStore;
use super::wal_record::ByteReader;
use crate::raft::{ConfChange, ConfChangeType, Entry, EntryKind, NodeId};

/// A live value and its titan.v1 version (the key's `mod_revision`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Versioned {
    /// The value bytes (shared, so snapshots and reads do not copy them).
    pub value: Arc<[u8]>,
    /// The key's mod_revision.
    pub version: u64,
}

use super::mvcc_codec::command_bytes;
pub use super::mvcc_codec::{Command, Condition};

/// A command or member record whose bytes could not be decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// Input ended early.
    #[error("input is cut short")]
    Short,
    /// An unknown tag byte.
    #[error("unknown tag {0}")]
    UnknownTag(u8),
    /// Bytes left over after a complete value.
    #[error("trailing bytes")]
    Trailing,
    /// A string field is not UTF-8.
    #[error("string field is not UTF-8")]
    NotUtf8,
}

/// A member's name and addresses, carried in an `AddLearner` change's
/// `context` and kept in the member directory so every node can reach
/// every other by name.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MemberInfo {
    /// Stable member name (e.g. the pod name).
    pub name: String,
    /// Raft peer address `host:port`.
    pub peer_addr: String,
    /// Plaintext client address.
    pub client_addr: String,
    /// gRPC address.
    pub grpc_addr: String,
}

impl MemberInfo {
    /// Encoding: four `len u32 | UTF-8 bytes` strings in field order.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for s in [
            &self.name,
            &self.peer_addr,
            &self.client_addr,
            &self.grpc_addr,
        ] {
            out.extend_from_slice(&(s.len() as u32).to_le_bytes());
            out.extend_from_slice(s.as_bytes());
        }
        out
    }

    /// Inverse of [`MemberInfo::encode`]; never panics.
    pub fn decode(buf: &[u8]) -> Result<Self, DecodeError> {
        let mut r = ByteReader::new(buf);
        let mut field = || -> Result<String, DecodeError> {
            let len = r.u32().ok_or(DecodeError::Short)? as usize;
            let bytes = r.take(len).ok_or(DecodeError::Short)?;
            String::from_utf8(bytes.to_vec()).map_err(|_| DecodeError::NotUtf8)
        };
        let info = MemberInfo {
            name: field()?,
            peer_addr: field()?,
            client_addr: field()?,
            grpc_addr: field()?,
        };
        if !r.is_empty() {
            return Err(DecodeError::Trailing);
        }
        Ok(info)
    }
}

/// The result of a Normal entry's command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WriteOutcome {
    /// Whether the condition (or the txn's compares) held.
    pub succeeded: bool,
    /// titan.v1 view: after a successful Put, the key's new mod_revision;
    /// otherwise the key's mod_revision before this entry (0 if absent).
    pub version: u64,
    /// Whether the key existed before this entry (Put/Delete only).
    pub existed: bool,
    /// The store revision after this entry.
    pub revision: i64,
    /// The etcd response, for [`Command::Txn`].
    pub txn: Option<Box<TxnResponse>>,
    /// The granted lease, for [`Command::LeaseGrant`].
    pub lease: Option<LeaseGrant>,
}

/// Why an entry changed nothing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApplyError {
    /// A Normal entry whose bytes are not a [`Command`].
    #[error("malformed command: {0}")]
    MalformedCommand(DecodeError),
    /// A ConfChange entry whose bytes are not a [`ConfChange`].
    #[error("malformed configuration change")]
    MalformedConfChange,
    /// An `AddLearner` whose context is not a [`MemberInfo`].
    #[error("malformed member info in AddLearner: {0}")]
    MalformedMemberInfo(DecodeError),
    /// The entry is at or below the applied index (already applied).
    #[error("entry {index} is at or below applied index {applied}")]
    AlreadyApplied {
        /// The entry's index.
        index: u64,
        /// The applied index.
        applied: u64,
    },
    /// The MVCC store refused the command (nothing changed).
    #[error("{0}")]
    Mvcc(MvccError),
}

/// What applying one entry did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApplyOutcome {
    /// A command ran (or its condition failed).
    Write(WriteOutcome),
    /// A Noop entry.
    Noop,
    /// The member directory was updated.
    ConfChange(ConfChange),
    /// The entry was not applied; the state is unchanged except the applied index.
    Rejected(ApplyError),
}

/// Key-value pairs in key order, as the titan.v1/TCP reads return them.
pub type Pairs = Vec<(Arc<[u8]>, Versioned)>;

/// The MVCC store, the member directory and the applied index.
/// `clone()` is O(1) in the number of keys.
#[derive(Debug, Clone, Default)]
pub struct StateMachine {
    kv: MvccStore,
    members: BTreeMap<NodeId, MemberInfo>,
    applied_index: u64,
}

impl StateMachine {
    /// An empty state machine at index 0, every value in memory.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty state machine at index 0 that places values with `values`.
    pub fn with_values(values: ValueStore) -> Self {
        Self {
            kv: MvccStore::with_values(values),
            ..Self::default()
        }
    }

    /// Applies one committed entry. Deterministic: the same entries in the
    /// same order give the same state on every node. Never panics.
    pub fn apply(&mut self, entry: &Entry) -> ApplyOutcome {
        if entry.index <= self.applied_index {
            return ApplyOutcome::Rejected(ApplyError::AlreadyApplied {
                index: entry.index,
                applied: self.applied_index,
            });
        }
        self.applied_index = entry.index;
        match entry.kind {
            EntryKind::Noop => ApplyOutcome::Noop,
            EntryKind::Normal => match Command::decode(command_bytes(&entry.data)) {
                Ok(cmd) => match self.run(cmd) {
                    Ok(w) => ApplyOutcome::Write(w),
                    Err(e) => ApplyOutcome::Rejected(ApplyError::Mvcc(e)),
                },
                Err(e) => ApplyOutcome::Rejected(ApplyError::MalformedCommand(e)),
            },
            EntryKind::ConfChange => match ConfChange::decode(&entry.data) {
                Ok(cc) => self.apply_conf_change(cc),
                Err(_) => ApplyOutcome::Rejected(ApplyError::MalformedConfChange),
            },
        }
    }

    fn run(&mut self, cmd: Command) -> Result<WriteOutcome, MvccError> {
        let done = |succeeded, revision| WriteOutcome {
            succeeded,
            version: 0,
            existed: false,
            revision,
            txn: None,
            lease: None,
        };
        match cmd {
            Command::Txn(t) => {
                let resp = self.kv.txn(&t)?;
                let mut w = done(resp.succeeded, self.kv.revision());
                w.txn = Some(Box::new(resp));
                Ok(w)
            }
            Command::Compact(rev) => {
                self.kv.compact(rev)?;
                Ok(done(true, self.kv.revision()))
            }
            Command::LeaseGrant { id, ttl_s } => {
                let granted = self.kv.lease_grant(id, ttl_s)?;
                let mut w = done(true, self.kv.revision());
                w.lease = Some(granted);
                Ok(w)
            }
            Command::LeaseRevoke(id) => {
                self.kv.lease_revoke(id)?;
                Ok(done(true, self.kv.revision()))
            }
            Command::Put { key, value, cond } => self.run_legacy(key, Some(value), cond),
            Command::Delete { key, cond } => self.run_legacy(key, None, cond),
        }
    }

    /// A titan.v1/TCP write as an etcd txn: `cond` becomes compares, the
    /// write the success branch, a read of the key the failure branch.
    fn run_legacy(
        &mut self,
        key: Vec<u8>,
        value: Option<Vec<u8>>,
        cond: Condition,
    ) -> Result<WriteOutcome, MvccError> {
        let before = self.kv.mod_revision_of(&key);
        let txn = legacy_txn(key, value.clone(), cond);
        let resp = self.kv.txn(&txn)?;
        let old_rev = before.map_or(0, |rev| rev as u64);
        let version = if resp.succeeded && value.is_some() {
            self.kv.revision() as u64
        } else {
            old_rev
        };
        Ok(WriteOutcome {
            succeeded: resp.succeeded,
            version,
            existed: before.is_some(),
            revision: self.kv.revision(),
            txn: None,
            lease: None,
        })
    }

    fn apply_conf_change(&mut self, cc: ConfChange) -> ApplyOutcome {
        match cc.change {
            ConfChangeType::AddLearner => match MemberInfo::decode(&cc.context) {
                Ok(info) => {
                    self.members.insert(cc.node_id, info);
                }
                Err(e) => return ApplyOutcome::Rejected(ApplyError::MalformedMemberInfo(e)),
            },
            ConfChangeType::PromoteLearner => {}
            ConfChangeType::RemoveNode => {
                self.members.remove(&cc.node_id);
            }
        }
        ApplyOutcome::ConfChange(cc)
    }

    /// The MVCC store (etcd reads).
    pub fn kv(&self) -> &MvccStore {
        &self.kv
    }

    /// The MVCC store, for upkeep that changes no replicated state
    /// (repointing values a value-log merge moved).
    pub(crate) fn kv_mut(&mut self) -> &mut MvccStore {
        &mut self.kv
    }

    /// The value and version (mod_revision) stored under `key`.
    pub fn get(&self, key: &[u8]) -> Result<Option<Versioned>, MvccError> {
        Ok(self.kv.get(key)?.map(versioned))
    }

    /// Up to `limit` pairs with `start <= key < end` (no upper bound when
    /// `end` is `None`), in key order.
    pub fn range(
        &self,
        start: &[u8],
        end_exclusive: Option<&[u8]>,
        limit: usize,
    ) -> Result<Pairs, MvccError> {
        let end = match end_exclusive {
            None => vec![0],
            Some(end) if end <= start => return Ok(Vec::new()),
            Some(end) => end.to_vec(),
        };
        let req = RangeRequest {
            key: start.to_vec(),
            range_end: end,
            limit: i64::try_from(limit).unwrap_or(i64::MAX),
            ..RangeRequest::default()
        };
        let kvs = self.kv.range(&req)?.kvs;
        Ok(kvs
            .into_iter()
            .map(|kv| (kv.key.clone(), versioned(kv)))
            .collect())
    }

    /// Up to `limit` pairs whose key starts with `prefix`, in key order.
    pub fn prefix(&self, prefix: &[u8], limit: usize) -> Result<Pairs, MvccError> {
        let end = prefix_end(prefix);
        self.range(prefix, end.as_deref(), limit)
    }

    /// Iterates every live pair in key order.
    pub fn iter(&self) -> impl Iterator<Item = Result<(Arc<[u8]>, Versioned), MvccError>> + '_ {
        self.kv
            .iter_live()
            .map(|kv| kv.map(|kv| (kv.key.clone(), versioned(kv))))
    }

    /// Number of keys in the MVCC index (live or with history).
    pub fn len(&self) -> usize {
        self.kv.stats().indexed_keys as usize
    }

    /// Whether the index holds no key.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Index of the last applied entry.
    pub fn applied_index(&self) -> u64 {
        self.applied_index
    }

    /// The member directory.
    pub fn members(&self) -> &BTreeMap<NodeId, MemberInfo> {
        &self.members
    }

    /// An O(1) consistent copy for a background snapshot.
    pub fn snapshot_view(&self) -> StateMachine {
        self.clone()
    }

    /// A state machine positioned at a snapshot, holding `kv` (the loader).
    pub(crate) fn at_snapshot(
        applied_index: u64,
        members: BTreeMap<NodeId, MemberInfo>,
        kv: MvccStore,
    ) -> Self {
        Self {
            kv,
            members,
            applied_index,
        }
    }
}

fn versioned(kv: KeyValue) -> Versioned {
    Versioned {
        value: kv.value,
        version: kv.mod_revision as u64,
    }
}

/// The txn a titan.v1/TCP write stands for. `ExpectedVersion(v)` means the
/// key exists (create_revision > 0) with mod_revision `v`; `MustBeAbsent`
/// means create_revision == 0.
fn legacy_txn(key: Vec<u8>, value: Option<Vec<u8>>, cond: Condition) -> TxnRequest {
    let cmp = |result, target| Compare {
        result,
        target,
        key: key.clone(),
        range_end: Vec::new(),
    };
    let compare = match cond {
        Condition::None => Vec::new(),
        Condition::ExpectedVersion(v) => vec![
            cmp(CompareResult::Greater, CompareTarget::Create(0)),
            cmp(CompareResult::Equal, CompareTarget::Mod(v as i64)),
        ],
        Condition::MustBeAbsent => vec![cmp(CompareResult::Equal, CompareTarget::Create(0))],
    };
    let op = match value {
        Some(value) => RequestOp::Put(PutRequest {
            key,
            value,
            ..PutRequest::default()
        }),
        None => RequestOp::DeleteRange(DeleteRangeRequest {
            key,
            ..DeleteRangeRequest::default()
        }),
    };
    TxnRequest {
        compare,
        success: vec![op],
        failure: Vec::new(),
    }
}

/// The smallest key greater than every key starting with `prefix`, or
/// `None` if there is none (empty prefix or all `0xff`).
pub fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(key: &str, value: &str, cond: Condition) -> Vec<u8> {
        Command::Put {
            key: key.into(),
            value: value.into(),
            cond,
        }
        .encode()
    }

    fn del(key: &str, cond: Condition) -> Vec<u8> {
        Command::Delete {
            key: key.into(),
            cond,
        }
        .encode()
    }

    fn normal(index: u64, data: Vec<u8>) -> Entry {
        Entry {
            index,
            term: 1,
            kind: EntryKind::Normal,
            data,
        }
    }

    fn write(outcome: ApplyOutcome) -> WriteOutcome {
        match outcome {
            ApplyOutcome::Write(w) => w,
            other => panic!("expected a write outcome, got {other:?}"),
        }
    }

    fn w(succeeded: bool, version: u64, existed: bool) -> (bool, u64, bool) {
        (succeeded, version, existed)
    }

    #[test]
    fn conditional_writes_follow_the_version_table() {
        let mut sm = StateMachine::new();
        // Versions are mod_revisions: the store starts at revision 1 and
        // only writes that change a key advance it.
        let table: Vec<(Vec<u8>, (bool, u64, bool))> = vec![
            (put("a", "1", Condition::MustBeAbsent), w(true, 2, false)),
            (put("a", "2", Condition::MustBeAbsent), w(false, 2, true)),
            (
                put("a", "3", Condition::ExpectedVersion(9)),
                w(false, 2, true),
            ),
            (
                put("a", "4", Condition::ExpectedVersion(2)),
                w(true, 3, true),
            ),
            (put("a", "5", Condition::None), w(true, 4, true)),
            (del("a", Condition::ExpectedVersion(3)), w(false, 4, true)),
            (del("a", Condition::ExpectedVersion(4)), w(true, 4, true)),
            (del("a", Condition::None), w(true, 0, false)),
            (
                put("b", "x", Condition::ExpectedVersion(0)),
                w(false, 0, false),
            ),
        ];
        for (i, (cmd, expected)) in table.into_iter().enumerate() {
            let index = i as u64 + 1;
            let got = write(sm.apply(&normal(index, cmd)));
            assert_eq!(
                (got.succeeded, got.version, got.existed),
                expected,
                "row {i}"
            );
        }
        assert_eq!(sm.kv().revision(), 5);
        assert!(sm.get(b"a").unwrap().is_none());
        assert_eq!(sm.applied_index(), 9);
    }

    #[test]
    fn malformed_command_is_rejected_and_still_advances_the_applied_index() {
        let mut sm = StateMachine::new();
        let outcome = sm.apply(&normal(1, vec![9, 9, 9]));
        assert!(matches!(
            outcome,
            ApplyOutcome::Rejected(ApplyError::MalformedCommand(_))
        ));
        assert_eq!(sm.applied_index(), 1);
        assert!(sm.is_empty());
        assert!(matches!(
            sm.apply(&normal(1, put("k", "v", Condition::None))),
            ApplyOutcome::Rejected(ApplyError::AlreadyApplied { .. })
        ));
    }

    #[test]
    fn command_decode_rejects_every_truncation_without_panicking() {
        let cmds = [
            put("key", "value", Condition::ExpectedVersion(7)),
            del("key", Condition::MustBeAbsent),
        ];
        for cmd in cmds {
            assert!(Command::decode(&cmd).is_ok());
            for cut in 0..cmd.len() {
                let decoded = Command::decode(&cmd[..cut]);
                // A Put cut inside its value decodes to a shorter value; that is
                // the only prefix that may succeed.
                if let Ok(Command::Put { key, .. }) = &decoded {
                    assert_eq!(key, b"key");
                } else {
                    assert!(decoded.is_err(), "cut {cut}");
                }
            }
        }
        assert_eq!(
            Command::decode(&[1, 0, 255, 255, 255, 255]),
            Err(DecodeError::Short)
        );
    }

    #[test]
    fn membership_entries_update_the_member_directory() {
        let mut sm = StateMachine::new();
        let info = MemberInfo {
            name: "titan-1".into(),
            peer_addr: "10.0.0.1:6002".into(),
            client_addr: "10.0.0.1:6001".into(),
            grpc_addr: "10.0.0.1:6003".into(),
        };
        assert_eq!(MemberInfo::decode(&info.encode()), Ok(info.clone()));
        let cc = |change, context: Vec<u8>| Entry {
            index: 0,
            term: 1,
            kind: EntryKind::ConfChange,
            data: ConfChange {
                change,
                node_id: 2,
                context,
            }
            .encode(),
        };
        let mut e = cc(ConfChangeType::AddLearner, info.encode());
        e.index = 1;
        sm.apply(&e);
        assert_eq!(sm.members().get(&2), Some(&info));
        let mut e = cc(ConfChangeType::AddLearner, vec![1, 2]);
        e.index = 2;
        assert!(matches!(sm.apply(&e), ApplyOutcome::Rejected(_)));
        let mut e = cc(ConfChangeType::RemoveNode, Vec::new());
        e.index = 3;
        sm.apply(&e);
        assert!(sm.members().is_empty());
    }

    #[test]
    fn range_and_prefix_respect_bounds_and_limits() {
        let mut sm = StateMachine::new();
        for (i, k) in ["a", "ab", "abc", "b", "b\u{7f}", "c"].iter().enumerate() {
            sm.apply(&normal(i as u64 + 1, put(k, "v", Condition::None)));
        }
        let keys = |v: Result<Pairs, MvccError>| -> Vec<String> {
            v.unwrap()
                .iter()
                .map(|(k, _)| String::from_utf8_lossy(k).into_owned())
                .collect()
        };
        assert_eq!(keys(sm.range(b"ab", Some(b"b"), 10)), ["ab", "abc"]);
        assert_eq!(keys(sm.range(b"b", None, 10)), ["b", "b\u{7f}", "c"]);
        assert_eq!(keys(sm.prefix(b"a", 2)), ["a", "ab"]);
        assert_eq!(keys(sm.prefix(b"", 100)).len(), 6);
        assert_eq!(prefix_end(&[1, 0xff]), Some(vec![2]));
        assert_eq!(prefix_end(&[0xff, 0xff]), None);
    }

    #[test]
    fn snapshot_view_is_unaffected_by_later_writes() {
        let mut sm = StateMachine::new();
        sm.apply(&normal(1, put("k", "old", Condition::None)));
        let view = sm.snapshot_view();
        sm.apply(&normal(2, put("k", "new", Condition::None)));
        assert_eq!(&*view.get(b"k").unwrap().unwrap().value, b"old");
        assert_eq!(view.applied_index(), 1);
        assert_eq!(&*sm.get(b"k").unwrap().unwrap().value, b"new");
    }
}
