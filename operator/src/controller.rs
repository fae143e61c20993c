//! `titan-operator run`: leader election, the controller, the HTTP endpoint and
//! graceful shutdown wired together.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{FutureExt, StreamExt};
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::jiff::Timestamp;
use kube::runtime::controller::Controller;
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Api, Client, ResourceExt};
use tokio::sync::watch;

use crate::admin::{GrpcAdmin, GrpcAdminConfig};
use crate::backup::controller::{self as backup_controller, BackupContext, member_endpoint};
use crate::backup::resource::TitanBackup;
use crate::backup::schedule::TitanBackupSchedule;
use crate::backup::schedule_controller::{self, ScheduleContext};
use crate::backup::store::StoreConfig;
use crate::backup::upload::UploadConfig;
use crate::builders::OperatorIdentity;
use crate::crd::TitanCluster;
use crate::leader::{LeaseConfig, LeaseLock, LeaseProblem};
use crate::metrics::Metrics;
use crate::reconcile::{self, Context, Settings};

/// Settings of `titan-operator run`.
#[derive(Debug, Clone)]
pub struct RunConfig {
    /// Namespace to watch; all namespaces when `None`.
    pub watch_namespace: Option<String>,
    /// Address of the `/metrics` + `/healthz` endpoint.
    pub http_addr: SocketAddr,
    /// Leader election lease.
    pub lease: LeaseConfig,
    /// Give up (exit non-zero) when lease requests have failed for this long;
    /// `None` retries forever. Waiting for another replica's live lease is not
    /// a failure.
    pub lease_error_timeout: Option<Duration>,
    /// Admin client timeouts.
    pub admin: GrpcAdminConfig,
    /// The operator's own namespace and pod labels, admitted to the Admin
    /// API by each cluster's NetworkPolicy; `None` when unknown.
    pub operator: Option<OperatorIdentity>,
}

fn api<K>(client: &Client, ns: Option<&str>) -> Api<K>
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>,
{
    match ns {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

/// Completes on SIGTERM or Ctrl-C.
async fn termination_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        if let Ok(mut term) =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        {
            tokio::select! {
                _ = ctrl_c => {},
                _ = term.recv() => {},
            }
            return;
        }
    }
    let _ = ctrl_c.await;
}

/// Runs until SIGTERM, or until the lease is lost (then returns an error so
/// the process restarts and campaigns again), or until the lease could not be
/// taken for `lease_error_timeout` (an error naming the fix).
pub async fn run(client: Client, config: RunConfig) -> anyhow::Result<()> {
    let metrics = Arc::new(Metrics::default());
    let (stop_tx, stop_rx) = watch::channel(false);
    let http_stop = wait_for(stop_rx.clone());
    let http = tokio::spawn(crate::http::serve(
        config.http_addr,
        metrics.clone(),
        http_stop,
    ));
    tokio::spawn(async move {
        termination_signal().await;
        let _ = stop_tx.send(true);
    });
    let lock = Arc::new(LeaseLock::new(client.clone(), config.lease.clone()));
    if !campaign(&lock, stop_rx.clone(), config.lease_error_timeout).await? {
        return Ok(());
    }
    tracing::info!(identity = %config.lease.identity, "acquired leadership");
    let (lost_tx, lost_rx) = watch::channel(false);
    let renewer = tokio::spawn(renew(lock.clone(), stop_rx.clone(), lost_tx));
    let shutdown = {
        let (stop, lost) = (wait_for(stop_rx.clone()), wait_for(lost_rx.clone()));
        async move {
            tokio::select! { _ = stop => {}, _ = lost => {} }
        }
        .boxed()
        .shared()
    };
    run_controller(client, metrics, &config, shutdown).await;
    renewer.abort();
    if let Err(error) = lock.release().await {
        tracing::warn!(%error, "releasing the lease failed");
    }
    let _ = http.await;
    if *lost_rx.borrow() {
        anyhow::bail!("lost the leader lease");
    }
    Ok(())
}

