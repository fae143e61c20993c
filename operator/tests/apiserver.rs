//! Real kube-apiserver tier (envtest style). Runs when `KUBEBUILDER_ASSETS`
//! points at a directory with `kube-apiserver`, `etcd` and `kubectl`
//! (`export KUBEBUILDER_ASSETS="$(scripts/ci/kube-apiserver.sh)"`); otherwise
//! it prints why it is skipped and passes (and fails instead when
//! `TITAN_REQUIRE_ALL_TIERS` is set).
//!
//! One API server is started per test (start-up takes seconds), and the
//! checks run in order against it: CRD install and schema, reconcile
//! through SSA, status patches, the opt-in NetworkPolicy (applied, then
//! deleted when switched off), `kubectl scale`, the RBAC of
//! `manifests/rbac.yaml` under impersonation of the operator's
//! ServiceAccount, the operator process, then restarts of the API server.
//!
//! The tier runs twice: on etcd (the reference) and on a 3-node Titan
//! cluster (`--etcd-servers` names every member's etcd-compatible gRPC
//! port; `titan-server` from `TITAN_SERVER_BIN` or this test's target dir).
//! On Titan it also SIGKILLs the Titan leader mid-test ([`storage_faults`]).

#[path = "apiserver/env.rs"]
mod env;
#[path = "apiserver/storage_faults.rs"]
mod storage_faults;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{ConfigMap, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::events::{Recorder, Reporter};
use kube::{Client, CustomResourceExt};
use serde_json::json;
use titan_operator::admin::{
    AdminApi, AdminError, AdminResult, AdminTarget, NewMember, SnapshotTaken,
};
use titan_operator::backup::resource::TitanBackup;
use titan_operator::builders::OperatorIdentity;
use titan_operator::crd::TitanCluster;
use titan_operator::leader::{LeaseConfig, LeaseLock};
use titan_operator::metrics::Metrics;
use titan_operator::planner::NodeStatus;
use titan_operator::reconcile::{self, Context, Settings};
use titan_testkit::free_port;

use env::{Backend, TOKEN, TestEnv};

const OPERATOR_SA: &str = "system:serviceaccount:titan-system:titan-operator";

/// No pod ever runs without a kubelet, so the admin API is never reachable.
struct Unreachable;

impl AdminApi for Unreachable {
    fn status(&self, endpoint: AdminTarget) -> BoxFuture<'static, AdminResult<NodeStatus>> {
        Box::pin(async move {
            Err(AdminError::Rpc {
                endpoint: endpoint.uri,
                status: Box::new(tonic::Status::unavailable("no kubelet in this tier")),
            })
        })
    }
    fn add_learner(&self, _: AdminTarget, _: NewMember) -> BoxFuture<'static, AdminResult<()>> {
        Box::pin(async { Ok(()) })
    }
    fn promote(&self, _: AdminTarget, _: u64) -> BoxFuture<'static, AdminResult<()>> {
        Box::pin(async { Ok(()) })
    }
    fn remove(&self, _: AdminTarget, _: u64) -> BoxFuture<'static, AdminResult<()>> {
        Box::pin(async { Ok(()) })
    }
    fn transfer_leadership(&self, _: AdminTarget, _: u64) -> BoxFuture<'static, AdminResult<()>> {
        Box::pin(async { Ok(()) })
    }
    fn take_snapshot(&self, _: AdminTarget) -> BoxFuture<'static, AdminResult<SnapshotTaken>> {
        Box::pin(async { Ok(SnapshotTaken { index: 0 }) })
    }
}

