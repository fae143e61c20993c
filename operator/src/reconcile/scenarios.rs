//! Reconcile scenarios against the mock API server: each lists the exact API
//! calls a reconcile must make (see `fixtures`).

use std::sync::Arc;
use std::time::Duration;

use http::Method;
use kube::runtime::controller::Action as Requeue;
use serde_json::{Value, json};

use super::reconcile;
use crate::crd::TitanCluster;
use crate::fixtures::{self, AdminCall, Expect, FakeAdmin, Reply, paths};

/// The four reads of every (unpaused) reconcile.
fn observe_calls(cm: Option<Value>, sts: Option<Value>, pods: Value, pvcs: Value) -> Vec<Expect> {
    let get = |path: &str, v: Option<Value>| {
        Expect::new(Method::GET, path, v.map_or(Reply::NotFound, Reply::Json))
    };
    vec![
        get(paths::CONFIGMAP, cm),
        get(paths::STATEFULSET, sts),
        Expect::new(Method::GET, paths::PODS, Reply::Json(pods)),
        Expect::new(Method::GET, paths::PVCS, Reply::Json(pvcs)),
    ]
}

/// The applies of the desired objects (event on creation sits before the
/// PDB). `spec.networkPolicy` is disabled by default: the operator looks
/// for a NetworkPolicy it owns to delete, and finds none.
fn apply_calls(creating: bool) -> Vec<Expect> {
    let mut calls = vec![
        Expect::new(Method::PATCH, paths::PEERS_SERVICE, Reply::Echo).check(|b| {
            assert_eq!(b["spec"]["publishNotReadyAddresses"], true);
            assert_eq!(b["spec"]["clusterIP"], "None");
        }),
        Expect::new(Method::PATCH, paths::CLIENT_SERVICE, Reply::Echo),
        Expect::new(Method::PATCH, paths::LEADER_SERVICE, Reply::Echo).check(|b| {
            assert_eq!(b["spec"]["selector"]["titan.dev/role"], "leader");
            assert_eq!(b["spec"]["selector"]["app.kubernetes.io/instance"], "demo");
        }),
        Expect::new(Method::GET, paths::NETWORK_POLICY, Reply::NotFound),
        Expect::new(Method::PATCH, paths::CONFIGMAP, Reply::Echo),
        Expect::new(Method::PATCH, paths::STATEFULSET, Reply::Echo),
    ];
    if creating {
        calls.push(event("Created"));
    }
    calls.push(Expect::new(Method::PATCH, paths::PDB, Reply::Echo));
    calls
}

/// The merge patch that labels (`leader`) or unlabels the pod of `ordinal`.
fn label_call(ordinal: u32, leader: bool) -> Expect {
    let patched =
        json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": format!("demo-{ordinal}")}});
    let expect = Expect::new(Method::PATCH, paths::pod(ordinal), Reply::Json(patched));
    if leader {
        expect.check(|b| {
            assert_eq!(
                b,
                &json!({"metadata": {"labels": {"titan.dev/role": "leader"}}})
            )
        })
    } else {
        expect.check(|b| {
            assert_eq!(
                b,
                &json!({"metadata": {"labels": {"titan.dev/role": null}}})
            )
        })
    }
}

fn event(reason: &'static str) -> Expect {
    let expect = Expect::new(Method::POST, paths::EVENTS, Reply::Echo);
    match reason {
        "Created" => expect.check(|b| assert_eq!(b["reason"], "Created")),
        "ScaleStatefulSet" => expect.check(|b| assert_eq!(b["reason"], "ScaleStatefulSet")),
        "AddLearner" => expect.check(|b| assert_eq!(b["reason"], "AddLearner")),
        "TransferLeadership" => expect.check(|b| assert_eq!(b["reason"], "TransferLeadership")),
        _ => expect,
    }
}

fn status_call(cluster: &TitanCluster, check: fn(&Value)) -> Expect {
    let body = serde_json::to_value(cluster).unwrap_or_default();
    Expect::new(Method::PATCH, paths::STATUS, Reply::Json(body)).check(check)
}

fn condition<'a>(status: &'a Value, type_: &str) -> &'a Value {
    status["status"]["conditions"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["type"] == type_))
        .unwrap_or_else(|| panic!("condition {type_} missing in {status}"))
}

/// Runs one reconcile against `expects`; both must finish in time.
async fn run(cluster: TitanCluster, admin: Arc<FakeAdmin>, expects: Vec<Expect>) -> Requeue {
    run_knowing(cluster, admin, None, expects).await
}

/// [`run`] by an operator that knows its own identity as `operator`.
async fn run_knowing(
    cluster: TitanCluster,
    admin: Arc<FakeAdmin>,
    operator: Option<crate::builders::OperatorIdentity>,
    expects: Vec<Expect>,
) -> Requeue {
    let (ctx, handle) = fixtures::context_with_operator(admin, operator);
    fixtures::reconcile_against(handle, expects, reconcile(Arc::new(cluster), ctx)).await
}

#[tokio::test]
async fn create_applies_every_object_and_reports_bootstrapping() {
    let cluster = fixtures::cluster(json!({"replicas": 3}));
    let mut expects = observe_calls(
        None,
        None,
        fixtures::pods_json(&[]),
        fixtures::pvcs_json(&[]),
    );
    let mut applies = apply_calls(true);
    applies[4] = Expect::new(Method::PATCH, paths::CONFIGMAP, Reply::Echo).check(|b| {
        assert_eq!(b["data"]["bootstrapped"], "false");
        assert_eq!(b["data"]["initial-replicas"], "3");
        assert_eq!(
            b["data"]["cluster-id"],
            "11111111-2222-4333-8444-555555555555"
        );
    });
    applies[5] = Expect::new(Method::PATCH, paths::STATEFULSET, Reply::Echo).check(|b| {
        assert_eq!(b["spec"]["replicas"], 3);
        let server = &b["spec"]["template"]["spec"]["containers"][0];
        assert_eq!(
            server["resources"],
            json!({"requests": {"cpu": "100m", "memory": "256Mi"}, "limits": {"memory": "1Gi"}}),
            "a new cluster without spec.resources gets the defaults"
        );
        assert_eq!(b["spec"]["updateStrategy"]["type"], "OnDelete");
        assert_eq!(b["metadata"]["ownerReferences"][0]["kind"], "TitanCluster");
    });
    expects.extend(applies);
    expects.push(status_call(&cluster, |b| {
        assert_eq!(b["status"]["phase"], "Bootstrapping");
        assert_eq!(b["status"]["observedGeneration"], 2);
        assert_eq!(
            b["status"]["selector"],
            "app.kubernetes.io/instance=demo,app.kubernetes.io/name=titan"
        );
        assert_eq!(condition(b, "Available")["status"], "False");
        assert_eq!(condition(b, "Progressing")["status"], "True");
    }));
    let requeue = run(cluster, Arc::new(FakeAdmin::default()), expects).await;
    assert_eq!(requeue, Requeue::requeue(Duration::from_secs(5)));
}

