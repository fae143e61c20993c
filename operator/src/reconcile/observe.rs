//! Gathering the observed state: objects from the API server and every
//! member's admin `Status`. The result feeds the pure planner.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use futures::future::join_all;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{ConfigMap, PersistentVolumeClaim, Pod};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, ListParams};
use kube::{Resource, ResourceExt};

use super::{Context, Error};
use crate::admin::{AdminTarget, AdminTls, TlsIdentity};
use crate::builders::{self, Names, PEER_PORT, SERVER_CONTAINER};
use crate::crd::{SNAPSHOT_REQUEST_ANNOTATION, TitanCluster};
use crate::planner::{NodeStatus, Observed, PodView};

/// Most pods one reconcile polls over the admin API (9 members + 1 in flight, with margin).
pub const MAX_POLLED_PODS: usize = 16;

/// Kubernetes objects of one cluster as read at the start of a reconcile.
#[derive(Debug, Default)]
pub struct KubeState {
    /// The cluster ConfigMap, if it exists.
    pub configmap: Option<ConfigMap>,
    /// The StatefulSet, if it exists.
    pub statefulset: Option<StatefulSet>,
    /// Pods matching the cluster selector.
    pub pods: Vec<Pod>,
    /// PVCs matching the cluster selector.
    pub pvcs: Vec<PersistentVolumeClaim>,
}

/// A pod joined with its admin view, by ordinal.
#[derive(Debug, Clone)]
pub struct PodObservation {
    /// Pod name.
    pub name: String,
    /// Admin endpoint (`http://POD_IP:5001`, or `https://` under
    /// `spec.tls`), when the pod has an IP.
    pub endpoint: Option<AdminTarget>,
    /// What the planner sees.
    pub view: PodView,
    /// The pod carries `titan.dev/role=leader` (the leader Service selects it).
    pub leader_labeled: bool,
}

/// Reads the ConfigMap, StatefulSet, pods and PVCs of the cluster.
pub async fn read_kube_state(ctx: &Context, names: &Names) -> Result<KubeState, Error> {
    let ns = &names.namespace;
    let cms: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), ns);
    let stss: Api<StatefulSet> = Api::namespaced(ctx.client.clone(), ns);
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), ns);
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client.clone(), ns);
    let selector = ListParams::default().labels(&names.selector_string());
    Ok(KubeState {
        configmap: cms
            .get_opt(&names.configmap())
            .await
            .map_err(Error::kube("get configmap"))?,
        statefulset: stss
            .get_opt(&names.statefulset())
            .await
            .map_err(Error::kube("get statefulset"))?,
        pods: pods
            .list(&selector)
            .await
            .map_err(Error::kube("list pods"))?
            .items,
        pvcs: pvcs
            .list(&selector)
            .await
            .map_err(Error::kube("list pvcs"))?
            .items,
    })
}

/// The BuildInput derived from the CR and the observed ConfigMap/StatefulSet.
/// Values fixed at creation (initial members, cluster id) are read back, never recomputed.
pub fn build_input(
    cluster: &TitanCluster,
    state: &KubeState,
    voters: Option<u32>,
) -> builders::BuildInput {
    let data = state
        .configmap
        .as_ref()
        .and_then(|cm| cm.data.clone())
        .unwrap_or_default();
    let spec_replicas = u32::try_from(cluster.spec.replicas).unwrap_or(1);
    let initial_replicas = data
        .get(builders::INITIAL_REPLICAS_KEY)
        .and_then(|v| v.parse().ok())
        .unwrap_or(spec_replicas);
    let statefulset_replicas = state
        .statefulset
        .as_ref()
        .and_then(|s| s.spec.replicas)
        .and_then(|r| u32::try_from(r).ok())
        .unwrap_or(initial_replicas);
    builders::BuildInput {
        initial_replicas,
        cluster_id: data
            .get(builders::CLUSTER_ID_KEY)
            .cloned()
            .or_else(|| cluster.meta().uid.clone())
            .unwrap_or_default(),
        bootstrapped: data
            .get(builders::BOOTSTRAPPED_KEY)
            .is_some_and(|v| v == "true"),
        statefulset_replicas,
        voters: voters.unwrap_or(initial_replicas),
        keep_no_resources: state
            .statefulset
            .as_ref()
            .is_some_and(runs_without_resources),
    }
}

