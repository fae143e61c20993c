//! TitanBackupSchedule reconciles against the mock API server: each lists
//! the exact API calls a reconcile must make (see `fixtures`).

use std::sync::Arc;
use std::time::Duration;

use http::Method;
use kube::Client;
use kube::runtime::controller::Action as Requeue;
use kube::runtime::events::{Recorder, Reporter};
use serde_json::{Value, json};

use super::schedule::TitanBackupSchedule;
use super::schedule_controller::{ScheduleContext, reconcile};
use crate::fixtures::{self, Expect, Reply};

const SCHEDULE: &str = "/apis/titan.dev/v1alpha1/namespaces/prod/titanbackupschedules/nightly";
const STATUS: &str = "/apis/titan.dev/v1alpha1/namespaces/prod/titanbackupschedules/nightly/status";
const BACKUPS: &str = "/apis/titan.dev/v1alpha1/namespaces/prod/titanbackups";
const EVENTS: &str = "/apis/events.k8s.io/v1/namespaces/prod/events";
/// The run at `fixtures::now()` (2027-01-15T08:00:00Z).
const RUN: &str = "nightly-20270115080000";

fn schedule_json(spec: Value, status: Option<Value>) -> Value {
    let mut base = json!({"intervalSeconds": 3600, "template": {"cluster": "demo",
        "destination": {"s3": {"bucket": "b", "credentialsSecret": "s3"}}}});
    if let (Some(base), Some(extra)) = (base.as_object_mut(), spec.as_object()) {
        base.extend(extra.clone());
    }
    let mut v = json!({
        "apiVersion": "titan.dev/v1alpha1", "kind": "TitanBackupSchedule",
        "metadata": {"name": "nightly", "namespace": "prod", "uid": "sched-uid"},
        "spec": base,
    });
    if let Some(status) = status {
        v["status"] = status;
    }
    v
}

fn schedule(v: &Value) -> TitanBackupSchedule {
    serde_json::from_value(v.clone()).unwrap_or_else(|e| panic!("schedule: {e}"))
}

async fn run(object: Value, expects: Vec<Expect>) -> Requeue {
    let (service, handle) = tower_test::mock::pair();
    let client = Client::new(service, "default");
    let reporter = Reporter {
        controller: "titan-operator".to_string(),
        instance: None,
    };
    let ctx = Arc::new(ScheduleContext {
        client: client.clone(),
        recorder: Recorder::new(client, reporter),
        clock: Arc::new(fixtures::now),
    });
    let schedule = Arc::new(schedule(&object));
    fixtures::reconcile_against(handle, expects, reconcile(schedule, ctx)).await
}

fn backup_item(name: &str, phase: Option<&str>) -> Value {
    let mut v = json!({
        "apiVersion": "titan.dev/v1alpha1", "kind": "TitanBackup",
        "metadata": {"name": name, "namespace": "prod"},
        "spec": {"cluster": "demo", "destination": {"s3": {"bucket": "b", "credentialsSecret": "s3"}}},
    });
    if let Some(phase) = phase {
        v["status"] = json!({"phase": phase});
    }
    v
}

fn check_created(b: &Value) {
    assert_eq!(b["metadata"]["name"], RUN);
    assert_eq!(
        b["metadata"]["labels"]["titan.dev/backup-schedule"],
        "nightly"
    );
    let owner = &b["metadata"]["ownerReferences"][0];
    assert_eq!(
        (&owner["kind"], &owner["uid"], &owner["controller"]),
        (
            &json!("TitanBackupSchedule"),
            &json!("sched-uid"),
            &json!(true)
        )
    );
    assert_eq!(b["spec"]["cluster"], "demo");
}

/// Create the run (`create` answers with `reply`), record it, prune down
/// to the history limit of 3, and say so.
fn first_run_calls(object: &Value, create: Reply) -> Vec<Expect> {
    run_calls(object, create, "2027-01-15T09:00:00Z")
}

