//! A Wing–Gong linearizability checker for the KV history, in the style of
//! porcupine: the history is split per key (P-compositionality), searched
//! depth-first with memoisation of (linearized set, state), and operations
//! without a response (timeouts, crashes) may or may not have taken effect.

use std::collections::{BTreeMap, HashSet};

/// What a client did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpKind {
    /// Wrote `value` (unique per put).
    Put { value: u64 },
    /// Read and observed `value`.
    Get { value: Option<u64> },
}

/// One operation in the history; times come from one logical clock.
#[derive(Debug, Clone, Copy)]
pub struct Op {
    pub key: u8,
    pub kind: OpKind,
    pub call: u64,
    /// `None`: no response (may or may not have happened).
    pub ret: Option<u64>,
}

/// Bound on search states per key before the check gives up (inconclusive).
pub const MAX_SEARCH_STATES: usize = 200_000;

/// Outcome of the check.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    Linearizable,
    /// The search bound was hit for some key; nothing was proven wrong.
    Inconclusive,
    /// No linearization exists for `key`.
    Violation {
        key: u8,
    },
}

pub fn check(history: &[Op]) -> Verdict {
    let mut by_key: BTreeMap<u8, Vec<Op>> = BTreeMap::new();
    for op in history {
        // A read without a response constrains nothing.
        if matches!(op.kind, OpKind::Get { .. }) && op.ret.is_none() {
            continue;
        }
        by_key.entry(op.key).or_default().push(*op);
    }
    let mut verdict = Verdict::Linearizable;
    for (key, ops) in by_key {
        match check_key(&ops) {
            Some(true) => {}
            Some(false) => return Verdict::Violation { key },
            None => verdict = Verdict::Inconclusive,
        }
    }
    verdict
}

/// `Some(true)` linearizable, `Some(false)` not, `None` search bound hit.
fn check_key(ops: &[Op]) -> Option<bool> {
    if ops.len() > 128 {
        return None;
    }
    let mut search = Search {
        ops,
        seen: HashSet::new(),
    };
    search.dfs(0, None)
}

struct Search<'a> {
    ops: &'a [Op],
    /// `(linearized set, register value)` states already explored.
    seen: HashSet<(u128, Option<u64>)>,
}

impl Search<'_> {
    fn dfs(&mut self, done: u128, value: Option<u64>) -> Option<bool> {
        let pending_required = self
            .ops
            .iter()
            .enumerate()
            .any(|(i, op)| done & (1 << i) == 0 && op.ret.is_some());
        if !pending_required {
            return Some(true);
        }
        if !self.seen.insert((done, value)) {
            return Some(false);
        }
        if self.seen.len() > MAX_SEARCH_STATES {
            return None;
        }
        // An op may go next only if it was called before every pending op returned.
        let horizon = self
            .ops
            .iter()
            .enumerate()
            .filter(|(i, _)| done & (1 << i) == 0)
            .filter_map(|(_, op)| op.ret)
            .min()
            .unwrap_or(u64::MAX);
        let mut inconclusive = false;
        for (i, op) in self.ops.iter().enumerate() {
            if done & (1 << i) != 0 || op.call > horizon {
                continue;
            }
            let next = match op.kind {
                OpKind::Put { value: v } => Some(v),
                OpKind::Get { value: seen } if seen == value => value,
                OpKind::Get { .. } => continue,
            };
            match self.dfs(done | (1 << i), next) {
                Some(true) => return Some(true),
                Some(false) => {}
                None => inconclusive = true,
            }
        }
        if inconclusive { None } else { Some(false) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(value: u64, call: u64, ret: Option<u64>) -> Op {
        Op {
            key: 0,
            kind: OpKind::Put { value },
            call,
            ret,
        }
    }

    fn get(value: Option<u64>, call: u64, ret: u64) -> Op {
        Op {
            key: 0,
            kind: OpKind::Get { value },
            call,
            ret: Some(ret),
        }
    }

    #[test]
    fn stale_read_after_acknowledged_write_is_a_violation() {
        let h = [put(1, 0, Some(1)), put(2, 2, Some(3)), get(Some(1), 4, 5)];
        assert_eq!(check(&h), Verdict::Violation { key: 0 });
    }

    #[test]
    fn concurrent_read_may_see_either_value() {
        let h = [
            put(1, 0, Some(1)),
            put(2, 2, Some(6)),
            get(Some(1), 3, 4),
            get(Some(2), 5, 7),
        ];
        assert_eq!(check(&h), Verdict::Linearizable);
    }

    #[test]
    fn unacknowledged_write_may_or_may_not_have_happened() {
        let seen = [put(1, 0, None), get(Some(1), 5, 6)];
        let unseen = [put(1, 0, None), get(None, 5, 6)];
        assert_eq!(check(&seen), Verdict::Linearizable);
        assert_eq!(check(&unseen), Verdict::Linearizable);
        let flip_flop = [put(1, 0, None), get(Some(1), 5, 6), get(None, 7, 8)];
        assert_eq!(check(&flip_flop), Verdict::Violation { key: 0 });
    }
}
