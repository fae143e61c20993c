//! Named scenarios from the Raft paper (Ongaro & Ousterhout 2014) and
//! thesis, driven by hand through the simulation harness.

mod sim;

use std::sync::atomic::{AtomicU32, Ordering};

use sim::cluster::{Cluster, Event};
use titan_raft::{
    ConfChange, ConfChangeType, Config, Message, MessageType, NodeId, RaftError, Role, Storage,
};

/// No PreVote/CheckQuorum: `campaign()` starts a real election at once,
/// which makes hand-driven elections deterministic.
fn plain(cfg: &mut Config) {
    cfg.pre_vote = false;
    cfg.check_quorum = false;
}

fn cluster3() -> Cluster {
    Cluster::new(3, 3, 1, |_: &mut Config| {})
}

fn status(c: &Cluster, id: NodeId) -> titan_raft::Status {
    c.node(id).raw().status()
}

fn term_at(c: &Cluster, id: NodeId, index: u64) -> Option<u64> {
    c.node(id).raw().storage().term(index).ok()
}

fn cc(change: ConfChangeType, node_id: NodeId) -> ConfChange {
    ConfChange {
        change,
        node_id,
        context: format!("addr-{node_id}").into_bytes(),
    }
}

#[test]
fn three_founders_elect_one_leader_and_replicate_a_write() {
    let mut c = cluster3();
    c.elect(1).unwrap();
    let (index, term) = c.put(1, 100, 7).unwrap();
    c.stabilize().unwrap();
    for id in 1..=3 {
        let n = c.node(id);
        assert_eq!(n.applied, index, "node {id}");
        assert_eq!(n.kv.get(7), Some(100));
        assert_eq!(term_at(&c, id, index), Some(term));
    }
}

/// Figure 7: whatever shape a follower's log has (missing entries, extra
/// uncommitted entries, conflicting terms), the leader's log wins.
#[test]
fn figure_7_follower_log_shapes_converge_to_the_leaders_log() {
    let logs: [&[u64]; 7] = [
        &[1, 1, 1, 4, 4, 5, 5, 6, 6, 6],       // leader
        &[1, 1, 1, 4, 4, 5, 5, 6, 6],          // (a) missing one
        &[1, 1, 1, 4],                         // (b) missing many
        &[1, 1, 1, 4, 4, 5, 5, 6, 6, 6, 6],    // (c) one extra uncommitted
        &[1, 1, 1, 4, 4, 5, 5, 6, 6, 6, 7, 7], // (d) extra from a later term
        &[1, 1, 1, 4, 4, 4, 4],                // (e) conflicting term-4 suffix
        &[1, 1, 1, 2, 2, 2, 3, 3, 3, 3, 3],    // (f) conflicting terms 2 and 3
    ];
    let mut c = Cluster::from_logs(&[1, 2, 3, 4, 5, 6, 7], &logs, 8, plain);
    c.elect(1).unwrap();
    let leader_last = status(&c, 1).last_index;
    assert_eq!(leader_last, 11, "ten entries plus the term-9 no-op");
    for id in 2..=7 {
        assert_eq!(status(&c, id).last_index, leader_last, "node {id}");
        for index in 1..=leader_last {
            assert_eq!(
                term_at(&c, id, index),
                term_at(&c, 1, index),
                "node {id} index {index}"
            );
        }
    }
}

/// Campaigns on `id` until it wins (a node may first need a higher term
/// than voters that already voted in its next term).
fn win(c: &mut Cluster, id: NodeId) {
    for _ in 0..3 {
        let r = c.elect(id);
        if r.is_ok() {
            return;
        }
    }
    let states: Vec<_> = c
        .nodes
        .values()
        .filter_map(|n| n.raw.as_ref().map(|r| r.status()))
        .collect();
    panic!("node {id} could not win an election: {states:#?}");
}

