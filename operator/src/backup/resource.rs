//! The `TitanBackup` custom resource (`titan.dev/v1alpha1`): one backup of
//! one TitanCluster to S3 or an S3-compatible store.
//!
//! A TitanBackup is one-shot: the operator takes it once and records the
//! outcome in its status; a `Completed` or `Failed` backup is never taken
//! again (create a new TitanBackup for a new backup).

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Secret key holding the S3 access key id.
pub const ACCESS_KEY_ID: &str = "AWS_ACCESS_KEY_ID";
/// Secret key holding the S3 secret access key.
pub const SECRET_ACCESS_KEY: &str = "AWS_SECRET_ACCESS_KEY";
/// Optional Secret key holding an STS session token.
pub const SESSION_TOKEN: &str = "AWS_SESSION_TOKEN";

/// Desired backup: which cluster, where to, how many to keep.
// Each printcolumn(...) repeats `type_ = ...`; clippy reads that as a duplicated attribute.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "titan.dev",
    version = "v1alpha1",
    kind = "TitanBackup",
    plural = "titanbackups",
    shortname = "tbk",
    namespaced,
    status = "TitanBackupStatus",
    printcolumn(name = "Cluster", type_ = "string", json_path = ".spec.cluster"),
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(name = "Key", type_ = "string", json_path = ".status.objectKey"),
    printcolumn(name = "Size", type_ = "integer", json_path = ".status.sizeBytes"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct TitanBackupSpec {
    /// Name of the TitanCluster to back up, in the TitanBackup's namespace.
    #[schemars(length(min = 1))]
    pub cluster: String,
    /// Where the snapshot and its manifest are written.
    pub destination: BackupDestination,
    /// How many backups of this cluster under this prefix to keep; unset
    /// keeps every backup.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retention: Option<RetentionSpec>,
}

/// The object store the backup goes to.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BackupDestination {
    /// An S3 bucket (AWS or any S3-compatible server).
    pub s3: S3Destination,
}

/// An S3 bucket and the credentials to write it.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct S3Destination {
    /// Bucket name; it must exist.
    #[schemars(length(min = 1))]
    pub bucket: String,
    /// Key prefix (no leading or trailing `/` needed). Objects are written
    /// under `PREFIX/NAMESPACE/CLUSTER/`.
    // No schema default: an empty-string default does not survive the API
    // server's CRD validation ("null" ... must be of type string).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub prefix: String,
    /// Endpoint URL of an S3-compatible server (`https://minio.example:9000`);
    /// AWS S3 when unset. Requests use path-style addressing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// Region of the bucket.
    #[serde(default = "default_region")]
    pub region: String,
    /// Name of a Secret in the TitanBackup's namespace with the keys
    /// `AWS_ACCESS_KEY_ID` and `AWS_SECRET_ACCESS_KEY` (and optionally
    /// `AWS_SESSION_TOKEN`).
    #[schemars(length(min = 1))]
    pub credentials_secret: String,
    /// Allow a plain `http://` endpoint (test and in-cluster servers only).
    #[serde(default)]
    pub allow_http: bool,
}

/// One backup object to read (`TitanCluster.spec.bootstrap.fromBackup.s3`).
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct S3Source {
    /// Bucket name.
    #[schemars(length(min = 1))]
    pub bucket: String,
    /// Object key of the `.snapshot` a TitanBackup wrote (its
    /// `status.objectKey`).
    #[schemars(length(min = 1))]
    pub key: String,
    /// Endpoint URL of an S3-compatible server; AWS S3 when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// Region of the bucket.
    #[serde(default = "default_region")]
    pub region: String,
    /// Name of a Secret in the cluster's namespace with the keys
    /// `AWS_ACCESS_KEY_ID` and `AWS_SECRET_ACCESS_KEY` (and optionally
    /// `AWS_SESSION_TOKEN`).
    #[schemars(length(min = 1))]
    pub credentials_secret: String,
    /// Allow a plain `http://` endpoint (test and in-cluster servers only).
    #[serde(default)]
    pub allow_http: bool,
}

