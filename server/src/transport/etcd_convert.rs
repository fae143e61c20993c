//! etcd protobuf ↔ MVCC types, and the request checks etcd does at its
//! edge (empty key, size, txn op count, duplicate keys). Whether a lease
//! exists is the MVCC store's check, at apply.

use std::collections::BTreeSet;

use tonic::Status;

use titan_proto::etcdserverpb as pb;
use titan_proto::mvccpb;

use super::etcd_kv::{MAX_REQUEST_BYTES, MAX_TXN_OPS, request_too_large};
use crate::node::Header;
use crate::storage::Command;
use crate::storage::mvcc::{
    Compare, CompareResult, CompareTarget, DeleteRangeRequest, KeyValue, MAX_TXN_DEPTH, MvccError,
    PutRequest, RangeRequest, RangeResponse, RequestOp, ResponseOp, SortOrder, SortTarget,
    TxnRequest, TxnResponse,
};

/// etcd refuses an empty key.
pub fn check_key(key: &[u8]) -> Result<(), Status> {
    if key.is_empty() {
        return Err(Status::invalid_argument("etcdserver: key is not provided"));
    }
    Ok(())
}

/// Size, op count and duplicate-key checks on a whole txn.
pub fn check_txn(t: &TxnRequest) -> Result<(), Status> {
    if Command::encode_txn(t).len() > MAX_REQUEST_BYTES {
        return Err(request_too_large());
    }
    check_branches(t)
}

fn check_branches(t: &TxnRequest) -> Result<(), Status> {
    for ops in [&t.success, &t.failure] {
        if ops.len() > MAX_TXN_OPS || t.compare.len() > MAX_TXN_OPS {
            return Err(Status::invalid_argument(
                "etcdserver: too many operations in txn request",
            ));
        }
        let mut written = BTreeSet::new();
        for op in ops.iter() {
            let key = match op {
                RequestOp::Put(p) => &p.key,
                RequestOp::Txn(inner) => {
                    check_branches(inner)?;
                    continue;
                }
                _ => continue,
            };
            if !written.insert(key.as_slice()) {
                return Err(Status::invalid_argument(
                    "etcdserver: duplicate key given in txn request",
                ));
            }
        }
    }
    Ok(())
}

/// The response header.
pub fn header_to_pb(h: &Header) -> pb::ResponseHeader {
    pb::ResponseHeader {
        cluster_id: h.cluster_id,
        member_id: h.member_id,
        revision: h.revision,
        raft_term: h.raft_term,
    }
}

/// One key-value pair.
pub fn kv_to_pb(kv: KeyValue) -> mvccpb::KeyValue {
    mvccpb::KeyValue {
        key: kv.key.to_vec(),
        create_revision: kv.create_revision,
        mod_revision: kv.mod_revision,
        version: kv.version,
        value: kv.value.to_vec(),
        lease: kv.lease,
    }
}

/// A range request (`serializable` is handled by the caller).
pub fn range_from_pb(r: pb::RangeRequest) -> RangeRequest {
    let sort_order = match r.sort_order {
        1 => SortOrder::Ascend,
        2 => SortOrder::Descend,
        _ => SortOrder::None,
    };
    let sort_target = match r.sort_target {
        1 => SortTarget::Version,
        2 => SortTarget::Create,
        3 => SortTarget::Mod,
        4 => SortTarget::Value,
        _ => SortTarget::Key,
    };
    RangeRequest {
        key: r.key,
        range_end: r.range_end,
        limit: r.limit,
        revision: r.revision,
        sort_order,
        sort_target,
        keys_only: r.keys_only,
        count_only: r.count_only,
        min_mod_revision: r.min_mod_revision,
        max_mod_revision: r.max_mod_revision,
        min_create_revision: r.min_create_revision,
        max_create_revision: r.max_create_revision,
    }
}