/// Figure 8: an entry from an earlier term that sits on a majority is not
/// committed by counting replicas, and may indeed still be overwritten.
#[test]
fn figure_8_old_term_entry_on_a_majority_is_not_committed_by_counting_replicas() {
    let mut c = Cluster::new(5, 5, 8, |cfg: &mut Config| {
        plain(cfg);
        cfg.max_msg_entries = 1;
    });
    let all = c.ids.clone();
    win(&mut c, 1); // term 2
    let base = status(&c, 1).commit;
    // (a) S1 (term 2) replicates X at index 2' only to S2.
    c.net.split(&[1, 2], &all);
    let (x_index, _) = c.put(1, 2, 0).unwrap();
    c.stabilize().unwrap();
    // (b) S5 wins term 3 with S3, S4; its term-3 entry at the same index
    // stays on S5 alone.
    c.net.drop_filter = Some(|m: &Message| m.from == 5 && m.entries.iter().any(|e| e.term == 3));
    win(&mut c, 5);
    assert_eq!(status(&c, 5).last_index, x_index);
    // (c) S5 crashes; S1 restarts, wins term 4 and re-replicates X to S3,
    // but none of its term-4 entries reach S3..S5.
    c.crash(5);
    c.crash(1);
    c.restart(1).unwrap();
    c.net.heal();
    c.net.drop_filter = Some(|m: &Message| {
        // S3 may see one term-4 Append: the first probe, which it rejects
        // because it lacks X; after that only X itself gets through.
        static PROBES_TO_S3: AtomicU32 = AtomicU32::new(0);
        let has_term_4 = m.entries.iter().any(|e| e.term == 4);
        let first_probe =
            m.to == 3 && has_term_4 && PROBES_TO_S3.fetch_add(1, Ordering::SeqCst) == 0;
        m.from == 1 && m.to >= 3 && has_term_4 && !first_probe
    });
    win(&mut c, 1);
    assert_eq!(status(&c, 1).term, 4);
    for id in 1..=3 {
        assert_eq!(term_at(&c, id, x_index), Some(2), "X is on S{id}");
    }
    assert_eq!(
        status(&c, 1).progress[&3].match_index,
        x_index,
        "the leader knows S3 holds X"
    );
    assert_eq!(
        status(&c, 1).commit,
        base,
        "X is on a majority but must not be committed"
    );
    // (d) S1 crashes before committing; S5 returns, wins, and overwrites X.
    c.crash(1);
    c.net.drop_filter = None;
    c.restart(5).unwrap();
    win(&mut c, 5);
    c.stabilize().unwrap();
    for id in 2..=5 {
        assert_eq!(
            term_at(&c, id, x_index),
            Some(3),
            "S5's entry replaced X on S{id}"
        );
        assert!(c.node(id).applied > x_index);
        assert_eq!(c.node(id).kv.get(0), None, "X was never applied anywhere");
    }
}

/// §5.4.1: a candidate whose log lacks a committed entry cannot win.
#[test]
fn election_restriction_rejects_a_candidate_missing_committed_entries() {
    let mut c = Cluster::new(3, 3, 2, plain);
    let all = c.ids.clone();
    c.elect(1).unwrap();
    c.net.isolate(3, &all);
    let (index, _) = c.put(1, 9, 1).unwrap();
    c.stabilize().unwrap();
    assert_eq!(status(&c, 1).commit, index);
    c.net.heal();
    c.node_mut(3).raw_mut().campaign();
    c.stabilize().unwrap();
    assert_ne!(status(&c, 3).role, Role::Leader);
    c.tick_stable(60).unwrap();
    let leader = c.leader().expect("a leader emerges");
    assert_ne!(leader, 3, "node 3's log is behind; it can never win");
    assert_eq!(term_at(&c, leader, index), term_at(&c, 2, index));
}

/// A vote must survive a crash, or a node could vote twice in one term.
#[test]
fn votes_persisted_across_restart_prevent_a_second_vote_in_the_same_term() {
    let mut c = Cluster::new(3, 3, 3, plain);
    c.net.block_one_way(1, 3);
    c.node_mut(1).raw_mut().campaign();
    c.stabilize().unwrap();
    assert_eq!(status(&c, 1).role, Role::Leader, "won with node 2's vote");
    let term = status(&c, 1).term;
    assert_eq!(c.node(2).durable().hard_state().vote, 1);
    c.crash(2);
    c.restart(2).unwrap();
    assert_eq!((status(&c, 2).term, status(&c, 2).vote), (term, 1));
    // Node 3 (still at the previous term) campaigns for the same term.
    c.crash(1);
    c.node_mut(3).raw_mut().campaign();
    c.stabilize().unwrap();
    assert_eq!(status(&c, 3).term, term);
    assert_ne!(
        status(&c, 3).role,
        Role::Leader,
        "node 2 already voted in term {term}"
    );
}

