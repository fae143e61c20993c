//! The `TitanCluster` custom resource (`titan.dev/v1alpha1`).
//!
//! The Rust types are the single source of truth: `titan-operator crd` prints
//! the CRD generated from them and `manifests/crd.yaml` must equal it. Defaults
//! and bounds live in the OpenAPI schema so that the API server enforces them;
//! Kubernetes 1.20 has no CEL rules, so cross-field checks (for example
//! `heartbeatMs < electionTimeoutMs`) are done by [`TitanClusterSpec::validate`].

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Affinity, ResourceRequirements, Toleration, TopologySpreadConstraint,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector, Time};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::backup::resource::S3Source;

/// Largest cluster the operator manages; Raft clusters above 9 voters only add latency.
pub const MAX_REPLICAS: i32 = 9;
/// API group of the CRD.
pub const GROUP: &str = "titan.dev";
/// Annotation whose value, when changed, triggers one on-demand snapshot.
pub const SNAPSHOT_REQUEST_ANNOTATION: &str = "titan.dev/snapshot-request";
/// Most entries of `networkPolicy.clientFrom` and of `networkPolicy.metricsFrom`.
pub const MAX_POLICY_PEERS: usize = 32;

/// Desired state of a Titan cluster.
// Each printcolumn(...) repeats `type_ = ...`; clippy reads that as a duplicated attribute.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "titan.dev",
    version = "v1alpha1",
    kind = "TitanCluster",
    plural = "titanclusters",
    shortname = "tc",
    namespaced,
    status = "TitanClusterStatus",
    scale(
        spec_replicas_path = ".spec.replicas",
        status_replicas_path = ".status.replicas",
        label_selector_path = ".status.selector"
    ),
    printcolumn(name = "Replicas", type_ = "integer", json_path = ".spec.replicas"),
    printcolumn(name = "Ready", type_ = "integer", json_path = ".status.readyReplicas"),
    printcolumn(name = "Leader", type_ = "string", json_path = ".status.leader"),
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct TitanClusterSpec {
    /// Number of Raft members (voters) the cluster should have: 1, or 3 to
    /// 9. Not 2: two voters tolerate no failure (a majority of 2 is 2), so
    /// restarting either pod stops writes; use 1 or 3+.
    #[serde(default = "default_replicas")]
    #[schemars(range(min = 1, max = 9), extend("not" = {"enum": [2]}))]
    pub replicas: i32,
    /// Container image of `titan-server`. The image must provide `/bin/sh`.
    #[serde(default = "default_image")]
    #[schemars(length(min = 1))]
    pub image: String,
    /// Kubernetes image pull policy for the server container.
    #[serde(default)]
    pub image_pull_policy: ImagePullPolicy,
    /// CPU and memory requests/limits of the server container, used as given
    /// (`{}` means none at all). When unset, new clusters get requests of
    /// `cpu: 100m`, `memory: 256Mi` and a limit of `memory: 1Gi` (no CPU limit:
    /// throttling delays heartbeats and triggers elections). A cluster whose
    /// StatefulSet already runs without any requests or limits (created before
    /// these defaults existed) keeps running without them, so an operator
    /// upgrade never adds a memory limit that could OOM-kill a running member.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// Persistent volume for each member's data dir.
    #[serde(default)]
    pub storage: StorageSpec,
    /// Periodic snapshot schedule driven by the operator.
    #[serde(default)]
    pub snapshot: SnapshotSpec,
    /// Raft timing and log compaction settings passed to every server.
    #[serde(default)]
    pub raft: RaftSpec,
    /// When true the operator makes no changes and reports ReconciliationPaused.
    #[serde(default)]
    pub paused: bool,
    /// Extra affinity merged over the operator's preferred node anti-affinity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity: Option<Affinity>,
    /// Tolerations copied to the server pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tolerations: Option<Vec<Toleration>>,
    /// Node selector copied to the server pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_selector: Option<BTreeMap<String, String>>,
    /// Topology spread constraints copied to the server pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topology_spread_constraints: Option<Vec<TopologySpreadConstraint>>,
    /// Extra labels for the server pods (the operator's own labels win).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_labels: Option<BTreeMap<String, String>>,
    /// Extra annotations for the server pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_annotations: Option<BTreeMap<String, String>>,
    /// Log level of the server pods (`TITAN_LOG_LEVEL`); the server's default
    /// (`info`) when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_level: Option<LogLevel>,
    /// Ingress NetworkPolicy for the server pods (opt-in).
    #[serde(default)]
    pub network_policy: NetworkPolicySpec,
    /// Where a new cluster's first data comes from; unset starts empty. Read
    /// only until the cluster has bootstrapped: it never overwrites a cluster
    /// that exists.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bootstrap: Option<BootstrapSpec>,
    /// TLS with certificates the operator issues and renews. Fixed when the
    /// cluster is created: a change later is refused (Degraded,
    /// `TlsChangeUnsupported`), because members cannot switch one by one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsSpec>,
}

