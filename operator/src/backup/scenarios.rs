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
    let server = tokio::spawn(fixtures::serve(handle, expects));
    let result = tokio::time::timeout(Duration::from_secs(10), reconcile(Arc::new(backup), ctx));
    let requeue = match result.await {
        Ok(Ok(requeue)) => requeue,
        Ok(Err(e)) => panic!("reconcile failed: {e}"),
        Err(_) => panic!("reconcile timed out"),
    };
    match tokio::time::timeout(Duration::from_secs(5), server).await {
        Ok(Ok(())) => requeue,
        Ok(Err(join)) => std::panic::resume_unwind(join.into_panic()),
        Err(_) => panic!("mock API server did not finish"),
    }
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
