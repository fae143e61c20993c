//! Pure builders: a [`BuildInput`] in, Kubernetes objects out.
//!
//! Nothing here talks to the API server, so every object is unit-tested
//! (table-driven and golden files under `operator/tests/golden/`). The
//! reconciler applies the results with server-side apply.

mod configmap;
mod networkpolicy;
mod pdb;
mod restore;
mod service;
mod statefulset;

pub use configmap::{
    BOOTSTRAPPED_KEY, CLUSTER_ID_KEY, INITIAL_PEERS_KEY, INITIAL_REPLICAS_KEY, TLS_KEY, configmap,
    recorded_tls,
};
pub use networkpolicy::{
    NAMESPACE_NAME_LABEL, OperatorIdentity, PodSelectorError, network_policy, parse_pod_selector,
};
pub use pdb::{
    as_v1beta1 as pdb_as_v1beta1, max_unavailable, pdb, v1beta1_resource as pdb_v1beta1_resource,
};
pub use restore::{RESTORE_CONTAINER, RESTORE_FILE};
pub use service::{client_service, leader_role_patch, leader_service, peers_service};
pub use statefulset::{DATA_DIR, SERVER_CONTAINER, TLS_DIR, default_resources, statefulset};

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::{Resource, ResourceExt};

use crate::crd::TitanCluster;

/// Raft peer + admin gRPC port of every server.
pub const PEER_PORT: i32 = 5001;
/// Plaintext TCP client port.
pub const CLIENT_PORT: i32 = 6001;
/// Client gRPC port.
pub const GRPC_PORT: i32 = 7001;
/// HTTP port for /healthz, /readyz, /metrics.
pub const HTTP_PORT: i32 = 8080;
/// Field manager used for every server-side apply.
pub const FIELD_MANAGER: &str = "titan-operator";
/// Pod label the operator sets on the current Raft leader's pod only; the
/// `NAME-leader` Service selects it.
pub const ROLE_LABEL: &str = "titan.dev/role";
/// Value of [`ROLE_LABEL`] on the leader's pod.
pub const LEADER_ROLE: &str = "leader";

/// Stable names of everything that belongs to one cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Names {
    /// `metadata.name` of the TitanCluster.
    pub cluster: String,
    /// Namespace of the TitanCluster and all its objects.
    pub namespace: String,
}

impl Names {
    /// Names for `cluster`; `default` namespace when unset (never for a real namespaced object).
    pub fn of(cluster: &TitanCluster) -> Self {
        Self {
            cluster: cluster.name_any(),
            namespace: cluster.namespace().unwrap_or_else(|| "default".to_string()),
        }
    }

    /// Headless Service giving each pod a stable DNS name.
    pub fn peers_service(&self) -> String {
        format!("{}-peers", self.cluster)
    }

    /// Client-facing Service (same name as the cluster).
    pub fn client_service(&self) -> String {
        self.cluster.clone()
    }

    /// Service over the current leader's pod only (`NAME-leader`).
    pub fn leader_service(&self) -> String {
        format!("{}-leader", self.cluster)
    }

    /// Secret of the cluster CA under `spec.tls` (`tls.crt`, `tls.key`).
    pub fn ca_secret(&self) -> String {
        format!("{}-ca", self.cluster)
    }

    /// Secret of the member certificates under `spec.tls` (`ca.crt`,
    /// `POD.crt`, `POD.key`), mounted by every server pod.
    pub fn tls_secret(&self) -> String {
        format!("{}-tls", self.cluster)
    }

    /// Secret of the client certificate `name` (`spec.tls.clientCertificates`).
    pub fn client_secret(&self, name: &str) -> String {
        format!("{}-client-{name}", self.cluster)
    }

    /// ConfigMap with initial members and the bootstrapped flag.
    pub fn configmap(&self) -> String {
        format!("{}-config", self.cluster)
    }

    /// StatefulSet (same name as the cluster, so pods are `NAME-i`).
    pub fn statefulset(&self) -> String {
        self.cluster.clone()
    }

    /// PodDisruptionBudget.
    pub fn pdb(&self) -> String {
        self.cluster.clone()
    }

    /// NetworkPolicy over the server pods (`spec.networkPolicy`).
    pub fn network_policy(&self) -> String {
        self.cluster.clone()
    }

    /// Pod of ordinal `ordinal`.
    pub fn pod(&self, ordinal: u32) -> String {
        format!("{}-{ordinal}", self.cluster)
    }

    /// PVC the StatefulSet creates for `ordinal` from the `data` template.
    pub fn pvc(&self, ordinal: u32) -> String {
        format!("data-{}-{ordinal}", self.cluster)
    }

    /// Stable per-pod DNS name through the headless Service.
    pub fn pod_host(&self, ordinal: u32) -> String {
        format!(
            "{}.{}.{}.svc",
            self.pod(ordinal),
            self.peers_service(),
            self.namespace
        )
    }

