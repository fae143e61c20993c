//! Test fixtures in the controller-rs style: a `tower_test` mock API server
//! that must see exactly the listed calls, in order, each within a timeout,
//! plus a scripted fake of the Admin API.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use http::{Method, Request, Response, StatusCode};
use k8s_openapi::jiff::Timestamp;
use kube::Client;
use kube::client::Body;
use kube::runtime::events::{Recorder, Reporter};
use serde_json::{Value, json};

use crate::admin::{AdminApi, AdminError, AdminResult, AdminTarget, NewMember, SnapshotTaken};
use crate::builders::OperatorIdentity;
use crate::crd::TitanCluster;
use crate::metrics::Metrics;
use crate::planner::{MemberView, NodeRole, NodeStatus};
use crate::reconcile::{Context, Settings};

/// Longest wait for one expected API call.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(2);

/// How the mock API server answers one call.
#[derive(Clone)]
pub enum Reply {
    /// 200 with the request body echoed back (server-side apply, create).
    Echo,
    /// 200 with this JSON.
    Json(Value),
    /// 404 NotFound Status.
    NotFound,
    /// 403 Forbidden Status (RBAC refused the call).
    Forbidden,
    /// 409 AlreadyExists Status (a create of a name that exists).
    Conflict,
}

/// An assertion on a request's JSON body.
pub type BodyCheck = std::sync::Arc<dyn Fn(&Value) + Send + Sync>;

/// One expected call: method, exact path, optional body check, reply.
#[derive(Clone)]
pub struct Expect {
    /// HTTP method.
    pub method: Method,
    /// URI path (no query).
    pub path: String,
    /// Assertion on the JSON body.
    pub check: Option<BodyCheck>,
    /// Answer.
    pub reply: Reply,
}

impl Expect {
    /// Expect `method path`, answer `reply`.
    pub fn new(method: Method, path: impl Into<String>, reply: Reply) -> Self {
        Self {
            method,
            path: path.into(),
            check: None,
            reply,
        }
    }

    /// Adds a body check.
    pub fn check(mut self, check: impl Fn(&Value) + Send + Sync + 'static) -> Self {
        self.check = Some(std::sync::Arc::new(check));
        self
    }
}

/// The test side of the mock API server.
pub type Handle = tower_test::mock::Handle<Request<Body>, Response<Body>>;

/// Runs one reconcile while the mock API server serves `expects`; both must
/// finish in time (10 s and 5 s more). Panics on an error or a timeout, and
/// re-raises a mismatch the server panicked on.
pub async fn reconcile_against<T, E: std::fmt::Display>(
    handle: Handle,
    expects: Vec<Expect>,
    reconcile: impl std::future::Future<Output = Result<T, E>>,
) -> T {
    let server = tokio::spawn(serve(handle, expects));
    let out = match tokio::time::timeout(Duration::from_secs(10), reconcile).await {
        Ok(Ok(out)) => out,
        Ok(Err(e)) => panic!("reconcile failed: {e}"),
        Err(_) => panic!("reconcile timed out"),
    };
    match tokio::time::timeout(Duration::from_secs(5), server).await {
        Ok(Ok(())) => out,
        Ok(Err(join)) => std::panic::resume_unwind(join.into_panic()),
        Err(_) => panic!("mock API server did not finish"),
    }
}

/// Serves `expects` in order, then returns. Panics on any mismatch or timeout.
pub async fn serve(mut handle: Handle, expects: Vec<Expect>) {
    for (i, expect) in expects.into_iter().enumerate() {
        let next = tokio::time::timeout(CALL_TIMEOUT, handle.next_request()).await;
        let Ok(Some((request, send))) = next else {
            panic!("call {i} ({} {}) never came", expect.method, expect.path);
        };
        assert_eq!(
            request.method(),
            expect.method,
            "call {i}: {}",
            request.uri()
        );
        assert_eq!(request.uri().path(), expect.path, "call {i}");
        if expect.method == Method::PATCH {
            let query = request.uri().query().unwrap_or("");
            assert!(
                query.contains("fieldManager=titan-operator"),
                "call {i}: {query}"
            );
        }
        let bytes = request
            .into_body()
            .collect_bytes()
            .await
            .unwrap_or_else(|e| panic!("call {i}: reading body: {e}"));
        let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        if let Some(check) = expect.check {
            check(&body);
        }
        let response = match expect.reply {
            Reply::Echo => json_response(StatusCode::OK, &body),
            Reply::Json(value) => json_response(StatusCode::OK, &value),
            Reply::NotFound => json_response(
                StatusCode::NOT_FOUND,
                &json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404, "message": "not found"}),
            ),
            Reply::Forbidden => json_response(
                StatusCode::FORBIDDEN,
                &json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "Forbidden", "code": 403, "message": "forbidden"}),
            ),
            Reply::Conflict => json_response(
                StatusCode::CONFLICT,
                &json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "AlreadyExists", "code": 409, "message": "already exists"}),
            ),
        };
        send.send_response(response);
    }
}

