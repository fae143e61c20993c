//! The simulated network: per-message delay (hence reordering), drop,
//! duplication and (possibly asymmetric) partitions, all from one seed.

use std::collections::BTreeSet;

use titan_raft::rng::SplitMix64;
use titan_raft::{Message, MessageType, NodeId};

use super::kv::Kv;

/// Snapshot data travelling with a Snapshot message (the node streams it
/// out of band in production).
#[derive(Debug, Clone)]
pub struct SnapData {
    pub index: u64,
    pub kv: Kv,
}

#[derive(Debug, Clone)]
pub struct Envelope {
    pub deliver_at: u64,
    pub msg: Message,
    pub snap: Option<SnapData>,
}

/// Fault knobs, per mille.
#[derive(Debug, Clone, Copy, Default)]
pub struct Faults {
    pub drop_per_mille: u64,
    pub dup_per_mille: u64,
    /// Delay drawn from `[0, max_delay_ticks]`.
    pub max_delay_ticks: u64,
}

pub struct Network {
    pub queue: Vec<Envelope>,
    pub faults: Faults,
    /// Directed links that drop everything.
    pub blocked: BTreeSet<(NodeId, NodeId)>,
    pub rng: SplitMix64,
    /// Messages sent so far (for statistics).
    pub sent: u64,
    /// Scenario hook: messages for which this returns `true` are dropped.
    pub drop_filter: Option<fn(&Message) -> bool>,
}

/// What happened to a sent message (the sender learns snapshot outcomes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SendOutcome {
    Queued,
    Dropped,
}

impl Network {
    pub fn new(seed: u64, faults: Faults) -> Self {
        Network {
            queue: Vec::new(),
            faults,
            blocked: BTreeSet::new(),
            rng: SplitMix64::new(seed),
            sent: 0,
            drop_filter: None,
        }
    }

    pub fn send(&mut self, now: u64, msg: Message, snap: Option<SnapData>) -> SendOutcome {
        self.sent += 1;
        if self.drop_filter.is_some_and(|f| f(&msg)) {
            return SendOutcome::Dropped;
        }
        if self.blocked.contains(&(msg.from, msg.to))
            || self.rng.chance(self.faults.drop_per_mille, 1000)
        {
            return SendOutcome::Dropped;
        }
        // Snapshots are streamed over a reliable stream: no duplicates.
        // Forwarded proposals must arrive at most once (the transport never
        // resends), or their commands would be appended twice.
        let copies = if msg.msg_type != MessageType::Snapshot
            && msg.msg_type != MessageType::Propose
            && self.rng.chance(self.faults.dup_per_mille, 1000)
        {
            2
        } else {
            1
        };
        for _ in 0..copies {
            let delay = self.rng.below(self.faults.max_delay_ticks + 1);
            self.queue.push(Envelope {
                deliver_at: now + delay,
                msg: msg.clone(),
                snap: snap.clone(),
            });
        }
        SendOutcome::Queued
    }

    /// Removes and returns messages due at `now`, in a seeded random order.
    pub fn take_due(&mut self, now: u64) -> Vec<Envelope> {
        let (mut due, rest): (Vec<_>, Vec<_>) =
            self.queue.drain(..).partition(|e| e.deliver_at <= now);
        self.queue = rest;
        for i in (1..due.len()).rev() {
            let j = self.rng.below(i as u64 + 1) as usize;
            due.swap(i, j);
        }
        due
    }

    /// Removes every queued message, in send order (for `stabilize`).
    pub fn take_all(&mut self) -> Vec<Envelope> {
        std::mem::take(&mut self.queue)
    }

    /// Cuts `id` off from everyone in both directions.
    pub fn isolate(&mut self, id: NodeId, all: &[NodeId]) {
        for &other in all.iter().filter(|&&o| o != id) {
            self.blocked.insert((id, other));
            self.blocked.insert((other, id));
        }
    }

    /// Splits `all` into `side` and the rest, both directions.
    pub fn split(&mut self, side: &[NodeId], all: &[NodeId]) {
        for &a in side {
            for &b in all.iter().filter(|b| !side.contains(b)) {
                self.blocked.insert((a, b));
                self.blocked.insert((b, a));
            }
        }
    }

    pub fn block_one_way(&mut self, from: NodeId, to: NodeId) {
        self.blocked.insert((from, to));
    }

    pub fn heal(&mut self) {
        self.blocked.clear();
    }
}
