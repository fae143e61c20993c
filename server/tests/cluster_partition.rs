//! Network partitions through per-link fault-injecting proxies.

mod common;

use std::time::Duration;

use common::load::{Writers, read, verify_all};
use common::{Client, Cluster, wait_for};
use titan_proto::v1 as pb;

#[test]
fn isolated_leader_steps_down_majority_elects_and_no_stale_read_is_served() {
    let cluster = Cluster::with_proxies(3, &[]);
    let old = cluster.wait_leader(Duration::from_secs(10));
    let ports = cluster.client_ports();
    let writers = Writers::start(ports, 2, 20);
    wait_for(Duration::from_secs(10), "acked writes", || {
        (writers.acked() > 20).then_some(())
    });
    assert!(cluster.set("stale-check", "old"));
    cluster.isolate(old, true);
    // The majority elects someone else.
    let new = wait_for(Duration::from_secs(10), "majority leader", || {
        cluster.nodes.iter().enumerate().position(|(i, n)| {
            i != old
                && n.status()
                    .is_some_and(|s| s.role == pb::Role::Leader as i32)
        })
    });
    assert_ne!(new, old);
    let mut c = cluster.nodes[new].client();
    assert_eq!(c.cmd("SET stale-check new").unwrap(), "OK");
    // The old leader must never answer with the overwritten value.
    let mut stale =
        Client::connect(cluster.nodes[old].client_port).expect("old leader still accepts clients");
    let reply = stale.cmd("GET stale-check").unwrap();
    assert!(
        reply != "VALUE old",
        "stale read from isolated leader: {reply}"
    );
    let write = stale.cmd("SET isolated-write x").unwrap();
    assert_ne!(write, "OK", "isolated leader acknowledged a write");
    // It steps down (check-quorum).
    wait_for(Duration::from_secs(10), "old leader steps down", || {
        cluster.nodes[old]
            .status()
            .filter(|s| s.role != pb::Role::Leader as i32)
    });
    cluster.isolate(old, false);
    std::thread::sleep(Duration::from_millis(500));
    let ledger = writers.stop();
    verify_all(&cluster, &ledger);
    assert_eq!(
        read(cluster.nodes[old].client_port, "stale-check").unwrap(),
        Some("new".into())
    );
}
