//! Field-for-field mapping between the core's types and `titan.v1` protobuf
//! messages. Decoding is total: unknown enum values become errors, never panics.

use titan_proto::v1 as pb;

use crate::raft::{ConfState, Entry, EntryKind, Message, MessageType, SnapshotMeta};

/// A peer sent a message this version cannot interpret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// Unknown `msg_type`.
    #[error("unknown raft message type {0}")]
    MessageType(u32),
    /// Unknown entry kind.
    #[error("unknown entry kind {0}")]
    EntryKind(u32),
}

/// Encodes an entry.
pub fn entry_to_pb(e: &Entry) -> pb::Entry {
    pb::Entry {
        index: e.index,
        term: e.term,
        kind: e.kind as u32,
        data: e.data.clone(),
    }
}

/// Decodes an entry.
pub fn entry_from_pb(e: pb::Entry) -> Result<Entry, DecodeError> {
    let kind = u8::try_from(e.kind)
        .ok()
        .and_then(EntryKind::from_u8)
        .ok_or(DecodeError::EntryKind(e.kind))?;
    Ok(Entry {
        index: e.index,
        term: e.term,
        kind,
        data: e.data,
    })
}

/// Encodes snapshot metadata.
pub fn snapshot_meta_to_pb(m: &SnapshotMeta) -> pb::SnapshotMeta {
    pb::SnapshotMeta {
        index: m.index,
        term: m.term,
        conf: Some(pb::ConfState {
            voters: m.conf.voters.iter().copied().collect(),
            learners: m.conf.learners.iter().copied().collect(),
        }),
    }
}

/// Decodes snapshot metadata.
pub fn snapshot_meta_from_pb(m: pb::SnapshotMeta) -> SnapshotMeta {
    let conf = m.conf.unwrap_or_default();
    SnapshotMeta {
        index: m.index,
        term: m.term,
        conf: ConfState {
            voters: conf.voters.into_iter().collect(),
            learners: conf.learners.into_iter().collect(),
        },
    }
}

/// Encodes a Raft message.
pub fn message_to_pb(m: &Message) -> pb::RaftMessage {
    pb::RaftMessage {
        msg_type: m.msg_type as u32,
        from: m.from,
        to: m.to,
        term: m.term,
        log_term: m.log_term,
        index: m.index,
        entries: m.entries.iter().map(entry_to_pb).collect(),
        commit: m.commit,
        reject: m.reject,
        reject_hint: m.reject_hint,
        hint_term: m.hint_term,
        context: m.context.clone(),
        snapshot: m.snapshot.as_ref().map(snapshot_meta_to_pb),
    }
}

/// Decodes a Raft message.
pub fn message_from_pb(m: pb::RaftMessage) -> Result<Message, DecodeError> {
    let msg_type = MessageType::from_u32(m.msg_type).ok_or(DecodeError::MessageType(m.msg_type))?;
    Ok(Message {
        msg_type,
        from: m.from,
        to: m.to,
        term: m.term,
        log_term: m.log_term,
        index: m.index,
        entries: m
            .entries
            .into_iter()
            .map(entry_from_pb)
            .collect::<Result<_, _>>()?,
        commit: m.commit,
        reject: m.reject,
        reject_hint: m.reject_hint,
        hint_term: m.hint_term,
        context: m.context,
        snapshot: m.snapshot.map(snapshot_meta_from_pb),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_round_trips_through_protobuf() {
        let mut m = Message::new(MessageType::Append, 1, 2, 7);
        m.log_term = 6;
        m.index = 10;
        m.commit = 9;
        m.reject_hint = 3;
        m.context = b"ctx".to_vec();
        m.entries = vec![Entry {
            index: 11,
            term: 7,
            kind: EntryKind::ConfChange,
            data: vec![1, 2],
        }];
        m.snapshot = Some(SnapshotMeta {
            index: 5,
            term: 2,
            conf: ConfState {
                voters: [1, 2].into(),
                learners: [3].into(),
            },
        });
        assert_eq!(message_from_pb(message_to_pb(&m)), Ok(m));
    }

    #[test]
    fn unknown_message_type_and_entry_kind_are_errors() {
        let mut pbm = message_to_pb(&Message::new(MessageType::Vote, 1, 2, 1));
        pbm.msg_type = 99;
        assert_eq!(
            message_from_pb(pbm.clone()),
            Err(DecodeError::MessageType(99))
        );
        pbm.msg_type = MessageType::Append as u32;
        pbm.entries = vec![pb::Entry {
            index: 1,
            term: 1,
            kind: 7,
            data: vec![],
        }];
        assert_eq!(message_from_pb(pbm), Err(DecodeError::EntryKind(7)));
    }
}
