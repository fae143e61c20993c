//! The simulated network: every replica's [`Outbound`] pushes envelopes
//! into one seeded queue; a driver task delivers them to the target's
//! [`PeerInbox`] when their simulated time comes. Faults: drop, delay
//! (which reorders), duplicate (never a `Propose`, which the transport
//! contract delivers at most once) and directed link cuts (partitions).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures::future::BoxFuture;
use titan_raft::rng::SplitMix64;
use titan_server::node::outbound::{SnapshotSendError, SnapshotTransfer};
use titan_server::node::{Member, Outbound, OutboundContext, PeerInbox};
use titan_server::raft::{Message, MessageType, NodeId};
use titan_server::storage::SnapshotStore;
use tokio::sync::watch;
use tokio::time::Instant;

use super::trace::Trace;

/// Messages a whole run may deliver; a normal run needs about 10 000. More
/// means a message storm (e.g. an append/ack loop), a liveness bug, and the
/// network stops delivering so the run ends with an error instead of
/// spinning.
pub const MAX_MESSAGES_PER_RUN: u64 = 300_000;

/// Fault rates of the network (per mille) and its largest delay.
#[derive(Debug, Clone, Copy, Default)]
pub struct Faults {
    /// Messages lost.
    pub drop_per_mille: u64,
    /// Messages delivered twice (never `Propose`).
    pub dup_per_mille: u64,
    /// Each delivery waits 0..=this many ms.
    pub max_delay_ms: u64,
}

/// One message in flight.
struct Envelope {
    /// The message.
    msg: Message,
    /// The sender as a directory entry.
    sender: Member,
    /// The sender's cluster id when it sent.
    cluster_id: String,
}

/// Everything the network knows, behind one lock.
struct NetState {
    /// The network's own draws (drop, delay, duplicate).
    rng: SplitMix64,
    /// Current fault rates.
    faults: Faults,
    /// Directed links that lose everything: (from, to).
    cut: BTreeSet<(NodeId, NodeId)>,
    /// Messages by (delivery ms, sequence): ties keep send order.
    queue: BTreeMap<(u64, u64), (NodeId, Envelope)>,
    /// Next sequence number.
    seq: u64,
    /// The inboxes (and snapshot stores) of running replicas.
    inboxes: BTreeMap<NodeId, (PeerInbox, SnapshotStore)>,
    /// Messages delivered (coverage).
    delivered: u64,
    /// Snapshots handed to a follower's installer (coverage).
    snapshots_sent: u64,
}

/// A cloneable handle on the simulated network.
#[derive(Clone)]
pub struct SimNet {
    /// Shared state.
    state: Arc<Mutex<NetState>>,
    /// Time zero of the run.
    start: Instant,
    /// Event log for the replay hash.
    trace: Trace,
}

impl SimNet {
    /// A network whose draws come from `seed`.
    pub fn new(seed: u64, start: Instant, trace: Trace) -> Self {
        let state = NetState {
            rng: SplitMix64::new(seed),
            faults: Faults::default(),
            cut: BTreeSet::new(),
            queue: BTreeMap::new(),
            seq: 0,
            inboxes: BTreeMap::new(),
            delivered: 0,
            snapshots_sent: 0,
        };
        SimNet {
            state: Arc::new(Mutex::new(state)),
            start,
            trace,
        }
    }

    fn lock(&self) -> MutexGuard<'_, NetState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn now_ms(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }

    /// Sets the fault rates.
    pub fn set_faults(&self, faults: Faults) {
        self.lock().faults = faults;
    }

    /// Cuts (or restores) the directed link `from → to`.
    pub fn set_link(&self, from: NodeId, to: NodeId, up: bool) {
        let mut s = self.lock();
        if up {
            s.cut.remove(&(from, to));
        } else {
            s.cut.insert((from, to));
        }
    }

    /// Restores every link and removes every fault.
    pub fn heal(&self) {
        let mut s = self.lock();
        s.cut.clear();
        s.faults = Faults::default();
    }

    /// A running replica's inbox and snapshot store (messages to it are
    /// delivered from now on).
    pub fn register(&self, id: NodeId, inbox: PeerInbox, snapshots: SnapshotStore) {
        self.lock().inboxes.insert(id, (inbox, snapshots));
    }

    /// A replica stopped: messages to it are lost.
    pub fn unregister(&self, id: NodeId) {
        self.lock().inboxes.remove(&id);
    }

    /// Messages delivered so far.
    pub fn delivered(&self) -> u64 {
        self.lock().delivered
    }

    /// Snapshots streamed so far.
    pub fn snapshots_sent(&self) -> u64 {
        self.lock().snapshots_sent
    }

    /// An error once the run exceeded [`MAX_MESSAGES_PER_RUN`].
    pub fn check_storm(&self) -> Result<(), String> {
        let delivered = self.delivered();
        if delivered > MAX_MESSAGES_PER_RUN {
            return Err(format!(
                "message storm: {delivered} messages delivered by {} ms",
                self.now_ms()
            ));
        }
        Ok(())
    }

