//! End-of-run checkers: identical committed prefixes (read back from each
//! replica's simulated disk), identical applied state (byte-equal
//! snapshots of every replica's state machine), no acknowledged write lost,
//! and the client history's linearizability.

use std::collections::BTreeMap;
use std::sync::Arc;

use titan_server::node::{NodeHandle, ReadAnswer, ReadQuery};
use titan_server::raft::Entry;
use titan_server::storage::{Wal, WalOptions};

use super::replica::Replica;
use crate::linearizability::{self, Op, OpKind, Verdict};

/// The log (entries through its durable commit index) a replica's disk
/// would recover after a power loss now.
pub fn committed_log(r: &Replica) -> Result<Vec<Entry>, String> {
    let image = r.fs.crash_image(|_| Vec::new());
    let opts = WalOptions {
        fs: Arc::new(image),
        ..WalOptions::default()
    };
    let (_wal, rec) = Wal::open(&r.wal_dir(), opts).map_err(|e| format!("{}: {e}", r.name))?;
    let commit = rec.hard_state.commit;
    Ok(rec
        .entries
        .into_iter()
        .filter(|e| e.index <= commit)
        .collect())
}

/// Every pair of replicas agrees on every index both hold as committed.
pub fn check_committed_prefixes(replicas: &[Replica]) -> Result<u64, String> {
    let mut by_index: BTreeMap<u64, (String, u64, Vec<u8>)> = BTreeMap::new();
    let mut checked = 0;
    for r in replicas {
        for e in committed_log(r)? {
            match by_index.get(&e.index) {
                Some((who, term, data)) if *term != e.term || *data != e.data => {
                    return Err(format!(
                        "committed entry {} differs: {who} has term {term}, {} has term {}",
                        e.index, r.name, e.term
                    ));
                }
                Some(_) => checked += 1,
                None => {
                    by_index.insert(e.index, (r.name.clone(), e.term, e.data.clone()));
                }
            }
        }
    }
    Ok(checked)
}

/// The replica's applied state in the snapshot file format (index, term,
/// membership, every key with its history, leases, revision).
pub async fn state_bytes(h: &NodeHandle) -> Result<(u64, Vec<u8>), String> {
    let res = h
        .read(ReadQuery::EtcdSnapshot, false)
        .await
        .map_err(|e| e.to_string())?;
    let ReadAnswer::EtcdSnapshot(at) = res.answer else {
        return Err("wrong answer to EtcdSnapshot".into());
    };
    let mut bytes = Vec::new();
    at.encode(&mut bytes).map_err(|e| e.to_string())?;
    Ok((at.meta().index, bytes))
}

/// Every acknowledged write is the final value of its key, or was followed
/// by a write that did not end before it began (so may be ordered after).
pub fn check_acked_writes(
    history: &[Op],
    finals: &BTreeMap<u8, Option<u64>>,
) -> Result<(), String> {
    let writer = |v: u64| history.iter().find(|o| o.kind.written() == Some(v));
    for p in history.iter().filter(|o| o.ret.is_some()) {
        let acked = match p.kind {
            OpKind::Put { .. } => true,
            OpKind::Cas { outcome, .. } => outcome == Some(linearizability::CasOutcome::Swapped),
            OpKind::Get { .. } => false,
        };
        let (Some(pv), true) = (p.kind.written(), acked) else {
            continue;
        };
        let fin = finals.get(&p.key).copied().flatten();
        let Some(w) = fin.and_then(writer) else {
            return Err(format!(
                "acknowledged write {pv} of key {} lost: final value {fin:?}",
                p.key
            ));
        };
        let w_before_p = w.ret.is_some_and(|r| r < p.call);
        if w.kind.written() != Some(pv) && w_before_p {
            return Err(format!(
                "acknowledged write {pv} of key {} lost: final value {fin:?} was written before it",
                p.key
            ));
        }
    }
    Ok(())
}

/// The history has a linearization (per key).
pub fn check_linearizable(history: &[Op]) -> Result<bool, String> {
    match linearizability::check(history) {
        Verdict::Linearizable => Ok(true),
        Verdict::Inconclusive => Ok(false),
        Verdict::Violation { key } => Err(format!("history of key {key} is not linearizable")),
    }
}
