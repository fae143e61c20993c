//! Log replication: proposals, Append/Heartbeat and their responses,
//! snapshots, flow control and the commit rule.

use super::core::Raft;
use super::progress::ProgressState;
use super::{Entry, EntryKind, Message, MessageType, NodeId, RaftError, Role, Storage, quorum};

impl<S: Storage> Raft<S> {
    /// Leader: appends client commands; returns `(first index, term)`.
    pub fn propose(
        &mut self,
        datas: Vec<Vec<u8>>,
        kind: EntryKind,
    ) -> Result<(u64, u64), RaftError> {
        self.check_can_propose()?;
        if datas.is_empty() {
            return Err(RaftError::ProposalDropped);
        }
        let bytes: usize = datas
            .iter()
            .map(|d| super::entry_record_bytes(d.len()))
            .sum();
        if self.uncommitted_bytes > 0
            && self.uncommitted_bytes + bytes > self.cfg.max_uncommitted_bytes
        {
            return Err(RaftError::TooManyUncommitted);
        }
        self.uncommitted_bytes += bytes;
        let ents = datas
            .into_iter()
            .map(|data| Entry {
                index: 0,
                term: 0,
                kind,
                data,
            })
            .collect();
        Ok(self.append_as_leader(ents))
    }

    /// Follower: sends client commands to the leader in a `Propose`
    /// message, merged into the one already queued for it in this term.
    /// The leader appends them or drops them; nothing answers.
    pub fn forward(&mut self, datas: Vec<Vec<u8>>) -> Result<(), RaftError> {
        if self.role == Role::Leader || self.leader == super::NO_NODE {
            return Err(RaftError::NotLeader {
                leader: self.leader,
            });
        }
        if datas.is_empty() {
            return Err(RaftError::ProposalDropped);
        }
        let ents = datas.into_iter().map(|data| Entry {
            index: 0,
            term: 0,
            kind: EntryKind::Normal,
            data,
        });
        let (leader, term, cap) = (self.leader, self.term, self.cfg.max_msg_entries);
        if let Some(m) = self.msgs.last_mut()
            && m.msg_type == MessageType::Propose
            && m.to == leader
            && m.term == term
            && m.entries.len() < cap
        {
            m.entries.extend(ents);
            return Ok(());
        }
        let mut m = Message::new(MessageType::Propose, self.id, leader, term);
        m.entries = ents.collect();
        self.send(m);
        Ok(())
    }

    /// Leader: appends a follower's forwarded commands as if proposed here.
    /// Anything but plain commands (a conf change must pass its own checks)
    /// drops the whole message, as does a refusal to propose.
    pub fn handle_forwarded_proposal(&mut self, m: Message) {
        if m.entries.iter().any(|e| e.kind != EntryKind::Normal) {
            return;
        }
        let datas = m.entries.into_iter().map(|e| e.data).collect();
        // A refusal drops them; the proposer times them out.
        let _ = self.propose(datas, EntryKind::Normal);
    }

    pub fn check_can_propose(&self) -> Result<(), RaftError> {
        if self.role != Role::Leader {
            return Err(RaftError::NotLeader {
                leader: self.leader,
            });
        }
        if self.transferee != super::NO_NODE {
            return Err(RaftError::TransferInProgress);
        }
        Ok(())
    }

    /// Stamps `ents` with the next indexes and this term, appends them and
    /// applies any conf change at once (effect-on-append).
    pub fn append_as_leader(&mut self, mut ents: Vec<Entry>) -> (u64, u64) {
        let first = self.log.last_index() + 1;
        for (i, e) in ents.iter_mut().enumerate() {
            e.index = first + i as u64;
            e.term = self.term;
        }
        if ents.iter().any(|e| e.kind == EntryKind::ConfChange) {
            self.apply_conf_entries(&ents);
        }
        self.log.append_owned(ents);
        self.pending_bcast = true;
        (first, self.term)
    }

    /// Sends whatever proposals accumulated since the last call.
    pub fn flush_proposals(&mut self) {
        if self.pending_bcast && self.role == Role::Leader {
            self.pending_bcast = false;
            for to in self.peers() {
                self.send_appends(to, false);
            }
        }
    }

    /// Every member except self.
    pub fn peers(&self) -> Vec<NodeId> {
        self.progress
            .keys()
            .copied()
            .filter(|&id| id != self.id)
            .collect()
    }

    /// Sends Appends (empty ones too, to carry the commit index).
    pub fn bcast_append(&mut self) {
        self.pending_bcast = false;
        for to in self.peers() {
            self.send_appends(to, true);
        }
    }

    /// Sends as many Appends as the window allows (bounded by it).
    fn send_appends(&mut self, to: NodeId, send_if_empty: bool) {
        if !self.send_append(to, send_if_empty) {
            return;
        }
        for _ in 1..self.cfg.max_inflight_msgs {
            if !self.send_append(to, false) {
                break;
            }
        }
    }