/// `spec.tls`: the operator creates a CA (Secret `NAME-ca`) and a
/// certificate per member (Secret `NAME-tls`, with `ca.crt` for clients),
/// renews member certificates 30 days before they expire (the servers
/// re-read them without a restart), and calls the Admin API with a client
/// certificate of that CA.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TlsSpec {
    /// Mutual TLS on the peer port (Raft and Admin: only certificates of
    /// the cluster CA get in), TLS on the client gRPC port, and the
    /// plaintext TCP port bound to the pod's loopback only.
    #[serde(default)]
    pub enabled: bool,
    /// Clients of the gRPC port (the etcd v3 API) must present a
    /// certificate of the cluster CA, such as one from
    /// `clientCertificates`. Needs `enabled`. Can be changed on a running
    /// cluster (the pods roll one at a time).
    #[serde(default)]
    pub client_auth: bool,
    /// Client certificates the operator issues and renews for applications,
    /// one Secret `NAME-client-<name>` each (`tls.crt`, `tls.key`,
    /// `ca.crt`; subject CN `<name>`; 90 days, renewed 30 days before).
    /// Names are lower-case letters, digits and '-' (at most 40 characters,
    /// at most 16 names). `titan-operator` is reserved. Needs `enabled`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub client_certificates: Vec<String>,
}

/// Most `spec.tls.clientCertificates`.
pub const MAX_CLIENT_CERTIFICATES: usize = 16;
/// Longest name in `spec.tls.clientCertificates`.
const MAX_CLIENT_NAME: usize = 40;

impl TlsSpec {
    /// Client options only with TLS; client names that make valid Secret
    /// names, unique, and never the operator's admin identity.
    fn validate(&self) -> Result<(), SpecError> {
        if !self.enabled && (self.client_auth || !self.client_certificates.is_empty()) {
            return Err(SpecError::ClientTlsWithoutTls);
        }
        if self.client_certificates.len() > MAX_CLIENT_CERTIFICATES {
            return Err(SpecError::TooManyClientCertificates(
                self.client_certificates.len(),
            ));
        }
        for (i, name) in self.client_certificates.iter().enumerate() {
            let label = !name.is_empty()
                && name.len() <= MAX_CLIENT_NAME
                && name
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !name.starts_with('-')
                && !name.ends_with('-');
            if !label {
                return Err(SpecError::BadClientName(name.clone()));
            }
            if name == crate::tls::OPERATOR_CN {
                return Err(SpecError::ReservedClientName(name.clone()));
            }
            if self.client_certificates[..i].contains(name) {
                return Err(SpecError::DuplicateClientName(name.clone()));
            }
        }
        Ok(())
    }
}

impl TitanClusterSpec {
    /// Whether `spec.tls.enabled` is set.
    pub fn tls_enabled(&self) -> bool {
        self.tls.as_ref().is_some_and(|t| t.enabled)
    }

    /// Whether the gRPC port requires client certificates
    /// (`spec.tls.clientAuth` on a TLS cluster).
    pub fn client_auth(&self) -> bool {
        self.tls
            .as_ref()
            .is_some_and(|t| t.enabled && t.client_auth)
    }

    /// `spec.tls.clientCertificates` (empty without TLS).
    pub fn client_certificates(&self) -> &[String] {
        match &self.tls {
            Some(t) if t.enabled => &t.client_certificates,
            _ => &[],
        }
    }
}

