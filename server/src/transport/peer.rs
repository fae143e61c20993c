//! Outbound Raft traffic: one long-lived client stream per peer, fed from a
//! bounded queue, batching many messages per frame. A dropped connection is
//! re-dialled with capped exponential backoff; the peer's address is
//! re-resolved on every dial because in Kubernetes a restarted pod keeps its
//! DNS name but gets a new IP.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use tracing::{debug, info, warn};

use titan_proto::v1 as pb;
use titan_proto::v1::raft_client::RaftClient;

use super::convert::message_to_pb;
use super::tls::{Dialer, tls_failure};
use crate::metrics::Metrics;
use crate::node::outbound::{Outbound, OutboundContext, SnapshotSendError, SnapshotTransfer};
use crate::raft::{Message, NodeId};

/// Tunables of the peer transport.
#[derive(Debug, Clone)]
pub struct PeerConfig {
    /// Messages queued per peer before new ones are dropped (and the core told
    /// the peer is unreachable).
    pub max_queue_msgs: usize,
    /// Most messages packed into one `MessageBatch` frame.
    pub max_batch_msgs: usize,
    /// Soft cap on entry bytes per batch (one oversize message still goes alone).
    pub max_batch_bytes: usize,
    /// Batches buffered between the batcher and the HTTP/2 stream.
    pub max_inflight_batches: usize,
    /// Dial timeout.
    pub connect_timeout: Duration,
    /// First reconnect delay.
    pub backoff_min: Duration,
    /// Largest reconnect delay.
    pub backoff_max: Duration,
    /// This node's advertised peer address (sent so joiners can reply).
    pub self_member: crate::node::Member,
    /// Plaintext or mutual TLS to the other members.
    pub dialer: Dialer,
}

impl PeerConfig {
    /// Defaults tuned for a LAN and 10 ms ticks.
    pub fn new(self_member: crate::node::Member, dialer: Dialer) -> Self {
        PeerConfig {
            max_queue_msgs: 8192,
            max_batch_msgs: 512,
            max_batch_bytes: 8 << 20,
            max_inflight_batches: 64,
            connect_timeout: Duration::from_millis(500),
            backoff_min: Duration::from_millis(20),
            backoff_max: Duration::from_millis(1000),
            self_member,
            dialer,
        }
    }
}

/// Dials the peer port at `addr` (`host:port`), resolving the name now.
pub async fn connect(
    dialer: &Dialer,
    addr: &str,
    timeout: Duration,
) -> Result<Channel, tonic::transport::Error> {
    dialer
        .endpoint(addr)?
        .connect_timeout(timeout)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(1))
        .keep_alive_timeout(Duration::from_secs(2))
        .keep_alive_while_idle(true)
        .connect()
        .await
}

struct Peer {
    /// Current address; the task re-reads it on every dial.
    addr: watch::Sender<String>,
    /// Outbound messages.
    queue: mpsc::Sender<Message>,
    /// The sender task; aborted when the peer is removed.
    task: JoinHandle<()>,
}

/// All outbound peer streams. Owned by the runtime task.
pub struct PeerTransport {
    /// One entry per known peer.
    peers: HashMap<NodeId, Peer>,
    /// Shared tunables.
    config: Arc<PeerConfig>,
    /// The cluster id stamped on every batch (adopted when joining).
    cluster_id: watch::Receiver<String>,
    /// Dropped-message counter.
    metrics: Arc<Metrics>,
}

impl PeerTransport {
    /// The transport a node asks for once it knows who it is.
    pub fn from_context(ctx: OutboundContext, dialer: Dialer) -> Self {
        Self::new(
            PeerConfig::new(ctx.self_member, dialer),
            ctx.cluster_id,
            ctx.metrics,
        )
    }

    /// Creates an empty transport.
    pub fn new(
        config: PeerConfig,
        cluster_id: watch::Receiver<String>,
        metrics: Arc<Metrics>,
    ) -> Self {
        PeerTransport {
            peers: HashMap::new(),
            config: Arc::new(config),
            cluster_id,
            metrics,
        }
    }

    /// Adds a peer or updates its address.
    pub fn set_peer(&mut self, id: NodeId, addr: &str) {
        if let Some(p) = self.peers.get(&id) {
            p.addr.send_if_modified(|a| {
                let changed = a != addr;
                if changed {
                    *a = addr.to_string();
                }
                changed
            });
            return;
        }
        let (addr_tx, addr_rx) = watch::channel(addr.to_string());
        let (queue_tx, queue_rx) = mpsc::channel(self.config.max_queue_msgs);
        let link = PeerLink {
            id,
            addr: addr_rx,
            queue: queue_rx,
            config: self.config.clone(),
            cluster_id: self.cluster_id.clone(),
        };
        let task = tokio::spawn(link.run());
        self.peers.insert(
            id,
            Peer {
                addr: addr_tx,
                queue: queue_tx,
                task,
            },
        );
        self.metrics.peer_links.set(self.links());
    }

    fn links(&self) -> i64 {
        i64::try_from(self.peers.len()).unwrap_or(i64::MAX)
    }

    /// Whether a stream to `id` exists.
    pub fn has_peer(&self, id: NodeId) -> bool {
        self.peers.contains_key(&id)
    }

    /// The address last set for `id`.
    pub fn peer_addr(&self, id: NodeId) -> Option<String> {
        self.peers.get(&id).map(|p| p.addr.borrow().clone())
    }

    /// Stops the stream to `id`.
    pub fn remove_peer(&mut self, id: NodeId) {
        if let Some(p) = self.peers.remove(&id) {
            p.task.abort();
        }
        self.metrics.peer_links.set(self.links());
    }