/// The StatefulSet's server container has neither requests nor limits (the
/// API server returns `resources: {}` for a container created without).
fn runs_without_resources(sts: &StatefulSet) -> bool {
    let server = sts
        .spec
        .template
        .spec
        .as_ref()
        .and_then(|p| p.containers.iter().find(|c| c.name == SERVER_CONTAINER));
    let Some(server) = server else {
        return false;
    };
    let resources = server.resources.clone().unwrap_or_default();
    resources.requests.unwrap_or_default().is_empty()
        && resources.limits.unwrap_or_default().is_empty()
}

fn is_ready(pod: &Pod) -> bool {
    ready_condition(pod).is_some_and(|c| c.status == "True")
}

fn ready_condition(pod: &Pod) -> Option<&k8s_openapi::api::core::v1::PodCondition> {
    pod.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == "Ready")
}

/// Seconds the pod has been not Ready (0 when Ready), from the Ready condition
/// transition time or, before it has one, the pod's creation.
fn unready_secs(pod: &Pod, now: Timestamp) -> u64 {
    if is_ready(pod) {
        return 0;
    }
    let since = ready_condition(pod)
        .and_then(|c| c.last_transition_time.as_ref())
        .or(pod.metadata.creation_timestamp.as_ref())
        .map(|t| t.0);
    since.map_or(0, |t| {
        u64::try_from(now.as_second() - t.as_second()).unwrap_or(0)
    })
}

/// Pods by ordinal with readiness and revision, without admin views yet.
/// With `tls` (the cluster uses `spec.tls`), each admin endpoint is mutual
/// TLS verified against the pod's DNS name.
pub fn pods_by_ordinal(
    state: &KubeState,
    names: &Names,
    tls: Option<&Arc<TlsIdentity>>,
    now: Timestamp,
) -> BTreeMap<u32, PodObservation> {
    let update_revision = state
        .statefulset
        .as_ref()
        .and_then(|s| s.status.as_ref())
        .and_then(|s| s.update_revision.clone());
    let mut out = BTreeMap::new();
    for pod in &state.pods {
        let name = pod.name_any();
        let Some(ordinal) = names.ordinal_of(&name) else {
            continue;
        };
        let revision = pod.labels().get("controller-revision-hash");
        let up_to_date = match (&update_revision, revision) {
            (Some(want), Some(have)) => want == have,
            _ => true,
        };
        let ip = pod.status.as_ref().and_then(|s| s.pod_ip.clone());
        let view = PodView {
            ready: is_ready(pod),
            up_to_date,
            terminating: pod.metadata.deletion_timestamp.is_some(),
            unready_secs: unready_secs(pod, now),
            node: None,
        };
        let endpoint = ip.map(|ip| {
            let host_port = format!("{ip}:{PEER_PORT}");
            match tls {
                Some(identity) => AdminTarget::tls(
                    &host_port,
                    AdminTls {
                        identity: identity.clone(),
                        server_name: names.pod_host(ordinal),
                    },
                ),
                None => AdminTarget::plain(&host_port),
            }
        });
        let leader_labeled = pod
            .labels()
            .get(builders::ROLE_LABEL)
            .is_some_and(|v| v == builders::LEADER_ROLE);
        out.insert(
            ordinal,
            PodObservation {
                name,
                endpoint,
                view,
                leader_labeled,
            },
        );
    }
    out
}

/// Polls `Admin.Status` on every pod with an IP, concurrently and bounded by
/// [`MAX_POLLED_PODS`]. Failures leave `node = None` (unknown, not removed).
pub async fn poll_admin(ctx: &Context, pods: &mut BTreeMap<u32, PodObservation>) {
    let targets: Vec<(u32, AdminTarget)> = pods
        .iter()
        .filter(|(_, p)| !p.view.terminating)
        .filter_map(|(o, p)| p.endpoint.clone().map(|e| (*o, e)))
        .take(MAX_POLLED_PODS)
        .collect();
    let calls = targets.into_iter().map(|(ordinal, endpoint)| {
        let fut = ctx.admin.status(endpoint);
        async move { (ordinal, fut.await) }
    });
    for (ordinal, result) in join_all(calls).await {
        match result {
            Ok(status) => set_node(pods, ordinal, status),
            Err(error) => tracing::debug!(ordinal, %error, "admin status unavailable"),
        }
    }
}

fn set_node(pods: &mut BTreeMap<u32, PodObservation>, ordinal: u32, status: NodeStatus) {
    if let Some(p) = pods.get_mut(&ordinal) {
        p.view.node = Some(status);
    }
}

