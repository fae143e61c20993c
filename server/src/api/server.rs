//! The plaintext TCP listener: an accept loop bounded by a [`Semaphore`] and
//! one [`handler`](super::handler) task per connection. Graceful shutdown
//! stops accepting and lets handlers finish the requests they already read.

use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tracing::{info, warn};

use super::connection::MemoryBudget;
use super::handler::Handler;
use crate::metrics::Metrics;
use crate::node::NodeHandle;

/// Settings for the TCP listener.
#[derive(Debug, Clone)]
pub struct ListenerConfig {
    /// Most concurrent connections; further clients wait in the accept backlog.
    pub max_connections: usize,
    /// Longest accepted request line.
    pub max_line_bytes: usize,
    /// Requests read ahead of their replies per connection (pipelining window).
    pub max_pipelined_requests: usize,
}

/// Accepts client connections and spawns a handler for each.
pub struct Listener {
    /// The bound socket.
    listener: TcpListener,
    /// One permit per open connection.
    limit: Arc<Semaphore>,
    /// How each connection behaves.
    config: ListenerConfig,
    /// Where requests go.
    node: NodeHandle,
    /// Request counters and latencies.
    metrics: Arc<Metrics>,
    /// Flips to `true` when the server shuts down.
    shutdown: watch::Receiver<bool>,
    /// Shared by every connection (`MAX_TCP_BUFFERED_BYTES`).
    budget: MemoryBudget,
}

/// Request bytes all TCP connections together may buffer or have in flight
/// (long lines while they stream in, parsed requests until answered). Each
/// connection also holds one 16 KiB read chunk outside this budget. A line
/// that does not fit is discarded with `ERR UNAVAILABLE overloaded`.
pub const MAX_TCP_BUFFERED_BYTES: usize = 512 << 20;

/// Longest pause after a failed `accept` (e.g. out of file descriptors).
const MAX_ACCEPT_BACKOFF: Duration = Duration::from_secs(1);

impl Listener {
    /// Wraps a bound socket.
    pub fn new(
        listener: TcpListener,
        config: ListenerConfig,
        node: NodeHandle,
        metrics: Arc<Metrics>,
        shutdown: watch::Receiver<bool>,
    ) -> Self {
        Listener {
            listener,
            limit: Arc::new(Semaphore::new(config.max_connections)),
            config,
            node,
            metrics,
            shutdown,
            budget: Arc::new(Semaphore::new(MAX_TCP_BUFFERED_BYTES)),
        }
    }

    /// Runs until shutdown is signalled.
    pub async fn run(mut self) {
        let mut backoff = Duration::from_millis(5);
        loop {
            let permit = tokio::select! {
                p = self.limit.clone().acquire_owned() => match p {
                    Ok(p) => p,
                    Err(_) => return,
                },
                _ = self.shutdown.changed() => return,
            };
            let accepted = tokio::select! {
                a = self.listener.accept() => a,
                _ = self.shutdown.changed() => return,
            };
            match accepted {
                Ok((socket, peer)) => {
                    backoff = Duration::from_millis(5);
                    let _ = socket.set_nodelay(true);
                    let handler = Handler::new(
                        socket,
                        self.config.clone(),
                        self.node.clone(),
                        self.metrics.clone(),
                        (self.shutdown.clone(), self.budget.clone()),
                    );
                    tokio::spawn(async move {
                        handler.run().await;
                        drop(permit);
                    });
                    tracing::trace!(%peer, "client connected");
                }
                Err(e) => {
                    warn!(error = %e, "accept failed; backing off");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_ACCEPT_BACKOFF);
                }
            }
        }
    }
}

/// Binds `addr` and serves until shutdown.
pub async fn serve(
    addr: &str,
    config: ListenerConfig,
    node: NodeHandle,
    metrics: Arc<Metrics>,
    shutdown: watch::Receiver<bool>,
) -> std::io::Result<tokio::task::JoinHandle<()>> {
    let listener = TcpListener::bind(addr).await?;
    info!(%addr, "client TCP listener up");
    let l = Listener::new(listener, config, node, metrics, shutdown);
    Ok(tokio::spawn(l.run()))
}
