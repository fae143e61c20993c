//! The TitanBackup data path against a real S3 protocol server: `s3s-fs`
//! (an S3-compatible server over a temp dir, started in-process with
//! credentials) and an in-process etcd `Maintenance.Snapshot` server that
//! streams a well-formed etcd snapshot (content, zero padding to 512·n,
//! SHA-256 trailer) in 32 KiB messages, as `titan-server` does.
//!
//! Checks: the snapshot lands under its final key with the size and SHA-256
//! the manifest states; a stream that breaks off, wrong credentials and a
//! missing bucket each fail with their reason and leave nothing under the
//! final key; retention keeps the newest `keep` backups.

#![allow(clippy::too_many_lines)]

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::{Stream, TryStreamExt};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder as ConnBuilder;
use k8s_openapi::jiff::Timestamp;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt};
use s3s::auth::SimpleAuth;
use s3s::service::S3ServiceBuilder;
use sha2::{Digest, Sha256};
use titan_operator::backup::BackupError;
use titan_operator::backup::naming::{BackupKeys, Manifest, backup_keys};
use titan_operator::backup::resource::S3Destination;
use titan_operator::backup::store::{S3Credentials, StoreConfig, s3_store};
use titan_operator::backup::upload::{BackupRequest, UploadConfig, take_backup};
use titan_proto::etcdserverpb as pb;
use titan_proto::etcdserverpb::maintenance_server::{Maintenance, MaintenanceServer};
use tonic::{Request, Response, Status};

const ACCESS_KEY: &str = "titan-test-ak";
const SECRET_KEY: &str = "titan-test-sk";
const BUCKET: &str = "backups";

/// An S3 server over a temp dir, serving until the test ends.
struct S3Server {
    addr: SocketAddr,
    _root: tempfile::TempDir,
}

async fn start_s3() -> S3Server {
    let root = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
    std::fs::create_dir(root.path().join(BUCKET)).unwrap_or_else(|e| panic!("bucket dir: {e}"));
    let fs = s3s_fs::FileSystem::new(root.path()).unwrap_or_else(|e| panic!("s3s-fs: {e:?}"));
    let mut builder = S3ServiceBuilder::new(fs);
    builder.set_auth(SimpleAuth::from_single(ACCESS_KEY, SECRET_KEY));
    let service = builder.build();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap_or_else(|e| panic!("bind: {e}"));
    let addr = listener.local_addr().unwrap_or_else(|e| panic!("{e}"));
    tokio::spawn(async move {
        let http = ConnBuilder::new(TokioExecutor::new());
        while let Ok((socket, _)) = listener.accept().await {
            let conn = http.serve_connection(TokioIo::new(socket), service.clone());
            let conn = conn.into_owned();
            tokio::spawn(async move {
                let _ = conn.await;
            });
        }
    });
    S3Server { addr, _root: root }
}

/// How the fake member serves `Maintenance.Snapshot`.
#[derive(Clone)]
struct FakeMember {
    /// The whole stream (content + padding + trailer).
    snapshot: Arc<Vec<u8>>,
    /// Send an error after this many messages instead of finishing.
    break_after: Option<usize>,
}

