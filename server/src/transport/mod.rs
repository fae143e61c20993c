//! Everything tonic: the peer Raft service (inbound and outbound streams,
//! chunked snapshots), the Admin service, the client KV service and the
//! standard gRPC health service, each optionally over TLS ([`tls`]) whose
//! certificates are re-read when their files change ([`tls_reload`],
//! served through [`tls_accept`]).
//!
//! Architecture invariant: no other module depends on tonic or the
//! generated protobuf types; conversion happens at this boundary.

pub mod admin_auth;
pub mod admin_service;
pub mod convert;
pub mod etcd_cluster;
pub mod etcd_convert;
pub mod etcd_forward;
pub mod etcd_kv;
pub mod etcd_lease;
pub mod etcd_snapshot;
pub mod etcd_watch;
#[doc(hidden)]
pub mod kv_fuzz;
pub mod kv_service;
pub mod peer;
pub mod raft_service;
pub mod snapshot;
pub mod tls;
pub mod tls_accept;
pub mod tls_reload;

use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tonic::Status;
use tonic::metadata::MetadataValue;
use tonic::transport::Server;
use tonic::transport::server::Router;
use tonic::transport::server::TcpIncoming;

use titan_proto::etcdserverpb::cluster_server::ClusterServer as EtcdClusterServer;
use titan_proto::etcdserverpb::kv_server::KvServer as EtcdKvServer;
use titan_proto::etcdserverpb::lease_server::LeaseServer as EtcdLeaseServer;
use titan_proto::etcdserverpb::maintenance_server::MaintenanceServer as EtcdMaintenanceServer;
use titan_proto::etcdserverpb::watch_server::WatchServer as EtcdWatchServer;
use titan_proto::v1::admin_server::AdminServer;
use titan_proto::v1::kv_server::KvServer;
use titan_proto::v1::raft_server::RaftServer;

use crate::metrics::Metrics;
use crate::node::{NodeError, NodeHandle, PeerInbox};

/// HTTP/2 streams one client connection may have open on the client gRPC
/// port (the service also bounds requests in total).
const MAX_GRPC_STREAMS_PER_CONNECTION: u32 = 256;

/// Largest inbound peer frame (a batch of appends).
const MAX_PEER_MESSAGE_BYTES: usize = 64 << 20;

/// Maps a node error to a gRPC status. `NOT_LEADER` carries the leader's
/// addresses in the message and in `titan-leader-grpc` / `titan-leader-client`
/// metadata so clients can redirect.
pub fn status_from_error(e: NodeError) -> Status {
    match &e {
        NodeError::NotLeader {
            client_addr,
            grpc_addr,
        } => {
            let mut s = Status::failed_precondition(e.to_string());
            if let Ok(v) = MetadataValue::try_from(grpc_addr.as_str()) {
                s.metadata_mut().insert("titan-leader-grpc", v);
            }
            if let Ok(v) = MetadataValue::try_from(client_addr.as_str()) {
                s.metadata_mut().insert("titan-leader-client", v);
            }
            s
        }
        NodeError::Unavailable(_) => Status::unavailable(e.to_string()),
        NodeError::Invalid(_) => Status::invalid_argument(e.to_string()),
        NodeError::TooLarge { .. } => Status::resource_exhausted(e.to_string()),
        NodeError::Mvcc(m) => etcd_kv::status_from_mvcc(*m),
    }
}

/// Flips every service of `reporter` to NOT_SERVING once a fatal storage
/// error stopped the node (the process exits shortly after).
async fn not_serving_on_fatal(
    reporter: tonic_health::server::HealthReporter,
    node: NodeHandle,
    services: Vec<&'static str>,
) {
    node.fatal().await;
    for s in services {
        reporter
            .set_service_status(s, tonic_health::ServingStatus::NotServing)
            .await;
    }
}

async fn wait_shutdown(mut rx: watch::Receiver<bool>) {
    let _ = rx.wait_for(|stop| *stop).await;
}

/// Accepted sockets with `TCP_NODELAY` set. (`Server::tcp_nodelay` only applies
/// to listeners tonic binds itself, not to `serve_with_incoming`; without this,
/// Nagle's algorithm delays small replies by tens of milliseconds.)
fn incoming(listener: TcpListener) -> TcpIncoming {
    TcpIncoming::from(listener).with_nodelay(Some(true))
}