fn steady_state_calls(replicas_in_sts: u32, pods: &[u32]) -> Vec<Expect> {
    steady_state_calls_labeled(replicas_in_sts, pods, None)
}

/// As [`steady_state_calls`], with the pod of `labeled` carrying `titan.dev/role=leader`.
fn steady_state_calls_labeled(
    replicas_in_sts: u32,
    pods: &[u32],
    labeled: Option<u32>,
) -> Vec<Expect> {
    let mut pods_json = fixtures::pods_json(pods);
    if let Some(items) = pods_json["items"].as_array_mut() {
        for item in items {
            if labeled.is_some_and(|o| item["metadata"]["name"] == format!("demo-{o}")) {
                item["metadata"]["labels"]["titan.dev/role"] = json!("leader");
            }
        }
    }
    let mut expects = observe_calls(
        Some(fixtures::configmap_json(true, 3)),
        Some(fixtures::statefulset_json(replicas_in_sts)),
        pods_json,
        fixtures::pvcs_json(pods),
    );
    expects.extend(apply_calls(false));
    expects
}

#[tokio::test]
async fn scale_up_step_grows_the_statefulset_by_one() {
    let cluster = fixtures::cluster(json!({"replicas": 5}));
    let admin = Arc::new(FakeAdmin {
        statuses: fixtures::healthy_statuses(3, 0),
        ..FakeAdmin::default()
    });
    let mut expects = steady_state_calls(3, &[0, 1, 2]);
    expects.push(label_call(0, true));
    expects.push(
        Expect::new(Method::PATCH, paths::STATEFULSET, Reply::Echo)
            .check(|b| assert_eq!(b["spec"]["replicas"], 4)),
    );
    expects.push(event("ScaleStatefulSet"));
    expects.push(status_call(&cluster, |b| {
        assert_eq!(b["status"]["phase"], "Scaling");
        assert_eq!(condition(b, "Progressing")["reason"], "ScaleStatefulSet");
    }));
    let requeue = run(cluster, admin.clone(), expects).await;
    assert_eq!(requeue, Requeue::requeue(Duration::from_secs(2)));
    assert!(
        admin.recorded().is_empty(),
        "no membership change before the pod exists"
    );
}

#[tokio::test]
async fn scale_up_step_adds_the_joining_pod_as_learner_on_the_leader() {
    let cluster = fixtures::cluster(json!({"replicas": 4}));
    let mut statuses = fixtures::healthy_statuses(3, 1);
    statuses.insert(
        fixtures::endpoint(3),
        crate::planner::NodeStatus {
            id: 999,
            role: crate::planner::NodeRole::Joining,
            term: 0,
            members: vec![],
        },
    );
    let admin = Arc::new(FakeAdmin {
        statuses,
        ..FakeAdmin::default()
    });
    let mut expects = steady_state_calls(4, &[0, 1, 2, 3]);
    expects.push(label_call(1, true));
    expects.push(event("AddLearner"));
    expects.push(status_call(&cluster, |b| {
        assert_eq!(b["status"]["phase"], "Scaling")
    }));
    run(cluster, admin.clone(), expects).await;
    let calls = admin.recorded();
    assert_eq!(calls.len(), 1);
    let AdminCall::AddLearner(endpoint, member) = &calls[0] else {
        panic!("expected AddLearner, got {calls:?}");
    };
    assert_eq!(
        endpoint,
        &fixtures::endpoint(1),
        "membership changes go to the leader"
    );
    assert_eq!(member.id, 999);
    assert_eq!(member.name, "demo-3");
    assert_eq!(member.peer_addr, "demo-3.demo-peers.prod.svc:5001");
}

#[tokio::test]
async fn scale_down_step_transfers_leadership_away_from_the_leaving_leader() {
    let cluster = fixtures::cluster(json!({"replicas": 1}));
    let admin = Arc::new(FakeAdmin {
        statuses: fixtures::healthy_statuses(3, 2),
        ..FakeAdmin::default()
    });
    let mut expects = steady_state_calls_labeled(3, &[0, 1, 2], Some(2));
    // The leader Service stops routing to the leaving leader before the transfer.
    expects.push(label_call(2, false));
    expects.push(event("TransferLeadership"));
    expects.push(status_call(&cluster, |b| {
        assert_eq!(b["status"]["phase"], "Scaling");
        assert_eq!(b["status"]["leader"], "demo-2");
    }));
    run(cluster, admin.clone(), expects).await;
    assert_eq!(
        admin.recorded(),
        vec![AdminCall::Transfer(
            fixtures::endpoint(2),
            fixtures::member_id(0)
        )]
    );
}