/// A well-formed etcd snapshot of `len` content bytes.
fn etcd_snapshot(len: usize, seed: u8) -> Vec<u8> {
    let mut body: Vec<u8> = (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect();
    body.resize(len.div_ceil(512) * 512, 0);
    let trailer: [u8; 32] = Sha256::digest(&body).into();
    body.extend_from_slice(&trailer);
    body
}

type SnapshotStream = Pin<Box<dyn Stream<Item = Result<pb::SnapshotResponse, Status>> + Send>>;

fn unimplemented<T>() -> Result<Response<T>, Status> {
    Err(Status::unimplemented("not in this fake"))
}

#[tonic::async_trait]
impl Maintenance for FakeMember {
    type SnapshotStream = SnapshotStream;

    async fn snapshot(
        &self,
        _: Request<pb::SnapshotRequest>,
    ) -> Result<Response<Self::SnapshotStream>, Status> {
        let total = self.snapshot.len() as u64;
        let header = pb::ResponseHeader {
            cluster_id: 0xC1,
            member_id: 2,
            revision: 1234,
            raft_term: 3,
        };
        let mut sent = 0u64;
        let mut msgs: Vec<Result<pb::SnapshotResponse, Status>> = self
            .snapshot
            .chunks(32 << 10)
            .map(|blob| {
                sent += blob.len() as u64;
                Ok(pb::SnapshotResponse {
                    header: Some(header),
                    remaining_bytes: total - sent,
                    blob: blob.to_vec(),
                })
            })
            .collect();
        if let Some(n) = self.break_after {
            msgs.truncate(n);
            msgs.push(Err(Status::unavailable("member stopped mid-stream")));
        }
        Ok(Response::new(Box::pin(futures::stream::iter(msgs))))
    }

    async fn alarm(
        &self,
        _: Request<pb::AlarmRequest>,
    ) -> Result<Response<pb::AlarmResponse>, Status> {
        unimplemented()
    }
    async fn status(
        &self,
        _: Request<pb::StatusRequest>,
    ) -> Result<Response<pb::StatusResponse>, Status> {
        unimplemented()
    }
    async fn defragment(
        &self,
        _: Request<pb::DefragmentRequest>,
    ) -> Result<Response<pb::DefragmentResponse>, Status> {
        unimplemented()
    }
    async fn hash(
        &self,
        _: Request<pb::HashRequest>,
    ) -> Result<Response<pb::HashResponse>, Status> {
        unimplemented()
    }
    async fn hash_kv(
        &self,
        _: Request<pb::HashKvRequest>,
    ) -> Result<Response<pb::HashKvResponse>, Status> {
        unimplemented()
    }
    async fn move_leader(
        &self,
        _: Request<pb::MoveLeaderRequest>,
    ) -> Result<Response<pb::MoveLeaderResponse>, Status> {
        unimplemented()
    }
    async fn downgrade(
        &self,
        _: Request<pb::DowngradeRequest>,
    ) -> Result<Response<pb::DowngradeResponse>, Status> {
        unimplemented()
    }
}

/// Serves `member` on a loopback port; returns `http://127.0.0.1:PORT`.
async fn start_member(member: FakeMember) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap_or_else(|e| panic!("bind: {e}"));
    let addr = listener.local_addr().unwrap_or_else(|e| panic!("{e}"));
    let incoming = tokio_stream_of(listener);
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(MaintenanceServer::new(member))
            .serve_with_incoming(incoming),
    );
    format!("http://{addr}")
}

fn tokio_stream_of(
    listener: tokio::net::TcpListener,
) -> impl Stream<Item = std::io::Result<tokio::net::TcpStream>> {
    futures::stream::unfold(listener, |l| async move {
        let next = l.accept().await.map(|(s, _)| s);
        Some((next, l))
    })
}

fn destination(s3: &S3Server, bucket: &str) -> S3Destination {
    S3Destination {
        bucket: bucket.to_string(),
        prefix: "titan".to_string(),
        endpoint: Some(format!("http://{}", s3.addr)),
        region: "us-east-1".to_string(),
        credentials_secret: "s3".to_string(),
        allow_http: true,
    }
}

fn credentials(secret: &str) -> S3Credentials {
    S3Credentials {
        access_key_id: ACCESS_KEY.to_string(),
        secret_access_key: secret.to_string(),
        session_token: None,
    }
}

fn quick_store() -> StoreConfig {
    StoreConfig {
        max_retries: 1,
        retry_timeout: Duration::from_secs(5),
        connect_timeout: Duration::from_secs(2),
        request_timeout: Duration::from_secs(30),
    }
}

fn store(s3: &S3Server, bucket: &str, secret: &str) -> Arc<dyn ObjectStore> {
    s3_store(
        &destination(s3, bucket),
        &credentials(secret),
        &quick_store(),
    )
    .unwrap_or_else(|e| panic!("store: {e}"))
}

