//! The controller: `kube::runtime::Controller` + finalizer around a reconcile
//! that follows validate → observe → apply → plan → label the leader's pod →
//! execute one step → status.

mod apply;
pub mod certs;
mod execute;
pub mod observe;
pub mod restore;
pub mod routing;
pub mod status;

use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::jiff::Timestamp;
use kube::api::Api;
use kube::runtime::controller::Action as Requeue;
use kube::runtime::events::{EventType, Recorder};
use kube::runtime::finalizer::{self, Event as FinalizerEvent};
use kube::{Client, Resource, ResourceExt};

use crate::admin::{AdminApi, AdminError};
use crate::builders::{Names, OperatorIdentity};
use crate::crd::{Phase, TitanCluster, TitanClusterStatus};
use crate::metrics::Metrics;
use crate::planner::{self, Action, Plan, PlannerConfig, WaitReason};

/// Default [`Settings::leader_label_drain`]: endpoint removal reaches
/// kube-proxy within about a second on a quiet node.
pub const LEADER_LABEL_DRAIN_SECS: u64 = 3;

/// Finalizer the operator puts on every TitanCluster.
pub const FINALIZER: &str = "titan.dev/cleanup";

/// Requeue timing and what the operator knows about itself.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The operator's own namespace and pod labels, which a cluster's
    /// NetworkPolicy must admit to the Admin API; `None` when unknown (then
    /// no NetworkPolicy is created, with a Warning event).
    pub operator: Option<OperatorIdentity>,
    /// Planner tunables.
    pub planner: PlannerConfig,
    /// After executing a step: re-observe soon.
    pub requeue_after_step: Duration,
    /// While waiting on pods or catch-up.
    pub requeue_while_waiting: Duration,
    /// When steady (watches trigger earlier on any change).
    pub requeue_when_steady: Duration,
    /// Pause between taking the leader label off a pod and moving leadership
    /// away from it, so kube-proxy stops routing `NAME-leader` there first.
    pub leader_label_drain: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            operator: None,
            planner: PlannerConfig::default(),
            requeue_after_step: Duration::from_secs(2),
            requeue_while_waiting: Duration::from_secs(5),
            requeue_when_steady: Duration::from_secs(60),
            leader_label_drain: Duration::from_secs(LEADER_LABEL_DRAIN_SECS),
        }
    }
}

/// Shared state of every reconcile.
#[derive(Clone)]
pub struct Context {
    /// Kubernetes client.
    pub client: Client,
    /// Event recorder (events.k8s.io).
    pub recorder: Recorder,
    /// Operator metrics.
    pub metrics: Arc<Metrics>,
    /// Admin API access (gRPC in production, a fake in tests).
    pub admin: Arc<dyn AdminApi>,
    /// Tunables.
    pub settings: Settings,
    /// Clock, injectable so tests are deterministic.
    pub clock: Arc<dyn Fn() -> Timestamp + Send + Sync>,
    /// The stores `spec.bootstrap.fromBackup` is read from.
    pub backup_stores: restore::StoreFactory,
    /// The operator's Admin client certificate per cluster, reused while
    /// fresh (see [`certs::IdentityCache`]).
    pub identities: certs::IdentityCache,
}

/// Reconcile failures. Each maps to a metric label in [`Error::reason`].
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An API server call failed.
    #[error("{op}: {source}")]
    Kube {
        /// What the operator was doing.
        op: &'static str,
        /// Client error.
        #[source]
        source: kube::Error,
    },
    /// An admin call that executes a planned step failed.
    #[error("{action}: {source}")]
    Admin {
        /// Step being executed.
        action: &'static str,
        /// Admin error.
        #[source]
        source: AdminError,
    },
    /// The finalizer helper failed (adding/removing the finalizer, or the inner reconcile).
    #[error("finalizer: {0}")]
    Finalizer(#[source] Box<finalizer::Error<Error>>),
    /// The object lacks a namespace or name.
    #[error("TitanCluster without {0}")]
    MissingField(&'static str),
    /// `spec.tls`: a certificate could not be loaded or issued.
    #[error("certificates in Secret {secret}: {source}")]
    Tls {
        /// The Secret concerned.
        secret: String,
        /// What went wrong.
        #[source]
        source: crate::tls::PkiError,
    },
}

impl Error {
    /// Maps a kube error with the operation it came from.
    pub fn kube(op: &'static str) -> impl FnOnce(kube::Error) -> Error {
        move |source| Error::Kube { op, source }
    }

    /// Short label for the failures metric.
    pub fn reason(&self) -> &'static str {
        match self {
            Error::Kube { .. } => "kube",
            Error::Admin { .. } => "admin",
            Error::Finalizer(inner) => match inner.as_ref() {
                finalizer::Error::ApplyFailed(e) | finalizer::Error::CleanupFailed(e) => e.reason(),
                _ => "finalizer",
            },
            Error::MissingField(_) => "invalid_object",
            Error::Tls { .. } => "tls",
        }
    }
}

