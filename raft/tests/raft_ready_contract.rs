//! The Ready contract and start-up rules, checked on bare `RawNode`s.

use titan_raft::{
    ConfChange, ConfChangeType, Config, EntryKind, MemStorage, Message, MessageType, RawNode, Role,
    Storage, bootstrap_entries,
};

fn single_voter() -> RawNode<MemStorage> {
    let mut node = RawNode::new(
        &Config::new(1),
        MemStorage::new_bootstrapped(&[(1, vec![])]),
    )
    .unwrap();
    node.campaign();
    persist_all(&mut node);
    assert_eq!(node.status().role, Role::Leader);
    node
}

/// Persists and advances until quiet; returns the messages that went out.
fn persist_all(node: &mut RawNode<MemStorage>) -> Vec<Message> {
    let mut out = Vec::new();
    for _ in 0..16 {
        if !node.has_ready() {
            break;
        }
        let mut rd = node.ready();
        out.append(&mut rd.messages);
        node.storage_mut().append(&rd.entries).unwrap();
        if let Some(hs) = rd.hard_state {
            node.storage_mut().set_hard_state(hs);
        }
        out.append(&mut rd.persisted_messages);
        node.advance(rd);
    }
    out
}

#[test]
fn a_leader_counts_its_own_entries_only_once_persisted() {
    let mut node = single_voter();
    let (index, _) = node.propose(b"x".to_vec()).unwrap();
    let rd = node.ready();
    assert_eq!(rd.entries.last().map(|e| e.index), Some(index));
    assert!(rd.must_sync);
    assert!(
        node.status().commit < index,
        "nothing durable yet, nothing committed"
    );
    node.storage_mut().append(&rd.entries).unwrap();
    node.advance(rd);
    assert_eq!(node.status().commit, index);
    let rd = node.ready();
    assert_eq!(
        rd.committed_entries.last().map(|e| (e.index, e.kind)),
        Some((index, EntryKind::Normal))
    );
    node.advance(rd);
    assert_eq!(node.status().applied, index);
}

#[test]
fn append_acknowledgements_wait_for_persistence_but_leader_appends_do_not() {
    let founders = [(1, vec![]), (2, vec![])];
    let mut leader =
        RawNode::new(&Config::new(1), MemStorage::new_bootstrapped(&founders)).unwrap();
    let mut follower =
        RawNode::new(&Config::new(2), MemStorage::new_bootstrapped(&founders)).unwrap();
    leader.campaign();
    // Deliver the pre-vote/vote exchange by hand until 1 leads.
    for _ in 0..6 {
        let to_follower = persist_all(&mut leader);
        for m in to_follower {
            follower.step(m).unwrap();
        }
        let mut rd = follower.ready();
        let early = std::mem::take(&mut rd.messages);
        let late = std::mem::take(&mut rd.persisted_messages);
        assert!(
            early
                .iter()
                .all(|m| !matches!(m.msg_type, MessageType::VoteResp | MessageType::AppendResp))
        );
        assert!(late.iter().all(|m| !matches!(
            m.msg_type,
            MessageType::PreVoteResp | MessageType::HeartbeatResp
        )));
        follower.storage_mut().append(&rd.entries).unwrap();
        follower.advance(rd);
        for m in early.into_iter().chain(late) {
            leader.step(m).unwrap();
        }
    }
    assert_eq!(leader.status().role, Role::Leader);
    leader.propose(b"y".to_vec()).unwrap();
    let rd = leader.ready();
    assert!(
        rd.messages
            .iter()
            .any(|m| m.msg_type == MessageType::Append && !m.entries.is_empty())
    );
}

#[test]
fn committed_entries_are_never_handed_out_before_they_are_durable_locally() {
    let founders = [(1, vec![]), (2, vec![])];
    let mut follower =
        RawNode::new(&Config::new(2), MemStorage::new_bootstrapped(&founders)).unwrap();
    let mut m = Message::new(MessageType::Append, 1, 2, 2);
    m.index = 4;
    m.log_term = 1;
    m.commit = 5;
    m.entries = vec![titan_raft::Entry {
        index: 5,
        term: 2,
        kind: EntryKind::Noop,
        data: vec![],
    }];
    follower.step(m).unwrap();
    let rd = follower.ready();
    assert_eq!(rd.hard_state.map(|h| h.commit), Some(5));
    assert!(
        rd.committed_entries.iter().all(|e| e.index <= 4),
        "entry 5 is not durable yet"
    );
    assert_eq!(rd.persisted_messages.len(), 1);
    follower.storage_mut().append(&rd.entries).unwrap();
    follower.advance(rd);
    let rd = follower.ready();
    assert_eq!(rd.committed_entries.last().map(|e| e.index), Some(5));
}

