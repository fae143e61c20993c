//! Building a node: the identity decision, storage boot, first-time
//! bootstrap entries, the Raft core and the runtime task's state. The
//! network comes in through the node's own traits ([`Outbound`],
//! [`StatusProbe`]); listeners and the wiring of `api` and `transport` live
//! in the top-level `server` module.

use std::sync::Arc;

use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tracing::{info, warn};

use super::bootstrap::{self, StartMode};
use super::env::NodeEnv;
use super::handle::{ClientInput, LeaderView, NodeHandle, PeerInbox};
use super::identity::{Identity, IdentityError, Origin};
use super::outbound::{Outbound, OutboundContext, StatusProbe};
use super::peers::Peers;
use super::proposals::Proposals;
use super::reads::ReadQueue;
use super::runtime::Runtime;
use super::snapshot::SnapshotState;
use super::store::{self, Booted};
use super::view::View;

use crate::config::Config;
use crate::metrics::Metrics;
use crate::raft::{self, Role};
use crate::storage::SnapshotStore;

/// Client requests queued for the runtime before senders wait.
const MAX_QUEUED_CLIENT_REQUESTS: usize = 16_384;
/// Peer batches queued for the runtime before peer streams wait.
const MAX_QUEUED_PEER_INPUTS: usize = 4096;

/// Why a node could not be built.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// The identity file is unreadable.
    #[error(transparent)]
    Identity(#[from] IdentityError),
    /// WAL or snapshot recovery failed (corruption stops the node here).
    #[error("storage: {0}")]
    Storage(String),
    /// The Raft core refused its configuration.
    #[error("raft: {0}")]
    Raft(#[from] raft::RaftError),
}

/// A built node whose runtime task has not started yet: what the listeners
/// need, and [`BuiltNode::spawn`] to start the loop.
pub struct BuiltNode {
    /// The runtime's state, moved into its task by [`BuiltNode::spawn`].
    runtime: Runtime,
    /// The validated flags.
    pub cfg: Arc<Config>,
    /// The front door for clients and admin calls.
    pub handle: NodeHandle,
    /// The way in for peer traffic.
    pub inbox: PeerInbox,
    /// Where received snapshots are staged.
    pub snapshots: SnapshotStore,
}

impl BuiltNode {
    /// Starts the runtime task; it finishes when the node stops.
    pub fn spawn(self) -> JoinHandle<()> {
        tokio::spawn(self.runtime.run())
    }
}

/// The client front door: requests time out after four leader waits plus
/// five seconds.
fn node_handle(
    cfg: &Config,
    tx: mpsc::Sender<ClientInput>,
    leader: watch::Receiver<LeaderView>,
) -> NodeHandle {
    let leader_wait = cfg.leader_wait();
    NodeHandle {
        tx,
        leader,
        leader_wait,
        request_timeout: leader_wait * 4 + std::time::Duration::from_secs(5),
    }
}

fn raft_config(cfg: &Config, id: u64, env: &NodeEnv) -> raft::Config {
    let mut rc = raft::Config::new(id);
    // The core's default seed is its id; a simulation varies it per seed.
    rc.seed = env.entropy(&format!("raft seed of {id}"), || id);
    rc.election_tick_min = cfg.election_ticks;
    rc.election_tick_max = cfg.election_ticks * 2;
    rc.heartbeat_tick = cfg.heartbeat_ticks;
    // One Ready must always fit one WAL batch: same limits, same
    // size function.
    rc.max_ready_entry_bytes = crate::storage::WalOptions::default().max_entry_bytes_per_batch();
    rc
}

/// Boots storage, writing the bootstrap configuration on a first start.
fn boot_storage(
    cfg: &Config,
    mode: &StartMode,
    metrics: &Arc<Metrics>,
    env: &NodeEnv,
) -> Result<(Identity, Booted), BuildError> {
    let mut booted = store::boot(cfg, metrics, env).map_err(BuildError::Storage)?;
    let (identity, members) = match mode {
        StartMode::Bootstrap(i, members) => (i.clone(), members.clone()),
        StartMode::Restart(i) if i.origin == Origin::Bootstrap && booted.is_empty() => {
            // Crashed after saving the identity, before the bootstrap entries were durable.
            let peers_again = bootstrap::initial_members(cfg);
            (i.clone(), peers_again)
        }
        StartMode::Restart(i) | StartMode::Join(i) => (i.clone(), Vec::new()),
    };
    if !members.is_empty() && booted.is_empty() {
        info!(members = members.len(), cluster = %identity.cluster_id, "bootstrapping a new cluster");
        if let Some(path) = &cfg.restore_from {
            store::restore_backup(&mut booted, &members, path).map_err(BuildError::Storage)?;
            info!(backup = %path.display(), revision = booted.sm.kv().revision(), "restored");
        }
        store::write_bootstrap(&mut booted, &members).map_err(BuildError::Storage)?;
    } else if let Some(path) = &cfg.restore_from {
        warn!(backup = %path.display(), "--restore-from ignored: the data dir already holds a cluster, or this member joins one");
    }
    Ok((identity, booted))
}

/// Builds a node from its flags: decides how it starts (`probe` asks the
/// listed peers before a bootstrap), boots storage and the Raft core, and
/// creates its outbound peer traffic with `outbound` once the node knows who
/// it is. `shutdown` flipping to true starts the runtime's graceful stop.
pub async fn build<F>(
    cfg: Config,
    metrics: Arc<Metrics>,
    probe: &dyn StatusProbe,
    outbound: F,
    shutdown: watch::Receiver<bool>,
) -> Result<BuiltNode, BuildError>
where
    F: FnOnce(OutboundContext) -> Box<dyn Outbound>,
{
    let net = NodeNet { probe, outbound };
    build_with_env(cfg, NodeEnv::production(), metrics, net, shutdown).await
}

/// The network a node is built with: the pre-bootstrap probe and the maker
/// of its outbound peer traffic.
pub struct NodeNet<'a, F> {
    /// Asks listed peers for their status before a bootstrap.
    pub probe: &'a dyn StatusProbe,
    /// Creates outbound peer traffic once the node knows who it is.
    pub outbound: F,
}