fn json_response(status: StatusCode, value: &Value) -> Response<Body> {
    let bytes = serde_json::to_vec(value).unwrap_or_default();
    Response::builder()
        .status(status)
        .body(Body::from(bytes))
        .unwrap_or_else(|e| panic!("building response: {e}"))
}

/// One recorded admin call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AdminCall {
    /// `add_learner(endpoint, member)`.
    AddLearner(String, NewMember),
    /// `promote(endpoint, id)`.
    Promote(String, u64),
    /// `remove(endpoint, id)`.
    Remove(String, u64),
    /// `transfer_leadership(endpoint, id)`.
    Transfer(String, u64),
    /// `take_snapshot(endpoint)`.
    Snapshot(String),
}

/// Scripted Admin API: `Status` answers by endpoint (missing = unreachable);
/// mutating calls are recorded and succeed.
#[derive(Default)]
pub struct FakeAdmin {
    /// Status per endpoint.
    pub statuses: BTreeMap<String, NodeStatus>,
    /// Mutating calls, in order.
    pub calls: Mutex<Vec<AdminCall>>,
    /// Every target `status` was called on, with its TLS settings.
    pub status_targets: Mutex<Vec<AdminTarget>>,
}

impl FakeAdmin {
    fn record(&self, call: AdminCall) {
        if let Ok(mut calls) = self.calls.lock() {
            calls.push(call);
        }
    }

    /// Snapshot of the recorded calls.
    pub fn recorded(&self) -> Vec<AdminCall> {
        self.calls.lock().map(|c| c.clone()).unwrap_or_default()
    }
}

impl AdminApi for FakeAdmin {
    fn status(&self, endpoint: AdminTarget) -> BoxFuture<'static, AdminResult<NodeStatus>> {
        let found = self.statuses.get(&endpoint.uri).cloned();
        if let Ok(mut seen) = self.status_targets.lock() {
            seen.push(endpoint.clone());
        }
        Box::pin(async move {
            found.ok_or(AdminError::Rpc {
                endpoint: endpoint.uri,
                status: Box::new(tonic::Status::unavailable("scripted: unreachable")),
            })
        })
    }

    fn add_learner(
        &self,
        endpoint: AdminTarget,
        member: NewMember,
    ) -> BoxFuture<'static, AdminResult<()>> {
        self.record(AdminCall::AddLearner(endpoint.uri, member));
        Box::pin(async { Ok(()) })
    }

    fn promote(&self, endpoint: AdminTarget, id: u64) -> BoxFuture<'static, AdminResult<()>> {
        self.record(AdminCall::Promote(endpoint.uri, id));
        Box::pin(async { Ok(()) })
    }

    fn remove(&self, endpoint: AdminTarget, id: u64) -> BoxFuture<'static, AdminResult<()>> {
        self.record(AdminCall::Remove(endpoint.uri, id));
        Box::pin(async { Ok(()) })
    }

    fn transfer_leadership(
        &self,
        endpoint: AdminTarget,
        target_id: u64,
    ) -> BoxFuture<'static, AdminResult<()>> {
        self.record(AdminCall::Transfer(endpoint.uri, target_id));
        Box::pin(async { Ok(()) })
    }

    fn take_snapshot(
        &self,
        endpoint: AdminTarget,
    ) -> BoxFuture<'static, AdminResult<SnapshotTaken>> {
        self.record(AdminCall::Snapshot(endpoint.uri));
        Box::pin(async { Ok(SnapshotTaken { index: 42 }) })
    }
}

