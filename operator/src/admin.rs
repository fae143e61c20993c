//! Access to each server's Admin gRPC API, behind [`AdminApi`] so that tests
//! can substitute a scripted fake.
//!
//! Every call has a connect timeout and a request timeout: an unreachable pod
//! yields an error (which the planner treats as "unknown", never as "removed")
//! instead of blocking the reconcile.

use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use titan_proto::v1 as pb;
use titan_proto::v1::admin_client::AdminClient;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use crate::planner::{MemberView, NodeRole, NodeStatus};

/// Why an admin call failed.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// The endpoint string is not a valid URI.
    #[error("invalid admin endpoint {endpoint}: {source}")]
    InvalidEndpoint {
        /// Offending endpoint.
        endpoint: String,
        /// Parser error.
        #[source]
        source: tonic::transport::Error,
    },
    /// TCP/HTTP2 connection failed or timed out.
    #[error("connecting to {endpoint}: {source}")]
    Connect {
        /// Endpoint dialled.
        endpoint: String,
        /// Transport error.
        #[source]
        source: tonic::transport::Error,
    },
    /// The server answered with an error status (or the request timed out).
    #[error("admin rpc to {endpoint} failed: {status}")]
    Rpc {
        /// Endpoint called.
        endpoint: String,
        /// gRPC status.
        status: Box<tonic::Status>,
    },
}

/// The PEM files of mutual TLS: the CA that signs the servers, and the
/// client certificate and key presented to them.
#[derive(Clone, PartialEq, Eq)]
pub struct TlsIdentity {
    /// CA certificate the server's certificate must chain to.
    pub ca_pem: String,
    /// Client certificate.
    pub cert_pem: String,
    /// Its private key.
    pub key_pem: String,
}

impl std::fmt::Debug for TlsIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key.
        f.debug_struct("TlsIdentity").finish_non_exhaustive()
    }
}

/// Mutual TLS to one server: the identity, and the name its certificate
/// must carry (the pod's DNS name: the operator dials the pod's IP).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminTls {
    /// Shared by every target of one reconcile.
    pub identity: Arc<TlsIdentity>,
    /// Name verified against the server certificate's SANs.
    pub server_name: String,
}

/// Where and how to reach one server's Admin API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminTarget {
    /// `http://HOST:5001`, or `https://HOST:5001` with [`AdminTarget::tls`].
    pub uri: String,
    /// Mutual TLS settings; `None` is plaintext.
    pub tls: Option<AdminTls>,
}

impl AdminTarget {
    /// Plaintext `http://HOST:PORT`.
    pub fn plain(host_port: &str) -> AdminTarget {
        AdminTarget {
            uri: format!("http://{host_port}"),
            tls: None,
        }
    }

    /// `https://HOST:PORT`, verified as `tls.server_name`.
    pub fn tls(host_port: &str, tls: AdminTls) -> AdminTarget {
        AdminTarget {
            uri: format!("https://{host_port}"),
            tls: Some(tls),
        }
    }
}

impl From<String> for AdminTarget {
    /// A plaintext target from a full URI (`http://HOST:PORT`).
    fn from(uri: String) -> AdminTarget {
        AdminTarget { uri, tls: None }
    }
}

impl std::fmt::Display for AdminTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.uri)
    }
}

/// A new member to add as a learner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewMember {
    /// Identity the joining server reported.
    pub id: u64,
    /// Server name (pod name).
    pub name: String,
    /// Raft/admin address.
    pub peer_addr: String,
    /// TCP client address.
    pub client_addr: String,
    /// gRPC client address.
    pub grpc_addr: String,
}

/// Result of a snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SnapshotTaken {
    /// Log index the snapshot covers.
    pub index: u64,
}

/// Result type of admin calls.
pub type AdminResult<T> = Result<T, AdminError>;