/// Controller entry point: wraps [`apply`] and [`cleanup`] in the finalizer.
pub async fn reconcile(cluster: Arc<TitanCluster>, ctx: Arc<Context>) -> Result<Requeue, Error> {
    let started = Instant::now();
    let ns = cluster
        .namespace()
        .ok_or(Error::MissingField("namespace"))?;
    let api: Api<TitanCluster> = Api::namespaced(ctx.client.clone(), &ns);
    let result = finalizer::finalizer(&api, FINALIZER, cluster, |event| async {
        match event {
            FinalizerEvent::Apply(c) => apply(&c, &ctx).await,
            FinalizerEvent::Cleanup(c) => cleanup(&c, &ctx).await,
        }
    })
    .await
    .map_err(|e| Error::Finalizer(Box::new(e)));
    ctx.metrics.observe_reconcile(started.elapsed());
    result
}

/// Logs, counts the failure by reason, records a Warning event and retries later.
pub fn error_policy(cluster: Arc<TitanCluster>, error: &Error, ctx: Arc<Context>) -> Requeue {
    tracing::warn!(cluster = %cluster.name_any(), %error, "reconcile failed");
    ctx.metrics.count_failure(error.reason());
    let note = error.to_string();
    // error_policy is synchronous; the event is best-effort and must not delay the requeue.
    tokio::spawn(async move {
        publish(
            &ctx,
            &cluster,
            EventType::Warning,
            "ReconcileFailed",
            "Reconcile",
            note,
        )
        .await;
    });
    Requeue::requeue(Duration::from_secs(15))
}

/// Deletion: owned objects go with the owner reference; PVCs are kept on purpose
/// (they hold acknowledged data), which the event says.
async fn cleanup(cluster: &TitanCluster, ctx: &Context) -> Result<Requeue, Error> {
    let note = "TitanCluster deleted; owned objects are garbage-collected, data PVCs are retained";
    publish(
        ctx,
        cluster,
        EventType::Normal,
        "Deleting",
        "Cleanup",
        note.to_string(),
    )
    .await;
    Ok(Requeue::await_change())
}

/// Publishes an event; failing to record an event never fails the reconcile.
pub(crate) async fn publish(
    ctx: &Context,
    cluster: &TitanCluster,
    type_: EventType,
    reason: &str,
    action: &str,
    note: String,
) {
    crate::kube_io::publish_event(&ctx.recorder, cluster, type_, reason, action, note).await;
}

/// validate → (paused: status only) → observe → apply → plan → leader label →
/// execute → status.
async fn apply(cluster: &TitanCluster, ctx: &Context) -> Result<Requeue, Error> {
    let now = (ctx.clock)();
    let names = Names::of(cluster);
    if let Err(invalid) = cluster.spec.validate() {
        let note = invalid.to_string();
        degrade(
            ctx,
            cluster,
            &names,
            ("InvalidSpec", "Validate"),
            &note,
            now,
        )
        .await?;
        return Ok(Requeue::await_change());
    }
    if cluster.spec.paused {
        return paused(ctx, cluster, &names, now).await;
    }
    let state = observe::read_kube_state(ctx, &names).await?;
    if let Some(requeue) = refuse_tls_change(ctx, cluster, &names, &state, now).await? {
        return Ok(requeue);
    }
    if let Some(requeue) = restore::gate(ctx, cluster, &names, &state, now).await? {
        return Ok(requeue);
    }
    let tls = certs::ensure(ctx, cluster, &names, &state, now).await?;
    let mut pods = observe::pods_by_ordinal(&state, &names, tls.as_ref(), now);
    observe::poll_admin(ctx, &mut pods).await;
    let voters = status::leader(&pods).map(|(_, l)| l.members.iter().filter(|m| m.voter).count());
    let voters = voters.and_then(|v| u32::try_from(v).ok());
    let input = observe::build_input(cluster, &state, voters);
    let applied =
        apply::apply_objects(ctx, cluster, &names, &input, state.statefulset.is_none()).await?;
    let observed = observe::observed(
        cluster,
        &state,
        &names,
        &pods,
        input.statefulset_replicas,
        now,
    );
    let plan = planner::plan(&observed, &ctx.settings.planner, &|n| names.ordinal_of(n));
    let leader = status::leader(&pods).map(|(name, _)| name.to_string());
    let target = routing::label_target(&pods, leader.as_deref(), &plan.action);
    let labels = routing::label_changes(&pods, target.as_deref());
    routing::apply_label_changes(ctx, &names, &labels).await?;
    if routing::drain_before_step(&labels, &plan.action) {
        tokio::time::sleep(ctx.settings.leader_label_drain).await;
    }
    let snapshot = execute::execute(ctx, cluster, &names, &input, &pods, &plan.action, now).await?;
    let status_input = status::StatusInput {
        previous: cluster.status.as_ref(),
        generation: cluster.meta().generation,
        plan: &plan,
        pods: &pods,
        selector: names.selector_string(),
        pdb_supported: applied.pdb_supported,
        snapshot,
        restore_failure: restore::fetch_failure_note(ctx, cluster, &state).await,
        now,
    };
    let next = status::build_status(&status_input);
    write_status(ctx, cluster, &names, next).await?;
    Ok(requeue_for(&ctx.settings, &plan.action))
}

