//! `TitanBackup`: one-shot backups of a TitanCluster to S3-compatible object
//! storage.
//!
//! Flow of one backup ([`controller`]): find the cluster and a ready member
//! (a follower first) → read the credentials Secret → check the bucket
//! answers → stream etcd's `Maintenance.Snapshot` from the member straight
//! into a multipart upload ([`upload`], bounded memory, SHA-256 and size
//! computed on the way) → write the JSON manifest next to it → delete the
//! oldest backups beyond `retention.keep` → record the result in status.
//!
//! Invariants:
//! - The snapshot object appears under its final key only when the whole
//!   stream arrived and its etcd trailer (SHA-256 of the rest) checked out:
//!   S3 publishes a multipart upload only on `CompleteMultipartUpload`, and
//!   every failure path aborts the upload instead.
//! - The manifest is written after the snapshot, so a manifest always
//!   describes a complete snapshot.
//! - Memory is bounded by `part_size_bytes × (max_parts_in_flight + 1)`
//!   whatever the snapshot's size.

pub mod controller;
pub mod naming;
pub mod resource;
pub mod restore;
#[cfg(test)]
mod scenarios;
pub mod schedule;
pub mod schedule_controller;
#[cfg(test)]
mod schedule_scenarios;
pub mod store;
pub mod upload;

/// Why a backup failed. [`BackupError::reason`] is the condition reason and
/// the event reason.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    /// `spec.cluster` names no TitanCluster in the backup's namespace.
    #[error("TitanCluster {cluster} not found in namespace {namespace}")]
    ClusterNotFound {
        /// Namespace searched.
        namespace: String,
        /// Cluster name from the spec.
        cluster: String,
    },
    /// No member is ready to stream a snapshot.
    #[error("TitanCluster {cluster} has no ready member to stream a snapshot from")]
    NoReadyMember {
        /// Cluster name.
        cluster: String,
    },
    /// The credentials Secret does not exist.
    #[error("credentials Secret {secret} not found")]
    CredentialsSecretMissing {
        /// Secret name.
        secret: String,
    },
    /// The credentials Secret lacks a key (or it is empty).
    #[error("credentials Secret {secret} has no (or an empty) {key}")]
    CredentialsIncomplete {
        /// Secret name.
        secret: String,
        /// Missing key.
        key: &'static str,
    },
    /// The destination cannot be configured (bad endpoint URL, for example).
    #[error("invalid destination: {0}")]
    InvalidDestination(String),
    /// The bucket did not answer (wrong credentials, no such bucket, unreachable).
    #[error("bucket {bucket} unreachable: {detail}")]
    BucketUnreachable {
        /// Bucket name.
        bucket: String,
        /// Store error.
        detail: String,
    },
    /// The member's snapshot stream could not be opened or broke off.
    #[error("snapshot stream from {endpoint} failed: {detail}")]
    SnapshotStream {
        /// Member endpoint.
        endpoint: String,
        /// gRPC error or timeout.
        detail: String,
    },
    /// The stream ended but its etcd trailer does not check out.
    #[error("snapshot from {endpoint} is damaged: {detail}")]
    SnapshotCorrupt {
        /// Member endpoint.
        endpoint: String,
        /// What does not match.
        detail: String,
    },
    /// The backup to restore from is not in the bucket.
    #[error("no backup at s3://{bucket}/{key}")]
    BackupNotFound {
        /// Bucket name.
        bucket: String,
        /// Object key.
        key: String,
    },
    /// The backup to restore from does not check out (truncated, a
    /// checksum mismatch, an undecodable snapshot inside).
    #[error("backup {key} is damaged: {detail}")]
    BackupCorrupt {
        /// Object key.
        key: String,
        /// What does not match.
        detail: String,
    },
    /// The backup was written in a snapshot format this build cannot read
    /// (a newer Titan's).
    #[error("backup {key} has an unsupported format: {detail}")]
    BackupUnsupported {
        /// Object key.
        key: String,
        /// The decoder's words.
        detail: String,
    },
    /// Writing the downloaded backup to local disk failed.
    #[error("writing {path}: {detail}")]
    Download {
        /// Local path.
        path: String,
        /// I/O error.
        detail: String,
    },
    /// Writing an object failed.
    #[error("writing {key}: {detail}")]
    Upload {
        /// Object key.
        key: String,
        /// Store error.
        detail: String,
    },
}

impl BackupError {
    /// CamelCase reason for the `Failed` condition and the Warning event.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::ClusterNotFound { .. } => "ClusterNotFound",
            Self::NoReadyMember { .. } => "NoReadyMember",
            Self::CredentialsSecretMissing { .. } => "CredentialsSecretMissing",
            Self::CredentialsIncomplete { .. } => "CredentialsIncomplete",
            Self::InvalidDestination(_) => "InvalidDestination",
            Self::BucketUnreachable { .. } => "BucketUnreachable",
            Self::SnapshotStream { .. } => "SnapshotStreamFailed",
            Self::SnapshotCorrupt { .. } => "SnapshotCorrupt",
            Self::Upload { .. } => "UploadFailed",
            Self::BackupNotFound { .. } => "BackupNotFound",
            Self::BackupCorrupt { .. } => "BackupCorrupt",
            Self::BackupUnsupported { .. } => "BackupFormatUnsupported",
            Self::Download { .. } => "DownloadFailed",
        }
    }
}
