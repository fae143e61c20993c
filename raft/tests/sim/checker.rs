//! Continuous safety checkers (Raft Figure 3 properties).

use std::collections::{BTreeMap, BTreeSet};

use titan_raft::{Entry, MemStorage, NodeId, Role, Storage};

use super::cluster::SimNode;

/// What the checkers remember across steps.
#[derive(Debug, Default)]
pub struct Checker {
    /// Election Safety: the leader seen for each term.
    pub leaders: BTreeMap<u64, NodeId>,
    /// State Machine Safety: the entry applied at each index, and when it
    /// was first applied.
    pub applied: BTreeMap<u64, (Entry, u64)>,
    /// Leaders already checked for completeness: `(term, id)`.
    checked: BTreeSet<(u64, NodeId)>,
    /// Steps between full log-matching sweeps.
    pub log_matching_every: u64,
}

impl Checker {
    /// Runs after every step.
    pub fn observe(&mut self, now: u64, nodes: &BTreeMap<NodeId, SimNode>) -> Result<(), String> {
        for node in nodes.values() {
            let Some(raw) = node.raw.as_ref() else {
                continue;
            };
            let st = raw.status();
            if st.role != Role::Leader {
                continue;
            }
            let prev = *self.leaders.entry(st.term).or_insert(node.id);
            if prev != node.id {
                return Err(format!(
                    "election safety: {prev} and {} both lead term {}",
                    node.id, st.term
                ));
            }
            if self.checked.insert((st.term, node.id)) {
                self.leader_completeness(now, node.id, st.term, raw.storage())?;
            }
        }
        let every = self.log_matching_every.max(1);
        if now.is_multiple_of(every) {
            check_log_matching(nodes)
        } else {
            Ok(())
        }
    }

    /// State Machine Safety: nobody applies a different entry at an index.
    pub fn on_apply(&mut self, now: u64, node: NodeId, e: &Entry) -> Result<(), String> {
        match self.applied.get(&e.index) {
            Some((seen, _)) if seen != e => Err(format!(
                "state machine safety: node {node} applied {e:?} at {} where {seen:?} was applied",
                e.index
            )),
            Some(_) => Ok(()),
            None => {
                self.applied.insert(e.index, (e.clone(), now));
                Ok(())
            }
        }
    }

    /// Leader Completeness: a new leader of `term` holds every entry of an
    /// earlier term applied (hence committed) before this step.
    fn leader_completeness(
        &self,
        now: u64,
        id: NodeId,
        term: u64,
        log: &MemStorage,
    ) -> Result<(), String> {
        let first = log.first_index();
        for (index, (e, at)) in self.applied.range(first..) {
            if e.term >= term || *at >= now {
                continue;
            }
            if log.term(*index) != Ok(e.term) {
                return Err(format!(
                    "leader completeness: leader {id} of term {term} lacks committed entry {index} (term {})",
                    e.term
                ));
            }
        }
        Ok(())
    }
}

/// Log Matching: if two durable logs hold an entry with the same index and
/// term, they are identical up to it.
pub fn check_log_matching(nodes: &BTreeMap<NodeId, SimNode>) -> Result<(), String> {
    let logs: Vec<(NodeId, &MemStorage)> = nodes.values().map(|n| (n.id, n.durable())).collect();
    for (i, (a, la)) in logs.iter().enumerate() {
        for (b, lb) in &logs[i + 1..] {
            check_pair(*a, la, *b, lb)?;
        }
    }
    Ok(())
}

fn check_pair(a: NodeId, la: &MemStorage, b: NodeId, lb: &MemStorage) -> Result<(), String> {
    let lo = la.first_index().max(lb.first_index());
    let hi = la.last_index().min(lb.last_index());
    if lo > hi {
        return Ok(());
    }
    let ea = la
        .entries(lo, hi + 1, usize::MAX)
        .map_err(|e| e.to_string())?;
    let eb = lb
        .entries(lo, hi + 1, usize::MAX)
        .map_err(|e| e.to_string())?;
    let Some(top) = ea.iter().zip(&eb).rposition(|(x, y)| x.term == y.term) else {
        return Ok(());
    };
    for (x, y) in ea[..=top].iter().zip(&eb[..=top]) {
        if x != y {
            return Err(format!(
                "log matching: nodes {a} and {b} agree at index {} but differ at {}: {x:?} vs {y:?}",
                ea[top].index, x.index
            ));
        }
    }
    Ok(())
}
