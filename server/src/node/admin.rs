//! Admin commands inside the runtime: status, membership changes through
//! single-server configuration changes, leadership transfer, snapshots.

use tokio::sync::oneshot;

use super::handle::{AdminCmd, AdminReply};
use super::proposals::PendingConf;
use super::runtime::Runtime;
use super::store as adapter;
use super::{Member, MemberStatus, NodeError, NodeRole, NodeStatus};
use crate::raft::{ConfChange, ConfChangeType, NodeId, Role};

type AdminTx = oneshot::Sender<Result<AdminReply, NodeError>>;

impl Runtime {
    /// Dispatches one admin command.
    pub(super) fn on_admin(&mut self, cmd: AdminCmd, reply: AdminTx) {
        match cmd {
            AdminCmd::Status => {
                let _ = reply.send(Ok(AdminReply::Status(Box::new(self.node_status()))));
            }
            AdminCmd::AddMember(m) => {
                let context = adapter::encode_member(&m);
                self.propose_conf(ConfChangeType::AddLearner, m.id, context, reply);
            }
            AdminCmd::Promote(id) => match self.member(id) {
                Some(m) => self.propose_conf(
                    ConfChangeType::PromoteLearner,
                    id,
                    adapter::encode_member(&m),
                    reply,
                ),
                None => {
                    let _ = reply.send(Err(NodeError::Invalid(format!("unknown member {id}"))));
                }
            },
            AdminCmd::Remove(id) => {
                let context = self
                    .member(id)
                    .map(|m| adapter::encode_member(&m))
                    .unwrap_or_default();
                self.propose_conf(ConfChangeType::RemoveNode, id, context, reply);
            }
            AdminCmd::TransferLeader(target) => self.transfer(target, reply),
            AdminCmd::TakeSnapshot => self.snapshot_on_demand(reply),
            AdminCmd::MergeValueLog => self.merge_on_demand(reply),
        }
    }

    fn not_leader(&self) -> NodeError {
        match self.member(self.leader) {
            Some(m) if self.leader != self.identity.id => NodeError::NotLeader {
                client_addr: m.client_addr,
                grpc_addr: m.grpc_addr,
            },
            _ => NodeError::Unavailable("no leader".into()),
        }
    }

    fn propose_conf(
        &mut self,
        change: ConfChangeType,
        node_id: NodeId,
        context: Vec<u8>,
        reply: AdminTx,
    ) {
        if self.role != Role::Leader {
            let _ = reply.send(Err(self.not_leader()));
            return;
        }
        let cc = ConfChange {
            change,
            node_id,
            context,
        };
        match self.raw.propose_conf_change(cc) {
            Ok((index, term)) => {
                self.proposals
                    .conf_proposed(index, PendingConf { term, reply });
            }
            Err(e) => {
                let _ = reply.send(Err(self.proposal_error(e)));
            }
        }
    }

    fn transfer(&mut self, target: NodeId, reply: AdminTx) {
        if self.role != Role::Leader {
            let _ = reply.send(Err(self.not_leader()));
            return;
        }
        let target = if target == 0 {
            self.best_transfer_target()
        } else {
            Some(target)
        };
        let Some(target) = target else {
            let _ = reply.send(Err(NodeError::Invalid(
                "no other voter to transfer to".into(),
            )));
            return;
        };
        if target == self.identity.id {
            let _ = reply.send(Ok(AdminReply::TransferStarted(target)));
            return;
        }
        let result = self
            .raw
            .transfer_leader(target)
            .map(|_| AdminReply::TransferStarted(target))
            .map_err(|e| self.proposal_error(e));
        let _ = reply.send(result);
    }

    /// The most up-to-date other voter.
    pub(super) fn best_transfer_target(&self) -> Option<NodeId> {
        let status = self.raw.status();
        status
            .progress
            .iter()
            .filter(|(id, p)| **id != self.identity.id && p.voter)
            .max_by_key(|(_, p)| p.match_index)
            .map(|(id, _)| *id)
    }

    /// Members with voter flag and (on the leader) replication progress.
    pub(super) fn member_statuses(&self) -> Vec<MemberStatus> {
        let status = self.raw.status();
        let ids = status.conf.voters.iter().chain(status.conf.learners.iter());
        ids.map(|id| {
            // The directory entry plus the addresses the member advertised.
            let member = self.member(*id).unwrap_or(Member {
                id: *id,
                ..Member::default()
            });
            let (match_index, lag_entries) = match status.progress.get(id) {
                Some(p) => (
                    p.match_index,
                    status.last_index.saturating_sub(p.match_index),
                ),
                None => (0, 0),
            };
            MemberStatus {
                member,
                voter: status.conf.voters.contains(id),
                match_index,
                lag_entries,
            }
        })
        .collect()
    }

    /// A status snapshot for Admin.Status.
    pub(super) fn node_status(&self) -> NodeStatus {
        let status = self.raw.status();
        let me = self.identity.id;
        let role = if !status.conf.contains(me) {
            NodeRole::Joining
        } else if status.conf.learners.contains(&me) {
            NodeRole::Learner
        } else {
            match self.role {
                Role::Follower => NodeRole::Follower,
                Role::PreCandidate => NodeRole::PreCandidate,
                Role::Candidate => NodeRole::Candidate,
                Role::Leader => NodeRole::Leader,
            }
        };
        NodeStatus {
            id: me,
            name: self.identity.name.clone(),
            cluster_id: self.identity.cluster_id.clone(),
            role,
            term: status.term,
            leader_id: self.leader,
            leader: self.member(self.leader),
            commit: status.commit,
            applied: self.applied,
            last_index: status.last_index,
            members: self.member_statuses(),
            last_snapshot: self.snap.latest_info(),
        }
    }
}
