//! Proposing writes and applying committed entries: the bridge between the
//! core's log and the state machine, and the place where waiting clients get
//! their answers.

use std::collections::BTreeMap;

use tokio::sync::oneshot;

use super::reads::PendingRead;
use super::runtime::{PendingWrite, Runtime};
use super::store as adapter;
use super::{
    Header, KvEntry, Member, NodeError, ReadAnswer, ReadQuery, ReadResult, WriteOp, WriteResult,
    reason,
};
use crate::raft::{Entry, EntryKind, NodeId, RaftError};

impl Runtime {
    /// Proposes a client write; the reply waits in `pending_writes`.
    pub(super) fn propose_write(
        &mut self,
        op: WriteOp,
        reply: oneshot::Sender<Result<WriteResult, NodeError>>,
    ) {
        let data = adapter::encode_write(&op);
        match self.raw.propose(data) {
            Ok((index, term)) => {
                self.last_proposed = index;
                self.pending_writes
                    .insert(index, PendingWrite { term, reply });
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

    /// Applies one committed entry and answers whoever waits for it.
    pub(super) fn apply_entry(&mut self, e: &Entry) {
        let index = e.index;
        let term = e.term;
        let kind = e.kind;
        let outcome = adapter::apply(&mut self.sm, e).map(|mut w| {
            w.header = self.header(w.header.revision, term);
            w
        });
        self.applied = self.applied.max(index);
        if kind == EntryKind::ConfChange {
            self.sync_peers_from_directory();
            self.answer_conf(index, term);
        }
        // Writes proposed at lower indexes whose entries were replaced never
        // reach here with their own term; drop them as failed.
        while let Some(entry) = self.pending_writes.first_entry() {
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

    fn answer_conf(&mut self, index: u64, term: u64) {
        let Some(c) = self.pending_conf.remove(&index) else {
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
            ReadQuery::Get(key) => ReadAnswer::Get(adapter::get(&self.sm, &key)),
            ReadQuery::Range {
                start,
                end,
                limit,
                max_bytes,
            } => {
                let (kvs, more): (Vec<KvEntry>, bool) =
                    adapter::range(&self.sm, &start, &end, (limit, max_bytes));
                ReadAnswer::Range(kvs, more)
            }
            ReadQuery::Etcd(req) => ReadAnswer::Etcd(self.sm.kv().range(&req)),
            ReadQuery::EtcdStats => ReadAnswer::EtcdStats(self.sm.kv().stats()),
            ReadQuery::EtcdEvents(q) => {
                let kv = self.sm.kv();
                let batch = kv.events(&q.key, &q.range_end, q.from, q.prev_kv, q.max_events);
                ReadAnswer::EtcdEvents(batch, kv.compact_revision())
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
        let me = self.identity.id;
        for (id, m) in &dir {
            if *id != me && !m.peer_addr.is_empty() {
                self.transport.set_peer(*id, &m.peer_addr);
            }
        }
        let conf = self.raw.status().conf;
        for id in self.transport.peer_ids() {
            if !dir.contains_key(&id) && !conf.contains(id) && self.leader != id {
                self.transport.remove_peer(id);
            }
        }
    }
}
