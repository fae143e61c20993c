//! Inbound side of the Raft gRPC service: message batches from peer streams
//! go to the runtime's bounded peer inbox; snapshot chunks are written
//! straight into the snapshot store's installer (memory bounded by one
//! chunk), validated, published, and then handed to the runtime.

use tonic::{Request, Response, Status, Streaming};
use tracing::warn;

use titan_proto::v1 as pb;
use titan_proto::v1::raft_server::Raft;

use super::convert::message_from_pb;
use crate::node::PeerInbox;
use crate::raft::{Message, MessageType};
use crate::storage::{SnapshotInstaller, SnapshotStore};

/// Largest accepted snapshot chunk.
pub const MAX_SNAPSHOT_CHUNK_BYTES: usize = 4 << 20;

/// Implements `titan.v1.Raft`.
pub struct RaftService {
    /// Where decoded traffic goes.
    inbox: PeerInbox,
    /// Where received snapshots are installed.
    snapshots: SnapshotStore,
}

fn first_message(chunk: &pb::SnapshotChunk) -> Result<Message, Status> {
    let msg = chunk
        .msg
        .clone()
        .ok_or_else(|| Status::invalid_argument("first chunk lacks the message"))
        .and_then(|m| message_from_pb(m).map_err(|e| Status::invalid_argument(e.to_string())))?;
    if msg.msg_type != MessageType::Snapshot || msg.snapshot.is_none() {
        return Err(Status::invalid_argument(
            "first chunk is not a snapshot message",
        ));
    }
    Ok(msg)
}

fn internal(e: impl ToString) -> Status {
    Status::internal(e.to_string())
}

impl RaftService {
    /// Serves into `inbox`, installing snapshots into `snapshots`.
    pub fn new(inbox: PeerInbox, snapshots: SnapshotStore) -> Self {
        RaftService { inbox, snapshots }
    }

    async fn receive_snapshot(
        &self,
        mut stream: Streaming<pb::SnapshotChunk>,
    ) -> Result<(), Status> {
        let first = stream
            .message()
            .await?
            .ok_or_else(|| Status::invalid_argument("empty snapshot stream"))?;
        let msg = first_message(&first)?;
        let cluster_id = first.cluster_id.clone();
        let mut installer = self.snapshots.begin_install().map_err(internal)?;
        let mut expected_offset = 0u64;
        let mut chunk = Some(first);
        while let Some(c) = chunk {
            if c.data.len() > MAX_SNAPSHOT_CHUNK_BYTES || c.offset != expected_offset {
                return Err(Status::invalid_argument(
                    "bad snapshot chunk size or offset",
                ));
            }
            installer = write_chunk(installer, c.data.clone()).await?;
            expected_offset += c.data.len() as u64;
            if c.last {
                let (file, header) = tokio::task::spawn_blocking(move || installer.finish())
                    .await
                    .map_err(internal)?
                    .map_err(|e| Status::invalid_argument(e.to_string()))?;
                if Some(&header.meta) != msg.snapshot.as_ref() {
                    warn!(file = %file.path.display(), "snapshot header differs from the leader's message; using the file's");
                }
                let mut msg = msg;
                msg.snapshot = Some(header.meta);
                return self
                    .inbox
                    .install_snapshot(msg, cluster_id)
                    .await
                    .map_err(Status::failed_precondition);
            }
            chunk = stream.message().await?;
        }
        Err(Status::invalid_argument(
            "snapshot stream ended before the last chunk",
        ))
    }
}

async fn write_chunk(
    mut installer: SnapshotInstaller,
    data: Vec<u8>,
) -> Result<SnapshotInstaller, Status> {
    tokio::task::spawn_blocking(move || installer.write_chunk(&data).map(|_| installer))
        .await
        .map_err(internal)?
        .map_err(|e| Status::resource_exhausted(e.to_string()))
}

#[tonic::async_trait]
impl Raft for RaftService {
    async fn send(
        &self,
        request: Request<Streaming<pb::MessageBatch>>,
    ) -> Result<Response<pb::SendAck>, Status> {
        let mut stream = request.into_inner();
        while let Some(batch) = stream.message().await? {
            let mut msgs = Vec::with_capacity(batch.msgs.len());
            for m in batch.msgs {
                match message_from_pb(m) {
                    Ok(m) => msgs.push(m),
                    Err(e) => warn!(error = %e, "dropping undecodable raft message"),
                }
            }
            if !self
                .inbox
                .deliver(msgs, batch.sender_addr, batch.cluster_id)
                .await
            {
                return Err(Status::unavailable("node stopped"));
            }
        }
        Ok(Response::new(pb::SendAck {}))
    }

    async fn install_snapshot(
        &self,
        request: Request<Streaming<pb::SnapshotChunk>>,
    ) -> Result<Response<pb::InstallSnapshotResponse>, Status> {
        match self.receive_snapshot(request.into_inner()).await {
            Ok(()) => Ok(Response::new(pb::InstallSnapshotResponse {
                accepted: true,
                error: String::new(),
            })),
            Err(s) => {
                warn!(error = %s, "snapshot install failed");
                Ok(Response::new(pb::InstallSnapshotResponse {
                    accepted: false,
                    error: s.message().to_string(),
                }))
            }
        }
    }
}