fn request(endpoint: &str, backup: &str, started: Timestamp, keep: Option<u32>) -> BackupRequest {
    BackupRequest {
        namespace: "prod".to_string(),
        cluster: "demo".to_string(),
        backup: backup.to_string(),
        member: "demo-1".to_string(),
        endpoint: endpoint.to_string(),
        tls: None,
        bucket: BUCKET.to_string(),
        keys: backup_keys("titan", "prod", "demo", backup, started),
        keep,
    }
}

async fn get(store: &dyn ObjectStore, key: &str) -> Vec<u8> {
    let got = store.get(&Path::from(key)).await;
    let got = got.unwrap_or_else(|e| panic!("get {key}: {e}"));
    got.bytes()
        .await
        .unwrap_or_else(|e| panic!("read {key}: {e}"))
        .to_vec()
}

async fn keys_under(store: &dyn ObjectStore, dir: &str) -> Vec<String> {
    let mut keys: Vec<String> = store
        .list(Some(&Path::from(dir)))
        .map_ok(|m| m.location.to_string())
        .try_collect()
        .await
        .unwrap_or_else(|e| panic!("list {dir}: {e}"));
    keys.sort();
    keys
}

fn at(secs: i64) -> Timestamp {
    Timestamp::from_second(1_780_000_000 + secs).unwrap_or_else(|e| panic!("{e}"))
}