#[tokio::test]
async fn steady_cluster_writes_members_and_conditions_without_changes() {
    let cluster = fixtures::cluster(json!({"replicas": 3}));
    let admin = Arc::new(FakeAdmin {
        statuses: fixtures::healthy_statuses(3, 1),
        ..FakeAdmin::default()
    });
    let mut expects = steady_state_calls_labeled(3, &[0, 1, 2], Some(1));
    expects.push(status_call(&cluster, |b| {
        let s = &b["status"];
        assert_eq!(s["phase"], "Running");
        assert_eq!(s["leader"], "demo-1");
        assert_eq!(s["replicas"], 3);
        assert_eq!(s["readyReplicas"], 3);
        assert_eq!(s["members"][1]["role"], "leader");
        assert_eq!(s["members"][0]["role"], "follower");
        assert_eq!(s["members"][0]["id"], "100");
        assert_eq!(condition(b, "Available")["status"], "True");
        assert_eq!(condition(b, "Available")["observedGeneration"], 2);
        assert_eq!(condition(b, "Progressing")["status"], "False");
        assert_eq!(condition(b, "Degraded")["status"], "False");
        assert_eq!(condition(b, "ReconciliationPaused")["status"], "False");
        assert_eq!(condition(b, "DisruptionBudget")["status"], "True");
    }));
    let requeue = run(cluster, admin.clone(), expects).await;
    assert_eq!(requeue, Requeue::requeue(Duration::from_secs(60)));
    assert!(admin.recorded().is_empty());
}

#[tokio::test]
async fn leader_label_moves_from_the_old_leader_pod_to_the_new_one_removal_first() {
    let cluster = fixtures::cluster(json!({"replicas": 3}));
    let admin = Arc::new(FakeAdmin {
        statuses: fixtures::healthy_statuses(3, 2),
        ..FakeAdmin::default()
    });
    let mut expects = steady_state_calls_labeled(3, &[0, 1, 2], Some(0));
    expects.push(label_call(0, false));
    expects.push(label_call(2, true));
    expects.push(status_call(&cluster, |b| {
        assert_eq!(b["status"]["leader"], "demo-2");
        assert_eq!(b["status"]["phase"], "Running");
    }));
    run(cluster, admin.clone(), expects).await;
    assert!(admin.recorded().is_empty(), "relabelling is no Raft change");
}

#[tokio::test]
async fn no_reachable_leader_unlabels_every_pod() {
    let cluster = fixtures::cluster(json!({"replicas": 3}));
    let admin = Arc::new(FakeAdmin::default());
    let mut expects = steady_state_calls_labeled(3, &[0, 1, 2], Some(1));
    expects.push(label_call(1, false));
    expects.push(status_call(&cluster, |b| {
        assert_eq!(condition(b, "Available")["status"], "False");
    }));
    run(cluster, admin, expects).await;
}

#[tokio::test]
async fn paused_cluster_only_writes_status() {
    let cluster = fixtures::cluster(json!({"replicas": 5, "paused": true}));
    let admin = Arc::new(FakeAdmin {
        statuses: fixtures::healthy_statuses(3, 0),
        ..FakeAdmin::default()
    });
    let expects = vec![status_call(&cluster, |b| {
        assert_eq!(b["status"]["phase"], "Paused");
        assert_eq!(condition(b, "ReconciliationPaused")["status"], "True");
        assert_eq!(condition(b, "ReconciliationPaused")["reason"], "SpecPaused");
    })];
    let requeue = run(cluster, admin.clone(), expects).await;
    assert_eq!(requeue, Requeue::await_change());
    assert!(admin.recorded().is_empty());
}

#[tokio::test]
async fn policy_v1beta1_pdb_is_applied_where_policy_v1_is_not_served() {
    let cluster = fixtures::cluster(json!({"replicas": 3}));
    let admin = Arc::new(FakeAdmin {
        statuses: fixtures::healthy_statuses(3, 0),
        ..FakeAdmin::default()
    });
    let mut expects = steady_state_calls(3, &[0, 1, 2]);
    if let Some(last) = expects.last_mut() {
        *last = Expect::new(Method::PATCH, paths::PDB, Reply::NotFound);
    }
    expects.push(
        Expect::new(Method::PATCH, paths::PDB_V1BETA1, Reply::Echo).check(|b| {
            assert_eq!(b["apiVersion"], "policy/v1beta1");
            assert_eq!(b["spec"]["maxUnavailable"], 1);
        }),
    );
    expects.push(label_call(0, true));
    expects.push(status_call(&cluster, |b| {
        assert_eq!(condition(b, "DisruptionBudget")["status"], "True");
        assert_eq!(condition(b, "DisruptionBudget")["reason"], "Applied");
    }));
    run(cluster, admin, expects).await;
}

#[tokio::test]
async fn no_pdb_api_at_all_is_a_warning_and_condition_not_a_failure() {
    let cluster = fixtures::cluster(json!({"replicas": 3}));
    let admin = Arc::new(FakeAdmin {
        statuses: fixtures::healthy_statuses(3, 0),
        ..FakeAdmin::default()
    });
    let mut expects = steady_state_calls(3, &[0, 1, 2]);
    if let Some(last) = expects.last_mut() {
        *last = Expect::new(Method::PATCH, paths::PDB, Reply::NotFound);
    }
    expects.push(Expect::new(
        Method::PATCH,
        paths::PDB_V1BETA1,
        Reply::NotFound,
    ));
    expects.push(
        Expect::new(Method::POST, paths::EVENTS, Reply::Echo).check(|b| {
            assert_eq!(b["type"], "Warning");
            assert_eq!(b["reason"], "PodDisruptionBudgetUnavailable");
        }),
    );
    expects.push(label_call(0, true));
    expects.push(status_call(&cluster, |b| {
        assert_eq!(condition(b, "DisruptionBudget")["status"], "False");
        assert_eq!(
            condition(b, "DisruptionBudget")["reason"],
            "PolicyUnavailable"
        );
    }));
    run(cluster, admin, expects).await;
}

