//! The headless peers Service, the client Service and the leader Service
//! (with the pod label patch that moves the leader Service between pods).

use k8s_openapi::api::core::v1::{Service, ServicePort, ServiceSpec};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde_json::{Value, json};

use super::{
    CLIENT_PORT, GRPC_PORT, HTTP_PORT, LEADER_ROLE, Names, PEER_PORT, ROLE_LABEL, child_meta,
};
use crate::crd::TitanCluster;

fn port(name: &str, port: i32) -> ServicePort {
    ServicePort {
        name: Some(name.to_string()),
        port,
        target_port: Some(IntOrString::String(name.to_string())),
        protocol: Some("TCP".to_string()),
        ..ServicePort::default()
    }
}

/// Headless Service `NAME-peers`: stable per-pod DNS for Raft. It publishes
/// not-ready addresses because a joining pod is not Ready until it is a
/// caught-up member, yet peers must reach it to get it there.
pub fn peers_service(cluster: &TitanCluster, names: &Names) -> Service {
    Service {
        metadata: child_meta(cluster, names, names.peers_service()),
        spec: Some(ServiceSpec {
            cluster_ip: Some("None".to_string()),
            publish_not_ready_addresses: Some(true),
            selector: Some(names.selector_labels()),
            ports: Some(vec![
                port("peer", PEER_PORT),
                port("client", CLIENT_PORT),
                port("grpc", GRPC_PORT),
                port("http", HTTP_PORT),
            ]),
            ..ServiceSpec::default()
        }),
        status: None,
    }
}

/// Client Service `NAME` over Ready pods: `client` 6001 and `grpc` 7001.
pub fn client_service(cluster: &TitanCluster, names: &Names) -> Service {
    Service {
        metadata: child_meta(cluster, names, names.client_service()),
        spec: Some(ServiceSpec {
            selector: Some(names.selector_labels()),
            ports: Some(vec![port("client", CLIENT_PORT), port("grpc", GRPC_PORT)]),
            ..ServiceSpec::default()
        }),
        status: None,
    }
}

/// Leader Service `NAME-leader` over the one pod labelled
/// `titan.dev/role=leader` (the operator moves the label to the Raft leader
/// it observes), so writes sent to it never get `ERR NOT_LEADER`. Between a
/// leader change and the relabel it has no endpoint at all (connections are
/// refused), never a follower.
pub fn leader_service(cluster: &TitanCluster, names: &Names) -> Service {
    let mut selector = names.selector_labels();
    selector.insert(ROLE_LABEL.to_string(), LEADER_ROLE.to_string());
    Service {
        metadata: child_meta(cluster, names, names.leader_service()),
        spec: Some(ServiceSpec {
            selector: Some(selector),
            ports: Some(vec![port("client", CLIENT_PORT), port("grpc", GRPC_PORT)]),
            ..ServiceSpec::default()
        }),
        status: None,
    }
}

/// JSON merge patch of a pod's labels: sets `titan.dev/role=leader` when
/// `leader`, else removes the label (a `null` in a merge patch deletes it).
pub fn leader_role_patch(leader: bool) -> Value {
    let value = if leader {
        Value::String(LEADER_ROLE.to_string())
    } else {
        Value::Null
    };
    json!({"metadata": {"labels": {ROLE_LABEL: value}}})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leader_role_patch_sets_or_removes_only_the_role_label() {
        assert_eq!(
            leader_role_patch(true),
            json!({"metadata": {"labels": {"titan.dev/role": "leader"}}})
        );
        assert_eq!(
            leader_role_patch(false),
            json!({"metadata": {"labels": {"titan.dev/role": null}}})
        );
    }
}
