//! `titanctl snapshot save` / `verify` against a real 3-node cluster: the
//! backup streamed over etcd's Maintenance.Snapshot holds every written key
//! at the revision it reports, and a damaged copy is refused with a clear
//! message. Lives with the client because it runs the `titanctl` binary
//! Cargo builds for this package's tests (`CARGO_BIN_EXE_titanctl`); nodes
//! come from `titan-testkit` (`cargo build -p titan-server --bins` first).

use std::collections::BTreeMap;
use std::fs::File;
use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use titan_client::{Client, ClientConfig};
use titan_snapfile::backup::read_backup;
use titan_snapfile::{BodyItem, SnapshotLimits};

/// Keys written before the backup.
const KEYS: usize = 300;

fn titanctl(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_titanctl"))
        .args(args)
        .output()
        .expect("run titanctl")
}

fn json(out: &Output) -> serde_json::Value {
    let text = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

/// Writes `KEYS` keys (each overwritten once, so histories have two
/// records; about 300 KiB) and one deleted key; returns the values and the last revision.
fn write_keys(endpoints: Vec<String>) -> (BTreeMap<Vec<u8>, Vec<u8>>, i64) {
    let mut config = ClientConfig::new(endpoints);
    config.retry.overall_deadline = Duration::from_secs(15);
    let client = Client::connect(config).expect("client");
    titan_testkit::rt().block_on(async {
        let mut want = BTreeMap::new();
        let mut last = 0;
        for i in 0..KEYS {
            let key = format!("backup/{i:04}").into_bytes();
            client.put(key.clone(), b"old".to_vec()).await.expect("put");
            // 1 KiB values: the stream spans several 128 KiB chunks.
            let value = format!("value-{i}-{}", "x".repeat(1024)).into_bytes();
            last = client.put(key.clone(), value.clone()).await.expect("put");
            want.insert(key, value);
        }
        client.put("backup/gone", "x").await.expect("put");
        client.delete("backup/gone").await.expect("delete");
        (want, i64::try_from(last).expect("revision"))
    })
}

/// The live value of every key as of `revision`, read from the backup.
fn contents_at(path: &Path, revision: i64) -> BTreeMap<Vec<u8>, Vec<u8>> {
    let mut file = File::open(path).expect("open backup");
    let mut live = BTreeMap::new();
    read_backup(&mut file, &SnapshotLimits::default(), |item| {
        if let BodyItem::Key(key, history) = item {
            let at = history.iter().rev().find(|r| r.mod_revision <= revision);
            if let Some(value) = at.and_then(|r| r.live.as_ref()) {
                live.insert(key.clone(), value.value.clone());
            }
        }
        Ok(())
    })
    .expect("read backup");
    live
}

#[test]
fn save_verify_and_read_back_every_written_key() {
    let cluster = titan_testkit::Cluster::start(3, &[]);
    let leader = cluster.wait_leader(Duration::from_secs(10));
    let (want, last_revision) = write_keys(cluster.grpc_endpoints());
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("titan.db");
    let path = file.to_str().expect("utf-8 path");
    let endpoint = cluster.nodes[leader].grpc_endpoint();

    let saved = titanctl(&[
        "-o",
        "json",
        "snapshot",
        "save",
        path,
        "--endpoint",
        &endpoint,
    ]);
    assert!(saved.status.success(), "save: {saved:?}");
    let saved = json(&saved);
    let revision = saved["revision"].as_i64().expect("revision");
    assert!(revision >= last_revision, "{saved}");
    assert!(
        !dir.path().join("titan.db.part").exists(),
        "part file left behind"
    );
    let size = std::fs::metadata(&file).expect("saved file").len();
    assert_eq!(saved["size_bytes"].as_u64(), Some(size));
    assert_eq!(size % 512, 32, "etcd's size rule: 512·n + 32");

    let verified = titanctl(&["-o", "json", "snapshot", "verify", path]);
    assert!(verified.status.success(), "verify: {verified:?}");
    let verified = json(&verified);
    assert_eq!(verified["sha256"], saved["sha256"]);
    let bytes = std::fs::read(&file).expect("read");
    let whole = titan_snapfile::backup::hex(&<sha2::Sha256 as sha2::Digest>::digest(&bytes));
    assert_eq!(
        verified["sha256"],
        whole.as_str(),
        "sha256 is what sha256sum prints"
    );
    assert_eq!(
        verified["trailer_sha256"],
        titan_snapfile::backup::hex(&bytes[bytes.len() - 32..]).as_str()
    );
    assert_eq!(verified["revision"], saved["revision"]);
    assert_eq!(contents_at(&file, revision), want, "backup contents");

    // Damage: each copy is refused with exit 1 and a message naming it.
    let bytes = std::fs::read(&file).expect("read");
    let mut flipped = bytes.clone();
    flipped[bytes.len() / 2] ^= 1;
    let cases = [
        ("flipped", flipped, "SHA-256 mismatch"),
        (
            "truncated",
            bytes[..bytes.len() - 7].to_vec(),
            "no SHA-256 trailer",
        ),
    ];
    for (name, damaged, message) in cases {
        let bad = dir.path().join(name);
        std::fs::write(&bad, damaged).expect("write copy");
        let out = titanctl(&["snapshot", "verify", bad.to_str().expect("utf-8")]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{name}: {stderr}");
        assert!(stderr.contains(message), "{name}: {stderr}");
    }
}

#[test]
fn snapshot_take_keeps_working_alone_and_as_a_sub_command() {
    let cluster = titan_testkit::Cluster::start(1, &[]);
    cluster.wait_leader(Duration::from_secs(10));
    assert!(cluster.set("k", "v"));
    let node = cluster.nodes[0].admin_endpoint();
    for args in [
        vec!["snapshot", "--node", &node],
        vec!["snapshot", "take", "--node", &node],
    ] {
        let out = titanctl(&args);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{args:?}: {out:?}");
        assert!(stdout.contains("snapshot on"), "{args:?}: {stdout}");
    }
}

/// Every key under `backup/` as the cluster at `endpoints` serves it, and
/// the revision of that read.
fn served(endpoints: Vec<String>) -> (BTreeMap<Vec<u8>, Vec<u8>>, i64) {
    let mut config = ClientConfig::new(endpoints);
    config.retry.overall_deadline = Duration::from_secs(15);
    let client = Client::connect(config).expect("client");
    titan_testkit::rt().block_on(async {
        let mut query = titan_client::RangeQuery::prefix("backup/");
        query.limit = 10_000;
        let page = client.range(query).await.expect("range");
        assert!(!page.more);
        let kvs = page.kvs.into_iter().map(|kv| (kv.key, kv.value)).collect();
        (kvs, page.revision)
    })
}

/// Saves a backup of `cluster` with titanctl into `dir`; returns its path
/// and revision.
fn save_backup(cluster: &titan_testkit::Cluster, dir: &Path) -> (String, i64) {
    let path = dir.join("titan.db").to_str().expect("utf-8").to_string();
    let endpoint = cluster.nodes[0].grpc_endpoint();
    let saved = titanctl(&[
        "-o",
        "json",
        "snapshot",
        "save",
        &path,
        "--endpoint",
        &endpoint,
    ]);
    assert!(saved.status.success(), "save: {saved:?}");
    (path, json(&saved)["revision"].as_i64().expect("revision"))
}

/// A backup seeds a brand-new cluster: every member started with
/// `--restore-from` and the same peers serves the backup's keys, the
/// revision counter continues from the backup's, new writes land after it,
/// and after every member restarts (the flag still set, now ignored: the
/// data dirs hold the cluster) nothing is lost or restored twice.
#[test]
fn a_backup_restores_into_a_new_cluster_that_keeps_its_data_across_restarts() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (want, backup_revision) = {
        let source = titan_testkit::Cluster::start(3, &[]);
        source.wait_leader(Duration::from_secs(10));
        let (want, _) = write_keys(source.grpc_endpoints());
        let (_, revision) = save_backup(&source, dir.path());
        (want, revision)
    };
    let flag = format!("--restore-from={}", dir.path().join("titan.db").display());
    let mut restored = titan_testkit::Cluster::start(3, &[&flag]);
    restored.wait_leader(Duration::from_secs(10));
    let (kvs, revision) = served(restored.grpc_endpoints());
    assert_eq!(kvs, want, "restored contents");
    assert_eq!(revision, backup_revision, "the revision continues");

    let mut config = ClientConfig::new(restored.grpc_endpoints());
    config.retry.overall_deadline = Duration::from_secs(15);
    let client = Client::connect(config).expect("client");
    let after = titan_testkit::rt()
        .block_on(client.put("backup/new", "after"))
        .expect("put after restore");
    assert_eq!(after, u64::try_from(backup_revision).expect("rev") + 1);

    for node in &mut restored.nodes {
        node.kill();
    }
    for node in &mut restored.nodes {
        node.start();
    }
    restored.wait_leader(Duration::from_secs(10));
    let (kvs, revision) = served(restored.grpc_endpoints());
    let mut want = want;
    want.insert(b"backup/new".to_vec(), b"after".to_vec());
    assert_eq!(kvs, want, "contents after restarting every member");
    assert_eq!(revision, backup_revision + 1);
}

/// A damaged backup stops a restoring member before it serves anything:
/// it exits non-zero naming the file and the damage, and a later start
/// with a good file still restores (nothing half-written blocks it).
#[test]
fn a_damaged_backup_is_refused_at_startup_and_a_good_one_restores_after() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (good, want) = {
        let source = titan_testkit::Cluster::start(1, &[]);
        source.wait_leader(Duration::from_secs(10));
        let (want, _) = write_keys(source.grpc_endpoints());
        let (good, _) = save_backup(&source, dir.path());
        (good, want)
    };
    let mut bytes = std::fs::read(&good).expect("read");
    let middle = bytes.len() / 2;
    bytes[middle] ^= 1;
    let bad = dir.path().join("flipped.db");
    std::fs::write(&bad, &bytes).expect("write");

    let root = tempfile::tempdir().expect("tempdir");
    let mut node = titan_testkit::Node::new(root.path(), "solo");
    let mut args = titan_testkit::base_args();
    args.push(format!(
        "--advertise-peer-addr=127.0.0.1:{}",
        node.peer_port
    ));
    node.args = args.clone();
    node.args.push(format!("--restore-from={}", bad.display()));
    node.start();
    let child = node.child.as_mut().expect("started");
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        assert!(std::time::Instant::now() < deadline, "still running");
        std::thread::sleep(Duration::from_millis(50));
    };
    node.child = None;
    assert!(!status.success(), "{status:?}");
    let log = std::fs::read_to_string(node.data_dir.with_extension("log")).expect("log");
    assert!(
        log.contains("--restore-from")
            && log.contains("flipped.db")
            && log.contains("SHA-256 mismatch"),
        "{log}"
    );

    node.args = args;
    node.args.push(format!("--restore-from={good}"));
    node.start();
    let (kvs, _) = served(vec![node.grpc_endpoint()]);
    assert_eq!(kvs, want);
    node.kill();
}