fn context(client: Client) -> Arc<Context> {
    let reporter = Reporter {
        controller: "titan-operator".to_string(),
        instance: Some("test".to_string()),
    };
    Arc::new(Context {
        client: client.clone(),
        recorder: Recorder::new(client, reporter),
        metrics: Arc::new(Metrics::default()),
        admin: Arc::new(Unreachable),
        settings: Settings {
            operator: Some(OperatorIdentity {
                namespace: "titan-system".to_string(),
                pod_labels: [("app.kubernetes.io/name", "titan-operator")]
                    .into_iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            }),
            ..Settings::default()
        },
        backup_stores: titan_operator::reconcile::restore::s3_stores(),
        identities: Default::default(),
        clock: Arc::new(Timestamp::now),
    })
}

/// `KUBEBUILDER_ASSETS`, or None (after saying why) when the tier is skipped.
/// With `TITAN_REQUIRE_ALL_TIERS` set, a missing directory is a failure.
fn assets_or_skip(test: &str) -> Option<PathBuf> {
    let Some(assets) = std::env::var_os("KUBEBUILDER_ASSETS").map(PathBuf::from) else {
        assert!(
            std::env::var_os("TITAN_REQUIRE_ALL_TIERS").is_none(),
            "TITAN_REQUIRE_ALL_TIERS is set but KUBEBUILDER_ASSETS is not"
        );
        eprintln!(
            "SKIPPED {test}: KUBEBUILDER_ASSETS is not set \
             (export KUBEBUILDER_ASSETS=\"$(scripts/ci/kube-apiserver.sh)\")"
        );
        return None;
    };
    Some(assets)
}

/// The operator's checks, in order, against one API server.
async fn operator_scenarios(env: &TestEnv) {
    let admin = env.client(None).await;
    crd_installs_with_schema_defaults_and_validation(env, &admin).await;
    reconcile_applies_objects_with_ssa_and_patches_status(&admin, "ssa", 3).await;
    network_policy_is_applied_when_enabled_and_deleted_when_disabled(env, &admin).await;
    kubectl_scale_updates_spec_replicas(env).await;
    operator_service_account_rbac_suffices(env).await;
    operator_process_leads_reconciles_and_shuts_down_gracefully(env, &admin).await;
    operator_run_without_lease_namespace_uses_the_kubeconfig_namespace(env, &admin).await;
    operator_run_with_missing_lease_namespace_exits_naming_the_flag(env);
    operator_run_without_lease_rbac_exits_naming_the_fix(env);
}

/// The reference run: the API server on etcd.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_apiserver_tier() {
    let Some(assets) = assets_or_skip("real_apiserver_tier") else {
        return;
    };
    let mut env = TestEnv::start(&assets, Backend::Etcd);
    operator_scenarios(&env).await;
    env.wait_for_apiserver_compaction().await;
    println!("ok: the API server's compactor compacted its storage");
    storage_faults::objects_crds_and_watch_survive_apiserver_restarts(&mut env).await;
}

/// The same tier with `--etcd-servers` naming every member of a 3-node
/// Titan cluster: the operator's checks, then API server restarts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kube_apiserver_on_titan_serves_the_operator_tier_across_apiserver_restarts() {
    let test = "kube_apiserver_on_titan_serves_the_operator_tier_across_apiserver_restarts";
    let Some(assets) = assets_or_skip(test) else {
        return;
    };
    let mut env = TestEnv::start(&assets, Backend::Titan);
    operator_scenarios(&env).await;
    env.wait_for_apiserver_compaction().await;
    println!("ok: the API server's compactor compacted its storage");
    storage_faults::objects_crds_and_watch_survive_apiserver_restarts(&mut env).await;
}

/// The API server on Titan keeps serving CRUD, watch and CRDs when the Titan
/// leader is SIGKILLed mid-test.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kube_apiserver_on_titan_survives_titan_leader_kill() {
    let Some(assets) = assets_or_skip("kube_apiserver_on_titan_survives_titan_leader_kill") else {
        return;
    };
    let mut env = TestEnv::start(&assets, Backend::Titan);
    let admin = env.client(None).await;
    crd_installs_with_schema_defaults_and_validation(&env, &admin).await;
    storage_faults::apiserver_serves_crud_and_watch_across_titan_leader_kill(&mut env).await;
}

