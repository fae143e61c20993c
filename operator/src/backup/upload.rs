//! The data path of one backup: etcd's `Maintenance.Snapshot` stream from a
//! member, through a SHA-256 digest, into a multipart upload; then the
//! manifest and retention.
//!
//! Owns no Kubernetes state: callers pass the store, the member endpoint and
//! the keys, so the whole path is testable against any `ObjectStore` and any
//! snapshot stream.

use std::sync::Arc;
use std::time::Duration;

use futures::{Stream, StreamExt, TryStreamExt};
use k8s_openapi::jiff::Timestamp;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload, WriteMultipart};
use sha2::{Digest, Sha256};
use titan_proto::etcdserverpb::maintenance_client::MaintenanceClient;
use titan_proto::etcdserverpb::{SnapshotRequest, SnapshotResponse};
use titan_snapfile::backup::{CHECKSUM_LEN, has_checksum_size, hex};
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

use super::BackupError;
use super::naming::{BackupKeys, MANIFEST_FORMAT_VERSION, Manifest, expired_snapshots};
use crate::admin::TlsIdentity;

/// S3's smallest part (every part but the last must be at least 5 MiB).
pub const MIN_PART_SIZE_BYTES: usize = 5 << 20;
/// Largest gRPC message accepted from the member (it sends 32 KiB chunks).
pub const MAX_SNAPSHOT_MESSAGE_BYTES: usize = 64 << 20;

/// Bounds of one backup's data path.
#[derive(Debug, Clone, Copy)]
pub struct UploadConfig {
    /// Bytes per multipart part (at least [`MIN_PART_SIZE_BYTES`] for S3).
    pub part_size_bytes: usize,
    /// Parts uploading at once; memory is bounded by
    /// `part_size_bytes × (max_parts_in_flight + 1)`.
    pub max_parts_in_flight: usize,
    /// TCP + HTTP/2 connect timeout to the member.
    pub connect_timeout: Duration,
    /// Longest silence of the snapshot stream before it counts as broken.
    pub idle_timeout: Duration,
}

impl Default for UploadConfig {
    fn default() -> Self {
        Self {
            part_size_bytes: MIN_PART_SIZE_BYTES,
            max_parts_in_flight: 2,
            connect_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(60),
        }
    }
}

/// What one backup needs besides the store.
#[derive(Debug, Clone)]
pub struct BackupRequest {
    /// Namespace of the cluster and the TitanBackup.
    pub namespace: String,
    /// TitanCluster name.
    pub cluster: String,
    /// TitanBackup name.
    pub backup: String,
    /// Pod streamed from.
    pub member: String,
    /// Its client gRPC endpoint (`http://HOST:7001`, `https://` under `spec.tls`).
    pub endpoint: String,
    /// TLS of an `https://` endpoint (`spec.tls`).
    pub tls: Option<StreamTls>,
    /// Bucket name, for error messages.
    pub bucket: String,
    /// Where the objects go.
    pub keys: BackupKeys,
    /// `retention.keep`, if set.
    pub keep: Option<u32>,
}

/// How the snapshot stream from a TLS member is secured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamTls {
    /// CA certificate (PEM) the member's client port is verified with.
    pub ca_pem: String,
    /// The operator's client certificate, presented when the port requires
    /// one (`spec.tls.clientAuth`).
    pub identity: Option<Arc<TlsIdentity>>,
}

/// The result of a completed backup.
#[derive(Debug, Clone)]
pub struct BackupOutcome {
    /// The manifest written next to the snapshot.
    pub manifest: Manifest,
    /// Snapshot keys retention deleted.
    pub expired: Vec<String>,
    /// Retention failed (the backup itself is complete).
    pub retention_error: Option<String>,
}

/// Size, digests and header fields of a snapshot stream, and the check of
/// etcd's trailer (the last 32 bytes are the SHA-256 of everything before).
#[derive(Default)]
pub struct StreamDigest {
    whole: Sha256,
    content: Sha256,
    /// The last up-to-32 bytes seen, not yet fed to `content`.
    tail: Vec<u8>,
    size_bytes: u64,
    remaining_bytes: Option<u64>,
    revision: i64,
    cluster_id: u64,
}

