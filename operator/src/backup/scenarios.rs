//! TitanBackup reconcile scenarios against the mock API server: the exact
//! API calls, in order, for each way a backup can end before it reaches the
//! bucket, and for a finished backup (no call at all).

use std::sync::Arc;
use std::time::Duration;

use http::Method;
use kube::Client;
use kube::runtime::controller::Action as Requeue;
use kube::runtime::events::{Recorder, Reporter};
use serde_json::{Value, json};

use super::controller::{BackupContext, member_endpoint, reconcile};
use super::resource::TitanBackup;
use super::store::StoreConfig;
use super::upload::UploadConfig;
use crate::fixtures::{self, Expect, Reply};

const BACKUP: &str = "/apis/titan.dev/v1alpha1/namespaces/prod/titanbackups/nightly";
const STATUS: &str = "/apis/titan.dev/v1alpha1/namespaces/prod/titanbackups/nightly/status";
const CLUSTER: &str = "/apis/titan.dev/v1alpha1/namespaces/prod/titanclusters/demo";
const SECRET: &str = "/api/v1/namespaces/prod/secrets/s3";
const EVENTS: &str = "/apis/events.k8s.io/v1/namespaces/prod/events";

fn backup_json(status: Option<Value>) -> Value {
    let mut b = json!({
        "apiVersion": "titan.dev/v1alpha1", "kind": "TitanBackup",
        "metadata": {"name": "nightly", "namespace": "prod", "uid": "b-1", "generation": 1},
        "spec": {"cluster": "demo", "destination": {"s3": {
            "bucket": "backups", "credentialsSecret": "s3",
            "endpoint": "http://127.0.0.1:1", "allowHttp": true}}}
    });
    if let Some(s) = status {
        b["status"] = s;
    }
    b
}

fn backup(status: Option<Value>) -> TitanBackup {
    serde_json::from_value(backup_json(status)).unwrap_or_else(|e| panic!("backup: {e}"))
}

fn cluster_json(members: Value) -> Value {
    json!({
        "apiVersion": "titan.dev/v1alpha1", "kind": "TitanCluster",
        "metadata": {"name": "demo", "namespace": "prod", "uid": "c-1"},
        "spec": {"replicas": 3},
        "status": {"members": members}
    })
}

fn ready_members() -> Value {
    json!([
        {"name": "demo-0", "id": "1", "role": "leader", "ready": true},
        {"name": "demo-1", "id": "2", "role": "follower", "ready": true}
    ])
}

fn context() -> (Arc<BackupContext>, fixtures::Handle) {
    let (service, handle) = tower_test::mock::pair();
    let client = Client::new(service, "default");
    let reporter = Reporter {
        controller: "titan-operator".to_string(),
        instance: None,
    };
    let ctx = BackupContext {
        client: client.clone(),
        recorder: Recorder::new(client, reporter),
        upload: UploadConfig {
            connect_timeout: Duration::from_millis(300),
            ..UploadConfig::default()
        },
        store: StoreConfig {
            max_retries: 0,
            retry_timeout: Duration::from_secs(1),
            connect_timeout: Duration::from_millis(300),
            request_timeout: Duration::from_secs(1),
        },
        endpoint: Arc::new(member_endpoint),
        clock: Arc::new(fixtures::now),
        requeue_no_member: Duration::from_secs(30),
    };
    (Arc::new(ctx), handle)
}

async fn run(backup: TitanBackup, expects: Vec<Expect>) -> Requeue {
    let (ctx, handle) = context();
    fixtures::reconcile_against(handle, expects, reconcile(Arc::new(backup), ctx)).await
}

fn running_status(b: &Value) {
    assert_eq!(b["status"]["phase"], "Running", "{b}");
    assert!(b["status"]["startTime"].is_string(), "{b}");
}

fn condition<'a>(body: &'a Value, type_: &str) -> &'a Value {
    body["status"]["conditions"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["type"] == type_))
        .unwrap_or_else(|| panic!("condition {type_} missing in {body}"))
}

/// Fresh read, Running, the calls of `middle`, the Warning event, Failed.
fn failing(middle: Vec<Expect>, event: fn(&Value), status: fn(&Value)) -> Vec<Expect> {
    let mut calls = vec![
        Expect::new(Method::GET, BACKUP, Reply::Json(backup_json(None))),
        Expect::new(Method::PATCH, STATUS, Reply::Json(backup_json(None))).check(running_status),
    ];
    calls.extend(middle);
    calls.push(Expect::new(Method::POST, EVENTS, Reply::Echo).check(event));
    calls.push(Expect::new(Method::PATCH, STATUS, Reply::Json(backup_json(None))).check(status));
    calls
}