async fn crd_installs_with_schema_defaults_and_validation(env: &TestEnv, client: &Client) {
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    crds.create(&PostParams::default(), &TitanCluster::crd())
        .await
        .unwrap_or_else(|e| panic!("CRD install: {e}"));
    crds.create(&PostParams::default(), &TitanBackup::crd())
        .await
        .unwrap_or_else(|e| panic!("TitanBackup CRD install: {e}"));
    let started = Instant::now();
    while env
        .kubectl(&["get", "titanclusters,titanbackups", "-A"])
        .is_err()
    {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "CRD never became established"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    env.kubectl(&["create", "namespace", "ssa"])
        .unwrap_or_else(|e| panic!("{e}"));
    let api: Api<TitanCluster> = Api::namespaced(client.clone(), "ssa");
    let created: TitanCluster = serde_json::from_value(json!({
        "apiVersion": "titan.dev/v1alpha1", "kind": "TitanCluster",
        "metadata": {"name": "demo"}, "spec": {}
    }))
    .unwrap_or_else(|e| panic!("{e}"));
    let created = api
        .create(&PostParams::default(), &created)
        .await
        .unwrap_or_else(|e| panic!("create: {e}"));
    assert_eq!(created.spec.replicas, 3, "schema default for replicas");
    assert_eq!(
        created.spec.storage.size, "1Gi",
        "schema default for storage.size"
    );
    let too_many = json!({"apiVersion": "titan.dev/v1alpha1", "kind": "TitanCluster",
        "metadata": {"name": "big"}, "spec": {"replicas": 10}});
    let too_many: TitanCluster = serde_json::from_value(too_many).unwrap_or_else(|e| panic!("{e}"));
    let rejected = api.create(&PostParams::default(), &too_many).await;
    assert!(
        matches!(rejected, Err(kube::Error::Api(ref s)) if s.code == 422),
        "replicas 10 must be rejected: {rejected:?}"
    );
    println!("ok: CRD installs; defaults and replicas bound enforced by the API server");
}

/// StatefulSet, Services and ConfigMap exist, applied by the `titan-operator` field manager.
async fn assert_children_applied(client: &Client, ns: &str, replicas: i32) {
    let sts: Api<StatefulSet> = Api::namespaced(client.clone(), ns);
    let sts = sts
        .get("demo")
        .await
        .unwrap_or_else(|e| panic!("statefulset: {e}"));
    assert_eq!(sts.spec.replicas, Some(replicas));
    let managers: Vec<String> = sts
        .metadata
        .managed_fields
        .unwrap_or_default()
        .into_iter()
        .filter(|m| m.operation.as_deref() == Some("Apply"))
        .filter_map(|m| m.manager)
        .collect();
    assert_eq!(
        managers,
        vec!["titan-operator".to_string()],
        "applied with SSA by titan-operator"
    );
    let services: Api<Service> = Api::namespaced(client.clone(), ns);
    let peers = services
        .get("demo-peers")
        .await
        .unwrap_or_else(|e| panic!("peers svc: {e}"));
    assert_eq!(
        peers.spec.and_then(|s| s.publish_not_ready_addresses),
        Some(true)
    );
    services
        .get("demo")
        .await
        .unwrap_or_else(|e| panic!("client svc: {e}"));
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
    let cm = cms
        .get("demo-config")
        .await
        .unwrap_or_else(|e| panic!("configmap: {e}"));
    assert_eq!(
        cm.data
            .unwrap_or_default()
            .get("bootstrapped")
            .map(String::as_str),
        Some("false")
    );
}

async fn reconcile_applies_objects_with_ssa_and_patches_status(
    client: &Client,
    ns: &str,
    replicas: i32,
) {
    let api: Api<TitanCluster> = Api::namespaced(client.clone(), ns);
    reconcile_twice(client, ns).await;
    assert_children_applied(client, ns, replicas).await;
    let cluster = api.get("demo").await.unwrap_or_else(|e| panic!("get: {e}"));
    let status = cluster.status.unwrap_or_default();
    assert_eq!(
        status.phase,
        Some(titan_operator::crd::Phase::Bootstrapping)
    );
    let pdb = status
        .conditions
        .iter()
        .find(|c| c.type_ == "DisruptionBudget");
    // 1.20 serves only policy/v1beta1: the operator applies the PDB there.
    assert_eq!(pdb.map(|c| c.reason.as_str()), Some("Applied"));
    assert!(
        cluster
            .metadata
            .finalizers
            .unwrap_or_default()
            .contains(&"titan.dev/cleanup".to_string())
    );
    // A second writer's status patch is accepted alongside ours (status subresource works).
    let patch = json!({"apiVersion": "titan.dev/v1alpha1", "kind": "TitanCluster", "status": {"readyReplicas": 0}});
    api.patch_status(
        "demo",
        &PatchParams::apply("titan-operator").force(),
        &Patch::Apply(&patch),
    )
    .await
    .unwrap_or_else(|e| panic!("status patch: {e}"));
    println!(
        "ok: reconcile applied Services, ConfigMap, StatefulSet via SSA; status written (pdb condition: {pdb:?})"
    );
}

/// Reconciles `ns/demo` twice (the first pass adds the finalizer).
async fn reconcile_twice(client: &Client, ns: &str) {
    let api: Api<TitanCluster> = Api::namespaced(client.clone(), ns);
    let ctx = context(client.clone());
    for _ in 0..2 {
        let cluster = api.get("demo").await.unwrap_or_else(|e| panic!("get: {e}"));
        reconcile::reconcile(Arc::new(cluster), ctx.clone())
            .await
            .unwrap_or_else(|e| panic!("reconcile: {e}"));
    }
}

/// `spec.networkPolicy.enabled`: the API server accepts the built policy
/// (server-side apply, owned by the cluster); switched off, it is deleted.
async fn network_policy_is_applied_when_enabled_and_deleted_when_disabled(
    env: &TestEnv,
    client: &Client,
) {
    env.kubectl(&["create", "namespace", "netpol"])
        .unwrap_or_else(|e| panic!("{e}"));
    let api: Api<TitanCluster> = Api::namespaced(client.clone(), "netpol");
    let cluster: TitanCluster = serde_json::from_value(json!({
        "apiVersion": "titan.dev/v1alpha1", "kind": "TitanCluster", "metadata": {"name": "demo"},
        "spec": {"replicas": 1, "networkPolicy": {"enabled": true,
            "clientFrom": [{"namespaceSelector": {"matchLabels": {"team": "apps"}}}]}}
    }))
    .unwrap_or_else(|e| panic!("{e}"));
    api.create(&PostParams::default(), &cluster)
        .await
        .unwrap_or_else(|e| panic!("create: {e}"));
    reconcile_twice(client, "netpol").await;
    let policies: Api<NetworkPolicy> = Api::namespaced(client.clone(), "netpol");
    let policy = policies
        .get("demo")
        .await
        .unwrap_or_else(|e| panic!("network policy: {e}"));
    let owners = policy.metadata.owner_references.clone().unwrap_or_default();
    assert_eq!(
        owners.first().map(|o| o.kind.as_str()),
        Some("TitanCluster")
    );
    let rules = policy.spec.and_then(|s| s.ingress).unwrap_or_default();
    assert_eq!(rules.len(), 3, "members, operator, clients: {rules:?}");
    let off = json!({"spec": {"networkPolicy": {"enabled": false}}});
    api.patch("demo", &PatchParams::default(), &Patch::Merge(&off))
        .await
        .unwrap_or_else(|e| panic!("disable: {e}"));
    reconcile_twice(client, "netpol").await;
    let gone = policies
        .get_opt("demo")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        gone.is_none_or(|p| p.metadata.deletion_timestamp.is_some()),
        "disabled: the NetworkPolicy is deleted"
    );
    println!("ok: NetworkPolicy applied when enabled (3 ingress rules), deleted when disabled");
}