/// [`build`] in a chosen environment (see [`super::env`]): the simulator
/// passes inline blocking work, an in-memory WAL file layer and a seed.
pub async fn build_with_env<F>(
    cfg: Config,
    env: NodeEnv,
    metrics: Arc<Metrics>,
    net: NodeNet<'_, F>,
    shutdown: watch::Receiver<bool>,
) -> Result<BuiltNode, BuildError>
where
    F: FnOnce(OutboundContext) -> Box<dyn Outbound>,
{
    let NodeNet { probe, outbound } = net;
    let mode = bootstrap::decide(&cfg, probe, &env).await?;
    let (identity, booted) = boot_storage(&cfg, &mode, &metrics, &env)?;
    info!(id = identity.id, name = %identity.name, applied = booted.applied, "storage recovered");
    let cfg = Arc::new(cfg);
    let (client_tx, client_rx) = mpsc::channel(MAX_QUEUED_CLIENT_REQUESTS);
    let (peer_tx, peer_rx) = mpsc::channel(MAX_QUEUED_PEER_INPUTS);
    let (leader_tx, leader_rx) = watch::channel(LeaderView::default());
    let (cluster_id_tx, cluster_id_rx) = watch::channel(identity.cluster_id.clone());
    let handle = node_handle(&cfg, client_tx, leader_rx);
    let inbox = PeerInbox {
        tx: peer_tx.clone(),
        cluster_id: cluster_id_rx.clone(),
    };
    let snapshots = booted.files.store.clone();
    let parts = super::log::into_parts(booted, &raft_config(&cfg, identity.id, &env))
        .map_err(|e| BuildError::Storage(e.to_string()))?;
    let outbound = outbound(OutboundContext {
        self_member: bootstrap::self_member(&cfg, identity.id),
        cluster_id: cluster_id_rx,
        metrics: metrics.clone(),
    });
    let incarnation = env.entropy("read incarnation", || {
        u64::from(super::reads::random_incarnation())
    }) as u32;
    let lease_ids_from = env.entropy("lease ids", super::store::now_unix_ms);
    let lease_clock = super::lease_clock::LeaseClock::new(identity.id, lease_ids_from);
    let runtime = Runtime {
        lease_clock,
        snap: SnapshotState::new(
            parts.files,
            cfg.snapshot_threshold_entries,
            cfg.snapshot_log_percent,
            env.log_margin_entries(),
        ),
        merges: super::merge::Merges::new(env.value_log()),
        cfg: cfg.clone(),
        identity,
        raw: parts.raw,
        wal: parts.wal,
        sm: parts.sm,
        peers: Peers::new(outbound),
        cluster_id_tx,
        view: View::new(leader_tx),
        metrics,
        client_rx,
        peer_rx,
        peer_tx,
        proposals: Proposals::new(env.entropy("forward nonces", super::proposals::random_u64)),
        reads: ReadQueue::new(incarnation),
        leader: 0,
        role: Role::Follower,
        applied: parts.applied,
        shutdown,
        blocking: env.blocking,
    };
    Ok(BuiltNode {
        runtime,
        cfg,
        handle,
        inbox,
        snapshots,
    })
}
