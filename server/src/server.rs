//! Process wiring: builds the node with the tonic transport as its outbound
//! half and status probe, binds every listener (TCP client, peer gRPC,
//! client gRPC, HTTP), starts the runtime (and the TLS file poller) and
//! shuts it all down. The only
//! module that names `node`, `api` and `transport` together.

use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{info, warn};

use crate::api;
use crate::config::Config;
use crate::metrics::Metrics;
use crate::node::{self, BuildError, NodeHandle, PeerInbox};
use crate::transport::tls::{TlsError, TransportTls};
use crate::transport::{self, admin_service::AdminStatusProbe, peer::PeerTransport};

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

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The node could not be built (identity, storage or Raft configuration).
    #[error(transparent)]
    Node(#[from] BuildError),
    /// The TLS files could not be read or do not fit together.
    #[error(transparent)]
    Tls(#[from] TlsError),
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

/// Starts the node and every listener.
pub async fn launch(cfg: Config) -> Result<Server, StartError> {
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let metrics = Arc::new(Metrics::new());
    let tls = transport::tls::load(cfg.client_tls.as_ref(), cfg.peer_tls.as_ref())?;
    if let Some(reloader) = transport::tls_reload::Reloader::new(&tls, Some(metrics.clone())) {
        tokio::spawn(reloader.run(cfg.tls_reload_interval, shutdown_rx.clone()));
    }
    let dialer = tls.peer_dialer.clone();
    let outbound =
        move |ctx| Box::new(PeerTransport::from_context(ctx, dialer)) as Box<dyn node::Outbound>;
    let probe = AdminStatusProbe {
        dialer: tls.peer_dialer.clone(),
    };
    let built = node::build(cfg, metrics.clone(), &probe, outbound, shutdown_rx.clone()).await?;
    let cfg = built.cfg.clone();
    let handle = built.handle.clone();
    let peer = (built.inbox.clone(), built.snapshots.clone());
    let listeners = start_listeners(&cfg, &handle, peer, &metrics, tls, &shutdown_rx).await?;
    let runtime = built.spawn();
    info!(
        client = %cfg.advertise_client_addr,
        peer = %cfg.advertise_peer_addr,
        client_tls = cfg.client_tls.is_some(),
        peer_tls = cfg.peer_tls.is_some(),
        tls_reload_interval_ms = u64::try_from(cfg.tls_reload_interval.as_millis()).unwrap_or(u64::MAX),
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
    tls: TransportTls,
    shutdown: &watch::Receiver<bool>,
) -> Result<Vec<JoinHandle<()>>, StartError> {
    let host = cfg.listen_addr.as_str();
    let client = bind(&cfg.client_listen_addr, cfg.client_port).await?;
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
    let (h, s, peer_tls) = (handle.clone(), shutdown.clone(), tls.peer_server);
    let admins = transport::admin_auth::AdminPolicy::new(cfg.admin_allowed_cn.clone());
    tasks.push(tokio::spawn(async move {
        if let Err(e) = transport::serve_peer(peer, h, inbox, snapshots, peer_tls, admins, s).await
        {
            tracing::error!(error = %e, "peer gRPC server failed");
        }
    }));
    let (h, m, s) = (handle.clone(), metrics.clone(), shutdown.clone());
    let client_tls = transport::ClientPortTls {
        server: tls.client_server,
        forward: tls.forward_dialer,
    };
    tasks.push(tokio::spawn(async move {
        if let Err(e) = transport::serve_grpc(grpc, h, m, client_tls, s).await {
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
