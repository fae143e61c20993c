//! Members that keep values in the value log (`--value-log-threshold`):
//! overwrites, forced merges and `kill -9` during sustained writes lose no
//! acknowledged write, the merge gives disk back, and a member that keeps
//! values in memory refuses the merge call.

mod common;

use std::time::Duration;

use common::load::{Writers, verify_all};
use common::{Cluster, Node, http_get, metric, rt, wait_for, xorshift};
use titan_proto::v1 as pb;
use titan_proto::v1::admin_client::AdminClient;

/// Fixed seed for the kill/merge schedule.
const SEED: u64 = 0x766c_6f67;

fn merge(node: &Node) -> Result<pb::MergeValueLogResponse, tonic::Status> {
    let addr = format!("http://127.0.0.1:{}", node.peer_port);
    rt().block_on(async move {
        let mut c = AdminClient::connect(addr)
            .await
            .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
        c.merge_value_log(pb::MergeValueLogRequest {})
            .await
            .map(|r| r.into_inner())
    })
}

/// etcd Compact at the current revision (through any member): superseded
/// values leave the MVCC history, so their records die.
fn compact_history(cluster: &Cluster) {
    use titan_proto::etcdserverpb::kv_client::KvClient;
    use titan_proto::etcdserverpb::{CompactionRequest, RangeRequest};
    let port = cluster
        .nodes
        .iter()
        .find(|n| n.is_running())
        .expect("a member")
        .grpc_port;
    rt().block_on(async move {
        let mut kv = KvClient::connect(format!("http://127.0.0.1:{port}"))
            .await
            .expect("connect");
        let range = RangeRequest {
            key: b"\0".to_vec(),
            count_only: true,
            ..RangeRequest::default()
        };
        let header = kv.range(range).await.expect("range").into_inner().header;
        let revision = header.expect("header").revision;
        kv.compact(CompactionRequest {
            revision,
            physical: false,
        })
        .await
        .expect("compact");
    });
}

fn vlog_bytes(dir: &std::path::Path) -> u64 {
    std::fs::read_dir(dir.join("vlog"))
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

#[test]
fn kill_nine_and_merges_with_every_value_logged_lose_no_acknowledged_write() {
    let mut cluster = Cluster::start(3, &["--snapshot-threshold=300", "--value-log-threshold=0"]);
    let ports = cluster.client_ports();
    // Few keys, many overwrites: most logged records die quickly.
    let writers = Writers::start(ports, 4, 10);
    let mut rng = SEED;
    let mut merged_files = 0;
    for round in 0..6 {
        let victim = (xorshift(&mut rng) % 3) as usize;
        std::thread::sleep(Duration::from_millis(400));
        compact_history(&cluster);
        for node in cluster.nodes.iter().filter(|n| n.is_running()) {
            let m = merge(node).expect("merge on a member with a value log");
            merged_files += m.files;
            assert!(m.live_bytes <= m.file_bytes, "{m:?}");
        }
        eprintln!("round {round}: kill -9 {}", cluster.nodes[victim].name);
        cluster.nodes[victim].kill();
        std::thread::sleep(Duration::from_millis(200 + xorshift(&mut rng) % 300));
        cluster.nodes[victim].start();
        let before = writers.acked();
        wait_for(Duration::from_secs(20), "progress after restart", || {
            (writers.acked() > before + 5).then_some(())
        });
    }
    let ledger = writers.stop();
    eprintln!(
        "acked {} failed {} merged files {merged_files}",
        ledger.acked, ledger.failed
    );
    assert!(ledger.acked > 100);
    assert!(merged_files > 0, "no merge retired a file");
    cluster.wait_leader(Duration::from_secs(10));
    verify_all(&cluster, &ledger);

    // One more merge on a quiet member leaves about the live data on disk
    // and is counted in its metrics.
    compact_history(&cluster);
    let node = &cluster.nodes[0];
    let before = vlog_bytes(&node.data_dir);
    let m = merge(node).expect("merge");
    let after = vlog_bytes(&node.data_dir);
    eprintln!("quiet merge {m:?}: {before} -> {after} bytes on disk");
    assert!(m.files > 0 && after < before, "{m:?}: {before} -> {after}");
    assert!(
        after <= m.live_bytes,
        "only the copied live records remain: {after}"
    );
    let text = http_get(node.http_port, "/metrics");
    assert!(
        metric(&text, "titan_value_log_bytes").is_some_and(|b| b > 0.0),
        "{text}"
    );
    verify_all(&cluster, &ledger);
}

#[test]
fn a_member_that_keeps_values_in_memory_refuses_a_merge() {
    let cluster = Cluster::start(1, &[]);
    cluster.wait_leader(Duration::from_secs(10));
    let err = merge(&cluster.nodes[0]).expect_err("no value log");
    assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{err:?}");
    assert!(err.message().contains("--value-log-threshold"), "{err:?}");
}