/// The grant leaves only once the vote is durable: a crash before the
/// write completes loses the vote *and* the grant never went out.
#[test]
fn vote_grant_is_not_sent_before_the_vote_is_durable() {
    let mut c = Cluster::new(3, 3, 4, plain);
    c.persist_per_mille = 0;
    c.node_mut(1).raw_mut().campaign();
    for _ in 0..3 {
        for env in c.net.take_all() {
            c.node_mut(env.msg.to).raw_mut().step(env.msg).unwrap();
        }
        c.process_all().unwrap();
    }
    assert!(
        c.node(2).pending.is_some(),
        "node 2 holds an unpersisted vote"
    );
    assert_ne!(status(&c, 1).role, Role::Leader);
    c.crash(2);
    c.crash(3);
    c.restart(2).unwrap();
    assert_eq!(status(&c, 2).vote, 0, "the unsynced vote is gone");
}

/// Thesis §9.6: with PreVote a node that was partitioned away does not bump
/// its term, so rejoining does not depose a healthy leader.
#[test]
fn pre_vote_keeps_a_rejoining_partitioned_node_from_deposing_the_leader() {
    let mut c = cluster3();
    let all = c.ids.clone();
    c.elect(1).unwrap();
    let term = status(&c, 1).term;
    c.net.isolate(3, &all);
    c.tick_stable(100).unwrap();
    assert_eq!(
        status(&c, 3).term,
        term,
        "pre-elections do not change the term"
    );
    c.net.heal();
    c.tick_stable(20).unwrap();
    assert_eq!((c.leader(), status(&c, 1).term), (Some(1), term));
}

/// The contrast: without PreVote the rejoining node's inflated term
/// deposes the leader.
#[test]
fn without_pre_vote_a_rejoining_node_disrupts_the_leader() {
    let mut c = Cluster::new(3, 3, 5, |cfg: &mut Config| cfg.pre_vote = false);
    let all = c.ids.clone();
    c.elect(1).unwrap();
    let term = status(&c, 1).term;
    c.net.isolate(3, &all);
    c.tick_stable(100).unwrap();
    assert!(status(&c, 3).term > term + 1);
    c.net.heal();
    c.tick_stable(3).unwrap();
    assert!(
        status(&c, 1).term > term,
        "the old leader saw the higher term"
    );
}

/// CheckQuorum: a leader cut off from a majority steps down within an
/// election timeout.
#[test]
fn check_quorum_makes_an_isolated_leader_step_down() {
    let mut c = cluster3();
    let all = c.ids.clone();
    c.elect(1).unwrap();
    c.net.isolate(1, &all);
    let min = u64::from(c.node(1).cfg.election_tick_min);
    c.tick_stable(2 * min).unwrap();
    assert_eq!(status(&c, 1).role, Role::Follower);
}

fn read_events(c: &mut Cluster, node: NodeId) -> Vec<Option<u64>> {
    std::mem::take(&mut c.events)
        .into_iter()
        .filter_map(|e| match e {
            Event::Read { node: n, value, .. } if n == node => Some(value),
            _ => None,
        })
        .collect()
}

fn stale_read_scenario(tweak: fn(&mut Config)) {
    let mut c = Cluster::new(3, 3, 6, tweak);
    let all = c.ids.clone();
    c.tick_stable(40).unwrap();
    let old = c.leader().expect("a leader is elected");
    c.put(old, 1, 5).unwrap();
    c.stabilize().unwrap();
    c.net.isolate(old, &all);
    c.tick_stable(40).unwrap();
    let new_leader = c
        .leader()
        .filter(|&l| l != old)
        .expect("majority side elects a leader");
    c.put(new_leader, 2, 5).unwrap();
    c.stabilize().unwrap();
    c.events.clear();
    // The old leader may still think it leads; its read must not complete.
    let _ = c
        .node_mut(old)
        .raw_mut()
        .read_index(vec![0, 0, 0, 0, 0, 0, 0, 0, 5]);
    c.stabilize().unwrap();
    assert!(
        read_events(&mut c, old).is_empty(),
        "partitioned old leader served a read"
    );
    c.net.heal();
    c.tick_stable(10).unwrap();
    c.node_mut(new_leader)
        .raw_mut()
        .read_index(vec![0, 0, 0, 0, 0, 0, 0, 1, 5])
        .unwrap();
    c.tick_stable(3).unwrap();
    assert_eq!(read_events(&mut c, new_leader), vec![Some(2)]);
}

/// Thesis §6.4: ReadIndex needs a heartbeat round acknowledged by a
/// majority, which a partitioned old leader cannot get.
#[test]
fn read_index_on_a_partitioned_old_leader_never_returns_a_stale_value() {
    stale_read_scenario(|_| {});
}

