//! The leader's view of each peer's replication (etcd's `tracker`).

use std::collections::VecDeque;

/// How the leader currently sends entries to a peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProgressState {
    /// The match point is unknown: send one Append at a time and wait for
    /// its answer (or a heartbeat response) before sending another.
    Probe,
    /// The peer is known to match: stream Appends optimistically within the
    /// in-flight window.
    Replicate,
    /// A snapshot is being streamed by the node; send nothing until
    /// `report_snapshot` or an acknowledgement past the snapshot.
    Snapshot,
}

/// The in-flight Append window for one peer, bounded by message count and
/// entry bytes.
#[derive(Debug, Clone)]
pub struct Inflights {
    /// `(last index carried, entry bytes)` per unacknowledged Append, oldest first.
    queue: VecDeque<(u64, usize)>,
    /// Sum of the bytes in `queue`.
    bytes: usize,
    /// Bound on `queue.len()` (`Config::max_inflight_msgs`).
    max_msgs: usize,
    /// Bound on `bytes` (`Config::max_inflight_bytes`).
    max_bytes: usize,
}

impl Inflights {
    /// An empty window with the given bounds.
    pub fn new(max_msgs: usize, max_bytes: usize) -> Self {
        Inflights {
            queue: VecDeque::new(),
            bytes: 0,
            max_msgs,
            max_bytes,
        }
    }

    /// Whether another Append must wait for acknowledgements.
    pub fn full(&self) -> bool {
        self.queue.len() >= self.max_msgs || self.bytes >= self.max_bytes
    }

    /// Records an Append ending at `last_index` carrying `bytes`.
    pub fn add(&mut self, last_index: u64, bytes: usize) {
        self.queue.push_back((last_index, bytes));
        self.bytes += bytes;
    }

    /// Frees every Append acknowledged by a match at `index`.
    pub fn free_le(&mut self, index: u64) {
        while let Some(&(last, bytes)) = self.queue.front() {
            if last > index {
                break;
            }
            self.queue.pop_front();
            self.bytes -= bytes;
        }
    }

    /// Frees the oldest slot: a heartbeat answer proves the peer is alive,
    /// so let one Append through even if earlier ones were lost.
    pub fn free_first_one(&mut self) {
        if let Some((_, bytes)) = self.queue.pop_front() {
            self.bytes -= bytes;
        }
    }

    /// Forgets everything (on a state change).
    pub fn reset(&mut self) {
        self.queue.clear();
        self.bytes = 0;
    }

    /// Number of unacknowledged Appends.
    #[cfg(test)]
    pub fn count(&self) -> usize {
        self.queue.len()
    }
}

/// Replication state of one peer.
#[derive(Debug, Clone)]
pub struct Progress {
    /// Highest index known to be replicated on the peer.
    pub match_index: u64,
    /// Next index to send.
    pub next_index: u64,
    /// Current send mode.
    pub state: ProgressState,
    /// In Probe: an Append is outstanding, wait before sending another.
    pub probe_sent: bool,
    /// In Snapshot: the index of the snapshot being sent.
    pub pending_snapshot: u64,
    /// Heard from since the last CheckQuorum round.
    pub recent_active: bool,
    /// Learners receive the log but do not vote or count toward commit.
    pub learner: bool,
    /// Pipelining window.
    pub inflights: Inflights,
}

impl Progress {
    /// A peer in Probe state starting at `next_index`.
    pub fn new(next_index: u64, learner: bool, max_msgs: usize, max_bytes: usize) -> Self {
        Progress {
            match_index: 0,
            next_index,
            state: ProgressState::Probe,
            probe_sent: false,
            pending_snapshot: 0,
            recent_active: false,
            learner,
            inflights: Inflights::new(max_msgs, max_bytes),
        }
    }

    fn reset_state(&mut self, state: ProgressState) {
        self.state = state;
        self.probe_sent = false;
        self.pending_snapshot = 0;
        self.inflights.reset();
    }

    /// Back to probing from just past the match (or past a finished snapshot).
    pub fn become_probe(&mut self) {
        let after_snapshot = if self.state == ProgressState::Snapshot {
            self.pending_snapshot + 1
        } else {
            0
        };
        self.reset_state(ProgressState::Probe);
        self.next_index = (self.match_index + 1).max(after_snapshot);
    }

    /// Start streaming after the match point.
    pub fn become_replicate(&mut self) {
        self.reset_state(ProgressState::Replicate);
        self.next_index = self.match_index + 1;
    }

    /// Wait for a snapshot at `index` to be delivered.
    pub fn become_snapshot(&mut self, index: u64) {
        self.reset_state(ProgressState::Snapshot);
        self.pending_snapshot = index;
    }

    /// Records an acknowledgement of `index`; `true` if the match advanced.
    pub fn maybe_update(&mut self, index: u64) -> bool {
        let updated = self.match_index < index;
        if updated {
            self.match_index = index;
            self.probe_sent = false;
        }
        self.next_index = self.next_index.max(index + 1);
        updated
    }

    /// Handles a rejection of the Append whose previous index was `rejected`,
    /// with the follower's hint `match_hint`. Returns `false` for stale
    /// rejections (answers to Appends sent before the state changed).
    pub fn maybe_decr_to(&mut self, rejected: u64, match_hint: u64) -> bool {
        if self.state == ProgressState::Replicate {
            if rejected <= self.match_index {
                return false;
            }
            self.next_index = self.match_index + 1;
            return true;
        }
        if self.next_index.saturating_sub(1) != rejected {
            return false;
        }
        self.next_index = rejected
            .min(match_hint.saturating_add(1))
            .max(self.match_index + 1);
        self.probe_sent = false;
        true
    }

    /// Whether sending must wait.
    pub fn is_paused(&self) -> bool {
        match self.state {
            ProgressState::Probe => self.probe_sent,
            ProgressState::Replicate => self.inflights.full(),
            ProgressState::Snapshot => true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inflight_window_is_bounded_by_count_and_bytes() {
        let mut w = Inflights::new(2, 100);
        w.add(5, 10);
        assert!(!w.full());
        w.add(9, 10);
        assert!(w.full(), "count bound");
        w.free_le(5);
        assert!(!w.full());
        w.add(12, 200);
        assert!(w.full(), "byte bound");
        w.free_le(100);
        assert_eq!(w.count(), 0);
    }

    #[test]
    fn stale_rejections_are_ignored_and_probe_backs_off_to_hint() {
        let mut p = Progress::new(11, false, 4, 1 << 20);
        assert!(
            !p.maybe_decr_to(5, 0),
            "probe rejection for a different index is stale"
        );
        assert!(p.maybe_decr_to(10, 3));
        assert_eq!(p.next_index, 4);
        p.maybe_update(3);
        p.become_replicate();
        assert!(
            !p.maybe_decr_to(2, 0),
            "replicate rejection at/below match is stale"
        );
        assert!(p.maybe_decr_to(7, 0));
        assert_eq!(p.next_index, 4);
    }
}
