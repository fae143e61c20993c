//! Pure rules of the bucket layout: object keys, the JSON manifest next to
//! each snapshot, and which backups retention deletes.
//!
//! Layout: `PREFIX/NAMESPACE/CLUSTER/STAMP-BACKUP.snapshot` and
//! `PREFIX/NAMESPACE/CLUSTER/STAMP-BACKUP.manifest.json`, with `STAMP` the
//! UTC start time as `YYYYMMDDTHHMMSSZ`. Keys of one cluster therefore sort
//! oldest first, which is the only ordering retention relies on.

use k8s_openapi::jiff::Timestamp;
use serde::{Deserialize, Serialize};

/// Suffix of snapshot objects.
pub const SNAPSHOT_SUFFIX: &str = ".snapshot";
/// Suffix of manifest objects.
pub const MANIFEST_SUFFIX: &str = ".manifest.json";
/// Version of the manifest's JSON layout; readers refuse any other.
pub const MANIFEST_FORMAT_VERSION: u32 = 1;

/// Where one backup goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupKeys {
    /// Directory of every backup of the cluster, ending in `/`.
    pub dir: String,
    /// Key of the snapshot object.
    pub snapshot: String,
    /// Key of the manifest object.
    pub manifest: String,
}

/// `PREFIX/NAMESPACE/CLUSTER/` with surplus slashes of `prefix` removed.
pub fn cluster_dir(prefix: &str, namespace: &str, cluster: &str) -> String {
    let prefix = prefix.trim_matches('/');
    if prefix.is_empty() {
        format!("{namespace}/{cluster}/")
    } else {
        format!("{prefix}/{namespace}/{cluster}/")
    }
}

/// Keys of the backup named `backup` of `cluster`, started at `started`.
pub fn backup_keys(
    prefix: &str,
    namespace: &str,
    cluster: &str,
    backup: &str,
    started: Timestamp,
) -> BackupKeys {
    let dir = cluster_dir(prefix, namespace, cluster);
    let stem = format!("{dir}{}-{backup}", started.strftime("%Y%m%dT%H%M%SZ"));
    BackupKeys {
        snapshot: format!("{stem}{SNAPSHOT_SUFFIX}"),
        manifest: format!("{stem}{MANIFEST_SUFFIX}"),
        dir,
    }
}

/// The manifest key belonging to a snapshot key.
pub fn manifest_key_of(snapshot_key: &str) -> Option<String> {
    snapshot_key
        .strip_suffix(SNAPSHOT_SUFFIX)
        .map(|stem| format!("{stem}{MANIFEST_SUFFIX}"))
}

/// The small JSON object written next to each snapshot: what a restore
/// checks the downloaded snapshot against.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    /// [`MANIFEST_FORMAT_VERSION`].
    pub format_version: u32,
    /// Namespace of the cluster.
    pub namespace: String,
    /// Name of the TitanCluster.
    pub cluster: String,
    /// Raft cluster id from the snapshot stream's header, as a decimal string
    /// (u64 ids do not fit JSON numbers safely).
    pub cluster_id: String,
    /// Name of the TitanBackup.
    pub backup: String,
    /// Pod the snapshot was streamed from.
    pub member: String,
    /// Store revision the snapshot holds.
    pub revision: i64,
    /// Size of the snapshot object in bytes.
    pub size_bytes: u64,
    /// Lower-case hex SHA-256 of the whole snapshot object.
    pub sha256: String,
    /// Key of the snapshot object.
    pub snapshot_key: String,
    /// RFC 3339 time the upload completed.
    pub created: String,
}

/// A manifest that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// Not the JSON layout of any version.
    #[error("manifest is not valid JSON: {0}")]
    Json(#[from] serde_json::Error),
    /// Written by a newer (or older) operator.
    #[error("manifest format version {0} is not supported (expected {MANIFEST_FORMAT_VERSION})")]
    UnsupportedVersion(u32),
}

impl Manifest {
    /// Pretty JSON bytes.
    pub fn encode(&self) -> Result<Vec<u8>, serde_json::Error> {
        serde_json::to_vec_pretty(self)
    }

    /// Parses and checks the format version.
    pub fn decode(bytes: &[u8]) -> Result<Self, ManifestError> {
        let manifest: Manifest = serde_json::from_slice(bytes)?;
        if manifest.format_version != MANIFEST_FORMAT_VERSION {
            return Err(ManifestError::UnsupportedVersion(manifest.format_version));
        }
        Ok(manifest)
    }
}

