//! The headless peers Service and the client Service.

use k8s_openapi::api::core::v1::{Service, ServicePort, ServiceSpec};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::{CLIENT_PORT, GRPC_PORT, HTTP_PORT, Names, PEER_PORT, child_meta};
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
