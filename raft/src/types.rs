//! Plain data types shared by the Raft core, the storage layer and the
//! transport. No behaviour lives here beyond small helpers.

use std::collections::BTreeSet;

/// A member's Raft id. `0` means "none" (no vote, no leader known).
pub type NodeId = u64;
/// Sentinel for "no node".
pub const NO_NODE: NodeId = 0;

/// What an entry carries. Stored as a `u8` in the WAL and as a `u32` on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum EntryKind {
    /// An application command (a state-machine write), opaque to Raft.
    Normal = 0,
    /// The empty entry a new leader appends at the start of its term.
    Noop = 1,
    /// A membership change; `data` is an encoded [`ConfChange`].
    ConfChange = 2,
}

impl EntryKind {
    /// Decodes a stored kind; `None` for an unknown value (a corrupt or newer record).
    pub fn from_u8(v: u8) -> Option<Self> {
        match v {
            0 => Some(Self::Normal),
            1 => Some(Self::Noop),
            2 => Some(Self::ConfChange),
            _ => None,
        }
    }
}

/// One Raft log entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Position in the log, from 1.
    pub index: u64,
    /// Term of the leader that appended it.
    pub term: u64,
    /// What `data` holds.
    pub kind: EntryKind,
    /// The payload: a command, nothing (no-op) or an encoded [`ConfChange`].
    pub data: Vec<u8>,
}

/// Fixed bytes one entry adds to a WAL batch on top of its data: frame header
/// (length + CRC, 8), record type (1), index (8), term (8), kind (1).
///
/// This is the single source of truth for entry sizes: the WAL encoder
/// (`storage::wal_record`) is tested to produce exactly
/// `data.len() + ENTRY_RECORD_OVERHEAD_BYTES` bytes per entry, and the core's
/// byte accounting (uncommitted bytes, Append sizes, the per-Ready cap) uses
/// the same number, so the core can never hand the node a batch the WAL
/// refuses.
pub const ENTRY_RECORD_OVERHEAD_BYTES: usize = 26;

/// Bytes an entry with `data_len` bytes of data occupies in the WAL.
pub const fn entry_record_bytes(data_len: usize) -> usize {
    data_len.saturating_add(ENTRY_RECORD_OVERHEAD_BYTES)
}

impl Entry {
    /// Bytes this entry counts against size limits: exactly its WAL record
    /// size (see [`ENTRY_RECORD_OVERHEAD_BYTES`]).
    pub fn size_bytes(&self) -> usize {
        entry_record_bytes(self.data.len())
    }
}

/// The state that must be durable before the node answers any message that
/// depends on it (Raft Figure 2 "persistent state", plus the commit index).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct HardState {
    /// The latest term this node has seen.
    pub term: u64,
    /// Who this node voted for in `term`; [`NO_NODE`] if nobody.
    pub vote: NodeId,
    /// Highest index known committed when this state was written.
    pub commit: u64,
}

/// Cluster membership: voters decide elections and commits, learners only
/// receive the log.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ConfState {
    /// Members that vote and count towards the commit quorum.
    pub voters: BTreeSet<NodeId>,
    /// Members that receive the log but neither vote nor count.
    pub learners: BTreeSet<NodeId>,
}

impl ConfState {
    /// Whether `id` is a voter or a learner.
    pub fn contains(&self, id: NodeId) -> bool {
        self.voters.contains(&id) || self.learners.contains(&id)
    }
}

/// Which membership change a [`ConfChange`] entry asks for. Titan uses
/// single-server changes: one change at a time (see `raft` module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum ConfChangeType {
    /// Add a non-voting member that receives the log.
    AddLearner = 0,
    /// Turn a caught-up learner into a voter.
    PromoteLearner = 1,
    /// Remove a voter or a learner.
    RemoveNode = 2,
}

/// A membership change as carried in an [`EntryKind::ConfChange`] entry.
/// `context` is opaque to Raft; the node uses it for the member's name and
/// addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfChange {
    /// The kind of change.
    pub change: ConfChangeType,
    /// The member it applies to.
    pub node_id: NodeId,
    /// Opaque to Raft: the node's name and addresses for this member.
    pub context: Vec<u8>,
}

/// The position and configuration a snapshot covers.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SnapshotMeta {
    /// Last log index included in the snapshot.
    pub index: u64,
    /// Term of that entry.
    pub term: u64,
    /// Membership as of `index`.
    pub conf: ConfState,
}

