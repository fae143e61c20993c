//! The runtime's proposals: client writes and membership changes waiting
//! for their entries to apply, by log index; writes this follower forwarded
//! to the leader, by nonce; and the index of the newest entry proposed
//! here. Owns its state; the runtime proposes to the core and reports
//! applied entries.

use std::collections::BTreeMap;
use tokio::time::Instant;

use tokio::sync::oneshot;

use super::handle::AdminReply;
use super::{NodeError, WriteResult, reason};

/// A write waiting for its entry to be applied.
pub(super) struct PendingWrite {
    /// Term the entry was proposed in; a different term at that index means
    /// the entry was replaced and the write did not happen.
    pub term: u64,
    /// Where the result goes.
    pub reply: oneshot::Sender<Result<WriteResult, NodeError>>,
    /// When the client handle queued it.
    pub received: Instant,
}

/// A membership change waiting to be applied.
pub(super) struct PendingConf {
    /// Proposal term.
    pub term: u64,
    /// Where the result goes.
    pub reply: oneshot::Sender<Result<AdminReply, NodeError>>,
}

/// A write this follower forwarded to its leader: nobody answers it, so
/// it completes when this node applies an entry tagged with its nonce, or
/// fails with an unknown outcome at `deadline`.
pub(super) struct ForwardedWrite {
    /// When to stop waiting.
    pub deadline: Instant,
    /// Where the result goes.
    pub reply: oneshot::Sender<Result<WriteResult, NodeError>>,
    /// When the client handle queued it.
    pub received: Instant,
}

/// Waiters for proposed entries.
pub(super) struct Proposals {
    /// Writes forwarded to the leader, by nonce.
    forwarded: BTreeMap<u64, ForwardedWrite>,
    /// The next nonce: starts at a random value each time the process
    /// starts, so an entry a previous incarnation forwarded (still in the
    /// log when this one applies it) never matches a new waiter.
    next_nonce: u64,
    /// Writes waiting for apply, by log index.
    writes: BTreeMap<u64, PendingWrite>,
    /// Membership changes waiting for apply, by log index.
    conf: BTreeMap<u64, PendingConf>,
    /// Index of the newest write proposed here (see `PendingRead::min_index`).
    last_proposed: u64,
}

impl Proposals {
    /// Nothing proposed yet; forwarded-write nonces start from `nonce_seed`
    /// (random per start, see [`random_u64`]).
    pub(super) fn new(nonce_seed: u64) -> Self {
        Proposals {
            forwarded: BTreeMap::new(),
            next_nonce: nonce_seed >> 1,
            writes: BTreeMap::new(),
            conf: BTreeMap::new(),
            last_proposed: 0,
        }
    }

    /// A client write went into the log at `index`.
    pub(super) fn write_proposed(&mut self, index: u64, w: PendingWrite) {
        self.last_proposed = index;
        self.writes.insert(index, w);
    }

    /// An entry nobody waits for (an expiry revoke) went into the log.
    pub(super) fn entry_proposed(&mut self, index: u64) {
        self.last_proposed = index;
    }

    /// A membership change went into the log at `index`.
    pub(super) fn conf_proposed(&mut self, index: u64, c: PendingConf) {
        self.conf.insert(index, c);
    }

    /// A nonce no other forwarded write of this process has.
    pub(super) fn next_nonce(&mut self) -> u64 {
        self.next_nonce = self.next_nonce.wrapping_add(1);
        self.next_nonce
    }

    /// Writes forwarded and not yet answered.
    pub(super) fn forwarded_len(&self) -> usize {
        self.forwarded.len()
    }

    /// A client write went to the leader tagged with `nonce`.
    pub(super) fn write_forwarded(&mut self, nonce: u64, w: ForwardedWrite) {
        self.forwarded.insert(nonce, w);
    }

    /// The forwarded write tagged `nonce` applied here with `outcome`.
    pub(super) fn answer_forwarded(
        &mut self,
        nonce: u64,
        outcome: &Result<WriteResult, NodeError>,
    ) {
        if let Some(w) = self.forwarded.remove(&nonce) {
            let _ = w.reply.send(outcome.clone());
        }
    }

    /// Fails forwarded writes past their deadline (or all of them, with
    /// `now` = `None`) with `err`: their outcome is unknown.
    pub(super) fn expire_forwarded(&mut self, now: Option<Instant>, err: &NodeError) {
        let due: Vec<u64> = self
            .forwarded
            .iter()
            .filter(|(_, w)| now.is_none_or(|t| w.deadline <= t))
            .map(|(&n, _)| n)
            .collect();
        for nonce in due {
            if let Some(w) = self.forwarded.remove(&nonce) {
                let _ = w.reply.send(Err(err.clone()));
            }
        }
    }

