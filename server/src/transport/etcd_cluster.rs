//! `etcdserverpb.Cluster` (MemberList) and `etcdserverpb.Maintenance`
//! (Status, Alarm, Snapshot) on the client gRPC port: what `etcdctl member
//! list`, `endpoint status`, `endpoint health`, `snapshot save` and clients'
//! endpoint sync call. Snapshot streams through `etcd_snapshot`.
//! Membership changes stay on Titan's Admin API (the operator's); the other
//! methods answer `Unimplemented`.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;

use tonic::{Request, Response, Status};

use titan_proto::etcdserverpb as pb;
use titan_proto::etcdserverpb::cluster_client::ClusterClient;
use titan_proto::etcdserverpb::cluster_server::Cluster;
use titan_proto::etcdserverpb::maintenance_server::Maintenance;

use super::etcd_convert::header_to_pb;
use super::etcd_forward::{FORWARD_CONNECT_TIMEOUT_MS, FORWARD_TIMEOUT_MS};
use super::etcd_snapshot::{self, MAX_SNAPSHOT_STREAMS};
use super::status_from_error;
use super::tls::Dialer;
use crate::node::handle::{AdminCmd, AdminReply};
use crate::node::{Header, HistoryStats, NodeHandle, NodeRole, NodeStatus, ReadAnswer, ReadQuery};

/// The etcd API version Titan reports (what its etcd v3 API matches).
pub const ETCD_VERSION: &str = "3.5.0";

/// Implements `etcdserverpb.Cluster` and `etcdserverpb.Maintenance`.
#[derive(Clone)]
pub struct EtcdClusterService {
    /// The local node.
    node: NodeHandle,
    /// Snapshot streams running (at most [`MAX_SNAPSHOT_STREAMS`]).
    snapshots: Arc<Semaphore>,
    /// Dials the leader's client port (plaintext or TLS, as it is served).
    dialer: Dialer,
}

impl EtcdClusterService {
    /// Serves `node`; asks the leader through `dialer`.
    pub fn new(node: NodeHandle, dialer: Dialer) -> Self {
        EtcdClusterService {
            node,
            snapshots: Arc::new(Semaphore::new(MAX_SNAPSHOT_STREAMS)),
            dialer,
        }
    }

    async fn status(&self) -> Result<NodeStatus, Status> {
        match self.node.admin(AdminCmd::Status).await {
            Ok(AdminReply::Status(s)) => Ok(*s),
            Ok(other) => Err(Status::internal(format!("unexpected reply {other:?}"))),
            Err(e) => Err(status_from_error(e)),
        }
    }

    /// Local (serializable) header and MVCC history statistics.
    async fn local_stats(&self) -> Result<(Header, HistoryStats), Status> {
        let res = self
            .node
            .read(ReadQuery::EtcdStats, false)
            .await
            .map_err(status_from_error)?;
        match res.answer {
            ReadAnswer::EtcdStats(stats) => Ok((res.header, stats)),
            _ => Err(Status::internal("wrong read answer")),
        }
    }
}

fn url(scheme: &str, addr: &str) -> Vec<String> {
    if addr.is_empty() {
        Vec::new()
    } else {
        vec![format!("{scheme}://{addr}")]
    }
}

/// Every member with etcd's URL lists (client URLs are the gRPC addresses,
/// `https` when the client port is served with TLS).
pub fn members_to_pb(s: &NodeStatus, client_tls: bool) -> Vec<pb::Member> {
    let client_scheme = if client_tls { "https" } else { "http" };
    s.members
        .iter()
        .map(|m| pb::Member {
            id: m.member.id,
            name: m.member.name.clone(),
            peer_ur_ls: url("http", &m.member.peer_addr),
            client_ur_ls: url(client_scheme, &m.member.grpc_addr),
            is_learner: !m.voter,
        })
        .collect()
}

/// Asks the leader's Cluster service for the member list.
async fn member_list_from(
    dialer: &Dialer,
    leader_grpc: &str,
) -> Result<pb::MemberListResponse, Status> {
    let endpoint = dialer
        .endpoint(leader_grpc)
        .map_err(|e| Status::unavailable(format!("bad leader address: {e}")))?
        .connect_timeout(Duration::from_millis(FORWARD_CONNECT_TIMEOUT_MS))
        .timeout(Duration::from_millis(FORWARD_TIMEOUT_MS));
    let mut client = ClusterClient::new(endpoint.connect_lazy());
    client
        .member_list(pb::MemberListRequest {
            linearizable: false,
        })
        .await
        .map(|r| r.into_inner())
}

fn unimplemented<T>(what: &str) -> Result<Response<T>, Status> {
    Err(Status::unimplemented(format!(
        "{what} is not served by Titan's etcd API (membership changes: titanctl / the Admin API)"
    )))
}