async fn wait_for(mut rx: watch::Receiver<bool>) {
    while !*rx.borrow() {
        if rx.changed().await.is_err() {
            return;
        }
    }
}

/// Retries until we hold the lease (`true`) or shutdown is requested
/// (`false`). Each kind of failure is logged once (repeats only at debug
/// level); failures for longer than `error_timeout` end the campaign with an
/// error that says what to fix.
async fn campaign(
    lock: &LeaseLock,
    stop: watch::Receiver<bool>,
    error_timeout: Option<Duration>,
) -> anyhow::Result<bool> {
    let mut failing_since: Option<Instant> = None;
    let mut reported: Option<LeaseProblem> = None;
    loop {
        if *stop.borrow() {
            return Ok(false);
        }
        match lock.try_acquire_or_renew(Timestamp::now()).await {
            Ok(true) => return Ok(true),
            Ok(false) => {
                failing_since = None;
                reported = None;
                tracing::debug!("lease held by another replica");
            }
            Err(error) => {
                let problem = LeaseProblem::classify(&error, &lock.config().namespace);
                report_once(&mut reported, &problem);
                let since = *failing_since.get_or_insert_with(Instant::now);
                if let Some(limit) = error_timeout
                    && since.elapsed() >= limit
                {
                    let c = lock.config();
                    anyhow::bail!(
                        "could not take the leader-election Lease {}/{} within {}s: {problem}",
                        c.namespace,
                        c.name,
                        limit.as_secs()
                    );
                }
            }
        }
        let mut stop = stop.clone();
        tokio::select! {
            _ = tokio::time::sleep(lock.config().renew_interval) => {},
            _ = stop.changed() => {},
        }
    }
}

/// Logs `problem` unless the same kind was the last one logged.
fn report_once(reported: &mut Option<LeaseProblem>, problem: &LeaseProblem) {
    let same = reported
        .as_ref()
        .is_some_and(|r| std::mem::discriminant(r) == std::mem::discriminant(problem));
    if same {
        tracing::debug!(%problem, "lease request failed again");
    } else if problem.needs_user() {
        tracing::error!("{problem}");
    } else {
        tracing::warn!("{problem}; retrying");
    }
    *reported = Some(problem.clone());
}

/// Renews every interval; signals `lost` when renewal has not succeeded for a
/// whole lease duration (another replica may take over after that).
async fn renew(lock: Arc<LeaseLock>, stop: watch::Receiver<bool>, lost: watch::Sender<bool>) {
    let duration = std::time::Duration::from_secs(
        u64::try_from(lock.config().lease_duration_secs).unwrap_or(15),
    );
    let mut last_ok = std::time::Instant::now();
    while !*stop.borrow() {
        tokio::time::sleep(lock.config().renew_interval).await;
        match lock.try_acquire_or_renew(Timestamp::now()).await {
            Ok(true) => last_ok = std::time::Instant::now(),
            Ok(false) => {
                let _ = lost.send(true);
                return;
            }
            Err(error) => tracing::warn!(%error, "lease renewal failed"),
        }
        // Stop reconciling before a standby could legally take over.
        if last_ok.elapsed() + lock.config().renew_interval >= duration {
            let _ = lost.send(true);
            return;
        }
    }
}

