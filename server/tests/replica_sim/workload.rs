//! Seeded clients: puts, linearizable gets and single-key compare-and-swap
//! transactions through each replica's `NodeHandle` (writes on followers
//! are forwarded to the leader inside Raft), recorded as a history for the
//! linearizability checker.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use titan_raft::rng::SplitMix64;
use titan_server::node::{Condition, NodeError, NodeHandle, WriteOp, WriteResult, reason};
use titan_server::storage::mvcc::{
    Compare, CompareResult, CompareTarget, PutRequest, RangeRequest, RequestOp, ResponseOp,
    TxnRequest,
};
use tokio::time::Instant;

use super::trace::Trace;
use crate::linearizability::{CasOutcome, Op, OpKind};

/// How long a client polls for a leader before giving up on an operation.
pub const LEADER_POLL_MS: u64 = 1000;

/// Keys the clients share (small, so operations conflict).
pub const KEYS: u8 = 4;

/// The running replicas' front doors, by replica index (`None`: down).
pub type Handles = Arc<Mutex<Vec<Option<NodeHandle>>>>;

/// What every client shares.
#[derive(Clone)]
pub struct Shared {
    /// Front doors.
    pub handles: Handles,
    /// Completed (or abandoned) operations.
    pub history: Arc<Mutex<Vec<Op>>>,
    /// Time zero.
    pub start: Instant,
    /// Clients stop issuing when set.
    pub stop: Arc<std::sync::atomic::AtomicBool>,
    /// Replay hash.
    pub trace: Trace,
    /// Next unique value to write.
    pub next_value: Arc<std::sync::atomic::AtomicU64>,
}

impl Shared {
    /// Microseconds since time zero.
    pub fn now_us(&self) -> u64 {
        self.start.elapsed().as_micros() as u64
    }

    fn handle(&self, replica: usize) -> Option<NodeHandle> {
        self.handles.lock().unwrap_or_else(|e| e.into_inner())[replica].clone()
    }
}