    /// One Append (or a snapshot notice) to `to`; `true` if something was sent.
    pub fn send_append(&mut self, to: NodeId, send_if_empty: bool) -> bool {
        let Some(pr) = self.progress.get(&to) else {
            return false;
        };
        if pr.is_paused() {
            return false;
        }
        let prev = pr.next_index - 1;
        let hi = (self.log.last_index() + 1).min(pr.next_index + self.cfg.max_msg_entries as u64);
        let prev_term = self.log.term(prev);
        let ents = self.log.slice(pr.next_index, hi, self.cfg.max_msg_bytes);
        let (Ok(prev_term), Ok(ents)) = (prev_term, ents) else {
            return self.send_snapshot(to);
        };
        if ents.is_empty() && !send_if_empty {
            return false;
        }
        let Some(pr) = self.progress.get_mut(&to) else {
            return false;
        };
        match pr.state {
            ProgressState::Replicate => {
                if let Some(last) = ents.last() {
                    pr.next_index = last.index + 1;
                    pr.inflights
                        .add(last.index, ents.iter().map(Entry::size_bytes).sum());
                }
            }
            _ => pr.probe_sent = true,
        }
        let mut m = Message::new(MessageType::Append, self.id, to, self.term);
        m.index = prev;
        m.log_term = prev_term;
        m.entries = ents;
        m.commit = self.log.committed;
        self.send(m);
        true
    }

    /// The entries `to` needs are compacted: ask the node to stream the
    /// newest snapshot. Replication to `to` pauses until `report_snapshot`.
    fn send_snapshot(&mut self, to: NodeId) -> bool {
        let meta = self.log.snapshot_meta();
        if meta.index == 0 {
            return false;
        }
        if let Some(pr) = self.progress.get_mut(&to) {
            pr.become_snapshot(meta.index);
        }
        let mut m = Message::new(MessageType::Snapshot, self.id, to, self.term);
        m.index = meta.index;
        m.log_term = meta.term;
        m.snapshot = Some(meta);
        self.send(m);
        true
    }

    pub fn bcast_heartbeat(&mut self) {
        let ctx = self.reads.round_context();
        for to in self.peers() {
            let Some(pr) = self.progress.get(&to) else {
                continue;
            };
            let mut m = Message::new(MessageType::Heartbeat, self.id, to, self.term);
            // Never tell a follower to commit past what it is known to hold.
            m.commit = pr.match_index.min(self.log.committed);
            m.context = ctx.clone();
            self.send(m);
        }
    }

    /// Follower: Append from the leader.
    pub fn handle_append(&mut self, mut m: Message) {
        self.follow(m.from);
        let mut resp = Message::new(MessageType::AppendResp, self.id, m.from, self.term);
        if m.index < self.log.committed {
            resp.index = self.log.committed;
            self.send_after_persist(resp);
            return;
        }
        match self.follower_append(&mut m) {
            Some(last_new) => resp.index = last_new,
            None => {
                let hint = m.index.min(self.log.last_index());
                let (hint_index, hint_term) = self.log.find_conflict_by_term(hint, m.log_term);
                resp.index = m.index;
                resp.reject = true;
                resp.reject_hint = hint_index;
                resp.hint_term = hint_term;
            }
        }
        self.send_after_persist(resp);
    }

    /// Appends `m.entries` after `m.index` if the log matches there;
    /// returns the index of the last entry `m` vouches for.
    fn follower_append(&mut self, m: &mut Message) -> Option<u64> {
        if !self.log.match_term(m.index, m.log_term) {
            return None;
        }
        let contiguous = m
            .entries
            .iter()
            .enumerate()
            .all(|(i, e)| e.index == m.index + 1 + i as u64);
        if !contiguous {
            return None;
        }
        let last_new = m.index + m.entries.len() as u64;
        let conflict = self.log.find_conflict(&m.entries);
        if conflict != 0 {
            if conflict <= self.log.committed {
                // A committed entry can never be overwritten; only a broken
                // peer sends this. Refuse it rather than corrupt the log.
                return None;
            }
            let new: Vec<_> = m
                .entries
                .drain((conflict - m.index - 1) as usize..)
                .collect();
            self.rollback_conf(conflict);
            self.apply_conf_entries(&new);
            self.log.append_owned(new);
        }
        self.commit_to(m.commit.min(last_new));
        Some(last_new)
    }

