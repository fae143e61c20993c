//! Clients issuing puts and reads against the simulated cluster, and the
//! history they record for the linearizability checker.

use std::collections::BTreeMap;

use titan_raft::NodeId;

use super::cluster::{Cluster, Event};
use super::kv::{Put, read_ctx};
use super::linearizability::{Op, OpKind};

/// How an operation entered the cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Started {
    /// A put the leader appended at (index, term).
    Proposed(u64, u64),
    /// A put a follower forwarded to its leader (no index yet).
    Forwarded,
    /// A read.
    Read,
}

/// Ticks after which a client gives up on an operation (outcome unknown).
pub const CLIENT_TIMEOUT_TICKS: u64 = 150;
/// Keys used by the workload; few keys means real contention.
pub const KEYS: u8 = 4;

/// An operation waiting for its outcome.
#[derive(Debug, Clone)]
struct InFlight {
    /// Position in `Workload::history`.
    slot: usize,
    node: NodeId,
    started_at: u64,
    /// For puts: the index and term the proposal got.
    put_at: Option<(u64, u64)>,
    /// A put a follower forwarded to its leader: it completes when that
    /// follower applies an entry carrying its op id.
    forwarded: bool,
}

/// Client driver. Each client has at most one operation in flight.
pub struct Workload {
    pub clients: usize,
    /// Per client: the operation in flight, by op id.
    in_flight: BTreeMap<u64, InFlight>,
    /// Which client owns each in-flight op.
    owner: BTreeMap<usize, u64>,
    pub history: Vec<Op>,
    /// History slots of puts known not to have happened.
    failed: Vec<usize>,
    next_op: u64,
    /// Logical clock ordering calls and returns.
    clock: u64,
    /// Operations completed with a response.
    pub completed: u64,
    /// Of those, puts a follower forwarded to its leader.
    pub completed_forwarded: u64,
}

impl Workload {
    pub fn new(clients: usize) -> Self {
        Workload {
            clients,
            in_flight: BTreeMap::new(),
            owner: BTreeMap::new(),
            history: Vec::new(),
            failed: Vec::new(),
            next_op: 1,
            clock: 0,
            completed: 0,
            completed_forwarded: 0,
        }
    }

    fn tick_clock(&mut self) -> u64 {
        self.clock += 1;
        self.clock
    }

    /// Idle clients may start an operation on a random live node.
    pub fn issue(&mut self, c: &mut Cluster, per_mille: u64) {
        for client in 0..self.clients {
            if self.owner.contains_key(&client) || !c.rng.chance(per_mille, 1000) {
                continue;
            }
            let up = c.up_ids();
            if up.is_empty() {
                return;
            }
            let node = match c.leader() {
                Some(l) if c.rng.chance(7, 10) => l,
                _ => up[c.rng.below(up.len() as u64) as usize],
            };
            let key = c.rng.below(u64::from(KEYS)) as u8;
            if c.rng.chance(1, 2) {
                self.start_put(c, client, node, key);
            } else {
                self.start_get(c, client, node, key);
            }
        }
    }

    /// Starts a put and returns its op id if the node accepted it; a
    /// follower that knows its leader forwards it there.
    pub fn start_put(
        &mut self,
        c: &mut Cluster,
        client: usize,
        node: NodeId,
        key: u8,
    ) -> Option<u64> {
        let op_id = self.next_op;
        self.next_op += 1;
        let call = self.tick_clock();
        let at = match c.put(node, op_id, key) {
            Ok(at) => Some(at),
            Err(_) => {
                c.forward(node, op_id, key).ok()?;
                None
            }
        };
        let op = Op {
            key,
            kind: OpKind::Put { value: op_id },
            call,
            ret: None,
        };
        let started = at.map_or(Started::Forwarded, |(i, t)| Started::Proposed(i, t));
        self.record_start(c, client, op_id, op, node, started);
        Some(op_id)
    }

