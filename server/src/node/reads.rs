//! Linearizable reads (Raft §6.4 ReadIndex), batched: every read that
//! arrives while no ReadIndex request is outstanding joins the next batch,
//! one `read_index(ctx)` covers the whole batch, and the batch is answered
//! once the state machine has applied the returned index.
//!
//! Contexts are unique across restarts: the high 32 bits are a random
//! per-process incarnation, so a late ReadIndexResp meant for a previous
//! incarnation of this node never matches a batch of this one (numbering
//! from 1 in every process would let an old reply confirm a new read at an
//! old index: a stale read).

use std::collections::BTreeMap;

use tokio::sync::oneshot;
use tokio::time::{Duration, Instant};

use super::{NodeError, ReadQuery, ReadResult};

/// A read waiting for its answer.
#[derive(Debug)]
pub struct PendingRead {
    /// What to read.
    pub query: ReadQuery,
    /// Where the answer goes.
    pub reply: oneshot::Sender<Result<ReadResult, NodeError>>,
    /// Index of the last write this node proposed before the read arrived:
    /// a client that pipelines `SET k` then `GET k` must see its own write.
    pub min_index: u64,
}

/// A batch sent to the core and not yet confirmed.
#[derive(Debug)]
struct Inflight {
    /// Reads covered by this request.
    reads: Vec<PendingRead>,
    /// When the request was (last) issued.
    issued: Instant,
}

/// Bookkeeping for ReadIndex batches.
#[derive(Debug)]
pub struct ReadQueue {
    /// Reads not yet covered by a ReadIndex request.
    waiting: Vec<PendingRead>,
    /// Requests sent to the core, by context (ordered, so re-issue order is
    /// deterministic, which the replica simulator relies on).
    inflight: BTreeMap<u64, Inflight>,
    /// Confirmed batches waiting for `applied >= index`.
    confirmed: BTreeMap<u64, Vec<PendingRead>>,
    /// Reads in `confirmed` (they count against the bound too).
    confirmed_reads: usize,
    /// Last context handed out: incarnation in the high 32 bits, a counter
    /// in the low 32 bits.
    next_ctx: u64,
}

/// A random incarnation number for this process (OS-seeded).
pub fn random_incarnation() -> u32 {
    (super::identity::random_id() >> 32) as u32
}

/// Encodes a batch context for `read_index`.
pub fn ctx_bytes(ctx: u64) -> Vec<u8> {
    ctx.to_le_bytes().to_vec()
}

fn ctx_from_bytes(b: &[u8]) -> Option<u64> {
    Some(u64::from_le_bytes(b.try_into().ok()?))
}

impl ReadQueue {
    /// An empty queue whose contexts start in `incarnation`'s range; pass
    /// [`random_incarnation`] so each process start gets its own range.
    pub fn new(incarnation: u32) -> Self {
        ReadQueue {
            waiting: Vec::new(),
            inflight: BTreeMap::new(),
            confirmed: BTreeMap::new(),
            confirmed_reads: 0,
            next_ctx: u64::from(incarnation) << 32,
        }
    }

    /// Queues a read for the next batch.
    pub fn push(&mut self, read: PendingRead) {
        self.waiting.push(read);
    }

    /// Reads queued, in flight or waiting for apply (for bounding).
    pub fn len(&self) -> usize {
        self.waiting.len()
            + self.inflight.values().map(|i| i.reads.len()).sum::<usize>()
            + self.confirmed_reads
    }