#[tokio::test]
async fn snapshot_request_annotation_is_answered_and_echoed_in_status() {
    let mut cluster = fixtures::cluster(json!({"replicas": 3}));
    cluster
        .metadata
        .annotations
        .get_or_insert_with(Default::default)
        .insert(
            "titan.dev/snapshot-request".to_string(),
            "req-7".to_string(),
        );
    let admin = Arc::new(FakeAdmin {
        statuses: fixtures::healthy_statuses(3, 0),
        ..FakeAdmin::default()
    });
    let mut expects = steady_state_calls_labeled(3, &[0, 1, 2], Some(0));
    expects.push(event("TakeSnapshot"));
    expects.push(status_call(&cluster, |b| {
        assert_eq!(b["status"]["lastSnapshot"]["requestToken"], "req-7");
        assert_eq!(b["status"]["lastSnapshot"]["index"], 42);
        assert_eq!(b["status"]["lastSnapshot"]["time"], "2027-01-15T08:00:00Z");
    }));
    run(cluster, admin.clone(), expects).await;
    assert_eq!(admin.recorded().len(), 3, "every member snapshots");
}

#[tokio::test]
async fn invalid_spec_is_reported_and_nothing_is_applied() {
    let cluster =
        fixtures::cluster(json!({"raft": {"electionTimeoutMs": 100, "heartbeatMs": 100}}));
    let expects = vec![
        Expect::new(Method::POST, paths::EVENTS, Reply::Echo).check(|b| {
            assert_eq!(b["type"], "Warning");
            assert_eq!(b["reason"], "InvalidSpec");
        }),
        status_call(&cluster, |b| {
            assert_eq!(b["status"]["phase"], "Degraded");
            assert_eq!(condition(b, "Degraded")["reason"], "InvalidSpec");
        }),
    ];
    let requeue = run(cluster, Arc::new(FakeAdmin::default()), expects).await;
    assert_eq!(requeue, Requeue::await_change());
}

#[tokio::test]
async fn error_policy_counts_the_failure_records_a_warning_and_requeues() {
    let cluster = Arc::new(fixtures::cluster(json!({})));
    let (ctx, handle) = fixtures::context(Arc::new(FakeAdmin::default()));
    let expects = vec![
        Expect::new(Method::POST, paths::EVENTS, Reply::Echo).check(|b| {
            assert_eq!(b["type"], "Warning");
            assert_eq!(b["reason"], "ReconcileFailed");
        }),
    ];
    let server = tokio::spawn(fixtures::serve(handle, expects));
    let error = super::Error::MissingField("namespace");
    let requeue = super::error_policy(cluster, &error, ctx.clone());
    assert_eq!(requeue, Requeue::requeue(Duration::from_secs(15)));
    match tokio::time::timeout(Duration::from_secs(5), server).await {
        Ok(Ok(())) => {}
        Ok(Err(join)) => std::panic::resume_unwind(join.into_panic()),
        Err(_) => panic!("no event published"),
    }
    let metrics = ctx.metrics.render();
    assert!(
        metrics.contains("titan_operator_reconcile_failures_total{reason=\"invalid_object\"} 1"),
        "{metrics}"
    );
}

/// A steady 3-member cluster (leader `demo-0`, labelled) whose
/// NetworkPolicy calls are `policy_calls` instead of the disabled default's
/// lookup; ends with the status write.
fn steady_with_policy_calls(cluster: &TitanCluster, policy_calls: Vec<Expect>) -> Vec<Expect> {
    let mut expects = steady_state_calls_labeled(3, &[0, 1, 2], Some(0));
    let at = expects
        .iter()
        .position(|e| e.path == paths::NETWORK_POLICY)
        .unwrap_or_else(|| panic!("no NetworkPolicy call in the steady state"));
    let _replaced: Vec<Expect> = expects.splice(at..=at, policy_calls).collect();
    expects.push(status_call(cluster, |b| {
        assert_eq!(b["status"]["phase"], "Running")
    }));
    expects
}

/// A NetworkPolicy as the API server returns it, owned by `owner_uid`
/// when given.
fn network_policy_json(owner_uid: Option<&str>) -> Value {
    let owners: Vec<Value> = owner_uid
        .map(|uid| {
            json!({"apiVersion": "titan.dev/v1alpha1", "kind": "TitanCluster", "name": "demo",
                "uid": uid, "controller": true, "blockOwnerDeletion": true})
        })
        .into_iter()
        .collect();
    json!({
        "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": {"name": "demo", "namespace": "prod", "uid": "np-uid", "ownerReferences": owners},
        "spec": {"podSelector": {}}
    })
}

fn healthy_admin() -> Arc<FakeAdmin> {
    Arc::new(FakeAdmin {
        statuses: fixtures::healthy_statuses(3, 0),
        ..FakeAdmin::default()
    })
}

#[tokio::test]
async fn enabled_network_policy_is_applied_before_the_statefulset_admitting_the_operator() {
    let cluster = fixtures::cluster(json!({"networkPolicy": {"enabled": true}}));
    let apply = Expect::new(Method::PATCH, paths::NETWORK_POLICY, Reply::Echo).check(|b| {
        assert_eq!(b["kind"], "NetworkPolicy");
        assert_eq!(b["metadata"]["ownerReferences"][0]["kind"], "TitanCluster");
        let ingress = &b["spec"]["ingress"];
        assert_eq!(ingress.as_array().map(Vec::len), Some(3), "{ingress}");
        let operator = &ingress[1];
        assert_eq!(operator["ports"], json!([{"port": 5001, "protocol": "TCP"}]));
        assert_eq!(
            operator["from"][0],
            json!({
                "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "titan-system"}},
                "podSelector": {"matchLabels": {"app.kubernetes.io/name": "titan-operator"}}
            })
        );
    });
    let expects = steady_with_policy_calls(&cluster, vec![apply]);
    let operator = Some(fixtures::operator_identity());
    run_knowing(cluster, healthy_admin(), operator, expects).await;
}

#[tokio::test]
async fn enabled_network_policy_without_the_operators_identity_is_a_warning_not_a_lockout() {
    let cluster = fixtures::cluster(json!({"networkPolicy": {"enabled": true}}));
    let warning = Expect::new(Method::POST, paths::EVENTS, Reply::Echo).check(|b| {
        assert_eq!(b["type"], "Warning");
        assert_eq!(b["reason"], "NetworkPolicyNotApplied");
        let note = b["note"].as_str().unwrap_or_default();
        assert!(note.contains("TITAN_OPERATOR_POD_SELECTOR"), "{note}");
    });
    let expects = steady_with_policy_calls(&cluster, vec![warning]);
    run_knowing(cluster, healthy_admin(), None, expects).await;
}

