//! The TitanBackupSchedule controller: when a run is due, create the
//! TitanBackup (idempotent: a run created since the slot was due, by an
//! attempt whose status write failed, is recorded instead of repeated; and
//! a name that exists already counts as created), record it in status, prune old finished
//! TitanBackups of the schedule, and requeue for the next run.
//!
//! Talks to the API server only (TitanBackup create/list/delete, the
//! schedule's status, Events); the backup itself is the TitanBackup
//! controller's.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use kube::runtime::controller::Action as Requeue;
use kube::runtime::events::{EventType, Recorder};
use kube::{Client, Resource, ResourceExt};

use super::resource::TitanBackup;
use super::schedule::{
    Cadence, Child, SCHEDULE_LABEL, TitanBackupSchedule, TitanBackupScheduleStatus, backup_name,
    to_prune, until,
};
use crate::kube_io::{apply_status, publish_event};
use crate::reconcile::Error;

/// Longest label value Kubernetes accepts.
const MAX_LABEL_VALUE: usize = 63;

/// Shared state of every TitanBackupSchedule reconcile.
#[derive(Clone)]
pub struct ScheduleContext {
    /// Kubernetes client.
    pub client: Client,
    /// Event recorder.
    pub recorder: Recorder,
    /// Clock, injectable so tests are deterministic.
    pub clock: Arc<dyn Fn() -> Timestamp + Send + Sync>,
}

/// Controller entry point.
pub async fn reconcile(
    schedule: Arc<TitanBackupSchedule>,
    ctx: Arc<ScheduleContext>,
) -> Result<Requeue, Error> {
    let ns = schedule
        .namespace()
        .ok_or(Error::MissingField("namespace"))?;
    let name = schedule.name_any();
    // The watch cache may lag our own last status write: decide on the
    // object itself, or a run could be created twice.
    let api: Api<TitanBackupSchedule> = Api::namespaced(ctx.client.clone(), &ns);
    let Some(schedule) = api
        .get_opt(&name)
        .await
        .map_err(Error::kube("get TitanBackupSchedule"))?
    else {
        return Ok(Requeue::await_change());
    };
    if name.len() > MAX_LABEL_VALUE {
        let note = format!(
            "the schedule's name is {} characters; its TitanBackups carry it in the label {SCHEDULE_LABEL}, which allows {MAX_LABEL_VALUE}",
            name.len()
        );
        publish(&ctx, &schedule, EventType::Warning, "NameTooLong", note).await;
        return Ok(Requeue::await_change());
    }
    let spec = &schedule.spec;
    let previous = schedule.status.clone().unwrap_or_default();
    if spec.suspend {
        let status = TitanBackupScheduleStatus {
            next_schedule_time: None,
            ..previous
        };
        write_status(&ctx, &ns, &name, &status).await?;
        return Ok(Requeue::await_change());
    }
    run_on_cadence(&ctx, &schedule, &ns, previous).await
}

/// Waits for the next run, or takes it: creates (or records) the run,
/// writes the status, prunes old runs, and requeues for the one after.
async fn run_on_cadence(
    ctx: &ScheduleContext,
    schedule: &TitanBackupSchedule,
    ns: &str,
    previous: TitanBackupScheduleStatus,
) -> Result<Requeue, Error> {
    let (spec, name) = (&schedule.spec, schedule.name_any());
    let now = (ctx.clock)();
    let cadence = match Cadence::of(spec, now) {
        Ok(cadence) => cadence,
        Err(reason) => {
            publish(ctx, schedule, EventType::Warning, "InvalidSchedule", reason).await;
            return Ok(Requeue::await_change());
        }
    };
    let created = schedule
        .metadata
        .creation_timestamp
        .as_ref()
        .map_or(now, |t| t.0);
    let last = previous.last_schedule_time.as_ref().map(|t| t.0);
    // A pattern with no time left to run at has nothing more to do.
    let Some(due) = cadence.next_run(last, created, now) else {
        return Ok(Requeue::await_change());
    };
    let wait = until(due, now);
    if !wait.is_zero() {
        // Shows when a cron schedule first runs, or a changed cadence's next run.
        if previous.next_schedule_time.as_ref().map(|t| t.0) != Some(due) {
            let status = TitanBackupScheduleStatus {
                next_schedule_time: Some(Time(due)),
                ..previous
            };
            write_status(ctx, ns, &name, &status).await?;
        }
        return Ok(Requeue::requeue(wait));
    }
    let mut children = list_children(ctx, ns, &name).await?;
    // A run of this slot may exist already: created by an attempt whose
    // status write then failed. It is recorded, not repeated.
    let (backup, at, note) = run_for_slot(ctx, schedule, ns, &mut children, Some(due), now).await?;
    let next = cadence.next_run(Some(at), created, now);
    let status = TitanBackupScheduleStatus {
        last_schedule_time: Some(Time(at)),
        last_backup: Some(backup.clone()),
        next_schedule_time: next.map(Time),
    };
    write_status(ctx, ns, &name, &status).await?;
    prune(ctx, ns, &children, spec.history_limit).await?;
    publish(ctx, schedule, EventType::Normal, "BackupScheduled", note).await;
    Ok(next.map_or_else(Requeue::await_change, |n| Requeue::requeue(until(n, now))))
}

