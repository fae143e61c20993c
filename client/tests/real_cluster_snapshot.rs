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