#[tonic::async_trait]
impl Cluster for EtcdClusterService {
    async fn member_add(
        &self,
        _: Request<pb::MemberAddRequest>,
    ) -> Result<Response<pb::MemberAddResponse>, Status> {
        unimplemented("MemberAdd")
    }

    async fn member_remove(
        &self,
        _: Request<pb::MemberRemoveRequest>,
    ) -> Result<Response<pb::MemberRemoveResponse>, Status> {
        unimplemented("MemberRemove")
    }

    async fn member_update(
        &self,
        _: Request<pb::MemberUpdateRequest>,
    ) -> Result<Response<pb::MemberUpdateResponse>, Status> {
        unimplemented("MemberUpdate")
    }

    async fn member_list(
        &self,
        _: Request<pb::MemberListRequest>,
    ) -> Result<Response<pb::MemberListResponse>, Status> {
        let status = self.status().await?;
        let members = members_to_pb(&status, self.dialer.is_tls());
        let incomplete = members.iter().any(|m| m.client_ur_ls.is_empty());
        let leader_grpc = status.leader.map(|l| l.grpc_addr).unwrap_or_default();
        if incomplete && status.role != NodeRole::Leader && !leader_grpc.is_empty() {
            // A follower hears only from the leader; the leader has heard
            // every member's advertised client address.
            return member_list_from(&self.dialer, &leader_grpc)
                .await
                .map(Response::new);
        }
        let (header, _) = self.local_stats().await?;
        Ok(Response::new(pb::MemberListResponse {
            header: Some(header_to_pb(&header)),
            members,
        }))
    }

    async fn member_promote(
        &self,
        _: Request<pb::MemberPromoteRequest>,
    ) -> Result<Response<pb::MemberPromoteResponse>, Status> {
        unimplemented("MemberPromote")
    }
}

#[tonic::async_trait]
impl Maintenance for EtcdClusterService {
    async fn alarm(
        &self,
        _: Request<pb::AlarmRequest>,
    ) -> Result<Response<pb::AlarmResponse>, Status> {
        let (header, _) = self.local_stats().await?;
        Ok(Response::new(pb::AlarmResponse {
            header: Some(header_to_pb(&header)),
            alarms: Vec::new(),
        }))
    }

    async fn status(
        &self,
        _: Request<pb::StatusRequest>,
    ) -> Result<Response<pb::StatusResponse>, Status> {
        let s = EtcdClusterService::status(self).await?;
        let (header, stats) = self.local_stats().await?;
        let history_bytes = i64::try_from(stats.history_value_bytes).unwrap_or(i64::MAX);
        Ok(Response::new(pb::StatusResponse {
            header: Some(header_to_pb(&header)),
            version: ETCD_VERSION.into(),
            db_size: history_bytes,
            leader: s.leader_id,
            raft_index: s.commit,
            raft_term: s.term,
            raft_applied_index: s.applied,
            errors: Vec::new(),
            db_size_in_use: history_bytes,
            is_learner: s.role == NodeRole::Learner,
        }))
    }

    async fn defragment(
        &self,
        _: Request<pb::DefragmentRequest>,
    ) -> Result<Response<pb::DefragmentResponse>, Status> {
        unimplemented("Defragment")
    }

    async fn hash(
        &self,
        _: Request<pb::HashRequest>,
    ) -> Result<Response<pb::HashResponse>, Status> {
        unimplemented("Hash")
    }

    async fn hash_kv(
        &self,
        _: Request<pb::HashKvRequest>,
    ) -> Result<Response<pb::HashKvResponse>, Status> {
        unimplemented("HashKV")
    }

    type SnapshotStream =
        tokio_stream::wrappers::ReceiverStream<Result<pb::SnapshotResponse, Status>>;

    async fn snapshot(
        &self,
        _: Request<pb::SnapshotRequest>,
    ) -> Result<Response<Self::SnapshotStream>, Status> {
        let permit = self.snapshots.clone().try_acquire_owned().map_err(|_| {
            Status::resource_exhausted(format!(
                "too many snapshot streams on this member (at most {MAX_SNAPSHOT_STREAMS})"
            ))
        })?;
        // Local, as etcd serves it: a member that lost its quorum can still
        // be backed up.
        let res = self
            .node
            .read(ReadQuery::EtcdSnapshot, false)
            .await
            .map_err(status_from_error)?;
        let ReadAnswer::EtcdSnapshot(at) = res.answer else {
            return Err(Status::internal("wrong read answer"));
        };
        let header = header_to_pb(&res.header);
        Ok(Response::new(etcd_snapshot::stream(at, header, permit)))
    }

    async fn move_leader(
        &self,
        _: Request<pb::MoveLeaderRequest>,
    ) -> Result<Response<pb::MoveLeaderResponse>, Status> {
        unimplemented("MoveLeader")
    }

    async fn downgrade(
        &self,
        _: Request<pb::DowngradeRequest>,
    ) -> Result<Response<pb::DowngradeResponse>, Status> {
        unimplemented("Downgrade")
    }
}
