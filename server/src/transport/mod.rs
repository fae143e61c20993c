//! Everything tonic: the peer Raft service (inbound and outbound streams,
//! chunked snapshots), the Admin service, the client KV service and the
//! standard gRPC health service.
//!
//! Architecture invariant: no other module depends on tonic or the
//! generated protobuf types; conversion happens at this boundary.

pub mod admin_service;
pub mod convert;
#[doc(hidden)]
pub mod kv_fuzz;
pub mod kv_service;
pub mod peer;
pub mod raft_service;
pub mod snapshot;

use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tonic::Status;
use tonic::metadata::MetadataValue;
use tonic::transport::Server;
use tonic::transport::server::TcpIncoming;

use titan_proto::v1::admin_server::AdminServer;
use titan_proto::v1::kv_server::KvServer;
use titan_proto::v1::raft_server::RaftServer;

use crate::metrics::Metrics;
use crate::node::{NodeError, NodeHandle, PeerInbox};

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
    shutdown: watch::Receiver<bool>,
) -> Result<(), tonic::transport::Error> {
    let (health, health_svc) = tonic_health::server::health_reporter();
    health
        .set_serving::<RaftServer<raft_service::RaftService>>()
        .await;
    let raft = RaftServer::new(raft_service::RaftService::new(inbox, snapshots))
        .max_decoding_message_size(MAX_PEER_MESSAGE_BYTES);
    Server::builder()
        .add_service(health_svc)
        .add_service(raft)
        .add_service(AdminServer::new(admin_service::AdminService::new(node)))
        .serve_with_incoming_shutdown(incoming(listener), wait_shutdown(shutdown))
        .await
}

/// Serves the KV service + health on the client gRPC port until shutdown.
pub async fn serve_grpc(
    listener: TcpListener,
    node: NodeHandle,
    metrics: Arc<Metrics>,
    shutdown: watch::Receiver<bool>,
) -> Result<(), tonic::transport::Error> {
    let (health, health_svc) = tonic_health::server::health_reporter();
    health
        .set_serving::<KvServer<kv_service::KvService>>()
        .await;
    Server::builder()
        .add_service(health_svc)
        .add_service(KvServer::new(kv_service::KvService::new(node, metrics)))
        .serve_with_incoming_shutdown(incoming(listener), wait_shutdown(shutdown))
        .await
}
