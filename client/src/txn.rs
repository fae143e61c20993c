//! Transactions (etcd's `Txn`): compares on keys, then one list of
//! operations if they all hold and another if not, applied atomically at
//! one revision. The types here map one-to-one onto `etcdserverpb` messages.

use crate::types::{KeyValue, prefix_bounds, revision_u64};
use titan_proto::etcdserverpb as pb;
use titan_proto::etcdserverpb::compare::{CompareResult, CompareTarget, TargetUnion};

/// How a [`Compare`] relates the key's field to its operand.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CompareOp {
    /// `=`
    Equal,
    /// `!=`
    NotEqual,
    /// `>`
    Greater,
    /// `<`
    Less,
}

/// What a [`Compare`] looks at, with the operand.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CompareField {
    /// The value (an absent key never matches).
    Value(Vec<u8>),
    /// etcd's `version`: writes since creation (0 = absent).
    Version(i64),
    /// `create_revision` (0 = absent).
    Create(i64),
    /// `mod_revision`, the client's "version" (0 = absent).
    Mod(i64),
    /// The attached lease id (0 = none).
    Lease(i64),
}

/// One condition of a transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Compare {
    /// The key compared.
    pub key: Vec<u8>,
    /// The relation.
    pub op: CompareOp,
    /// The field and its operand.
    pub field: CompareField,
}

impl Compare {
    /// `field(key) op operand`.
    pub fn new(key: impl Into<Vec<u8>>, op: CompareOp, field: CompareField) -> Self {
        Compare {
            key: key.into(),
            op,
            field,
        }
    }

    pub(crate) fn to_pb(&self) -> pb::Compare {
        let result = match self.op {
            CompareOp::Equal => CompareResult::Equal,
            CompareOp::NotEqual => CompareResult::NotEqual,
            CompareOp::Greater => CompareResult::Greater,
            CompareOp::Less => CompareResult::Less,
        };
        let (target, operand) = match &self.field {
            CompareField::Value(v) => (CompareTarget::Value, TargetUnion::Value(v.clone())),
            CompareField::Version(n) => (CompareTarget::Version, TargetUnion::Version(*n)),
            CompareField::Create(n) => (CompareTarget::Create, TargetUnion::CreateRevision(*n)),
            CompareField::Mod(n) => (CompareTarget::Mod, TargetUnion::ModRevision(*n)),
            CompareField::Lease(n) => (CompareTarget::Lease, TargetUnion::Lease(*n)),
        };
        pb::Compare {
            result: result as i32,
            target: target as i32,
            key: self.key.clone(),
            target_union: Some(operand),
            range_end: Vec::new(),
        }
    }
}

/// One operation of a transaction branch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TxnOp {
    /// Read one key, or every key with this prefix when `prefix` is set.
    Get {
        /// The key or prefix.
        key: Vec<u8>,
        /// Whether `key` is a prefix.
        prefix: bool,
    },
    /// Write a key, attached to `lease` unless it is 0.
    Put {
        /// The key.
        key: Vec<u8>,
        /// The value.
        value: Vec<u8>,
        /// The lease id (0 = none).
        lease: i64,
    },
    /// Delete one key, or every key with this prefix when `prefix` is set.
    Delete {
        /// The key or prefix.
        key: Vec<u8>,
        /// Whether `key` is a prefix.
        prefix: bool,
    },
}

/// `[key, range_end)` for a single key (`range_end` empty) or a prefix.
fn key_range(key: &[u8], prefix: bool) -> (Vec<u8>, Vec<u8>) {
    if prefix {
        prefix_bounds(key)
    } else {
        (key.to_vec(), Vec::new())
    }
}

impl TxnOp {
    pub(crate) fn to_pb(&self) -> pb::RequestOp {
        use pb::request_op::Request;
        let request = match self {
            TxnOp::Get { key, prefix } => {
                let (key, range_end) = key_range(key, *prefix);
                Request::RequestRange(pb::RangeRequest {
                    key,
                    range_end,
                    ..Default::default()
                })
            }
            TxnOp::Put { key, value, lease } => Request::RequestPut(pb::PutRequest {
                key: key.clone(),
                value: value.clone(),
                lease: *lease,
                ..Default::default()
            }),
            TxnOp::Delete { key, prefix } => {
                let (key, range_end) = key_range(key, *prefix);
                Request::RequestDeleteRange(pb::DeleteRangeRequest {
                    key,
                    range_end,
                    prev_kv: false,
                })
            }
        };
        pb::RequestOp {
            request: Some(request),
        }
    }
}

