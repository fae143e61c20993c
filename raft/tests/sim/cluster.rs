//! Simulated members and the cluster driver.

use std::collections::{BTreeMap, BTreeSet};

use titan_raft::rng::SplitMix64;
use titan_raft::{
    ConfState, Config, Entry, EntryKind, HardState, MemStorage, MessageType, NodeId, RawNode,
    ReadState, Ready, Role, SnapshotMeta, Storage,
};

use super::checker::Checker;
use super::kv::{Kv, Put};
use super::network::{Faults, Network, SendOutcome, SnapData};

/// Something a node did that clients and checkers care about.
#[derive(Debug, Clone)]
pub enum Event {
    /// `node` applied `entry`.
    Applied { node: NodeId, entry: Entry },
    /// `node` served a read `ctx` with `value`.
    Read {
        node: NodeId,
        ctx: Vec<u8>,
        value: Option<u64>,
    },
    /// `node` crashed; its in-flight client work is lost.
    Crashed { node: NodeId },
}

/// One simulated member: the core, its durable storage (inside the core)
/// and its state machine.
pub struct SimNode {
    pub id: NodeId,
    pub cfg: Config,
    /// `None` while crashed; the durable storage survives in `disk`.
    pub raw: Option<RawNode<MemStorage>>,
    /// What survived the last crash (valid while `raw` is `None`).
    pub disk: MemStorage,
    /// A Ready taken from the core but not yet persisted: lost on crash.
    pub pending: Option<Ready>,
    pub kv: Kv,
    pub applied: u64,
    /// Durable snapshot of the state machine, matching `durable().snapshot_meta()`.
    pub snap_kv: Kv,
    /// Snapshot data received with Snapshot messages, by index, until installed.
    pub received_snaps: BTreeMap<u64, Kv>,
    /// ReadStates waiting for `applied` to catch up.
    pub waiting_reads: Vec<ReadState>,
}

impl SimNode {
    pub fn raw(&self) -> &RawNode<MemStorage> {
        self.raw.as_ref().expect("node is up")
    }

    pub fn raw_mut(&mut self) -> &mut RawNode<MemStorage> {
        self.raw.as_mut().expect("node is up")
    }

    /// What is on disk now: the live core's storage (it only ever receives
    /// persisted data) or the image saved at the crash.
    pub fn durable(&self) -> &MemStorage {
        self.raw.as_ref().map_or(&self.disk, |r| r.storage())
    }

    pub fn is_up(&self) -> bool {
        self.raw.is_some()
    }
}

/// The whole simulated world.
pub struct Cluster {
    pub now: u64,
    pub nodes: BTreeMap<NodeId, SimNode>,
    pub net: Network,
    pub rng: SplitMix64,
    /// Probability (per mille) that a pending Ready is persisted at each
    /// chance; below 1000 it stays pending across steps and a crash loses it.
    pub persist_per_mille: u64,
    pub checker: Checker,
    pub events: Vec<Event>,
    pub ids: Vec<NodeId>,
    /// Snapshots installed by followers (coverage statistics).
    pub snapshots_installed: u64,
    /// Crashes injected (coverage statistics).
    pub crashes: u64,
}

/// Harness-wide tick settings: short timeouts keep runs cheap.
pub fn sim_config(id: NodeId, seed: u64) -> Config {
    let mut cfg = Config::new(id);
    cfg.election_tick_min = 10;
    cfg.election_tick_max = 20;
    cfg.heartbeat_tick = 2;
    cfg.max_inflight_msgs = 4;
    cfg.max_msg_entries = 8;
    cfg.max_msg_bytes = 512;
    cfg.max_uncommitted_bytes = 16 << 10;
    cfg.seed = seed ^ id.wrapping_mul(0x9E37_79B9);
    cfg
}

