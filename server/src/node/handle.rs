//! The cloneable front door to the runtime task: client requests, admin
//! commands and inbound peer traffic, each over its own bounded channel.

use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;

use super::{
    LeaseQuery, LeaseResult, Member, MemberStatus, NodeError, NodeStatus, ReadAnswer, ReadQuery,
    ReadResult, SnapshotInfo, WriteOp, WriteResult, reason,
};
use crate::raft::{Message, NodeId, SnapshotMeta};

/// Who leads, as last published by the runtime.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LeaderView {
    /// Leader's id (0 = unknown).
    pub leader_id: NodeId,
    /// Whether this node is the leader.
    pub is_self: bool,
    /// The leader's directory entry, if known.
    pub leader: Option<Member>,
    /// Ready for traffic: a member, leader known, applied close to commit.
    pub ready: bool,
    /// Set once shutdown started; requests fail fast.
    pub stopping: bool,
    /// Set once a fatal storage error stopped the runtime: `/healthz`,
    /// `/readyz` and gRPC health fail at once and the process exits.
    pub failed: bool,
}

/// Administrative commands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AdminCmd {
    /// Report status.
    Status,
    /// Add a learner.
    AddMember(Member),
    /// Promote a learner to voter.
    Promote(NodeId),
    /// Remove a member.
    Remove(NodeId),
    /// Hand leadership to `target` (0 = most up-to-date voter).
    TransferLeader(NodeId),
    /// Snapshot now.
    TakeSnapshot,
    /// Merge the value log now.
    MergeValueLog,
}

/// Replies to [`AdminCmd`]s.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AdminReply {
    /// For [`AdminCmd::Status`].
    Status(Box<NodeStatus>),
    /// For membership changes: members after the change and its log index.
    Membership(Vec<MemberStatus>, u64),
    /// Transfer started towards this member.
    TransferStarted(NodeId),
    /// For [`AdminCmd::TakeSnapshot`].
    Snapshot(SnapshotInfo),
    /// For [`AdminCmd::MergeValueLog`].
    Merge(super::MergeInfo),
}

/// Requests from clients and the admin API.
#[derive(Debug)]
pub(crate) enum ClientInput {
    Propose {
        op: WriteOp,
        /// A follower may forward it to the leader instead of refusing it.
        forward: bool,
        reply: oneshot::Sender<Result<WriteResult, NodeError>>,
        /// When it was queued (the start of the write-stage histograms).
        received: Instant,
    },
    Read {
        query: ReadQuery,
        linearizable: bool,
        reply: oneshot::Sender<Result<ReadResult, NodeError>>,
    },
    Admin {
        cmd: AdminCmd,
        reply: oneshot::Sender<Result<AdminReply, NodeError>>,
    },
    /// A lease keep-alive or query for the leader's lease clock.
    Lease {
        /// What is asked.
        query: LeaseQuery,
        /// Where the answer goes.
        reply: oneshot::Sender<Result<LeaseResult, NodeError>>,
    },
}

/// Traffic from other nodes.
#[derive(Debug)]
pub(crate) enum PeerInput {
    /// A batch of Raft messages, with the sender's advertised addresses.
    Messages {
        msgs: Vec<Message>,
        sender: Member,
        cluster_id: String,
    },
    /// A complete snapshot received from the leader, validated and staged
    /// (not loadable until accepted; the message is the first chunk's).
    Snapshot {
        msg: Message,
        cluster_id: String,
        staged: Box<crate::storage::StagedSnapshot>,
        done: oneshot::Sender<Result<(), String>>,
    },
    /// A snapshot transfer to `to` finished.
    SnapshotSent { to: NodeId, ok: bool },
    /// A local snapshot finished writing.
    SnapshotWritten(Result<(SnapshotMeta, crate::storage::SnapshotFile), String>),
    /// A value-log merge finished copying.
    MergeCopied(Box<super::merge::MergeDone>),
}

/// The transport's way into the runtime.
#[derive(Debug, Clone)]
pub struct PeerInbox {
    /// Bounded: a full queue makes the peer stream wait (TCP back-pressure).
    pub(crate) tx: mpsc::Sender<PeerInput>,
    /// This node's cluster id (empty until a joining node adopts one).
    pub(crate) cluster_id: watch::Receiver<String>,
}

