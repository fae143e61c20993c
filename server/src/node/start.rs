//! Wiring a node together: identity decision, storage boot, first-time
//! bootstrap entries, the Raft core, the runtime task and every listener.

use std::collections::BTreeMap;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tracing::{info, warn};

use super::bootstrap::{self, StartMode};
use super::handle::{LeaderView, NodeHandle, PeerInbox};
use super::identity::{Identity, IdentityError, Origin};
use super::reads::ReadQueue;
use super::runtime::Runtime;
use super::snapshot::SnapshotState;
use super::store::{self, Booted};

use crate::api;
use crate::config::Config;
use crate::metrics::Metrics;
use crate::raft::{self, Role};
use crate::transport::{self, peer::PeerConfig, peer::PeerTransport};

/// Client requests queued for the runtime before senders wait.
const MAX_QUEUED_CLIENT_REQUESTS: usize = 16_384;
/// Peer batches queued for the runtime before peer streams wait.
const MAX_QUEUED_PEER_INPUTS: usize = 4096;
/// How long a node that hit a fatal storage error keeps answering (every
/// request fails, `/healthz` reports the failure) before it exits.
pub const FATAL_DRAIN: std::time::Duration = std::time::Duration::from_millis(500);
/// Exit status after a fatal storage error.
pub const FATAL_EXIT_CODE: i32 = 3;

/// After a fatal storage error: a short bounded drain so replies and the
/// failing `/healthz` get out, then exit non-zero without waiting for
/// blocking tasks (one may be stuck in a failing fsync).
pub async fn exit_after_fatal() -> ! {
    tokio::time::sleep(FATAL_DRAIN).await;
    tracing::error!(
        code = FATAL_EXIT_CODE,
        "exiting after a fatal storage error"
    );
    std::process::exit(FATAL_EXIT_CODE)
}

/// Requests read ahead per TCP connection.
const MAX_PIPELINED_REQUESTS: usize = 256;