/// [`first_run_calls`] with the next run expected at `next`.
fn run_calls(object: &Value, create: Reply, next: &'static str) -> Vec<Expect> {
    let listed = json!({"apiVersion": "titan.dev/v1alpha1", "kind": "TitanBackupList",
    "metadata": {}, "items": [
        backup_item("nightly-20270111080000", Some("Completed")),
        backup_item("nightly-20270112080000", Some("Failed")),
        backup_item("nightly-20270113080000", Some("Completed")),
        backup_item("nightly-20270114080000", Some("Completed")),
        backup_item("nightly-20270114090000", Some("Running")),
    ]});
    vec![
        Expect::new(Method::GET, SCHEDULE, Reply::Json(object.clone())),
        Expect::new(Method::GET, BACKUPS, Reply::Json(listed)),
        Expect::new(Method::POST, BACKUPS, create).check(check_created),
        Expect::new(Method::PATCH, STATUS, Reply::Json(object.clone())).check(move |b| {
            assert_eq!(b["status"]["lastBackup"], RUN);
            assert_eq!(b["status"]["lastScheduleTime"], "2027-01-15T08:00:00Z");
            assert_eq!(b["status"]["nextScheduleTime"], next);
        }),
        Expect::new(
            Method::DELETE,
            format!("{BACKUPS}/nightly-20270111080000"),
            Reply::Json(backup_item("nightly-20270111080000", Some("Completed"))),
        ),
        Expect::new(Method::POST, EVENTS, Reply::Echo).check(|b| {
            assert_eq!(b["reason"], "BackupScheduled");
        }),
    ]
}

#[tokio::test]
async fn a_new_schedule_creates_its_first_backup_at_once_and_prunes_old_runs() {
    let object = schedule_json(json!({}), None);
    let calls = first_run_calls(&object, Reply::Echo);
    let requeue = run(object, calls).await;
    assert_eq!(requeue, Requeue::requeue(Duration::from_secs(3600)));
}

#[tokio::test]
async fn a_retried_run_whose_backup_exists_counts_as_created() {
    let object = schedule_json(json!({}), None);
    let calls = first_run_calls(&object, Reply::Conflict);
    run(object, calls).await;
}

#[tokio::test]
async fn a_run_created_before_a_failed_status_write_is_recorded_not_repeated() {
    // Due at 07:00; an attempt created its run at 07:00:05 and then failed
    // to write status. Now (08:00) that run is recorded, none is created,
    // and the next one is due an interval after it.
    let object = schedule_json(
        json!({}),
        Some(
            json!({"lastScheduleTime": "2027-01-15T06:00:00Z", "lastBackup": "nightly-20270115060000"}),
        ),
    );
    let mut earlier = backup_item("nightly-20270115070005", Some("Running"));
    earlier["metadata"]["creationTimestamp"] = json!("2027-01-15T07:00:05Z");
    let mut older = backup_item("nightly-20270115060000", Some("Completed"));
    older["metadata"]["creationTimestamp"] = json!("2027-01-15T06:00:00Z");
    let listed = json!({"apiVersion": "titan.dev/v1alpha1", "kind": "TitanBackupList",
        "metadata": {}, "items": [older, earlier]});
    let calls = vec![
        Expect::new(Method::GET, SCHEDULE, Reply::Json(object.clone())),
        Expect::new(Method::GET, BACKUPS, Reply::Json(listed)),
        Expect::new(Method::PATCH, STATUS, Reply::Json(object.clone())).check(|b| {
            assert_eq!(b["status"]["lastBackup"], "nightly-20270115070005");
            assert_eq!(b["status"]["lastScheduleTime"], "2027-01-15T07:00:05Z");
            assert_eq!(b["status"]["nextScheduleTime"], "2027-01-15T08:00:05Z");
        }),
        Expect::new(Method::POST, EVENTS, Reply::Echo).check(|b| {
            let note = b["note"].as_str().unwrap_or_default();
            assert!(note.contains("created by an earlier attempt"), "{note}");
        }),
    ];
    let requeue = run(object, calls).await;
    assert_eq!(requeue, Requeue::requeue(Duration::from_secs(5)));
}

