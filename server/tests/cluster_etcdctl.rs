//! Debian's stock `etcdctl` (package `etcd-client`, 3.4) against a real
//! 3-node Titan cluster over the etcd v3 API on the client gRPC port: the
//! commands users type, checked by their printed output.
//!
//! Without `etcdctl` on PATH the tests skip with a message, unless
//! `TITAN_REQUIRE_ALL_TIERS` is set (scripts/test.sh sets it and installs
//! the package), in which case they fail.

mod common;

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{Cluster, wait_for};

/// Whether `etcdctl` can run here; panics when it must.
fn etcdctl_available() -> bool {
    let found = Command::new("etcdctl")
        .arg("version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !found {
        assert!(
            std::env::var_os("TITAN_REQUIRE_ALL_TIERS").is_none(),
            "TITAN_REQUIRE_ALL_TIERS is set but etcdctl is missing (apt-get install etcd-client)"
        );
        eprintln!("skipping: etcdctl not found (apt-get install etcd-client)");
    }
    found
}

/// One `etcdctl` run: (success, stdout, stderr).
fn ctl(endpoints: &str, args: &[&str], stdin: Option<&str>) -> (bool, String, String) {
    let mut child = Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={endpoints}"))
        .arg("--command-timeout=10s")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn etcdctl");
    let mut input = child.stdin.take().expect("stdin");
    if let Some(text) = stdin {
        input.write_all(text.as_bytes()).expect("write stdin");
    }
    drop(input);
    let out = child.wait_with_output().expect("etcdctl output");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `etcdctl` that must succeed; returns stdout.
fn ok(endpoint: &str, args: &[&str]) -> String {
    let (success, out, err) = ctl(endpoint, args, None);
    assert!(success, "etcdctl {args:?} failed: {err}{out}");
    out
}

fn endpoint(cluster: &Cluster, i: usize) -> String {
    format!("127.0.0.1:{}", cluster.nodes[i].grpc_port)
}

/// The `"revision"` of an `etcdctl -w json` reply's header.
fn json_revision(out: &str) -> i64 {
    let v: serde_json::Value = serde_json::from_str(out.trim()).expect("json output");
    v["header"]["revision"].as_i64().expect("header.revision")
}

#[test]
fn etcdctl_put_get_prefix_rev_limit_del_and_txn_on_the_leader() {
    if !etcdctl_available() {
        return;
    }
    let cluster = Cluster::start(3, &[]);
    let leader = cluster.wait_leader(Duration::from_secs(20));
    let ep = endpoint(&cluster, leader);
    assert_eq!(ok(&ep, &["put", "fruit/apple", "red"]), "OK\n");
    assert_eq!(ok(&ep, &["put", "fruit/banana", "yellow"]), "OK\n");
    let rev = json_revision(&ok(&ep, &["put", "fruit/apple", "green", "-w", "json"]));
    assert_eq!(ok(&ep, &["get", "fruit/apple"]), "fruit/apple\ngreen\n");
    let old = (rev - 1).to_string();
    assert_eq!(
        ok(&ep, &["get", "fruit/apple", "--rev", &old]),
        "fruit/apple\nred\n"
    );
    assert_eq!(
        ok(&ep, &["get", "fruit/", "--prefix", "--keys-only"]),
        "fruit/apple\n\nfruit/banana\n\n"
    );
    assert_eq!(
        ok(&ep, &["get", "fruit/", "--prefix", "--limit", "1"]),
        "fruit/apple\ngreen\n"
    );
    assert_eq!(ok(&ep, &["del", "fruit/banana"]), "1\n");
    assert_eq!(ok(&ep, &["get", "fruit/banana"]), "");
    let txn = "mod(\"fruit/apple\") > \"0\"\n\nput fruit/cherry dark\n\nput fruit/cherry none\n\n";
    let (success, out, err) = ctl(&ep, &["txn"], Some(txn));
    assert!(success, "txn failed: {err}");
    assert_eq!(out, "SUCCESS\n\nOK\n");
    let txn = "value(\"fruit/apple\") = \"red\"\n\nput x y\n\nget fruit/cherry\n\n";
    let (success, out, err) = ctl(&ep, &["txn"], Some(txn));
    assert!(success, "txn failed: {err}");
    assert_eq!(out, "FAILURE\n\nfruit/cherry\ndark\n");
}

#[test]
fn etcdctl_sees_compaction_and_future_revisions_as_etcd_errors() {
    if !etcdctl_available() {
        return;
    }
    let cluster = Cluster::start(3, &[]);
    let leader = cluster.wait_leader(Duration::from_secs(20));
    let ep = endpoint(&cluster, leader);
    for v in ["1", "2", "3"] {
        ok(&ep, &["put", "k", v]);
    }
    let rev = json_revision(&ok(&ep, &["get", "k", "-w", "json"]));
    assert_eq!(
        ok(&ep, &["compact", &rev.to_string()]),
        format!("compacted revision {rev}\n")
    );
    let (success, _, err) = ctl(&ep, &["get", "k", "--rev", &(rev - 1).to_string()], None);
    assert!(!success);
    assert!(
        err.contains("etcdserver: mvcc: required revision has been compacted"),
        "{err}"
    );
    let (success, _, err) = ctl(&ep, &["get", "k", "--rev", &(rev + 100).to_string()], None);
    assert!(!success);
    assert!(
        err.contains("etcdserver: mvcc: required revision is a future revision"),
        "{err}"
    );
    // Every node serves the same history (serializable reads are local).
    for i in 0..3 {
        let out = wait_for(Duration::from_secs(5), "follower caught up", || {
            let out = ok(&endpoint(&cluster, i), &["get", "k", "--consistency=s"]);
            (out == "k\n3\n").then_some(out)
        });
        assert_eq!(out, "k\n3\n");
    }
}

fn all_endpoints(cluster: &Cluster) -> String {
    (0..cluster.nodes.len())
        .map(|i| endpoint(cluster, i))
        .collect::<Vec<_>>()
        .join(",")
}

#[test]
fn etcdctl_member_list_and_endpoint_status_and_health_show_every_member() {
    if !etcdctl_available() {
        return;
    }
    let cluster = Cluster::start(3, &[]);
    let leader = cluster.wait_leader(Duration::from_secs(20));
    let follower = (leader + 1) % 3;
    // Asked through a follower: every member with its client (gRPC) URL.
    let list = wait_for(Duration::from_secs(10), "a full member list", || {
        let out = ok(&endpoint(&cluster, follower), &["member", "list"]);
        (out.lines().count() == 3 && !out.contains(", ,")).then_some(out)
    });
    for n in &cluster.nodes {
        let line = format!(
            ", started, {}, http://127.0.0.1:{}, http://127.0.0.1:{}, false",
            n.name, n.peer_port, n.grpc_port
        );
        assert!(list.contains(&line), "{line} missing from\n{list}");
    }
    let eps = all_endpoints(&cluster);
    let status = ok(&eps, &["endpoint", "status", "-w", "json"]);
    let v: serde_json::Value = serde_json::from_str(status.trim()).expect("json");
    let rows = v.as_array().expect("one row per endpoint");
    assert_eq!(rows.len(), 3);
    let leaders: Vec<u64> = rows
        .iter()
        .map(|r| r["Status"]["leader"].as_u64().expect("leader"))
        .collect();
    assert!(
        leaders.iter().all(|l| *l == leaders[0] && *l != 0),
        "{status}"
    );
    // etcdctl 3.4 prints health lines on stderr.
    let (success, out, err) = ctl(&eps, &["endpoint", "health"], None);
    assert!(success, "endpoint health failed: {out}{err}");
    let health = format!("{out}{err}");
    assert_eq!(
        health
            .matches("is healthy: successfully committed proposal")
            .count(),
        3,
        "{health}"
    );
}

#[test]
fn etcdctl_writes_sent_to_followers_are_forwarded_to_the_leader() {
    if !etcdctl_available() {
        return;
    }
    let cluster = Cluster::start(3, &[]);
    let leader = cluster.wait_leader(Duration::from_secs(20));
    for i in (0..3).filter(|&i| i != leader) {
        let ep = endpoint(&cluster, i);
        let key = format!("via/{i}");
        assert_eq!(ok(&ep, &["put", &key, "v"]), "OK\n");
        let txn = format!("create(\"{key}\") > \"0\"\n\nput {key} w\n\n\n");
        let (success, out, err) = ctl(&ep, &["txn"], Some(&txn));
        assert!(success, "txn via follower failed: {err}");
        assert_eq!(out, "SUCCESS\n\nOK\n");
        // Linearizable read on the same follower sees the forwarded write.
        assert_eq!(ok(&ep, &["get", &key]), format!("{key}\nw\n"));
    }
    let ep = endpoint(&cluster, (leader + 1) % 3);
    assert_eq!(ok(&ep, &["del", "via/", "--prefix"]), "2\n");
    // The TCP protocol keeps its redirect contract on followers.
    let mut c = cluster.nodes[(leader + 1) % 3].client();
    let reply = c.cmd("SET k v").expect("reply");
    assert!(reply.starts_with("ERR NOT_LEADER "), "{reply}");
}

#[test]
fn etcdctl_watch_on_a_follower_replays_from_a_past_revision_then_follows_live_writes() {
    if !etcdctl_available() {
        return;
    }
    let cluster = Cluster::start(3, &[]);
    let leader = cluster.wait_leader(Duration::from_secs(20));
    let lep = endpoint(&cluster, leader);
    let first = json_revision(&ok(&lep, &["put", "w/a", "1", "-w", "json"]));
    ok(&lep, &["put", "w/b", "2"]);
    ok(&lep, &["del", "w/a"]);
    let fep = endpoint(&cluster, (leader + 1) % 3);
    let mut watch = Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={fep}"))
        .args(["watch", "--prefix", "w/", "--rev", &first.to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn etcdctl watch");
    let stdout = watch.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut lines = Vec::new();
    let mut take = |n: usize| {
        while lines.len() < n {
            let line = rx
                .recv_timeout(Duration::from_secs(10))
                .expect("watch output");
            lines.push(line);
        }
    };
    take(9);
    ok(&lep, &["put", "w/c", "3"]);
    take(12);
    let _ = watch.kill();
    let _ = watch.wait();
    let want = [
        "PUT", "w/a", "1", "PUT", "w/b", "2", "DELETE", "w/a", "", "PUT", "w/c", "3",
    ];
    assert_eq!(lines, want);
}

#[test]
fn etcdctl_watch_from_a_compacted_revision_is_canceled_with_the_compaction_error() {
    if !etcdctl_available() {
        return;
    }
    let cluster = Cluster::start(3, &[]);
    let leader = cluster.wait_leader(Duration::from_secs(20));
    let ep = endpoint(&cluster, leader);
    for v in ["1", "2", "3"] {
        ok(&ep, &["put", "c/k", v]);
    }
    let rev = json_revision(&ok(&ep, &["get", "c/k", "-w", "json"]));
    ok(&ep, &["compact", &rev.to_string()]);
    let (success, out, err) = ctl(&ep, &["watch", "c/k", "--rev", "2"], None);
    assert!(!success, "a compacted watch must fail: {out}");
    assert!(
        format!("{out}{err}").contains("required revision has been compacted"),
        "{out}{err}"
    );
}

#[test]
fn etcdctl_snapshot_save_from_a_follower_keeps_a_backup_titan_verifies() {
    if !etcdctl_available() {
        return;
    }
    let cluster = Cluster::start(3, &[]);
    let leader = cluster.wait_leader(Duration::from_secs(20));
    let ep = endpoint(&cluster, leader);
    for i in 0..20 {
        ok(&ep, &["put", &format!("snap/{i:02}"), &format!("v{i}")]);
    }
    let follower = endpoint(&cluster, (leader + 1) % 3);
    wait_for(Duration::from_secs(10), "the follower to apply", || {
        let out = ok(&follower, &["get", "snap/19", "--consistency=s"]);
        (out == "snap/19\nv19\n").then_some(())
    });
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("etcdctl.db");
    let out = ok(
        &follower,
        &["snapshot", "save", path.to_str().expect("utf-8")],
    );
    assert!(out.contains("Snapshot saved at"), "{out}");
    let mut file = std::fs::File::open(&path).expect("saved file");
    let mut values = std::collections::BTreeMap::new();
    let summary = titan_snapfile::backup::read_backup(
        &mut file,
        &titan_snapfile::SnapshotLimits::default(),
        |item| {
            if let titan_snapfile::BodyItem::Key(key, history) = item
                && let Some(live) = history.last().and_then(|r| r.live.as_ref())
            {
                values.insert(key.clone(), live.value.clone());
            }
            Ok(())
        },
    )
    .expect("etcdctl's file is a valid Titan backup");
    assert!(summary.revision >= 21, "{summary:?}");
    assert_eq!(values.len(), 20);
    assert_eq!(values.get(&b"snap/07"[..]), Some(&b"v7".to_vec()));
}
