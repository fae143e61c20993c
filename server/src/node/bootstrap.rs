//! Deciding how a node starts: restart under its stored identity, bootstrap
//! a new cluster (from `-peers`, or alone), or join an existing one.
//!
//! Safety rule: an identity is used by exactly one incarnation of a data
//! dir. A node whose data dir was wiped must not bootstrap again under the
//! name-derived bootstrap id (it would have forgotten its votes and log), so
//! before bootstrapping it asks the listed peers whether a cluster already
//! runs that knows it; if so it starts in join mode with a new random id.

use std::time::Duration;

use tracing::{info, warn};

use titan_proto::v1 as pb;
use titan_proto::v1::admin_client::AdminClient;

use super::Member;
use super::identity::{
    Identity, IdentityError, Origin, bootstrap_cluster_id, bootstrap_id, random_id,
};
use crate::config::Config;
use crate::transport::peer::connect;

/// How the node starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartMode {
    /// Identity found in the data dir.
    Restart(Identity),
    /// A new cluster with these initial voters (this node included).
    Bootstrap(Identity, Vec<Member>),
    /// Wait to be added through Admin.AddMember.
    Join(Identity),
}

/// How long to wait for each peer's Status during the pre-bootstrap probe.
const PROBE_TIMEOUT: Duration = Duration::from_millis(1500);

/// This node as a directory entry.
pub fn self_member(cfg: &Config, id: u64) -> Member {
    Member {
        id,
        name: cfg.name.clone(),
        peer_addr: cfg.advertise_peer_addr.clone(),
        client_addr: cfg.advertise_client_addr.clone(),
        grpc_addr: cfg.advertise_grpc_addr.clone(),
    }
}

fn initial_members(cfg: &Config) -> Vec<Member> {
    let mut members = vec![self_member(cfg, bootstrap_id(&cfg.name))];
    for p in &cfg.peers {
        members.push(Member {
            id: bootstrap_id(&p.name),
            name: p.name.clone(),
            peer_addr: p.peer_addr(),
            client_addr: p.client_addr(),
            // Unknown until the peer's own status is seen; the client gRPC
            // port convention is used as a hint only.
            grpc_addr: String::new(),
        });
    }
    members
}

/// Decides the start mode (and persists a new identity before returning).
pub async fn decide(cfg: &Config) -> Result<StartMode, IdentityError> {
    if let Some(identity) = Identity::load(&cfg.data_dir)? {
        info!(id = identity.id, cluster = %identity.cluster_id, "restarting with stored identity");
        return Ok(StartMode::Restart(identity));
    }
    let mode = if cfg.join {
        join_mode(cfg)
    } else if cfg.peers.is_empty() {
        bootstrap_mode(cfg)
    } else if let Some(existing) = probe_existing_cluster(cfg).await {
        warn!(
            cluster = %existing,
            "data dir is empty but the listed peers already run a cluster that knew this node; \
             joining under a NEW identity (add it with Admin.AddMember)"
        );
        join_mode(cfg)
    } else {
        bootstrap_mode(cfg)
    };
    let identity = match &mode {
        StartMode::Restart(i) | StartMode::Bootstrap(i, _) | StartMode::Join(i) => i,
    };
    identity.save(&cfg.data_dir)?;
    Ok(mode)
}

fn join_mode(cfg: &Config) -> StartMode {
    StartMode::Join(Identity {
        id: random_id(),
        cluster_id: String::new(),
        name: cfg.name.clone(),
        origin: Origin::Join,
    })
}

fn bootstrap_mode(cfg: &Config) -> StartMode {
    let members = initial_members(cfg);
    let names: Vec<String> = members.iter().map(|m| m.name.clone()).collect();
    let identity = Identity {
        id: bootstrap_id(&cfg.name),
        cluster_id: bootstrap_cluster_id(&names),
        name: cfg.name.clone(),
        origin: Origin::Bootstrap,
    };
    StartMode::Bootstrap(identity, members)
}

/// Asks every listed peer for its status; returns the cluster id if one of
/// them shows that this node's bootstrap identity already took part (the
/// leader has replicated to it) or that the cluster no longer lists it.
async fn probe_existing_cluster(cfg: &Config) -> Option<String> {
    let my_id = bootstrap_id(&cfg.name);
    let probes = cfg.peers.iter().map(|p| probe(p.peer_addr()));
    let answers = futures::future::join_all(probes).await;
    answers.into_iter().flatten().find_map(|s| {
        if s.cluster_id.is_empty() || s.id == 0 {
            return None;
        }
        let me = s.members.iter().find(|m| m.id == my_id);
        let knew_me = me.is_some_and(|m| m.match_index > 0);
        let removed_me = me.is_none() && !s.members.is_empty();
        (knew_me || removed_me).then_some(s.cluster_id)
    })
}

async fn probe(addr: String) -> Option<pb::StatusResponse> {
    let call = async {
        let channel = connect(&addr, PROBE_TIMEOUT).await.ok()?;
        AdminClient::new(channel)
            .status(pb::StatusRequest {})
            .await
            .ok()
    };
    tokio::time::timeout(PROBE_TIMEOUT, call)
        .await
        .ok()
        .flatten()
        .map(|r| r.into_inner())
}