/// Ordinals that have a `data-NAME-k` PVC.
pub fn pvc_ordinals(state: &KubeState, names: &Names) -> BTreeSet<u32> {
    state
        .pvcs
        .iter()
        .filter_map(|pvc| names.ordinal_of(pvc.name_any().strip_prefix("data-")?))
        .collect()
}

/// Pending on-demand snapshot token: the annotation differs from what status echoed.
pub fn pending_snapshot_token(cluster: &TitanCluster) -> Option<String> {
    let token = cluster.annotations().get(SNAPSHOT_REQUEST_ANNOTATION)?;
    let answered = cluster
        .status
        .as_ref()
        .and_then(|s| s.last_snapshot.as_ref())
        .and_then(|l| l.request_token.as_ref());
    (answered != Some(token)).then(|| token.clone())
}

/// The schedule asks for a snapshot: interval on and none taken within it.
pub fn scheduled_snapshot_due(cluster: &TitanCluster, now: Timestamp) -> bool {
    let interval = i64::from(cluster.spec.snapshot.interval_seconds);
    if interval == 0 {
        return false;
    }
    let last = cluster
        .status
        .as_ref()
        .and_then(|s| s.last_snapshot.as_ref())
        .and_then(|l| l.time.as_ref());
    last.is_none_or(|t| now.as_second() - t.0.as_second() >= interval)
}