/// Snapshot keys to delete so that only the newest `keep` snapshots directly
/// in `dir` remain, oldest first. Keys elsewhere (other clusters, deeper
/// paths, manifests, foreign objects) are never selected.
pub fn expired_snapshots(keys: &[String], dir: &str, keep: usize) -> Vec<String> {
    let mut ours: Vec<&String> = keys
        .iter()
        .filter(|k| {
            k.strip_prefix(dir)
                .is_some_and(|rest| !rest.contains('/') && rest.ends_with(SNAPSHOT_SUFFIX))
        })
        .collect();
    ours.sort();
    ours.dedup();
    let excess = ours.len().saturating_sub(keep);
    ours.into_iter().take(excess).cloned().collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use titan_snapfile::backup::hex;

    fn at(s: &str) -> Timestamp {
        s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn keys_are_prefix_namespace_cluster_then_sortable_stamp() {
        let table = [
            ("", "prod/demo/"),
            ("/", "prod/demo/"),
            ("backups", "backups/prod/demo/"),
            ("/backups/titan/", "backups/titan/prod/demo/"),
        ];
        for (prefix, dir) in table {
            let keys = backup_keys(
                prefix,
                "prod",
                "demo",
                "nightly",
                at("2026-12-07T01:02:03Z"),
            );
            assert_eq!(keys.dir, dir, "{prefix:?}");
            assert_eq!(
                keys.snapshot,
                format!("{dir}20261207T010203Z-nightly.snapshot")
            );
            assert_eq!(
                keys.manifest,
                format!("{dir}20261207T010203Z-nightly.manifest.json")
            );
            assert_eq!(manifest_key_of(&keys.snapshot), Some(keys.manifest));
        }
        assert_eq!(manifest_key_of("a/b.manifest.json"), None);
        let early = backup_keys("", "p", "c", "zzz", at("2026-01-01T00:00:00Z"));
        let late = backup_keys("", "p", "c", "aaa", at("2026-01-01T00:00:01Z"));
        assert!(
            early.snapshot < late.snapshot,
            "time orders keys, not names"
        );
    }

    fn manifest() -> Manifest {
        Manifest {
            format_version: MANIFEST_FORMAT_VERSION,
            namespace: "prod".into(),
            cluster: "demo".into(),
            cluster_id: u64::MAX.to_string(),
            backup: "nightly".into(),
            member: "demo-1".into(),
            revision: 42,
            size_bytes: 1056,
            sha256: hex(&[0xab; 32]),
            snapshot_key: "prod/demo/x.snapshot".into(),
            created: "2026-12-07T01:02:03Z".into(),
        }
    }

    #[test]
    fn manifest_round_trips_and_refuses_other_versions_and_garbage() {
        let m = manifest();
        let bytes = m.encode().unwrap_or_else(|e| panic!("{e}"));
        let text = String::from_utf8_lossy(&bytes);
        assert!(text.contains("\"formatVersion\": 1"), "{text}");
        assert!(
            text.contains("\"clusterId\": \"18446744073709551615\""),
            "{text}"
        );
        assert_eq!(Manifest::decode(&bytes).ok(), Some(m.clone()));
        let mut newer = m;
        newer.format_version = 2;
        let bytes = newer.encode().unwrap_or_else(|e| panic!("{e}"));
        assert!(matches!(
            Manifest::decode(&bytes),
            Err(ManifestError::UnsupportedVersion(2))
        ));
        assert!(matches!(
            Manifest::decode(b"{\"formatVersion\": 1}"),
            Err(ManifestError::Json(_))
        ));
        assert!(matches!(
            Manifest::decode(b"not json"),
            Err(ManifestError::Json(_))
        ));
    }

    #[test]
    fn retention_deletes_only_the_oldest_snapshots_of_this_directory() {
        let dir = "b/prod/demo/";
        let keys: Vec<String> = [
            "b/prod/demo/20260103T000000Z-c.snapshot",
            "b/prod/demo/20260101T000000Z-a.snapshot",
            "b/prod/demo/20260101T000000Z-a.manifest.json",
            "b/prod/demo/20260102T000000Z-b.snapshot",
            "b/prod/demo2/20250101T000000Z-x.snapshot",
            "b/prod/demo/old/20240101T000000Z-y.snapshot",
            "b/prod/demo/notes.txt",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let table: [(usize, &[&str]); 5] = [
            (
                0,
                &[
                    "b/prod/demo/20260101T000000Z-a.snapshot",
                    "b/prod/demo/20260102T000000Z-b.snapshot",
                    "b/prod/demo/20260103T000000Z-c.snapshot",
                ],
            ),
            (
                1,
                &[
                    "b/prod/demo/20260101T000000Z-a.snapshot",
                    "b/prod/demo/20260102T000000Z-b.snapshot",
                ],
            ),
            (2, &["b/prod/demo/20260101T000000Z-a.snapshot"]),
            (3, &[]),
            (10, &[]),
        ];
        for (keep, want) in table {
            assert_eq!(expired_snapshots(&keys, dir, keep), want, "keep {keep}");
        }
        assert!(expired_snapshots(&[], dir, 1).is_empty());
    }
}