#[tokio::test]
async fn disabled_network_policy_owned_by_the_cluster_is_deleted_with_a_uid_precondition() {
    let cluster = fixtures::cluster(json!({"networkPolicy": {"enabled": false}}));
    let owned = network_policy_json(Some("11111111-2222-4333-8444-555555555555"));
    let calls = vec![
        Expect::new(
            Method::GET,
            paths::NETWORK_POLICY,
            Reply::Json(owned.clone()),
        ),
        Expect::new(Method::DELETE, paths::NETWORK_POLICY, Reply::Json(owned))
            .check(|b| assert_eq!(b["preconditions"]["uid"], "np-uid", "{b}")),
        Expect::new(Method::POST, paths::EVENTS, Reply::Echo).check(|b| {
            assert_eq!(b["type"], "Normal");
            assert_eq!(b["reason"], "NetworkPolicyDeleted");
        }),
    ];
    let expects = steady_with_policy_calls(&cluster, calls);
    let operator = Some(fixtures::operator_identity());
    run_knowing(cluster, healthy_admin(), operator, expects).await;
}

/// Only the policy this TitanCluster controls is deleted: a user's policy of
/// the same name, or one owned by another object, stays. An operator whose
/// RBAC predates NetworkPolicies (403) carries on.
#[tokio::test]
async fn disabled_network_policy_not_owned_or_unreadable_is_left_alone() {
    let others = [
        Reply::Json(network_policy_json(None)),
        Reply::Json(network_policy_json(Some("someone-else"))),
        Reply::Forbidden,
    ];
    for reply in others {
        let cluster = fixtures::cluster(json!({}));
        let lookup = Expect::new(Method::GET, paths::NETWORK_POLICY, reply);
        let expects = steady_with_policy_calls(&cluster, vec![lookup]);
        run(cluster, healthy_admin(), expects).await;
    }
}

/// `spec.bootstrap.fromBackup` scenarios: the backup is checked before any
/// object exists (the object sits in an in-memory store).
mod restore {
    use super::*;
    use crate::backup::restore::test_support::good_backup;
    use crate::reconcile::restore::{RECHECK_AFTER, StoreFactory};
    use object_store::memory::InMemory;
    use object_store::path::Path as ObjectPath;
    use object_store::{ObjectStore, ObjectStoreExt, PutPayload};

    const SECRET: &str = "/api/v1/namespaces/prod/secrets/s3";
    const KEY: &str = "titan/prod/old/20261207T000000Z-nightly.snapshot";

    fn restored_cluster() -> TitanCluster {
        fixtures::cluster(json!({
            "replicas": 3,
            "bootstrap": {"fromBackup": {"s3": {
                "bucket": "backups", "key": KEY, "credentialsSecret": "s3",
            }}},
        }))
    }