    /// When the writes proposed here at indexes in `range` were queued.
    pub(super) fn local_received(
        &self,
        range: std::ops::RangeInclusive<u64>,
    ) -> impl Iterator<Item = Instant> + '_ {
        self.writes.range(range).map(|(_, w)| w.received)
    }

    /// When the forwarded write tagged `nonce` was queued, if it waits.
    pub(super) fn forwarded_received(&self, nonce: u64) -> Option<Instant> {
        self.forwarded.get(&nonce).map(|w| w.received)
    }

    /// Index of the newest write proposed here.
    pub(super) fn last_proposed(&self) -> u64 {
        self.last_proposed
    }

    /// Whether no write (proposed or forwarded) waits for apply.
    pub(super) fn no_writes(&self) -> bool {
        self.writes.is_empty() && self.forwarded.is_empty()
    }

    /// The membership change waiting at `index`, if any.
    pub(super) fn take_conf(&mut self, index: u64) -> Option<PendingConf> {
        self.conf.remove(&index)
    }

    /// The entry at `index` (of `term`) applied with `outcome`: its writer
    /// gets it; writes proposed at lower indexes whose entries were replaced
    /// never reach here with their own term, so they are dropped as failed.
    pub(super) fn answer_writes(
        &mut self,
        index: u64,
        term: u64,
        outcome: &Result<WriteResult, NodeError>,
    ) {
        while let Some(entry) = self.writes.first_entry() {
            if *entry.key() > index {
                break;
            }
            let (at, w) = entry.remove_entry();
            let result = if at == index && w.term == term {
                outcome.clone()
            } else {
                Err(NodeError::unavailable(reason::OVERWRITTEN))
            };
            let _ = w.reply.send(result);
        }
    }

    /// Fails every write proposed here and membership change with `err`
    /// (forwarded writes may still commit under the new leader; they wait).
    pub(super) fn fail_all(&mut self, err: &NodeError) {
        for (_, w) in std::mem::take(&mut self.writes) {
            let _ = w.reply.send(Err(err.clone()));
        }
        for (_, c) in std::mem::take(&mut self.conf) {
            let _ = c.reply.send(Err(err.clone()));
        }
    }
}

/// A random 64-bit value from the standard library's per-process hash
/// keys (no RNG dependency for one number per start).
pub(super) fn random_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok() -> WriteResult {
        WriteResult {
            succeeded: true,
            version: 1,
            existed: false,
            header: Default::default(),
            txn: None,
            lease: None,
        }
    }

    type Rx = oneshot::Receiver<Result<WriteResult, NodeError>>;

    fn propose(p: &mut Proposals, index: u64, term: u64) -> Rx {
        let (reply, rx) = oneshot::channel();
        let received = Instant::now();
        p.write_proposed(
            index,
            PendingWrite {
                term,
                reply,
                received,
            },
        );
        rx
    }

    /// The writer of an applied entry gets its outcome; a lower write whose
    /// entry was replaced is failed as overwritten, as is one at the same
    /// index from another term; higher ones keep waiting until failed.
    #[test]
    fn applied_entries_answer_their_writers_and_replaced_ones_fail() {
        let mut p = Proposals::new(0);
        let mut replaced = propose(&mut p, 3, 1);
        let mut other_term = propose(&mut p, 4, 1);
        let mut later = propose(&mut p, 5, 2);
        assert_eq!(p.last_proposed(), 5);
        p.answer_writes(4, 2, &Ok(ok()));
        let overwritten = Err(NodeError::unavailable(reason::OVERWRITTEN));
        assert_eq!(replaced.try_recv().ok(), Some(overwritten.clone()));
        assert_eq!(other_term.try_recv().ok(), Some(overwritten));
        assert!(later.try_recv().is_err() && !p.no_writes());

        let mut mine = propose(&mut p, 6, 2);
        p.answer_writes(6, 2, &Ok(ok()));
        assert_eq!(mine.try_recv().ok(), Some(Ok(ok())));
        assert_eq!(
            later.try_recv().ok(),
            Some(Err(NodeError::unavailable(reason::OVERWRITTEN)))
        );
        assert!(p.no_writes());

        let mut pending = propose(&mut p, 7, 2);
        let err = NodeError::unavailable(reason::LEADERSHIP_LOST);
        p.fail_all(&err);
        assert_eq!(pending.try_recv().ok(), Some(Err(err)));
        p.entry_proposed(9);
        assert_eq!(p.last_proposed(), 9);
    }

    /// A forwarded write completes when its nonce is applied here, fails
    /// with an unknown outcome past its deadline, and survives a leadership
    /// loss (it may still commit under the new leader).
    #[test]
    fn forwarded_writes_complete_by_nonce_and_expire_at_their_deadline() {
        let mut p = Proposals::new(0);
        let now = Instant::now();
        let forward = |p: &mut Proposals, secs| {
            let (reply, rx) = oneshot::channel();
            let nonce = p.next_nonce();
            let deadline = now + std::time::Duration::from_secs(secs);
            let received = Instant::now();
            let w = ForwardedWrite {
                deadline,
                reply,
                received,
            };
            p.write_forwarded(nonce, w);
            (nonce, rx)
        };
        let (a, mut rx_a) = forward(&mut p, 1);
        let (b, mut rx_b) = forward(&mut p, 5);
        assert_ne!(a, b);
        p.fail_all(&NodeError::unavailable(reason::LEADERSHIP_LOST));
        assert!(rx_a.try_recv().is_err() && !p.no_writes());
        p.answer_forwarded(b, &Ok(ok()));
        assert_eq!(rx_b.try_recv().ok(), Some(Ok(ok())));
        p.answer_forwarded(b, &Ok(ok()));
        let unknown = NodeError::unavailable(reason::TIMED_OUT);
        p.expire_forwarded(Some(now), &unknown);
        assert!(rx_a.try_recv().is_err());
        p.expire_forwarded(Some(now + std::time::Duration::from_secs(1)), &unknown);
        assert_eq!(rx_a.try_recv().ok(), Some(Err(unknown)));
        assert!(p.no_writes() && p.forwarded_len() == 0);
    }
}