impl PeerInbox {
    /// Delivers a batch of Raft messages; `false` once the node stopped.
    pub async fn deliver(&self, msgs: Vec<Message>, sender: Member, cluster_id: String) -> bool {
        let input = PeerInput::Messages {
            msgs,
            sender,
            cluster_id,
        };
        self.tx.send(input).await.is_ok()
    }

    /// This node's cluster id right now (empty while joining).
    pub fn cluster_id(&self) -> String {
        self.cluster_id.borrow().clone()
    }

    /// Hands a fully received, staged snapshot to the runtime and waits for
    /// the core's verdict.
    pub async fn install_snapshot(
        &self,
        msg: Message,
        cluster_id: String,
        staged: crate::storage::StagedSnapshot,
    ) -> Result<(), String> {
        let (done, rx) = oneshot::channel();
        let input = PeerInput::Snapshot {
            msg,
            cluster_id,
            staged: Box::new(staged),
            done,
        };
        self.tx
            .send(input)
            .await
            .map_err(|_| "node stopped".to_string())?;
        rx.await.map_err(|_| "node stopped".to_string())?
    }
}

/// How clients reach the runtime.
#[derive(Debug, Clone)]
pub struct NodeHandle {
    /// Bounded request queue (`max_pending_requests`): a full queue slows clients.
    pub(crate) tx: mpsc::Sender<ClientInput>,
    /// Latest leader view.
    pub(crate) leader: watch::Receiver<LeaderView>,
    /// How long a request waits for a leader before `UNAVAILABLE`.
    pub(crate) leader_wait: Duration,
    /// Upper bound on waiting for a proposal or read to complete.
    pub(crate) request_timeout: Duration,
}

/// Why requests fail once the runtime stopped (or is stopping).
fn stopped_error(view: &LeaderView) -> NodeError {
    if view.failed {
        NodeError::unavailable(reason::STORAGE_FAILURE)
    } else {
        NodeError::unavailable(reason::SHUTTING_DOWN)
    }
}

impl NodeHandle {
    fn stopped(&self) -> NodeError {
        stopped_error(&self.leader.borrow())
    }

    /// Resolves once a fatal storage error stopped the runtime (never
    /// otherwise): `main` then drains briefly and exits non-zero.
    pub async fn fatal(&self) {
        let mut rx = self.leader.clone();
        if rx.wait_for(|v| v.failed).await.is_err() {
            std::future::pending::<()>().await;
        }
    }

    /// The latest leader view.
    pub fn leader_view(&self) -> LeaderView {
        self.leader.borrow().clone()
    }

    /// A receiver that sees every leader change.
    pub fn watch_leader(&self) -> watch::Receiver<LeaderView> {
        self.leader.clone()
    }

    /// Waits until some leader is known, up to `deadline`.
    async fn wait_for_leader(&self, deadline: Instant) -> Result<LeaderView, NodeError> {
        let mut rx = self.leader.clone();
        let waited =
            tokio::time::timeout_at(deadline, rx.wait_for(|v| v.leader_id != 0 || v.stopping))
                .await;
        match waited {
            Ok(Ok(v)) if v.stopping => Err(stopped_error(&v)),
            Ok(Ok(v)) => Ok(v.clone()),
            Ok(Err(_)) => Err(self.stopped()),
            Err(_) => Err(NodeError::unavailable(reason::NO_LEADER_ELECTED)),
        }
    }

    /// Replicates a write; returns once it is committed and applied.
    pub async fn write(&self, op: WriteOp) -> Result<WriteResult, NodeError> {
        self.submit_write(op).await?.wait().await
    }

    /// Replicates a write from any member: a follower forwards it to the
    /// leader inside Raft and answers once it has applied the entry itself
    /// (so a read here afterwards sees it). Returns once it is applied.
    pub async fn write_from_any_member(&self, op: WriteOp) -> Result<WriteResult, NodeError> {
        super::limits::check_write(&op)?;
        self.wait_for_leader(Instant::now() + self.leader_wait)
            .await?;
        let (reply, rx) = oneshot::channel();
        let input = ClientInput::Propose {
            op,
            forward: true,
            reply,
            received: Instant::now(),
        };
        self.submit(input, rx).await?.wait().await
    }

