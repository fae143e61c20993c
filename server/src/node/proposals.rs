//! The runtime's proposals: client writes and membership changes waiting
//! for their entries to apply, by log index, and the index of the newest
//! entry proposed here. Owns its state; the runtime proposes to the core
//! and reports applied entries.

use std::collections::BTreeMap;

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
}

/// A membership change waiting to be applied.
pub(super) struct PendingConf {
    /// Proposal term.
    pub term: u64,
    /// Where the result goes.
    pub reply: oneshot::Sender<Result<AdminReply, NodeError>>,
}

/// Waiters for proposed entries.
pub(super) struct Proposals {
    /// Writes waiting for apply, by log index.
    writes: BTreeMap<u64, PendingWrite>,
    /// Membership changes waiting for apply, by log index.
    conf: BTreeMap<u64, PendingConf>,
    /// Index of the newest write proposed here (see `PendingRead::min_index`).
    last_proposed: u64,
}

impl Proposals {
    /// Nothing proposed yet.
    pub(super) fn new() -> Self {
        Proposals {
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

    /// Index of the newest write proposed here.
    pub(super) fn last_proposed(&self) -> u64 {
        self.last_proposed
    }

    /// Whether no write waits for apply.
    pub(super) fn no_writes(&self) -> bool {
        self.writes.is_empty()
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

    /// Fails every waiting write and membership change with `err`.
    pub(super) fn fail_all(&mut self, err: &NodeError) {
        for (_, w) in std::mem::take(&mut self.writes) {
            let _ = w.reply.send(Err(err.clone()));
        }
        for (_, c) in std::mem::take(&mut self.conf) {
            let _ = c.reply.send(Err(err.clone()));
        }
    }
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
        p.write_proposed(index, PendingWrite { term, reply });
        rx
    }

    /// The writer of an applied entry gets its outcome; a lower write whose
    /// entry was replaced is failed as overwritten, as is one at the same
    /// index from another term; higher ones keep waiting until failed.
    #[test]
    fn applied_entries_answer_their_writers_and_replaced_ones_fail() {
        let mut p = Proposals::new();
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
}