/// Fixed "now" of every scenario.
pub fn now() -> Timestamp {
    Timestamp::from_second(1_800_000_000).unwrap_or(Timestamp::UNIX_EPOCH)
}

/// A context over a mock API server and a fake admin, knowing no operator
/// identity (see [`context_with_operator`]).
pub fn context(admin: Arc<FakeAdmin>) -> (Arc<Context>, Handle) {
    context_with_operator(admin, None)
}

/// The operator identity of the scenarios: pods labelled
/// `app.kubernetes.io/name=titan-operator` in `titan-system`.
pub fn operator_identity() -> OperatorIdentity {
    OperatorIdentity {
        namespace: "titan-system".to_string(),
        pod_labels: BTreeMap::from([(
            "app.kubernetes.io/name".to_string(),
            "titan-operator".to_string(),
        )]),
    }
}

/// A context over a mock API server and a fake admin, with the operator's
/// own identity set to `operator`.
pub fn context_with_operator(
    admin: Arc<FakeAdmin>,
    operator: Option<OperatorIdentity>,
) -> (Arc<Context>, Handle) {
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = Client::new(service, "default");
    let reporter = Reporter {
        controller: "titan-operator".to_string(),
        instance: None,
    };
    let ctx = Context {
        client: client.clone(),
        recorder: Recorder::new(client, reporter),
        metrics: Arc::new(Metrics::default()),
        admin,
        // No real pause between unlabelling and a transfer: the mock server
        // expects each call within CALL_TIMEOUT.
        settings: Settings {
            operator,
            leader_label_drain: Duration::ZERO,
            ..Settings::default()
        },
        clock: Arc::new(now),
        backup_stores: crate::reconcile::restore::s3_stores(),
        identities: Default::default(),
    };
    (Arc::new(ctx), handle)
}

/// The pod spec the StatefulSet of a 3-member, not yet bootstrapped cluster
/// with `spec` carries.
pub fn pod_spec(spec: Value) -> k8s_openapi::api::core::v1::PodSpec {
    let cluster = cluster(spec);
    let names = crate::builders::Names::of(&cluster);
    let input = crate::builders::BuildInput {
        initial_replicas: 3,
        cluster_id: "id".to_string(),
        bootstrapped: false,
        statefulset_replicas: 3,
        voters: 3,
        keep_no_resources: false,
    };
    crate::builders::statefulset(&cluster, &names, &input)
        .spec
        .template
        .spec
        .unwrap_or_else(|| panic!("statefulset without a pod spec"))
}

/// A TitanCluster `prod/demo` that already carries the finalizer.
pub fn cluster(spec: Value) -> TitanCluster {
    serde_json::from_value(json!({
        "apiVersion": "titan.dev/v1alpha1",
        "kind": "TitanCluster",
        "metadata": {
            "name": "demo", "namespace": "prod", "uid": "11111111-2222-4333-8444-555555555555",
            "generation": 2, "finalizers": ["titan.dev/cleanup"]
        },
        "spec": spec,
    }))
    .unwrap_or_else(|e| panic!("fixture cluster: {e}"))
}

/// Admin endpoint of the fixture pod of `ordinal`.
pub fn endpoint(ordinal: u32) -> String {
    format!("http://10.0.0.{ordinal}:5001")
}

/// Member id of the fixture pod of `ordinal`.
pub fn member_id(ordinal: u32) -> u64 {
    100 + u64::from(ordinal)
}

/// Admin statuses of a healthy cluster of `voters` with `leader`.
pub fn healthy_statuses(voters: u32, leader: u32) -> BTreeMap<String, NodeStatus> {
    let members: Vec<MemberView> = (0..voters)
        .map(|o| MemberView {
            id: member_id(o),
            name: format!("demo-{o}"),
            voter: true,
            lag_entries: 0,
        })
        .collect();
    (0..voters)
        .map(|o| {
            let role = if o == leader {
                NodeRole::Leader
            } else {
                NodeRole::Follower
            };
            let status = NodeStatus {
                id: member_id(o),
                role,
                term: 3,
                members: members.clone(),
            };
            (endpoint(o), status)
        })
        .collect()
}