    /// Hands a write to the runtime (after waiting for a leader) without
    /// waiting for the outcome. Callers that need per-connection order
    /// submit one request after the other and await the [`Waiter`]s later.
    pub async fn submit_write(&self, op: WriteOp) -> Result<Waiter<WriteResult>, NodeError> {
        super::limits::check_write(&op)?;
        let deadline = Instant::now() + self.leader_wait;
        let view = self.wait_for_leader(deadline).await?;
        if !view.is_self {
            let leader = view.leader.unwrap_or_default();
            return Err(NodeError::NotLeader {
                client_addr: leader.client_addr,
                grpc_addr: leader.grpc_addr,
            });
        }
        let (reply, rx) = oneshot::channel();
        let input = ClientInput::Propose {
            op,
            forward: false,
            reply,
            received: Instant::now(),
        };
        self.submit(input, rx).await
    }

    /// Asks the leader's lease clock (keep-alive, time-to-live, list). On a
    /// follower this is [`NodeError::NotLeader`]: the caller forwards.
    pub async fn lease(&self, query: LeaseQuery) -> Result<LeaseResult, NodeError> {
        let deadline = Instant::now() + self.leader_wait;
        let view = self.wait_for_leader(deadline).await?;
        if !view.is_self {
            let leader = view.leader.unwrap_or_default();
            return Err(NodeError::NotLeader {
                client_addr: leader.client_addr,
                grpc_addr: leader.grpc_addr,
            });
        }
        let (reply, rx) = oneshot::channel();
        self.submit(ClientInput::Lease { query, reply }, rx)
            .await?
            .wait()
            .await
    }

    /// Reads `key`; linearizable unless `linearizable` is false.
    pub async fn get(&self, key: Bytes, linearizable: bool) -> Result<GetResult, NodeError> {
        self.submit_read(ReadQuery::Get(key), linearizable)
            .await?
            .wait()
            .await
            .and_then(get_result)
    }

    /// Runs a read query.
    pub async fn read(
        &self,
        query: ReadQuery,
        linearizable: bool,
    ) -> Result<ReadResult, NodeError> {
        self.submit_read(query, linearizable).await?.wait().await
    }

    /// Hands a read to the runtime without waiting for the answer.
    pub async fn submit_read(
        &self,
        query: ReadQuery,
        linearizable: bool,
    ) -> Result<Waiter<ReadResult>, NodeError> {
        super::limits::check_read(&query)?;
        if linearizable {
            self.wait_for_leader(Instant::now() + self.leader_wait)
                .await?;
        }
        let (reply, rx) = oneshot::channel();
        self.submit(
            ClientInput::Read {
                query,
                linearizable,
                reply,
            },
            rx,
        )
        .await
    }

    /// Runs an admin command on this node.
    pub async fn admin(&self, cmd: AdminCmd) -> Result<AdminReply, NodeError> {
        let (reply, rx) = oneshot::channel();
        self.submit(ClientInput::Admin { cmd, reply }, rx)
            .await?
            .wait()
            .await
    }

    async fn submit<T>(
        &self,
        input: ClientInput,
        rx: oneshot::Receiver<Result<T, NodeError>>,
    ) -> Result<Waiter<T>, NodeError> {
        if self.leader.borrow().stopping {
            return Err(self.stopped());
        }
        self.tx.send(input).await.map_err(|_| self.stopped())?;
        Ok(Waiter {
            rx,
            timeout: self.request_timeout,
            leader: self.leader.clone(),
        })
    }
}

/// The outcome of a submitted request, bounded by the request timeout.
#[derive(Debug)]
pub struct Waiter<T> {
    /// Answered by the runtime.
    rx: oneshot::Receiver<Result<T, NodeError>>,
    /// Give up after this long (the outcome of a write is then unknown).
    timeout: Duration,
    /// Tells a fatal stop from a shutdown when the runtime drops the reply.
    leader: watch::Receiver<LeaderView>,
}

impl<T> Waiter<T> {
    /// Waits for the runtime's answer.
    pub async fn wait(self) -> Result<T, NodeError> {
        match tokio::time::timeout(self.timeout, self.rx).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(stopped_error(&self.leader.borrow())),
            Err(_) => Err(NodeError::unavailable(reason::TIMED_OUT)),
        }
    }
}

/// Narrows a read answer to a single-key result.
pub fn get_result(res: ReadResult) -> Result<GetResult, NodeError> {
    match res.answer {
        ReadAnswer::Get(value) => Ok(GetResult {
            value,
            read_index: res.read_index,
        }),
        _ => Err(NodeError::Unavailable("internal: wrong read answer".into())),
    }
}

/// Result of [`NodeHandle::get`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GetResult {
    /// The entry, if the key exists.
    pub value: Option<super::KvEntry>,
    /// Applied index the read was served at.
    pub read_index: u64,
}
