//! The core must not panic on any input from the network: step thousands
//! of seeded random (often nonsensical) messages into a leader and a
//! follower and keep driving the Ready loop.

use titan_raft::rng::SplitMix64;
use titan_raft::{
    ConfState, Config, Entry, EntryKind, MemStorage, Message, MessageType, RawNode, SnapshotMeta,
};

/// Random messages stepped into each node.
const MESSAGES: usize = 20_000;

fn pick(rng: &mut SplitMix64, interesting: &[u64]) -> u64 {
    if rng.chance(1, 40) {
        rng.next_u64()
    } else {
        interesting[rng.below(interesting.len() as u64) as usize]
    }
}

fn random_message(rng: &mut SplitMix64, to: u64) -> Message {
    let nums = [0, 1, 2, 3, 5, 7, 8, 100, u64::MAX - 1, u64::MAX];
    let msg_type = MessageType::from_u32(1 + rng.below(12) as u32).unwrap_or(MessageType::Append);
    let mut m = Message::new(msg_type, rng.below(5), to, pick(rng, &nums[..8]));
    m.index = pick(rng, &nums);
    m.log_term = pick(rng, &nums);
    m.commit = pick(rng, &nums);
    m.reject = rng.chance(1, 2);
    m.reject_hint = pick(rng, &nums);
    m.hint_term = pick(rng, &nums);
    let first = if rng.chance(1, 2) {
        m.index.wrapping_add(1)
    } else {
        pick(rng, &nums)
    };
    for i in 0..rng.below(4) {
        let kind = EntryKind::from_u8(rng.below(3) as u8).unwrap_or(EntryKind::Normal);
        let data = (0..rng.below(12)).map(|_| rng.next_u64() as u8).collect();
        m.entries.push(Entry {
            index: first.wrapping_add(i),
            term: pick(rng, &nums),
            kind,
            data,
        });
    }
    if rng.chance(1, 5) {
        let conf = ConfState {
            voters: [1, rng.below(6)].into(),
            learners: Default::default(),
        };
        m.snapshot = Some(SnapshotMeta {
            index: pick(rng, &nums),
            term: pick(rng, &nums),
            conf,
        });
    }
    m
}

fn drive(node: &mut RawNode<MemStorage>) {
    for _ in 0..4 {
        if !node.has_ready() {
            return;
        }
        let rd = node.ready();
        if let Some(meta) = rd.snapshot.clone() {
            let _ = node.storage_mut().apply_snapshot(meta);
        }
        let _ = node.storage_mut().append(&rd.entries);
        if let Some(hs) = rd.hard_state {
            node.storage_mut().set_hard_state(hs);
        }
        node.advance(rd);
    }
}

#[test]
fn random_hostile_messages_never_panic_the_core() {
    let founders = [(1, vec![]), (2, vec![]), (3, vec![])];
    for (seed, id) in [(1u64, 1u64), (2, 2)] {
        let mut rng = SplitMix64::new(seed);
        let mut node =
            RawNode::new(&Config::new(id), MemStorage::new_bootstrapped(&founders)).unwrap();
        if id == 1 {
            node.campaign();
        }
        for _ in 0..MESSAGES {
            let _ = node.step(random_message(&mut rng, id));
            if rng.chance(1, 10) {
                node.tick();
            }
            if rng.chance(1, 20) {
                let _ = node.propose(vec![1, 2, 3]);
                let _ = node.read_index(vec![9]);
            }
            drive(&mut node);
        }
        let st = node.status();
        assert!(st.commit <= st.last_index);
        assert!(st.applied <= st.commit);
    }
}
