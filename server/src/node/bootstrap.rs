//! Deciding how a node starts: restart under its stored identity, bootstrap
//! a new cluster (from `-peers`, or alone), or join an existing one.
//!
//! Safety rule: an identity is used by exactly one incarnation of a data
//! dir. A node whose data dir was wiped must not bootstrap again under the
//! name-derived bootstrap id (it would have forgotten its votes and log), so
//! before bootstrapping it asks the listed peers whether a cluster already
//! runs; if so it refuses to bootstrap and starts in join mode with a new
//! random id, logging what to do (add it as a new member, remove the old id).
//!
//! "Already runs" must rest on facts that hold whoever led: a leader's match
//! index is no such fact (followers report 0 for everyone, and a new leader
//! starts at 0 for a member that was down). A peer
//! proves the cluster ran past its bootstrap if it reports a term above 1
//! (bootstrap writes term 1, so some election happened, in which this member
//! may have voted or led, and every acknowledgement carries such a term), a
//! leader, or a log or commit index beyond the bootstrap entries. The cost
//! is that an initial member that starts only after the others elected a
//! leader also joins as a new member: it cannot tell that it never ran.

use std::time::Duration;

use tracing::{info, warn};

use super::Member;
use super::identity::{
    Identity, IdentityError, Origin, bootstrap_cluster_id, bootstrap_id, random_id,
};
use super::outbound::{PeerView, StatusProbe};
use crate::config::Config;

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

