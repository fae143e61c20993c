//! Elections: PreVote, Vote, their responses, and TimeoutNow.

use super::core::{CAMPAIGN_TRANSFER, Raft};
use super::quorum::{self, VoteResult};
use super::{Message, MessageType, NO_NODE, Role, Storage};

impl<S: Storage> Raft<S> {
    /// Starts an election (a pre-election first if PreVote is on, unless
    /// this is a leadership transfer, which must not wait).
    pub fn hup(&mut self, transfer: bool) {
        if self.role == Role::Leader || !self.promotable() {
            return;
        }
        if self.cfg.pre_vote && !transfer {
            self.campaign(true, false);
        } else {
            self.campaign(false, transfer);
        }
    }

    fn campaign(&mut self, pre: bool, transfer: bool) {
        let (msg_type, vote_term) = if pre {
            self.become_pre_candidate();
            (MessageType::PreVote, self.term + 1)
        } else {
            self.become_candidate();
            (MessageType::Vote, self.term)
        };
        self.votes.insert(self.id, true);
        if self.count_votes(pre) {
            return;
        }
        let (last_index, last_term) = (self.log.last_index(), self.log.last_term());
        let voters: Vec<_> = self
            .conf
            .voters
            .iter()
            .copied()
            .filter(|&v| v != self.id)
            .collect();
        for to in voters {
            let mut m = Message::new(msg_type, self.id, to, vote_term);
            m.index = last_index;
            m.log_term = last_term;
            if transfer {
                m.context = CAMPAIGN_TRANSFER.to_vec();
            }
            // Our own vote must be durable before we ask for others': a
            // crash could otherwise let us vote twice in this term.
            if pre {
                self.send(m)
            } else {
                self.send_after_persist(m)
            }
        }
    }

    /// Acts on the tally; `true` if the (pre-)election is decided.
    fn count_votes(&mut self, pre: bool) -> bool {
        match quorum::vote_result(&self.conf.voters, &self.votes) {
            VoteResult::Won if pre => {
                self.campaign(false, false);
                true
            }
            VoteResult::Won => {
                self.become_leader();
                true
            }
            VoteResult::Lost => {
                let term = self.term;
                self.become_follower(term, NO_NODE);
                true
            }
            VoteResult::Pending => false,
        }
    }

    pub fn handle_vote_request(&mut self, m: &Message) {
        let pre = m.msg_type == MessageType::PreVote;
        let can_vote = self.vote == m.from
            || (self.vote == NO_NODE && self.leader == NO_NODE)
            || (pre && m.term > self.term);
        let grant = can_vote && self.log.is_up_to_date(m.index, m.log_term);
        let resp_type = if pre {
            MessageType::PreVoteResp
        } else {
            MessageType::VoteResp
        };
        // A granted pre-vote answers in the proposed term so the candidate
        // counts it; a rejection carries our term.
        let term = if grant { m.term } else { self.term };
        let mut resp = Message::new(resp_type, self.id, m.from, term);
        resp.reject = !grant;
        if pre {
            self.send(resp);
            return;
        }
        if grant {
            self.election_elapsed = 0;
            self.vote = m.from;
        }
        self.send_after_persist(resp);
    }

    pub fn handle_vote_response(&mut self, m: &Message) {
        let pre = match (self.role, m.msg_type) {
            (Role::PreCandidate, MessageType::PreVoteResp) => true,
            (Role::Candidate, MessageType::VoteResp) => false,
            _ => return,
        };
        if self.conf.voters.contains(&m.from) {
            self.votes.entry(m.from).or_insert(!m.reject);
        }
        self.count_votes(pre);
    }

    /// Leadership transfer: the old leader asks us to campaign now.
    pub fn handle_timeout_now(&mut self) {
        if self.role == Role::Follower {
            self.hup(true);
        }
    }
}
