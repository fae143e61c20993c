//! Membership (single-server changes), bootstrap and leadership transfer.

use super::core::Raft;
use super::progress::Progress;
use super::{
    ConfChange, ConfChangeType, ConfState, Entry, EntryKind, HardState, Message, MessageType,
    NO_NODE, NodeId, RaftError, Role, Storage,
};

/// The membership after `cc`, or why `cc` does not apply to `conf`.
pub fn apply_change(conf: &ConfState, cc: &ConfChange) -> Result<ConfState, String> {
    let id = cc.node_id;
    if id == NO_NODE {
        return Err("node id 0 is reserved".into());
    }
    let mut next = conf.clone();
    match cc.change {
        ConfChangeType::AddLearner if conf.contains(id) => {
            return Err(format!("{id} is already a member"));
        }
        ConfChangeType::AddLearner => {
            next.learners.insert(id);
        }
        ConfChangeType::PromoteLearner if !conf.learners.contains(&id) => {
            return Err(format!("{id} is not a learner"));
        }
        ConfChangeType::PromoteLearner => {
            next.learners.remove(&id);
            next.voters.insert(id);
        }
        ConfChangeType::RemoveNode if !conf.contains(id) => {
            return Err(format!("{id} is not a member"));
        }
        ConfChangeType::RemoveNode if conf.voters.len() == 1 && conf.voters.contains(&id) => {
            return Err("cannot remove the last voter".into());
        }
        ConfChangeType::RemoveNode => {
            next.voters.remove(&id);
            next.learners.remove(&id);
        }
    }
    Ok(next)
}

/// The identical initial log of every founding member: for each voter, in
/// id order, an `AddLearner` then a `PromoteLearner` entry carrying its
/// context (the member's addresses), all at term 1, indexes `1..=2n`, and a
/// hard state marking them committed. A node that joins later learns every
/// member and address by replaying (or receiving) this log.
pub fn bootstrap_entries(voters: &[(NodeId, Vec<u8>)]) -> (Vec<Entry>, HardState) {
    let mut sorted: Vec<&(NodeId, Vec<u8>)> =
        voters.iter().filter(|(id, _)| *id != NO_NODE).collect();
    sorted.sort_by_key(|(id, _)| *id);
    sorted.dedup_by_key(|(id, _)| *id);
    let mut entries = Vec::with_capacity(sorted.len() * 2);
    for (id, ctx) in sorted {
        for change in [ConfChangeType::AddLearner, ConfChangeType::PromoteLearner] {
            let cc = ConfChange {
                change,
                node_id: *id,
                context: ctx.clone(),
            };
            entries.push(Entry {
                index: entries.len() as u64 + 1,
                term: 1,
                kind: EntryKind::ConfChange,
                data: cc.encode(),
            });
        }
    }
    let hs = HardState {
        term: 1,
        vote: NO_NODE,
        commit: entries.len() as u64,
    };
    (entries, hs)
}

impl<S: Storage> Raft<S> {
    /// Leader: proposes a membership change. Refused while another change is
    /// uncommitted, and until this leader has committed an entry of its term
    /// (the fix from Ongaro's 2015 raft-dev note on single-server changes).
    pub fn propose_conf_change(&mut self, cc: ConfChange) -> Result<(u64, u64), RaftError> {
        self.check_can_propose()?;
        if !self.conf_history.is_empty() || !self.committed_in_term() {
            return Err(RaftError::ConfChangePending);
        }
        apply_change(&self.conf, &cc).map_err(RaftError::InvalidConfChange)?;
        let ent = Entry {
            index: 0,
            term: 0,
            kind: EntryKind::ConfChange,
            data: cc.encode(),
        };
        Ok(self.append_as_leader(vec![ent]))
    }

    /// Applies conf change entries as they enter the log (effect-on-append).
    /// Undecodable or inapplicable entries change nothing.
    pub fn apply_conf_entries(&mut self, ents: &[Entry]) {
        let mut changed = false;
        for e in ents.iter().filter(|e| e.kind == EntryKind::ConfChange) {
            let Ok(cc) = ConfChange::decode(&e.data) else {
                continue;
            };
            let Ok(next) = apply_change(&self.conf, &cc) else {
                continue;
            };
            let before = std::mem::replace(&mut self.conf, next);
            self.conf_history.push((e.index, before));
            changed = true;
        }
        if changed {
            self.on_conf_changed();
        }
    }

    /// The log is being truncated from `index`: undo conf changes at or after it.
    pub fn rollback_conf(&mut self, index: u64) {
        let mut changed = false;
        while let Some((at, _)) = self.conf_history.last() {
            if *at < index {
                break;
            }
            if let Some((_, before)) = self.conf_history.pop() {
                self.conf = before;
                changed = true;
            }
        }
        if changed {
            self.on_conf_changed();
        }
    }

