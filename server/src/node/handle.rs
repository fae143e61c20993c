//! The cloneable front door to the runtime task: client requests, admin
//! commands and inbound peer traffic, each over its own bounded channel.

use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;

use super::{
    Member, MemberStatus, NodeError, NodeStatus, ReadAnswer, ReadQuery, ReadResult, SnapshotInfo,
    WriteOp, WriteResult,
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
}

/// Requests from clients and the admin API.
#[derive(Debug)]
pub(crate) enum ClientInput {
    Propose {
        op: WriteOp,
        reply: oneshot::Sender<Result<WriteResult, NodeError>>,
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
    /// A complete snapshot received from the leader and published in the
    /// snapshot store (the message is the first chunk's).
    Snapshot {
        msg: Message,
        cluster_id: String,
        done: oneshot::Sender<Result<(), String>>,
    },
    /// A snapshot transfer to `to` finished.
    SnapshotSent { to: NodeId, ok: bool },
    /// A local snapshot finished writing.
    SnapshotWritten(Result<(SnapshotMeta, crate::storage::SnapshotFile), String>),
}

/// The transport's way into the runtime.
#[derive(Debug, Clone)]
pub struct PeerInbox {
    /// Bounded: a full queue makes the peer stream wait (TCP back-pressure).
    pub(crate) tx: mpsc::Sender<PeerInput>,
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

    /// Hands a fully received snapshot file to the runtime and waits for the
    /// install result.
    pub async fn install_snapshot(&self, msg: Message, cluster_id: String) -> Result<(), String> {
        let (done, rx) = oneshot::channel();
        let input = PeerInput::Snapshot {
            msg,
            cluster_id,
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

fn stopped() -> NodeError {
    NodeError::Unavailable("node is shutting down".into())
}

impl NodeHandle {
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
            Ok(Ok(v)) if v.stopping => Err(stopped()),
            Ok(Ok(v)) => Ok(v.clone()),
            Ok(Err(_)) => Err(stopped()),
            Err(_) => Err(NodeError::Unavailable("no leader elected".into())),
        }
    }

    /// Replicates a write; returns once it is committed and applied.
    pub async fn write(&self, op: WriteOp) -> Result<WriteResult, NodeError> {
        self.submit_write(op).await?.wait().await
    }

    /// Hands a write to the runtime (after waiting for a leader) without
    /// waiting for the outcome. Callers that need per-connection order
    /// submit one request after the other and await the [`Waiter`]s later.
    pub async fn submit_write(&self, op: WriteOp) -> Result<Waiter<WriteResult>, NodeError> {
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
        self.submit(ClientInput::Propose { op, reply }, rx).await
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
            return Err(stopped());
        }
        self.tx.send(input).await.map_err(|_| stopped())?;
        Ok(Waiter {
            rx,
            timeout: self.request_timeout,
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
}

impl<T> Waiter<T> {
    /// Waits for the runtime's answer.
    pub async fn wait(self) -> Result<T, NodeError> {
        match tokio::time::timeout(self.timeout, self.rx).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(stopped()),
            Err(_) => Err(NodeError::Unavailable(
                "request timed out; outcome unknown".into(),
            )),
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