/// A NetworkPolicy `NAME` over the server pods, restricting who may connect
/// to them. Members always reach each other on every port (Raft and
/// snapshots on `peer` 5001, lease and cluster calls relayed to the leader's
/// `grpc` 7001), and the operator's own pods reach the Admin API on 5001.
/// Egress is not restricted.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NetworkPolicySpec {
    /// Create the NetworkPolicy. Off by default: turning it on for a running
    /// cluster cuts off every client not listed in `clientFrom`, so an
    /// operator upgrade must never do it on its own. Switching it off deletes
    /// the policy the operator created.
    #[serde(default)]
    pub enabled: bool,
    /// Who may reach the client ports (`client` 6001, `grpc` 7001 and `http`
    /// 8080). Empty: every pod in the TitanCluster's namespace. An entry with
    /// only `podSelector` selects pods in the TitanCluster's namespace; with
    /// `namespaceSelector`, pods in the selected namespaces.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub client_from: Vec<PolicyPeer>,
    /// Who may additionally reach only the `http` port 8080 (`/metrics`), for
    /// example Prometheus in its own namespace. Same form as `clientFrom`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub metrics_from: Vec<PolicyPeer>,
}

/// Pods allowed in: a NetworkPolicyPeer without `ipBlock`. At least one of
/// the two selectors must be set; both together mean the selected pods in
/// the selected namespaces.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("minProperties" = 1))]
pub struct PolicyPeer {
    /// Namespaces whose pods are allowed (`{}`: every namespace).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace_selector: Option<LabelSelector>,
    /// Pods allowed (`{}`: every pod), in the TitanCluster's namespace
    /// unless `namespaceSelector` is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_selector: Option<LabelSelector>,
}

/// Log level of the server pods (`TITAN_LOG_LEVEL`); `info` when unset.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum LogLevel {
    /// Errors only.
    Error,
    /// Errors and warnings.
    Warn,
    /// The default: lifecycle events, elections, snapshots.
    Info,
    /// Per-request and per-message detail.
    Debug,
    /// Everything.
    Trace,
}

impl LogLevel {
    /// The value `titan-server --log-level` expects.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Error => "error",
            Self::Warn => "warn",
            Self::Info => "info",
            Self::Debug => "debug",
            Self::Trace => "trace",
        }
    }
}

fn default_replicas() -> i32 {
    3
}

fn default_image() -> String {
    "ghcr.io/titan-dev/titan:0.1.0".to_string()
}

/// Image pull policy, restricted to the values Kubernetes accepts.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum ImagePullPolicy {
    /// Pull only when the image is missing on the node.
    #[default]
    IfNotPresent,
    /// Always pull.
    Always,
    /// Never pull.
    Never,
}

impl ImagePullPolicy {
    /// The string Kubernetes expects in `imagePullPolicy`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::IfNotPresent => "IfNotPresent",
            Self::Always => "Always",
            Self::Never => "Never",
        }
    }
}

/// Persistent storage of one member.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StorageSpec {
    /// Requested volume size, a Kubernetes quantity such as `1Gi`.
    #[serde(default = "default_storage_size")]
    #[schemars(regex(pattern = r"^[0-9]+(\.[0-9]+)?(Ki|Mi|Gi|Ti|Pi|Ei|k|M|G|T|P|E)?$"))]
    pub size: String,
    /// Storage class of the PVCs; the cluster default when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_class_name: Option<String>,
    /// Opt-in: a `fix-permissions` init container (uid 0, only `CAP_CHOWN`)
    /// makes the volume's root directory owned by the server's uid/gid 65532
    /// before the server starts. For provisioners that ignore `fsGroup` (the
    /// host-path provisioner). Incompatible with the Pod Security
    /// `restricted` profile (a root container adding a capability): the
    /// namespace must admit `baseline`. Without it the pods meet `restricted`.
    #[serde(default)]
    pub fix_permissions: bool,
}

impl Default for StorageSpec {
    fn default() -> Self {
        Self {
            size: default_storage_size(),
            storage_class_name: None,
            fix_permissions: false,
        }
    }
}