/// Waits, polling, until `h` knows a leader. Why not let the handle wait:
/// tokio's `watch` parks concurrent waiters on one of eight lists picked by
/// a per-runtime RNG that stable tokio cannot seed, so two clients woken by
/// one leader change would run in an order that differs between runs. A
/// handle called while a leader is known never parks there. False when
/// none appeared within [`LEADER_POLL_MS`] or the node stopped.
pub async fn until_leader_known(h: &NodeHandle) -> bool {
    for _ in 0..LEADER_POLL_MS / 5 {
        let view = h.leader_view();
        if view.stopping || h.watch_leader().has_changed().is_err() {
            return false;
        }
        if view.leader_id != 0 {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    false
}

impl Shared {
    fn record(&self, client: u64, op: Op) {
        let kind = match op.kind {
            OpKind::Put { value } => [1, value, 0],
            OpKind::Get { value } => [2, value.map_or(0, |v| v + 1), 0],
            OpKind::Cas { value, outcome, .. } => [3, value, outcome_word(outcome)],
        };
        let ret = op.ret.map_or(u64::MAX, |r| r);
        self.trace.event(&[
            2,
            client,
            u64::from(op.key),
            op.call,
            ret,
            kind[0],
            kind[1],
            kind[2],
        ]);
        self.history
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(op);
    }

    fn unique_value(&self) -> u64 {
        self.next_value
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    }
}

fn outcome_word(o: Option<CasOutcome>) -> u64 {
    match o {
        None => 0,
        Some(CasOutcome::Swapped) => 1,
        Some(CasOutcome::Failed { observed }) => 2 + observed.map_or(0, |v| v + 1),
    }
}

/// The key's bytes.
pub fn key_bytes(key: u8) -> Bytes {
    Bytes::from(format!("k{key}"))
}

fn parse_value(v: &[u8]) -> Option<u64> {
    std::str::from_utf8(v).ok()?.parse().ok()
}

/// A write error that proves the write never took effect; every other
/// error leaves the outcome unknown.
fn definitely_not_applied(e: &NodeError) -> bool {
    match e {
        NodeError::Unavailable(r) => r == reason::NO_LEADER_ELECTED || r == reason::OVERWRITTEN,
        NodeError::TooLarge { .. } | NodeError::Invalid(_) | NodeError::NotLeader { .. } => true,
        _ => false,
    }
}

/// One client bound to one replica, issuing until told to stop.
pub async fn client(shared: Shared, id: u64, replica: usize, seed: u64) {
    let mut rng = SplitMix64::new(seed);
    let mut last_seen: [Option<u64>; KEYS as usize] = [None; KEYS as usize];
    while !shared.stop.load(std::sync::atomic::Ordering::Relaxed) {
        tokio::time::sleep(Duration::from_millis(rng.below(40))).await;
        let Some(h) = shared.handle(replica) else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let key = rng.below(u64::from(KEYS)) as u8;
        if !until_leader_known(&h).await {
            continue;
        }
        let op = match rng.below(10) {
            0..=3 => put(&shared, &h, key).await,
            4..=7 => get(&shared, &h, key).await,
            _ => cas(&shared, &h, key, last_seen[key as usize]).await,
        };
        if let Some(op) = op {
            if let Some(v) = op.kind.written().or(match op.kind {
                OpKind::Get { value } => value,
                _ => None,
            }) {
                last_seen[key as usize] = Some(v);
            }
            shared.record(id, op);
        }
    }
}

async fn put(shared: &Shared, h: &NodeHandle, key: u8) -> Option<Op> {
    let value = shared.unique_value();
    let call = shared.now_us();
    let op = WriteOp::Put {
        key: key_bytes(key),
        value: Bytes::from(value.to_string()),
        cond: Condition::None,
    };
    let ret = match h.write_from_any_member(op).await {
        Ok(_) => Some(shared.now_us()),
        Err(e) if definitely_not_applied(&e) => return None,
        Err(_) => None,
    };
    Some(Op {
        key,
        kind: OpKind::Put { value },
        call,
        ret,
    })
}

async fn get(shared: &Shared, h: &NodeHandle, key: u8) -> Option<Op> {
    let call = shared.now_us();
    let got = h.get(key_bytes(key), true).await.ok()?;
    let value = got.value.and_then(|e| parse_value(&e.value));
    Some(Op {
        key,
        kind: OpKind::Get { value },
        call,
        ret: Some(shared.now_us()),
    })
}

/// If `key` holds `expect` (absent: `None`), put a new value, else read it.
fn cas_request(key: u8, expect: Option<u64>, value: u64) -> TxnRequest {
    let target = match expect {
        Some(v) => CompareTarget::Value(v.to_string().into_bytes()),
        None => CompareTarget::Version(0),
    };
    TxnRequest {
        compare: vec![Compare {
            result: CompareResult::Equal,
            target,
            key: key_bytes(key).to_vec(),
            range_end: Vec::new(),
        }],
        success: vec![RequestOp::Put(PutRequest {
            key: key_bytes(key).to_vec(),
            value: value.to_string().into_bytes(),
            ..PutRequest::default()
        })],
        failure: vec![RequestOp::Range(RangeRequest {
            key: key_bytes(key).to_vec(),
            ..RangeRequest::default()
        })],
    }
}

fn cas_outcome(res: &WriteResult) -> Option<CasOutcome> {
    let txn = res.txn.as_ref()?;
    if txn.succeeded {
        return Some(CasOutcome::Swapped);
    }
    let Some(ResponseOp::Range(r)) = txn.responses.first() else {
        return None;
    };
    let observed = r.kvs.first().and_then(|kv| parse_value(&kv.value));
    Some(CasOutcome::Failed { observed })
}

async fn cas(shared: &Shared, h: &NodeHandle, key: u8, expect: Option<u64>) -> Option<Op> {
    let value = shared.unique_value();
    let call = shared.now_us();
    let op = WriteOp::Txn(Box::new(cas_request(key, expect, value)));
    let (outcome, ret) = match h.write_from_any_member(op).await {
        Ok(res) => (cas_outcome(&res), Some(shared.now_us())),
        Err(e) if definitely_not_applied(&e) => return None,
        Err(_) => (None, None),
    };
    // A reply without a readable outcome is a bug, not an unknown.
    assert!(
        ret.is_none() || outcome.is_some(),
        "txn answered without an outcome"
    );
    Some(Op {
        key,
        kind: OpKind::Cas {
            expect,
            value,
            outcome,
        },
        call,
        ret,
    })
}
