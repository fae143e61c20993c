//! Inbound side of the Raft gRPC service: message batches from peer streams
//! go to the runtime's bounded peer inbox; snapshot chunks are written
//! straight into the snapshot store's installer (memory bounded by one
//! chunk, size bounded by `max_install_bytes`), validated, staged (not
//! loadable) and handed to the runtime, which publishes the file only once
//! the Raft core accepted it and the WAL marker is durable. A snapshot from
//! another cluster is refused before any byte is kept, and at most
//! `MAX_CONCURRENT_SNAPSHOT_INSTALLS` streams are received at once.

use std::sync::Arc;

use futures::{Stream, StreamExt};
use tokio::sync::Semaphore;
use tonic::{Request, Response, Status, Streaming};
use tracing::warn;

use titan_proto::v1 as pb;
use titan_proto::v1::raft_server::Raft;

use super::convert::message_from_pb;
use crate::node::{Member, PeerInbox};
use crate::raft::{Message, MessageType};
use crate::storage::{SnapshotInstaller, SnapshotStore, StagedSnapshot};

/// Largest accepted snapshot chunk.
pub const MAX_SNAPSHOT_CHUNK_BYTES: usize = 4 << 20;
/// Install streams received at once; more are refused (the leader retries).
pub const MAX_CONCURRENT_SNAPSHOT_INSTALLS: usize = 1;

/// Implements `titan.v1.Raft`.
pub struct RaftService {
    /// Where decoded traffic goes.
    inbox: PeerInbox,
    /// Where received snapshots are installed.
    snapshots: SnapshotStore,
    /// Permits for concurrent install streams.
    installs: Arc<Semaphore>,
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

/// The sender's self-advertised addresses from a batch.
fn sender_of(batch: &pb::MessageBatch) -> Member {
    Member {
        peer_addr: batch.sender_addr.clone(),
        client_addr: batch.sender_client_addr.clone(),
        grpc_addr: batch.sender_grpc_addr.clone(),
        ..Member::default()
    }
}

fn internal(e: impl ToString) -> Status {
    Status::internal(e.to_string())
}

impl RaftService {
    /// Serves into `inbox`, installing snapshots into `snapshots`.
    pub fn new(inbox: PeerInbox, snapshots: SnapshotStore) -> Self {
        RaftService {
            inbox,
            snapshots,
            installs: Arc::new(Semaphore::new(MAX_CONCURRENT_SNAPSHOT_INSTALLS)),
        }
    }

    async fn receive_snapshot<S>(&self, mut stream: S) -> Result<(), Status>
    where
        S: Stream<Item = Result<pb::SnapshotChunk, Status>> + Unpin,
    {
        let Ok(_permit) = self.installs.clone().try_acquire_owned() else {
            return Err(Status::resource_exhausted(
                "another snapshot install is in progress",
            ));
        };
        let first = stream
            .next()
            .await
            .transpose()?
            .ok_or_else(|| Status::invalid_argument("empty snapshot stream"))?;
        let msg = first_message(&first)?;
        let cluster_id = first.cluster_id.clone();
        check_cluster(&self.inbox.cluster_id(), &cluster_id)?;
        let staged = self.receive_file(first, &mut stream).await?;
        let meta = staged.header().meta.clone();
        if Some(&meta) != msg.snapshot.as_ref() {
            warn!(
                index = meta.index,
                "snapshot header differs from the leader's message; using the file's"
            );
        }
        let mut msg = msg;
        msg.snapshot = Some(meta);
        self.inbox
            .install_snapshot(msg, cluster_id, staged)
            .await
            .map_err(Status::failed_precondition)
    }