    fn on_conf_changed(&mut self) {
        if self.role != Role::Leader {
            if !self.promotable() && self.role != Role::Follower {
                let term = self.term;
                self.become_follower(term, NO_NODE);
            }
            return;
        }
        self.sync_progress();
        if !self.conf.voters.contains(&self.transferee) {
            self.transferee = NO_NODE;
        }
        // Fewer voters may already form a majority for pending entries.
        if self.maybe_commit() {
            self.bcast_append();
        }
    }

    /// Leader: one Progress per member (self included if a member).
    pub fn sync_progress(&mut self) {
        let conf = &self.conf;
        self.progress.retain(|id, _| conf.contains(*id));
        let next = self.log.last_index() + 1;
        let (max_msgs, max_bytes) = (self.cfg.max_inflight_msgs, self.cfg.max_inflight_bytes);
        for &id in conf.voters.iter().chain(conf.learners.iter()) {
            let learner = conf.learners.contains(&id);
            let pr = self
                .progress
                .entry(id)
                .or_insert_with(|| Progress::new(next, learner, max_msgs, max_bytes));
            pr.learner = learner;
        }
    }

    /// A leader that removed itself keeps leading until the removal commits
    /// (thesis §4.2.2), then steps down so the others elect a leader.
    pub fn maybe_step_down_after_removal(&mut self) {
        if self.promotable() || !self.conf_history.is_empty() {
            return;
        }
        self.bcast_append();
        let term = self.term;
        self.become_follower(term, NO_NODE);
    }

    /// Leader: hand leadership to `target` once it is caught up.
    pub fn transfer_leader(&mut self, target: NodeId) -> Result<(), RaftError> {
        if self.role != Role::Leader {
            return Err(RaftError::NotLeader {
                leader: self.leader,
            });
        }
        if target == self.id {
            return Ok(());
        }
        if !self.conf.voters.contains(&target) {
            return Err(RaftError::InvalidConfChange(format!(
                "transfer target {target} is not a voter"
            )));
        }
        if self.transferee != NO_NODE {
            return if self.transferee == target {
                Ok(())
            } else {
                Err(RaftError::TransferInProgress)
            };
        }
        self.transferee = target;
        self.transfer_elapsed = 0;
        if !self.maybe_finish_transfer(target) {
            self.send_append(target, true);
        }
        Ok(())
    }

    /// Sends TimeoutNow if `from` is the transfer target and fully caught up.
    pub fn maybe_finish_transfer(&mut self, from: NodeId) -> bool {
        if from != self.transferee {
            return false;
        }
        let caught_up = self
            .progress
            .get(&from)
            .is_some_and(|p| p.match_index == self.log.last_index());
        if caught_up {
            let m = Message::new(MessageType::TimeoutNow, self.id, from, self.term);
            self.send(m);
        }
        caught_up
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conf(voters: &[NodeId], learners: &[NodeId]) -> ConfState {
        ConfState {
            voters: voters.iter().copied().collect(),
            learners: learners.iter().copied().collect(),
        }
    }

    #[test]
    fn single_server_change_rules_table() {
        use ConfChangeType::*;
        let base = conf(&[1, 2], &[3]);
        let cases: &[(ConfChangeType, NodeId, Option<ConfState>)] = &[
            (AddLearner, 4, Some(conf(&[1, 2], &[3, 4]))),
            (AddLearner, 3, None),
            (AddLearner, 0, None),
            (PromoteLearner, 3, Some(conf(&[1, 2, 3], &[]))),
            (PromoteLearner, 1, None),
            (RemoveNode, 2, Some(conf(&[1], &[3]))),
            (RemoveNode, 3, Some(conf(&[1, 2], &[]))),
            (RemoveNode, 9, None),
        ];
        for (change, id, want) in cases {
            let cc = ConfChange {
                change: *change,
                node_id: *id,
                context: vec![],
            };
            assert_eq!(apply_change(&base, &cc).ok(), *want, "{change:?} {id}");
        }
        let single = conf(&[1], &[]);
        let cc = ConfChange {
            change: RemoveNode,
            node_id: 1,
            context: vec![],
        };
        assert!(apply_change(&single, &cc).is_err(), "last voter stays");
    }

    #[test]
    fn bootstrap_log_is_identical_regardless_of_input_order() {
        let (a, hs) = bootstrap_entries(&[(2, b"b".to_vec()), (1, b"a".to_vec())]);
        let (b, _) = bootstrap_entries(&[(1, b"a".to_vec()), (2, b"b".to_vec())]);
        assert_eq!(a, b);
        assert_eq!(a.len(), 4);
        assert_eq!(
            hs,
            HardState {
                term: 1,
                vote: NO_NODE,
                commit: 4
            }
        );
        let first = ConfChange::decode(&a[0].data).unwrap();
        assert_eq!(
            (first.change, first.node_id, first.context),
            (ConfChangeType::AddLearner, 1, b"a".to_vec())
        );
    }
}