    /// Ids with a stream.
    pub fn peer_ids(&self) -> Vec<NodeId> {
        self.peers.keys().copied().collect()
    }

    /// Queues `msg`; `false` when the peer is unknown or its queue is full,
    /// in which case the caller reports it unreachable to the core.
    pub fn send(&self, msg: Message) -> bool {
        let Some(p) = self.peers.get(&msg.to) else {
            return false;
        };
        if p.queue.try_send(msg).is_ok() {
            true
        } else {
            self.metrics.peer_messages_dropped.inc();
            false
        }
    }
}

/// The node's outbound half, over these streams; snapshots go through
/// [`send_snapshot`](super::snapshot::send_snapshot).
impl Outbound for PeerTransport {
    fn set_peer(&mut self, id: NodeId, addr: &str) {
        PeerTransport::set_peer(self, id, addr);
    }

    fn has_peer(&self, id: NodeId) -> bool {
        PeerTransport::has_peer(self, id)
    }

    fn peer_addr(&self, id: NodeId) -> Option<String> {
        PeerTransport::peer_addr(self, id)
    }

    fn remove_peer(&mut self, id: NodeId) {
        PeerTransport::remove_peer(self, id);
    }

    fn peer_ids(&self) -> Vec<NodeId> {
        PeerTransport::peer_ids(self)
    }

    fn send(&self, msg: Message) -> bool {
        PeerTransport::send(self, msg)
    }

    fn send_snapshot(
        &self,
        transfer: SnapshotTransfer,
    ) -> BoxFuture<'static, Result<(), SnapshotSendError>> {
        Box::pin(super::snapshot::send_snapshot(
            self.config.dialer.clone(),
            transfer,
        ))
    }
}

impl Drop for PeerTransport {
    fn drop(&mut self) {
        for p in self.peers.values() {
            p.task.abort();
        }
    }
}

/// State of one peer's sender task.
struct PeerLink {
    id: NodeId,
    addr: watch::Receiver<String>,
    queue: mpsc::Receiver<Message>,
    config: Arc<PeerConfig>,
    cluster_id: watch::Receiver<String>,
}

/// Why a stream ended.
enum StreamEnd {
    /// The connection failed; dial again.
    Broken,
    /// The transport dropped this peer; stop.
    Closed,
}

impl PeerLink {
    async fn run(mut self) {
        let mut backoff = self.config.backoff_min;
        let mut attempt: u64 = 0;
        loop {
            let addr = self.addr.borrow_and_update().clone();
            match connect(&self.config.dialer, &addr, self.config.connect_timeout).await {
                Ok(channel) => {
                    if attempt > 0 {
                        info!(peer = self.id, %addr, "peer stream connected");
                    }
                    backoff = self.config.backoff_min;
                    attempt = 0;
                    if let StreamEnd::Closed = self.stream(RaftClient::new(channel)).await {
                        return;
                    }
                }
                Err(e) => match tls_failure(&e) {
                    Some(chain) => warn!(peer = self.id, %addr, error = %chain, "TLS dial failed"),
                    None => debug!(peer = self.id, %addr, error = %e, "dial failed"),
                },
            }
            // Whatever queued up while disconnected is stale; the core resends.
            while self.queue.try_recv().is_ok() {}
            attempt += 1;
            let jitter = backoff.mul_f64(((self.id ^ attempt) % 8) as f64 / 16.0);
            tokio::select! {
                _ = tokio::time::sleep(backoff + jitter) => {}
                _ = self.addr.changed() => {}
            }
            backoff = (backoff * 2).min(self.config.backoff_max);
        }
    }

    /// Pumps batches into one client stream until it breaks.
    async fn stream(&mut self, mut client: RaftClient<Channel>) -> StreamEnd {
        let (tx, rx) = mpsc::channel::<pb::MessageBatch>(self.config.max_inflight_batches);
        let call = client.send(ReceiverStream::new(rx));
        tokio::pin!(call);
        loop {
            let first = tokio::select! {
                res = &mut call => {
                    match res.as_ref().err().and_then(|s| tls_failure(s)) {
                        Some(chain) => warn!(peer = self.id, error = %chain, "peer stream ended by a TLS failure"),
                        None => debug!(peer = self.id, result = ?res.err(), "peer stream ended"),
                    }
                    return StreamEnd::Broken;
                }
                m = self.queue.recv() => match m {
                    Some(m) => m,
                    None => return StreamEnd::Closed,
                },
            };
            let batch = self.batch(first);
            tokio::select! {
                sent = tx.send(batch) => if sent.is_err() { return StreamEnd::Broken },
                _ = &mut call => return StreamEnd::Broken,
            }
        }
    }

    fn batch(&mut self, first: Message) -> pb::MessageBatch {
        let mut bytes = message_bytes(&first);
        let mut msgs = vec![message_to_pb(&first)];
        while msgs.len() < self.config.max_batch_msgs && bytes < self.config.max_batch_bytes {
            match self.queue.try_recv() {
                Ok(m) => {
                    bytes += message_bytes(&m);
                    msgs.push(message_to_pb(&m));
                }
                Err(_) => break,
            }
        }
        pb::MessageBatch {
            cluster_id: self.cluster_id.borrow().clone(),
            msgs,
            sender_addr: self.config.self_member.peer_addr.clone(),
            sender_client_addr: self.config.self_member.client_addr.clone(),
            sender_grpc_addr: self.config.self_member.grpc_addr.clone(),
        }
    }
}

fn message_bytes(m: &Message) -> usize {
    m.entries.iter().map(|e| e.size_bytes()).sum::<usize>() + 64
}