impl Cluster {
    /// `voters` founding members `1..=voters`, plus spare empty members up to `total`.
    pub fn new(voters: u64, total: u64, seed: u64, tweak: impl Fn(&mut Config)) -> Self {
        let founders: Vec<(NodeId, Vec<u8>)> = (1..=voters)
            .map(|id| (id, format!("addr-{id}").into_bytes()))
            .collect();
        let mut nodes = BTreeMap::new();
        for id in 1..=total {
            let mut cfg = sim_config(id, seed);
            tweak(&mut cfg);
            let disk = if id <= voters {
                MemStorage::new_bootstrapped(&founders)
            } else {
                MemStorage::new()
            };
            let raw = RawNode::new(&cfg, disk.clone()).expect("valid config");
            let node = SimNode {
                id,
                cfg,
                raw: Some(raw),
                disk,
                pending: None,
                kv: Kv::default(),
                applied: 0,
                snap_kv: Kv::default(),
                received_snaps: BTreeMap::new(),
                waiting_reads: Vec::new(),
            };
            nodes.insert(id, node);
        }
        Cluster {
            now: 0,
            nodes,
            net: Network::new(seed ^ 0xA5A5, Faults::default()),
            rng: SplitMix64::new(seed),
            persist_per_mille: 1000,
            checker: Checker::default(),
            events: Vec::new(),
            ids: (1..=total).collect(),
            snapshots_installed: 0,
            crashes: 0,
        }
    }

    /// A cluster whose members start from hand-made logs: `logs[i]` lists
    /// the terms of entries `1..`, all voters in `voters`, every node at `term`.
    pub fn from_logs(
        voters: &[NodeId],
        logs: &[&[u64]],
        term: u64,
        tweak: impl Fn(&mut Config),
    ) -> Self {
        let mut c = Cluster::new(0, voters.len() as u64, 7, &tweak);
        let conf = ConfState {
            voters: voters.iter().copied().collect(),
            learners: Default::default(),
        };
        for (&id, terms) in voters.iter().zip(logs) {
            let entries: Vec<Entry> = terms
                .iter()
                .enumerate()
                .map(|(i, &t)| {
                    let index = i as u64 + 1;
                    let data = Put {
                        op_id: index * 1000 + t,
                        key: 0,
                    }
                    .encode();
                    Entry {
                        index,
                        term: t,
                        kind: EntryKind::Normal,
                        data,
                    }
                })
                .collect();
            let hs = HardState {
                term,
                vote: 0,
                commit: 0,
            };
            let snap = SnapshotMeta {
                index: 0,
                term: 0,
                conf: conf.clone(),
            };
            let disk = MemStorage::from_parts(hs, snap, entries).expect("contiguous");
            let node = c.node_mut(id);
            node.raw = Some(RawNode::new(&node.cfg, disk.clone()).expect("valid config"));
            node.disk = disk;
        }
        c
    }

    pub fn node(&self, id: NodeId) -> &SimNode {
        &self.nodes[&id]
    }

    pub fn node_mut(&mut self, id: NodeId) -> &mut SimNode {
        self.nodes.get_mut(&id).expect("known node")
    }

    /// One unit of simulated time: deliver due messages, tick, process.
    pub fn step(&mut self) -> Result<(), String> {
        self.now += 1;
        for env in self.net.take_due(self.now) {
            self.deliver(env)?;
        }
        for id in self.ids.clone() {
            if let Some(raw) = self.node_mut(id).raw.as_mut() {
                raw.tick();
            }
        }
        self.process_all()?;
        self.checker.observe(self.now, &self.nodes)
    }

    /// Runs `n` steps.
    pub fn run(&mut self, n: u64) -> Result<(), String> {
        for _ in 0..n {
            self.step()?;
        }
        Ok(())
    }

    /// Without advancing time: deliver every queued message (ignoring
    /// delays) and persist everything, until quiet (bounded).
    pub fn stabilize(&mut self) -> Result<(), String> {
        let saved = self.persist_per_mille;
        self.persist_per_mille = 1000;
        for _ in 0..10_000 {
            self.process_all()?;
            let batch = self.net.take_all();
            if batch.is_empty() {
                self.persist_per_mille = saved;
                return self.checker.observe(self.now, &self.nodes);
            }
            for env in batch {
                self.deliver(env)?;
            }
        }
        Err("stabilize did not converge".into())
    }

    /// Ticks every live node `n` times, stabilizing after each tick.
    pub fn tick_stable(&mut self, n: u64) -> Result<(), String> {
        for _ in 0..n {
            self.now += 1;
            for id in self.ids.clone() {
                if let Some(raw) = self.node_mut(id).raw.as_mut() {
                    raw.tick();
                }
            }
            self.stabilize()?;
        }
        Ok(())
    }