/// Small parts so that a 12 MiB snapshot goes up as several parts.
fn upload_config() -> UploadConfig {
    UploadConfig {
        part_size_bytes: 5 << 20,
        max_parts_in_flight: 2,
        connect_timeout: Duration::from_secs(2),
        idle_timeout: Duration::from_secs(10),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_streams_into_the_bucket_with_a_matching_manifest_and_retention() {
    let s3 = start_s3().await;
    let snapshot = Arc::new(etcd_snapshot(12 << 20, 1));
    let endpoint = start_member(FakeMember {
        snapshot: snapshot.clone(),
        break_after: None,
    })
    .await;
    let store = store(&s3, BUCKET, SECRET_KEY);
    let req = request(&endpoint, "first", at(0), Some(2));
    let outcome = take_backup(store.as_ref(), &req, &upload_config())
        .await
        .unwrap_or_else(|e| panic!("backup: {e}"));
    let m = &outcome.manifest;
    assert_eq!(m.snapshot_key, req.keys.snapshot);
    assert_eq!((m.revision, m.cluster_id.as_str()), (1234, "193"));
    assert_eq!(m.member, "demo-1");

    let downloaded = get(store.as_ref(), &req.keys.snapshot).await;
    let manifest = Manifest::decode(&get(store.as_ref(), &req.keys.manifest).await)
        .unwrap_or_else(|e| panic!("manifest: {e}"));
    assert_eq!(&manifest, m);
    assert_eq!(downloaded.len() as u64, manifest.size_bytes);
    assert_eq!(downloaded, *snapshot, "byte-identical");
    assert_eq!(
        titan_snapfile::backup::hex(&Sha256::digest(&downloaded)),
        manifest.sha256
    );
    assert!(outcome.expired.is_empty() && outcome.retention_error.is_none());

    // Two more backups with keep = 2: the first one goes, with its manifest.
    let mut later: Vec<BackupKeys> = Vec::new();
    for (i, name) in [(1, "second"), (2, "third")] {
        let req = request(&endpoint, name, at(i * 60), Some(2));
        let outcome = take_backup(store.as_ref(), &req, &upload_config())
            .await
            .unwrap_or_else(|e| panic!("backup {name}: {e}"));
        if i == 2 {
            assert_eq!(
                outcome.expired,
                vec![request(&endpoint, "first", at(0), None).keys.snapshot]
            );
        }
        later.push(req.keys);
    }
    let mut want: Vec<String> = later
        .iter()
        .flat_map(|k| [k.snapshot.clone(), k.manifest.clone()])
        .collect();
    want.sort();
    assert_eq!(keys_under(store.as_ref(), &req.keys.dir).await, want);
    println!("ok: 12 MiB snapshot uploaded in parts, manifest matches, retention kept 2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_stream_aborts_the_upload_and_leaves_nothing_under_the_final_key() {
    let s3 = start_s3().await;
    // 8 MiB: more than one part has gone up when the stream breaks at 7 MiB.
    let endpoint = start_member(FakeMember {
        snapshot: Arc::new(etcd_snapshot(8 << 20, 2)),
        break_after: Some(7 * 32),
    })
    .await;
    let store = store(&s3, BUCKET, SECRET_KEY);
    let req = request(&endpoint, "broken", at(0), None);
    let result = take_backup(store.as_ref(), &req, &upload_config()).await;
    match &result {
        Err(e @ BackupError::SnapshotStream { detail, .. }) => {
            assert_eq!(e.reason(), "SnapshotStreamFailed");
            assert!(detail.contains("member stopped mid-stream"), "{detail}");
        }
        other => panic!("want SnapshotStream, got {other:?}"),
    }
    let head = store.head(&Path::from(req.keys.snapshot.as_str())).await;
    assert!(
        matches!(head, Err(object_store::Error::NotFound { .. })),
        "{head:?}"
    );
    assert!(keys_under(store.as_ref(), &req.keys.dir).await.is_empty());

    // A member that is not there at all.
    let req = request("http://127.0.0.1:1", "nomember", at(5), None);
    let result = take_backup(store.as_ref(), &req, &upload_config()).await;
    assert!(
        matches!(result, Err(BackupError::SnapshotStream { .. })),
        "{result:?}"
    );
    assert!(keys_under(store.as_ref(), &req.keys.dir).await.is_empty());
    println!("ok: broken and unreachable streams leave no object");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_credentials_and_a_missing_bucket_fail_as_bucket_unreachable() {
    let s3 = start_s3().await;
    let endpoint = start_member(FakeMember {
        snapshot: Arc::new(etcd_snapshot(4096, 3)),
        break_after: None,
    })
    .await;
    let cases = [
        (BUCKET, "wrong-secret", "wrong credentials"),
        ("no-such-bucket", SECRET_KEY, "missing bucket"),
    ];
    for (bucket, secret, what) in cases {
        let bad = store(&s3, bucket, secret);
        let mut req = request(&endpoint, "bad", at(0), None);
        req.bucket = bucket.to_string();
        let result = take_backup(bad.as_ref(), &req, &upload_config()).await;
        match &result {
            Err(e @ BackupError::BucketUnreachable { bucket: b, .. }) => {
                assert_eq!(e.reason(), "BucketUnreachable", "{what}");
                assert_eq!(b, bucket, "{what}");
                assert!(
                    e.to_string()
                        .starts_with(&format!("bucket {bucket} unreachable"))
                );
            }
            other => panic!("{what}: want BucketUnreachable, got {other:?}"),
        }
    }
    let good = store(&s3, BUCKET, SECRET_KEY);
    let req = request(&endpoint, "bad", at(0), None);
    assert!(keys_under(good.as_ref(), &req.keys.dir).await.is_empty());
    println!("ok: wrong credentials and a missing bucket fail before any upload");
}

/// The real thing: a `titan-server` member's `Maintenance.Snapshot` goes
/// into the bucket, comes back byte-identical to the manifest, and a new
/// server started with `--restore-from` on the downloaded file serves every
/// key written before the backup. Needs the server binary (`cargo build -p
/// titan-server --bins`, or `TITAN_SERVER_BIN`).
#[test]
fn a_real_members_backup_downloads_verified_and_restores_every_key() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap_or_else(|e| panic!("runtime: {e}"));
    let s3 = rt.block_on(start_s3());
    let source = titan_testkit::Cluster::start(1, &[]);
    let want: Vec<(String, String)> = (0..300)
        .map(|i| {
            (
                format!("backup/{i:04}"),
                format!("value-{i}-{}", "x".repeat(200)),
            )
        })
        .collect();
    for (key, value) in &want {
        assert!(source.set(key, value), "SET {key}");
    }
    let endpoint = format!("http://{}", source.nodes[0].grpc_endpoint());
    let store = store(&s3, BUCKET, SECRET_KEY);
    let req = request(&endpoint, "real", at(0), Some(1));
    let outcome = rt
        .block_on(take_backup(store.as_ref(), &req, &upload_config()))
        .unwrap_or_else(|e| panic!("backup: {e}"));
    assert!(outcome.manifest.revision >= 300, "{:?}", outcome.manifest);
    drop(source);

    let downloaded = rt.block_on(get(store.as_ref(), &req.keys.snapshot));
    let manifest = Manifest::decode(&rt.block_on(get(store.as_ref(), &req.keys.manifest)))
        .unwrap_or_else(|e| panic!("manifest: {e}"));
    assert_eq!(downloaded.len() as u64, manifest.size_bytes);
    assert_eq!(
        titan_snapfile::backup::hex(&Sha256::digest(&downloaded)),
        manifest.sha256,
        "download matches the manifest"
    );
    // The init container's download: `titan-operator fetch-backup`, with
    // the manifest's checksum, credentials from the environment.
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
    let file = dir.path().join("restore").join("backup.snapshot");
    let fetched = fetch_backup(&s3, &req.keys.snapshot, &file, Some(&manifest.sha256));
    assert!(fetched.status.success(), "fetch-backup: {fetched:?}");
    assert_eq!(
        std::fs::read(&file).unwrap_or_default(),
        downloaded,
        "fetched file is the object"
    );

    // A damaged copy of it is refused, and nothing is written.
    let mut damaged = downloaded.clone();
    damaged[100] ^= 0x01;
    let damaged_key = format!("{}.damaged", req.keys.snapshot);
    rt.block_on(store.put(&Path::from(damaged_key.as_str()), damaged.into()))
        .unwrap_or_else(|e| panic!("put: {e}"));
    let refused_file = dir.path().join("refused").join("backup.snapshot");
    let refused = fetch_backup(&s3, &damaged_key, &refused_file, None);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success(), "a damaged backup is refused");
    assert!(stderr.contains("BackupCorrupt"), "{stderr}");
    assert!(!refused_file.exists() && !refused_file.with_extension("partial").exists());

    let flag = format!("--restore-from={}", file.display());
    let restored = titan_testkit::Cluster::start(1, &[&flag]);
    let port = restored.nodes[0].client_port;
    for (key, value) in &want {
        let got = titan_testkit::request(port, &format!("GET {key}"));
        assert_eq!(
            got.as_deref(),
            Some(format!("VALUE {value}").as_str()),
            "{key}"
        );
    }
    println!(
        "ok: {} bytes at revision {} restored {} keys into a new server",
        manifest.size_bytes,
        manifest.revision,
        want.len()
    );
}

/// Runs `titan-operator fetch-backup` against the test's S3 server.
fn fetch_backup(
    s3: &S3Server,
    key: &str,
    out: &std::path::Path,
    sha256: Option<&str>,
) -> std::process::Output {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_titan-operator"));
    cmd.args([
        "fetch-backup",
        "--bucket",
        BUCKET,
        "--key",
        key,
        "--allow-http",
    ])
    .arg("--endpoint")
    .arg(format!("http://{}", s3.addr))
    .arg("--out")
    .arg(out)
    .env("AWS_ACCESS_KEY_ID", ACCESS_KEY)
    .env("AWS_SECRET_ACCESS_KEY", SECRET_KEY);
    if let Some(sha) = sha256 {
        cmd.args(["--sha256", sha]);
    }
    cmd.output()
        .unwrap_or_else(|e| panic!("titan-operator fetch-backup: {e}"))
}