async fn kubectl_scale_updates_spec_replicas(env: &TestEnv) {
    env.kubectl(&["-n", "ssa", "scale", "tc/demo", "--replicas=5"])
        .unwrap_or_else(|e| panic!("kubectl scale: {e}"));
    let replicas = env
        .kubectl(&[
            "-n",
            "ssa",
            "get",
            "tc/demo",
            "-o",
            "jsonpath={.spec.replicas}",
        ])
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(replicas.trim(), "5");
    println!("ok: kubectl scale tc/demo --replicas=5 updated spec.replicas");
}

/// What the operator's ServiceAccount may do (`kubectl auth can-i` arguments).
const RBAC_ALLOWED: [&str; 11] = [
    "watch titanclusters.titan.dev --all-namespaces",
    "watch statefulsets.apps --all-namespaces",
    "watch pods --all-namespaces",
    "delete pods -n rbac",
    "delete persistentvolumeclaims -n rbac",
    "create events.events.k8s.io -n rbac",
    "watch networkpolicies.networking.k8s.io --all-namespaces",
    "delete networkpolicies.networking.k8s.io -n rbac",
    "watch titanbackups.titan.dev --all-namespaces",
    "patch titanbackups.titan.dev --subresource=status -n rbac",
    "get secrets -n rbac",
];

