//! etcd's `Maintenance.Snapshot`: streams a consistent point-in-time copy
//! of this member's applied state as a backup (`etcdctl snapshot save`,
//! `titanctl snapshot save`).
//!
//! The bytes are the node's own snapshot file (`titan-snapfile`: header,
//! MVCC revisions, every key history, the lease table, CRCs) wrapped in
//! etcd's envelope: zero padding to a multiple of 512 bytes, then the
//! SHA-256 of everything before it as the last message (etcd clients refuse
//! a snapshot whose size is not `512·n + 32`).
//!
//! The runtime only hands out an O(1) view of the state machine
//! (`ReadQuery::EtcdSnapshot`); encoding runs on the blocking pool. A first
//! pass over the view counts the bytes (no buffering) so every message
//! carries etcd's `remaining_bytes`; the second pass streams. At most one
//! chunk is being filled and [`SNAPSHOT_STREAM_BUFFER`] chunks are queued
//! per stream, so a slow reader stalls only its own encoder; at most
//! [`MAX_SNAPSHOT_STREAMS`] run at once (each view pins the versions of the
//! store it holds until it finishes).

use std::io::{self, Write};

use tokio::sync::{OwnedSemaphorePermit, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;

use titan_proto::etcdserverpb as pb;
use titan_snapfile::backup::{Sha256Writer, backup_len};

use crate::node::SnapshotAt;

/// Bytes of snapshot per `SnapshotResponse` (etcd sends 32 KiB).
pub const SNAPSHOT_CHUNK_BYTES: usize = 128 << 10;
/// Chunks queued per stream beyond the one being filled.
pub const SNAPSHOT_STREAM_BUFFER: usize = 1;
/// Snapshot streams one member serves at once; more are refused with
/// `RESOURCE_EXHAUSTED`.
pub const MAX_SNAPSHOT_STREAMS: usize = 2;

/// The stream of `SnapshotResponse`s for `at`, encoded on the blocking
/// pool while `permit` is held.
pub fn stream(
    at: SnapshotAt,
    header: pb::ResponseHeader,
    permit: OwnedSemaphorePermit,
) -> ReceiverStream<Result<pb::SnapshotResponse, Status>> {
    let (tx, rx) = mpsc::channel(SNAPSHOT_STREAM_BUFFER);
    tokio::task::spawn_blocking(move || {
        let _permit = permit;
        if let Err(e) = send_all(&at, header, &tx) {
            tracing::warn!(error = %e, index = at.meta().index, "snapshot stream failed");
            // Fails too when the client went away; nothing else to do then.
            let _ = tx.blocking_send(Err(Status::internal(format!("snapshot: {e}"))));
        }
    });
    ReceiverStream::new(rx)
}

/// A writer that only counts.
struct Count(u64);

impl Write for Count {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0 += buf.len() as u64;
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Encodes `at` twice: once to size it, once into the stream.
fn send_all(
    at: &SnapshotAt,
    header: pb::ResponseHeader,
    tx: &mpsc::Sender<Result<pb::SnapshotResponse, Status>>,
) -> io::Result<()> {
    let mut count = Count(0);
    at.encode(&mut count)?;
    let total = backup_len(count.0);
    let chunker = Chunker {
        tx,
        header,
        buf: Vec::with_capacity(SNAPSHOT_CHUNK_BYTES),
        sent: 0,
        total,
    };
    let mut w = Sha256Writer::new(chunker);
    at.encode(&mut w)?;
    let (mut chunker, digest) = w.finish()?;
    chunker.send_chunk()?;
    chunker.buf.extend_from_slice(&digest);
    chunker.send_chunk()?;
    if chunker.sent != total {
        return Err(io::Error::other(format!(
            "sent {} bytes, sized {total}: the view changed between passes",
            chunker.sent
        )));
    }
    Ok(())
}

/// Cuts the encoded bytes into `SnapshotResponse`s.
struct Chunker<'a> {
    tx: &'a mpsc::Sender<Result<pb::SnapshotResponse, Status>>,
    header: pb::ResponseHeader,
    buf: Vec<u8>,
    sent: u64,
    total: u64,
}

impl Chunker<'_> {
    /// Sends the filled part of the chunk (nothing when empty); blocks
    /// while the stream's queue is full.
    fn send_chunk(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let blob = std::mem::replace(&mut self.buf, Vec::with_capacity(SNAPSHOT_CHUNK_BYTES));
        self.sent += blob.len() as u64;
        let resp = pb::SnapshotResponse {
            header: Some(self.header),
            remaining_bytes: self.total.saturating_sub(self.sent),
            blob,
        };
        self.tx
            .blocking_send(Ok(resp))
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "the client went away"))
    }
}

impl Write for Chunker<'_> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let room = SNAPSHOT_CHUNK_BYTES - self.buf.len();
        let n = room.min(data.len());
        self.buf.extend_from_slice(&data[..n]);
        if self.buf.len() == SNAPSHOT_CHUNK_BYTES {
            self.send_chunk()?;
        }
        Ok(n)
    }

    /// Chunks leave only when full (or at the end of the stream).
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::raft::{Entry, EntryKind, SnapshotMeta};
    use crate::storage::{Command, Condition, StateMachine};
    use std::sync::Arc;
    use titan_snapfile::SnapshotLimits;
    use titan_snapfile::backup::verify_backup;
    use tokio::sync::Semaphore;

    /// A view holding `keys` keys of 1 KiB each.
    fn view(keys: u64) -> SnapshotAt {
        let mut sm = StateMachine::new();
        for i in 1..=keys {
            let cmd = Command::Put {
                key: format!("k{i:05}").into_bytes(),
                value: vec![b'v'; 1024],
                cond: Condition::None,
            };
            let data = cmd.encode();
            let kind = EntryKind::Normal;
            sm.apply(&Entry {
                index: i,
                term: 1,
                kind,
                data,
            });
        }
        let meta = SnapshotMeta {
            index: keys,
            term: 1,
            ..SnapshotMeta::default()
        };
        SnapshotAt::new(sm, meta)
    }

    #[tokio::test]
    async fn the_stream_is_chunked_counts_down_and_ends_with_the_sha256() {
        let permit = Arc::new(Semaphore::new(1))
            .try_acquire_owned()
            .expect("permit");
        let mut rx = stream(view(600), pb::ResponseHeader::default(), permit).into_inner();
        let mut bytes = Vec::new();
        let mut remaining = Vec::new();
        while let Some(msg) = rx.recv().await {
            let msg = msg.expect("chunk");
            assert!(msg.blob.len() <= SNAPSHOT_CHUNK_BYTES);
            bytes.extend_from_slice(&msg.blob);
            remaining.push(msg.remaining_bytes);
        }
        assert!(
            remaining.len() > 4,
            "600 KiB in 128 KiB chunks: {remaining:?}"
        );
        assert!(remaining.windows(2).all(|w| w[0] > w[1]), "{remaining:?}");
        assert_eq!(remaining.last(), Some(&0));
        let total = bytes.len() as u64;
        assert_eq!(remaining[0], total - SNAPSHOT_CHUNK_BYTES as u64);
        let summary = verify_backup(&mut std::io::Cursor::new(bytes), &SnapshotLimits::default())
            .expect("a valid backup");
        assert_eq!(
            (summary.keys, summary.revision),
            (600, 601),
            "the store starts at revision 1"
        );
    }
}
