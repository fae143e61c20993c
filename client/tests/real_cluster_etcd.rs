//! The client's etcd v3 features (watch, leases, txn, writes through a
//! follower) and the `titanctl` commands on them, against a real 3-node
//! `titan-server` cluster on loopback.
//!
//! Nodes come from `titan-testkit`: the server binary is `TITAN_SERVER_BIN`,
//! else `titan-server` in this test's target dir (`cargo build -p titan-server
//! --bins` first; the test never builds it).
// Scenarios read top to bottom; the workspace's 70-line limit is for code.
#![allow(clippy::too_many_lines)]

use std::process::Command;
use std::time::{Duration, Instant};
use titan_client::{
    CasResult, Client, ClientConfig, Compare, CompareField, CompareOp, Consistency, EventKind,
    RangeQuery, Txn, TxnOp, TxnOpResult, WatchEvent, WatchQuery,
};

/// Longest wait for a leader after start.
const LEADER_WAIT: Duration = Duration::from_secs(20);
/// Longest wait for one watch batch or for a lease to expire.
const EVENT_WAIT: Duration = Duration::from_secs(20);

/// A started cluster and the index of its leader.
struct TestCluster {
    inner: titan_testkit::Cluster,
    leader: usize,
}

impl TestCluster {
    /// Starts 3 bootstrapped nodes and waits for a leader (blocking calls run
    /// in `block_in_place`, so this must be a multi-thread runtime).
    fn start() -> TestCluster {
        tokio::task::block_in_place(|| {
            let inner = titan_testkit::Cluster::start(3, &[]);
            let leader = inner.wait_leader(LEADER_WAIT);
            TestCluster { inner, leader }
        })
    }

    /// The gRPC endpoint of a node that is not the leader.
    fn follower_endpoint(&self) -> String {
        self.inner.nodes[(self.leader + 1) % 3].grpc_endpoint()
    }

    fn leader_endpoint(&self) -> String {
        self.inner.nodes[self.leader].grpc_endpoint()
    }

    /// A client that knows only `endpoints`.
    fn client_of(&self, endpoints: &[String]) -> Client {
        let mut config = ClientConfig::new(endpoints.iter().cloned());
        config.request_timeout = Duration::from_secs(3);
        config.retry.overall_deadline = Duration::from_secs(15);
        config.retry.max_attempts = 200;
        Client::connect(config).expect("valid config")
    }

    fn client(&self) -> Client {
        self.client_of(&self.inner.grpc_endpoints())
    }
}

/// The next batch of events, or a panic naming what was awaited.
async fn next_batch(watch: &mut titan_client::Watch, what: &str) -> Vec<WatchEvent> {
    tokio::time::timeout(EVENT_WAIT, watch.next())
        .await
        .unwrap_or_else(|_| panic!("no watch event within {EVENT_WAIT:?}: {what}"))
        .unwrap_or_else(|e| panic!("watch failed while waiting for {what}: {e}"))
}

/// (kind, key, value) of each event, for comparing whole sequences.
fn summary(events: &[WatchEvent]) -> Vec<(EventKind, String, String)> {
    events
        .iter()
        .map(|e| {
            (
                e.kind,
                String::from_utf8_lossy(&e.kv.key).into_owned(),
                String::from_utf8_lossy(&e.kv.value).into_owned(),
            )
        })
        .collect()
}