fn default_storage_size() -> String {
    "1Gi".to_string()
}

/// Snapshot schedule.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SnapshotSpec {
    /// Seconds between operator-driven snapshots on every member; 0 turns the schedule off.
    #[serde(default)]
    #[schemars(range(min = 0, max = 2_592_000))]
    pub interval_seconds: u32,
}

/// Raft tuning passed to each server as flags.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RaftSpec {
    /// Election timeout (`--election-timeout-ms`). Must exceed `heartbeatMs`.
    #[serde(default = "default_election_timeout_ms")]
    #[schemars(range(min = 50, max = 60_000))]
    pub election_timeout_ms: u32,
    /// Leader heartbeat interval (`--heartbeat-ms`).
    #[serde(default = "default_heartbeat_ms")]
    #[schemars(range(min = 10, max = 10_000))]
    pub heartbeat_ms: u32,
    /// Log entries between automatic snapshots (`--snapshot-threshold`).
    #[serde(default = "default_snapshot_threshold_entries")]
    #[schemars(range(min = 100))]
    pub snapshot_threshold_entries: u64,
}

impl Default for RaftSpec {
    fn default() -> Self {
        Self {
            election_timeout_ms: default_election_timeout_ms(),
            heartbeat_ms: default_heartbeat_ms(),
            snapshot_threshold_entries: default_snapshot_threshold_entries(),
        }
    }
}

fn default_election_timeout_ms() -> u32 {
    1000
}

fn default_heartbeat_ms() -> u32 {
    100
}

fn default_snapshot_threshold_entries() -> u64 {
    10_000
}

/// The CRDs (TitanCluster, then TitanBackup) as one multi-document YAML,
/// exactly what `titan-operator crd` prints and `manifests/crd.yaml` holds.
pub fn crd_yaml() -> Result<String, serde_saphyr::SerializeError> {
    use kube::CustomResourceExt;
    // Long one-line descriptions stay on one line (no folded `>-` blocks);
    // multi-line ones become literal `|-` blocks.
    let options = serde_saphyr::ser_options! { folded_wrap_chars: usize::MAX };
    let cluster = serde_saphyr::to_string_with_options(&TitanCluster::crd(), options.clone())?;
    let backup = serde_saphyr::to_string_with_options(
        &crate::backup::resource::TitanBackup::crd(),
        options.clone(),
    )?;
    let schedule = serde_saphyr::to_string_with_options(
        &crate::backup::schedule::TitanBackupSchedule::crd(),
        options,
    )?;
    Ok(format!("{cluster}---\n{backup}---\n{schedule}"))
}

