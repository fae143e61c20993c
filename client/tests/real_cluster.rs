//! The client, `titanctl` and the leader-failover path against a real 3-node
//! `titan-server` cluster on loopback.
//!
//! Nodes come from `titan-testkit`: the server binary is `TITAN_SERVER_BIN`,
//! else `titan-server` in this test's target dir (`cargo build -p titan-server
//! --bins` first; the test never builds it).

use std::collections::BTreeMap;
use std::process::Command;
use std::time::{Duration, Instant};
use titan_client::{AdminClient, CasResult, Client, ClientConfig, Consistency, Error, RangeQuery};

/// Writes in the failover stream.
const STREAM_WRITES: usize = 300;
/// Acknowledged writes before the leader is killed.
const KILL_AFTER_ACKS: usize = 60;
/// Longest a short titan-bench run may take before the test calls it a hang.
const BENCH_RUN_LIMIT: Duration = Duration::from_secs(60);

/// A 3-node cluster from `titan-testkit`, with the client-side views these
/// tests need.
struct TestCluster {
    inner: titan_testkit::Cluster,
}

impl TestCluster {
    /// Starts 3 bootstrapped nodes and waits for a leader (blocking calls run
    /// in `block_in_place`, so this must be a multi-thread runtime).
    fn start() -> TestCluster {
        let inner = tokio::task::block_in_place(|| titan_testkit::Cluster::start(3, &[]));
        TestCluster { inner }
    }

    fn nodes(&self) -> &[titan_testkit::Node] {
        &self.inner.nodes
    }

    fn grpc_endpoints(&self) -> Vec<String> {
        self.inner.grpc_endpoints()
    }

    fn admin_endpoints(&self) -> Vec<String> {
        self.inner.admin_endpoints()
    }

    fn client(&self) -> Client {
        let mut config = ClientConfig::new(self.grpc_endpoints());
        config.request_timeout = Duration::from_secs(2);
        config.retry.overall_deadline = Duration::from_secs(15);
        config.retry.max_attempts = 200;
        Client::connect(config).expect("valid config")
    }

    fn admin(&self) -> AdminClient {
        AdminClient::connect(ClientConfig::new(self.admin_endpoints())).expect("valid config")
    }