/// This slot's run: one created since `due` (recorded), else a new one
/// (created, and added to `children` for pruning). Returns its name, its
/// time and the event note.
async fn run_for_slot(
    ctx: &ScheduleContext,
    schedule: &TitanBackupSchedule,
    ns: &str,
    children: &mut Vec<TitanBackup>,
    due: Option<Timestamp>,
    now: Timestamp,
) -> Result<(String, Timestamp, String), Error> {
    if let Some((backup, created)) = due.and_then(|due| run_since(children, due)) {
        let note = format!("recorded TitanBackup {backup}, created by an earlier attempt");
        return Ok((backup, created, note));
    }
    let backup = backup_name(&schedule.name_any(), now);
    create_backup(ctx, schedule, ns, &backup).await?;
    children.push(TitanBackup {
        metadata: ObjectMeta {
            name: Some(backup.clone()),
            ..ObjectMeta::default()
        },
        spec: schedule.spec.template.clone(),
        status: None,
    });
    let note = format!("created TitanBackup {backup}");
    Ok((backup, now, note))
}

/// The newest of `children` created at or after `due`, with its creation time.
fn run_since(children: &[TitanBackup], due: Timestamp) -> Option<(String, Timestamp)> {
    children
        .iter()
        .filter_map(|b| Some((b.name_any(), b.metadata.creation_timestamp.as_ref()?.0)))
        .filter(|(_, created)| *created >= due)
        .max_by_key(|(_, created)| *created)
}

/// Logs, records a Warning event and retries later.
pub fn error_policy(
    schedule: Arc<TitanBackupSchedule>,
    error: &Error,
    ctx: Arc<ScheduleContext>,
) -> Requeue {
    tracing::warn!(schedule = %schedule.name_any(), %error, "backup schedule reconcile failed");
    let note = error.to_string();
    tokio::spawn(async move {
        publish(&ctx, &schedule, EventType::Warning, "ReconcileFailed", note).await;
    });
    Requeue::requeue(Duration::from_secs(30))
}

/// Creates the run's TitanBackup, owned by the schedule; one of that name
/// already there (a retried reconcile) counts as created.
async fn create_backup(
    ctx: &ScheduleContext,
    schedule: &TitanBackupSchedule,
    ns: &str,
    name: &str,
) -> Result<(), Error> {
    let owner = schedule
        .controller_owner_ref(&())
        .ok_or(Error::MissingField("uid"))?;
    let backup = TitanBackup {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            namespace: Some(ns.to_string()),
            labels: Some([(SCHEDULE_LABEL.to_string(), schedule.name_any())].into()),
            owner_references: Some(vec![owner]),
            ..ObjectMeta::default()
        },
        spec: schedule.spec.template.clone(),
        status: None,
    };
    let api: Api<TitanBackup> = Api::namespaced(ctx.client.clone(), ns);
    match api.create(&PostParams::default(), &backup).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) if status.code == 409 => Ok(()),
        Err(source) => Err(Error::Kube {
            op: "create TitanBackup",
            source,
        }),
    }
}

/// The schedule's TitanBackups (by its label).
async fn list_children(
    ctx: &ScheduleContext,
    ns: &str,
    schedule: &str,
) -> Result<Vec<TitanBackup>, Error> {
    let api: Api<TitanBackup> = Api::namespaced(ctx.client.clone(), ns);
    let selector = format!("{SCHEDULE_LABEL}={schedule}");
    let listed = api
        .list(&ListParams::default().labels(&selector))
        .await
        .map_err(Error::kube("list TitanBackups"))?;
    Ok(listed.items)
}

/// Deletes finished TitanBackups of the schedule beyond `limit`.
async fn prune(
    ctx: &ScheduleContext,
    ns: &str,
    children: &[TitanBackup],
    limit: u32,
) -> Result<(), Error> {
    let api: Api<TitanBackup> = Api::namespaced(ctx.client.clone(), ns);
    let mut listed: Vec<Child> = Vec::new();
    for b in children {
        if !listed.iter().any(|c| c.name == b.name_any()) {
            listed.push(Child::new(b.name_any(), b.status.as_ref()));
        }
    }
    for name in to_prune(&listed, limit) {
        match api.delete(&name, &DeleteParams::default()).await {
            Ok(_) => {}
            Err(kube::Error::Api(status)) if status.code == 404 => {}
            Err(source) => {
                return Err(Error::Kube {
                    op: "delete TitanBackup",
                    source,
                });
            }
        }
    }
    Ok(())
}

async fn write_status(
    ctx: &ScheduleContext,
    ns: &str,
    name: &str,
    status: &TitanBackupScheduleStatus,
) -> Result<(), Error> {
    let api: Api<TitanBackupSchedule> = Api::namespaced(ctx.client.clone(), ns);
    let op = "patch TitanBackupSchedule status";
    apply_status(&api, "TitanBackupSchedule", name, status, op).await
}

async fn publish(
    ctx: &ScheduleContext,
    schedule: &TitanBackupSchedule,
    type_: EventType,
    reason: &str,
    note: String,
) {
    publish_event(&ctx.recorder, schedule, type_, reason, "Schedule", note).await;
}
