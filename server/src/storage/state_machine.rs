//! The replicated state machine: an ordered map key → (value, version),
//! where the version is the log index of the key's last write, plus the
//! member directory (names and addresses) carried by membership entries.
//!
//! The map is a persistent B-tree ([`imbl::OrdMap`]): cloning it is O(1), so
//! the node can take a consistent view for a snapshot and serialize it on a
//! background thread while writers keep applying entries.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::Arc;

use imbl::OrdMap;

use super::wal_record::ByteReader;
use crate::raft::{ConfChange, ConfChangeType, Entry, EntryKind, NodeId};

/// A stored value and the log index of the write that produced it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Versioned {
    /// The value bytes (shared, so snapshots and reads do not copy them).
    pub value: Arc<[u8]>,
    /// Log index of the last write to this key.
    pub version: u64,
}

/// A precondition on a write, checked against the key's current version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Condition {
    /// Unconditional.
    None,
    /// The key must exist with exactly this version.
    ExpectedVersion(u64),
    /// The key must not exist.
    MustBeAbsent,
}

/// A client write as carried in a [`EntryKind::Normal`] entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Set `key` to `value` if `cond` holds.
    Put {
        /// The key.
        key: Vec<u8>,
        /// The new value.
        value: Vec<u8>,
        /// Precondition.
        cond: Condition,
    },
    /// Remove `key` if `cond` holds.
    Delete {
        /// The key.
        key: Vec<u8>,
        /// Precondition.
        cond: Condition,
    },
}

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

const OP_PUT: u8 = 1;
const OP_DELETE: u8 = 2;

impl Condition {
    fn encode_into(&self, out: &mut Vec<u8>) {
        match self {
            Condition::None => out.push(0),
            Condition::ExpectedVersion(v) => {
                out.push(1);
                out.extend_from_slice(&v.to_le_bytes());
            }
            Condition::MustBeAbsent => out.push(2),
        }
    }

    fn decode(r: &mut ByteReader<'_>) -> Result<Self, DecodeError> {
        match r.u8().ok_or(DecodeError::Short)? {
            0 => Ok(Condition::None),
            1 => Ok(Condition::ExpectedVersion(
                r.u64().ok_or(DecodeError::Short)?,
            )),
            2 => Ok(Condition::MustBeAbsent),
            t => Err(DecodeError::UnknownTag(t)),
        }
    }

    /// Whether the condition holds given the key's current version.
    fn holds(&self, current: Option<u64>) -> bool {
        match self {
            Condition::None => true,
            Condition::ExpectedVersion(v) => current == Some(*v),
            Condition::MustBeAbsent => current.is_none(),
        }
    }
}

impl Command {
    /// Encoding: `op u8 | cond (u8 [+ u64]) | key_len u32 | key | value (Put only, rest)`.
    pub fn encode(&self) -> Vec<u8> {
        let (op, key, cond, value) = match self {
            Command::Put { key, value, cond } => (OP_PUT, key, cond, Some(value)),
            Command::Delete { key, cond } => (OP_DELETE, key, cond, None),
        };
        let mut out = Vec::with_capacity(14 + key.len() + value.map_or(0, Vec::len));
        out.push(op);
        cond.encode_into(&mut out);
        out.extend_from_slice(&(key.len() as u32).to_le_bytes());
        out.extend_from_slice(key);
        if let Some(value) = value {
            out.extend_from_slice(value);
        }
        out
    }