    /// Waits until some node reports a leader; returns the leader's peer port.
    async fn wait_for_leader(&self, timeout: Duration) -> u16 {
        let admin = self.admin();
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            for node in self.nodes().iter().filter(|n| n.is_running()) {
                let Ok(s) = admin.status_of(&node.admin_endpoint()).await else {
                    continue;
                };
                let leader = self
                    .nodes()
                    .iter()
                    .find(|n| s.leader_peer_addr.ends_with(&format!(":{}", n.peer_port)));
                if let Some(leader) = leader.filter(|l| l.is_running()) {
                    return leader.peer_port;
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("no leader within {timeout:?}");
    }

    fn kill_by_peer_port(&mut self, peer: u16) {
        let node = self
            .inner
            .nodes
            .iter_mut()
            .find(|n| n.peer_port == peer)
            .expect("known node");
        assert!(node.is_running(), "node is running");
        node.kill();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_survive_a_leader_kill_mid_stream() {
    let mut cluster = TestCluster::start();
    let leader = cluster.wait_for_leader(Duration::from_secs(20)).await;
    let client = cluster.client();
    let mut acked: BTreeMap<String, String> = BTreeMap::new();
    let mut unknown = Vec::new();
    let mut killed = false;
    for i in 0..STREAM_WRITES {
        if !killed && acked.len() == KILL_AFTER_ACKS {
            cluster.kill_by_peer_port(leader);
            killed = true;
        }
        let (key, value) = (format!("stream/{i:05}"), format!("value-{i}"));
        match client.put(key.as_str(), value.as_str()).await {
            Ok(_) => {
                acked.insert(key, value);
            }
            Err(Error::OutcomeUnknown { .. }) => unknown.push(key),
            Err(err) => panic!("write {i} failed after the leader kill: {err}"),
        }
    }
    assert!(killed, "the leader was killed mid-stream");
    // A sequential writer has at most one write in flight at the kill.
    assert!(unknown.len() <= 1, "unknown outcomes: {unknown:?}");
    assert!(acked.len() >= STREAM_WRITES - 1);
    for (key, value) in &acked {
        let got = client
            .get(key.as_str(), Consistency::Linearizable)
            .await
            .expect("read back");
        let (v, _) = got.unwrap_or_else(|| panic!("acknowledged write {key} is lost"));
        assert_eq!(String::from_utf8_lossy(&v), *value, "{key}");
    }
    let new_leader = cluster.wait_for_leader(Duration::from_secs(10)).await;
    assert_ne!(new_leader, leader);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn versions_and_compare_and_set_work_end_to_end() {
    let cluster = TestCluster::start();
    cluster.wait_for_leader(Duration::from_secs(20)).await;
    let client = cluster.client();
    let v1 = match client
        .put_if_absent("cas/k", "a")
        .await
        .expect("put_if_absent")
    {
        CasResult::Applied { version } => version,
        other => panic!("first put_if_absent must apply: {other:?}"),
    };
    assert_eq!(
        client
            .put_if_absent("cas/k", "b")
            .await
            .expect("second put_if_absent"),
        CasResult::Conflict {
            current_version: v1
        }
    );
    let v2 = match client.put_if_version("cas/k", "c", v1).await.expect("cas") {
        CasResult::Applied { version } => version,
        other => panic!("cas at the current version must apply: {other:?}"),
    };
    assert!(v2 > v1);
    assert_eq!(
        client
            .put_if_version("cas/k", "d", v1)
            .await
            .expect("stale cas"),
        CasResult::Conflict {
            current_version: v2
        }
    );
    let got = client
        .get("cas/k", Consistency::Serializable)
        .await
        .expect("get");
    assert!(matches!(got, Some((ref v, _)) if v == b"c"), "{got:?}");
    client.put("cas/other", "x").await.expect("put");
    let page = client
        .range(RangeQuery::prefix("cas/"))
        .await
        .expect("range");
    let keys: Vec<_> = page
        .kvs
        .iter()
        .map(|kv| String::from_utf8_lossy(&kv.key).into_owned())
        .collect();
    assert_eq!(keys, ["cas/k", "cas/other"]);
    assert!(matches!(
        client.delete_if_version("cas/k", v2).await,
        Ok(CasResult::Applied { .. })
    ));
    assert_eq!(
        client
            .get("cas/k", Consistency::Linearizable)
            .await
            .expect("get"),
        None
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn titanctl_reports_status_and_exit_codes() {
    let cluster = TestCluster::start();
    cluster.wait_for_leader(Duration::from_secs(20)).await;
    let ctl = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_titanctl"))
            .env("TITAN_ENDPOINTS", cluster.grpc_endpoints().join(","))
            .env("TITAN_ADMIN_ENDPOINTS", cluster.admin_endpoints().join(","))
            .args(args)
            .output()
            .expect("run titanctl")
    };
    let set = ctl(&["set", "ctl/k", "hello world"]);
    assert_eq!(
        set.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&set.stderr)
    );
    let get = ctl(&["get", "ctl/k"]);
    assert_eq!(String::from_utf8_lossy(&get.stdout).trim(), "hello world");
    assert_eq!(ctl(&["get", "ctl/missing"]).status.code(), Some(3));
    assert_eq!(
        ctl(&["set", "ctl/k", "x", "--if-version", "1"])
            .status
            .code(),
        Some(4)
    );
    let status = ctl(&["-o", "json", "status"]);
    assert_eq!(
        status.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&status.stderr)
    );
    let json: serde_json::Value = serde_json::from_slice(&status.stdout).expect("status JSON");
    let members = json["members"].as_array().expect("members array");
    assert_eq!(members.len(), 3);
    assert_eq!(members.iter().filter(|m| m["role"] == "LEADER").count(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn titan_bench_drives_tcp_and_grpc_load_through_redirects() {
    let cluster = TestCluster::start();
    cluster.wait_for_leader(Duration::from_secs(20)).await;
    let tcp: Vec<String> = cluster.inner.tcp_endpoints();
    let cases = [
        ("titan-tcp", tcp.join(",")),
        ("titan-grpc", cluster.grpc_endpoints().join(",")),
    ];
    for (target, endpoints) in cases {
        for op in ["put", "get", "mixed"] {
            let mut bench = tokio::process::Command::new(env!("CARGO_BIN_EXE_titan-bench"));
            bench
                .args(["--target", target, "--endpoints", &endpoints, "--op", op])
                .args([
                    "--clients",
                    "6",
                    "--ops",
                    "300",
                    "--keys",
                    "50",
                    "--json",
                    "--quiet",
                ])
                .kill_on_drop(true);
            // 300 operations take well under a second; a run that is still
            // going after a minute is a hang, reported as one.
            let out = tokio::time::timeout(BENCH_RUN_LIMIT, bench.output())
                .await
                .unwrap_or_else(|_| {
                    panic!("{target} {op}: titan-bench still running after {BENCH_RUN_LIMIT:?}")
                })
                .expect("run titan-bench");
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(0), "{target} {op}: {stderr}");
            let summary: serde_json::Value =
                serde_json::from_slice(&out.stdout).expect("summary JSON");
            assert_eq!(summary["ops"], 300, "{target} {op}: {summary}");
            assert_eq!(summary["errors_total"], 0, "{target} {op}: {summary}");
        }
    }
}
