//! The opt-in ingress NetworkPolicy over a cluster's server pods
//! (`spec.networkPolicy`), and the operator's own identity that it must let
//! in.
//!
//! Three rules, each one reason for traffic to reach a member:
//! 1. the other members, on every port (Raft and snapshots on `peer`, lease
//!    and cluster calls a follower relays to the leader's `grpc` port);
//! 2. the operator's pods, on `peer` (the Admin API it dials by pod IP);
//! 3. the clients of `clientFrom` on `client`, `grpc` and `http` (every pod
//!    of the cluster's namespace when the list is empty), plus
//!    `metricsFrom` on `http` only.
//!
//! Kubelet probes come from the node itself, which NetworkPolicy
//! implementations let through. Egress stays unrestricted.

use std::collections::BTreeMap;

use k8s_openapi::api::networking::v1::{
    NetworkPolicy, NetworkPolicyIngressRule, NetworkPolicyPeer, NetworkPolicyPort,
    NetworkPolicySpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::{CLIENT_PORT, GRPC_PORT, HTTP_PORT, Names, PEER_PORT, child_meta};
use crate::crd::{PolicyPeer, TitanCluster};

/// Namespace label every namespace carries (set by the API server since
/// Kubernetes 1.21; on older versions the operator's namespace must be
/// labelled by hand for a policy in another namespace to admit it).
pub const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";

/// Where the operator's own pods run and how to select them: what the
/// policy admits to the Admin API. Comes from `POD_NAMESPACE` and
/// `--pod-selector` (`TITAN_OPERATOR_POD_SELECTOR`), both set by the chart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OperatorIdentity {
    /// Namespace of the operator's pods.
    pub namespace: String,
    /// Labels that select exactly the operator's pods (never empty).
    pub pod_labels: BTreeMap<String, String>,
}

/// A `--pod-selector` value that is not `key=value[,key=value...]`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PodSelectorError {
    /// No label at all: it would select every pod of the namespace.
    #[error("the operator pod selector is empty; give key=value[,key=value...]")]
    Empty,
    /// An entry without `=`, or with an empty or blank key.
    #[error("operator pod selector entry {entry:?} is not key=value")]
    NotKeyValue {
        /// The offending entry.
        entry: String,
    },
}

/// Parses `key=value[,key=value...]` (spaces around entries ignored).
pub fn parse_pod_selector(text: &str) -> Result<BTreeMap<String, String>, PodSelectorError> {
    let mut labels = BTreeMap::new();
    for entry in text.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        let not_key_value = || PodSelectorError::NotKeyValue {
            entry: entry.to_string(),
        };
        let (key, value) = entry.split_once('=').ok_or_else(not_key_value)?;
        let (key, value) = (key.trim(), value.trim());
        if key.is_empty() || key.contains(char::is_whitespace) || value.contains('=') {
            return Err(not_key_value());
        }
        labels.insert(key.to_string(), value.to_string());
    }
    if labels.is_empty() {
        return Err(PodSelectorError::Empty);
    }
    Ok(labels)
}

/// The NetworkPolicy of `cluster`, admitting `operator`'s pods to the
/// Admin API.
pub fn network_policy(
    cluster: &TitanCluster,
    names: &Names,
    operator: &OperatorIdentity,
) -> NetworkPolicy {
    let members = LabelSelector {
        match_labels: Some(names.selector_labels()),
        ..LabelSelector::default()
    };
    let spec = &cluster.spec.network_policy;
    let mut ingress = vec![
        rule(vec![pods(members.clone())], None),
        rule(
            vec![operator_peer(operator, &names.namespace)],
            Some(&[PEER_PORT]),
        ),
        rule(
            client_peers(&spec.client_from),
            Some(&[CLIENT_PORT, GRPC_PORT, HTTP_PORT]),
        ),
    ];
    if !spec.metrics_from.is_empty() {
        let from = spec.metrics_from.iter().map(peer).collect();
        ingress.push(rule(from, Some(&[HTTP_PORT])));
    }
    NetworkPolicy {
        metadata: child_meta(cluster, names, names.network_policy()),
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(members),
            policy_types: Some(vec!["Ingress".to_string()]),
            ingress: Some(ingress),
            egress: None,
        }),
    }
}

/// An ingress rule from `from` to `ports` (every port when `None`).
fn rule(from: Vec<NetworkPolicyPeer>, ports: Option<&[i32]>) -> NetworkPolicyIngressRule {
    NetworkPolicyIngressRule {
        from: Some(from),
        ports: ports.map(|ports| {
            ports
                .iter()
                .map(|port| NetworkPolicyPort {
                    port: Some(IntOrString::Int(*port)),
                    protocol: Some("TCP".to_string()),
                    end_port: None,
                })
                .collect()
        }),
    }
}

fn pods(selector: LabelSelector) -> NetworkPolicyPeer {
    NetworkPolicyPeer {
        pod_selector: Some(selector),
        ..NetworkPolicyPeer::default()
    }
}

/// The operator's pods: a pod selector alone when it runs in the cluster's
/// namespace (works on every Kubernetes version), else also the
/// namespace by its name label.
fn operator_peer(operator: &OperatorIdentity, cluster_namespace: &str) -> NetworkPolicyPeer {
    let mut peer = pods(LabelSelector {
        match_labels: Some(operator.pod_labels.clone()),
        ..LabelSelector::default()
    });
    if operator.namespace != cluster_namespace {
        peer.namespace_selector = Some(LabelSelector {
            match_labels: Some(BTreeMap::from([(
                NAMESPACE_NAME_LABEL.to_string(),
                operator.namespace.clone(),
            )])),
            ..LabelSelector::default()
        });
    }
    peer
}