/// A spec the schema accepts but the operator cannot run.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    /// Followers would start elections between heartbeats.
    #[error(
        "raft.heartbeatMs ({heartbeat_ms}) must be below raft.electionTimeoutMs ({election_timeout_ms})"
    )]
    HeartbeatNotBelowElection {
        /// Offending heartbeat.
        heartbeat_ms: u32,
        /// Offending election timeout.
        election_timeout_ms: u32,
    },
    /// Replicas outside 1..=9 (only possible when the schema was bypassed).
    #[error("replicas must be between 1 and {MAX_REPLICAS}, got {0}")]
    ReplicasOutOfRange(i32),
    /// A NetworkPolicy peer without a selector (only possible when the schema
    /// was bypassed); the API server would refuse the policy.
    #[error("{field}[{index}] must set namespaceSelector, podSelector or both")]
    EmptyPolicyPeer {
        /// `networkPolicy.clientFrom` or `networkPolicy.metricsFrom`.
        field: &'static str,
        /// Position of the offending entry.
        index: usize,
    },
    /// More NetworkPolicy peers than [`MAX_POLICY_PEERS`] (only possible when
    /// the schema was bypassed).
    #[error("{field} has {count} entries, at most {MAX_POLICY_PEERS} are allowed")]
    TooManyPolicyPeers {
        /// `networkPolicy.clientFrom` or `networkPolicy.metricsFrom`.
        field: &'static str,
        /// Entries given.
        count: usize,
    },
    /// Two voters tolerate no failure; a rolling update would drop quorum.
    #[error(
        "replicas must not be 2: two Raft voters tolerate no failure (a majority of 2 is 2), so restarting either pod, as a rolling update does, stops all writes; use 1 or 3 or more"
    )]
    TwoVotersTolerateNoFailure,
    /// `bootstrap.fromBackup.s3.key` names no object.
    #[error("bootstrap.fromBackup.s3.key {0:?} must name an object (not empty, not ending in /)")]
    BadBackupKey(String),
    /// `tls.clientAuth` or `tls.clientCertificates` without `tls.enabled`.
    #[error("tls.clientAuth and tls.clientCertificates need tls.enabled: true")]
    ClientTlsWithoutTls,
    /// More client certificates than [`MAX_CLIENT_CERTIFICATES`].
    #[error("tls.clientCertificates has {0} names; at most {MAX_CLIENT_CERTIFICATES}")]
    TooManyClientCertificates(usize),
    /// A client certificate name that cannot name a Secret.
    #[error(
        "tls.clientCertificates name {0:?} must be 1 to {MAX_CLIENT_NAME} lower-case letters, \
         digits or '-', not starting or ending with '-'"
    )]
    BadClientName(String),
    /// The operator's own admin identity asked for as a client certificate.
    #[error(
        "tls.clientCertificates name {0:?} is reserved: it is the identity allowed to change the cluster"
    )]
    ReservedClientName(String),
    /// A name listed twice.
    #[error("tls.clientCertificates lists {0:?} twice")]
    DuplicateClientName(String),
    /// `bootstrap.fromBackup.sha256` is not a SHA-256.
    #[error("bootstrap.fromBackup.sha256 {0:?} must be 64 lower-case hex digits")]
    BadBackupChecksum(String),
}

/// How a new cluster is seeded.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BootstrapSpec {
    /// Restore a backup (a TitanBackup's snapshot object): every initial
    /// member downloads and checks it, then starts from its keys, history,
    /// leases and revision under the new cluster's own identity.
    pub from_backup: BackupSource,
}

/// The backup a new cluster starts from.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BackupSource {
    /// The snapshot object in S3 or an S3-compatible server.
    pub s3: S3Source,
    /// Expected SHA-256 of the whole object (the `sha256` of the backup's
    /// manifest or status), 64 lower-case hex digits. When set, any other
    /// object is refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
}

impl BackupSource {
    fn validate(&self) -> Result<(), SpecError> {
        let key = &self.s3.key;
        if key.is_empty() || key.ends_with('/') {
            return Err(SpecError::BadBackupKey(key.clone()));
        }
        if let Some(sha) = &self.sha256 {
            let hex =
                sha.len() == 64 && sha.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
            if !hex {
                return Err(SpecError::BadBackupChecksum(sha.clone()));
            }
        }
        Ok(())
    }
}

impl TitanClusterSpec {
    /// Cross-field checks the 1.20 schema cannot express (no CEL rules there).
    pub fn validate(&self) -> Result<(), SpecError> {
        if !(1..=MAX_REPLICAS).contains(&self.replicas) {
            return Err(SpecError::ReplicasOutOfRange(self.replicas));
        }
        if self.replicas == 2 {
            return Err(SpecError::TwoVotersTolerateNoFailure);
        }
        if self.raft.heartbeat_ms >= self.raft.election_timeout_ms {
            return Err(SpecError::HeartbeatNotBelowElection {
                heartbeat_ms: self.raft.heartbeat_ms,
                election_timeout_ms: self.raft.election_timeout_ms,
            });
        }
        if let Some(bootstrap) = &self.bootstrap {
            bootstrap.from_backup.validate()?;
        }
        if let Some(tls) = &self.tls {
            tls.validate()?;
        }
        self.network_policy.validate()
    }
}