    /// Writes the chunks to a temp file (bounded by `max_install_bytes`),
    /// then validates and stages it.
    async fn receive_file<S>(
        &self,
        first: pb::SnapshotChunk,
        stream: &mut S,
    ) -> Result<StagedSnapshot, Status>
    where
        S: Stream<Item = Result<pb::SnapshotChunk, Status>> + Unpin,
    {
        let mut installer = self.snapshots.begin_install().map_err(internal)?;
        let mut expected_offset = 0u64;
        let mut chunk = Some(first);
        while let Some(c) = chunk {
            if c.data.len() > MAX_SNAPSHOT_CHUNK_BYTES || c.offset != expected_offset {
                return Err(Status::invalid_argument(
                    "bad snapshot chunk size or offset",
                ));
            }
            expected_offset += c.data.len() as u64;
            installer = write_chunk(installer, c.data).await?;
            if c.last {
                return tokio::task::spawn_blocking(move || installer.finish())
                    .await
                    .map_err(internal)?
                    .map_err(|e| Status::invalid_argument(e.to_string()));
            }
            chunk = stream.next().await.transpose()?;
        }
        Err(Status::invalid_argument(
            "snapshot stream ended before the last chunk",
        ))
    }
}

/// Decodes a batch from a peer stream, dropping undecodable messages and
/// Snapshot messages: only InstallSnapshot brings the staged file a
/// Snapshot message needs, so one arriving here could make the core accept
/// a snapshot the node cannot install.
fn decode_batch(msgs: Vec<pb::RaftMessage>) -> Vec<Message> {
    let mut out = Vec::with_capacity(msgs.len());
    for m in msgs {
        match message_from_pb(m) {
            Ok(m) if m.msg_type == MessageType::Snapshot => {
                warn!(
                    from = m.from,
                    "dropping a snapshot message sent outside InstallSnapshot"
                );
            }
            Ok(m) => out.push(m),
            Err(e) => warn!(error = %e, "dropping undecodable raft message"),
        }
    }
    out
}

/// Refuses a snapshot stamped with another cluster's id before any byte of
/// it is kept. A node that has no cluster id yet (joining) takes any; the
/// runtime adopts or refuses the id when the snapshot is handed over.
fn check_cluster(ours: &str, theirs: &str) -> Result<(), Status> {
    if ours.is_empty() || ours == theirs {
        return Ok(());
    }
    Err(Status::failed_precondition(format!(
        "snapshot from cluster {theirs:?} refused: this node belongs to cluster {ours:?}"
    )))
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
            let sender = sender_of(&batch);
            let msgs = decode_batch(batch.msgs);
            if !self.inbox.deliver(msgs, sender, batch.cluster_id).await {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::node::handle::PeerInput;
    use crate::raft::{ConfState, SnapshotMeta};
    use crate::storage::{SnapshotOptions, StateMachine};
    use tokio::sync::{mpsc, watch};

    fn meta() -> SnapshotMeta {
        SnapshotMeta {
            index: 50,
            term: 3,
            conf: ConfState {
                voters: [1, 2, 3].into(),
                learners: Default::default(),
            },
        }
    }

    /// A real snapshot file's bytes, cut into stamped chunks.
    fn chunks(cluster_id: &str, chunk_bytes: usize) -> Vec<Result<pb::SnapshotChunk, Status>> {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let store = SnapshotStore::open(dir.path(), SnapshotOptions::default())
            .unwrap_or_else(|e| panic!("{e}"));
        let file = store
            .write(&meta(), &StateMachine::new())
            .unwrap_or_else(|e| panic!("{e}"));
        let bytes = std::fs::read(&file.path).unwrap_or_else(|e| panic!("{e}"));
        let mut msg = Message::new(MessageType::Snapshot, 1, 2, 3);
        msg.snapshot = Some(meta());
        let parts: Vec<&[u8]> = bytes.chunks(chunk_bytes).collect();
        let mut offset = 0;
        let mut out = Vec::new();
        for (i, data) in parts.iter().enumerate() {
            out.push(Ok(pb::SnapshotChunk {
                msg: (i == 0).then(|| super::super::convert::message_to_pb(&msg)),
                offset,
                data: data.to_vec(),
                last: i + 1 == parts.len(),
                cluster_id: cluster_id.to_string(),
            }));
            offset += data.len() as u64;
        }
        out
    }

    struct Fixture {
        dir: tempfile::TempDir,
        service: RaftService,
        rx: mpsc::Receiver<PeerInput>,
    }

    fn fixture(ours: &str, max_install_bytes: u64) -> Fixture {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let opts = SnapshotOptions {
            max_install_bytes,
            ..SnapshotOptions::default()
        };
        let store = SnapshotStore::open(dir.path(), opts).unwrap_or_else(|e| panic!("{e}"));
        let (tx, rx) = mpsc::channel(4);
        let (_cid_tx, cluster_id) = watch::channel(ours.to_string());
        let inbox = PeerInbox { tx, cluster_id };
        Fixture {
            dir,
            service: RaftService::new(inbox, store),
            rx,
        }
    }

    fn files_in(dir: &tempfile::TempDir) -> Vec<String> {
        std::fs::read_dir(dir.path())
            .map(|d| {
                d.filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Regression: a foreign cluster's snapshot was written out,
    /// published (pruning our own snapshots) before the cluster id check.
    #[tokio::test]
    async fn snapshot_from_another_cluster_is_refused_before_any_byte_is_kept() {
        let mut f = fixture("cluster-a", 1 << 30);
        let stream = tokio_stream::iter(chunks("cluster-b", 100));
        let err = f
            .service
            .receive_snapshot(stream)
            .await
            .err()
            .unwrap_or_else(|| panic!("foreign snapshot accepted"));
        assert_eq!(err.code(), tonic::Code::FailedPrecondition);
        assert!(err.message().contains("cluster-b"), "{}", err.message());
        assert!(files_in(&f.dir).is_empty(), "kept {:?}", files_in(&f.dir));
        assert!(f.rx.try_recv().is_err(), "handed to the runtime");
    }

    /// Regression: one install stream could write 64 GiB before
    /// any check; now `--max-snapshot-bytes` stops it and nothing is kept.
    #[tokio::test]
    async fn snapshot_stream_over_the_configured_max_is_refused_and_leaves_no_file() {
        let mut f = fixture("cluster-a", 64);
        let stream = tokio_stream::iter(chunks("cluster-a", 50));
        let err = f
            .service
            .receive_snapshot(stream)
            .await
            .err()
            .unwrap_or_else(|| panic!("oversized snapshot accepted"));
        assert_eq!(err.code(), tonic::Code::ResourceExhausted);
        assert!(files_in(&f.dir).is_empty(), "kept {:?}", files_in(&f.dir));
        assert!(f.rx.try_recv().is_err(), "handed to the runtime");
    }

    /// Install streams are bounded: while one is being received another is
    /// refused at once, before it writes anything.
    #[tokio::test]
    async fn concurrent_snapshot_install_streams_are_bounded() {
        let f = fixture("cluster-a", 1 << 30);
        let held = f
            .service
            .installs
            .clone()
            .try_acquire_many_owned(MAX_CONCURRENT_SNAPSHOT_INSTALLS as u32)
            .unwrap_or_else(|e| panic!("{e}"));
        let stream = tokio_stream::iter(chunks("cluster-a", 100));
        let err = f.service.receive_snapshot(stream).await.err();
        assert_eq!(err.map(|e| e.code()), Some(tonic::Code::ResourceExhausted));
        assert!(files_in(&f.dir).is_empty());
        drop(held);
    }

    /// A Snapshot message in an ordinary batch has no staged file behind it;
    /// it is dropped so the core never accepts what the node cannot install.
    #[test]
    fn snapshot_message_outside_install_snapshot_is_dropped() {
        let mut snap = Message::new(MessageType::Snapshot, 1, 2, 3);
        snap.snapshot = Some(meta());
        let beat = Message::new(MessageType::Heartbeat, 1, 2, 3);
        let batch = vec![
            super::super::convert::message_to_pb(&snap),
            super::super::convert::message_to_pb(&beat),
        ];
        let got = decode_batch(batch);
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].msg_type, MessageType::Heartbeat);
    }

    /// A valid snapshot from our cluster reaches the runtime staged: it is
    /// on disk but not under a loadable `snap-*.snap` name.
    #[tokio::test]
    async fn received_snapshot_reaches_the_runtime_staged_not_loadable() {
        let mut f = fixture("cluster-a", 1 << 30);
        let stream = tokio_stream::iter(chunks("cluster-a", 100));
        let service = f.service;
        let recv = tokio::spawn(async move { service.receive_snapshot(stream).await });
        let Some(PeerInput::Snapshot {
            msg, staged, done, ..
        }) = f.rx.recv().await
        else {
            panic!("nothing handed to the runtime");
        };
        assert_eq!(msg.snapshot, Some(meta()));
        assert_eq!(staged.header().meta, meta());
        let names = files_in(&f.dir);
        assert_eq!(names.len(), 1, "{names:?}");
        assert!(names[0].starts_with("staged-"), "{names:?}");
        drop(staged);
        assert!(
            files_in(&f.dir).is_empty(),
            "an unaccepted staged file is deleted"
        );
        let _ = done.send(Ok(()));
        let joined = recv.await.unwrap_or_else(|e| panic!("{e}"));
        assert!(joined.is_ok(), "{joined:?}");
    }
}