/// Collects events until `n` have arrived.
async fn collect(watch: &mut titan_client::Watch, n: usize) -> Vec<WatchEvent> {
    let mut events = Vec::new();
    while events.len() < n {
        events.extend(next_batch(watch, &format!("event {} of {n}", events.len() + 1)).await);
    }
    events
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_from_a_past_revision_replays_every_event_in_order_then_follows_live_writes() {
    let cluster = TestCluster::start();
    let client = cluster.client();
    let first = client.put("w/a", "1").await.expect("put w/a");
    client.put("w/b", "2").await.expect("put w/b");
    client
        .put("other/x", "not watched")
        .await
        .expect("put other");
    client.delete("w/a").await.expect("delete w/a");
    // Served by a follower from its own applied state.
    let watcher = cluster.client_of(&[cluster.follower_endpoint()]);
    let query = WatchQuery::prefix("w/").from_revision(first as i64);
    let mut watch = watcher.watch(query).await.expect("open watch");
    let replay = collect(&mut watch, 3).await;
    assert_eq!(
        summary(&replay),
        vec![
            (EventKind::Put, "w/a".into(), "1".into()),
            (EventKind::Put, "w/b".into(), "2".into()),
            (EventKind::Delete, "w/a".into(), String::new()),
        ]
    );
    let revisions: Vec<i64> = replay.iter().map(WatchEvent::revision).collect();
    assert!(
        revisions.windows(2).all(|w| w[0] < w[1]),
        "revision order: {revisions:?}"
    );
    assert_eq!(revisions[0], first as i64);
    let live = client.put("w/c", "3").await.expect("put w/c");
    let next = collect(&mut watch, 1).await;
    assert_eq!(
        summary(&next),
        vec![(EventKind::Put, "w/c".into(), "3".into())]
    );
    assert_eq!(next[0].revision(), live as i64);
    assert_eq!(watch.next_revision(), live as i64 + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leased_key_vanishes_when_its_lease_is_revoked_or_expires() {
    let cluster = TestCluster::start();
    let client = cluster.client();
    // Revoked: the key goes at once, and the lease is gone.
    let lease = client.lease_grant(60).await.expect("grant");
    assert!(lease.ttl_s >= 60, "{lease:?}");
    client
        .put_with_lease("lease/revoked", "v", lease.id)
        .await
        .expect("put with lease");
    let info = client
        .lease_time_to_live(lease.id, true)
        .await
        .expect("ttl");
    assert_eq!(info.keys, vec![b"lease/revoked".to_vec()]);
    assert!(info.exists() && info.remaining_s <= 60, "{info:?}");
    assert!(client.leases().await.expect("list").contains(&lease.id));
    client.lease_revoke(lease.id).await.expect("revoke");
    let gone = client.get("lease/revoked", Consistency::Linearizable).await;
    assert_eq!(gone.expect("get"), None);
    let info = client
        .lease_time_to_live(lease.id, false)
        .await
        .expect("ttl");
    assert!(!info.exists(), "{info:?}");

    // Expired: kept alive once, then left to lapse; a watcher sees DELETE.
    let short = client.lease_grant(2).await.expect("grant");
    let put = client
        .put_with_lease("lease/expiring", "v", short.id)
        .await
        .expect("put with lease");
    // Taken before the keep-alive is sent, so it is no later than the
    // refresh: the key must outlive it by at least the TTL.
    let refreshed_at = Instant::now();
    assert!(
        client
            .lease_keep_alive_once(short.id)
            .await
            .expect("keep-alive")
            > 0
    );
    let mut watch = client
        .watch(WatchQuery::key("lease/expiring").from_revision(put as i64 + 1))
        .await
        .expect("watch");
    let events = collect(&mut watch, 1).await;
    assert_eq!(events[0].kind, EventKind::Delete, "{events:?}");
    assert!(
        refreshed_at.elapsed() >= Duration::from_secs(short.ttl_s as u64),
        "expired {:?} after its keep-alive, before its TTL of {}s",
        refreshed_at.elapsed(),
        short.ttl_s
    );
    let gone = client
        .get("lease/expiring", Consistency::Linearizable)
        .await;
    assert_eq!(gone.expect("get"), None);
    assert_eq!(client.lease_keep_alive_once(short.id).await.expect("ka"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_txn_runs_its_success_branch_when_compares_hold_and_its_failure_branch_otherwise() {
    let cluster = TestCluster::start();
    let client = cluster.client();
    let v = client.put("txn/k", "a").await.expect("put");
    let txn = |expected: u64| Txn {
        compares: vec![
            Compare::new(
                "txn/k",
                CompareOp::Equal,
                CompareField::Mod(expected as i64),
            ),
            Compare::new(
                "txn/k",
                CompareOp::Equal,
                CompareField::Value(b"a".to_vec()),
            ),
        ],
        success: vec![
            TxnOp::Put {
                key: b"txn/k".to_vec(),
                value: b"b".to_vec(),
                lease: 0,
            },
            TxnOp::Put {
                key: b"txn/other".to_vec(),
                value: b"c".to_vec(),
                lease: 0,
            },
        ],
        failure: vec![TxnOp::Get {
            key: b"txn/".to_vec(),
            prefix: true,
        }],
    };
    let won = client.txn(&txn(v)).await.expect("txn");
    assert!(won.succeeded);
    assert_eq!(won.results, vec![TxnOpResult::Put, TxnOpResult::Put]);
    let lost = client.txn(&txn(v)).await.expect("txn");
    assert!(!lost.succeeded);
    assert_eq!(
        lost.revision, won.revision,
        "the failure branch wrote nothing"
    );
    let TxnOpResult::Get(kvs) = &lost.results[0] else {
        panic!("failure branch result: {:?}", lost.results);
    };
    let pairs: Vec<(&[u8], &[u8], u64)> = kvs
        .iter()
        .map(|kv| (kv.key.as_slice(), kv.value.as_slice(), kv.version))
        .collect();
    assert_eq!(
        pairs,
        vec![
            (&b"txn/k"[..], &b"b"[..], won.revision),
            (&b"txn/other"[..], &b"c"[..], won.revision)
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_through_a_follower_are_forwarded_without_a_redirect() {
    let cluster = TestCluster::start();
    let follower = cluster.follower_endpoint();
    let client = cluster.client_of(std::slice::from_ref(&follower));
    let v1 = client.put("fwd/k", "1").await.expect("put via follower");
    let cas = client.put_if_version("fwd/k", "2", v1).await.expect("cas");
    let CasResult::Applied { version: v2 } = cas else {
        panic!("cas at the current version must apply: {cas:?}");
    };
    assert_eq!(
        client.put_if_absent("fwd/k", "3").await.expect("cas"),
        CasResult::Conflict {
            current_version: v2
        }
    );
    let lease = client.lease_grant(30).await.expect("grant via follower");
    client
        .put_with_lease("fwd/leased", "x", lease.id)
        .await
        .expect("leased put via follower");
    let deleted = client.delete("fwd/gone").await.expect("delete");
    assert!(!deleted.existed);
    assert_eq!(
        client.cached_leader(),
        Some(follower),
        "no redirect followed"
    );
    // The follower counted its forwarded writes in the write-path stages.
    let port = cluster.inner.nodes[(cluster.leader + 1) % 3].http_port;
    let metrics = titan_testkit::http_get(port, "/metrics");
    for stage in ["queued", "committed", "applied"] {
        let series =
            format!("titan_write_stage_seconds_count{{stage=\"{stage}\",path=\"forwarded\"}}");
        let n = titan_testkit::metric(&metrics, &series).unwrap_or(0.0);
        assert!(n >= 5.0, "{series} = {n}, want the 5 writes:\n{metrics}");
    }
    // The leader sees every write.
    let leader = cluster.client_of(&[cluster.leader_endpoint()]);
    let page = leader
        .range(RangeQuery::prefix("fwd/"))
        .await
        .expect("range on the leader");
    let got: Vec<(String, String, i64)> = page
        .kvs
        .iter()
        .map(|kv| {
            (
                String::from_utf8_lossy(&kv.key).into_owned(),
                String::from_utf8_lossy(&kv.value).into_owned(),
                kv.lease,
            )
        })
        .collect();
    assert_eq!(
        got,
        vec![
            ("fwd/k".into(), "2".into(), 0),
            ("fwd/leased".into(), "x".into(), lease.id)
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn titanctl_watch_lease_txn_and_revision_reads_work_end_to_end() {
    let cluster = TestCluster::start();
    let endpoints = cluster.inner.grpc_endpoints().join(",");
    let ctl = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_titanctl"))
            .env("TITAN_ENDPOINTS", &endpoints)
            .args(args)
            .output()
            .expect("run titanctl");
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        (out.status.code(), stdout, stderr)
    };
    let json = |text: &str| -> serde_json::Value { serde_json::from_str(text).expect("JSON") };
    let (code, out, err) = ctl(&["-o", "json", "put", "ctl/a", "one"]);
    assert_eq!(code, Some(0), "{err}");
    let first_rev = json(&out)["version"].as_u64().expect("version");
    assert_eq!(ctl(&["put", "ctl/a", "two"]).0, Some(0));
    // get --rev reads the past; get --prefix lists.
    let (_, old, _) = ctl(&["get", "ctl/a", "--rev", &first_rev.to_string()]);
    assert_eq!(old.trim(), "one");
    assert_eq!(ctl(&["get", "ctl/a"]).1.trim(), "two");
    let (code, listed, _) = ctl(&["-o", "json", "get", "ctl/", "--prefix"]);
    assert_eq!(code, Some(0));
    assert_eq!(json(&listed)["kvs"].as_array().map(Vec::len), Some(1));
    // watch --rev replays both puts, then exits after --count.
    let (code, watched, err) = ctl(&[
        "-o",
        "json",
        "watch",
        "ctl/",
        "--prefix",
        "--rev",
        &first_rev.to_string(),
        "--count",
        "2",
    ]);
    assert_eq!(code, Some(0), "{err}");
    let values: Vec<String> = watched
        .lines()
        .map(|l| json(l)["kv"]["value"].as_str().unwrap_or("").to_string())
        .collect();
    assert_eq!(values, ["one", "two"]);
    // lease grant / put --lease / ttl --keys / revoke.
    let (code, granted, err) = ctl(&["-o", "json", "lease", "grant", "60"]);
    assert_eq!(code, Some(0), "{err}");
    let id = json(&granted)["id"].as_str().expect("id").to_string();
    assert_eq!(ctl(&["put", "ctl/leased", "v", "--lease", &id]).0, Some(0));
    let (code, ttl, _) = ctl(&["-o", "json", "lease", "ttl", &id, "--keys"]);
    assert_eq!(code, Some(0));
    assert_eq!(json(&ttl)["keys"], serde_json::json!(["ctl/leased"]));
    assert_eq!(ctl(&["lease", "keep-alive", &id, "--once"]).0, Some(0));
    assert_eq!(ctl(&["lease", "revoke", &id]).0, Some(0));
    assert_eq!(
        ctl(&["get", "ctl/leased"]).0,
        Some(3),
        "the key went with its lease"
    );
    assert_eq!(ctl(&["lease", "ttl", &id]).0, Some(3));
    // txn: success branch exits 0, failure branch exits 4.
    let txn = |value: &str| {
        ctl(&[
            "txn",
            "--if",
            &format!("value(ctl/a) = {value}"),
            "--then",
            "put ctl/b yes",
            "--else",
            "get ctl/a",
        ])
    };
    let (code, out, err) = txn("two");
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.starts_with("SUCCESS"), "{out}");
    let (code, out, _) = txn("nope");
    assert_eq!(code, Some(4));
    assert!(
        out.starts_with("FAILURE") && out.contains("ctl/a two"),
        "{out}"
    );
    assert_eq!(ctl(&["get", "ctl/b"]).1.trim(), "yes");
    // Bad txn syntax is a command-line error (clap's exit 2).
    assert_eq!(ctl(&["txn", "--if", "size(k) = 1"]).0, Some(2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_resumes_on_another_node_when_its_node_is_killed_without_gaps_or_repeats() {
    let mut cluster = TestCluster::start();
    let leader = cluster.leader;
    let others: Vec<String> = (1..3)
        .map(|d| cluster.inner.nodes[(leader + d) % 3].grpc_endpoint())
        .collect();
    // The watch opens on its first seed, the leader, which is then killed.
    let watcher = cluster.client_of(&[cluster.leader_endpoint(), others[1].clone()]);
    let writer = cluster.client_of(&others);
    let first = writer.put("r/0000", "0").await.expect("first put");
    let mut watch = watcher
        .watch(WatchQuery::prefix("r/").from_revision(first as i64))
        .await
        .expect("open watch");
    let mut acked = vec![(first, "r/0000".to_string())];
    let mut unknown = Vec::new();
    for i in 1..40 {
        if i == 20 {
            tokio::task::block_in_place(|| cluster.inner.nodes[leader].kill());
        }
        let key = format!("r/{i:04}");
        match writer.put(key.as_str(), i.to_string()).await {
            Ok(rev) => acked.push((rev, key)),
            Err(titan_client::Error::OutcomeUnknown { .. }) => unknown.push(key),
            Err(e) => panic!("write {i} failed: {e}"),
        }
    }
    assert!(
        unknown.len() <= 1,
        "one write in flight at most: {unknown:?}"
    );
    let last = acked
        .last()
        .map(|(rev, _)| *rev as i64)
        .expect("acked writes");
    let mut events = Vec::new();
    while events.last().map_or(0, WatchEvent::revision) < last {
        events.extend(next_batch(&mut watch, "the writes after the kill").await);
    }
    let revisions: Vec<i64> = events.iter().map(WatchEvent::revision).collect();
    assert!(
        revisions.windows(2).all(|w| w[0] < w[1]),
        "each event once, in revision order: {revisions:?}"
    );
    let seen: Vec<(u64, String)> = events
        .iter()
        .map(|e| {
            (
                e.kv.version,
                String::from_utf8_lossy(&e.kv.key).into_owned(),
            )
        })
        .filter(|(_, key)| !unknown.contains(key))
        .collect();
    assert_eq!(seen, acked, "every acknowledged write, and nothing else");
}
