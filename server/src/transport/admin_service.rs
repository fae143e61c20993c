//! `titan.v1.Admin` on the peer port: status, membership, leadership
//! transfer and snapshots, all forwarded to the runtime as [`AdminCmd`]s.

use std::time::Duration;

use futures::future::BoxFuture;
use tonic::{Request, Response, Status};

use titan_proto::v1 as pb;
use titan_proto::v1::admin_server::Admin;

use super::admin_auth::AdminPolicy;
use super::status_from_error;
use super::tls::Dialer;
use crate::node::handle::{AdminCmd, AdminReply};
use crate::node::outbound::{PeerView, StatusProbe};
use crate::node::{Member, MemberStatus, NodeHandle, NodeRole, NodeStatus, SnapshotInfo};

/// Asks the node at `addr` for its status; `None` if it does not answer
/// within `timeout`.
pub async fn probe_status(dialer: Dialer, addr: String, timeout: Duration) -> Option<PeerView> {
    let call = async {
        let channel = super::peer::connect(&dialer, &addr, timeout).await.ok()?;
        let mut client = titan_proto::v1::admin_client::AdminClient::new(channel);
        client.status(pb::StatusRequest {}).await.ok()
    };
    let s = tokio::time::timeout(timeout, call)
        .await
        .ok()
        .flatten()?
        .into_inner();
    Some(PeerView {
        cluster_id: s.cluster_id,
        id: s.id,
        members: s.members.iter().map(|m| (m.id, m.match_index)).collect(),
        term: s.term,
        leader_id: s.leader_id,
        commit_index: s.commit_index,
        last_index: s.last_index,
    })
}

/// The node's pre-bootstrap [`StatusProbe`], over Admin.Status.
#[derive(Debug, Clone, Default)]
pub struct AdminStatusProbe {
    /// Dials the peers' Admin service (plaintext or mutual TLS).
    pub dialer: Dialer,
}

impl StatusProbe for AdminStatusProbe {
    fn probe(&self, addr: String, timeout: Duration) -> BoxFuture<'static, Option<PeerView>> {
        Box::pin(probe_status(self.dialer.clone(), addr, timeout))
    }
}

/// How long TransferLeadership waits for the target to take over.
const TRANSFER_WAIT: Duration = Duration::from_secs(3);

/// Implements `titan.v1.Admin`.
pub struct AdminService {
    /// The local node.
    node: NodeHandle,
    /// Who may make the calls that change the cluster.
    policy: AdminPolicy,
}

impl AdminService {
    /// Serves `node`; the calls that change the cluster are checked against
    /// `policy`.
    pub fn new(node: NodeHandle, policy: AdminPolicy) -> Self {
        AdminService { node, policy }
    }

    /// Refuses `req` unless its caller is an admin identity (see
    /// [`AdminPolicy`]); logs the refusal.
    fn authorize<T>(&self, call: &str, req: &Request<T>) -> Result<(), Status> {
        let certs = req.peer_certs();
        self.policy
            .check(call, certs.as_deref().map(Vec::as_slice))
            .inspect_err(|s| {
                tracing::warn!(
                    remote = ?req.remote_addr(),
                    reason = s.message(),
                    "Admin call refused"
                );
            })
    }

    async fn run(&self, cmd: AdminCmd) -> Result<AdminReply, Status> {
        self.node.admin(cmd).await.map_err(status_from_error)
    }

    async fn membership(&self, cmd: AdminCmd) -> Result<Response<pb::MembershipResponse>, Status> {
        match self.run(cmd).await? {
            AdminReply::Membership(members, index) => Ok(Response::new(pb::MembershipResponse {
                members: members.iter().map(member_to_pb).collect(),
                index,
            })),
            other => Err(Status::internal(format!("unexpected reply {other:?}"))),
        }
    }
}

fn role_to_pb(role: NodeRole) -> pb::Role {
    match role {
        NodeRole::Follower => pb::Role::Follower,
        NodeRole::PreCandidate => pb::Role::PreCandidate,
        NodeRole::Candidate => pb::Role::Candidate,
        NodeRole::Leader => pb::Role::Leader,
        NodeRole::Learner => pb::Role::Learner,
        NodeRole::Joining => pb::Role::Joining,
    }
}

fn member_to_pb(m: &MemberStatus) -> pb::Member {
    pb::Member {
        id: m.member.id,
        name: m.member.name.clone(),
        peer_addr: m.member.peer_addr.clone(),
        client_addr: m.member.client_addr.clone(),
        grpc_addr: m.member.grpc_addr.clone(),
        voter: m.voter,
        match_index: m.match_index,
        lag_entries: m.lag_entries,
    }
}

fn snapshot_to_pb(s: &SnapshotInfo) -> pb::SnapshotInfo {
    pb::SnapshotInfo {
        index: s.index,
        term: s.term,
        unix_ms: s.unix_ms,
        size_bytes: s.size_bytes,
    }
}

