//! `etcdserverpb.KV` on the client gRPC port: etcd's Range, Put,
//! DeleteRange, Txn and Compact over the node's MVCC store. Every write is
//! one Raft entry carrying a whole txn (etcd's Put and DeleteRange are
//! one-op txns), applied atomically. Range is linearizable (ReadIndex)
//! unless `serializable`. Errors carry etcd's gRPC codes and messages.
//! A follower forwards writes to the leader inside Raft
//! (`NodeHandle::write_from_any_member`) and answers once it has applied
//! them itself, as etcd does.

use tonic::{Request, Response, Status};

use titan_proto::etcdserverpb as pb;
use titan_proto::etcdserverpb::kv_server::Kv;

use super::etcd_convert as conv;
use super::etcd_forward::UNKNOWN_OUTCOME;
use super::status_from_error;
use crate::node::{
    Header, MvccError, NodeError, NodeHandle, ReadAnswer, ReadQuery, TxnRequest, TxnResponse,
    WriteOp,
};
use crate::storage::mvcc::{RequestOp, ResponseOp};

/// Largest request accepted (etcd's `--max-request-bytes` default, 1.5 MiB;
/// defined with the node's other edge limits).
pub const MAX_REQUEST_BYTES: usize = crate::node::limits::ETCD_MAX_REQUEST_BYTES;
/// Most operations in one txn branch (etcd's `--max-txn-ops` default).
pub const MAX_TXN_OPS: usize = 128;
/// gRPC decoding limit: the request limit plus etcd's framing allowance.
pub const MAX_GRPC_MESSAGE_BYTES: usize = MAX_REQUEST_BYTES + 512 * 1024;

/// etcd's error for a request over [`MAX_REQUEST_BYTES`].
pub fn request_too_large() -> Status {
    Status::invalid_argument("etcdserver: request is too large")
}

/// etcd's codes for MVCC errors.
pub fn status_from_mvcc(e: MvccError) -> Status {
    match e {
        MvccError::Compacted | MvccError::FutureRevision => Status::out_of_range(e.to_string()),
        MvccError::LeaseNotFound => Status::not_found(e.to_string()),
        MvccError::LeaseExists => Status::failed_precondition(e.to_string()),
        MvccError::LeaseTtlTooLarge => Status::out_of_range(e.to_string()),
        MvccError::TooManyLeases => Status::resource_exhausted(e.to_string()),
        MvccError::KeyNotFound | MvccError::TxnTooDeep => Status::invalid_argument(e.to_string()),
        MvccError::ValueUnreadable => Status::data_loss(e.to_string()),
    }
}

/// Local node errors as etcd clients expect them.
pub fn etcd_status(e: NodeError) -> Status {
    match e {
        // Refused before it was proposed: safe to retry.
        NodeError::NotLeader { .. } => Status::unavailable("etcdserver: leader changed"),
        NodeError::Unavailable(m) if m.contains("outcome unknown") => {
            Status::deadline_exceeded(UNKNOWN_OUTCOME)
        }
        other => status_from_error(other),
    }
}

/// Implements `etcdserverpb.KV`.
pub struct EtcdKvService {
    /// The local node.
    node: NodeHandle,
}

impl EtcdKvService {
    /// Serves `node`.
    pub fn new(node: NodeHandle) -> Self {
        EtcdKvService { node }
    }

    /// Proposes `txn` and returns the applied response with its header.
    async fn write_txn(&self, txn: TxnRequest) -> Result<(TxnResponse, Header), Status> {
        conv::check_txn(&txn)?;
        let w = self
            .node
            .write_from_any_member(WriteOp::Txn(Box::new(txn)))
            .await
            .map_err(etcd_status)?;
        let resp = w
            .txn
            .ok_or_else(|| Status::internal("txn applied without a response"))?;
        Ok((*resp, w.header))
    }
}

/// The single response of a one-op txn.
fn only_response(resp: TxnResponse) -> Result<ResponseOp, Status> {
    resp.responses
        .into_iter()
        .next()
        .ok_or_else(|| Status::internal("txn applied without its op"))
}

#[tonic::async_trait]
impl Kv for EtcdKvService {
    async fn range(
        &self,
        req: Request<pb::RangeRequest>,
    ) -> Result<Response<pb::RangeResponse>, Status> {
        let r = req.into_inner();
        conv::check_key(&r.key)?;
        let linearizable = !r.serializable;
        let query = ReadQuery::Etcd(Box::new(conv::range_from_pb(r)));
        let res = self
            .node
            .read(query, linearizable)
            .await
            .map_err(etcd_status)?;
        match res.answer {
            ReadAnswer::Etcd(view) => match view.run() {
                Ok(rr) => Ok(Response::new(conv::range_to_pb(rr, &res.header))),
                Err(e) => Err(status_from_mvcc(e)),
            },
            _ => Err(Status::internal("wrong read answer")),
        }
    }

    async fn put(&self, req: Request<pb::PutRequest>) -> Result<Response<pb::PutResponse>, Status> {
        let p = conv::put_from_pb(req.into_inner())?;
        let (resp, header) = self.write_txn(one_op(RequestOp::Put(p))).await?;
        match only_response(resp)? {
            ResponseOp::Put(p) => Ok(Response::new(pb::PutResponse {
                header: Some(conv::header_to_pb(&header)),
                prev_kv: p.prev_kv.map(conv::kv_to_pb),
            })),
            _ => Err(Status::internal("wrong op response")),
        }
    }

    async fn delete_range(
        &self,
        req: Request<pb::DeleteRangeRequest>,
    ) -> Result<Response<pb::DeleteRangeResponse>, Status> {
        let d = conv::delete_from_pb(req.into_inner())?;
        let (resp, header) = self.write_txn(one_op(RequestOp::DeleteRange(d))).await?;
        match only_response(resp)? {
            ResponseOp::DeleteRange(d) => Ok(Response::new(pb::DeleteRangeResponse {
                header: Some(conv::header_to_pb(&header)),
                deleted: d.deleted,
                prev_kvs: d.prev_kvs.into_iter().map(conv::kv_to_pb).collect(),
            })),
            _ => Err(Status::internal("wrong op response")),
        }
    }

    async fn txn(&self, req: Request<pb::TxnRequest>) -> Result<Response<pb::TxnResponse>, Status> {
        let txn = conv::txn_from_pb(req.into_inner(), 0)?;
        let (resp, header) = self.write_txn(txn).await?;
        Ok(Response::new(conv::txn_to_pb(resp, &header)))
    }

    async fn compact(
        &self,
        req: Request<pb::CompactionRequest>,
    ) -> Result<Response<pb::CompactionResponse>, Status> {
        let rev = req.into_inner().revision;
        let w = self
            .node
            .write_from_any_member(WriteOp::Compact(rev))
            .await
            .map_err(etcd_status)?;
        Ok(Response::new(pb::CompactionResponse {
            header: Some(conv::header_to_pb(&w.header)),
        }))
    }
}

fn one_op(op: RequestOp) -> TxnRequest {
    TxnRequest {
        compare: Vec::new(),
        success: vec![op],
        failure: Vec::new(),
    }
}
