//! Inbound side of the Raft gRPC service: message batches from peer streams
//! go to the runtime's bounded peer inbox; snapshot chunks are written to a
//! staging file as they arrive (memory bounded by one chunk) and handed over
//! once complete.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::io::AsyncWriteExt;
use tonic::{Request, Response, Status, Streaming};
use tracing::warn;

use titan_proto::v1 as pb;
use titan_proto::v1::raft_server::Raft;

use super::convert::message_from_pb;
use crate::node::PeerInbox;
use crate::raft::MessageType;

/// Largest accepted snapshot chunk.
pub const MAX_SNAPSHOT_CHUNK_BYTES: usize = 4 << 20;

/// Implements `titan.v1.Raft`.
pub struct RaftService {
    /// Where decoded traffic goes.
    inbox: PeerInbox,
    /// Distinguishes concurrent staging files.
    next_staging_id: AtomicU64,
}

impl RaftService {
    /// Serves into `inbox`.
    pub fn new(inbox: PeerInbox) -> Self {
        RaftService {
            inbox,
            next_staging_id: AtomicU64::new(0),
        }
    }

    fn staging_path(&self) -> PathBuf {
        let n = self.next_staging_id.fetch_add(1, Ordering::Relaxed);
        self.inbox
            .staging_dir
            .join(format!("incoming-{}-{n}.snap.tmp", std::process::id()))
    }

    async fn receive_snapshot(
        &self,
        mut stream: Streaming<pb::SnapshotChunk>,
        path: &PathBuf,
    ) -> Result<(), Status> {
        let first = stream
            .message()
            .await?
            .ok_or_else(|| Status::invalid_argument("empty snapshot stream"))?;
        let msg = first
            .msg
            .clone()
            .ok_or_else(|| Status::invalid_argument("first chunk lacks the message"))
            .and_then(|m| {
                message_from_pb(m).map_err(|e| Status::invalid_argument(e.to_string()))
            })?;
        if msg.msg_type != MessageType::Snapshot || msg.snapshot.is_none() {
            return Err(Status::invalid_argument(
                "first chunk is not a snapshot message",
            ));
        }
        let cluster_id = first.cluster_id.clone();
        tokio::fs::create_dir_all(&self.inbox.staging_dir).await?;
        let mut file = tokio::fs::File::create(path).await?;
        let mut expected_offset = 0u64;
        let mut chunk = Some(first);
        while let Some(c) = chunk {
            if c.data.len() > MAX_SNAPSHOT_CHUNK_BYTES || c.offset != expected_offset {
                return Err(Status::invalid_argument(
                    "bad snapshot chunk size or offset",
                ));
            }
            file.write_all(&c.data).await?;
            expected_offset += c.data.len() as u64;
            if c.last {
                file.sync_all().await?;
                drop(file);
                return self
                    .inbox
                    .install_snapshot(msg, path.clone(), cluster_id)
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
        let path = self.staging_path();
        let result = self.receive_snapshot(request.into_inner(), &path).await;
        // The runtime moves the file into the snapshot store on success.
        let _ = tokio::fs::remove_file(&path).await;
        match result {
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