    fn deliver(&mut self, env: super::network::Envelope) -> Result<(), String> {
        let (from, to, is_snap) = (
            env.msg.from,
            env.msg.to,
            env.msg.msg_type == MessageType::Snapshot,
        );
        let Some(node) = self.nodes.get_mut(&to) else {
            return Ok(());
        };
        let Some(raw) = node.raw.as_mut() else {
            if is_snap {
                self.report_snapshot(from, to, false);
            }
            return Ok(());
        };
        if let Some(data) = env.snap {
            node.received_snaps.insert(data.index, data.kv);
        }
        raw.step(env.msg)
            .map_err(|e| format!("node {to} step failed: {e}"))?;
        if is_snap {
            self.report_snapshot(from, to, true);
        }
        self.process(to)
    }

    fn report_snapshot(&mut self, leader: NodeId, to: NodeId, ok: bool) {
        if let Some(raw) = self.nodes.get_mut(&leader).and_then(|n| n.raw.as_mut()) {
            raw.report_snapshot(to, ok);
        }
    }

    pub fn process_all(&mut self) -> Result<(), String> {
        for id in self.ids.clone() {
            self.process(id)?;
        }
        Ok(())
    }

    /// Drives one node's Ready loop; pending Readies persist with
    /// probability `persist_per_mille` per chance.
    pub fn process(&mut self, id: NodeId) -> Result<(), String> {
        for _ in 0..4 {
            if self.node(id).pending.is_some() {
                if !self.rng.chance(self.persist_per_mille, 1000) {
                    return Ok(());
                }
                self.persist(id)?;
            }
            let node = self.node_mut(id);
            let Some(raw) = node.raw.as_mut() else {
                return Ok(());
            };
            if !raw.has_ready() {
                return Ok(());
            }
            let mut ready = raw.ready();
            let msgs = std::mem::take(&mut ready.messages);
            node.pending = Some(ready);
            for m in msgs {
                self.send(m);
            }
        }
        Ok(())
    }

    fn send(&mut self, m: titan_raft::Message) {
        let from = m.from;
        let snap = (m.msg_type == MessageType::Snapshot).then(|| {
            let node = self.node(from);
            SnapData {
                index: node.durable().snapshot_meta().index,
                kv: node.snap_kv.clone(),
            }
        });
        let (is_snap, to) = (snap.is_some(), m.to);
        if self.net.send(self.now, m, snap) == SendOutcome::Dropped && is_snap {
            self.report_snapshot(from, to, false);
        }
    }

    /// Step 1–4 of the Ready contract for the pending Ready of `id`.
    fn persist(&mut self, id: NodeId) -> Result<(), String> {
        let node = self.node_mut(id);
        let Some(mut ready) = node.pending.take() else {
            return Ok(());
        };
        if let Some(meta) = ready.snapshot.clone() {
            install_snapshot(node, meta)?;
            self.snapshots_installed += 1;
        }
        let node = self.node_mut(id);
        let raw = node.raw.as_mut().ok_or("persist on a crashed node")?;
        raw.storage_mut()
            .append(&ready.entries)
            .map_err(|e| format!("node {id}: append: {e}"))?;
        if let Some(hs) = ready.hard_state {
            raw.storage_mut().set_hard_state(hs);
        }
        for m in std::mem::take(&mut ready.persisted_messages) {
            self.send(m);
        }
        self.apply(id, &ready.committed_entries)?;
        let node = self.node_mut(id);
        node.waiting_reads
            .extend(std::mem::take(&mut ready.read_states));
        self.serve_reads(id);
        self.node_mut(id).raw_mut().advance(ready);
        Ok(())
    }

    fn apply(&mut self, id: NodeId, entries: &[Entry]) -> Result<(), String> {
        for e in entries {
            let node = self.node_mut(id);
            if e.index != node.applied + 1 {
                return Err(format!(
                    "node {id} applied {} after {}",
                    e.index, node.applied
                ));
            }
            node.applied = e.index;
            if e.kind == EntryKind::Normal {
                node.kv.apply(&e.data);
            }
            self.checker.on_apply(self.now, id, e)?;
            self.events.push(Event::Applied {
                node: id,
                entry: e.clone(),
            });
        }
        Ok(())
    }

    fn serve_reads(&mut self, id: NodeId) {
        let node = self.node_mut(id);
        let applied = node.applied;
        let (ready, waiting): (Vec<_>, Vec<_>) = node
            .waiting_reads
            .drain(..)
            .partition(|r| r.index <= applied);
        node.waiting_reads = waiting;
        for rs in ready {
            let value = Put::decode(&rs.context).and_then(|p| self.node(id).kv.get(p.key));
            self.events.push(Event::Read {
                node: id,
                ctx: rs.context,
                value,
            });
        }
    }