    /// Leader: a follower acknowledged or rejected an Append.
    pub fn handle_append_response(&mut self, m: &Message) {
        // An acknowledgement past our log can only come from a broken peer.
        if self.role != Role::Leader || m.index > self.log.last_index() {
            return;
        }
        let Some(pr) = self.progress.get_mut(&m.from) else {
            return;
        };
        pr.recent_active = true;
        if m.reject {
            self.handle_append_reject(m);
            return;
        }
        let was_paused = pr.is_paused();
        if !pr.maybe_update(m.index) {
            return;
        }
        match pr.state {
            ProgressState::Probe => pr.become_replicate(),
            ProgressState::Snapshot if pr.match_index >= pr.pending_snapshot => {
                pr.become_probe();
                pr.become_replicate();
            }
            ProgressState::Snapshot => {}
            ProgressState::Replicate => pr.inflights.free_le(m.index),
        }
        if self.maybe_commit() {
            self.bcast_append();
        } else {
            self.send_appends(m.from, was_paused);
        }
        self.maybe_finish_transfer(m.from);
    }

    fn handle_append_reject(&mut self, m: &Message) {
        let mut hint = m.reject_hint;
        if m.hint_term > 0 {
            hint = self.log.find_conflict_by_term(m.reject_hint, m.hint_term).0;
        }
        let Some(pr) = self.progress.get_mut(&m.from) else {
            return;
        };
        if pr.maybe_decr_to(m.index, hint) {
            if pr.state == ProgressState::Replicate {
                pr.become_probe();
            }
            self.send_append(m.from, true);
        }
    }

    /// Follower: heartbeat from the leader.
    pub fn handle_heartbeat(&mut self, m: &Message) {
        self.follow(m.from);
        self.commit_to(m.commit);
        let mut resp = Message::new(MessageType::HeartbeatResp, self.id, m.from, self.term);
        resp.context = m.context.clone();
        resp.index = m.index;
        self.send(resp);
    }

    pub fn handle_heartbeat_response(&mut self, m: &Message) {
        if self.role != Role::Leader {
            return;
        }
        let Some(pr) = self.progress.get_mut(&m.from) else {
            return;
        };
        pr.recent_active = true;
        pr.probe_sent = false;
        if pr.state == ProgressState::Replicate && pr.inflights.full() {
            pr.inflights.free_first_one();
        }
        let behind = pr.match_index < self.log.last_index();
        if behind {
            self.send_append(m.from, true);
        }
        self.ack_read_round(m.from, &m.context);
    }

    /// Follower: the leader streamed us a snapshot.
    pub fn handle_snapshot(&mut self, m: Message) {
        self.follow(m.from);
        let mut resp = Message::new(MessageType::AppendResp, self.id, m.from, self.term);
        let Some(meta) = m.snapshot else {
            return;
        };
        if meta.index <= self.log.committed {
            resp.index = self.log.committed;
        } else if self.log.match_term(meta.index, meta.term) {
            // We already hold the covered entries: just fast-forward.
            self.commit_to(meta.index);
            resp.index = meta.index;
        } else {
            resp.index = meta.index;
            self.conf = meta.conf.clone();
            self.conf_history.clear();
            self.log.restore(meta);
        }
        self.send_after_persist(resp);
    }

    /// Moves the commit index and runs what depends on it.
    pub fn commit_to(&mut self, index: u64) {
        let before = self.log.committed;
        // Refused past the last entry (`CommitPastLog`): the commit index
        // stays, and the next append carries a commit bounded by what it sent.
        if self.log.commit_to(index).is_err() {
            return;
        }
        if self.log.committed > before {
            self.on_commit_advanced();
        }
    }

    /// Leader: commit what a majority holds, if it is of this term
    /// (Raft §5.4.2, Figure 8). `true` if the commit index moved.
    pub fn maybe_commit(&mut self) -> bool {
        let progress = &self.progress;
        let index = quorum::committed_index(&self.conf.voters, |id| {
            progress.get(&id).map_or(0, |p| p.match_index)
        });
        if self.log.maybe_commit(index, self.term) {
            self.on_commit_advanced();
            return true;
        }
        false
    }

    fn on_commit_advanced(&mut self) {
        let committed = self.log.committed;
        self.conf_history.retain(|(index, _)| *index > committed);
        if self.role == Role::Leader {
            self.maybe_start_read_round();
            self.maybe_step_down_after_removal();
        }
    }

    /// Leader: a persisted prefix of our own log now counts toward commit.
    pub fn on_persisted(&mut self) {
        let stable = self.log.stable_last();
        let Some(pr) = self.progress.get_mut(&self.id) else {
            return;
        };
        if pr.maybe_update(stable) && self.maybe_commit() {
            self.bcast_append();
        }
    }

    pub fn report_snapshot(&mut self, to: NodeId, success: bool) {
        let Some(pr) = self.progress.get_mut(&to) else {
            return;
        };
        if pr.state != ProgressState::Snapshot {
            return;
        }
        if !success {
            pr.pending_snapshot = 0;
        }
        pr.become_probe();
        // Wait for the follower's answer (or a heartbeat) before probing.
        pr.probe_sent = true;
    }

    pub fn report_unreachable(&mut self, to: NodeId) {
        if let Some(pr) = self.progress.get_mut(&to)
            && pr.state == ProgressState::Replicate
        {
            pr.become_probe();
        }
    }
}