/// Degraded (`TlsChangeUnsupported`, with a Warning event) and nothing
/// applied when [`tls_change`] refuses the spec.
async fn refuse_tls_change(
    ctx: &Context,
    cluster: &TitanCluster,
    names: &Names,
    state: &observe::KubeState,
    now: Timestamp,
) -> Result<Option<Requeue>, Error> {
    let Some(note) = tls_change(cluster, state) else {
        return Ok(None);
    };
    let why = ("TlsChangeUnsupported", "Validate");
    degrade(ctx, cluster, names, why, &note, now).await?;
    Ok(Some(Requeue::await_change()))
}

/// A refusal when `spec.tls.enabled` differs from what the cluster was
/// created with: members cannot switch one at a time (a plaintext member
/// and a TLS member do not talk), so the change would cost quorum.
fn tls_change(cluster: &TitanCluster, state: &observe::KubeState) -> Option<String> {
    let recorded = crate::builders::recorded_tls(state.configmap.as_ref())?;
    let wanted = cluster.spec.tls_enabled();
    (recorded != wanted).then(|| {
        format!(
            "spec.tls.enabled is {wanted} but the cluster was created with {recorded}; \
             TLS cannot be switched on a running cluster (set it back, or restore a backup \
             into a new cluster)"
        )
    })
}

async fn paused(
    ctx: &Context,
    cluster: &TitanCluster,
    names: &Names,
    now: Timestamp,
) -> Result<Requeue, Error> {
    let plan = Plan {
        action: Action::Wait(WaitReason::Paused),
        phase: Phase::Paused,
    };
    let pods = Default::default();
    let mut input = status::StatusInput {
        previous: cluster.status.as_ref(),
        generation: cluster.meta().generation,
        plan: &plan,
        pods: &pods,
        selector: names.selector_string(),
        pdb_supported: true,
        snapshot: None,
        restore_failure: None,
        now,
    };
    let prev_pdb = cluster
        .status
        .as_ref()
        .and_then(|s| {
            s.conditions
                .iter()
                .find(|c| c.type_ == status::DISRUPTION_BUDGET)
        })
        .is_none_or(|c| c.status == "True");
    input.pdb_supported = prev_pdb;
    let mut next = status::build_status(&input);
    // Paused observes nothing new: keep the last known membership picture.
    if let Some(prev) = cluster.status.as_ref() {
        next.members = prev.members.clone();
        next.replicas = prev.replicas;
        next.ready_replicas = prev.ready_replicas;
        next.leader = prev.leader.clone();
    }
    write_status(ctx, cluster, names, next).await?;
    Ok(Requeue::await_change())
}

/// A refusal: a Warning event `reason` (by `action`) and the Degraded
/// status with the same reason and `note`.
pub(super) async fn degrade(
    ctx: &Context,
    cluster: &TitanCluster,
    names: &Names,
    (reason, action): (&str, &str),
    note: &str,
    now: Timestamp,
) -> Result<(), Error> {
    publish(
        ctx,
        cluster,
        EventType::Warning,
        reason,
        action,
        note.to_string(),
    )
    .await;
    write_degraded_status(ctx, cluster, names, reason, note, now).await
}

/// Phase Degraded, with the Degraded condition's `reason` and `message`.
async fn write_degraded_status(
    ctx: &Context,
    cluster: &TitanCluster,
    names: &Names,
    reason: &str,
    message: &str,
    now: Timestamp,
) -> Result<(), Error> {
    let mut next = cluster.status.clone().unwrap_or_default();
    next.phase = Some(Phase::Degraded);
    next.selector = Some(names.selector_string());
    let generation = cluster.meta().generation;
    status::set_condition(
        &mut next.conditions,
        status::DEGRADED,
        true,
        reason,
        message,
        generation,
        now,
    );
    next.observed_generation = generation;
    write_status(ctx, cluster, names, next).await
}

/// Server-side apply of the status subresource.
async fn write_status(
    ctx: &Context,
    cluster: &TitanCluster,
    names: &Names,
    status: TitanClusterStatus,
) -> Result<(), Error> {
    let api: Api<TitanCluster> = Api::namespaced(ctx.client.clone(), &names.namespace);
    let name = cluster.name_any();
    crate::kube_io::apply_status(&api, "TitanCluster", &name, &status, "patch status").await
}

/// Requeue delay by what the planner decided.
fn requeue_for(settings: &Settings, action: &Action) -> Requeue {
    match action {
        Action::Steady => Requeue::requeue(settings.requeue_when_steady),
        Action::Wait(_) | Action::Degraded(_) => Requeue::requeue(settings.requeue_while_waiting),
        _ => Requeue::requeue(settings.requeue_after_step),
    }
}
#[cfg(test)]
mod scenarios;