    /// Crash: the core, unpersisted Readies and volatile state are lost.
    pub fn crash(&mut self, id: NodeId) {
        let node = self.node_mut(id);
        if let Some(raw) = node.raw.take() {
            // The core's storage holds exactly what was persisted.
            node.disk = raw.storage().clone();
        }
        node.pending = None;
        node.received_snaps.clear();
        node.waiting_reads.clear();
        self.crashes += 1;
        self.events.push(Event::Crashed { node: id });
    }

    /// Restart from what was persisted; the state machine restarts from
    /// its snapshot and re-applies the committed log.
    pub fn restart(&mut self, id: NodeId) -> Result<(), String> {
        let node = self.node_mut(id);
        if node.raw.is_some() {
            return Ok(());
        }
        let raw =
            RawNode::new(&node.cfg, node.disk.clone()).map_err(|e| format!("restart {id}: {e}"))?;
        node.kv = node.snap_kv.clone();
        node.applied = node.disk.snapshot_meta().index;
        debug_assert!(node.pending.is_none());
        node.raw = Some(raw);
        Ok(())
    }

    /// Snapshot the state machine at `applied` and compact the log there.
    pub fn compact(&mut self, id: NodeId) {
        let node = self.node_mut(id);
        let Some(raw) = node.raw.as_mut() else { return };
        if node.applied <= raw.storage().snapshot_meta().index || node.pending.is_some() {
            return;
        }
        if raw.storage_mut().compact(node.applied).is_ok() {
            node.snap_kv = node.kv.clone();
        }
    }

    /// Live nodes that believe they lead, with their terms.
    pub fn leaders(&self) -> Vec<(NodeId, u64)> {
        self.nodes
            .values()
            .filter_map(|n| n.raw.as_ref().map(|r| (n.id, r.status())))
            .filter(|(_, s)| s.role == Role::Leader)
            .map(|(id, s)| (id, s.term))
            .collect()
    }

    /// The live leader with the highest term.
    pub fn leader(&self) -> Option<NodeId> {
        self.leaders()
            .into_iter()
            .max_by_key(|&(_, t)| t)
            .map(|(id, _)| id)
    }

    /// Campaign on `id` and let the cluster settle.
    pub fn elect(&mut self, id: NodeId) -> Result<(), String> {
        self.node_mut(id).raw_mut().campaign();
        self.stabilize()?;
        match self.leader() {
            Some(l) if l == id => Ok(()),
            other => Err(format!("expected {id} to lead, got {other:?}")),
        }
    }

    /// Proposes a put of `op_id` to `key` on `id`.
    pub fn put(&mut self, id: NodeId, op_id: u64, key: u8) -> Result<(u64, u64), String> {
        let data = Put { op_id, key }.encode();
        self.node_mut(id)
            .raw_mut()
            .propose(data)
            .map_err(|e| e.to_string())
    }

    /// Forwards a put of `op_id` to `key` from follower `id` to its leader.
    pub fn forward(&mut self, id: NodeId, op_id: u64, key: u8) -> Result<(), String> {
        let data = Put { op_id, key }.encode();
        self.node_mut(id)
            .raw_mut()
            .forward(vec![data])
            .map_err(|e| e.to_string())
    }

    pub fn up_ids(&self) -> Vec<NodeId> {
        self.nodes
            .values()
            .filter(|n| n.is_up())
            .map(|n| n.id)
            .collect()
    }

    pub fn members(&self, via: NodeId) -> BTreeSet<NodeId> {
        let conf = self.node(via).raw().status().conf;
        conf.voters.union(&conf.learners).copied().collect()
    }
}

fn install_snapshot(node: &mut SimNode, meta: SnapshotMeta) -> Result<(), String> {
    let data = node.received_snaps.remove(&meta.index);
    node.received_snaps.retain(|&index, _| index > meta.index);
    let Some(kv) = data else {
        return Err(format!(
            "node {}: snapshot {} arrived without its data",
            node.id, meta.index
        ));
    };
    let raw = node.raw.as_mut().ok_or("install on a crashed node")?;
    raw.storage_mut()
        .apply_snapshot(meta.clone())
        .map_err(|e| format!("apply_snapshot: {e}"))?;
    node.kv = kv.clone();
    node.snap_kv = kv;
    node.applied = meta.index;
    Ok(())
}