/// Regression: lease reads answered from heartbeat acks counted in
/// ticks, and ticks stall while the node blocks on fsync or a snapshot load,
/// so a lease could outlive real time. They were removed: a leader whose
/// quorum acknowledged it a moment ago still needs a fresh heartbeat round
/// for every read, and a leader cut off right after those acks serves none.
#[test]
fn leader_with_fresh_heartbeat_acks_still_needs_a_new_quorum_round_to_read() {
    let mut c = cluster3();
    let all = c.ids.clone();
    c.elect(1).unwrap();
    c.put(1, 4, 1).unwrap();
    c.stabilize().unwrap();
    c.tick_stable(u64::from(c.node(1).cfg.heartbeat_tick))
        .unwrap();
    c.net.isolate(1, &all);
    c.events.clear();
    c.node_mut(1)
        .raw_mut()
        .read_index(vec![0, 0, 0, 0, 0, 0, 0, 2, 1])
        .unwrap();
    c.stabilize().unwrap();
    assert!(
        read_events(&mut c, 1).is_empty(),
        "a leader answered a read from old acks without a quorum round"
    );
}

/// Thesis §6.4.1 batching: every read queued before the next Ready shares
/// one heartbeat round.
#[test]
fn reads_queued_together_share_one_heartbeat_round() {
    let mut c = cluster3();
    c.elect(1).unwrap();
    c.put(1, 4, 1).unwrap();
    c.stabilize().unwrap();
    c.events.clear();
    for op in 0..10u8 {
        c.node_mut(1)
            .raw_mut()
            .read_index(vec![op, 0, 0, 0, 0, 0, 0, 0, 1])
            .unwrap();
    }
    c.process(1).unwrap();
    let rounds: Vec<_> = c
        .net
        .queue
        .iter()
        .filter(|e| e.msg.msg_type == MessageType::Heartbeat)
        .collect();
    assert_eq!(rounds.len(), 2, "one heartbeat per follower");
    assert!(
        rounds
            .iter()
            .all(|e| e.msg.context == rounds[0].msg.context && !e.msg.context.is_empty())
    );
    c.stabilize().unwrap();
    assert_eq!(read_events(&mut c, 1), vec![Some(4); 10]);
}

/// A follower's read goes through the leader and sees every committed write.
#[test]
fn follower_read_index_sees_the_latest_committed_write() {
    let mut c = cluster3();
    c.elect(1).unwrap();
    c.put(1, 77, 3).unwrap();
    c.stabilize().unwrap();
    c.events.clear();
    c.node_mut(2)
        .raw_mut()
        .read_index(vec![0, 0, 0, 0, 0, 0, 0, 9, 3])
        .unwrap();
    c.tick_stable(3).unwrap();
    assert_eq!(read_events(&mut c, 2), vec![Some(77)]);
}

/// A learner joins with an empty log, catches up through a snapshot (the
/// leader's log is compacted), does not vote, and counts once promoted.
#[test]
fn learner_catches_up_from_a_snapshot_and_counts_after_promotion() {
    let mut c = Cluster::new(3, 4, 9, |_: &mut Config| {});
    let all = c.ids.clone();
    c.elect(1).unwrap();
    for op in 1..=20 {
        c.put(1, op, (op % 3) as u8).unwrap();
    }
    c.stabilize().unwrap();
    c.compact(1);
    c.node_mut(1)
        .raw_mut()
        .propose_conf_change(cc(ConfChangeType::AddLearner, 4))
        .unwrap();
    c.tick_stable(10).unwrap();
    assert!(status(&c, 1).conf.learners.contains(&4));
    assert_eq!(c.node(4).applied, status(&c, 1).commit, "learner caught up");
    assert_eq!(c.node(4).kv, c.node(1).kv);
    assert!(
        c.node(4).raw().storage().snapshot_meta().index > 0,
        "via a snapshot"
    );
    c.node_mut(1)
        .raw_mut()
        .propose_conf_change(cc(ConfChangeType::PromoteLearner, 4))
        .unwrap();
    c.tick_stable(5).unwrap();
    assert!(status(&c, 4).conf.voters.contains(&4));
    // With four voters, {1, 2, 4} is a majority even without node 3.
    c.net.isolate(3, &all);
    let (index, _) = c.put(1, 99, 0).unwrap();
    c.tick_stable(5).unwrap();
    assert_eq!(status(&c, 4).commit, index);
}

