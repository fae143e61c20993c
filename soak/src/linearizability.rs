//! A Wing–Gong–Lowe linearizability checker for a register-per-key history,
//! in the style of porcupine: the history is split per key
//! (P-compositionality), each key is searched depth-first over a linked list
//! of call/return events with memoisation of (linearized set, value), and an
//! operation without a response (timeout, crash, unknown outcome) may or may
//! not have taken effect: its return is placed after every other event.
//!
//! Single-key transactions are registers too: a compare-and-swap (etcd's
//! `Txn` comparing the key's value, or its absence, then putting; the
//! failure branch reads the key) is one operation of its key's history.
//!
//! The search is iterative (no recursion), so histories of thousands of
//! operations per key do not exhaust the stack; the linearized set is a
//! growable bitset, so there is no bound on operations per key.

use std::collections::{BTreeMap, HashSet};

/// What a client did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpKind {
    /// Wrote `value` (unique per put).
    Put {
        /// The value written.
        value: u64,
    },
    /// Read and observed `value` (`None`: the key was absent).
    Get {
        /// The value observed.
        value: Option<u64>,
    },
    /// A transaction: if the key holds `expect` (`None`: absent), put
    /// `value` (unique per write), else read the key.
    Cas {
        /// The value compared against (`None`: the key must be absent).
        expect: Option<u64>,
        /// The value written when the compare holds.
        value: u64,
        /// What the reply said; `None` when no reply came.
        outcome: Option<CasOutcome>,
    },
}

/// The answer to a [`OpKind::Cas`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CasOutcome {
    /// The compare held and the value was written.
    Swapped,
    /// The compare failed; the failure branch read `observed`.
    Failed {
        /// The value the failure branch read (`None`: absent).
        observed: Option<u64>,
    },
}

impl OpKind {
    /// The value this operation wrote, or may have written (an
    /// unanswered transaction); `None` for reads and failed compares.
    pub fn written(&self) -> Option<u64> {
        match *self {
            OpKind::Put { value } => Some(value),
            OpKind::Cas {
                value,
                outcome: Some(CasOutcome::Swapped) | None,
                ..
            } => Some(value),
            _ => None,
        }
    }
}

/// One operation in the history; times come from one monotonic clock.
#[derive(Debug, Clone, Copy)]
pub struct Op<K = u8> {
    /// The key (register) the operation touched.
    pub key: K,
    /// What it did.
    pub kind: OpKind,
    /// When it was invoked.
    pub call: u64,
    /// When its response arrived; `None`: no response (may or may not have happened).
    pub ret: Option<u64>,
}

/// Default bound on search states per key before the check gives up.
pub const MAX_SEARCH_STATES: usize = 2_000_000;

/// Outcome of the check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict<K = u8> {
    /// Every key's history has a linearization.
    Linearizable,
    /// The search bound was hit for some key; nothing was proven wrong.
    Inconclusive,
    /// No linearization exists for `key`.
    Violation {
        /// The first key (in key order) without one.
        key: K,
    },
}

/// Checks a whole history with the default search bound.
pub fn check<K: Ord + Clone>(history: &[Op<K>]) -> Verdict<K> {
    check_bounded(history, MAX_SEARCH_STATES)
}

/// Checks a whole history, giving up on a key after `max_states` states.
pub fn check_bounded<K: Ord + Clone>(history: &[Op<K>], max_states: usize) -> Verdict<K> {
    let mut by_key: BTreeMap<K, Vec<Op<K>>> = BTreeMap::new();
    for op in history {
        // A read without a response constrains nothing.
        if matches!(op.kind, OpKind::Get { .. }) && op.ret.is_none() {
            continue;
        }
        by_key.entry(op.key.clone()).or_default().push(op.clone());
    }
    let mut verdict = Verdict::Linearizable;
    for (key, ops) in by_key {
        match check_key(&ops, max_states) {
            Some(true) => {}
            Some(false) => return Verdict::Violation { key },
            None => verdict = Verdict::Inconclusive,
        }
    }
    verdict
}

/// A call or return event in the doubly linked event list.
#[derive(Clone, Copy)]
struct Event {
    op: usize,
    is_call: bool,
    /// For a call: the list node of its return.
    partner: usize,
}