/// Renders a [`NodeStatus`] as the protobuf response.
pub fn status_to_pb(s: &NodeStatus) -> pb::StatusResponse {
    let leader = s.leader.clone().unwrap_or_default();
    pb::StatusResponse {
        id: s.id,
        name: s.name.clone(),
        role: role_to_pb(s.role) as i32,
        term: s.term,
        leader_id: s.leader_id,
        leader_client_addr: leader.client_addr,
        leader_peer_addr: leader.peer_addr,
        commit_index: s.commit,
        applied_index: s.applied,
        last_index: s.last_index,
        members: s.members.iter().map(member_to_pb).collect(),
        last_snapshot: s.last_snapshot.as_ref().map(snapshot_to_pb),
        cluster_id: s.cluster_id.clone(),
        leader_grpc_addr: leader.grpc_addr,
        version: env!("CARGO_PKG_VERSION").to_string(),
    }
}

#[tonic::async_trait]
impl Admin for AdminService {
    async fn status(
        &self,
        _: Request<pb::StatusRequest>,
    ) -> Result<Response<pb::StatusResponse>, Status> {
        match self.run(AdminCmd::Status).await? {
            AdminReply::Status(s) => Ok(Response::new(status_to_pb(&s))),
            other => Err(Status::internal(format!("unexpected reply {other:?}"))),
        }
    }

    async fn add_member(
        &self,
        req: Request<pb::AddMemberRequest>,
    ) -> Result<Response<pb::MembershipResponse>, Status> {
        self.authorize("AddMember", &req)?;
        let r = req.into_inner();
        if r.id == 0 || r.peer_addr.is_empty() {
            return Err(Status::invalid_argument("id and peer_addr are required"));
        }
        let member = Member {
            id: r.id,
            name: r.name,
            peer_addr: r.peer_addr,
            client_addr: r.client_addr,
            grpc_addr: r.grpc_addr,
        };
        self.membership(AdminCmd::AddMember(member)).await
    }

    async fn promote_member(
        &self,
        req: Request<pb::PromoteMemberRequest>,
    ) -> Result<Response<pb::MembershipResponse>, Status> {
        self.authorize("PromoteMember", &req)?;
        self.membership(AdminCmd::Promote(req.into_inner().id))
            .await
    }

    async fn remove_member(
        &self,
        req: Request<pb::RemoveMemberRequest>,
    ) -> Result<Response<pb::MembershipResponse>, Status> {
        self.authorize("RemoveMember", &req)?;
        self.membership(AdminCmd::Remove(req.into_inner().id)).await
    }

    async fn transfer_leadership(
        &self,
        req: Request<pb::TransferLeadershipRequest>,
    ) -> Result<Response<pb::TransferLeadershipResponse>, Status> {
        self.authorize("TransferLeadership", &req)?;
        let mut leader = self.node.watch_leader();
        let target = match self
            .run(AdminCmd::TransferLeader(req.into_inner().target_id))
            .await?
        {
            AdminReply::TransferStarted(t) => t,
            other => return Err(Status::internal(format!("unexpected reply {other:?}"))),
        };
        let done =
            tokio::time::timeout(TRANSFER_WAIT, leader.wait_for(|v| v.leader_id == target)).await;
        match done {
            Ok(Ok(_)) => Ok(Response::new(pb::TransferLeadershipResponse {
                leader_id: target,
            })),
            _ => Err(Status::deadline_exceeded(format!(
                "member {target} did not take over in time"
            ))),
        }
    }

    async fn take_snapshot(
        &self,
        req: Request<pb::TakeSnapshotRequest>,
    ) -> Result<Response<pb::TakeSnapshotResponse>, Status> {
        self.authorize("TakeSnapshot", &req)?;
        match self.run(AdminCmd::TakeSnapshot).await? {
            AdminReply::Snapshot(s) => Ok(Response::new(pb::TakeSnapshotResponse {
                snapshot: Some(snapshot_to_pb(&s)),
            })),
            other => Err(Status::internal(format!("unexpected reply {other:?}"))),
        }
    }

    async fn merge_value_log(
        &self,
        req: Request<pb::MergeValueLogRequest>,
    ) -> Result<Response<pb::MergeValueLogResponse>, Status> {
        self.authorize("MergeValueLog", &req)?;
        match self.run(AdminCmd::MergeValueLog).await {
            Ok(AdminReply::Merge(m)) => Ok(Response::new(pb::MergeValueLogResponse {
                files: m.files,
                file_bytes: m.file_bytes,
                live_bytes: m.live_bytes,
            })),
            Ok(other) => Err(Status::internal(format!("unexpected reply {other:?}"))),
            Err(s) if s.code() == tonic::Code::InvalidArgument => {
                Err(Status::failed_precondition(s.message().to_string()))
            }
            Err(s) => Err(s),
        }
    }
}