/// Size, checksum and origin of a snapshot that checked out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotDigest {
    /// Bytes in the stream.
    pub size_bytes: u64,
    /// Lower-case hex SHA-256 of every byte of the stream.
    pub sha256: String,
    /// Store revision from the stream's header.
    pub revision: i64,
    /// Raft cluster id from the stream's header.
    pub cluster_id: u64,
}

impl StreamDigest {
    /// Feeds one message.
    pub fn update(&mut self, msg: &SnapshotResponse) {
        if let Some(h) = &msg.header {
            self.revision = h.revision;
            self.cluster_id = h.cluster_id;
        }
        self.remaining_bytes = Some(msg.remaining_bytes);
        self.feed(&msg.blob);
    }

    /// Feeds raw bytes (an object read back from the bucket).
    pub fn feed(&mut self, blob: &[u8]) {
        self.whole.update(blob);
        self.size_bytes += blob.len() as u64;
        self.tail.extend_from_slice(blob);
        if self.tail.len() > CHECKSUM_LEN {
            let cut = self.tail.len() - CHECKSUM_LEN;
            self.content.update(&self.tail[..cut]);
            self.tail.drain(..cut);
        }
    }

    /// Bytes fed so far.
    pub fn size_bytes(&self) -> u64 {
        self.size_bytes
    }

    /// Checks the trailer of a whole object fed with [`StreamDigest::feed`]
    /// (an object has no `remaining_bytes` to check).
    pub fn finish_object(mut self) -> Result<SnapshotDigest, String> {
        self.remaining_bytes = Some(0);
        self.finish()
    }

    /// Checks the stream ended where the server said and that its trailer
    /// matches; a description of the damage otherwise.
    pub fn finish(self) -> Result<SnapshotDigest, String> {
        if self.remaining_bytes != Some(0) {
            return Err(format!(
                "stream ended after {} bytes with {:?} bytes announced as remaining",
                self.size_bytes, self.remaining_bytes
            ));
        }
        if !has_checksum_size(self.size_bytes) {
            return Err(format!(
                "{} bytes is not an etcd snapshot size (512·n + 32)",
                self.size_bytes
            ));
        }
        let content: [u8; CHECKSUM_LEN] = self.content.finalize().into();
        if content[..] != self.tail[..] {
            return Err(format!(
                "trailer {} does not match the content's SHA-256 {}",
                hex(&self.tail),
                hex(&content)
            ));
        }
        Ok(SnapshotDigest {
            size_bytes: self.size_bytes,
            sha256: hex(&self.whole.finalize()),
            revision: self.revision,
            cluster_id: self.cluster_id,
        })
    }
}

/// Opens `Maintenance.Snapshot` on `endpoint`.
pub async fn open_snapshot(
    endpoint: &str,
    tls: Option<&StreamTls>,
    config: &UploadConfig,
) -> Result<tonic::Streaming<SnapshotResponse>, BackupError> {
    let failed = |detail: String| BackupError::SnapshotStream {
        endpoint: endpoint.to_string(),
        detail,
    };
    let mut ep = Endpoint::from_shared(endpoint.to_string()).map_err(|e| failed(e.to_string()))?;
    if let Some(settings) = tls {
        let mut tls =
            ClientTlsConfig::new().ca_certificate(Certificate::from_pem(&settings.ca_pem));
        if let Some(id) = &settings.identity {
            tls = tls.identity(Identity::from_pem(&id.cert_pem, &id.key_pem));
        }
        ep = ep
            .tls_config(tls)
            .map_err(|e| failed(format!("TLS settings: {e}")))?;
    }
    let channel = ep
        .connect_timeout(config.connect_timeout)
        .connect()
        .await
        .map_err(|e| failed(format!("connecting: {e}")))?;
    let mut client =
        MaintenanceClient::new(channel).max_decoding_message_size(MAX_SNAPSHOT_MESSAGE_BYTES);
    let stream = client
        .snapshot(SnapshotRequest {})
        .await
        .map_err(|s| failed(format!("{:?}: {}", s.code(), s.message())))?;
    Ok(stream.into_inner())
}

