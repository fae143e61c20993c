//! Size limits every API checks at the edge, before a request reaches the
//! runtime.
//!
//! There is one source of truth: the WAL's record limit
//! ([`DEFAULT_MAX_RECORD_BYTES`]) and the shared entry-record size
//! ([`crate::raft::ENTRY_RECORD_OVERHEAD_BYTES`]). A client write becomes
//! exactly one log entry, so the largest key plus the largest value plus the
//! command encoding must fit one WAL record. Nothing here depends on a flag:
//! `--max-line-bytes` only bounds how much a TCP line may buffer, so no flag
//! value can make the edge accept a write that storage would refuse.

use super::{NodeError, ReadQuery, WriteOp};
use crate::raft::ENTRY_RECORD_OVERHEAD_BYTES;
use crate::storage::wal::DEFAULT_MAX_RECORD_BYTES;

/// Bytes a Put command adds to its key and value in an entry payload:
/// op (1), condition (1 + 8 for an expected version), key length (4).
pub const PUT_COMMAND_OVERHEAD_BYTES: usize = 14;

/// Largest key any API accepts.
pub const MAX_KEY_BYTES: usize = 64 << 10;

/// Largest value any API accepts: one WAL record minus the entry record
/// overhead, the command encoding and the largest key.
pub const MAX_VALUE_BYTES: usize = DEFAULT_MAX_RECORD_BYTES as usize
    - ENTRY_RECORD_OVERHEAD_BYTES
    - PUT_COMMAND_OVERHEAD_BYTES
    - MAX_KEY_BYTES;

/// Largest encoded client request the gRPC KV service decodes: the largest
/// key and value plus room for protobuf framing and the other fields.
pub const MAX_GRPC_REQUEST_BYTES: usize = MAX_KEY_BYTES + MAX_VALUE_BYTES + (4 << 10);

fn too_large(what: &'static str, max_bytes: usize) -> NodeError {
    NodeError::TooLarge { what, max_bytes }
}

fn check_key(key: &[u8]) -> Result<(), NodeError> {
    if key.len() > MAX_KEY_BYTES {
        return Err(too_large("key", MAX_KEY_BYTES));
    }
    Ok(())
}

/// Refuses a write whose key or value is larger than storage can hold.
pub fn check_write(op: &WriteOp) -> Result<(), NodeError> {
    match op {
        WriteOp::Put { key, value, .. } => {
            check_key(key)?;
            if value.len() > MAX_VALUE_BYTES {
                return Err(too_large("value", MAX_VALUE_BYTES));
            }
            Ok(())
        }
        WriteOp::Delete { key, .. } => check_key(key),
        // etcd writes arrive through the etcd service, which refuses any
        // request over `ETCD_MAX_REQUEST_BYTES` (etcd's own 1.5 MiB default);
        // the assertion below keeps that far inside one WAL record.
        WriteOp::Txn(_)
        | WriteOp::Compact(_)
        | WriteOp::LeaseGrant { .. }
        | WriteOp::LeaseRevoke(_) => Ok(()),
    }
}

/// The largest etcd request the etcd services accept (etcd's
/// `--max-request-bytes` default).
pub const ETCD_MAX_REQUEST_BYTES: usize = 1536 * 1024;
const _: () = assert!(ETCD_MAX_REQUEST_BYTES * 2 < DEFAULT_MAX_RECORD_BYTES as usize);

/// Refuses a read whose keys are larger than any stored key can be.
pub fn check_read(query: &ReadQuery) -> Result<(), NodeError> {
    match query {
        ReadQuery::Get(key) => check_key(key),
        ReadQuery::Range { start, end, .. } => {
            check_key(start)?;
            check_key(end)
        }
        // Bounded by the etcd services' request size (see `check_write`).
        ReadQuery::Etcd(_)
        | ReadQuery::EtcdStats
        | ReadQuery::EtcdEvents(_)
        | ReadQuery::EtcdSnapshot => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::node::Condition;
    use crate::node::store::encode_write;
    use crate::raft::entry_record_bytes;
    use crate::storage::{SnapshotLimits, WalOptions};

    fn put(key_len: usize, value_len: usize, cond: Condition) -> WriteOp {
        WriteOp::Put {
            key: Bytes::from(vec![b'k'; key_len]),
            value: Bytes::from(vec![b'v'; value_len]),
            cond,
        }
    }

    #[test]
    fn the_largest_accepted_write_fits_one_wal_record_and_one_more_byte_is_refused() {
        let op = put(
            MAX_KEY_BYTES,
            MAX_VALUE_BYTES,
            Condition::ExpectedVersion(1),
        );
        assert_eq!(check_write(&op), Ok(()));
        let record = entry_record_bytes(encode_write(&op).len());
        assert_eq!(record, WalOptions::default().max_record_bytes as usize);
        let over = put(1, MAX_VALUE_BYTES + 1, Condition::None);
        assert_eq!(
            check_write(&over),
            Err(NodeError::TooLarge {
                what: "value",
                max_bytes: MAX_VALUE_BYTES
            })
        );
        let key_over = put(MAX_KEY_BYTES + 1, 1, Condition::None);
        assert!(matches!(
            check_write(&key_over),
            Err(NodeError::TooLarge { what: "key", .. })
        ));
    }

    #[test]
    fn snapshots_hold_every_key_and_value_the_edge_accepts() {
        let limits = SnapshotLimits::default();
        assert!(limits.max_key_bytes as usize >= MAX_KEY_BYTES);
        assert!(limits.max_value_bytes as usize >= MAX_VALUE_BYTES);
    }

    #[test]
    fn oversize_read_keys_are_refused() {
        let key = Bytes::from(vec![b'k'; MAX_KEY_BYTES + 1]);
        assert!(check_read(&ReadQuery::Get(key.clone())).is_err());
        let range = ReadQuery::Range {
            start: Bytes::new(),
            end: key,
            limit: 1,
            max_bytes: 1,
        };
        assert!(check_read(&range).is_err());
    }
}