#[tokio::test]
async fn a_finished_backup_is_never_taken_again() {
    for phase in ["Completed", "Failed"] {
        let requeue = run(backup(Some(json!({"phase": phase}))), vec![]).await;
        assert_eq!(requeue, Requeue::await_change(), "{phase}");
    }
    // The cache still says Running, the API server already says Completed.
    let fresh = backup_json(Some(json!({"phase": "Completed"})));
    let calls = vec![Expect::new(Method::GET, BACKUP, Reply::Json(fresh))];
    let stale = backup(Some(json!({"phase": "Running"})));
    assert_eq!(run(stale, calls).await, Requeue::await_change());
}

#[tokio::test]
async fn a_missing_cluster_fails_with_cluster_not_found() {
    let calls = failing(
        vec![Expect::new(Method::GET, CLUSTER, Reply::NotFound)],
        |e| {
            assert_eq!(e["reason"], "ClusterNotFound");
            assert_eq!(e["type"], "Warning");
        },
        |b| {
            assert_eq!(b["status"]["phase"], "Failed", "{b}");
            let failed = condition(b, "Failed");
            assert_eq!(failed["status"], "True");
            assert_eq!(failed["reason"], "ClusterNotFound");
            assert_eq!(
                failed["message"],
                "TitanCluster demo not found in namespace prod"
            );
            assert_eq!(condition(b, "Completed")["status"], "False");
            assert!(b["status"]["completionTime"].is_string(), "{b}");
        },
    );
    assert_eq!(run(backup(None), calls).await, Requeue::await_change());
}

#[tokio::test]
async fn a_missing_or_incomplete_secret_fails_naming_it() {
    let cluster = Reply::Json(cluster_json(ready_members()));
    let calls = failing(
        vec![
            Expect::new(Method::GET, CLUSTER, cluster.clone()),
            Expect::new(Method::GET, SECRET, Reply::NotFound),
        ],
        |e| assert_eq!(e["reason"], "CredentialsSecretMissing"),
        |b| {
            let failed = condition(b, "Failed");
            assert_eq!(failed["reason"], "CredentialsSecretMissing");
            assert_eq!(failed["message"], "credentials Secret s3 not found");
        },
    );
    assert_eq!(run(backup(None), calls).await, Requeue::await_change());

    // "YWs=" is "ak": the secret access key is missing.
    let secret = json!({"apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "s3", "namespace": "prod"},
        "data": {"AWS_ACCESS_KEY_ID": "YWs="}});
    let calls = failing(
        vec![
            Expect::new(Method::GET, CLUSTER, cluster),
            Expect::new(Method::GET, SECRET, Reply::Json(secret)),
        ],
        |e| assert_eq!(e["reason"], "CredentialsIncomplete"),
        |b| {
            let failed = condition(b, "Failed");
            assert_eq!(failed["reason"], "CredentialsIncomplete");
            assert_eq!(
                failed["message"],
                "credentials Secret s3 has no (or an empty) AWS_SECRET_ACCESS_KEY"
            );
        },
    );
    assert_eq!(run(backup(None), calls).await, Requeue::await_change());
}

#[tokio::test]
async fn an_unreachable_bucket_fails_as_bucket_unreachable() {
    // "YWs=" / "c2s=": "ak" / "sk"; the endpoint is 127.0.0.1:1 (nothing listens).
    let secret = json!({"apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "s3", "namespace": "prod"},
        "data": {"AWS_ACCESS_KEY_ID": "YWs=", "AWS_SECRET_ACCESS_KEY": "c2s="}});
    let calls = failing(
        vec![
            Expect::new(
                Method::GET,
                CLUSTER,
                Reply::Json(cluster_json(ready_members())),
            ),
            Expect::new(Method::GET, SECRET, Reply::Json(secret)),
        ],
        |e| assert_eq!(e["reason"], "BucketUnreachable"),
        |b| {
            let failed = condition(b, "Failed");
            assert_eq!(failed["reason"], "BucketUnreachable");
            let message = failed["message"].as_str().unwrap_or_default();
            assert!(
                message.starts_with("bucket backups unreachable"),
                "{message}"
            );
            assert!(b["status"].get("objectKey").is_none(), "{b}");
        },
    );
    assert_eq!(run(backup(None), calls).await, Requeue::await_change());
}