/// Serves Raft + Admin + health on the peer port until shutdown.
pub async fn serve_peer(
    listener: TcpListener,
    node: NodeHandle,
    inbox: PeerInbox,
    snapshots: crate::storage::SnapshotStore,
    tls: Option<tls::LiveServerConfig>,
    admins: admin_auth::AdminPolicy,
    shutdown: watch::Receiver<bool>,
) -> Result<(), tonic::transport::Error> {
    let (health, health_svc) = tonic_health::server::health_reporter();
    health
        .set_serving::<RaftServer<raft_service::RaftService>>()
        .await;
    let raft_name = <RaftServer<raft_service::RaftService> as tonic::server::NamedService>::NAME;
    tokio::spawn(not_serving_on_fatal(
        health,
        node.clone(),
        vec!["", raft_name],
    ));
    let raft = RaftServer::new(raft_service::RaftService::new(inbox, snapshots))
        .max_decoding_message_size(MAX_PEER_MESSAGE_BYTES);
    let router = Server::builder()
        .add_service(health_svc)
        .add_service(raft)
        .add_service(AdminServer::new(admin_service::AdminService::new(
            node, admins,
        )));
    serve(router, listener, tls, shutdown).await
}

/// Serves `router` on `listener` until shutdown: over TLS with the
/// settings in use at each handshake when `tls` is given, else plaintext.
async fn serve(
    router: Router,
    listener: TcpListener,
    tls: Option<tls::LiveServerConfig>,
    shutdown: watch::Receiver<bool>,
) -> Result<(), tonic::transport::Error> {
    match tls {
        Some(tls) => {
            router
                .serve_with_incoming_shutdown(
                    tls_accept::incoming(listener, tls),
                    wait_shutdown(shutdown),
                )
                .await
        }
        None => {
            router
                .serve_with_incoming_shutdown(incoming(listener), wait_shutdown(shutdown))
                .await
        }
    }
}

/// How the client gRPC port is served: TLS settings (`None`: plaintext)
/// and how a follower dials the leader to forward writes.
#[derive(Debug, Clone, Default)]
pub struct ClientPortTls {
    /// The listener's TLS settings, replaced on reload.
    pub server: Option<tls::LiveServerConfig>,
    /// Dials to the leader's client port.
    pub forward: tls::Dialer,
}

/// Serves `titan.v1.KV`, etcd's v3 services and health on the client gRPC
/// port until shutdown.
pub async fn serve_grpc(
    listener: TcpListener,
    node: NodeHandle,
    metrics: Arc<Metrics>,
    tls: ClientPortTls,
    shutdown: watch::Receiver<bool>,
) -> Result<(), tonic::transport::Error> {
    let (health, health_svc) = tonic_health::server::health_reporter();
    health
        .set_serving::<KvServer<kv_service::KvService>>()
        .await;
    let kv_name = <KvServer<kv_service::KvService> as tonic::server::NamedService>::NAME;
    tokio::spawn(not_serving_on_fatal(
        health,
        node.clone(),
        vec!["", kv_name],
    ));
    let router = Server::builder()
        .max_concurrent_streams(MAX_GRPC_STREAMS_PER_CONNECTION)
        .add_service(health_svc)
        .add_service(
            KvServer::new(kv_service::KvService::new(node.clone(), metrics))
                .max_decoding_message_size(crate::node::limits::MAX_GRPC_REQUEST_BYTES),
        )
        .add_service(
            EtcdKvServer::new(etcd_kv::EtcdKvService::new(node.clone()))
                .max_decoding_message_size(etcd_kv::MAX_GRPC_MESSAGE_BYTES),
        )
        .add_service(EtcdClusterServer::new(
            etcd_cluster::EtcdClusterService::new(node.clone(), tls.forward.clone()),
        ))
        .add_service(EtcdMaintenanceServer::new(
            etcd_cluster::EtcdClusterService::new(node.clone(), tls.forward.clone()),
        ))
        .add_service(EtcdLeaseServer::new(etcd_lease::EtcdLeaseService::new(
            node.clone(),
            tls.forward,
        )))
        .add_service(EtcdWatchServer::new(etcd_watch::EtcdWatchService::new(
            node,
        )));
    serve(router, listener, tls.server, shutdown).await
}
