//! Named scenarios from the Raft paper and thesis, driven by hand through
//! the simulation harness (no random faults unless stated).

mod sim;

use sim::cluster::Cluster;
use titan_server::raft::{Config, Role, Storage};

fn cluster3() -> Cluster {
    Cluster::new(3, 3, 1, |_: &mut Config| {})
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
        assert_eq!(n.raw().storage().term(index), Ok(term));
        assert_eq!(
            n.raw().status().role,
            if id == 1 {
                Role::Leader
            } else {
                Role::Follower
            }
        );
    }
}
