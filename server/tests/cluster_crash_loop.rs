//! 20 rounds of `kill -9` on a seeded-random node during sustained writes
//! from several clients; afterwards every acknowledged write is present
//! with its last acknowledged value (or a later unacknowledged attempt).

mod common;

use std::time::Duration;

use common::load::{Writers, verify_all};
use common::{Cluster, wait_for, xorshift};

/// Fixed seed for the victim sequence; change it to explore other schedules.
const SEED: u64 = 0x7174_616e;
const ROUNDS: usize = 20;

#[test]
fn twenty_random_kill_nine_rounds_lose_no_acknowledged_write() {
    let mut cluster = Cluster::start(3, &["--snapshot-threshold=500"]);
    let ports = cluster.client_ports();
    let writers = Writers::start(ports, 4, 25);
    let mut rng = SEED;
    for round in 0..ROUNDS {
        let victim = (xorshift(&mut rng) % 3) as usize;
        eprintln!("round {round}: kill -9 node{}", victim + 1);
        cluster.nodes[victim].kill();
        std::thread::sleep(Duration::from_millis(300 + xorshift(&mut rng) % 400));
        cluster.nodes[victim].start();
        let before = writers.acked();
        wait_for(Duration::from_secs(20), "progress after restart", || {
            (writers.acked() > before + 5).then_some(())
        });
    }
    let ledger = writers.stop();
    eprintln!("acked {} failed {}", ledger.acked, ledger.failed);
    assert!(ledger.acked > 100);
    cluster.wait_leader(Duration::from_secs(10));
    verify_all(&cluster, &ledger);
}