    fn secret() -> Value {
        json!({
            "apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": "s3", "namespace": "prod"},
            // "ak" and "sk", base64.
            "data": {"AWS_ACCESS_KEY_ID": "YWs=", "AWS_SECRET_ACCESS_KEY": "c2s="},
        })
    }

    /// A context whose stores all hold `object` (if any) under [`KEY`].
    async fn context_holding(
        object: Option<Vec<u8>>,
    ) -> (Arc<crate::reconcile::Context>, fixtures::Handle) {
        let store = Arc::new(InMemory::new());
        if let Some(bytes) = object {
            store
                .put(&ObjectPath::from(KEY), PutPayload::from(bytes))
                .await
                .unwrap_or_else(|e| panic!("{e}"));
        }
        let (ctx, handle) = fixtures::context(Arc::new(FakeAdmin::default()));
        let mut ctx = (*ctx).clone();
        let stores: StoreFactory = Arc::new(move |_, _| Ok(store.clone() as Arc<dyn ObjectStore>));
        ctx.backup_stores = stores;
        (Arc::new(ctx), handle)
    }

    fn observe_nothing() -> Vec<Expect> {
        observe_calls(
            None,
            None,
            fixtures::pods_json(&[]),
            fixtures::pvcs_json(&[]),
        )
    }

    async fn run_failing(secret: Option<Value>, object: Option<Vec<u8>>, check: fn(&Value)) {
        let cluster = restored_cluster();
        let mut expects = observe_nothing();
        expects.push(Expect::new(
            Method::GET,
            SECRET,
            secret.map_or(Reply::NotFound, Reply::Json),
        ));
        expects.push(Expect::new(Method::POST, paths::EVENTS, Reply::Echo).check(check));
        expects.push(status_call(&cluster, |b| {
            assert_eq!(b["status"]["phase"], "Degraded");
            let degraded = condition(b, "Degraded");
            assert_eq!(degraded["status"], "True");
            assert!(
                degraded["message"]
                    .as_str()
                    .is_some_and(|m| m.starts_with("cannot restore from backup")),
                "{degraded}"
            );
        }));
        let (ctx, handle) = context_holding(object).await;
        let requeue =
            fixtures::reconcile_against(handle, expects, reconcile(Arc::new(cluster), ctx)).await;
        assert_eq!(requeue, Requeue::requeue(RECHECK_AFTER));
    }

    #[tokio::test]
    async fn a_missing_secret_creates_nothing_and_says_so() {
        run_failing(None, Some(good_backup()), |b| {
            assert_eq!(b["type"], "Warning");
            assert_eq!(b["reason"], "CredentialsSecretMissing");
        })
        .await;
    }

    #[tokio::test]
    async fn a_missing_backup_creates_nothing_and_says_so() {
        run_failing(Some(secret()), None, |b| {
            assert_eq!(b["reason"], "BackupNotFound");
        })
        .await;
    }

    #[tokio::test]
    async fn a_damaged_backup_creates_nothing_and_says_so() {
        let mut damaged = good_backup();
        damaged[60] ^= 0x01; // in the body: the header still decodes
        run_failing(Some(secret()), Some(damaged), |b| {
            assert_eq!(b["reason"], "BackupCorrupt");
            let note = b["note"].as_str().unwrap_or_default();
            assert!(note.contains("does not match"), "{note}");
        })
        .await;
    }

    #[tokio::test]
    async fn a_good_backup_is_verified_then_every_object_is_created_with_the_restore_container() {
        let cluster = restored_cluster();
        let mut expects = observe_nothing();
        expects.push(Expect::new(Method::GET, SECRET, Reply::Json(secret())));
        expects.push(
            Expect::new(Method::POST, paths::EVENTS, Reply::Echo).check(|b| {
                assert_eq!(b["reason"], "BackupVerified");
            }),
        );
        let mut applies = apply_calls(true);
        applies[5] = Expect::new(Method::PATCH, paths::STATEFULSET, Reply::Echo).check(|b| {
            let init = &b["spec"]["template"]["spec"]["initContainers"];
            assert_eq!(init[0]["name"], "restore-backup", "{init}");
        });
        expects.extend(applies);
        expects.push(status_call(&cluster, |b| {
            assert_eq!(b["status"]["phase"], "Bootstrapping");
        }));
        let (ctx, handle) = context_holding(Some(good_backup())).await;
        let requeue =
            fixtures::reconcile_against(handle, expects, reconcile(Arc::new(cluster), ctx)).await;
        assert_eq!(requeue, Requeue::requeue(Duration::from_secs(5)));
    }

    /// The pods of a restored cluster whose restore-backup init container
    /// keeps failing (the object went away after the check): no pod IP, not
    /// Ready.
    fn pods_failing_to_fetch() -> Value {
        let mut pods = fixtures::pods_json(&[0, 1, 2]);
        for item in pods["items"].as_array_mut().into_iter().flatten() {
            item["status"] = json!({
                "conditions": [{"type": "Ready", "status": "False"}],
                "initContainerStatuses": [{
                    "name": "restore-backup", "image": "i", "imageID": "", "ready": false,
                    "restartCount": 2,
                    "state": {"waiting": {"reason": "CrashLoopBackOff"}},
                    "lastState": {"terminated": {"exitCode": 1,
                        "message": "Error: BackupNotFound: no backup at s3://backups/k"}},
                }],
            });
        }
        pods
    }

    /// The reads and applies of a reconcile while the fetch keeps failing.
    fn fetch_failing_reads_and_applies() -> Vec<Expect> {
        let mut expects = observe_calls(
            Some(fixtures::configmap_json(false, 3)),
            Some(fixtures::statefulset_json(3)),
            pods_failing_to_fetch(),
            fixtures::pvcs_json(&[0, 1, 2]),
        );
        expects.extend(apply_calls(false));
        expects
    }

    #[tokio::test]
    async fn a_fetch_that_fails_after_the_check_turns_degraded_with_its_message() {
        let cluster = restored_cluster();
        let mut expects = fetch_failing_reads_and_applies();
        expects.push(
            Expect::new(Method::POST, paths::EVENTS, Reply::Echo).check(|b| {
                assert_eq!(b["type"], "Warning");
                assert_eq!(b["reason"], "RestoreFailed");
                let note = b["note"].as_str().unwrap_or_default();
                assert!(
                    note.starts_with("demo-0 could not fetch the backup: Error: BackupNotFound"),
                    "{note}"
                );
            }),
        );
        expects.push(status_call(&cluster, |b| {
            assert_eq!(b["status"]["phase"], "Degraded");
            assert_eq!(condition(b, "Degraded")["reason"], "RestoreFailed");
        }));
        let (ctx, handle) = context_holding(None).await;
        fixtures::reconcile_against(handle, expects, reconcile(Arc::new(cluster), ctx)).await;
    }

    #[tokio::test]
    async fn a_fetch_failure_already_reported_raises_no_second_event() {
        let mut cluster = restored_cluster();
        let note =
            "demo-0 could not fetch the backup: Error: BackupNotFound: no backup at s3://backups/k";
        cluster.status = Some(
            serde_json::from_value(json!({"conditions": [{
                "type": "Degraded", "status": "True", "reason": "RestoreFailed",
                "message": note, "lastTransitionTime": "2027-01-01T00:00:00Z",
            }]}))
            .unwrap_or_else(|e| panic!("{e}")),
        );
        let mut expects = fetch_failing_reads_and_applies();
        expects.push(status_call(&cluster, |b| {
            assert_eq!(condition(b, "Degraded")["reason"], "RestoreFailed");
        }));
        let (ctx, handle) = context_holding(None).await;
        fixtures::reconcile_against(handle, expects, reconcile(Arc::new(cluster), ctx)).await;
    }

    /// A bootstrapped cluster with its StatefulSet: the reconcile reads no
    /// Secret and no backup (the mock fails any call it does not expect).
    #[tokio::test]
    async fn an_existing_cluster_is_never_checked_again() {
        let cluster = restored_cluster();
        let admin = Arc::new(FakeAdmin {
            statuses: fixtures::healthy_statuses(3, 0),
            ..FakeAdmin::default()
        });
        let mut expects = steady_state_calls_labeled(3, &[0, 1, 2], Some(0));
        expects.push(status_call(&cluster, |b| {
            assert_eq!(b["status"]["phase"], "Running");
        }));
        let (ctx, handle) = context_holding(None).await;
        let mut ctx = (*ctx).clone();
        ctx.admin = admin;
        fixtures::reconcile_against(handle, expects, reconcile(Arc::new(cluster), Arc::new(ctx)))
            .await;
    }
}

/// `spec.tls` scenarios: the CA and member certificates come first, Admin
/// calls use mutual TLS, and TLS cannot be switched on a running cluster.
mod tls {
    use std::collections::BTreeMap;

    use k8s_openapi::ByteString;
    use k8s_openapi::api::core::v1::Secret;