/// `clientFrom`, or every pod of the cluster's namespace when it is empty.
fn client_peers(client_from: &[PolicyPeer]) -> Vec<NetworkPolicyPeer> {
    if client_from.is_empty() {
        return vec![pods(LabelSelector::default())];
    }
    client_from.iter().map(peer).collect()
}

fn peer(p: &PolicyPeer) -> NetworkPolicyPeer {
    NetworkPolicyPeer {
        namespace_selector: p.namespace_selector.clone(),
        pod_selector: p.pod_selector.clone(),
        ip_block: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures;
    use serde_json::{Value, json};

    fn operator(namespace: &str) -> OperatorIdentity {
        OperatorIdentity {
            namespace: namespace.to_string(),
            pod_labels: BTreeMap::from([(
                "app.kubernetes.io/name".to_string(),
                "titan-operator".to_string(),
            )]),
        }
    }

    fn rendered(policy: Value, operator_ns: &str) -> Value {
        let cluster = fixtures::cluster(json!({"networkPolicy": policy}));
        let names = Names::of(&cluster);
        serde_json::to_value(network_policy(&cluster, &names, &operator(operator_ns)))
            .unwrap_or_else(|e| panic!("serializing: {e}"))
    }

    fn tcp(ports: &[i32]) -> Value {
        ports
            .iter()
            .map(|p| json!({"port": p, "protocol": "TCP"}))
            .collect()
    }

    const MEMBERS: &str = r#"{"matchLabels": {"app.kubernetes.io/instance": "demo", "app.kubernetes.io/name": "titan"}}"#;

    /// Each case: the spec's policy, the operator's namespace, and the
    /// exact ingress rules wanted.
    #[test]
    fn ingress_rules_admit_members_operator_and_listed_clients_only() {
        let members: Value = serde_json::from_str(MEMBERS).unwrap_or_default();
        let op_pods = json!({"matchLabels": {"app.kubernetes.io/name": "titan-operator"}});
        let op_elsewhere = json!({"podSelector": op_pods,
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "titan-system"}}});
        let apps = json!({"namespaceSelector": {"matchLabels": {"team": "apps"}}});
        let prom = json!({"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}},
            "podSelector": {"matchLabels": {"app": "prometheus"}}});
        let cases = [
            (
                "defaults: clients are the cluster's namespace",
                json!({"enabled": true}),
                "titan-system",
                vec![
                    json!({"from": [{"podSelector": members}]}),
                    json!({"from": [op_elsewhere], "ports": tcp(&[5001])}),
                    json!({"from": [{"podSelector": {}}], "ports": tcp(&[6001, 7001, 8080])}),
                ],
            ),
            (
                "operator in the cluster's namespace: pod selector only",
                json!({"enabled": true}),
                "prod",
                vec![
                    json!({"from": [{"podSelector": members}]}),
                    json!({"from": [{"podSelector": op_pods}], "ports": tcp(&[5001])}),
                    json!({"from": [{"podSelector": {}}], "ports": tcp(&[6001, 7001, 8080])}),
                ],
            ),
            (
                "listed clients replace the namespace default; metrics only on http",
                json!({"enabled": true, "clientFrom": [apps], "metricsFrom": [prom]}),
                "titan-system",
                vec![
                    json!({"from": [{"podSelector": members}]}),
                    json!({"from": [op_elsewhere], "ports": tcp(&[5001])}),
                    json!({"from": [apps], "ports": tcp(&[6001, 7001, 8080])}),
                    json!({"from": [prom], "ports": tcp(&[8080])}),
                ],
            ),
        ];
        for (what, policy, operator_ns, want) in cases {
            let np = rendered(policy, operator_ns);
            assert_eq!(np["spec"]["ingress"], Value::Array(want), "{what}");
            assert_eq!(np["spec"]["podSelector"], members, "{what}");
            assert_eq!(np["spec"]["policyTypes"], json!(["Ingress"]), "{what}");
            assert!(np["spec"].get("egress").is_none(), "{what}");
            assert_eq!(np["metadata"]["name"], "demo", "{what}");
            assert_eq!(np["metadata"]["namespace"], "prod", "{what}");
            assert_eq!(np["metadata"]["ownerReferences"][0]["kind"], "TitanCluster");
            assert_eq!(np["metadata"]["ownerReferences"][0]["controller"], true);
            assert_eq!(
                np["metadata"]["labels"]["app.kubernetes.io/managed-by"],
                "titan-operator"
            );
        }
    }

    #[test]
    fn pod_selector_parsing_accepts_key_values_and_names_bad_entries() {
        let two = BTreeMap::from([
            ("a".to_string(), "1".to_string()),
            ("b/c".to_string(), String::new()),
        ]);
        let cases = [
            ("a=1,b/c=", Ok(two.clone())),
            (" a = 1 , b/c= ,", Ok(two)),
            ("", Err(PodSelectorError::Empty)),
            (" , ", Err(PodSelectorError::Empty)),
            (
                "a=1,b",
                Err(PodSelectorError::NotKeyValue {
                    entry: "b".to_string(),
                }),
            ),
            (
                "=1",
                Err(PodSelectorError::NotKeyValue {
                    entry: "=1".to_string(),
                }),
            ),
            (
                "a b=1",
                Err(PodSelectorError::NotKeyValue {
                    entry: "a b=1".to_string(),
                }),
            ),
            (
                "a=1=2",
                Err(PodSelectorError::NotKeyValue {
                    entry: "a=1=2".to_string(),
                }),
            ),
        ];
        for (text, want) in cases {
            assert_eq!(parse_pod_selector(text), want, "{text:?}");
        }
    }
}