#[test]
fn a_node_outside_the_configuration_never_campaigns_but_accepts_appends() {
    let mut joiner = RawNode::new(&Config::new(4), MemStorage::new()).unwrap();
    for _ in 0..200 {
        joiner.tick();
    }
    assert!(
        persist_all(&mut joiner).is_empty(),
        "no (pre-)vote requests"
    );
    let (entries, _) =
        bootstrap_entries(&[(1, b"a".to_vec()), (2, b"b".to_vec()), (3, b"c".to_vec())]);
    let mut m = Message::new(MessageType::Append, 1, 4, 2);
    m.entries = entries;
    m.commit = 6;
    joiner.step(m).unwrap();
    persist_all(&mut joiner);
    let st = joiner.status();
    assert_eq!((st.leader, st.commit, st.applied), (1, 6, 6));
    assert_eq!(
        st.conf.voters.len(),
        3,
        "membership learned from the replayed log"
    );
}

#[test]
fn restart_rebuilds_membership_from_snapshot_plus_log_including_uncommitted_changes() {
    let mut node = single_voter();
    let (index, _) = node
        .propose_conf_change(ConfChange {
            change: ConfChangeType::AddLearner,
            node_id: 9,
            context: vec![],
        })
        .unwrap();
    // Persist the entry, then crash before `advance` lets it commit.
    let rd = node.ready();
    node.storage_mut().append(&rd.entries).unwrap();
    let disk = node.storage().clone();
    let restarted = RawNode::new(&Config::new(1), disk).unwrap();
    let st = restarted.status();
    assert!(st.commit < index);
    assert!(
        st.conf.learners.contains(&9),
        "effect-on-append: the logged change is in force"
    );
}

/// A node whose state machine already applied part of the committed log
/// (boot replays the WAL up to commit) restarts with `Config::applied`, and
/// the core hands out only what comes after it; an applied index outside
/// `[snapshot, commit]` is refused, not clamped.
#[test]
fn restart_with_applied_hands_out_only_later_committed_entries() {
    let mut node = single_voter();
    let mut proposed = Vec::new();
    for v in [b"a", b"b", b"c"] {
        proposed.push(node.propose(v.to_vec()).unwrap().0);
        persist_all(&mut node);
    }
    let commit = node.status().commit;
    assert_eq!(commit, proposed[2]);
    let disk = node.storage().clone();

    let cases: [(u64, Option<Vec<u64>>); 5] = [
        (0, Some((1..=commit).collect())),
        (proposed[0], Some(vec![proposed[1], proposed[2]])),
        (commit, Some(vec![])),
        (commit + 1, None),
        (u64::MAX, None),
    ];
    for (applied, want) in cases {
        let mut cfg = Config::new(1);
        cfg.applied = applied;
        match (RawNode::new(&cfg, disk.clone()), want) {
            (Ok(mut restarted), Some(want)) => {
                let got: Vec<u64> = if restarted.has_ready() {
                    let rd = restarted.ready();
                    rd.committed_entries.iter().map(|e| e.index).collect()
                } else {
                    Vec::new()
                };
                assert_eq!(got, want, "applied = {applied}");
            }
            (Err(e), None) => assert!(
                matches!(e, titan_raft::RaftError::InvalidConfig(_)),
                "applied = {applied}: {e}"
            ),
            (got, want) => panic!(
                "applied = {applied}: started = {}, want {want:?}",
                got.is_ok()
            ),
        }
    }
}

/// A hard state whose commit index is past the last durable entry is a
/// contradiction in what the node persisted: `new` refuses it with a typed
/// error instead of clamping the commit index down.
#[test]
fn a_commit_index_past_the_log_is_refused_at_start_not_clamped() {
    let node = single_voter();
    let mut disk = node.storage().clone();
    let mut hs = disk.hard_state();
    hs.commit = disk.last_index() + 1;
    disk.set_hard_state(hs);
    assert!(matches!(
        RawNode::new(&Config::new(1), disk),
        Err(titan_raft::RaftError::InconsistentState(_))
    ));
}

#[test]
fn invalid_configs_are_refused_with_a_typed_error() {
    let mut cfg = Config::new(1);
    cfg.election_tick_max = cfg.election_tick_min;
    assert!(matches!(
        RawNode::new(&cfg, MemStorage::new()),
        Err(titan_raft::RaftError::InvalidConfig(_))
    ));
    assert!(RawNode::new(&Config::new(0), MemStorage::new()).is_err());
}

#[test]
fn storage_term_errors_are_typed() {
    let s = MemStorage::new();
    assert_eq!(s.term(3), Err(titan_raft::StorageError::Unavailable));
}