/// Streams `stream` into a multipart upload under `key`. The object appears
/// only if the whole stream arrived and checked out; otherwise the upload is
/// aborted and nothing is left under `key`.
pub async fn upload_snapshot<S>(
    store: &dyn ObjectStore,
    key: &str,
    endpoint: &str,
    stream: S,
    config: &UploadConfig,
) -> Result<SnapshotDigest, BackupError>
where
    S: Stream<Item = Result<SnapshotResponse, tonic::Status>> + Unpin,
{
    let upload_failed = |e: object_store::Error| BackupError::Upload {
        key: key.to_string(),
        detail: e.to_string(),
    };
    let upload = store
        .put_multipart(&Path::from(key))
        .await
        .map_err(upload_failed)?;
    let mut writer = WriteMultipart::new_with_chunk_size(upload, config.part_size_bytes);
    match pump(&mut writer, stream, endpoint, config).await {
        Ok(digest) => {
            writer.finish().await.map_err(upload_failed)?;
            Ok(digest)
        }
        Err(error) => {
            if let Err(abort) = writer.abort().await {
                tracing::warn!(%key, error = %abort, "aborting the multipart upload failed");
            }
            Err(error)
        }
    }
}

/// Moves every message into `writer`, waiting for part capacity first so
/// that a slow bucket slows the stream instead of growing memory.
async fn pump<S>(
    writer: &mut WriteMultipart,
    mut stream: S,
    endpoint: &str,
    config: &UploadConfig,
) -> Result<SnapshotDigest, BackupError>
where
    S: Stream<Item = Result<SnapshotResponse, tonic::Status>> + Unpin,
{
    let broken = |detail: String| BackupError::SnapshotStream {
        endpoint: endpoint.to_string(),
        detail,
    };
    let mut digest = StreamDigest::default();
    loop {
        let next = tokio::time::timeout(config.idle_timeout, stream.next())
            .await
            .map_err(|_| broken(format!("no data for {:?}", config.idle_timeout)))?;
        let Some(msg) = next else { break };
        let msg = msg.map_err(|s| broken(format!("{:?}: {}", s.code(), s.message())))?;
        writer
            .wait_for_capacity(config.max_parts_in_flight)
            .await
            .map_err(|e| BackupError::Upload {
                key: "snapshot part".to_string(),
                detail: e.to_string(),
            })?;
        writer.write(&msg.blob);
        digest.update(&msg);
    }
    digest
        .finish()
        .map_err(|detail| BackupError::SnapshotCorrupt {
            endpoint: endpoint.to_string(),
            detail,
        })
}

/// Fails fast, before the member is asked for anything, when the bucket
/// does not answer a listing of the cluster's directory.
pub async fn check_bucket(store: &dyn ObjectStore, req: &BackupRequest) -> Result<(), BackupError> {
    store
        .list_with_delimiter(Some(&Path::from(req.keys.dir.as_str())))
        .await
        .map(|_| ())
        .map_err(|e| BackupError::BucketUnreachable {
            bucket: req.bucket.clone(),
            detail: e.to_string(),
        })
}

/// The whole data path: check the bucket, stream, upload, manifest, retention.
pub async fn take_backup(
    store: &dyn ObjectStore,
    req: &BackupRequest,
    config: &UploadConfig,
) -> Result<BackupOutcome, BackupError> {
    check_bucket(store, req).await?;
    let stream = open_snapshot(&req.endpoint, req.tls.as_ref(), config).await?;
    let digest = upload_snapshot(store, &req.keys.snapshot, &req.endpoint, stream, config).await?;
    let manifest = Manifest {
        format_version: MANIFEST_FORMAT_VERSION,
        namespace: req.namespace.clone(),
        cluster: req.cluster.clone(),
        cluster_id: digest.cluster_id.to_string(),
        backup: req.backup.clone(),
        member: req.member.clone(),
        revision: digest.revision,
        size_bytes: digest.size_bytes,
        sha256: digest.sha256,
        snapshot_key: req.keys.snapshot.clone(),
        created: Timestamp::now().to_string(),
    };
    write_manifest(store, &req.keys.manifest, &manifest).await?;
    let (expired, retention_error) = match req.keep {
        Some(keep) => match apply_retention(store, &req.keys.dir, keep).await {
            Ok(expired) => (expired, None),
            Err(e) => (Vec::new(), Some(e.to_string())),
        },
        None => (Vec::new(), None),
    };
    Ok(BackupOutcome {
        manifest,
        expired,
        retention_error,
    })
}

