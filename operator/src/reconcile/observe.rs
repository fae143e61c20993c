//! Gathering the observed state: objects from the API server and every
//! member's admin `Status`. The result feeds the pure planner.

use std::collections::{BTreeMap, BTreeSet};

use futures::future::join_all;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{ConfigMap, PersistentVolumeClaim, Pod};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, ListParams};
use kube::{Resource, ResourceExt};

use super::{Context, Error};
use crate::builders::{self, Names, PEER_PORT};
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
    /// Admin endpoint (`http://POD_IP:5001`), when the pod has an IP.
    pub endpoint: Option<String>,
    /// What the planner sees.
    pub view: PodView,
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
    }
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
pub fn pods_by_ordinal(
    state: &KubeState,
    names: &Names,
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
        let endpoint = ip.map(|ip| format!("http://{ip}:{PEER_PORT}"));
        out.insert(
            ordinal,
            PodObservation {
                name,
                endpoint,
                view,
            },
        );
    }
    out
}

/// Polls `Admin.Status` on every pod with an IP, concurrently and bounded by
/// [`MAX_POLLED_PODS`]. Failures leave `node = None` (unknown, not removed).
pub async fn poll_admin(ctx: &Context, pods: &mut BTreeMap<u32, PodObservation>) {
    let targets: Vec<(u32, String)> = pods
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