    /// Whether nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.len() == 0 && self.confirmed.is_empty()
    }

    /// Takes the waiting reads as a new batch if none is in flight;
    /// returns the context to pass to `read_index`.
    pub fn start_batch(&mut self, now: Instant) -> Option<u64> {
        if self.waiting.is_empty() || !self.inflight.is_empty() {
            return None;
        }
        self.next_ctx = self.next_ctx.wrapping_add(1);
        let reads = std::mem::take(&mut self.waiting);
        self.inflight
            .insert(self.next_ctx, Inflight { reads, issued: now });
        Some(self.next_ctx)
    }

    /// The core could not take the request: put the batch back.
    pub fn abort_batch(&mut self, ctx: u64) {
        if let Some(mut i) = self.inflight.remove(&ctx) {
            i.reads.append(&mut self.waiting);
            self.waiting = i.reads;
        }
    }

    /// The core confirmed `ctx` at `index`.
    pub fn confirm(&mut self, ctx: &[u8], index: u64) {
        let Some(i) = ctx_from_bytes(ctx).and_then(|c| self.inflight.remove(&c)) else {
            return;
        };
        self.confirmed_reads += i.reads.len();
        for r in i.reads {
            self.confirmed
                .entry(index.max(r.min_index))
                .or_default()
                .push(r);
        }
    }

    /// Removes every confirmed read whose index is applied.
    pub fn take_ready(&mut self, applied: u64) -> Vec<(u64, PendingRead)> {
        let later = self.confirmed.split_off(&(applied + 1));
        let ready = std::mem::replace(&mut self.confirmed, later);
        let taken: usize = ready.values().map(Vec::len).sum();
        self.confirmed_reads = self.confirmed_reads.saturating_sub(taken);
        ready
            .into_iter()
            .flat_map(|(idx, reads)| reads.into_iter().map(move |r| (idx, r)))
            .collect()
    }

    /// In-flight batches older than `retry_after` (or all of them when
    /// `all`) are moved back to waiting so they are re-issued, e.g. after a
    /// leader change lost the request. Reads older than `give_up_after` fail.
    pub fn retry_stale(&mut self, now: Instant, retry_after: Duration, all: bool) {
        let stale: Vec<u64> = self
            .inflight
            .iter()
            .filter(|(_, i)| all || now.duration_since(i.issued) >= retry_after)
            .map(|(c, _)| *c)
            .collect();
        for ctx in stale {
            self.abort_batch(ctx);
        }
    }

    /// Fails every queued and in-flight read (shutdown, removed from cluster).
    pub fn fail_all(&mut self, err: &NodeError) {
        let inflight = std::mem::take(&mut self.inflight)
            .into_values()
            .flat_map(|i| i.reads);
        let confirmed = std::mem::take(&mut self.confirmed).into_values().flatten();
        self.confirmed_reads = 0;
        for r in self.waiting.drain(..).chain(inflight).chain(confirmed) {
            let _ = r.reply.send(Err(err.clone()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn read() -> (
        PendingRead,
        oneshot::Receiver<Result<ReadResult, NodeError>>,
    ) {
        let (tx, rx) = oneshot::channel();
        (
            PendingRead {
                query: ReadQuery::Get(Bytes::from_static(b"k")),
                reply: tx,
                min_index: 0,
            },
            rx,
        )
    }

    #[test]
    fn reads_are_released_only_once_applied_reaches_the_read_index() {
        let mut q = ReadQueue::new(1);
        let now = Instant::now();
        q.push(read().0);
        q.push(read().0);
        let ctx = q.start_batch(now).expect("batch");
        q.push(read().0);
        assert_eq!(q.start_batch(now), None, "one batch in flight at a time");
        q.confirm(&ctx_bytes(ctx), 10);
        assert!(q.take_ready(9).is_empty());
        assert_eq!(q.take_ready(10).len(), 2);
        let ctx2 = q.start_batch(now).expect("second batch");
        assert_ne!(ctx, ctx2);
    }

    #[test]
    fn reads_waiting_for_apply_count_against_the_bound() {
        let mut q = ReadQueue::new(1);
        let now = Instant::now();
        q.push(read().0);
        q.push(read().0);
        let ctx = q.start_batch(now).expect("batch");
        q.confirm(&ctx_bytes(ctx), 10);
        assert_eq!(q.len(), 2, "confirmed but unapplied reads still count");
        assert_eq!(q.take_ready(10).len(), 2);
        assert_eq!(q.len(), 0);
    }

    #[test]
    fn lost_batches_are_reissued_and_unknown_contexts_ignored() {
        let mut q = ReadQueue::new(1);
        let now = Instant::now();
        q.push(read().0);
        let ctx = q.start_batch(now).expect("batch");
        q.confirm(&ctx_bytes(ctx + 7), 3);
        q.retry_stale(now, Duration::from_secs(1), true);
        let again = q.start_batch(now).expect("re-issued");
        q.confirm(&ctx_bytes(again), 5);
        assert_eq!(q.take_ready(5).len(), 1);
        assert!(q.is_empty());
    }

    /// Regression: a restarted node numbered its ReadIndex contexts
    /// from 1 again, so the leader's late reply to the previous process's
    /// context 1 (carrying an old read index) confirmed the new batch 1.
    #[test]
    fn late_read_index_reply_for_a_previous_incarnation_never_confirms_a_new_read() {
        let now = Instant::now();
        let mut before_crash = ReadQueue::new(random_incarnation());
        before_crash.push(read().0);
        let old_ctx = before_crash.start_batch(now).expect("batch");
        let mut after_restart = ReadQueue::new(random_incarnation());
        after_restart.push(read().0);
        let new_ctx = after_restart.start_batch(now).expect("batch");
        assert_ne!(old_ctx, new_ctx, "contexts repeat across incarnations");
        after_restart.confirm(&ctx_bytes(old_ctx), 3);
        assert!(
            after_restart.take_ready(u64::MAX - 1).is_empty(),
            "a reply meant for the previous incarnation confirmed a new read"
        );
        after_restart.confirm(&ctx_bytes(new_ctx), 7);
        assert_eq!(after_restart.take_ready(7).len(), 1);
    }
}