/// The admin operations the operator uses, each on one server's [`AdminTarget`].
pub trait AdminApi: Send + Sync {
    /// `Admin.Status` of one server.
    fn status(&self, endpoint: AdminTarget) -> BoxFuture<'static, AdminResult<NodeStatus>>;
    /// `Admin.AddMember` (learner) on the leader.
    fn add_learner(
        &self,
        endpoint: AdminTarget,
        member: NewMember,
    ) -> BoxFuture<'static, AdminResult<()>>;
    /// `Admin.PromoteMember` on the leader.
    fn promote(&self, endpoint: AdminTarget, id: u64) -> BoxFuture<'static, AdminResult<()>>;
    /// `Admin.RemoveMember` on the leader; returns once the change committed.
    fn remove(&self, endpoint: AdminTarget, id: u64) -> BoxFuture<'static, AdminResult<()>>;
    /// `Admin.TransferLeadership` on the leader.
    fn transfer_leadership(
        &self,
        endpoint: AdminTarget,
        target_id: u64,
    ) -> BoxFuture<'static, AdminResult<()>>;
    /// `Admin.TakeSnapshot` on one server.
    fn take_snapshot(
        &self,
        endpoint: AdminTarget,
    ) -> BoxFuture<'static, AdminResult<SnapshotTaken>>;
}

/// Timeouts of the real client.
#[derive(Debug, Clone, Copy)]
pub struct GrpcAdminConfig {
    /// TCP + HTTP/2 connect timeout.
    pub connect_timeout_ms: u64,
    /// Per-request deadline (membership changes wait for a commit).
    pub request_timeout_ms: u64,
}

impl Default for GrpcAdminConfig {
    fn default() -> Self {
        Self {
            connect_timeout_ms: 2_000,
            request_timeout_ms: 10_000,
        }
    }
}

/// [`AdminApi`] over tonic. Connects per call: at most a handful of pods are
/// polled per reconcile, and a fresh connection never reuses a dead pod IP.
#[derive(Debug, Clone, Default)]
pub struct GrpcAdmin {
    config: GrpcAdminConfig,
}

impl GrpcAdmin {
    /// Client with the given timeouts.
    pub fn new(config: GrpcAdminConfig) -> Self {
        Self { config }
    }
}

async fn connect(
    config: GrpcAdminConfig,
    target: &AdminTarget,
) -> AdminResult<AdminClient<Channel>> {
    let endpoint = target.uri.as_str();
    let invalid = |source| AdminError::InvalidEndpoint {
        endpoint: endpoint.to_string(),
        source,
    };
    let mut ep = Endpoint::from_shared(endpoint.to_string()).map_err(invalid)?;
    if let Some(tls) = &target.tls {
        let id = &tls.identity;
        let config = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&id.ca_pem))
            .identity(Identity::from_pem(&id.cert_pem, &id.key_pem))
            .domain_name(tls.server_name.clone());
        ep = ep.tls_config(config).map_err(invalid)?;
    }
    let channel = ep
        .connect_timeout(Duration::from_millis(config.connect_timeout_ms))
        .timeout(Duration::from_millis(config.request_timeout_ms))
        .connect()
        .await
        .map_err(|source| AdminError::Connect {
            endpoint: endpoint.to_string(),
            source,
        })?;
    Ok(AdminClient::new(channel))
}

fn rpc_error(endpoint: &AdminTarget) -> impl FnOnce(tonic::Status) -> AdminError + '_ {
    move |status| AdminError::Rpc {
        endpoint: endpoint.uri.clone(),
        status: Box::new(status),
    }
}

/// Maps the wire role to the planner's.
pub fn node_role(role: i32) -> NodeRole {
    match pb::Role::try_from(role) {
        Ok(pb::Role::Leader) => NodeRole::Leader,
        Ok(pb::Role::Follower) => NodeRole::Follower,
        Ok(pb::Role::Candidate | pb::Role::PreCandidate) => NodeRole::Candidate,
        Ok(pb::Role::Learner) => NodeRole::Learner,
        Ok(pb::Role::Joining) => NodeRole::Joining,
        Ok(pb::Role::Unspecified) | Err(_) => NodeRole::Unknown,
    }
}

/// Converts a wire `StatusResponse` into the planner's view.
pub fn node_status(resp: pb::StatusResponse) -> NodeStatus {
    NodeStatus {
        id: resp.id,
        role: node_role(resp.role),
        term: resp.term,
        members: resp
            .members
            .into_iter()
            .map(|m| MemberView {
                id: m.id,
                name: m.name,
                voter: m.voter,
                lag_entries: m.lag_entries,
            })
            .collect(),
    }
}