#[tokio::test]
async fn no_ready_member_leaves_the_backup_pending_and_retries() {
    let members = json!([
        {"name": "demo-0", "id": "1", "role": "leader", "ready": false},
        {"name": "demo-3", "id": "4", "role": "learner", "ready": true}
    ]);
    let calls = failing(
        vec![Expect::new(
            Method::GET,
            CLUSTER,
            Reply::Json(cluster_json(members)),
        )],
        |e| assert_eq!(e["reason"], "NoReadyMember"),
        |b| {
            assert_eq!(b["status"]["phase"], "Pending", "{b}");
            assert_eq!(condition(b, "Completed")["reason"], "NoReadyMember");
        },
    );
    let requeue = run(backup(None), calls).await;
    assert_eq!(requeue, Requeue::requeue(Duration::from_secs(30)));
}

/// The whole controller path: the API calls of a backup that completes,
/// against an in-process S3 server (`s3s-fs`) and a member that streams a
/// well-formed etcd snapshot; status carries key, size, revision and the
/// SHA-256 of the object in the bucket.
mod completes {
    use std::pin::Pin;

    use futures::Stream;
    use hyper_util::rt::{TokioExecutor, TokioIo};
    use hyper_util::server::conn::auto::Builder as ConnBuilder;
    use object_store::ObjectStoreExt;
    use object_store::path::Path;
    use sha2::{Digest, Sha256};
    use titan_proto::etcdserverpb as pb;
    use titan_proto::etcdserverpb::maintenance_server::{Maintenance, MaintenanceServer};
    use tonic::{Request, Response, Status};

    use super::*;
    use crate::backup::resource::S3Destination;
    use crate::backup::store::{S3Credentials, s3_store};

    /// Serves one fixed etcd snapshot; every other RPC is unimplemented.
    struct Member(Vec<u8>);

    type Snapshots = Pin<Box<dyn Stream<Item = Result<pb::SnapshotResponse, Status>> + Send>>;

    fn no<T>() -> Result<Response<T>, Status> {
        Err(Status::unimplemented("not in this fake"))
    }

    #[tonic::async_trait]
    impl Maintenance for Member {
        type SnapshotStream = Snapshots;
        async fn snapshot(
            &self,
            _: Request<pb::SnapshotRequest>,
        ) -> Result<Response<Snapshots>, Status> {
            let header = pb::ResponseHeader {
                revision: 77,
                cluster_id: 5,
                ..pb::ResponseHeader::default()
            };
            let msgs = vec![Ok(pb::SnapshotResponse {
                header: Some(header),
                remaining_bytes: 0,
                blob: self.0.clone(),
            })];
            Ok(Response::new(Box::pin(futures::stream::iter(msgs))))
        }
        async fn alarm(
            &self,
            _: Request<pb::AlarmRequest>,
        ) -> Result<Response<pb::AlarmResponse>, Status> {
            no()
        }
        async fn status(
            &self,
            _: Request<pb::StatusRequest>,
        ) -> Result<Response<pb::StatusResponse>, Status> {
            no()
        }
        async fn defragment(
            &self,
            _: Request<pb::DefragmentRequest>,
        ) -> Result<Response<pb::DefragmentResponse>, Status> {
            no()
        }
        async fn hash(
            &self,
            _: Request<pb::HashRequest>,
        ) -> Result<Response<pb::HashResponse>, Status> {
            no()
        }
        async fn hash_kv(
            &self,
            _: Request<pb::HashKvRequest>,
        ) -> Result<Response<pb::HashKvResponse>, Status> {
            no()
        }
        async fn move_leader(
            &self,
            _: Request<pb::MoveLeaderRequest>,
        ) -> Result<Response<pb::MoveLeaderResponse>, Status> {
            no()
        }
        async fn downgrade(
            &self,
            _: Request<pb::DowngradeRequest>,
        ) -> Result<Response<pb::DowngradeResponse>, Status> {
            no()
        }
    }

    async fn listener() -> (tokio::net::TcpListener, std::net::SocketAddr) {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await;
        let l = l.unwrap_or_else(|e| panic!("bind: {e}"));
        let addr = l.local_addr().unwrap_or_else(|e| panic!("{e}"));
        (l, addr)
    }

    async fn start_s3(root: &std::path::Path) -> std::net::SocketAddr {
        std::fs::create_dir(root.join("backups")).unwrap_or_else(|e| panic!("{e}"));
        let fs = s3s_fs::FileSystem::new(root).unwrap_or_else(|e| panic!("{e:?}"));
        let mut builder = s3s::service::S3ServiceBuilder::new(fs);
        builder.set_auth(s3s::auth::SimpleAuth::from_single("ak", "sk"));
        let service = builder.build();
        let (l, addr) = listener().await;
        tokio::spawn(async move {
            let http = ConnBuilder::new(TokioExecutor::new());
            while let Ok((socket, _)) = l.accept().await {
                let conn = http.serve_connection(TokioIo::new(socket), service.clone());
                let conn = conn.into_owned();
                tokio::spawn(async move {
                    let _ = conn.await;
                });
            }
        });
        addr
    }