    fn start_get(&mut self, c: &mut Cluster, client: usize, node: NodeId, key: u8) {
        let op_id = self.next_op;
        self.next_op += 1;
        let call = self.tick_clock();
        if c.node_mut(node)
            .raw_mut()
            .read_index(read_ctx(op_id, key))
            .is_err()
        {
            return;
        }
        let op = Op {
            key,
            kind: OpKind::Get { value: None },
            call,
            ret: None,
        };
        self.record_start(c, client, op_id, op, node, Started::Read);
    }

    /// Records a started operation in the history and as in flight for `client`.
    fn record_start(
        &mut self,
        c: &Cluster,
        client: usize,
        op_id: u64,
        op: Op,
        node: NodeId,
        started: Started,
    ) {
        let slot = self.history.len();
        self.history.push(op);
        self.in_flight.insert(
            op_id,
            InFlight {
                slot,
                node,
                started_at: c.now,
                put_at: match started {
                    Started::Proposed(i, t) => Some((i, t)),
                    _ => None,
                },
                forwarded: started == Started::Forwarded,
            },
        );
        self.owner.insert(client, op_id);
    }

    /// Consumes cluster events: completions, definite failures, crashes, timeouts.
    pub fn observe(&mut self, c: &mut Cluster) {
        for ev in std::mem::take(&mut c.events) {
            match ev {
                Event::Applied { node, entry } => self.on_applied(node, entry.index, &entry.data),
                Event::Read { node, ctx, value } => self.on_read(node, &ctx, value),
                Event::Crashed { node } => self.abandon(|f| f.node == node),
            }
        }
        let now = c.now;
        self.abandon(|f| now >= f.started_at + CLIENT_TIMEOUT_TICKS);
    }

    fn on_applied(&mut self, node: NodeId, index: u64, data: &[u8]) {
        let carried = Put::decode(data).map(|p| p.op_id);
        let found = self.in_flight.iter().find(|&(&id, f)| {
            f.node == node
                && (f.put_at.map(|p| p.0) == Some(index) || f.forwarded && carried == Some(id))
        });
        let Some((&op_id, _)) = found else { return };
        let Some(f) = self.finish(op_id) else { return };
        if carried == Some(op_id) {
            let ret = self.tick_clock();
            self.history[f.slot].ret = Some(ret);
            self.completed += 1;
            self.completed_forwarded += u64::from(f.forwarded);
        } else {
            // Another entry was committed at our index: ours never will be.
            self.failed.push(f.slot);
        }
    }

    fn on_read(&mut self, node: NodeId, ctx: &[u8], value: Option<u64>) {
        let Some(put) = Put::decode(ctx) else { return };
        if self.in_flight.get(&put.op_id).map(|f| f.node) != Some(node) {
            return;
        }
        let Some(f) = self.finish(put.op_id) else {
            return;
        };
        let ret = self.tick_clock();
        self.history[f.slot].kind = OpKind::Get { value };
        self.history[f.slot].ret = Some(ret);
        self.completed += 1;
    }

    fn finish(&mut self, op_id: u64) -> Option<InFlight> {
        let f = self.in_flight.remove(&op_id)?;
        self.owner.retain(|_, op| *op != op_id);
        Some(f)
    }

    /// Gives up on matching operations: their outcome stays unknown.
    fn abandon(&mut self, pred: impl Fn(&InFlight) -> bool) {
        let gone: Vec<u64> = self
            .in_flight
            .iter()
            .filter(|(_, f)| pred(f))
            .map(|(&id, _)| id)
            .collect();
        for op_id in gone {
            self.finish(op_id);
        }
    }

    /// The history minus puts known not to have happened.
    pub fn final_history(&self) -> Vec<Op> {
        self.history
            .iter()
            .enumerate()
            .filter(|(i, _)| !self.failed.contains(i))
            .map(|(_, op)| *op)
            .collect()
    }

    /// Whether `op_id` (a put) completed.
    pub fn put_completed(&self, op_id: u64) -> bool {
        self.history
            .iter()
            .any(|op| op.kind == OpKind::Put { value: op_id } && op.ret.is_some())
    }
}