impl NetworkPolicySpec {
    /// Every peer names a selector; the lists stay within [`MAX_POLICY_PEERS`].
    fn validate(&self) -> Result<(), SpecError> {
        let lists = [
            ("networkPolicy.clientFrom", &self.client_from),
            ("networkPolicy.metricsFrom", &self.metrics_from),
        ];
        for (field, peers) in lists {
            if peers.len() > MAX_POLICY_PEERS {
                return Err(SpecError::TooManyPolicyPeers {
                    field,
                    count: peers.len(),
                });
            }
            let empty = peers
                .iter()
                .position(|p| p.namespace_selector.is_none() && p.pod_selector.is_none());
            if let Some(index) = empty {
                return Err(SpecError::EmptyPolicyPeer { field, index });
            }
        }
        Ok(())
    }
}

/// Observed state, written only by the operator through the status subresource.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TitanClusterStatus {
    /// Coarse summary for humans; conditions carry the detail.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<Phase>,
    /// Number of Raft members (scale subresource `statusReplicasPath`).
    #[serde(default)]
    pub replicas: i32,
    /// Label selector of the pods (scale subresource `labelSelectorPath`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<String>,
    /// Pods that are Ready.
    #[serde(default)]
    pub ready_replicas: i32,
    /// Pod name of the current Raft leader.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leader: Option<String>,
    /// Raft members as reported by the leader.
    #[serde(default)]
    pub members: Vec<MemberStatus>,
    /// Most recent operator-driven snapshot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_snapshot: Option<LastSnapshot>,
    /// Available, Progressing, Degraded, ReconciliationPaused (API conventions).
    #[serde(default)]
    pub conditions: Vec<Condition>,
    /// `metadata.generation` this status was computed from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

/// Coarse lifecycle phase shown in `kubectl get tc`.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum Phase {
    /// Objects created, the initial members have not formed a cluster yet.
    Bootstrapping,
    /// Membership equals spec and every member is healthy.
    Running,
    /// A membership change is in progress.
    Scaling,
    /// Pods are being restarted onto a new template.
    Updating,
    /// The operator is waiting on something it cannot fix itself.
    Degraded,
    /// `spec.paused` is set.
    Paused,
}

/// Raft role of a member as the operator reports it.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum MemberRole {
    /// Current leader.
    Leader,
    /// Voting follower.
    Follower,
    /// Non-voting learner catching up.
    Learner,
}

/// One Raft member.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MemberStatus {
    /// Server name (the pod name).
    pub name: String,
    /// Raft member id, as a decimal string (u64 ids do not fit JSON integers safely).
    pub id: String,
    /// Raft role.
    pub role: MemberRole,
    /// Pod Ready and reachable over the admin API.
    pub ready: bool,
    /// Entries the member is behind the leader.
    #[serde(default)]
    pub lag_entries: u64,
}