/// A range response.
pub fn range_to_pb(r: RangeResponse, h: &Header) -> pb::RangeResponse {
    pb::RangeResponse {
        header: Some(header_to_pb(h)),
        kvs: r.kvs.into_iter().map(kv_to_pb).collect(),
        more: r.more,
        count: r.count,
    }
}

/// A put request, checked.
pub fn put_from_pb(p: pb::PutRequest) -> Result<PutRequest, Status> {
    check_key(&p.key)?;
    if p.key.len() + p.value.len() > MAX_REQUEST_BYTES {
        return Err(request_too_large());
    }
    Ok(PutRequest {
        key: p.key,
        value: p.value,
        lease: p.lease,
        prev_kv: p.prev_kv,
        ignore_value: p.ignore_value,
        ignore_lease: p.ignore_lease,
    })
}

/// A delete request, checked.
pub fn delete_from_pb(d: pb::DeleteRangeRequest) -> Result<DeleteRangeRequest, Status> {
    check_key(&d.key)?;
    Ok(DeleteRangeRequest {
        key: d.key,
        range_end: d.range_end,
        prev_kv: d.prev_kv,
    })
}

fn compare_from_pb(c: pb::Compare) -> Result<Compare, Status> {
    use pb::compare::TargetUnion as U;
    let result = match c.result {
        0 => CompareResult::Equal,
        1 => CompareResult::Greater,
        2 => CompareResult::Less,
        3 => CompareResult::NotEqual,
        _ => {
            return Err(Status::invalid_argument(
                "etcdserver: unknown compare result",
            ));
        }
    };
    let target = match (c.target, c.target_union) {
        (0, Some(U::Version(v))) => CompareTarget::Version(v),
        (0, None) => CompareTarget::Version(0),
        (1, Some(U::CreateRevision(v))) => CompareTarget::Create(v),
        (1, None) => CompareTarget::Create(0),
        (2, Some(U::ModRevision(v))) => CompareTarget::Mod(v),
        (2, None) => CompareTarget::Mod(0),
        (3, Some(U::Value(v))) => CompareTarget::Value(v),
        (3, None) => CompareTarget::Value(Vec::new()),
        (4, Some(U::Lease(v))) => CompareTarget::Lease(v),
        (4, None) => CompareTarget::Lease(0),
        _ => return Err(Status::invalid_argument("etcdserver: bad compare target")),
    };
    Ok(Compare {
        result,
        target,
        key: c.key,
        range_end: c.range_end,
    })
}

fn op_from_pb(op: pb::RequestOp, depth: usize) -> Result<RequestOp, Status> {
    use pb::request_op::Request as R;
    match op.request {
        Some(R::RequestRange(r)) => {
            check_key(&r.key)?;
            Ok(RequestOp::Range(range_from_pb(r)))
        }
        Some(R::RequestPut(p)) => Ok(RequestOp::Put(put_from_pb(p)?)),
        Some(R::RequestDeleteRange(d)) => Ok(RequestOp::DeleteRange(delete_from_pb(d)?)),
        Some(R::RequestTxn(t)) => Ok(RequestOp::Txn(txn_from_pb(t, depth + 1)?)),
        None => Err(Status::invalid_argument("etcdserver: empty request op")),
    }
}

/// A txn request, checked op by op.
pub fn txn_from_pb(t: pb::TxnRequest, depth: usize) -> Result<TxnRequest, Status> {
    if depth > MAX_TXN_DEPTH {
        return Err(super::etcd_kv::status_from_mvcc(MvccError::TxnTooDeep));
    }
    let ops = |ops: Vec<pb::RequestOp>| -> Result<Vec<RequestOp>, Status> {
        ops.into_iter().map(|o| op_from_pb(o, depth)).collect()
    };
    Ok(TxnRequest {
        compare: t
            .compare
            .into_iter()
            .map(compare_from_pb)
            .collect::<Result<_, _>>()?,
        success: ops(t.success)?,
        failure: ops(t.failure)?,
    })
}

