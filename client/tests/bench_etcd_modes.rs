//! `titan-bench` over Titan's etcd v3 API against a real 3-node cluster: the
//! put/range/txn ops, the watch fan-out mode and the lease keep-alive mode
//! each complete with no error, every event delivered to every watcher and
//! no lease lost. Counts only: no timed assertion (a run still going after
//! [`BENCH_RUN_LIMIT`] is reported as a hang).
//!
//! Nodes come from `titan-testkit` (`cargo build -p titan-server --bins`
//! first; the test never builds the server).

use std::time::Duration;

/// Longest a short titan-bench run may take before the test calls it a hang.
const BENCH_RUN_LIMIT: Duration = Duration::from_secs(90);

/// Runs titan-bench against `endpoints` with `args`; returns its JSON summary.
async fn bench(endpoints: &str, args: &[&str]) -> serde_json::Value {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_titan-bench"));
    cmd.args(["--target", "titan-etcd", "--endpoints", endpoints])
        .args(args)
        .args(["--json", "--quiet"])
        .kill_on_drop(true);
    let out = tokio::time::timeout(BENCH_RUN_LIMIT, cmd.output())
        .await
        .unwrap_or_else(|_| panic!("{args:?}: still running after {BENCH_RUN_LIMIT:?}"))
        .expect("run titan-bench");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{args:?}: {stderr}");
    serde_json::from_slice(&out.stdout).expect("summary JSON")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn titan_bench_etcd_ops_watch_and_lease_modes_run_clean_on_a_real_cluster() {
    let cluster = tokio::task::block_in_place(|| {
        let cluster = titan_testkit::Cluster::start(3, &[]);
        cluster.wait_leader(Duration::from_secs(20));
        cluster
    });
    let endpoints = cluster.grpc_endpoints().join(",");
    let preload = ["--op", "put", "--clients", "4", "--keys", "50", "--preload"];
    bench(&endpoints, &[&preload[..], &["--ops", "1"]].concat()).await;
    for op in ["put", "range", "txn"] {
        let s = bench(
            &endpoints,
            &["--op", op, "--clients", "6", "--ops", "200", "--keys", "50"],
        )
        .await;
        assert_eq!(s["ops"], 200, "{op}: {s}");
        assert_eq!(s["errors_total"], 0, "{op}: {s}");
    }

    // 2 writers put 40 values under watch/; 20 watchers on 2 streams must
    // each see all 40, in revision order.
    let args = [
        "--op",
        "watch",
        "--watchers",
        "20",
        "--watch-streams",
        "2",
        "--clients",
        "2",
        "--ops",
        "40",
        "--key-prefix",
        "watch/",
        "--drain-secs",
        "30",
    ];
    let s = bench(&endpoints, &args).await;
    assert_eq!(s["extra"]["puts_acknowledged"], 40, "{s}");
    assert_eq!(s["extra"]["events_delivered"], 40 * 20, "{s}");
    assert_eq!(s["extra"]["events_out_of_order"], 0, "{s}");
    assert_eq!(s["errors_total"], 0, "{s}");
    assert_eq!(
        (s["clients"].as_u64(), s["ops"].as_u64()),
        (Some(20), Some(800))
    );

    // 30 leases kept alive for 3 s: every one still alive at the end.
    let args = [
        "--op",
        "lease",
        "--leases",
        "30",
        "--lease-ttl-secs",
        "5",
        "--keepalive-streams",
        "3",
        "--clients",
        "4",
        "--duration-secs",
        "3",
    ];
    let s = bench(&endpoints, &args).await;
    assert_eq!(s["extra"]["leases_granted"], 30, "{s}");
    assert_eq!(s["extra"]["leases_lost"], 0, "{s}");
    assert_eq!(s["errors_total"], 0, "{s}");
    assert!(
        s["ops"].as_u64().unwrap_or(0) >= 30,
        "every lease renewed once: {s}"
    );
}
