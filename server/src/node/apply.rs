//! Proposing writes and applying committed entries: the bridge between the
//! core's log and the state machine, and the place where waiting clients get
//! their answers.

use std::collections::BTreeMap;

use tokio::sync::oneshot;
use tokio::time::Instant;

use super::lease_clock::min_ttl_s;
use super::proposals::{ForwardedWrite, PendingWrite};
use super::reads::PendingRead;
use super::runtime::Runtime;
use super::store::{self as adapter, StorageFailure};
use super::{
    Header, KvEntry, LeaseAnswer, LeaseQuery, LeaseResult, Member, NodeError, ReadAnswer,
    ReadQuery, ReadResult, WriteOp, WriteResult, reason,
};
use crate::metrics::{Stage, WritePath};
use crate::raft::{Entry, EntryKind, NodeId, RaftError, Role};
use crate::storage::Command;
use crate::storage::mvcc::MvccError;
use crate::storage::mvcc_codec::{ProposerTag, lease_command};

/// Most writes a follower has forwarded and not yet seen applied; more
/// are refused as overloaded (never proposed).
pub const MAX_FORWARDED_WRITES: usize = 16_384;
/// How long a follower waits to apply a write it forwarded before failing
/// it with an unknown outcome (the leader may have dropped it, or may yet
/// commit it).
pub const FORWARDED_WRITE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

impl Runtime {
    /// Proposes a client write; the reply waits in `proposals`. With
    /// `forward`, a follower that knows its leader forwards it there.
    pub(super) fn propose_write(
        &mut self,
        op: WriteOp,
        forward: bool,
        reply: oneshot::Sender<Result<WriteResult, NodeError>>,
        received: Instant,
    ) {
        let op = self.choose_lease(op);
        let data = adapter::encode_write(&op);
        if forward && self.role != Role::Leader && self.leader != 0 {
            return self.forward_write(&data, reply, received);
        }
        match self.raw.propose(data) {
            Ok((index, term)) => {
                self.metrics
                    .observe_stage(Stage::queued, WritePath::local, received);
                let w = PendingWrite {
                    term,
                    reply,
                    received,
                };
                self.proposals.write_proposed(index, w);
            }
            Err(e) => {
                let _ = reply.send(Err(self.proposal_error(e)));
            }
        }
    }

    /// Sends a write to the leader inside Raft, tagged so this node knows
    /// the entry when it applies it; bounded by [`MAX_FORWARDED_WRITES`].
    fn forward_write(
        &mut self,
        data: &[u8],
        reply: oneshot::Sender<Result<WriteResult, NodeError>>,
        received: Instant,
    ) {
        if self.proposals.forwarded_len() >= MAX_FORWARDED_WRITES {
            let _ = reply.send(Err(NodeError::unavailable(reason::OVERLOADED)));
            return;
        }
        let tag = ProposerTag {
            node: self.identity.id,
            nonce: self.proposals.next_nonce(),
        };
        match self.raw.forward(vec![tag.wrap(data)]) {
            Ok(()) => {
                self.metrics
                    .observe_stage(Stage::queued, WritePath::forwarded, received);
                let deadline = Instant::now() + FORWARDED_WRITE_TIMEOUT;
                let w = ForwardedWrite {
                    deadline,
                    reply,
                    received,
                };
                self.proposals.write_forwarded(tag.nonce, w);
            }
            Err(e) => {
                let _ = reply.send(Err(self.proposal_error(e)));
            }
        }
    }

    /// Maps a refused proposal to what the client sees.
    pub(super) fn proposal_error(&self, e: RaftError) -> NodeError {
        match e {
            RaftError::NotLeader { .. } => match self.member(self.leader) {
                Some(m) if self.leader != self.identity.id => NodeError::NotLeader {
                    client_addr: m.client_addr,
                    grpc_addr: m.grpc_addr,
                },
                _ => NodeError::unavailable(reason::NO_LEADER),
            },
            RaftError::TooManyUncommitted => NodeError::unavailable(reason::OVERLOADED),
            RaftError::TransferInProgress => NodeError::unavailable(reason::TRANSFERRING),
            RaftError::ConfChangePending => NodeError::unavailable(reason::MEMBERSHIP_CHANGE),
            RaftError::InvalidConfChange(s) => NodeError::Invalid(s),
            other => NodeError::Unavailable(other.to_string()),
        }
    }