    /// Queues `env` for `to` according to the faults (lost if the link is cut).
    fn enqueue(&self, to: NodeId, env: Envelope) {
        let now = self.now_ms();
        let mut s = self.lock();
        let from = env.msg.from;
        if s.cut.contains(&(from, to)) {
            return;
        }
        let f = s.faults;
        if s.rng.below(1000) < f.drop_per_mille {
            return;
        }
        let dup = env.msg.msg_type != MessageType::Propose && s.rng.below(1000) < f.dup_per_mille;
        let copies = if dup { 2 } else { 1 };
        for _ in 0..copies {
            let at = now + s.rng.below(f.max_delay_ms + 1);
            s.seq += 1;
            let seq = s.seq;
            let env = Envelope {
                msg: env.msg.clone(),
                sender: env.sender.clone(),
                cluster_id: env.cluster_id.clone(),
            };
            s.queue.insert((at, seq), (to, env));
        }
    }

    /// Takes every envelope due by now whose target runs.
    fn take_due(&self) -> Vec<(PeerInbox, Envelope)> {
        let now = self.now_ms();
        let mut s = self.lock();
        let mut due = Vec::new();
        if s.delivered > MAX_MESSAGES_PER_RUN {
            s.queue.clear();
            return due;
        }
        while let Some(entry) = s.queue.first_entry() {
            if entry.key().0 > now {
                break;
            }
            let (to, env) = entry.remove();
            // A cut made after sending also loses messages in flight.
            if s.cut.contains(&(env.msg.from, to)) {
                continue;
            }
            if let Some((inbox, _)) = s.inboxes.get(&to) {
                due.push((inbox.clone(), env));
            }
        }
        s.delivered += due.len() as u64;
        due
    }

    /// Delivers messages forever, one simulated millisecond at a time.
    pub async fn drive(self) {
        loop {
            for (inbox, env) in self.take_due() {
                let m = &env.msg;
                self.trace
                    .event(&[1, m.from, m.to, m.msg_type as u64, m.term, m.index]);
                inbox
                    .deliver(vec![env.msg], env.sender, env.cluster_id)
                    .await;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    /// Streams a snapshot file to its follower as one chunk, through the
    /// follower's real installer, unless the link is cut or the follower down.
    async fn transfer_snapshot(self, t: SnapshotTransfer) -> Result<(), SnapshotSendError> {
        let (from, to) = (t.msg.from, t.msg.to);
        let delay = self.lock().rng.below(50);
        tokio::time::sleep(Duration::from_millis(delay)).await;
        let target = {
            let s = self.lock();
            let linked = !s.cut.contains(&(from, to));
            s.inboxes.get(&to).filter(|_| linked).cloned()
        };
        let Some((inbox, store)) = target else {
            return Err(SnapshotSendError::Connect(format!("{to} unreachable")));
        };
        let bytes = std::fs::read(&t.file)?;
        let rejected =
            |e: titan_server::storage::SnapshotError| SnapshotSendError::Rejected(e.to_string());
        let mut installer = store.begin_install().map_err(rejected)?;
        installer.write_chunk(&bytes).map_err(rejected)?;
        let staged = installer.finish().map_err(rejected)?;
        let index = t.msg.snapshot.as_ref().map_or(0, |m| m.index);
        self.trace.event(&[4, from, to, index]);
        self.lock().snapshots_sent += 1;
        inbox
            .install_snapshot(t.msg, t.cluster_id, staged)
            .await
            .map_err(SnapshotSendError::Rejected)
    }

    /// The [`Outbound`] of the replica described by `ctx`.
    pub fn outbound(&self, ctx: OutboundContext) -> Box<dyn Outbound> {
        Box::new(SimOutbound {
            net: self.clone(),
            me: ctx.self_member,
            cluster_id: ctx.cluster_id,
            peers: BTreeMap::new(),
        })
    }
}

/// One replica's outbound half.
struct SimOutbound {
    /// The network.
    net: SimNet,
    /// This replica as a directory entry.
    me: Member,
    /// Stamped on every message.
    cluster_id: watch::Receiver<String>,
    /// Known peers and their addresses.
    peers: BTreeMap<NodeId, String>,
}

impl Outbound for SimOutbound {
    fn set_peer(&mut self, id: NodeId, addr: &str) {
        self.peers.insert(id, addr.to_string());
    }
    fn has_peer(&self, id: NodeId) -> bool {
        self.peers.contains_key(&id)
    }
    fn peer_addr(&self, id: NodeId) -> Option<String> {
        self.peers.get(&id).cloned()
    }
    fn remove_peer(&mut self, id: NodeId) {
        self.peers.remove(&id);
    }
    fn peer_ids(&self) -> Vec<NodeId> {
        self.peers.keys().copied().collect()
    }
    fn send(&self, msg: Message) -> bool {
        if !self.peers.contains_key(&msg.to) {
            return false;
        }
        let env = Envelope {
            sender: self.me.clone(),
            cluster_id: self.cluster_id.borrow().clone(),
            msg,
        };
        self.net.enqueue(env.msg.to, env);
        true
    }
    fn send_snapshot(
        &self,
        transfer: SnapshotTransfer,
    ) -> BoxFuture<'static, Result<(), SnapshotSendError>> {
        Box::pin(self.net.clone().transfer_snapshot(transfer))
    }
}
