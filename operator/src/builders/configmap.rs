//! The cluster ConfigMap: initial members, cluster id, bootstrapped flag.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ConfigMap;

use super::{BuildInput, Names, child_meta};
use crate::crd::TitanCluster;

/// Key: comma-separated `name:host:raftport:clientport` of every initial member.
pub const INITIAL_PEERS_KEY: &str = "initial-peers";
/// Key: number of initial members.
pub const INITIAL_REPLICAS_KEY: &str = "initial-replicas";
/// Key: `"true"` once the initial members formed a cluster; pods then `--join`.
pub const BOOTSTRAPPED_KEY: &str = "bootstrapped";
/// Key: `"true"` when the cluster was created with `spec.tls.enabled`
/// (missing: created without, or before the field existed).
pub const TLS_KEY: &str = "tls";
/// Key: cluster identity.
pub const CLUSTER_ID_KEY: &str = "cluster-id";

/// `name:host:raftport:clientport` list of the initial members, in ordinal order.
pub fn initial_peers(names: &Names, initial_replicas: u32) -> String {
    (0..initial_replicas)
        .map(|i| {
            format!(
                "{}:{}:{}:{}",
                names.pod(i),
                names.pod_host(i),
                super::PEER_PORT,
                super::CLIENT_PORT
            )
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// The TLS mode a cluster was created with, from its ConfigMap; `None`
/// before the ConfigMap exists.
pub fn recorded_tls(configmap: Option<&ConfigMap>) -> Option<bool> {
    let data = configmap?.data.as_ref();
    Some(
        data.and_then(|d| d.get(TLS_KEY))
            .is_some_and(|v| v == "true"),
    )
}

/// The ConfigMap pods read (through env `configMapKeyRef`) at container start.
pub fn configmap(cluster: &TitanCluster, names: &Names, input: &BuildInput) -> ConfigMap {
    let raft = &cluster.spec.raft;
    let data = BTreeMap::from([
        (CLUSTER_ID_KEY.to_string(), input.cluster_id.clone()),
        (
            INITIAL_REPLICAS_KEY.to_string(),
            input.initial_replicas.to_string(),
        ),
        (
            INITIAL_PEERS_KEY.to_string(),
            initial_peers(names, input.initial_replicas),
        ),
        (BOOTSTRAPPED_KEY.to_string(), input.bootstrapped.to_string()),
        (TLS_KEY.to_string(), cluster.spec.tls_enabled().to_string()),
        (
            "election-timeout-ms".to_string(),
            raft.election_timeout_ms.to_string(),
        ),
        ("heartbeat-ms".to_string(), raft.heartbeat_ms.to_string()),
        (
            "snapshot-threshold".to_string(),
            raft.snapshot_threshold_entries.to_string(),
        ),
    ]);
    ConfigMap {
        metadata: child_meta(cluster, names, names.configmap()),
        data: Some(data),
        ..ConfigMap::default()
    }
}