/// The initial members as every one of them records them in its bootstrap
/// entries. The entries are committed log entries, so each member must
/// write the same bytes: its own gRPC address, which the others cannot
/// know from `-peers`, is left empty like theirs (learned from status and
/// peer batches; `Runtime::member` fills this node's own from its flags).
/// The whole-replica simulator found members recording different entries.
pub(super) fn initial_members(cfg: &Config) -> Vec<Member> {
    let me = Member {
        grpc_addr: String::new(),
        ..self_member(cfg, bootstrap_id(&cfg.name))
    };
    let mut members = vec![me];
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
/// `probe` asks the listed peers for their status before a bootstrap.
/// A joining member's new id comes from `env` (OS randomness in production).
pub async fn decide(
    cfg: &Config,
    probe: &dyn StatusProbe,
    env: &super::env::NodeEnv,
) -> Result<StartMode, IdentityError> {
    if let Some(identity) = Identity::load(&cfg.data_dir)? {
        info!(id = identity.id, cluster = %identity.cluster_id, "restarting with stored identity");
        return Ok(StartMode::Restart(identity));
    }
    let join_id = env
        .entropy(&format!("join id of {}", cfg.name), random_id)
        .max(1);
    let mode = if cfg.join {
        join_mode(cfg, join_id)
    } else if cfg.peers.is_empty() {
        bootstrap_mode(cfg)
    } else if let Some((existing, reason)) = probe_existing_cluster(cfg, probe).await {
        warn!(
            cluster = %existing,
            reason = %reason,
            old_id = bootstrap_id(&cfg.name),
            "REFUSING TO BOOTSTRAP: the data dir is empty but the listed peers already run a \
             cluster, and a member that lost its votes and log must never rejoin as itself. \
             Starting as a NEW member that waits to be added: add it with Admin.AddMember \
             (titanctl members add), then remove the old id (titanctl members remove)"
        );
        join_mode(cfg, join_id)
    } else {
        bootstrap_mode(cfg)
    };
    let identity = match &mode {
        StartMode::Restart(i) | StartMode::Bootstrap(i, _) | StartMode::Join(i) => i,
    };
    identity.save(&cfg.data_dir)?;
    Ok(mode)
}

fn join_mode(cfg: &Config, id: u64) -> StartMode {
    StartMode::Join(Identity {
        id,
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

/// Asks every listed peer for its status; returns the cluster id and the
/// reason if any answer proves the cluster already ran (see module docs).
async fn probe_existing_cluster(cfg: &Config, probe: &dyn StatusProbe) -> Option<(String, String)> {
    let my_id = bootstrap_id(&cfg.name);
    let bootstrap_entries = 2 * (cfg.peers.len() as u64 + 1);
    let probes = cfg
        .peers
        .iter()
        .map(|p| probe.probe(p.peer_addr(), PROBE_TIMEOUT));
    let answers = futures::future::join_all(probes).await;
    answers.into_iter().flatten().find_map(|s| {
        let reason = cluster_ran(&s, my_id, bootstrap_entries)?;
        Some((s.cluster_id, reason))
    })
}

/// Why `peer`'s status proves its cluster ran past bootstrap, or `None`.
pub(crate) fn cluster_ran(peer: &PeerView, my_id: u64, bootstrap_entries: u64) -> Option<String> {
    if peer.cluster_id.is_empty() || peer.id == 0 {
        return None;
    }
    let me = peer.members.iter().find(|(id, _)| *id == my_id);
    if me.is_some_and(|(_, match_index)| *match_index > 0) {
        return Some("its leader has replicated to this member".into());
    }
    if me.is_none() && !peer.members.is_empty() {
        return Some("its configuration no longer lists this member".into());
    }
    if peer.term > 1 {
        return Some(format!(
            "it is at term {}: an election already happened",
            peer.term
        ));
    }
    if peer.leader_id != 0 {
        return Some(format!("it follows leader {}", peer.leader_id));
    }
    if peer.last_index > bootstrap_entries || peer.commit_index > bootstrap_entries {
        return Some(format!(
            "its log reaches index {} beyond the {bootstrap_entries} bootstrap entries",
            peer.last_index.max(peer.commit_index)
        ));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Member `i` of a three-member cluster on `h1..h3`, advertising its
    /// own gRPC address.
    fn member_cfg(i: usize) -> Config {
        use clap::Parser;
        let peers: Vec<String> = (1..=3)
            .filter(|&j| j != i)
            .map(|j| format!("n{j}:h{j}:5001:6001"))
            .collect();
        let args = [
            "titan-server".to_string(),
            format!("--id=n{i}"),
            format!("--peers={}", peers.join(",")),
            format!("--advertise-peer-addr=h{i}:5001"),
            format!("--advertise-client-addr=h{i}:6001"),
            format!("--advertise-grpc-addr=h{i}:7001"),
        ];
        let cli = crate::config::Cli::try_parse_from(args).expect("flags");
        cli.into_config().expect("config")
    }

    /// Regression (found by the replica simulator): each initial member
    /// recorded its own gRPC address in the bootstrap entries and the
    /// others' as empty, so the committed entries 1..=6 differed between
    /// members. They must be the same bytes everywhere.
    #[test]
    fn every_initial_member_writes_the_same_bootstrap_members() {
        let sorted = |mut m: Vec<Member>| {
            m.sort_by_key(|m| m.id);
            m
        };
        let first = sorted(initial_members(&member_cfg(1)));
        assert_eq!(first.len(), 3);
        for i in 2..=3 {
            assert_eq!(sorted(initial_members(&member_cfg(i))), first, "n{i}");
        }
        assert!(first.iter().all(|m| m.grpc_addr.is_empty()));
    }

    const ME: u64 = 7;
    /// Three initial members: six bootstrap entries.
    const BOOT: u64 = 6;

    fn fresh_peer() -> PeerView {
        PeerView {
            cluster_id: "c".into(),
            id: 8,
            members: vec![(7, 0), (8, 0), (9, 0)],
            term: 1,
            leader_id: 0,
            commit_index: BOOT,
            last_index: BOOT,
        }
    }

    /// Regression: the old rule trusted the leader's match index,
    /// which followers report as 0 for everyone and a new leader reports as
    /// 0 for a member that was down, so a wiped leader bootstrapped again
    /// under its old id. Every fact that proves the cluster ran counts.
    #[test]
    fn wiped_member_refuses_to_bootstrap_whenever_a_peer_proves_the_cluster_ran() {
        type Edit = fn(&mut PeerView);
        let table: [(&str, Edit, bool); 9] = [
            ("peer fresh from bootstrap", |_| {}, false),
            ("peer without identity", |p| p.id = 0, false),
            ("peer without cluster id", |p| p.cluster_id.clear(), false),
            (
                "follower after an election, match 0 for all",
                |p| p.term = 3,
                true,
            ),
            (
                "new leader that never reached the wiped member",
                |p| {
                    p.term = 4;
                    p.leader_id = 8;
                },
                true,
            ),
            ("peer follows a leader", |p| p.leader_id = 9, true),
            ("log beyond bootstrap", |p| p.last_index = BOOT + 1, true),
            (
                "leader replicated to this member",
                |p| p.members[0].1 = 12,
                true,
            ),
            (
                "member removed from the configuration",
                |p| {
                    p.members.remove(0);
                },
                true,
            ),
        ];
        for (case, edit, refuse) in table {
            let mut peer = fresh_peer();
            edit(&mut peer);
            let got = cluster_ran(&peer, ME, BOOT);
            assert_eq!(got.is_some(), refuse, "{case}: {got:?}");
        }
    }
}