fn response_op_to_pb(r: ResponseOp, h: &Header) -> pb::ResponseOp {
    use pb::response_op::Response as R;
    let header = Some(header_to_pb(h));
    let response = match r {
        ResponseOp::Range(rr) => R::ResponseRange(range_to_pb(rr, h)),
        ResponseOp::Put(p) => R::ResponsePut(pb::PutResponse {
            header,
            prev_kv: p.prev_kv.map(kv_to_pb),
        }),
        ResponseOp::DeleteRange(d) => R::ResponseDeleteRange(pb::DeleteRangeResponse {
            header,
            deleted: d.deleted,
            prev_kvs: d.prev_kvs.into_iter().map(kv_to_pb).collect(),
        }),
        ResponseOp::Txn(t) => R::ResponseTxn(txn_to_pb(t, h)),
    };
    pb::ResponseOp {
        response: Some(response),
    }
}

/// A txn response.
pub fn txn_to_pb(t: TxnResponse, h: &Header) -> pb::TxnResponse {
    pb::TxnResponse {
        header: Some(header_to_pb(h)),
        succeeded: t.succeeded,
        responses: t
            .responses
            .into_iter()
            .map(|r| response_op_to_pb(r, h))
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put_op(key: &str) -> RequestOp {
        RequestOp::Put(PutRequest {
            key: key.into(),
            ..PutRequest::default()
        })
    }

    #[test]
    fn txn_checks_follow_etcd_limits() {
        let ok = TxnRequest {
            success: vec![put_op("a"), put_op("b")],
            ..TxnRequest::default()
        };
        assert!(check_txn(&ok).is_ok());
        let dup = TxnRequest {
            success: vec![put_op("a"), put_op("a")],
            ..TxnRequest::default()
        };
        let e = check_txn(&dup).expect_err("duplicate");
        assert_eq!(
            e.message(),
            "etcdserver: duplicate key given in txn request"
        );
        let many = TxnRequest {
            failure: (0..=MAX_TXN_OPS).map(|i| put_op(&i.to_string())).collect(),
            ..TxnRequest::default()
        };
        let e = check_txn(&many).expect_err("too many");
        assert_eq!(
            e.message(),
            "etcdserver: too many operations in txn request"
        );
        let big = TxnRequest {
            success: vec![RequestOp::Put(PutRequest {
                key: b"k".to_vec(),
                value: vec![0; MAX_REQUEST_BYTES],
                ..PutRequest::default()
            })],
            ..TxnRequest::default()
        };
        let e = check_txn(&big).expect_err("too large");
        assert_eq!(e.message(), "etcdserver: request is too large");
    }

    #[test]
    fn puts_with_an_unknown_lease_or_empty_key_are_refused_with_etcd_messages() {
        let leased = pb::PutRequest {
            key: b"k".to_vec(),
            lease: 7,
            ..pb::PutRequest::default()
        };
        // The edge passes the lease on; the store, which knows the leases,
        // refuses it at apply with etcd's code and message.
        let put = put_from_pb(leased).expect("converted");
        let mut store = crate::storage::mvcc::MvccStore::new();
        let txn = TxnRequest {
            success: vec![RequestOp::Put(put)],
            ..TxnRequest::default()
        };
        let e = super::super::etcd_kv::status_from_mvcc(store.txn(&txn).expect_err("lease"));
        assert_eq!(
            (e.code(), e.message()),
            (
                tonic::Code::NotFound,
                "etcdserver: requested lease not found"
            )
        );
        let e = put_from_pb(pb::PutRequest::default()).expect_err("empty key");
        assert_eq!(e.message(), "etcdserver: key is not provided");
    }

    #[test]
    fn compare_operands_map_to_their_targets() {
        use pb::compare::TargetUnion as U;
        let c = pb::Compare {
            result: 1,
            target: 2,
            key: b"k".to_vec(),
            target_union: Some(U::ModRevision(5)),
            range_end: Vec::new(),
        };
        let got = compare_from_pb(c).expect("compare");
        assert_eq!(
            (got.result, got.target),
            (CompareResult::Greater, CompareTarget::Mod(5))
        );
    }
}