/// Why the node could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The identity file is unreadable.
    #[error(transparent)]
    Identity(#[from] IdentityError),
    /// WAL or snapshot recovery failed (corruption stops the node here).
    #[error("storage: {0}")]
    Storage(String),
    /// The Raft core refused its configuration.
    #[error("raft: {0}")]
    Raft(#[from] raft::RaftError),
    /// A listener could not bind.
    #[error("binding {addr}: {source}")]
    Bind {
        /// The address.
        addr: String,
        /// The cause.
        source: std::io::Error,
    },
}

/// A running node.
pub struct Server {
    /// Flipped to start graceful shutdown.
    shutdown_tx: watch::Sender<bool>,
    /// The runtime task; finishing means the node stopped.
    runtime: JoinHandle<()>,
    /// Listener tasks.
    listeners: Vec<JoinHandle<()>>,
    /// Shutdown time budget.
    grace: std::time::Duration,
    /// For callers that want requests in-process (tests, benches).
    pub handle: NodeHandle,
}

impl Server {
    /// Stops accepting clients, lets the runtime hand over leadership and
    /// finish, then stops the listeners. Returns whether a fatal storage
    /// error stopped the node meanwhile (the process must then exit non-zero).
    pub async fn shutdown(self) -> bool {
        let handle = self.handle.clone();
        let _ = self.shutdown_tx.send(true);
        let budget = self.grace + std::time::Duration::from_secs(1);
        if tokio::time::timeout(budget, self.runtime).await.is_err() {
            warn!("runtime did not stop within the grace period");
        }
        for l in self.listeners {
            let _ = tokio::time::timeout(std::time::Duration::from_millis(500), l).await;
        }
        handle.leader_view().failed
    }
}

async fn bind(host: &str, port: u16) -> Result<TcpListener, StartError> {
    let addr = format!("{host}:{port}");
    TcpListener::bind(&addr)
        .await
        .map_err(|source| StartError::Bind { addr, source })
}

fn raft_config(cfg: &Config, id: u64) -> raft::Config {
    let mut rc = raft::Config::new(id);
    rc.election_tick_min = cfg.election_ticks;
    rc.election_tick_max = cfg.election_ticks * 2;
    rc.heartbeat_tick = cfg.heartbeat_ticks;
    // One Ready must always fit one WAL batch (finding 2): same limits, same
    // size function.
    rc.max_ready_entry_bytes = crate::storage::WalOptions::default().max_entry_bytes_per_batch();
    rc
}

/// Boots storage, writing the bootstrap configuration on a first start.
fn boot_storage(
    cfg: &Config,
    mode: &StartMode,
    metrics: &Arc<Metrics>,
) -> Result<(Identity, Booted), StartError> {
    let mut booted = store::boot(cfg, metrics).map_err(StartError::Storage)?;
    let (identity, members) = match mode {
        StartMode::Bootstrap(i, members) => (i.clone(), members.clone()),
        StartMode::Restart(i) if i.origin == Origin::Bootstrap && booted.is_empty() => {
            // Crashed after saving the identity, before the bootstrap entries were durable.
            let peers_again = bootstrap_members_for_restart(cfg, i);
            (i.clone(), peers_again)
        }
        StartMode::Restart(i) | StartMode::Join(i) => (i.clone(), Vec::new()),
    };
    if !members.is_empty() && booted.is_empty() {
        info!(members = members.len(), cluster = %identity.cluster_id, "bootstrapping a new cluster");
        store::write_bootstrap(&mut booted, &members).map_err(StartError::Storage)?;
    }
    Ok((identity, booted))
}

fn bootstrap_members_for_restart(cfg: &Config, identity: &Identity) -> Vec<super::Member> {
    let mut members = vec![bootstrap::self_member(cfg, identity.id)];
    members.extend(cfg.peers.iter().map(|p| super::Member {
        id: super::identity::bootstrap_id(&p.name),
        name: p.name.clone(),
        peer_addr: p.peer_addr(),
        client_addr: p.client_addr(),
        grpc_addr: String::new(),
    }));
    members
}

/// Starts the node and every listener.
pub async fn launch(cfg: Config) -> Result<Server, StartError> {
    let mode = bootstrap::decide(&cfg).await?;
    let metrics = Arc::new(Metrics::new());
    let (identity, booted) = boot_storage(&cfg, &mode, &metrics)?;
    info!(id = identity.id, name = %identity.name, applied = booted.applied, "storage recovered");
    let cfg = Arc::new(cfg);
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let (client_tx, client_rx) = mpsc::channel(MAX_QUEUED_CLIENT_REQUESTS);
    let (peer_tx, peer_rx) = mpsc::channel(MAX_QUEUED_PEER_INPUTS);
    let (leader_tx, leader_rx) = watch::channel(LeaderView::default());
    let (cluster_id_tx, cluster_id_rx) = watch::channel(identity.cluster_id.clone());
    let leader_wait = cfg.leader_wait();
    let handle = NodeHandle {
        tx: client_tx,
        leader: leader_rx,
        leader_wait,
        request_timeout: leader_wait * 4 + std::time::Duration::from_secs(5),
    };
    let inbox = PeerInbox {
        tx: peer_tx.clone(),
        cluster_id: cluster_id_rx.clone(),
    };
    let snapshots = booted.files.store.clone();
    let parts = super::log::into_parts(booted, &raft_config(&cfg, identity.id))
        .map_err(|e| StartError::Storage(e.to_string()))?;
    let transport = PeerTransport::new(
        PeerConfig::new(bootstrap::self_member(&cfg, identity.id)),
        cluster_id_rx,
        metrics.clone(),
    );
    let lease_clock = super::lease_clock::LeaseClock::new(identity.id, super::store::now_unix_ms());
    let rt = Runtime {
        lease_clock,
        snap: SnapshotState::new(parts.files, cfg.snapshot_threshold_entries),
        cfg: cfg.clone(),
        identity,
        raw: parts.raw,
        wal: parts.wal,
        sm: parts.sm,
        transport,
        cluster_id_tx,
        leader_tx,
        metrics: metrics.clone(),
        client_rx,
        peer_rx,
        peer_tx,
        pending_writes: BTreeMap::new(),
        pending_conf: BTreeMap::new(),
        reads: ReadQueue::new(super::reads::random_incarnation()),
        leader: 0,
        role: Role::Follower,
        applied: parts.applied,
        shutdown: shutdown_rx.clone(),
        leaderless_since: None,
        last_proposed: 0,
        observed: Default::default(),
    };
    let listeners =
        start_listeners(&cfg, &handle, (inbox, snapshots), &metrics, &shutdown_rx).await?;
    let runtime = tokio::spawn(rt.run());
    info!(
        client = %cfg.advertise_client_addr,
        peer = %cfg.advertise_peer_addr,
        "titan-server started"
    );
    Ok(Server {
        shutdown_tx,
        runtime,
        listeners,
        grace: cfg.shutdown_grace,
        handle,
    })
}

async fn start_listeners(
    cfg: &Config,
    handle: &NodeHandle,
    (inbox, snapshots): (PeerInbox, crate::storage::SnapshotStore),
    metrics: &Arc<Metrics>,
    shutdown: &watch::Receiver<bool>,
) -> Result<Vec<JoinHandle<()>>, StartError> {
    let host = cfg.listen_addr.as_str();
    let client = bind(host, cfg.client_port).await?;
    let peer = bind(host, cfg.peer_port).await?;
    let grpc = bind(host, cfg.grpc_port).await?;
    let http = bind(host, cfg.http_port).await?;
    let lc = api::server::ListenerConfig {
        max_connections: cfg.max_connections,
        max_line_bytes: cfg.max_line_bytes,
        max_pipelined_requests: MAX_PIPELINED_REQUESTS,
    };
    let tcp = api::server::Listener::new(
        client,
        lc,
        handle.clone(),
        metrics.clone(),
        shutdown.clone(),
    );
    let mut tasks = vec![tokio::spawn(tcp.run())];
    let (h, s) = (handle.clone(), shutdown.clone());
    tasks.push(tokio::spawn(async move {
        if let Err(e) = transport::serve_peer(peer, h, inbox, snapshots, s).await {
            tracing::error!(error = %e, "peer gRPC server failed");
        }
    }));
    let (h, m, s) = (handle.clone(), metrics.clone(), shutdown.clone());
    tasks.push(tokio::spawn(async move {
        if let Err(e) = transport::serve_grpc(grpc, h, m, s).await {
            tracing::error!(error = %e, "client gRPC server failed");
        }
    }));
    let (h, m, s) = (handle.clone(), metrics.clone(), shutdown.clone());
    tasks.push(tokio::spawn(async move {
        if let Err(e) = api::http::serve(http, m, h, s).await {
            tracing::error!(error = %e, "HTTP server failed");
        }
    }));
    Ok(tasks)
}