    /// Address peers and the operator dial for Raft and Admin.
    pub fn peer_addr(&self, ordinal: u32) -> String {
        format!("{}:{PEER_PORT}", self.pod_host(ordinal))
    }

    /// Address clients dial for the TCP protocol.
    pub fn client_addr(&self, ordinal: u32) -> String {
        format!("{}:{CLIENT_PORT}", self.pod_host(ordinal))
    }

    /// Address clients dial for gRPC.
    pub fn grpc_addr(&self, ordinal: u32) -> String {
        format!("{}:{GRPC_PORT}", self.pod_host(ordinal))
    }

    /// Ordinal of a pod name of this cluster (`NAME-3` → 3).
    pub fn ordinal_of(&self, pod_name: &str) -> Option<u32> {
        pod_name
            .strip_prefix(&self.cluster)?
            .strip_prefix('-')?
            .parse()
            .ok()
    }

    /// Labels every object of the cluster carries; also the pod selector.
    pub fn selector_labels(&self) -> BTreeMap<String, String> {
        BTreeMap::from([
            ("app.kubernetes.io/name".to_string(), "titan".to_string()),
            (
                "app.kubernetes.io/instance".to_string(),
                self.cluster.clone(),
            ),
        ])
    }

    /// Selector labels plus `managed-by`.
    pub fn labels(&self) -> BTreeMap<String, String> {
        let mut labels = self.selector_labels();
        labels.insert(
            "app.kubernetes.io/managed-by".to_string(),
            FIELD_MANAGER.to_string(),
        );
        labels
    }

    /// `key=value,...` form of the selector (status.selector for the scale subresource).
    pub fn selector_string(&self) -> String {
        self.selector_labels()
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// Everything the builders need besides the CR itself. Values that must not
/// change after creation (initial members, cluster id) come from the observed
/// ConfigMap when it exists, so rebuilding is idempotent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildInput {
    /// Members the cluster was bootstrapped with (ordinals `0..initial_replicas`).
    pub initial_replicas: u32,
    /// Cluster identity (the TitanCluster's UID at creation).
    pub cluster_id: String,
    /// The initial members have formed a cluster; new pods must `--join`.
    pub bootstrapped: bool,
    /// StatefulSet replicas to apply (the planner moves this one step at a time).
    pub statefulset_replicas: u32,
    /// Voters currently in the Raft configuration, for the PDB.
    pub voters: u32,
    /// The observed StatefulSet's server container has no requests or
    /// limits at all (a cluster created before the operator had default
    /// resources): with `spec.resources` unset it keeps none, so an upgrade
    /// never restarts a running cluster under a memory limit it may exceed.
    pub keep_no_resources: bool,
}

/// Object metadata for a child object: name, namespace, labels, controller owner reference.
pub(crate) fn child_meta(cluster: &TitanCluster, names: &Names, name: String) -> ObjectMeta {
    ObjectMeta {
        name: Some(name),
        namespace: Some(names.namespace.clone()),
        labels: Some(names.labels()),
        owner_references: owner_reference(cluster).map(|o| vec![o]),
        ..ObjectMeta::default()
    }
}

/// Controller owner reference to the TitanCluster (None when it has no UID yet).
pub(crate) fn owner_reference(cluster: &TitanCluster) -> Option<OwnerReference> {
    cluster.controller_owner_ref(&())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names() -> Names {
        Names {
            cluster: "demo".to_string(),
            namespace: "prod".to_string(),
        }
    }

    #[test]
    fn per_pod_names_follow_statefulset_conventions() {
        let n = names();
        let cases = [
            (n.pod(0), "demo-0"),
            (n.pvc(2), "data-demo-2"),
            (n.peer_addr(1), "demo-1.demo-peers.prod.svc:5001"),
            (n.client_addr(1), "demo-1.demo-peers.prod.svc:6001"),
            (n.grpc_addr(4), "demo-4.demo-peers.prod.svc:7001"),
            (n.peers_service(), "demo-peers"),
            (n.configmap(), "demo-config"),
            (n.leader_service(), "demo-leader"),
        ];
        for (got, want) in cases {
            assert_eq!(got, want);
        }
    }

    #[test]
    fn ordinal_parsing_rejects_foreign_names() {
        let n = names();
        let cases = [
            ("demo-0", Some(0)),
            ("demo-8", Some(8)),
            ("demo-peers", None),
            ("demox-1", None),
            ("other-1", None),
            ("demo-", None),
        ];
        for (pod, want) in cases {
            assert_eq!(n.ordinal_of(pod), want, "{pod}");
        }
    }

    #[test]
    fn selector_string_is_sorted_and_comma_joined() {
        assert_eq!(
            names().selector_string(),
            "app.kubernetes.io/instance=demo,app.kubernetes.io/name=titan"
        );
    }
}