/// What it must not do.
const RBAC_DENIED: [&str; 4] = [
    "list secrets -n rbac",
    "watch secrets --all-namespaces",
    "delete statefulsets.apps -n rbac",
    "update leases.coordination.k8s.io -n rbac",
];

async fn operator_service_account_rbac_suffices(env: &TestEnv) {
    let rbac = concat!(env!("CARGO_MANIFEST_DIR"), "/../manifests/rbac.yaml");
    env.kubectl(&["create", "namespace", "titan-system"])
        .unwrap_or_else(|e| panic!("{e}"));
    env.kubectl(&["create", "namespace", "rbac"])
        .unwrap_or_else(|e| panic!("{e}"));
    env.kubectl(&["apply", "-f", rbac])
        .unwrap_or_else(|e| panic!("apply rbac: {e}"));
    let cluster = json!({"apiVersion": "titan.dev/v1alpha1", "kind": "TitanCluster",
        "metadata": {"name": "demo", "namespace": "rbac"}, "spec": {"replicas": 1}});
    let admin = env.client(None).await;
    let api: Api<TitanCluster> = Api::namespaced(admin, "rbac");
    let cluster: TitanCluster = serde_json::from_value(cluster).unwrap_or_else(|e| panic!("{e}"));
    api.create(&PostParams::default(), &cluster)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let operator = env.client(Some(OPERATOR_SA)).await;
    let secrets: Api<k8s_openapi::api::core::v1::Secret> =
        Api::namespaced(operator.clone(), "rbac");
    let forbidden = secrets.list(&Default::default()).await;
    assert!(
        matches!(forbidden, Err(kube::Error::Api(ref s)) if s.code == 403),
        "impersonation must be in effect: {forbidden:?}"
    );
    reconcile_applies_objects_with_ssa_and_patches_status(&operator, "rbac", 1).await;
    let lock = LeaseLock::new(
        operator.clone(),
        LeaseConfig {
            name: "titan-operator-leader".to_string(),
            namespace: "titan-system".to_string(),
            identity: "replica-a".to_string(),
            lease_duration_secs: 15,
            renew_interval: Duration::from_secs(5),
        },
    );
    assert_eq!(
        lock.try_acquire_or_renew(Timestamp::now()).await.ok(),
        Some(true),
        "lease acquire"
    );
    assert_eq!(
        lock.try_acquire_or_renew(Timestamp::now()).await.ok(),
        Some(true),
        "lease renew"
    );
    for (checks, want) in [(&RBAC_ALLOWED[..], "yes"), (&RBAC_DENIED[..], "no")] {
        for check in checks {
            let mut args = vec!["auth", "can-i", "--as", OPERATOR_SA];
            args.extend(check.split(' '));
            assert_eq!(env.can_i(&args), want, "can-i {check}");
        }
    }
    println!(
        "ok: operator ServiceAccount reconciles, holds the lease, and has no more than it needs"
    );
}