/// Assembles the planner input.
pub fn observed(
    cluster: &TitanCluster,
    state: &KubeState,
    names: &Names,
    pods: &BTreeMap<u32, PodObservation>,
    statefulset_replicas: u32,
    now: Timestamp,
) -> Observed {
    let input = build_input(cluster, state, None);
    Observed {
        desired_replicas: u32::try_from(cluster.spec.replicas).unwrap_or(1),
        paused: cluster.spec.paused,
        bootstrapped: input.bootstrapped,
        statefulset_replicas: Some(statefulset_replicas),
        pods: pods.iter().map(|(o, p)| (*o, p.view.clone())).collect(),
        pvc_ordinals: pvc_ordinals(state, names),
        snapshot_due: pending_snapshot_token(cluster).is_some()
            || scheduled_snapshot_due(cluster, now),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures;
    use serde_json::json;

    fn state(
        pods: serde_json::Value,
        sts: serde_json::Value,
        cm: Option<serde_json::Value>,
    ) -> KubeState {
        let pods: k8s_openapi::List<Pod> =
            serde_json::from_value(pods).unwrap_or_else(|e| panic!("pods: {e}"));
        KubeState {
            configmap: cm.map(|c| serde_json::from_value(c).unwrap_or_else(|e| panic!("cm: {e}"))),
            statefulset: Some(serde_json::from_value(sts).unwrap_or_else(|e| panic!("sts: {e}"))),
            pods: pods.items,
            pvcs: vec![],
        }
    }

    /// A running StatefulSet whose server container has no requests or
    /// limits (the API server's `resources: {}`) keeps none; any resources,
    /// no StatefulSet yet, or no server container get the defaults.
    #[test]
    fn only_a_running_server_without_any_resources_keeps_none() {
        let with = |resources: serde_json::Value| {
            let mut sts = fixtures::statefulset_json(3);
            sts["spec"]["template"] = json!({"spec": {"containers": [
                {"name": "titan", "resources": resources}]}});
            sts
        };
        let cases = [
            (Some(with(json!({}))), true),
            (Some(with(json!({"requests": {}, "limits": {}}))), true),
            (Some(with(json!({"limits": {"memory": "1Gi"}}))), false),
            (Some(with(json!({"requests": {"cpu": "1"}}))), false),
            (Some(fixtures::statefulset_json(3)), false),
            (None, false),
        ];
        let cluster = fixtures::cluster(json!({}));
        for (sts, want) in cases {
            let mut s = state(
                fixtures::pods_json(&[]),
                fixtures::statefulset_json(3),
                None,
            );
            s.statefulset = sts
                .clone()
                .map(|v| serde_json::from_value(v).unwrap_or_else(|e| panic!("sts: {e}")));
            let input = build_input(&cluster, &s, None);
            assert_eq!(input.keep_no_resources, want, "{sts:?}");
        }
    }

    #[test]
    fn pods_on_an_old_revision_are_outdated_and_foreign_pods_ignored() {
        let mut pods = fixtures::pods_json(&[0, 1]);
        pods["items"][1]["metadata"]["labels"]["controller-revision-hash"] = json!("rev-0");
        let extra = json!({"metadata": {"name": "other-0", "namespace": "prod"}});
        if let Some(items) = pods["items"].as_array_mut() {
            items.push(extra);
        }
        let s = state(pods, fixtures::statefulset_json(2), None);
        let names = Names {
            cluster: "demo".into(),
            namespace: "prod".into(),
        };
        let by_ordinal = pods_by_ordinal(&s, &names, None, fixtures::now());
        assert_eq!(by_ordinal.len(), 2);
        assert!(by_ordinal[&0].view.up_to_date);
        assert!(!by_ordinal[&1].view.up_to_date);
        let target = by_ordinal[&0].endpoint.clone().expect("endpoint");
        assert_eq!(
            (target.uri.as_str(), target.tls),
            ("http://10.0.0.0:5001", None)
        );
        assert!(by_ordinal[&0].view.ready);

        // spec.tls: mutual TLS to the pod IP, verified as the pod's DNS name.
        let identity = Arc::new(TlsIdentity {
            ca_pem: "ca".into(),
            cert_pem: "cert".into(),
            key_pem: "key".into(),
        });
        let by_ordinal = pods_by_ordinal(&s, &names, Some(&identity), fixtures::now());
        let target = by_ordinal[&1].endpoint.clone().expect("endpoint");
        assert_eq!(target.uri, "https://10.0.0.1:5001");
        let tls = target.tls.expect("tls");
        assert_eq!(tls.server_name, "demo-1.demo-peers.prod.svc");
        assert!(Arc::ptr_eq(&tls.identity, &identity));
    }

    #[test]
    fn unready_time_counts_from_the_ready_transition() {
        let mut pods = fixtures::pods_json(&[0]);
        pods["items"][0]["status"]["conditions"][0] = json!({"type": "Ready", "status": "False", "lastTransitionTime": "2027-01-15T07:59:00Z"});
        let s = state(pods, fixtures::statefulset_json(1), None);
        let names = Names {
            cluster: "demo".into(),
            namespace: "prod".into(),
        };
        let by_ordinal = pods_by_ordinal(&s, &names, None, fixtures::now());
        assert!(!by_ordinal[&0].view.ready);
        assert_eq!(by_ordinal[&0].view.unready_secs, 60);
    }

    #[test]
    fn creation_time_values_are_read_back_from_the_configmap() {
        let cluster = fixtures::cluster(json!({"replicas": 5}));
        let s = state(
            fixtures::pods_json(&[]),
            fixtures::statefulset_json(4),
            Some(fixtures::configmap_json(true, 3)),
        );
        let input = build_input(&cluster, &s, Some(4));
        assert_eq!(input.initial_replicas, 3, "not the new spec.replicas");
        assert_eq!(
            input.statefulset_replicas, 4,
            "the observed step, not the spec"
        );
        assert!(input.bootstrapped);
        assert_eq!(input.voters, 4);
        let fresh = KubeState::default();
        let input = build_input(&cluster, &fresh, None);
        assert_eq!(
            (
                input.initial_replicas,
                input.statefulset_replicas,
                input.bootstrapped
            ),
            (5, 5, false)
        );
        assert_eq!(input.cluster_id, "11111111-2222-4333-8444-555555555555");
    }

    #[test]
    fn snapshot_schedule_and_request_token() {
        let now = fixtures::now();
        let mut cluster = fixtures::cluster(json!({"snapshot": {"intervalSeconds": 600}}));
        assert!(scheduled_snapshot_due(&cluster, now), "never taken → due");
        let taken = |secs_ago: i64, token: Option<&str>| crate::crd::TitanClusterStatus {
            last_snapshot: Some(crate::crd::LastSnapshot {
                index: 1,
                time: Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                    Timestamp::from_second(now.as_second() - secs_ago).unwrap_or(now),
                )),
                request_token: token.map(str::to_string),
            }),
            ..Default::default()
        };
        cluster.status = Some(taken(599, None));
        assert!(!scheduled_snapshot_due(&cluster, now));
        cluster.status = Some(taken(600, None));
        assert!(scheduled_snapshot_due(&cluster, now));
        cluster.spec.snapshot.interval_seconds = 0;
        assert!(
            !scheduled_snapshot_due(&cluster, now),
            "0 turns the schedule off"
        );
        cluster
            .metadata
            .annotations
            .get_or_insert_with(Default::default)
            .insert(SNAPSHOT_REQUEST_ANNOTATION.to_string(), "t1".to_string());
        assert_eq!(pending_snapshot_token(&cluster).as_deref(), Some("t1"));
        cluster.status = Some(taken(5, Some("t1")));
        assert_eq!(pending_snapshot_token(&cluster), None, "already answered");
    }
}