/// A whole transaction: `if compares { success } else { failure }`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Txn {
    /// All must hold for `success` to run (none: `success` always runs).
    pub compares: Vec<Compare>,
    /// Run when every compare holds.
    pub success: Vec<TxnOp>,
    /// Run otherwise.
    pub failure: Vec<TxnOp>,
}

impl Txn {
    pub(crate) fn to_pb(&self) -> pb::TxnRequest {
        pb::TxnRequest {
            compare: self.compares.iter().map(Compare::to_pb).collect(),
            success: self.success.iter().map(TxnOp::to_pb).collect(),
            failure: self.failure.iter().map(TxnOp::to_pb).collect(),
        }
    }
}

/// What one operation of the branch that ran returned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TxnOpResult {
    /// The keys read.
    Get(Vec<KeyValue>),
    /// A put applied.
    Put,
    /// How many keys a delete removed.
    Delete {
        /// Keys deleted.
        deleted: i64,
    },
    /// A nested transaction (not produced by [`TxnOp`]; reported as is).
    Nested {
        /// Whether its compares held.
        succeeded: bool,
    },
}

/// The outcome of a transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TxnResult {
    /// Whether every compare held (so `success` ran, else `failure`).
    pub succeeded: bool,
    /// The store revision after the transaction.
    pub revision: u64,
    /// One result per operation of the branch that ran, in order.
    pub results: Vec<TxnOpResult>,
}

impl TxnResult {
    pub(crate) fn from_pb(resp: pb::TxnResponse) -> Self {
        use pb::response_op::Response;
        let results = resp
            .responses
            .into_iter()
            .filter_map(|op| op.response)
            .map(|r| match r {
                Response::ResponseRange(r) => {
                    TxnOpResult::Get(r.kvs.into_iter().map(KeyValue::from_pb).collect())
                }
                Response::ResponsePut(_) => TxnOpResult::Put,
                Response::ResponseDeleteRange(d) => TxnOpResult::Delete { deleted: d.deleted },
                Response::ResponseTxn(t) => TxnOpResult::Nested {
                    succeeded: t.succeeded,
                },
            })
            .collect();
        TxnResult {
            succeeded: resp.succeeded,
            revision: revision_u64(resp.header.map_or(0, |h| h.revision)),
            results,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compares_map_onto_etcd_targets_and_operands() {
        let c = Compare::new("k", CompareOp::Greater, CompareField::Mod(5)).to_pb();
        assert_eq!(c.result, CompareResult::Greater as i32);
        assert_eq!(c.target, CompareTarget::Mod as i32);
        assert_eq!(c.target_union, Some(TargetUnion::ModRevision(5)));
        let v = Compare::new("k", CompareOp::NotEqual, CompareField::Value(b"x".to_vec())).to_pb();
        assert_eq!(v.target, CompareTarget::Value as i32);
        assert_eq!(v.target_union, Some(TargetUnion::Value(b"x".to_vec())));
    }

    #[test]
    fn prefix_ops_cover_the_prefix_and_key_ops_one_key() {
        use pb::request_op::Request;
        let get = TxnOp::Get {
            key: b"p/".to_vec(),
            prefix: true,
        };
        match get.to_pb().request {
            Some(Request::RequestRange(r)) => assert_eq!(r.range_end, b"p0".to_vec()),
            other => panic!("not a range: {other:?}"),
        }
        let del = TxnOp::Delete {
            key: b"k".to_vec(),
            prefix: false,
        };
        match del.to_pb().request {
            Some(Request::RequestDeleteRange(d)) => assert!(d.range_end.is_empty()),
            other => panic!("not a delete: {other:?}"),
        }
    }
}