    /// Applies one committed entry and answers whoever waits for it. The
    /// core hands out committed entries exactly once and in order, starting
    /// after what the state machine had applied; anything else means the
    /// core and the state machine disagree, and the node stops.
    pub(super) fn apply_entry(&mut self, e: &Entry) -> Result<(), StorageFailure> {
        let index = e.index;
        let term = e.term;
        let kind = e.kind;
        if index != self.applied + 1 {
            return Err(StorageFailure(format!(
                "internal invariant broken: committed entry {index} handed out with {} applied",
                self.applied
            )));
        }
        // Written by this node's forwarding: answered here once applied.
        let mine = ProposerTag::of(&e.data).filter(|tag| tag.node == self.identity.id);
        let waiter = self.write_waiter(index, mine);
        if let Some((path, received)) = waiter {
            self.metrics.observe_stage(Stage::committed, path, received);
        }
        let outcome = adapter::apply(&mut self.sm, e).map(|mut w| {
            w.header = self.header(w.header.revision, term);
            w
        });
        if let Err(NodeError::Mvcc(MvccError::ValueUnreadable)) = outcome {
            // Another member applied this entry from intact bytes: going on
            // would diverge from it. Stop; a restart rebuilds the value log.
            return Err(StorageFailure(format!(
                "entry {index} needs a value the value log cannot return"
            )));
        }
        self.applied = index;
        if kind == EntryKind::Normal {
            self.follow_lease_entry(&e.data);
        }
        if kind == EntryKind::ConfChange {
            self.sync_peers_from_directory();
            self.answer_conf(index, term);
        }
        if let Some(tag) = mine {
            self.proposals.answer_forwarded(tag.nonce, &outcome);
        }
        self.proposals.answer_writes(index, term, &outcome);
        if let Some((path, received)) = waiter {
            self.metrics.observe_stage(Stage::applied, path, received);
        }
        Ok(())
    }

    /// Who waits for the entry at `index` on this node, for the
    /// write-stage histograms: a local proposal or a write this node
    /// forwarded (`mine`), with when it was queued.
    fn write_waiter(&self, index: u64, mine: Option<ProposerTag>) -> Option<(WritePath, Instant)> {
        if let Some(received) = self.proposals.local_received(index..=index).next() {
            return Some((WritePath::local, received));
        }
        let received = self.proposals.forwarded_received(mine?.nonce)?;
        Some((WritePath::forwarded, received))
    }

    fn answer_conf(&mut self, index: u64, term: u64) {
        let Some(c) = self.proposals.take_conf(index) else {
            return;
        };
        let result = if c.term == term {
            Ok(super::handle::AdminReply::Membership(
                self.member_statuses(),
                index,
            ))
        } else {
            Err(NodeError::Unavailable(
                "membership change was overwritten".into(),
            ))
        };
        let _ = c.reply.send(result);
    }

    /// Answers a read from the current state machine.
    pub(super) fn answer_read(&self, read_index: u64, read: PendingRead) {
        let answer = match read.query {
            ReadQuery::Get(key) => adapter::get(&self.sm, &key).map(ReadAnswer::Get),
            ReadQuery::Range {
                start,
                end,
                limit,
                max_bytes,
            } => adapter::range(&self.sm, &start, &end, (limit, max_bytes))
                .map(|(kvs, more): (Vec<KvEntry>, bool)| ReadAnswer::Range(kvs, more)),
            ReadQuery::Etcd(req) => Ok(ReadAnswer::Etcd(super::RangeAt::new(
                self.sm.kv().clone(),
                req,
            ))),
            ReadQuery::EtcdStats => Ok(ReadAnswer::EtcdStats(self.sm.kv().stats())),
            ReadQuery::EtcdSnapshot => {
                let meta = super::snapshot::snapshot_meta_at(&self.raw, self.applied);
                let view = self.sm.snapshot_view();
                Ok(ReadAnswer::EtcdSnapshot(super::SnapshotAt::new(view, meta)))
            }
            ReadQuery::EtcdEvents(q) => {
                let kv = self.sm.kv();
                let batch = kv.events(&q.key, &q.range_end, q.from, q.prev_kv, q.max_events);
                Ok(ReadAnswer::EtcdEvents(batch, kv.compact_revision()))
            }
        };
        let answer = match answer {
            Ok(answer) => answer,
            Err(e) => {
                let _ = read.reply.send(Err(NodeError::Mvcc(e)));
                return;
            }
        };
        // The etcd header's term; titan.v1/TCP reads do not pay for it.
        let etcd = !matches!(answer, ReadAnswer::Get(_) | ReadAnswer::Range(..));
        let term = if etcd { self.raw.status().term } else { 0 };
        let _ = read.reply.send(Ok(ReadResult {
            answer,
            read_index: read_index.max(self.applied),
            header: self.header(self.sm.kv().revision(), term),
        }));
    }

