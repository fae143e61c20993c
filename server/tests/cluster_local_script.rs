//! `scripts/cluster.sh` (what `make cluster-start` runs) against the real
//! binary: it starts the original three nodes, names the node that really leads,
//! and finds it without writing anything into the keyspace.
//!
//! The script uses the original fixed ports (5001..5003, 6001..6003 and the
//! derived 7001..7003, 8080..8082); when one of them is taken on this host
//! the test says so and skips rather than fight whatever holds it.

mod common;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;

use titan_proto::v1 as pb;

const SEED_PORTS: [u16; 12] = [
    5001, 5002, 5003, 6001, 6002, 6003, 7001, 7002, 7003, 8080, 8081, 8082,
];

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .expect("repo root")
}

/// Runs `scripts/cluster.sh <cmd>` with the test binary and state in `dir`.
fn cluster_sh(dir: &Path, cmd: &str) -> (bool, String) {
    let out = Command::new(repo_root().join("scripts/cluster.sh"))
        .arg(cmd)
        .env("TITAN_CLUSTER_DIR", dir)
        .env("TITAN_BIN", common::server_bin())
        .env_remove("RUST_LOG")
        .output()
        .expect("run scripts/cluster.sh");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

/// Stops the script's nodes even when an assertion fails.
struct StopOnDrop(PathBuf);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        let _ = cluster_sh(&self.0, "stop");
    }
}

#[test]
fn cluster_script_names_the_real_leader_and_writes_nothing() {
    let busy: Vec<u16> = SEED_PORTS
        .into_iter()
        .filter(|p| TcpListener::bind(("127.0.0.1", *p)).is_err())
        .collect();
    if !busy.is_empty() {
        eprintln!("SKIPPED: seed ports {busy:?} are in use on this host");
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let _stop = StopOnDrop(dir.path().to_path_buf());
    let (ok, out) = cluster_sh(dir.path(), "start");
    assert!(ok, "cluster.sh start failed: {out}");
    let first = out.lines().next().unwrap_or_default();
    let n: usize = first
        .strip_prefix("cluster up; leader is node")
        .and_then(|rest| rest.split(' ').next())
        .and_then(|d| d.parse().ok())
        .unwrap_or_else(|| panic!("no leader line: {out}"));
    assert!(first.ends_with(&format!("(client port 600{n})")), "{first}");
    assert!(
        out.contains(&format!(
            "echo 'SET greeting hello world' | nc -q1 localhost 600{n}"
        )),
        "the write hint goes to the leader: {out}"
    );
    let peer = common::Node {
        name: format!("node{n}"),
        peer_port: 5000 + n as u16,
        client_port: 6000 + n as u16,
        grpc_port: 7000 + n as u16,
        http_port: 8079 + n as u16,
        data_dir: dir.path().join(format!("data/node{n}")),
        args: Vec::new(),
        child: None,
    };
    let status = peer.status().expect("admin status of the named leader");
    assert_eq!(status.role, pb::Role::Leader as i32, "node{n} really leads");
    // Nothing but the cluster's own entries: no probe key, no user data.
    for port in [6001, 6002, 6003] {
        let mut c = common::Client::connect(port).expect("connect");
        assert_eq!(c.cmd("GET __leader_probe").unwrap(), "NOT_FOUND");
    }
    let (ok, again) = cluster_sh(dir.path(), "status");
    assert!(
        ok && again.contains(&format!("leader is node{n}")),
        "{again}"
    );
    assert!(
        dir.path().join("data/node1").is_dir(),
        "nodes run in the state dir with the default ./data/<id>"
    );
    // The whole key space, read linearizably over gRPC on the leader: empty.
    let kvs = common::rt().block_on(async move {
        let addr = format!("http://127.0.0.1:{}", 7000 + n);
        let mut kv = pb::kv_client::KvClient::connect(addr).await.expect("gRPC");
        kv.range(pb::RangeRequest::default())
            .await
            .expect("Range")
            .into_inner()
            .kvs
    });
    assert!(kvs.is_empty(), "the keyspace is empty after start: {kvs:?}");
}