impl AdminApi for GrpcAdmin {
    fn status(&self, endpoint: AdminTarget) -> BoxFuture<'static, AdminResult<NodeStatus>> {
        let config = self.config;
        Box::pin(async move {
            let mut client = connect(config, &endpoint).await?;
            let resp = client
                .status(pb::StatusRequest {})
                .await
                .map_err(rpc_error(&endpoint))?;
            Ok(node_status(resp.into_inner()))
        })
    }

    fn add_learner(
        &self,
        endpoint: AdminTarget,
        member: NewMember,
    ) -> BoxFuture<'static, AdminResult<()>> {
        let config = self.config;
        Box::pin(async move {
            let mut client = connect(config, &endpoint).await?;
            let req = pb::AddMemberRequest {
                id: member.id,
                name: member.name,
                peer_addr: member.peer_addr,
                client_addr: member.client_addr,
                grpc_addr: member.grpc_addr,
            };
            client.add_member(req).await.map_err(rpc_error(&endpoint))?;
            Ok(())
        })
    }

    fn promote(&self, endpoint: AdminTarget, id: u64) -> BoxFuture<'static, AdminResult<()>> {
        let config = self.config;
        Box::pin(async move {
            let mut client = connect(config, &endpoint).await?;
            let req = pb::PromoteMemberRequest { id };
            client
                .promote_member(req)
                .await
                .map_err(rpc_error(&endpoint))?;
            Ok(())
        })
    }

    fn remove(&self, endpoint: AdminTarget, id: u64) -> BoxFuture<'static, AdminResult<()>> {
        let config = self.config;
        Box::pin(async move {
            let mut client = connect(config, &endpoint).await?;
            let req = pb::RemoveMemberRequest { id };
            client
                .remove_member(req)
                .await
                .map_err(rpc_error(&endpoint))?;
            Ok(())
        })
    }

    fn transfer_leadership(
        &self,
        endpoint: AdminTarget,
        target_id: u64,
    ) -> BoxFuture<'static, AdminResult<()>> {
        let config = self.config;
        Box::pin(async move {
            let mut client = connect(config, &endpoint).await?;
            let req = pb::TransferLeadershipRequest { target_id };
            client
                .transfer_leadership(req)
                .await
                .map_err(rpc_error(&endpoint))?;
            Ok(())
        })
    }

    fn take_snapshot(
        &self,
        endpoint: AdminTarget,
    ) -> BoxFuture<'static, AdminResult<SnapshotTaken>> {
        let config = self.config;
        Box::pin(async move {
            let mut client = connect(config, &endpoint).await?;
            let resp = client
                .take_snapshot(pb::TakeSnapshotRequest {})
                .await
                .map_err(rpc_error(&endpoint))?;
            let index = resp.into_inner().snapshot.map_or(0, |s| s.index);
            Ok(SnapshotTaken { index })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_roles_map_to_planner_roles_and_unknown_values_are_unknown() {
        let cases = [
            (pb::Role::Leader as i32, NodeRole::Leader),
            (pb::Role::Follower as i32, NodeRole::Follower),
            (pb::Role::PreCandidate as i32, NodeRole::Candidate),
            (pb::Role::Learner as i32, NodeRole::Learner),
            (pb::Role::Joining as i32, NodeRole::Joining),
            (0, NodeRole::Unknown),
            (99, NodeRole::Unknown),
        ];
        for (wire, want) in cases {
            assert_eq!(node_role(wire), want, "{wire}");
        }
    }

    #[tokio::test]
    async fn unreachable_endpoint_is_an_error_not_a_hang() {
        let admin = GrpcAdmin::new(GrpcAdminConfig {
            connect_timeout_ms: 200,
            request_timeout_ms: 200,
        });
        // Port 1 on loopback: nothing listens there.
        let result = admin.status("http://127.0.0.1:1".to_string().into()).await;
        assert!(
            matches!(result, Err(AdminError::Connect { .. })),
            "{result:?}"
        );
        let result = admin.status("not a uri".to_string().into()).await;
        assert!(
            matches!(result, Err(AdminError::InvalidEndpoint { .. })),
            "{result:?}"
        );
    }
}