impl S3Source {
    /// The bucket as a store location (no prefix: the key is whole).
    pub fn bucket_location(&self) -> S3Destination {
        S3Destination {
            bucket: self.bucket.clone(),
            prefix: String::new(),
            endpoint: self.endpoint.clone(),
            region: self.region.clone(),
            credentials_secret: self.credentials_secret.clone(),
            allow_http: self.allow_http,
        }
    }
}

fn default_region() -> String {
    "us-east-1".to_string()
}

/// Retention of the backups of one cluster under one prefix.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RetentionSpec {
    /// Newest backups kept after a successful backup; older ones (snapshot
    /// and manifest) are deleted.
    #[schemars(range(min = 1, max = 10_000))]
    pub keep: u32,
}

/// Lifecycle of one backup.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum BackupPhase {
    /// Accepted, not started.
    Pending,
    /// Streaming the snapshot into the bucket.
    Running,
    /// The snapshot and its manifest are in the bucket.
    Completed,
    /// The backup failed; the `Failed` condition says why. Never retried.
    Failed,
}

/// What happened to the backup.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TitanBackupStatus {
    /// Pending, Running, Completed or Failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<BackupPhase>,
    /// `Completed` and `Failed`, with a machine-readable reason.
    #[serde(default)]
    pub conditions: Vec<Condition>,
    /// Object key of the snapshot in the bucket.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub object_key: Option<String>,
    /// Object key of the JSON manifest next to it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub manifest_key: Option<String>,
    /// Size of the snapshot object in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size_bytes: Option<u64>,
    /// Store revision the snapshot holds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<i64>,
    /// Lower-case hex SHA-256 of the whole snapshot object.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// Pod the snapshot was streamed from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub member: Option<String>,
    /// When the operator started the backup.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<Time>,
    /// When the backup completed or failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_time: Option<Time>,
}

impl TitanBackupStatus {
    /// A finished backup (Completed or Failed) is never taken again.
    pub fn is_finished(&self) -> bool {
        matches!(
            self.phase,
            Some(BackupPhase::Completed | BackupPhase::Failed)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::CustomResourceExt;

    #[test]
    fn minimal_spec_takes_defaults_and_schema_requires_the_essentials() {
        let spec: TitanBackupSpec = serde_json::from_value(serde_json::json!({
            "cluster": "demo",
            "destination": {"s3": {"bucket": "b", "credentialsSecret": "s3"}}
        }))
        .unwrap_or_else(|e| panic!("minimal spec must parse: {e}"));
        assert_eq!(spec.destination.s3.region, "us-east-1");
        assert_eq!(spec.destination.s3.prefix, "");
        assert!(!spec.destination.s3.allow_http);
        assert_eq!(spec.retention, None);
        let crd = serde_json::to_value(TitanBackup::crd()).unwrap_or_default();
        let schema = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"];
        let required = &schema["spec"]["required"];
        assert!(
            required.as_array().is_some_and(|r| r.len() == 2),
            "{required}"
        );
        let s3 = &schema["spec"]["properties"]["destination"]["properties"]["s3"];
        assert_eq!(
            s3["required"],
            serde_json::json!(["bucket", "credentialsSecret"])
        );
        let keep = &schema["spec"]["properties"]["retention"]["properties"]["keep"];
        assert_eq!(keep["minimum"].as_f64(), Some(1.0));
        assert!(schema["status"].is_object());
        assert_eq!(crd["spec"]["names"]["shortNames"][0], "tbk");
    }

    #[test]
    fn only_completed_and_failed_are_finished() {
        let table = [
            (None, false),
            (Some(BackupPhase::Pending), false),
            (Some(BackupPhase::Running), false),
            (Some(BackupPhase::Completed), true),
            (Some(BackupPhase::Failed), true),
        ];
        for (phase, want) in table {
            let status = TitanBackupStatus {
                phase,
                ..TitanBackupStatus::default()
            };
            assert_eq!(status.is_finished(), want, "{phase:?}");
        }
    }
}