/// Writes the manifest JSON (a single small PUT, atomic in S3).
pub async fn write_manifest(
    store: &dyn ObjectStore,
    key: &str,
    manifest: &Manifest,
) -> Result<(), BackupError> {
    let failed = |detail: String| BackupError::Upload {
        key: key.to_string(),
        detail,
    };
    let bytes = manifest.encode().map_err(|e| failed(e.to_string()))?;
    store
        .put(&Path::from(key), PutPayload::from(bytes))
        .await
        .map_err(|e| failed(e.to_string()))?;
    Ok(())
}

/// Deletes the snapshots (and their manifests) of `dir` beyond the newest
/// `keep`; returns the deleted snapshot keys, oldest first.
pub async fn apply_retention(
    store: &dyn ObjectStore,
    dir: &str,
    keep: u32,
) -> Result<Vec<String>, object_store::Error> {
    let keys: Vec<String> = store
        .list(Some(&Path::from(dir)))
        .map_ok(|meta| meta.location.to_string())
        .try_collect()
        .await?;
    let keep = usize::try_from(keep).unwrap_or(usize::MAX);
    let expired = expired_snapshots(&keys, dir, keep);
    for key in &expired {
        if let Some(manifest) = super::naming::manifest_key_of(key) {
            match store.delete(&Path::from(manifest)).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        store.delete(&Path::from(key.as_str())).await?;
    }
    Ok(expired)
}

#[cfg(test)]
mod tests {
    use super::*;
    use titan_proto::etcdserverpb::ResponseHeader;

    /// A well-formed etcd snapshot stream of `content` cut into `chunk`-byte messages.
    fn stream_of(content: &[u8], chunk: usize) -> Vec<SnapshotResponse> {
        let mut body = content.to_vec();
        body.resize(body.len().div_ceil(512) * 512, 0);
        let trailer: [u8; 32] = Sha256::digest(&body).into();
        body.extend_from_slice(&trailer);
        let total = body.len() as u64;
        let mut sent = 0u64;
        body.chunks(chunk)
            .map(|blob| {
                sent += blob.len() as u64;
                SnapshotResponse {
                    header: Some(ResponseHeader {
                        cluster_id: 7,
                        revision: 42,
                        ..ResponseHeader::default()
                    }),
                    remaining_bytes: total - sent,
                    blob: blob.to_vec(),
                }
            })
            .collect()
    }

    #[test]
    fn digest_checks_the_trailer_however_the_stream_is_cut() {
        let content = vec![9u8; 1000];
        for chunk in [1, 31, 32, 33, 512, 4096] {
            let msgs = stream_of(&content, chunk);
            let whole: Vec<u8> = msgs.iter().flat_map(|m| m.blob.clone()).collect();
            let mut d = StreamDigest::default();
            msgs.iter().for_each(|m| d.update(m));
            let got = d.finish().unwrap_or_else(|e| panic!("chunk {chunk}: {e}"));
            assert_eq!(got.size_bytes, 1056);
            assert_eq!(got.sha256, hex(&Sha256::digest(&whole)));
            assert_eq!((got.revision, got.cluster_id), (42, 7));
        }
    }

    #[test]
    fn digest_refuses_truncated_flipped_and_unannounced_streams() {
        let msgs = stream_of(&[1u8; 600], 100);
        let mut truncated = StreamDigest::default();
        msgs[..msgs.len() - 1]
            .iter()
            .for_each(|m| truncated.update(m));
        let err = truncated.finish().err().unwrap_or_default();
        assert!(err.contains("remaining"), "{err}");

        let mut flipped = msgs.clone();
        flipped[0].blob[0] ^= 1;
        let mut d = StreamDigest::default();
        flipped.iter().for_each(|m| d.update(m));
        let err = d.finish().err().unwrap_or_default();
        assert!(err.contains("does not match"), "{err}");

        let mut odd = msgs;
        if let Some(last) = odd.last_mut() {
            last.blob.push(0);
        }
        let mut d = StreamDigest::default();
        odd.iter().for_each(|m| d.update(m));
        let err = d.finish().err().unwrap_or_default();
        assert!(err.contains("not an etcd snapshot size"), "{err}");
        assert!(StreamDigest::default().finish().is_err(), "empty stream");
    }
}