/// The last snapshot the operator drove.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LastSnapshot {
    /// Raft log index covered by the leader's snapshot.
    #[serde(default)]
    pub index: u64,
    /// When the operator completed the snapshot round.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time: Option<Time>,
    /// Value of the `titan.dev/snapshot-request` annotation this round answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_token: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::CustomResourceExt;

    fn spec() -> TitanClusterSpec {
        serde_json::from_str("{}").unwrap_or_else(|e| panic!("empty spec must parse: {e}"))
    }

    #[test]
    fn empty_spec_takes_documented_defaults() {
        let spec = spec();
        assert_eq!(spec.replicas, 3);
        assert_eq!(spec.storage.size, "1Gi");
        assert_eq!(spec.raft.election_timeout_ms, 1000);
        assert_eq!(spec.snapshot.interval_seconds, 0);
        assert!(!spec.paused);
        assert_eq!(spec.validate(), Ok(()));
    }

    #[test]
    fn heartbeat_not_below_election_is_rejected() {
        let mut spec = spec();
        spec.raft.heartbeat_ms = spec.raft.election_timeout_ms;
        assert!(matches!(
            spec.validate(),
            Err(SpecError::HeartbeatNotBelowElection { .. })
        ));
    }

    #[test]
    fn replicas_outside_range_are_rejected() {
        for replicas in [0, 10, -1] {
            let mut spec = spec();
            spec.replicas = replicas;
            assert_eq!(
                spec.validate(),
                Err(SpecError::ReplicasOutOfRange(replicas))
            );
        }
    }

    /// Regression: a 2-voter cluster loses quorum on every pod
    /// restart, so `replicas: 2` is refused with the reason; table of the
    /// boundary values around it.
    #[test]
    fn two_replicas_are_refused_because_two_voters_tolerate_no_failure() {
        let table = [
            (1, Ok(())),
            (2, Err(SpecError::TwoVotersTolerateNoFailure)),
            (3, Ok(())),
            (4, Ok(())),
            (9, Ok(())),
        ];
        for (replicas, want) in table {
            let mut spec = spec();
            spec.replicas = replicas;
            assert_eq!(spec.validate(), want, "replicas {replicas}");
        }
        let msg = SpecError::TwoVotersTolerateNoFailure.to_string();
        assert!(msg.contains("tolerate no failure") && msg.contains("use 1 or 3"));
        let crd = serde_json::to_value(TitanCluster::crd()).unwrap_or_default();
        let replicas = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
            ["properties"]["replicas"];
        assert_eq!(
            replicas["not"]["enum"][0], 2,
            "schema must refuse 2: {replicas}"
        );
    }

    /// NetworkPolicy peers: a selector is required, the lists are bounded,
    /// and the feature is off unless asked for.
    #[test]
    fn network_policy_peers_need_a_selector_and_are_bounded() {
        assert!(!spec().network_policy.enabled, "opt-in");
        let many: Vec<serde_json::Value> = (0..=MAX_POLICY_PEERS)
            .map(|_| serde_json::json!({"podSelector": {}}))
            .collect();
        let table = [
            (serde_json::json!({"enabled": true}), Ok(())),
            (
                serde_json::json!({"clientFrom": [{"podSelector": {}}, {"namespaceSelector": {}}]}),
                Ok(()),
            ),
            (
                serde_json::json!({"clientFrom": [{"podSelector": {}}, {}]}),
                Err(SpecError::EmptyPolicyPeer {
                    field: "networkPolicy.clientFrom",
                    index: 1,
                }),
            ),
            (
                serde_json::json!({"metricsFrom": [{}]}),
                Err(SpecError::EmptyPolicyPeer {
                    field: "networkPolicy.metricsFrom",
                    index: 0,
                }),
            ),
            (
                serde_json::json!({"metricsFrom": many}),
                Err(SpecError::TooManyPolicyPeers {
                    field: "networkPolicy.metricsFrom",
                    count: MAX_POLICY_PEERS + 1,
                }),
            ),
        ];
        for (policy, want) in table {
            let mut spec = spec();
            spec.network_policy =
                serde_json::from_value(policy.clone()).unwrap_or_else(|e| panic!("{policy}: {e}"));
            assert_eq!(spec.validate(), want, "{policy}");
        }
        let msg = SpecError::EmptyPolicyPeer {
            field: "networkPolicy.clientFrom",
            index: 1,
        }
        .to_string();
        assert_eq!(
            msg,
            "networkPolicy.clientFrom[1] must set namespaceSelector, podSelector or both"
        );
        let crd = serde_json::to_value(TitanCluster::crd()).unwrap_or_default();
        let policy = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
            ["properties"]["networkPolicy"];
        let client_from = &policy["properties"]["clientFrom"];
        assert_eq!(client_from["maxItems"], MAX_POLICY_PEERS);
        assert_eq!(client_from["items"]["minProperties"], 1, "{client_from}");
        assert_eq!(policy["properties"]["enabled"]["default"], false);
    }

    /// `spec.tls` client options: only with TLS, names that make Secret
    /// names, no duplicate, never the operator's admin identity.
    #[test]
    fn tls_client_options_need_tls_and_good_unique_unreserved_names() {
        let many: Vec<String> = (0..=MAX_CLIENT_CERTIFICATES)
            .map(|i| format!("app{i}"))
            .collect();
        let long = "a".repeat(MAX_CLIENT_NAME + 1);
        let table = [
            (serde_json::json!({"enabled": true}), Ok(())),
            (
                serde_json::json!({"enabled": true, "clientAuth": true, "clientCertificates": ["filesync", "app-2"]}),
                Ok(()),
            ),
            (
                serde_json::json!({"clientAuth": true}),
                Err(SpecError::ClientTlsWithoutTls),
            ),
            (
                serde_json::json!({"enabled": false, "clientCertificates": ["a"]}),
                Err(SpecError::ClientTlsWithoutTls),
            ),
            (
                serde_json::json!({"enabled": true, "clientCertificates": ["File_Sync"]}),
                Err(SpecError::BadClientName("File_Sync".into())),
            ),
            (
                serde_json::json!({"enabled": true, "clientCertificates": [""]}),
                Err(SpecError::BadClientName(String::new())),
            ),
            (
                serde_json::json!({"enabled": true, "clientCertificates": ["-a"]}),
                Err(SpecError::BadClientName("-a".into())),
            ),
            (
                serde_json::json!({"enabled": true, "clientCertificates": [long.clone()]}),
                Err(SpecError::BadClientName(long)),
            ),
            (
                serde_json::json!({"enabled": true, "clientCertificates": ["titan-operator"]}),
                Err(SpecError::ReservedClientName("titan-operator".into())),
            ),
            (
                serde_json::json!({"enabled": true, "clientCertificates": ["a", "b", "a"]}),
                Err(SpecError::DuplicateClientName("a".into())),
            ),
            (
                serde_json::json!({"enabled": true, "clientCertificates": many}),
                Err(SpecError::TooManyClientCertificates(
                    MAX_CLIENT_CERTIFICATES + 1,
                )),
            ),
        ];
        for (tls, want) in table {
            let mut spec = spec();
            spec.tls =
                Some(serde_json::from_value(tls.clone()).unwrap_or_else(|e| panic!("{tls}: {e}")));
            assert_eq!(spec.validate(), want, "{tls}");
        }
        let mut spec = spec();
        spec.tls = Some(TlsSpec {
            enabled: false,
            client_auth: true,
            client_certificates: vec!["a".into()],
        });
        assert!(!spec.client_auth() && spec.client_certificates().is_empty());
    }

    #[test]
    fn schema_bounds_replicas_and_has_scale_subresource() {
        let crd = serde_json::to_value(TitanCluster::crd()).unwrap_or_default();
        let version = &crd["spec"]["versions"][0];
        let replicas =
            &version["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]["replicas"];
        assert_eq!(replicas["minimum"].as_f64(), Some(1.0));
        assert_eq!(replicas["maximum"].as_f64(), Some(9.0));
        assert_eq!(replicas["default"], 3);
        let scale = &version["subresources"]["scale"];
        assert_eq!(scale["specReplicasPath"], ".spec.replicas");
        assert_eq!(scale["statusReplicasPath"], ".status.replicas");
        assert_eq!(scale["labelSelectorPath"], ".status.selector");
        assert_eq!(crd["spec"]["names"]["shortNames"][0], "tc");
    }

    /// `bootstrap.fromBackup` must name an object, and a checksum, when
    /// given, must be a SHA-256.
    #[test]
    fn a_backup_source_names_an_object_and_a_real_checksum() {
        let sha = "0123456789abcdef".repeat(4);
        let table: [(&str, Option<&str>, Result<(), SpecError>); 5] = [
            ("t/ns/c/1-b.snapshot", None, Ok(())),
            ("t/ns/c/1-b.snapshot", Some(&sha), Ok(())),
            (
                "t/ns/c/",
                None,
                Err(SpecError::BadBackupKey("t/ns/c/".into())),
            ),
            (
                "k",
                Some("ABC"),
                Err(SpecError::BadBackupChecksum("ABC".into())),
            ),
            (
                "k",
                Some(&sha.to_uppercase()),
                Err(SpecError::BadBackupChecksum(sha.to_uppercase())),
            ),
        ];
        for (key, checksum, want) in table {
            let mut spec = spec();
            spec.bootstrap = Some(BootstrapSpec {
                from_backup: BackupSource {
                    s3: S3Source {
                        bucket: "b".into(),
                        key: key.into(),
                        endpoint: None,
                        region: "us-east-1".into(),
                        credentials_secret: "s3".into(),
                        allow_http: false,
                    },
                    sha256: checksum.map(str::to_string),
                },
            });
            assert_eq!(spec.validate(), want, "{key} {checksum:?}");
        }
    }
}