/// Message kinds exchanged between Raft peers. Numbers are wire-stable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum MessageType {
    /// Would you vote for me? Asked without raising the term (PreVote).
    PreVote = 1,
    /// Answer to [`MessageType::PreVote`]; `reject` says no.
    PreVoteResp = 2,
    /// A candidate asks for a vote in `term`.
    Vote = 3,
    /// Answer to [`MessageType::Vote`]; `reject` says no.
    VoteResp = 4,
    /// Leader → follower: `entries` after (`index`, `log_term`), and `commit`.
    Append = 5,
    /// Answer to [`MessageType::Append`]: `index` matched, or `reject` with
    /// `reject_hint`/`hint_term` for fast backtracking.
    AppendResp = 6,
    /// Leader → follower: keeps authority, carries `commit` and a ReadIndex
    /// `context`.
    Heartbeat = 7,
    /// Answer to [`MessageType::Heartbeat`], echoing its `context`.
    HeartbeatResp = 8,
    /// Leader → follower: install the snapshot described by `Message::snapshot`.
    /// The node streams the snapshot data out of band.
    Snapshot = 9,
    /// Leadership transfer: the target starts an election immediately.
    TimeoutNow = 10,
    /// Follower → leader: ask for a read index for `context`.
    ReadIndex = 11,
    /// Leader → follower: the read index (`index`) for `context`.
    ReadIndexResp = 12,
    /// Follower → leader: `entries` (index and term unset) for the leader to
    /// append as its own proposals. Never answered: the proposer learns the
    /// outcome by applying the entry, and a dropped proposal (no leader,
    /// transfer, overload, message loss) must be timed out by the node.
    /// The transport must deliver it at most once.
    Propose = 13,
}

impl MessageType {
    /// Decodes a wire value; `None` for unknown values.
    pub fn from_u32(v: u32) -> Option<Self> {
        use MessageType::*;
        Some(match v {
            1 => PreVote,
            2 => PreVoteResp,
            3 => Vote,
            4 => VoteResp,
            5 => Append,
            6 => AppendResp,
            7 => Heartbeat,
            8 => HeartbeatResp,
            9 => Snapshot,
            10 => TimeoutNow,
            11 => ReadIndex,
            12 => ReadIndexResp,
            13 => Propose,
            _ => return None,
        })
    }
}

/// One Raft message. A flat struct in the style of etcd's `raftpb.Message`:
/// which fields mean what depends on `msg_type` (documented in `raft`).
/// The transport maps it field-for-field to `titan.v1.RaftMessage`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// What the message is; decides which fields below mean anything.
    pub msg_type: MessageType,
    /// Sender.
    pub from: NodeId,
    /// Receiver.
    pub to: NodeId,
    /// The sender's term (stale terms are ignored or answered).
    pub term: u64,
    /// Term of the entry at `index` (Append: the previous entry; votes: the
    /// candidate's last entry).
    pub log_term: u64,
    /// A log index: the previous entry (Append), the last entry (votes), the
    /// matched index (AppendResp) or the read index (ReadIndexResp).
    pub index: u64,
    /// Entries carried by an Append.
    pub entries: Vec<Entry>,
    /// The leader's commit index.
    pub commit: u64,
    /// A refusal (vote denied, append did not match).
    pub reject: bool,
    /// On a refused Append: the follower's last index, where to retry.
    pub reject_hint: u64,
    /// On a refused Append: the term at `reject_hint`, to skip whole terms.
    pub hint_term: u64,
    /// Opaque bytes echoed back: ReadIndex contexts, transfer markers.
    pub context: Vec<u8>,
    /// The snapshot a [`MessageType::Snapshot`] message offers.
    pub snapshot: Option<SnapshotMeta>,
}

impl Message {
    /// A message with every optional field empty.
    pub fn new(msg_type: MessageType, from: NodeId, to: NodeId, term: u64) -> Self {
        Message {
            msg_type,
            from,
            to,
            term,
            log_term: 0,
            index: 0,
            entries: Vec::new(),
            commit: 0,
            reject: false,
            reject_hint: 0,
            hint_term: 0,
            context: Vec::new(),
            snapshot: None,
        }
    }
}

impl ConfChangeType {
    fn from_u8(v: u8) -> Option<Self> {
        match v {
            0 => Some(Self::AddLearner),
            1 => Some(Self::PromoteLearner),
            2 => Some(Self::RemoveNode),
            _ => None,
        }
    }
}

/// A [`ConfChange`] payload that could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed configuration change entry")]
pub struct BadConfChange;

impl ConfChange {
    /// Encoding: `change:u8 | node_id:u64 LE | context bytes`.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(9 + self.context.len());
        out.push(self.change as u8);
        out.extend_from_slice(&self.node_id.to_le_bytes());
        out.extend_from_slice(&self.context);
        out
    }

    /// Inverse of [`ConfChange::encode`].
    pub fn decode(buf: &[u8]) -> Result<Self, BadConfChange> {
        if buf.len() < 9 {
            return Err(BadConfChange);
        }
        let change = ConfChangeType::from_u8(buf[0]).ok_or(BadConfChange)?;
        let node_id = u64::from_le_bytes(buf[1..9].try_into().map_err(|_| BadConfChange)?);
        Ok(ConfChange {
            change,
            node_id,
            context: buf[9..].to_vec(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conf_change_round_trips_and_rejects_short_or_unknown_input() {
        let cc = ConfChange {
            change: ConfChangeType::PromoteLearner,
            node_id: 42,
            context: b"ctx".to_vec(),
        };
        assert_eq!(ConfChange::decode(&cc.encode()), Ok(cc));
        assert_eq!(ConfChange::decode(&[0; 8]), Err(BadConfChange));
        assert_eq!(ConfChange::decode(&[9; 9]), Err(BadConfChange));
    }
}