/// A leader that removes itself keeps leading until the removal commits,
/// then steps down; it never campaigns again and the rest carry on.
#[test]
fn removing_the_leader_steps_it_down_and_the_rest_elect_a_new_one() {
    let mut c = cluster3();
    c.elect(1).unwrap();
    c.node_mut(1)
        .raw_mut()
        .propose_conf_change(cc(ConfChangeType::RemoveNode, 1))
        .unwrap();
    c.stabilize().unwrap();
    assert_eq!(status(&c, 1).role, Role::Follower);
    assert!(!status(&c, 2).conf.voters.contains(&1));
    c.tick_stable(60).unwrap();
    let leader = c.leader().expect("2 and 3 elect a leader");
    assert_ne!(leader, 1);
    let (index, _) = c.put(leader, 5, 1).unwrap();
    c.tick_stable(3).unwrap();
    assert_eq!(status(&c, 2).commit.min(status(&c, 3).commit), index);
    assert_ne!(status(&c, 1).role, Role::Candidate);
}

/// Only one membership change may be in flight.
#[test]
fn a_second_conf_change_is_refused_while_one_is_uncommitted() {
    let mut c = Cluster::new(3, 5, 10, |_: &mut Config| {});
    let all = c.ids.clone();
    c.elect(1).unwrap();
    c.net.isolate(1, &all);
    c.node_mut(1)
        .raw_mut()
        .propose_conf_change(cc(ConfChangeType::AddLearner, 4))
        .unwrap();
    let second = c
        .node_mut(1)
        .raw_mut()
        .propose_conf_change(cc(ConfChangeType::AddLearner, 5));
    assert_eq!(second, Err(RaftError::ConfChangePending));
}

/// Leadership transfer to a follower that is behind: the leader first
/// catches it up, refuses proposals meanwhile, then sends TimeoutNow.
#[test]
fn transfer_to_a_lagging_node_catches_it_up_first() {
    let mut c = cluster3();
    let all = c.ids.clone();
    c.elect(1).unwrap();
    c.net.isolate(3, &all);
    for op in 1..=10 {
        c.put(1, op, 2).unwrap();
    }
    c.stabilize().unwrap();
    let committed = status(&c, 1).commit;
    assert!(status(&c, 3).last_index < committed);
    c.net.heal();
    c.node_mut(1).raw_mut().transfer_leader(3).unwrap();
    assert_eq!(
        c.put(1, 11, 2),
        Err(RaftError::TransferInProgress.to_string())
    );
    c.stabilize().unwrap();
    assert_eq!(c.leader(), Some(3));
    assert!(term_at(&c, 3, committed).is_some());
    c.put(3, 12, 2).unwrap();
    c.stabilize().unwrap();
    assert_eq!(c.node(1).kv.get(2), Some(12));
}

/// A transfer whose target never catches up is abandoned after an
/// election timeout, and proposals flow again.
#[test]
fn transfer_to_an_unreachable_node_is_abandoned_after_an_election_timeout() {
    let mut c = cluster3();
    let all = c.ids.clone();
    c.elect(1).unwrap();
    c.net.isolate(3, &all);
    c.put(1, 1, 0).unwrap();
    c.stabilize().unwrap();
    c.node_mut(1).raw_mut().transfer_leader(3).unwrap();
    assert_eq!(status(&c, 1).transferring_to, 3);
    let min = u64::from(c.node(1).cfg.election_tick_min);
    c.tick_stable(min).unwrap();
    assert_eq!(status(&c, 1).transferring_to, 0);
    assert!(c.put(1, 2, 0).is_ok());
}

/// Proposals stop at the uncommitted-bytes limit instead of growing without bound.
#[test]
fn proposals_beyond_the_uncommitted_bytes_limit_are_refused() {
    let mut c = Cluster::new(3, 3, 11, |cfg: &mut Config| cfg.max_uncommitted_bytes = 200);
    let all = c.ids.clone();
    c.elect(1).unwrap();
    c.net.isolate(1, &all);
    let results: Vec<_> = (0..20).map(|op| c.put(1, op, 0)).collect();
    assert!(
        results
            .iter()
            .any(|r| r == &Err(RaftError::TooManyUncommitted.to_string()))
    );
    assert!(results[0].is_ok());
}