/// The event list: node 0 is the head sentinel, `usize::MAX` ends it.
struct EventList {
    events: Vec<Event>,
    next: Vec<usize>,
    prev: Vec<usize>,
}

const END: usize = usize::MAX;

impl EventList {
    fn new<K>(ops: &[Op<K>]) -> EventList {
        // (time, return-after-call at equal times, op, is_call)
        let mut order: Vec<(u64, bool, usize, bool)> = Vec::with_capacity(ops.len() * 2);
        for (i, op) in ops.iter().enumerate() {
            order.push((op.call, false, i, true));
            order.push((op.ret.unwrap_or(u64::MAX), true, i, false));
        }
        order.sort_unstable();
        let n = order.len();
        let mut events = vec![
            Event {
                op: 0,
                is_call: false,
                partner: 0,
            };
            n + 1
        ];
        let mut ret_node = vec![0; ops.len()];
        for (pos, &(_, _, op, is_call)) in order.iter().enumerate() {
            events[pos + 1] = Event {
                op,
                is_call,
                partner: 0,
            };
            if !is_call {
                ret_node[op] = pos + 1;
            }
        }
        for e in events.iter_mut().skip(1).filter(|e| e.is_call) {
            e.partner = ret_node[e.op];
        }
        let next = (0..=n).map(|i| if i == n { END } else { i + 1 }).collect();
        let prev = (0..=n).map(|i| i.saturating_sub(1)).collect();
        EventList { events, next, prev }
    }

    fn unlink(&mut self, node: usize) {
        let (p, n) = (self.prev[node], self.next[node]);
        self.next[p] = n;
        if n != END {
            self.prev[n] = p;
        }
    }

    fn relink(&mut self, node: usize) {
        let (p, n) = (self.prev[node], self.next[node]);
        self.next[p] = node;
        if n != END {
            self.prev[n] = node;
        }
    }

    /// Removes a call and its return (return first, so relinking in reverse works).
    fn lift(&mut self, call: usize) {
        self.unlink(self.events[call].partner);
        self.unlink(call);
    }

    fn unlift(&mut self, call: usize) {
        self.relink(call);
        self.relink(self.events[call].partner);
    }
}

/// The register after `kind` runs on `state`, or `None` when the reply
/// rules that order out.
fn step(state: Option<u64>, kind: OpKind) -> Option<Option<u64>> {
    match kind {
        OpKind::Put { value } => Some(Some(value)),
        OpKind::Get { value } if value == state => Some(state),
        OpKind::Get { .. } => None,
        OpKind::Cas {
            expect,
            value,
            outcome,
        } => match outcome {
            Some(CasOutcome::Swapped) => (state == expect).then_some(Some(value)),
            Some(CasOutcome::Failed { observed }) => {
                (state != expect && observed == state).then_some(state)
            }
            // Unanswered: it ran here (swapping if the compare held).
            None if state == expect => Some(Some(value)),
            None => Some(state),
        },
    }
}

