//! etcd leases through Debian's stock `etcdctl` (3.4) against a real
//! 3-node Titan cluster: grant, put --lease, keep-alive, timetolive --keys,
//! list and revoke (sent to followers as well as the leader), a watcher
//! seeing the revoke's DELETE, and expiry that is never early, not even
//! across a SIGKILL of the leader.
//!
//! Without `etcdctl` on PATH the tests skip with a message, unless
//! `TITAN_REQUIRE_ALL_TIERS` is set, in which case they fail.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

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
fn ctl(endpoints: &str, args: &[&str]) -> (bool, String, String) {
    let out = Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={endpoints}"))
        .arg("--command-timeout=10s")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run etcdctl");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `etcdctl` that must succeed; returns stdout.
fn ok(endpoint: &str, args: &[&str]) -> String {
    let (success, out, err) = ctl(endpoint, args);
    assert!(success, "etcdctl {args:?} failed: {err}{out}");
    out
}

fn endpoint(cluster: &Cluster, i: usize) -> String {
    format!("127.0.0.1:{}", cluster.nodes[i].grpc_port)
}

/// The hex id from `lease <hex> granted with TTL(<n>s)`.
fn granted_id(out: &str, ttl_s: u64) -> String {
    let rest = out.strip_prefix("lease ").expect("grant output");
    let (id, tail) = rest.split_once(' ').expect("grant output");
    assert_eq!(tail, format!("granted with TTL({ttl_s}s)\n"), "{out}");
    id.to_string()
}

/// Whether `key` is still present on node `ep` (a local, serializable read).
fn present(ep: &str, key: &str) -> bool {
    !ok(ep, &["get", key, "--consistency=s"]).is_empty()
}

#[test]
fn etcdctl_lease_grant_put_keep_alive_timetolive_list_and_revoke_work_through_followers() {
    if !etcdctl_available() {
        return;
    }
    let cluster = Cluster::start(3, &[]);
    let leader = cluster.wait_leader(Duration::from_secs(20));
    let lep = endpoint(&cluster, leader);
    let fep = endpoint(&cluster, (leader + 1) % 3);
    // Grant and attach through a follower (forwarded to the leader).
    let id = granted_id(&ok(&fep, &["lease", "grant", "60"]), 60);
    assert_eq!(ok(&fep, &["put", "--lease", &id, "l/a", "1"]), "OK\n");
    assert_eq!(ok(&lep, &["put", "--lease", &id, "l/b", "2"]), "OK\n");
    let (success, _, err) = ctl(&lep, &["put", "--lease", "1234abcd", "l/x", "1"]);
    assert!(
        !success && err.contains("requested lease not found"),
        "{err}"
    );
    // A bounded keep-alive run prints at least one refresh.
    let ka = Command::new("timeout")
        .args(["3", "etcdctl", &format!("--endpoints={fep}")])
        .args(["lease", "keep-alive", &id])
        .env("ETCDCTL_API", "3")
        .output()
        .expect("run etcdctl lease keep-alive");
    let ka_out = String::from_utf8_lossy(&ka.stdout);
    assert!(
        ka_out.contains(&format!("lease {id} keepalived with TTL(60)")),
        "{ka_out}"
    );
    for ep in [&lep, &fep] {
        let ttl = ok(ep, &["lease", "timetolive", "--keys", &id]);
        assert!(
            ttl.starts_with(&format!("lease {id} granted with TTL(60s), remaining(")),
            "{ttl}"
        );
        assert!(ttl.ends_with("attached keys([l/a l/b])\n"), "{ttl}");
        assert_eq!(
            ok(ep, &["lease", "list"]),
            format!("found 1 leases\n{id}\n")
        );
    }
    // Revoke through a follower: both keys go in one revision and a
    // watcher sees their DELETE events.
    let mut watch = Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={lep}"))
        .args(["watch", "--prefix", "l/"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn etcdctl watch");
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        ok(&fep, &["lease", "revoke", &id]),
        format!("lease {id} revoked\n")
    );
    let out = wait_for(Duration::from_secs(10), "keys gone", || {
        let out = ok(&lep, &["get", "l/", "--prefix"]);
        out.is_empty().then_some(out)
    });
    assert_eq!(out, "");
    std::thread::sleep(Duration::from_millis(500));
    let _ = watch.kill();
    let watched = watch.wait_with_output().expect("watch output");
    let lines = String::from_utf8_lossy(&watched.stdout);
    assert_eq!(lines, "DELETE\nl/a\n\nDELETE\nl/b\n\n");
    let gone = ok(&lep, &["lease", "timetolive", &id]);
    assert_eq!(gone, format!("lease {id} already expired\n"));
    assert_eq!(ok(&fep, &["lease", "list"]), "found 0 leases\n");
    let (success, _, err) = ctl(&fep, &["lease", "revoke", &id]);
    assert!(
        !success && err.contains("requested lease not found"),
        "{err}"
    );
}

#[test]
fn a_leased_key_expires_but_never_before_its_ttl_even_after_the_leader_is_killed() {
    if !etcdctl_available() {
        return;
    }
    let cluster = Cluster::start(3, &[]);
    let leader = cluster.wait_leader(Duration::from_secs(20));
    let lep = endpoint(&cluster, leader);
    let survivor = (leader + 1) % 3;
    let sep = endpoint(&cluster, survivor);
    // Without a failover: a 2 s lease expires on its own, not before 2 s.
    let granted_at = Instant::now();
    let id = granted_id(&ok(&lep, &["lease", "grant", "2"]), 2);
    ok(&lep, &["put", "--lease", &id, "short", "v"]);
    wait_for(Duration::from_secs(15), "short lease expired", || {
        (!present(&sep, "short")).then_some(())
    });
    let lived = granted_at.elapsed();
    assert!(lived >= Duration::from_secs(2), "expired after {lived:?}");
    // With a failover: keep a 4 s lease alive once, then SIGKILL the leader.
    let ttl = Duration::from_secs(4);
    let id = granted_id(&ok(&lep, &["lease", "grant", "4"]), 4);
    ok(&lep, &["put", "--lease", &id, "long", "v"]);
    let last_keepalive = Instant::now();
    let once = ok(&lep, &["lease", "keep-alive", "--once", &id]);
    assert!(once.contains("keepalived with TTL(4)"), "{once}");
    let mut cluster = cluster;
    cluster.nodes[leader].kill();
    wait_for(Duration::from_secs(30), "leased key expired", || {
        (!present(&sep, "long")).then_some(())
    });
    let lived = last_keepalive.elapsed();
    eprintln!("leased key lived {lived:?} after its last keep-alive (ttl {ttl:?})");
    assert!(lived >= ttl, "expired early: {lived:?} < {ttl:?}");
    let new_leader = cluster.current_leader().expect("a new leader");
    let nep = endpoint(&cluster, new_leader);
    assert_eq!(
        ok(&nep, &["lease", "timetolive", &id]),
        format!("lease {id} already expired\n")
    );
}