    /// A grant as proposed: id 0 becomes a fresh id (member prefix plus a
    /// counter, chosen here before proposing so every replica applies the
    /// same id) and a TTL below the minimum is raised to it, as etcd does.
    fn choose_lease(&mut self, op: WriteOp) -> WriteOp {
        let WriteOp::LeaseGrant { id, ttl_s } = op else {
            return op;
        };
        let kv = self.sm.kv();
        let id = match id {
            0 => self.lease_clock.next_id(|id| kv.lease(id).is_some()),
            id => id,
        };
        let min = min_ttl_s(self.cfg.tick * self.cfg.election_ticks);
        WriteOp::LeaseGrant {
            id,
            ttl_s: ttl_s.max(min),
        }
    }

    /// Keeps the lease clock in step with applied grants and revokes.
    fn follow_lease_entry(&mut self, data: &[u8]) {
        match lease_command(data) {
            Some(Command::LeaseGrant { id, .. }) => {
                if let Some(l) = self.sm.kv().lease(id) {
                    let ttl_s = l.ttl_s;
                    self.lease_clock.granted(id, ttl_s, Instant::now());
                }
            }
            Some(Command::LeaseRevoke(id)) => self.lease_clock.revoked(id),
            _ => {}
        }
    }

    /// Leadership changed: a new leader gives every lease a full TTL; a node
    /// that stopped leading forgets its deadlines.
    pub(super) fn on_lease_role(&mut self, was_leader: bool, is_leader: bool) {
        if is_leader && !was_leader {
            let leases = self.sm.kv().leases().map(|(id, l)| (id, l.ttl_s));
            self.lease_clock.promote(leases, Instant::now());
        } else if was_leader && !is_leader {
            self.lease_clock.demote();
        }
    }

    /// Leader only: proposes a revoke for each lease past its deadline
    /// (bounded by the clock). Nobody waits for these entries.
    pub(super) fn expire_leases(&mut self, now: Instant) {
        for id in self.lease_clock.expired(now) {
            let data = adapter::encode_write(&WriteOp::LeaseRevoke(id));
            match self.raw.propose(data) {
                Ok((index, _)) => self.proposals.entry_proposed(index),
                Err(e) => {
                    tracing::debug!(lease = id, error = %e, "expiry revoke refused; will retry");
                }
            }
        }
    }

    /// Answers a keep-alive or lease query from the leader's clock.
    pub(super) fn answer_lease(&mut self, query: LeaseQuery) -> Result<LeaseResult, NodeError> {
        if !self.lease_clock.is_active() {
            return Err(self.proposal_error(RaftError::NotLeader {
                leader: self.leader,
            }));
        }
        let now = Instant::now();
        let kv = self.sm.kv();
        let answer = match query {
            LeaseQuery::KeepAlive(id) => {
                let ttl_s = kv.lease(id).map_or(0, |l| l.ttl_s);
                let alive = ttl_s > 0 && self.lease_clock.refresh(id, ttl_s, now);
                LeaseAnswer::KeepAlive {
                    ttl_s: if alive { ttl_s } else { 0 },
                }
            }
            LeaseQuery::TimeToLive { id, keys } => match kv.lease(id) {
                Some(l) => LeaseAnswer::TimeToLive {
                    remaining_s: self.lease_clock.remaining_s(id, now).unwrap_or(l.ttl_s),
                    granted_ttl_s: l.ttl_s,
                    keys: if keys {
                        l.keys.iter().map(|k| k.to_vec()).collect()
                    } else {
                        Vec::new()
                    },
                },
                None => LeaseAnswer::TimeToLive {
                    remaining_s: -1,
                    granted_ttl_s: 0,
                    keys: Vec::new(),
                },
            },
            LeaseQuery::List => LeaseAnswer::List(kv.leases().map(|(id, _)| id).collect()),
        };
        let term = self.raw.status().term;
        Ok(LeaseResult {
            answer,
            header: self.header(self.sm.kv().revision(), term),
        })
    }

    /// The etcd response header for a request answered now.
    fn header(&self, revision: i64, raft_term: u64) -> Header {
        Header {
            cluster_id: super::cluster_id_u64(&self.identity.cluster_id),
            member_id: self.identity.id,
            revision,
            raft_term,
        }
    }

    /// The replicated member directory.
    pub(super) fn directory(&self) -> BTreeMap<NodeId, Member> {
        adapter::directory(&self.sm)
    }

    /// Makes the peer transport match the member directory.
    pub(super) fn sync_peers_from_directory(&mut self) {
        let dir = self.directory();
        let conf = self.raw.status().conf;
        let leader = self.leader;
        self.peers.sync(&dir, self.identity.id, |id| {
            conf.contains(id) || leader == id
        });
    }
}