    /// Inverse of [`Command::encode`]; never panics.
    pub fn decode(buf: &[u8]) -> Result<Self, DecodeError> {
        let mut r = ByteReader::new(buf);
        let op = r.u8().ok_or(DecodeError::Short)?;
        let cond = Condition::decode(&mut r)?;
        let key_len = r.u32().ok_or(DecodeError::Short)? as usize;
        let key = r.take(key_len).ok_or(DecodeError::Short)?.to_vec();
        match op {
            OP_PUT => Ok(Command::Put {
                key,
                value: r.rest().to_vec(),
                cond,
            }),
            OP_DELETE if r.is_empty() => Ok(Command::Delete { key, cond }),
            OP_DELETE => Err(DecodeError::Trailing),
            t => Err(DecodeError::UnknownTag(t)),
        }
    }
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
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WriteOutcome {
    /// Whether the condition held and the write happened.
    pub succeeded: bool,
    /// After a successful Put: the new version (the entry's index). Otherwise
    /// the key's version before this entry (0 if it was absent).
    pub version: u64,
    /// Whether the key existed before this entry.
    pub existed: bool,
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

/// The key-value map, the member directory and the applied index.
/// `clone()` is O(1) in the number of keys.
#[derive(Debug, Clone, Default)]
pub struct StateMachine {
    map: OrdMap<Arc<[u8]>, Versioned>,
    members: BTreeMap<NodeId, MemberInfo>,
    applied_index: u64,
}

impl StateMachine {
    /// An empty state machine at index 0.
    pub fn new() -> Self {
        Self::default()
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
            EntryKind::Normal => match Command::decode(&entry.data) {
                Ok(cmd) => ApplyOutcome::Write(self.run(cmd, entry.index)),
                Err(e) => ApplyOutcome::Rejected(ApplyError::MalformedCommand(e)),
            },
            EntryKind::ConfChange => match ConfChange::decode(&entry.data) {
                Ok(cc) => self.apply_conf_change(cc),
                Err(_) => ApplyOutcome::Rejected(ApplyError::MalformedConfChange),
            },
        }
    }

    fn run(&mut self, cmd: Command, index: u64) -> WriteOutcome {
        let (key, cond) = match &cmd {
            Command::Put { key, cond, .. } | Command::Delete { key, cond } => (key, *cond),
        };
        let current = self.map.get(key.as_slice()).map(|v| v.version);
        let existed = current.is_some();
        let before = current.unwrap_or(0);
        if !cond.holds(current) {
            return WriteOutcome {
                succeeded: false,
                version: before,
                existed,
            };
        }
        let version = match cmd {
            Command::Put { key, value, .. } => {
                let value = Versioned {
                    value: value.into(),
                    version: index,
                };
                self.map.insert(key.into(), value);
                index
            }
            Command::Delete { key, .. } => {
                self.map.remove(key.as_slice());
                before
            }
        };
        WriteOutcome {
            succeeded: true,
            version,
            existed,
        }
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

    /// The value and version stored under `key`.
    pub fn get(&self, key: &[u8]) -> Option<&Versioned> {
        self.map.get(key)
    }

    /// Up to `limit` pairs with `start <= key < end` (no upper bound when
    /// `end` is `None`), in key order.
    pub fn range(
        &self,
        start: &[u8],
        end_exclusive: Option<&[u8]>,
        limit: usize,
    ) -> Vec<(Arc<[u8]>, Versioned)> {
        let upper = end_exclusive.map_or(Bound::Unbounded, Bound::Excluded);
        self.map
            .range::<_, [u8]>((Bound::Included(start), upper))
            .take(limit)
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    /// Up to `limit` pairs whose key starts with `prefix`, in key order.
    pub fn prefix(&self, prefix: &[u8], limit: usize) -> Vec<(Arc<[u8]>, Versioned)> {
        let end = prefix_end(prefix);
        self.range(prefix, end.as_deref(), limit)
    }

    /// Iterates every pair in key order (used by the snapshot encoder).
    pub fn iter(&self) -> impl Iterator<Item = (&Arc<[u8]>, &Versioned)> {
        self.map.iter()
    }

    /// Number of keys.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether there are no keys.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
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

    /// An empty state machine positioned at a snapshot (used by the loader).
    pub(crate) fn at_snapshot(applied_index: u64, members: BTreeMap<NodeId, MemberInfo>) -> Self {
        Self {
            map: OrdMap::new(),
            members,
            applied_index,
        }
    }

    /// Inserts a pair read from a snapshot.
    pub(crate) fn insert_loaded(&mut self, key: Arc<[u8]>, value: Versioned) {
        self.map.insert(key, value);
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