/// `Some(true)` linearizable, `Some(false)` not, `None` search bound hit.
fn check_key<K>(ops: &[Op<K>], max_states: usize) -> Option<bool> {
    let mut list = EventList::new(ops);
    let mut linearized = vec![0u64; ops.len().div_ceil(64)];
    let mut seen: HashSet<(Vec<u64>, Option<u64>)> = HashSet::new();
    let mut stack: Vec<(usize, Option<u64>)> = Vec::new();
    let mut state: Option<u64> = None;
    let mut node = list.next[0];
    while list.next[0] != END {
        if node == END {
            return Some(false);
        }
        let ev = list.events[node];
        if ev.is_call {
            let (word, bit) = (ev.op / 64, 1u64 << (ev.op % 64));
            if let Some(next_state) = step(state, ops[ev.op].kind) {
                linearized[word] |= bit;
                if seen.insert((linearized.clone(), next_state)) {
                    if seen.len() > max_states {
                        return None;
                    }
                    stack.push((node, state));
                    state = next_state;
                    list.lift(node);
                    node = list.next[0];
                    continue;
                }
                linearized[word] &= !bit;
            }
            node = list.next[node];
        } else {
            // A return with its call not yet linearized: undo the last choice.
            let Some((call, old_state)) = stack.pop() else {
                return Some(false);
            };
            let op = list.events[call].op;
            linearized[op / 64] &= !(1u64 << (op % 64));
            state = old_state;
            list.unlift(call);
            node = list.next[call];
        }
    }
    Some(true)
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

    #[test]
    fn read_of_a_value_never_written_is_a_violation() {
        let h = [put(1, 0, Some(1)), get(Some(9), 2, 3)];
        assert_eq!(check(&h), Verdict::Violation { key: 0 });
    }

    #[test]
    fn long_sequential_history_of_thousands_of_ops_per_key_is_checked() {
        let mut h = Vec::new();
        for i in 0..5_000u64 {
            h.push(put(i, 4 * i, Some(4 * i + 1)));
            h.push(get(Some(i), 4 * i + 2, 4 * i + 3));
        }
        assert_eq!(check(&h), Verdict::Linearizable);
        h.push(get(Some(3), 1 << 40, (1 << 40) + 1));
        assert_eq!(check(&h), Verdict::Violation { key: 0 });
    }

    fn cas(expect: Option<u64>, value: u64, outcome: Option<CasOutcome>, call: u64) -> Op {
        Op {
            key: 0,
            kind: OpKind::Cas {
                expect,
                value,
                outcome,
            },
            call,
            ret: outcome.map(|_| call + 1),
        }
    }

    #[test]
    fn transactions_follow_their_compare() {
        use CasOutcome::{Failed, Swapped};
        // (history, verdict)
        let table: Vec<(Vec<Op>, bool)> = vec![
            // Swap from absent, then from the swapped value.
            (
                vec![
                    cas(None, 1, Some(Swapped), 0),
                    cas(Some(1), 2, Some(Swapped), 2),
                ],
                true,
            ),
            (
                vec![cas(None, 1, Some(Swapped), 0), get(Some(1), 2, 3)],
                true,
            ),
            // Two swaps from the same value, one after the other: lost update.
            (
                vec![
                    put(1, 0, Some(1)),
                    cas(Some(1), 2, Some(Swapped), 2),
                    cas(Some(1), 3, Some(Swapped), 4),
                ],
                false,
            ),
            // A failed compare must read the value that made it fail.
            (
                vec![
                    put(1, 0, Some(1)),
                    cas(Some(7), 2, Some(Failed { observed: Some(1) }), 2),
                ],
                true,
            ),
            (
                vec![
                    put(1, 0, Some(1)),
                    cas(Some(7), 2, Some(Failed { observed: None }), 2),
                ],
                false,
            ),
            // A compare that should have held must not fail.
            (
                vec![
                    put(1, 0, Some(1)),
                    cas(Some(1), 2, Some(Failed { observed: Some(1) }), 2),
                ],
                false,
            ),
            // An unanswered transaction may have swapped, or not.
            (
                vec![
                    put(1, 0, Some(1)),
                    cas(Some(1), 2, None, 2),
                    get(Some(2), 5, 6),
                ],
                true,
            ),
            (
                vec![
                    put(1, 0, Some(1)),
                    cas(Some(1), 2, None, 2),
                    get(Some(1), 5, 6),
                ],
                true,
            ),
            // ... but never swap from a value the key did not hold.
            (
                vec![
                    put(1, 0, Some(1)),
                    cas(Some(9), 2, None, 2),
                    get(Some(2), 5, 6),
                ],
                false,
            ),
        ];
        for (i, (h, ok)) in table.into_iter().enumerate() {
            let want = if ok {
                Verdict::Linearizable
            } else {
                Verdict::Violation { key: 0 }
            };
            assert_eq!(check(&h), want, "row {i}");
        }
    }

    #[test]
    fn keys_are_checked_independently() {
        let mut other = put(7, 0, Some(1));
        other.key = 1;
        let h = [put(1, 0, Some(1)), other, get(Some(1), 2, 3)];
        assert_eq!(check(&h), Verdict::Linearizable);
    }
}