    use super::*;
    use crate::builders::Names;
    use crate::tls::{ClusterCa, member_certs};

    const CA_SECRET: &str = "/api/v1/namespaces/prod/secrets/demo-ca";
    const TLS_SECRET: &str = "/api/v1/namespaces/prod/secrets/demo-tls";
    const SECRETS: &str = "/api/v1/namespaces/prod/secrets";
    const DAY: i64 = 86_400;

    fn tls_cluster() -> TitanCluster {
        fixtures::cluster(json!({"replicas": 3, "tls": {"enabled": true}}))
    }

    fn names() -> Names {
        Names {
            cluster: "demo".into(),
            namespace: "prod".into(),
        }
    }

    fn secret_json(name: &str, data: &BTreeMap<String, String>) -> Value {
        let secret = Secret {
            metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
                name: Some(name.to_string()),
                namespace: Some("prod".to_string()),
                ..Default::default()
            },
            data: Some(
                data.iter()
                    .map(|(k, v)| (k.clone(), ByteString(v.clone().into_bytes())))
                    .collect(),
            ),
            ..Secret::default()
        };
        serde_json::to_value(secret).unwrap_or_default()
    }

    /// A CA Secret and a member Secret issued `age_days` before the scenarios' now.
    fn stored_pki(age_days: i64) -> (Value, Value) {
        let issued_at = fixtures::now().as_second() - age_days * DAY;
        let ca = ClusterCa::generate(&names(), issued_at).expect("ca");
        let members = member_certs(&ca, &names(), 3, &BTreeMap::new(), issued_at).expect("members");
        let ca_data = BTreeMap::from([
            ("tls.crt".to_string(), ca.cert_pem().to_string()),
            ("tls.key".to_string(), ca.key_pem().to_string()),
        ]);
        (
            secret_json("demo-ca", &ca_data),
            secret_json("demo-tls", &members.data),
        )
    }

    fn tls_configmap(tls: bool) -> Value {
        let mut cm = fixtures::configmap_json(true, 3);
        cm["data"]["tls"] = json!(tls.to_string());
        cm
    }

    fn member_secret_keys(b: &Value) -> Vec<String> {
        b["data"]
            .as_object()
            .map(|d| d.keys().cloned().collect())
            .unwrap_or_default()
    }

    #[tokio::test]
    async fn a_new_tls_cluster_gets_a_ca_and_member_certificates_before_any_pod() {
        let cluster = tls_cluster();
        let mut expects = observe_calls(
            None,
            None,
            fixtures::pods_json(&[]),
            fixtures::pvcs_json(&[]),
        );
        expects.extend([
            Expect::new(Method::GET, CA_SECRET, Reply::NotFound),
            Expect::new(Method::POST, SECRETS, Reply::Echo).check(|b| {
                assert_eq!(b["metadata"]["name"], "demo-ca");
                assert_eq!(b["type"], "kubernetes.io/tls");
                assert_eq!(b["metadata"]["ownerReferences"][0]["kind"], "TitanCluster");
                assert_eq!(member_secret_keys(b), ["tls.crt", "tls.key"]);
            }),
            Expect::new(Method::POST, paths::EVENTS, Reply::Echo)
                .check(|b| assert_eq!(b["reason"], "CaCreated")),
            Expect::new(Method::GET, TLS_SECRET, Reply::NotFound),
            Expect::new(Method::PATCH, TLS_SECRET, Reply::Echo).check(|b| {
                assert_eq!(
                    member_secret_keys(b),
                    [
                        "ca.crt",
                        "demo-0.crt",
                        "demo-0.key",
                        "demo-1.crt",
                        "demo-1.key",
                        "demo-2.crt",
                        "demo-2.key"
                    ]
                );
            }),
            Expect::new(Method::POST, paths::EVENTS, Reply::Echo).check(|b| {
                assert_eq!(b["reason"], "CertificatesIssued");
                let note = b["note"].as_str().unwrap_or_default();
                assert!(note.contains("demo-0, demo-1, demo-2"), "{note}");
            }),
        ]);
        let mut applies = apply_calls(true);
        applies[4] = Expect::new(Method::PATCH, paths::CONFIGMAP, Reply::Echo)
            .check(|b| assert_eq!(b["data"]["tls"], "true"));
        applies[5] = Expect::new(Method::PATCH, paths::STATEFULSET, Reply::Echo).check(|b| {
            let pod = &b["spec"]["template"]["spec"];
            assert_eq!(pod["volumes"][0]["secret"]["secretName"], "demo-tls");
            assert_eq!(pod["volumes"][0]["secret"]["defaultMode"], 0o440);
            let server = &pod["containers"][0];
            assert_eq!(server["volumeMounts"][1]["mountPath"], "/etc/titan/tls");
            assert_eq!(server["volumeMounts"][1]["readOnly"], true);
            let script = server["command"][2].as_str().unwrap_or_default();
            for flag in [
                "--peer-tls-ca \"$ca\"",
                "--client-tls-cert \"$cert\"",
                "--client-listen-addr 127.0.0.1",
            ] {
                assert!(script.contains(flag), "{flag} missing in {script}");
            }
        });
        expects.extend(applies);
        expects.push(status_call(&cluster, |b| {
            assert_eq!(b["status"]["phase"], "Bootstrapping");
        }));
        run(cluster, Arc::new(FakeAdmin::default()), expects).await;
    }

    /// A running TLS cluster whose certificates were issued `age_days` ago.
    fn running_tls_calls(age_days: i64, renewal: Vec<Expect>) -> Vec<Expect> {
        let (ca, members) = stored_pki(age_days);
        let mut expects = observe_calls(
            Some(tls_configmap(true)),
            Some(fixtures::statefulset_json(3)),
            fixtures::pods_json(&[0, 1, 2]),
            fixtures::pvcs_json(&[0, 1, 2]),
        );
        expects.push(Expect::new(Method::GET, CA_SECRET, Reply::Json(ca)));
        expects.push(Expect::new(Method::GET, TLS_SECRET, Reply::Json(members)));
        expects.extend(renewal);
        expects.extend(apply_calls(false));
        expects.push(label_call(1, true));
        expects
    }

    fn tls_admin() -> Arc<FakeAdmin> {
        let statuses = fixtures::healthy_statuses(3, 1)
            .into_iter()
            .map(|(uri, s)| (uri.replace("http://", "https://"), s))
            .collect();
        Arc::new(FakeAdmin {
            statuses,
            ..FakeAdmin::default()
        })
    }

    #[tokio::test]
    async fn a_running_tls_cluster_is_polled_with_mutual_tls_and_nothing_is_reissued() {
        let cluster = tls_cluster();
        let admin = tls_admin();
        let mut expects = running_tls_calls(10, vec![]);
        expects.push(status_call(&cluster, |b| {
            assert_eq!(b["status"]["phase"], "Running");
            assert_eq!(condition(b, "Available")["status"], "True");
        }));
        run(cluster, admin.clone(), expects).await;
        let targets = admin
            .status_targets
            .lock()
            .map(|t| t.clone())
            .unwrap_or_default();
        assert_eq!(targets.len(), 3);
        for (ordinal, target) in targets.iter().enumerate() {
            assert_eq!(target.uri, format!("https://10.0.0.{ordinal}:5001"));
            let tls = target.tls.as_ref().expect("mutual TLS");
            assert_eq!(
                tls.server_name,
                format!("demo-{ordinal}.demo-peers.prod.svc")
            );
            assert!(tls.identity.cert_pem.contains("BEGIN CERTIFICATE"));
        }
    }

    #[tokio::test]
    async fn member_certificates_thirty_days_from_expiry_are_renewed_in_place() {
        let cluster = tls_cluster();
        let renewal = vec![
            Expect::new(Method::PATCH, TLS_SECRET, Reply::Echo)
                .check(|b| assert_eq!(member_secret_keys(b).len(), 7)),
            Expect::new(Method::POST, paths::EVENTS, Reply::Echo).check(|b| {
                assert_eq!(b["reason"], "CertificatesIssued");
            }),
        ];
        let mut expects = running_tls_calls(61, renewal);
        expects.push(status_call(&cluster, |b| {
            assert_eq!(b["status"]["phase"], "Running");
        }));
        run(cluster, tls_admin(), expects).await;
    }

    #[tokio::test]
    async fn client_certificates_get_a_secret_each_and_client_auth_requires_them_on_the_grpc_port()
    {
        const CLIENT_SECRET: &str = "/api/v1/namespaces/prod/secrets/demo-client-filesync";
        let cluster = fixtures::cluster(json!({"replicas": 3, "tls": {
            "enabled": true, "clientAuth": true, "clientCertificates": ["filesync"]}}));
        let (ca, members) = stored_pki(10);
        let mut expects = observe_calls(
            Some(tls_configmap(true)),
            Some(fixtures::statefulset_json(3)),
            fixtures::pods_json(&[0, 1, 2]),
            fixtures::pvcs_json(&[0, 1, 2]),
        );
        expects.extend([
            Expect::new(Method::GET, CA_SECRET, Reply::Json(ca)),
            Expect::new(Method::GET, TLS_SECRET, Reply::Json(members)),
            Expect::new(Method::GET, CLIENT_SECRET, Reply::NotFound),
            Expect::new(Method::PATCH, CLIENT_SECRET, Reply::Echo).check(|b| {
                assert_eq!(b["type"], "kubernetes.io/tls");
                assert_eq!(b["metadata"]["ownerReferences"][0]["kind"], "TitanCluster");
                assert_eq!(member_secret_keys(b), ["ca.crt", "tls.crt", "tls.key"]);
            }),
            Expect::new(Method::POST, paths::EVENTS, Reply::Echo).check(|b| {
                assert_eq!(b["reason"], "CertificatesIssued");
                let note = b["note"].as_str().unwrap_or_default();
                assert!(note.contains("demo-client-filesync"), "{note}");
            }),
        ]);
        let mut applies = apply_calls(false);
        applies[5] = Expect::new(Method::PATCH, paths::STATEFULSET, Reply::Echo).check(|b| {
            let script = b["spec"]["template"]["spec"]["containers"][0]["command"][2]
                .as_str()
                .unwrap_or_default();
            assert!(script.contains("--client-tls-ca \"$ca\""), "{script}");
            assert!(
                script.contains("--admin-allowed-cn titan-operator"),
                "{script}"
            );
        });
        expects.extend(applies);
        expects.push(label_call(1, true));
        expects.push(status_call(&cluster, |b| {
            assert_eq!(b["status"]["phase"], "Running");
        }));
        run(cluster, tls_admin(), expects).await;
    }

    #[tokio::test]
    async fn switching_tls_on_for_a_running_cluster_is_refused_and_nothing_changes() {
        for (spec_tls, recorded) in [(true, false), (false, true)] {
            let cluster = fixtures::cluster(json!({"replicas": 3, "tls": {"enabled": spec_tls}}));
            let mut cm = fixtures::configmap_json(true, 3);
            if recorded {
                cm["data"]["tls"] = json!("true");
            }
            let mut expects = observe_calls(
                Some(cm),
                Some(fixtures::statefulset_json(3)),
                fixtures::pods_json(&[0, 1, 2]),
                fixtures::pvcs_json(&[0, 1, 2]),
            );
            expects.push(
                Expect::new(Method::POST, paths::EVENTS, Reply::Echo)
                    .check(|b| assert_eq!(b["reason"], "TlsChangeUnsupported")),
            );
            expects.push(status_call(&cluster, |b| {
                assert_eq!(b["status"]["phase"], "Degraded");
                let degraded = condition(b, "Degraded");
                assert_eq!(degraded["reason"], "TlsChangeUnsupported");
                let msg = degraded["message"].as_str().unwrap_or_default();
                assert!(msg.contains("cannot be switched"), "{msg}");
            }));
            let requeue = run(cluster, healthy_admin(), expects).await;
            assert_eq!(requeue, Requeue::await_change());
        }
    }
}
