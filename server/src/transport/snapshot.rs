//! Outbound snapshot streaming: reads the snapshot file in fixed-size chunks
//! and streams them over `Raft.InstallSnapshot`, holding at most
//! `SNAPSHOT_CHUNKS_IN_FLIGHT` chunks in memory. The node asks for it through
//! [`Outbound::send_snapshot`](crate::node::outbound::Outbound::send_snapshot);
//! tonic errors become the node's [`SnapshotSendError`] here.

use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use titan_proto::v1 as pb;
use titan_proto::v1::raft_client::RaftClient;

use super::convert::message_to_pb;
use super::peer::connect;
use super::tls::Dialer;
use crate::node::outbound::{SnapshotSendError, SnapshotTransfer};

/// Bytes per chunk.
pub const SNAPSHOT_CHUNK_BYTES: usize = 1 << 20;
/// Chunks buffered between the file reader and the stream.
const SNAPSHOT_CHUNKS_IN_FLIGHT: usize = 4;

/// A dial failure, as the node's error (no tonic type crosses into `node/`).
impl From<tonic::transport::Error> for SnapshotSendError {
    fn from(e: tonic::transport::Error) -> Self {
        SnapshotSendError::Connect(e.to_string())
    }
}

/// A failed RPC, as the node's error.
impl From<tonic::Status> for SnapshotSendError {
    fn from(e: tonic::Status) -> Self {
        SnapshotSendError::Rpc(e.to_string())
    }
}

/// Streams the file to the follower and waits for its verdict.
pub async fn send_snapshot(dialer: Dialer, t: SnapshotTransfer) -> Result<(), SnapshotSendError> {
    let channel = connect(&dialer, &t.addr, Duration::from_secs(2)).await?;
    let mut client = RaftClient::new(channel).max_encoding_message_size(2 * SNAPSHOT_CHUNK_BYTES);
    let file = tokio::fs::File::open(&t.file).await?;
    let (tx, rx) = mpsc::channel(SNAPSHOT_CHUNKS_IN_FLIGHT);
    let first_msg = message_to_pb(&t.msg);
    let reader = tokio::spawn(read_chunks(file, first_msg, t.cluster_id.clone(), tx));
    let response = client.install_snapshot(ReceiverStream::new(rx)).await;
    let read_result = reader
        .await
        .map_err(|e| std::io::Error::other(e.to_string()))?;
    read_result?;
    let response = response?.into_inner();
    if response.accepted {
        Ok(())
    } else {
        Err(SnapshotSendError::Rejected(response.error))
    }
}

async fn read_chunks(
    mut file: tokio::fs::File,
    first_msg: pb::RaftMessage,
    cluster_id: String,
    tx: mpsc::Sender<pb::SnapshotChunk>,
) -> std::io::Result<()> {
    let mut offset = 0u64;
    let mut msg = Some(first_msg);
    loop {
        let mut data = vec![0u8; SNAPSHOT_CHUNK_BYTES];
        let n = read_full(&mut file, &mut data).await?;
        data.truncate(n);
        let last = n < SNAPSHOT_CHUNK_BYTES;
        let chunk = pb::SnapshotChunk {
            msg: msg.take(),
            offset,
            data,
            last,
            cluster_id: cluster_id.clone(),
        };
        offset += n as u64;
        if tx.send(chunk).await.is_err() || last {
            return Ok(());
        }
    }
}

/// Fills `buf` unless EOF comes first; returns the bytes read.
async fn read_full(file: &mut tokio::fs::File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        let n = file.read(&mut buf[filled..]).await?;
        if n == 0 {
            break;
        }
        filled += n;
    }
    Ok(filled)
}
