//! Linearizable reads (Raft thesis §6.4): ReadIndex confirmed by one
//! heartbeat round shared by every read waiting when the round starts,
//! and follower reads that ask the leader. Lease reads were removed: ticks
//! stall while the node blocks on fsync or a snapshot load, so a lease
//! counted in ticks does not bound real time.

use std::collections::{BTreeSet, VecDeque};

use super::core::Raft;
use super::{Message, MessageType, NO_NODE, NodeId, RaftError, ReadState, Role, Storage, quorum};

/// Bound on reads queued at the leader; more are refused with `ProposalDropped`.
pub const MAX_PENDING_READS: usize = 4096;

/// One read waiting for confirmation.
#[derive(Debug, Clone)]
pub(crate) struct ReadRequest {
    /// Opaque id chosen by the node, echoed in the `ReadState`.
    ctx: Vec<u8>,
    /// Who asked: this node, or a follower to answer with ReadIndexResp.
    from: NodeId,
}

/// A heartbeat round confirming leadership for a batch of reads.
#[derive(Debug)]
struct ReadRound {
    /// Carried in heartbeat contexts and echoed back.
    id: u64,
    /// Commit index when the round started: the reads' index.
    index: u64,
    /// Voters (and self) that answered a heartbeat of this round.
    acks: BTreeSet<NodeId>,
    reads: Vec<ReadRequest>,
}

/// Leader-side read bookkeeping; reset on any role or term change (pending
/// reads are then dropped and the node times them out).
#[derive(Debug, Default)]
pub(crate) struct ReadOnly {
    /// Reads waiting for the next round (bounded by `MAX_PENDING_READS`).
    waiting: VecDeque<ReadRequest>,
    /// The round in flight, if any.
    round: Option<ReadRound>,
    /// Id of the last round started.
    last_round_id: u64,
}

impl ReadOnly {
    /// Heartbeat context naming the round in flight (empty if none).
    pub fn round_context(&self) -> Vec<u8> {
        self.round
            .as_ref()
            .map(|r| r.id.to_le_bytes().to_vec())
            .unwrap_or_default()
    }
}

impl<S: Storage> Raft<S> {
    /// Local read request: on the leader queue it, elsewhere ask the leader.
    pub fn read_index(&mut self, ctx: Vec<u8>) -> Result<(), RaftError> {
        if self.role == Role::Leader {
            return self.leader_read(ReadRequest { ctx, from: self.id });
        }
        if self.leader == NO_NODE {
            return Err(RaftError::NotLeader { leader: NO_NODE });
        }
        let mut m = Message::new(MessageType::ReadIndex, self.id, self.leader, self.term);
        m.context = ctx;
        self.send(m);
        Ok(())
    }

    fn leader_read(&mut self, req: ReadRequest) -> Result<(), RaftError> {
        if self.reads.waiting.len() >= MAX_PENDING_READS {
            return Err(RaftError::ProposalDropped);
        }
        // The round starts at the next `ready()`, so every read queued
        // until then shares one heartbeat round.
        self.reads.waiting.push_back(req);
        Ok(())
    }

    /// Starts a heartbeat round for all waiting reads, once the leader has
    /// committed an entry of its term (only then is its commit index known
    /// to be at least every previously committed index).
    pub fn maybe_start_read_round(&mut self) {
        if !self.read_round_startable() {
            return;
        }
        self.reads.last_round_id += 1;
        let round = ReadRound {
            id: self.reads.last_round_id,
            index: self.log.committed,
            acks: BTreeSet::from([self.id]),
            reads: self.reads.waiting.drain(..).collect(),
        };
        self.reads.round = Some(round);
        if !self.try_finish_read_round() {
            self.bcast_heartbeat();
        }
    }

    /// Whether reads wait and a round could start now.
    pub fn read_round_startable(&self) -> bool {
        self.role == Role::Leader
            && self.reads.round.is_none()
            && !self.reads.waiting.is_empty()
            && self.committed_in_term()
    }

    /// A heartbeat response echoed `ctx`: count it for the round it names.
    pub fn ack_read_round(&mut self, from: NodeId, ctx: &[u8]) {
        let Some(round) = self.reads.round.as_mut() else {
            return;
        };
        if ctx != round.id.to_le_bytes() {
            return;
        }
        round.acks.insert(from);
        if self.try_finish_read_round() {
            self.maybe_start_read_round();
        }
    }

    fn try_finish_read_round(&mut self) -> bool {
        let Some(round) = self.reads.round.as_ref() else {
            return false;
        };
        if !quorum::has_quorum(&self.conf.voters, |id| round.acks.contains(&id)) {
            return false;
        }
        let Some(round) = self.reads.round.take() else {
            return false;
        };
        for req in round.reads {
            self.release_read(req, round.index);
        }
        true
    }

    fn release_read(&mut self, req: ReadRequest, index: u64) {
        if req.from == self.id {
            self.read_states.push(ReadState {
                index,
                context: req.ctx,
            });
            return;
        }
        let mut m = Message::new(MessageType::ReadIndexResp, self.id, req.from, self.term);
        m.index = index;
        m.context = req.ctx;
        self.send(m);
    }

    /// Leader: a follower asks for a read index.
    pub fn handle_read_index_request(&mut self, m: Message) {
        if self.role != Role::Leader {
            return;
        }
        // A full queue drops the request; the follower's node times it out.
        let _ = self.leader_read(ReadRequest {
            ctx: m.context,
            from: m.from,
        });
    }

    /// Follower: the leader confirmed a read index for us.
    pub fn handle_read_index_response(&mut self, m: Message) {
        self.read_states.push(ReadState {
            index: m.index,
            context: m.context,
        });
    }
}