#[tokio::test]
async fn a_schedule_waits_for_its_next_run_without_any_write() {
    // The last run 100 s before now: 3500 s to go, as the status says.
    let object = schedule_json(
        json!({}),
        Some(
            json!({"lastScheduleTime": "2027-01-15T07:58:20Z", "lastBackup": "x",
            "nextScheduleTime": "2027-01-15T08:58:20Z"}),
        ),
    );
    let calls = vec![Expect::new(
        Method::GET,
        SCHEDULE,
        Reply::Json(object.clone()),
    )];
    let requeue = run(object, calls).await;
    assert_eq!(requeue, Requeue::requeue(Duration::from_secs(3500)));
}

#[tokio::test]
async fn a_suspended_schedule_creates_nothing_and_shows_no_next_run() {
    let object = schedule_json(
        json!({"suspend": true}),
        Some(json!({"nextScheduleTime": "2027-01-15T09:00:00Z"})),
    );
    let calls = vec![
        Expect::new(Method::GET, SCHEDULE, Reply::Json(object.clone())),
        Expect::new(Method::PATCH, STATUS, Reply::Json(object.clone())).check(|b| {
            assert!(b["status"].get("nextScheduleTime").is_none(), "{b}");
        }),
    ];
    let requeue = run(object, calls).await;
    assert_eq!(requeue, Requeue::await_change());
}

/// A cron schedule `pattern` (no interval) created at `created`.
fn cron_json(pattern: &str, created: &str, status: Option<Value>) -> Value {
    let mut v = schedule_json(
        json!({"intervalSeconds": null, "schedule": pattern}),
        status,
    );
    v["metadata"]["creationTimestamp"] = json!(created);
    v
}

#[tokio::test]
async fn a_cron_schedule_shows_its_first_time_and_waits_for_it() {
    // Created at 07:30 for 09:00 daily; now is 08:00.
    let object = cron_json("0 9 * * *", "2027-01-15T07:30:00Z", None);
    let calls = vec![
        Expect::new(Method::GET, SCHEDULE, Reply::Json(object.clone())),
        Expect::new(Method::PATCH, STATUS, Reply::Json(object.clone())).check(|b| {
            assert_eq!(b["status"]["nextScheduleTime"], "2027-01-15T09:00:00Z");
            assert!(b["status"].get("lastBackup").is_none(), "{b}");
        }),
    ];
    let requeue = run(object, calls).await;
    assert_eq!(requeue, Requeue::requeue(Duration::from_secs(3600)));
}

#[tokio::test]
async fn a_cron_schedule_runs_at_its_time_and_names_the_next_one() {
    // Daily at 08:00, created the day before; now is 08:00.
    let object = cron_json("0 8 * * *", "2027-01-14T12:00:00Z", None);
    let calls = run_calls(&object, Reply::Echo, "2027-01-16T08:00:00Z");
    let requeue = run(object, calls).await;
    assert_eq!(requeue, Requeue::requeue(Duration::from_secs(24 * 3600)));
}

#[tokio::test]
async fn an_invalid_cadence_is_a_warning_and_nothing_runs() {
    for (spec, reason) in [
        (json!({"schedule": "0 8 * * *"}), "not both"),
        (
            json!({"intervalSeconds": null, "schedule": "0 8 * *"}),
            "5-field cron pattern",
        ),
        (
            json!({"intervalSeconds": null}),
            "set intervalSeconds or schedule",
        ),
    ] {
        let object = schedule_json(spec, None);
        let calls = vec![
            Expect::new(Method::GET, SCHEDULE, Reply::Json(object.clone())),
            Expect::new(Method::POST, EVENTS, Reply::Echo).check(move |b| {
                assert_eq!(b["reason"], "InvalidSchedule");
                assert_eq!(b["type"], "Warning");
                let note = b["note"].as_str().unwrap_or_default();
                assert!(note.contains(reason), "{note}");
            }),
        ];
        let requeue = run(object, calls).await;
        assert_eq!(requeue, Requeue::await_change());
    }
}