/// The ConfigMap as the API server would return it.
pub fn configmap_json(bootstrapped: bool, initial: u32) -> Value {
    json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "demo-config", "namespace": "prod"},
        "data": {
            "bootstrapped": bootstrapped.to_string(),
            "initial-replicas": initial.to_string(),
            "cluster-id": "11111111-2222-4333-8444-555555555555"
        }
    })
}

/// The StatefulSet with `replicas` and update revision `rev-1`.
pub fn statefulset_json(replicas: u32) -> Value {
    json!({
        "apiVersion": "apps/v1", "kind": "StatefulSet",
        "metadata": {"name": "demo", "namespace": "prod"},
        "spec": {
            "replicas": replicas, "serviceName": "demo-peers",
            "selector": {"matchLabels": {"app.kubernetes.io/name": "titan"}},
            "template": {}
        },
        "status": {"replicas": replicas, "updateRevision": "rev-1"}
    })
}

/// A list of Ready pods `demo-0..n` on revision `rev-1`, pod IP `10.0.0.i`.
pub fn pods_json(ordinals: &[u32]) -> Value {
    let items: Vec<Value> = ordinals
        .iter()
        .map(|o| {
            json!({
                "metadata": {
                    "name": format!("demo-{o}"), "namespace": "prod",
                    "labels": {"controller-revision-hash": "rev-1", "app.kubernetes.io/instance": "demo"}
                },
                "status": {
                    "podIP": format!("10.0.0.{o}"),
                    "conditions": [{"type": "Ready", "status": "True", "lastTransitionTime": "2027-01-01T00:00:00Z"}]
                }
            })
        })
        .collect();
    json!({"apiVersion": "v1", "kind": "PodList", "metadata": {}, "items": items})
}

/// A list of `data-demo-i` PVCs.
pub fn pvcs_json(ordinals: &[u32]) -> Value {
    let items: Vec<Value> = ordinals
        .iter()
        .map(|o| json!({"metadata": {"name": format!("data-demo-{o}"), "namespace": "prod"}}))
        .collect();
    json!({"apiVersion": "v1", "kind": "PersistentVolumeClaimList", "metadata": {}, "items": items})
}

/// Paths of the fixture cluster's objects.
pub mod paths {
    /// ConfigMap.
    pub const CONFIGMAP: &str = "/api/v1/namespaces/prod/configmaps/demo-config";
    /// StatefulSet.
    pub const STATEFULSET: &str = "/apis/apps/v1/namespaces/prod/statefulsets/demo";
    /// Pod collection.
    pub const PODS: &str = "/api/v1/namespaces/prod/pods";
    /// PVC collection.
    pub const PVCS: &str = "/api/v1/namespaces/prod/persistentvolumeclaims";
    /// Headless Service.
    pub const PEERS_SERVICE: &str = "/api/v1/namespaces/prod/services/demo-peers";
    /// Client Service.
    pub const CLIENT_SERVICE: &str = "/api/v1/namespaces/prod/services/demo";
    /// Leader Service.
    pub const LEADER_SERVICE: &str = "/api/v1/namespaces/prod/services/demo-leader";
    /// NetworkPolicy.
    pub const NETWORK_POLICY: &str =
        "/apis/networking.k8s.io/v1/namespaces/prod/networkpolicies/demo";

    /// One pod.
    pub fn pod(ordinal: u32) -> String {
        format!("{PODS}/demo-{ordinal}")
    }
    /// PDB.
    pub const PDB: &str = "/apis/policy/v1/namespaces/prod/poddisruptionbudgets/demo";
    /// PDB on API servers that serve only `policy/v1beta1` (Kubernetes 1.20).
    pub const PDB_V1BETA1: &str = "/apis/policy/v1beta1/namespaces/prod/poddisruptionbudgets/demo";
    /// Event collection.
    pub const EVENTS: &str = "/apis/events.k8s.io/v1/namespaces/prod/events";
    /// Status subresource.
    pub const STATUS: &str = "/apis/titan.dev/v1alpha1/namespaces/prod/titanclusters/demo/status";
}