/// Followers refuse proposals and name the leader.
#[test]
fn follower_refuses_proposals_with_a_leader_hint() {
    let mut c = cluster3();
    c.elect(1).unwrap();
    assert_eq!(
        c.put(2, 1, 0),
        Err(RaftError::NotLeader { leader: 1 }.to_string())
    );
}

/// A crash loses what was never synced, and the node still rejoins cleanly.
#[test]
fn unsynced_entries_are_lost_on_crash_and_the_node_rejoins() {
    let mut c = cluster3();
    c.elect(1).unwrap();
    c.stabilize().unwrap();
    c.persist_per_mille = 0;
    c.put(1, 1, 0).unwrap();
    c.process_all().unwrap();
    let before = c.node(1).durable().last_index();
    c.crash(1);
    c.restart(1).unwrap();
    assert_eq!(
        status(&c, 1).last_index,
        before,
        "the unsynced proposal is gone"
    );
    c.persist_per_mille = 1000;
    c.net.take_all();
    c.tick_stable(60).unwrap();
    assert!(c.leader().is_some());
    assert!(
        c.nodes
            .values()
            .all(|n| n.raw().storage().last_index() >= before)
    );
}

/// A follower forwards proposals to the leader it knows: the forwards made
/// before its next Ready travel in one Propose message, the leader appends
/// them in order, and every node applies them.
#[test]
fn follower_forwards_proposals_in_one_message_and_every_node_applies_them() {
    static PROPOSE_MSGS: AtomicU32 = AtomicU32::new(0);
    let mut c = cluster3();
    c.elect(1).unwrap();
    c.stabilize().unwrap();
    c.net.drop_filter = Some(|m: &Message| {
        if m.msg_type == MessageType::Propose {
            assert_eq!((m.from, m.to, m.entries.len()), (2, 1, 2));
            PROPOSE_MSGS.fetch_add(1, Ordering::SeqCst);
        }
        false
    });
    c.forward(2, 10, 1).unwrap();
    c.forward(2, 11, 1).unwrap();
    c.stabilize().unwrap();
    assert_eq!(PROPOSE_MSGS.load(Ordering::SeqCst), 1);
    let last = status(&c, 1).last_index;
    for id in 1..=3 {
        assert_eq!(c.node(id).kv.get(1), Some(11), "node {id}");
        assert_eq!(c.node(id).applied, last, "node {id}");
    }
}

/// Forwarding needs a known leader, and the leader itself must propose.
#[test]
fn forwarding_is_refused_without_a_leader_and_on_the_leader() {
    let mut c = cluster3();
    assert_eq!(
        c.forward(2, 1, 0),
        Err(RaftError::NotLeader { leader: 0 }.to_string())
    );
    c.elect(1).unwrap();
    assert_eq!(
        c.forward(1, 2, 0),
        Err(RaftError::NotLeader { leader: 1 }.to_string())
    );
}

/// A leader drops forwarded proposals it cannot take (here: a transfer in
/// progress) without appending anything; nothing is answered, the
/// follower's node times them out.
#[test]
fn a_leader_drops_forwarded_proposals_during_a_transfer() {
    let mut c = cluster3();
    let all = c.ids.clone();
    c.elect(1).unwrap();
    c.net.isolate(3, &all);
    c.put(1, 1, 0).unwrap();
    c.stabilize().unwrap();
    c.node_mut(1).raw_mut().transfer_leader(3).unwrap();
    let before = status(&c, 1).last_index;
    c.forward(2, 2, 0).unwrap();
    c.stabilize().unwrap();
    assert_eq!(status(&c, 1).last_index, before);
    assert_eq!(c.node(2).kv.get(0), Some(1));
}

/// A forwarded message carrying anything but plain commands (a
/// configuration change must pass the leader's own checks) is dropped.
#[test]
fn a_forwarded_configuration_change_is_dropped() {
    let mut c = cluster3();
    c.elect(1).unwrap();
    c.stabilize().unwrap();
    let before = status(&c, 1).last_index;
    let mut m = Message::new(MessageType::Propose, 2, 1, status(&c, 1).term);
    m.entries.push(titan_raft::Entry {
        index: 0,
        term: 0,
        kind: titan_raft::EntryKind::ConfChange,
        data: cc(ConfChangeType::RemoveNode, 3).encode(),
    });
    c.node_mut(1).raw_mut().step(m).unwrap();
    c.stabilize().unwrap();
    assert_eq!(status(&c, 1).last_index, before);
    assert!(status(&c, 1).conf.voters.contains(&3));
}