fn http_get(port: u16, path: &str) -> Option<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    Some(out)
}

async fn wait_until<T, F: std::future::Future<Output = Option<T>>>(
    what: &str,
    mut f: impl FnMut() -> F,
) -> T {
    let started = Instant::now();
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// `titan-operator run` as a process: takes the Lease, reconciles a new
/// TitanCluster, serves /healthz and /metrics, and on SIGTERM exits 0 and
/// releases the Lease.
async fn operator_process_leads_reconciles_and_shuts_down_gracefully(
    env: &TestEnv,
    client: &Client,
) {
    env.kubectl(&["create", "namespace", "proc"])
        .unwrap_or_else(|e| panic!("{e}"));
    let http_port = free_port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_titan-operator"))
        .args([
            "run",
            "--lease-namespace",
            "titan-system",
            "--identity",
            "proc-test",
        ])
        .arg(format!("--http-addr=127.0.0.1:{http_port}"))
        .env("KUBECONFIG", &env.kubeconfig)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn operator: {e}"));
    let cluster: TitanCluster = serde_json::from_value(json!({"apiVersion": "titan.dev/v1alpha1",
        "kind": "TitanCluster", "metadata": {"name": "live"}, "spec": {"replicas": 3}}))
    .unwrap_or_else(|e| panic!("{e}"));
    let api: Api<TitanCluster> = Api::namespaced(client.clone(), "proc");
    api.create(&PostParams::default(), &cluster)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let sts: Api<StatefulSet> = Api::namespaced(client.clone(), "proc");
    wait_until("the running operator to create the StatefulSet", || async {
        sts.get_opt("live").await.ok().flatten()
    })
    .await;
    wait_until("status written by the running operator", || async {
        api.get("live")
            .await
            .ok()
            .and_then(|c| c.status)
            .and_then(|s| s.phase)
    })
    .await;
    let health = http_get(http_port, "/healthz").unwrap_or_default();
    assert!(health.starts_with("HTTP/1.1 200"), "{health}");
    let metrics = http_get(http_port, "/metrics").unwrap_or_default();
    assert!(
        metrics.contains("titan_operator_reconciliations_total"),
        "{metrics}"
    );
    assert_eq!(lease_holder(env), "proc-test");
    let code = terminate(&mut child);
    assert_eq!(code, Some(0), "graceful shutdown exits 0");
    assert_eq!(lease_holder(env), "", "lease released on shutdown");
    println!(
        "ok: titan-operator run took the lease, reconciled, served /healthz + /metrics, exited 0 on SIGTERM"
    );
}

/// SIGTERM, then the exit code (killed and failed after 30 s).
fn terminate(child: &mut std::process::Child) -> Option<i32> {
    let pid = child.id().to_string();
    let _ = Command::new("kill").args(["-TERM", &pid]).status();
    let started = Instant::now();
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return status.code();
        }
        if started.elapsed() > Duration::from_secs(30) {
            let _ = child.kill();
            panic!("operator did not exit after SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn lease_holder(env: &TestEnv) -> String {
    env.kubectl(&[
        "-n",
        "titan-system",
        "get",
        "lease",
        "titan-operator-leader",
        "-o",
        "jsonpath={.spec.holderIdentity}",
    ])
    .unwrap_or_else(|e| panic!("{e}"))
    .trim()
    .to_string()
}

/// A copy of the admin kubeconfig whose context names `namespace` and, when
/// given, impersonates `user` (kubeconfig `as:`), written under `dir`.
fn kubeconfig_variant(env: &TestEnv, dir: &Path, namespace: &str, user: Option<&str>) -> PathBuf {
    let base = std::fs::read_to_string(&env.kubeconfig).unwrap_or_else(|e| panic!("{e}"));
    let mut text = base.replace(
        "    user: admin\n",
        &format!("    user: admin\n    namespace: {namespace}\n"),
    );
    if let Some(user) = user {
        text = text.replace(
            &format!("    token: {TOKEN}\n"),
            &format!("    token: {TOKEN}\n    as: {user}\n"),
        );
    }
    assert_ne!(
        text, base,
        "kubeconfig layout changed; update kubeconfig_variant"
    );
    let path = dir.join(format!("kubeconfig-{namespace}"));
    std::fs::write(&path, text).unwrap_or_else(|e| panic!("{e}"));
    path
}

/// `titan-operator run` with `args` and only `kubeconfig` to tell it where it
/// runs: no `--lease-namespace`, no POD_NAMESPACE. Output goes to `log`.
fn spawn_operator(kubeconfig: &Path, args: &[String], log: &Path) -> Child {
    let out = std::fs::File::create(log).unwrap_or_else(|e| panic!("log: {e}"));
    let err = out.try_clone().unwrap_or_else(|e| panic!("log: {e}"));
    Command::new(env!("CARGO_BIN_EXE_titan-operator"))
        .arg("run")
        .args(args)
        .env("KUBECONFIG", kubeconfig)
        .env_remove("POD_NAMESPACE")
        .env_remove("TITAN_OPERATOR_LEASE_NAMESPACE")
        .env_remove("TITAN_LOG_LEVEL")
        .env_remove("TITAN_LOG_FORMAT")
        .env_remove("RUST_LOG")
        // The tests read the process's last line (anyhow's error text); a
        // backtrace from the caller's environment would follow it.
        .env("RUST_BACKTRACE", "0")
        .env("RUST_LIB_BACKTRACE", "0")
        .stdout(Stdio::from(out))
        .stderr(Stdio::from(err))
        .spawn()
        .unwrap_or_else(|e| panic!("spawn operator: {e}"))
}

/// Waits up to `limit` for the process to exit; its exit code.
fn exit_within(child: &mut Child, limit: Duration) -> Option<i32> {
    let started = Instant::now();
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return status.code();
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            panic!("operator still running after {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Run locally the way a developer does (a kubeconfig whose context names a
/// namespace, no `--lease-namespace`): the Lease lands in that namespace and
/// a new TitanCluster is reconciled.
async fn operator_run_without_lease_namespace_uses_the_kubeconfig_namespace(
    env: &TestEnv,
    client: &Client,
) {
    for ns in ["dev-lease", "devns"] {
        env.kubectl(&["create", "namespace", ns])
            .unwrap_or_else(|e| panic!("{e}"));
    }
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let kubeconfig = kubeconfig_variant(env, dir.path(), "dev-lease", None);
    let log = dir.path().join("operator.log");
    let args = vec![
        "--identity=dev-test".to_string(),
        format!("--http-addr=127.0.0.1:{}", free_port()),
    ];
    let mut child = spawn_operator(&kubeconfig, &args, &log);
    let cluster: TitanCluster = serde_json::from_value(json!({"apiVersion": "titan.dev/v1alpha1",
        "kind": "TitanCluster", "metadata": {"name": "local"}, "spec": {"replicas": 1}}))
    .unwrap_or_else(|e| panic!("{e}"));
    let api: Api<TitanCluster> = Api::namespaced(client.clone(), "devns");
    api.create(&PostParams::default(), &cluster)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let sts: Api<StatefulSet> = Api::namespaced(client.clone(), "devns");
    wait_until(
        "the locally run operator to create the StatefulSet",
        || async { sts.get_opt("local").await.ok().flatten() },
    )
    .await;
    let holder = env
        .kubectl(&[
            "-n",
            "dev-lease",
            "get",
            "lease",
            "titan-operator-leader",
            "-o",
            "jsonpath={.spec.holderIdentity}",
        ])
        .unwrap_or_else(|e| panic!("no Lease in the kubeconfig's namespace: {e}"));
    assert_eq!(holder.trim(), "dev-test");
    assert_eq!(terminate(&mut child), Some(0), "graceful shutdown exits 0");
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        text.contains("leader-election Lease namespace") && text.contains("dev-lease"),
        "the log says which Lease namespace it chose: {text}"
    );
    assert!(
        !text.contains('\u{1b}'),
        "no ANSI colours in a file: {text}"
    );
    for line in text
        .lines()
        .filter(|l| l.contains("Lease namespace") || l.contains("acquired"))
    {
        println!("  {line}");
    }
    println!(
        "ok: titan-operator run without --lease-namespace used the kubeconfig namespace and reconciled"
    );
}

/// The kubeconfig names a namespace that does not exist: one clear error
/// naming the fix, then a non-zero exit within the bound.
fn operator_run_with_missing_lease_namespace_exits_naming_the_flag(env: &TestEnv) {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let kubeconfig = kubeconfig_variant(env, dir.path(), "no-such-ns", None);
    let log = dir.path().join("operator.log");
    let args = vec![
        format!("--http-addr=127.0.0.1:{}", free_port()),
        "--lease-renew-ms=300".to_string(),
        "--lease-error-timeout-secs=3".to_string(),
    ];
    let mut child = spawn_operator(&kubeconfig, &args, &log);
    let code = exit_within(&mut child, Duration::from_secs(30));
    assert!(code.is_some_and(|c| c != 0), "exit code {code:?}");
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    let reported: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("ERROR") && l.contains("\"no-such-ns\" does not exist"))
        .collect();
    assert_eq!(reported.len(), 1, "reported once, not per retry: {text}");
    assert!(reported[0].contains("--lease-namespace"), "{text}");
    let last = text.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("Error: could not take the leader-election Lease no-such-ns/")
            && last.contains("--lease-namespace"),
        "{text}"
    );
    println!("ok: a missing Lease namespace is reported once with the flag, then exit {code:?}");
}

/// The operator's ServiceAccount has no Lease permission in the kubeconfig's
/// namespace: the error names the RBAC file and the flag; JSON logs parse.
fn operator_run_without_lease_rbac_exits_naming_the_fix(env: &TestEnv) {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let kubeconfig = kubeconfig_variant(env, dir.path(), "dev-lease", Some(OPERATOR_SA));
    let log = dir.path().join("operator.log");
    let args = vec![
        format!("--http-addr=127.0.0.1:{}", free_port()),
        "--lease-renew-ms=300".to_string(),
        "--lease-error-timeout-secs=2".to_string(),
        "--log-format=json".to_string(),
    ];
    let mut child = spawn_operator(&kubeconfig, &args, &log);
    let code = exit_within(&mut child, Duration::from_secs(30));
    assert!(code.is_some_and(|c| c != 0), "exit code {code:?}");
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    let (errors, logs): (Vec<&str>, Vec<&str>) =
        text.lines().partition(|l| l.starts_with("Error: "));
    for line in &logs {
        let parsed: Result<serde_json::Value, _> = serde_json::from_str(line);
        assert!(
            parsed.is_ok(),
            "--log-format=json writes JSON lines: {line}"
        );
    }
    let reported = logs
        .iter()
        .filter(|l| l.contains("\"ERROR\"") && l.contains("not allowed to use leases"))
        .count();
    assert_eq!(reported, 1, "reported once: {text}");
    assert!(
        errors
            .iter()
            .any(|e| e.contains("manifests/rbac.yaml") && e.contains("--lease-namespace")),
        "{text}"
    );
    println!("ok: missing Lease RBAC is reported once with the fix, then exit {code:?}");
}
