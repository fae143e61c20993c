//! The client, `titanctl` and the leader-failover path against a real 3-node
//! `titan-server` cluster on loopback.
//!
//! The server binary is taken from `TITAN_SERVER_BIN`, else
//! `target/debug/titan-server`, brought up to date with
//! `cargo build -p titan-server` first (a no-op when nothing changed).

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use titan_client::{AdminClient, CasResult, Client, ClientConfig, Consistency, Error, RangeQuery};

/// Writes in the failover stream.
const STREAM_WRITES: usize = 300;
/// Acknowledged writes before the leader is killed.
const KILL_AFTER_ACKS: usize = 60;
/// Longest a short titan-bench run may take before the test calls it a hang.
const BENCH_RUN_LIMIT: Duration = Duration::from_secs(60);

struct NodeProc {
    name: String,
    peer: u16,
    client: u16,
    grpc: u16,
    http: u16,
    child: Option<Child>,
}

struct TestCluster {
    nodes: Vec<NodeProc>,
    _dir: tempfile::TempDir,
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            if let Some(mut child) = node.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    listener.local_addr().expect("local addr").port()
}

fn server_bin() -> PathBuf {
    if let Ok(bin) = std::env::var("TITAN_SERVER_BIN") {
        return PathBuf::from(bin);
    }
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let status = Command::new(env!("CARGO"))
        .args(["build", "-p", "titan-server", "--bin", "titan-server"])
        .current_dir(&root)
        .status()
        .expect("run cargo build for titan-server");
    assert!(status.success(), "building titan-server failed");
    // CARGO_TARGET_TMPDIR is `<target dir>/tmp`, wherever the target dir is.
    let target_dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    let target_dir = target_dir.parent().expect("target dir above tmp");
    target_dir.join("debug/titan-server")
}

impl TestCluster {
    fn start() -> TestCluster {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut nodes: Vec<NodeProc> = (1..=3)
            .map(|i| NodeProc {
                name: format!("node{i}"),
                peer: free_port(),
                client: free_port(),
                grpc: free_port(),
                http: free_port(),
                child: None,
            })
            .collect();
        let bin = server_bin();
        for i in 0..nodes.len() {
            let peers: Vec<String> = nodes
                .iter()
                .filter(|n| n.name != nodes[i].name)
                .map(|n| format!("{}:127.0.0.1:{}:{}", n.name, n.peer, n.client))
                .collect();
            let child = spawn_node(&bin, &nodes[i], &peers.join(","), dir.path());
            nodes[i].child = Some(child);
        }
        TestCluster { nodes, _dir: dir }
    }

    fn grpc_endpoints(&self) -> Vec<String> {
        self.nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.grpc))
            .collect()
    }

    fn admin_endpoints(&self) -> Vec<String> {
        self.nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.peer))
            .collect()
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
            for node in self.nodes.iter().filter(|n| n.child.is_some()) {
                let Ok(s) = admin.status_of(&format!("127.0.0.1:{}", node.peer)).await else {
                    continue;
                };
                let leader = self
                    .nodes
                    .iter()
                    .find(|n| s.leader_peer_addr.ends_with(&format!(":{}", n.peer)));
                if let Some(leader) = leader.filter(|l| l.child.is_some()) {
                    return leader.peer;
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("no leader within {timeout:?}");
    }

    fn kill_by_peer_port(&mut self, peer: u16) {
        let node = self
            .nodes
            .iter_mut()
            .find(|n| n.peer == peer)
            .expect("known node");
        let mut child = node.child.take().expect("node is running");
        child.kill().expect("SIGKILL the leader");
        let _ = child.wait();
    }
}

fn spawn_node(bin: &PathBuf, n: &NodeProc, peers: &str, dir: &std::path::Path) -> Child {
    let log = std::fs::File::create(dir.join(format!("{}.log", n.name))).expect("log file");
    Command::new(bin)
        .arg(format!("-id={}", n.name))
        .arg(format!("-port={}", n.peer))
        .arg(format!("-client-port={}", n.client))
        .arg(format!("-advertise-client-addr=127.0.0.1:{}", n.client))
        .arg(format!("--advertise-peer-addr=127.0.0.1:{}", n.peer))
        .arg(format!("--advertise-grpc-addr=127.0.0.1:{}", n.grpc))
        .arg(format!("--grpc-port={}", n.grpc))
        .arg(format!("--http-port={}", n.http))
        .arg("--listen-addr=127.0.0.1")
        .arg(format!("--data-dir={}", dir.join(&n.name).display()))
        .arg(format!("-peers={peers}"))
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("spawn titan-server")
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
    let tcp: Vec<String> = cluster
        .nodes
        .iter()
        .map(|n| format!("127.0.0.1:{}", n.client))
        .collect();
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