async fn run_controller(
    client: Client,
    metrics: Arc<Metrics>,
    config: &RunConfig,
    shutdown: impl std::future::Future<Output = ()> + Clone + Send + Sync + 'static,
) {
    let ns = config.watch_namespace.as_deref();
    let reporter = Reporter {
        controller: "titan-operator".to_string(),
        instance: Some(config.lease.identity.clone()),
    };
    let ctx = Arc::new(Context {
        client: client.clone(),
        recorder: Recorder::new(client.clone(), reporter),
        metrics,
        admin: Arc::new(GrpcAdmin::new(config.admin)),
        settings: Settings {
            operator: config.operator.clone(),
            ..Settings::default()
        },
        clock: Arc::new(Timestamp::now),
        backup_stores: crate::reconcile::restore::s3_stores(),
        identities: Default::default(),
    });
    let backups = run_backup_controller(&client, config, ctx.recorder.clone(), shutdown.clone());
    let schedules =
        run_schedule_controller(&client, config, ctx.recorder.clone(), shutdown.clone());
    let wc = watcher::Config::default();
    let selector = watcher::Config::default().labels("app.kubernetes.io/name=titan");
    let clusters = Controller::new(api::<TitanCluster>(&client, ns), wc.clone())
        .owns(api::<StatefulSet>(&client, ns), wc.clone())
        .owns(api::<Service>(&client, ns), wc.clone())
        .owns(api::<ConfigMap>(&client, ns), wc.clone())
        .owns(api::<NetworkPolicy>(&client, ns), wc)
        .watches(api::<Pod>(&client, ns), selector, |pod: Pod| {
            let instance = pod.labels().get("app.kubernetes.io/instance").cloned()?;
            Some(ObjectRef::new(&instance).within(&pod.namespace()?))
        })
        .graceful_shutdown_on(shutdown)
        .run(reconcile::reconcile, reconcile::error_policy, ctx)
        .for_each(|result| async move {
            if let Err(error) = result {
                tracing::debug!(%error, "reconcile result");
            }
        });
    futures::join!(clusters, backups, schedules);
}

/// The one-shot TitanBackup controller, stopped by the same `shutdown`.
async fn run_backup_controller(
    client: &Client,
    config: &RunConfig,
    recorder: Recorder,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let ns = config.watch_namespace.as_deref();
    let ctx = Arc::new(BackupContext {
        client: client.clone(),
        recorder,
        upload: UploadConfig::default(),
        store: StoreConfig::default(),
        endpoint: Arc::new(member_endpoint),
        clock: Arc::new(Timestamp::now),
        requeue_no_member: Duration::from_secs(30),
    });
    Controller::new(api::<TitanBackup>(client, ns), watcher::Config::default())
        .graceful_shutdown_on(shutdown)
        .run(
            backup_controller::reconcile,
            backup_controller::error_policy,
            ctx,
        )
        .for_each(|result| async move {
            if let Err(error) = result {
                tracing::debug!(%error, "backup reconcile result");
            }
        })
        .await;
}

/// The TitanBackupSchedule controller, stopped by the same `shutdown`.
async fn run_schedule_controller(
    client: &Client,
    config: &RunConfig,
    recorder: Recorder,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let ns = config.watch_namespace.as_deref();
    let schedules = api::<TitanBackupSchedule>(client, ns);
    if !crd_served(&schedules).await {
        // `helm upgrade` does not install new CRDs: an operator newer than
        // its CRDs keeps serving clusters and backups, and still stops
        // cleanly (a watch on a resource the API server does not serve
        // retries forever).
        tracing::warn!(
            "the TitanBackupSchedule CRD is not installed: scheduled backups are off until it is (kubectl apply -f manifests/crd.yaml) and the operator restarts"
        );
        shutdown.await;
        return;
    }
    let ctx = Arc::new(ScheduleContext {
        client: client.clone(),
        recorder,
        clock: Arc::new(Timestamp::now),
    });
    Controller::new(schedules, watcher::Config::default())
        .graceful_shutdown_on(shutdown)
        .run(
            schedule_controller::reconcile,
            schedule_controller::error_policy,
            ctx,
        )
        .for_each(|result| async move {
            if let Err(error) = result {
                tracing::debug!(%error, "backup schedule reconcile result");
            }
        })
        .await;
}

/// Whether the API server serves `api`'s resource: false only on 404 (its
/// CRD is not installed); any other answer, failures included, counts as
/// served (the controller's watch retries those).
async fn crd_served<K>(api: &Api<K>) -> bool
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let probe = api
        .list_metadata(&kube::api::ListParams::default().limit(1))
        .await;
    !matches!(probe, Err(kube::Error::Api(status)) if status.code == 404)
}