    async fn start_member(snapshot: Vec<u8>) -> std::net::SocketAddr {
        let (l, addr) = listener().await;
        let incoming =
            futures::stream::unfold(
                l,
                |l| async move { Some((l.accept().await.map(|(s, _)| s), l)) },
            );
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(MaintenanceServer::new(Member(snapshot)))
                .serve_with_incoming(incoming),
        );
        addr
    }

    /// The member's stream: 512 bytes and the SHA-256 trailer.
    fn snapshot() -> Vec<u8> {
        let mut snapshot = vec![3u8; 512];
        let trailer: [u8; 32] = Sha256::digest(&snapshot).into();
        snapshot.extend_from_slice(&trailer);
        snapshot
    }

    fn completed(b: &Value) {
        let s = &b["status"];
        let sha256 = titan_snapfile::backup::hex(&Sha256::digest(snapshot()));
        assert_eq!(s["sha256"], sha256, "{b}");
        assert_eq!(s["phase"], "Completed", "{b}");
        assert_eq!(s["revision"], 77, "{b}");
        assert_eq!(s["sizeBytes"], 544, "{b}");
        assert_eq!(s["member"], "demo-1", "follower first: {b}");
        let key = s["objectKey"].as_str().unwrap_or_default();
        assert!(
            key.starts_with("prod/demo/") && key.ends_with("-nightly.snapshot"),
            "{b}"
        );
        assert_eq!(condition(b, "Completed")["status"], "True");
        assert_eq!(condition(b, "Failed")["status"], "False");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_backup_completes_and_records_key_size_revision_and_checksum() {
        let root = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let s3 = start_s3(root.path()).await;
        let snapshot = snapshot();
        let member = start_member(snapshot.clone()).await;

        let mut spec = backup_json(None);
        spec["spec"]["destination"]["s3"]["endpoint"] = json!(format!("http://{s3}"));
        let secret = json!({"apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": "s3", "namespace": "prod"},
            "data": {"AWS_ACCESS_KEY_ID": "YWs=", "AWS_SECRET_ACCESS_KEY": "c2s="}});
        let calls = vec![
            Expect::new(Method::GET, BACKUP, Reply::Json(spec.clone())),
            Expect::new(Method::PATCH, STATUS, Reply::Json(spec.clone())).check(running_status),
            Expect::new(
                Method::GET,
                CLUSTER,
                Reply::Json(cluster_json(ready_members())),
            ),
            Expect::new(Method::GET, SECRET, Reply::Json(secret)),
            Expect::new(Method::POST, EVENTS, Reply::Echo)
                .check(|e| assert_eq!(e["reason"], "BackupCompleted")),
            Expect::new(Method::PATCH, STATUS, Reply::Json(spec.clone())).check(completed),
        ];
        let (ctx, handle) = context();
        let mut ctx = Arc::try_unwrap(ctx).unwrap_or_else(|_| panic!("shared context"));
        ctx.endpoint = Arc::new(move |_, _, _| format!("http://{member}"));
        let backup: TitanBackup = serde_json::from_value(spec).unwrap_or_else(|e| panic!("{e}"));
        let server = tokio::spawn(fixtures::serve(handle, calls));
        let requeue = reconcile(Arc::new(backup), Arc::new(ctx)).await;
        assert_eq!(requeue.ok(), Some(Requeue::await_change()));
        server
            .await
            .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()));

        // The object in the bucket is the member's stream, byte for byte.
        let dest = S3Destination {
            bucket: "backups".into(),
            prefix: String::new(),
            endpoint: Some(format!("http://{s3}")),
            region: "us-east-1".into(),
            credentials_secret: "s3".into(),
            allow_http: true,
        };
        let creds = S3Credentials {
            access_key_id: "ak".into(),
            secret_access_key: "sk".into(),
            session_token: None,
        };
        let store =
            s3_store(&dest, &creds, &StoreConfig::default()).unwrap_or_else(|e| panic!("{e}"));
        let key = super::super::naming::backup_keys("", "prod", "demo", "nightly", fixtures::now());
        let got = store.get(&Path::from(key.snapshot.as_str())).await;
        let got = got.unwrap_or_else(|e| panic!("{e}")).bytes().await;
        assert_eq!(got.unwrap_or_else(|e| panic!("{e}")).to_vec(), snapshot);
    }
}
