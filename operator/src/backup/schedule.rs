//! `TitanBackupSchedule` (`titan.dev/v1alpha1`, short name `tbs`): a
//! TitanBackup created every `intervalSeconds` (the first at once), or at
//! the times a cron `schedule` names (UTC; the first at its first time
//! after the schedule was created).
//!
//! Each run creates one ordinary TitanBackup from `template`, named
//! `SCHEDULE-YYYYMMDDHHMMSS` (UTC), owned by the schedule and labelled
//! [`SCHEDULE_LABEL`]; the TitanBackup controller takes it like any other.
//! Objects in the bucket follow `template.retention`; the TitanBackup
//! objects in the API follow `historyLimit` (finished ones beyond it are
//! deleted, oldest first; a Pending or Running one never is).
//!
//! The pure rules are here (when the next run is due, names, what to
//! prune); the reconcile is in [`super::schedule_controller`].

use std::time::Duration;

use croner::Cron;
use croner::parser::{CronParser, Seconds, Year};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::resource::{TitanBackupSpec, TitanBackupStatus};

/// Label on each TitanBackup a schedule created: the schedule's name.
pub const SCHEDULE_LABEL: &str = "titan.dev/backup-schedule";
/// Shortest interval between two runs.
pub const MIN_INTERVAL_SECONDS: u32 = 300;

/// A recurring backup of one TitanCluster.
// Each printcolumn(...) repeats `type_ = ...`; clippy reads that as a duplicated attribute.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "titan.dev",
    version = "v1alpha1",
    kind = "TitanBackupSchedule",
    plural = "titanbackupschedules",
    shortname = "tbs",
    namespaced,
    status = "TitanBackupScheduleStatus",
    printcolumn(
        name = "Cluster",
        type_ = "string",
        json_path = ".spec.template.cluster"
    ),
    printcolumn(name = "Every", type_ = "integer", json_path = ".spec.intervalSeconds"),
    printcolumn(name = "Schedule", type_ = "string", json_path = ".spec.schedule"),
    printcolumn(name = "Last", type_ = "string", json_path = ".status.lastBackup"),
    printcolumn(name = "Next", type_ = "date", json_path = ".status.nextScheduleTime")
)]
#[serde(rename_all = "camelCase")]
pub struct TitanBackupScheduleSpec {
    /// Seconds between two backups (at least 300, at most a year). The
    /// first backup is taken when the schedule is created. Set this or
    /// `schedule`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 300, max = 31_536_000))]
    pub interval_seconds: Option<u32>,
    /// A 5-field cron pattern in UTC (minute hour day-of-month month
    /// day-of-week, e.g. `0 3 * * *`; names such as `MON` and `@daily`
    /// work). Backups run at the times it names, the first at its first
    /// time after the schedule was created, and never closer than 300 s
    /// apart. Set this or `intervalSeconds`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule: Option<String>,
    /// While true, no backup is created (a running one finishes).
    #[serde(default)]
    pub suspend: bool,
    /// Finished TitanBackup objects of this schedule kept in the API; older
    /// ones are deleted (their objects in the bucket follow
    /// `template.retention`).
    #[serde(default = "default_history_limit")]
    #[schemars(range(min = 1, max = 100))]
    pub history_limit: u32,
    /// The TitanBackup each run creates.
    pub template: TitanBackupSpec,
}

fn default_history_limit() -> u32 {
    3
}

/// What the schedule did last.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TitanBackupScheduleStatus {
    /// When the last TitanBackup was created.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_schedule_time: Option<Time>,
    /// Name of the last TitanBackup created.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_backup: Option<String>,
    /// When the next one is due (unset while suspended).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_schedule_time: Option<Time>,
}

/// When a schedule runs.
#[derive(Debug, Clone)]
pub enum Cadence {
    /// Every so long (at least [`MIN_INTERVAL_SECONDS`]), the first at once.
    Every(Duration),
    /// At the times a cron pattern names, in UTC, never closer than
    /// [`MIN_INTERVAL_SECONDS`].
    Cron(Box<Cron>),
}

impl Cadence {
    /// The cadence `spec` asks for, or why it is not one: exactly one of
    /// `intervalSeconds` and `schedule`, and a 5-field pattern that
    /// matches some time after `now`.
    pub fn of(spec: &TitanBackupScheduleSpec, now: Timestamp) -> Result<Cadence, String> {
        match (spec.interval_seconds, spec.schedule.as_deref()) {
            (Some(_), Some(_)) => Err("set intervalSeconds or schedule, not both".to_string()),
            (None, None) => Err("set intervalSeconds or schedule".to_string()),
            (Some(secs), None) => Ok(Cadence::Every(Duration::from_secs(u64::from(
                secs.max(MIN_INTERVAL_SECONDS),
            )))),
            (None, Some(pattern)) => {
                let parser = CronParser::builder()
                    .seconds(Seconds::Disallowed)
                    .year(Year::Disallowed)
                    .build();
                let cron = parser.parse(pattern).map_err(|e| {
                    format!(
                        "schedule {pattern:?} is not a 5-field cron pattern \
                         (minute hour day-of-month month day-of-week, UTC): {e}"
                    )
                })?;
                if next_time(&cron, now).is_none() {
                    return Err(format!("schedule {pattern:?} never matches"));
                }
                Ok(Cadence::Cron(Box::new(cron)))
            }
        }
    }

    /// When the run after `last` is due (`created`: when the schedule was
    /// created, for the first run); `None` if the pattern names no later
    /// time. An interval is never more than one interval after `now`, even
    /// when the clock stepped back past `last`.
    pub fn next_run(
        &self,
        last: Option<Timestamp>,
        created: Timestamp,
        now: Timestamp,
    ) -> Option<Timestamp> {
        match self {
            Cadence::Every(every) => Some(last.map_or(created, |l| (l + *every).min(now + *every))),
            Cadence::Cron(cron) => {
                let next = next_time(cron, last.unwrap_or(created))?;
                let spaced = last.map(|l| l + Duration::from_secs(u64::from(MIN_INTERVAL_SECONDS)));
                Some(spaced.map_or(next, |s| next.max(s)))
            }
        }
    }
}

/// The first time `cron` names strictly after `after` (whole seconds).
fn next_time(cron: &Cron, after: Timestamp) -> Option<Timestamp> {
    let start = chrono::DateTime::<chrono::Utc>::from_timestamp(after.as_second(), 0)?;
    let next = cron.find_next_occurrence(&start, false).ok()?;
    Timestamp::from_second(next.timestamp()).ok()
}

/// How long until `due`: zero when it has passed.
pub fn until(due: Timestamp, now: Timestamp) -> Duration {
    due.duration_since(now).try_into().unwrap_or(Duration::ZERO)
}

/// `SCHEDULE-YYYYMMDDHHMMSS`: one name per run, sorting by time.
pub fn backup_name(schedule: &str, at: Timestamp) -> String {
    format!("{schedule}-{}", at.strftime("%Y%m%d%H%M%S"))
}

/// One TitanBackup of a schedule, as pruning sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Child {
    /// Object name (sorts by creation time, see [`backup_name`]).
    pub name: String,
    /// Completed or Failed.
    pub finished: bool,
}

impl Child {
    /// From a listed TitanBackup's name and status.
    pub fn new(name: String, status: Option<&TitanBackupStatus>) -> Self {
        Self {
            name,
            finished: status.is_some_and(TitanBackupStatus::is_finished),
        }
    }
}

/// The finished children to delete so that at most `limit` finished ones
/// remain, oldest first. Unfinished children are never deleted.
pub fn to_prune(children: &[Child], limit: u32) -> Vec<String> {
    let mut finished: Vec<&str> = children
        .iter()
        .filter(|c| c.finished)
        .map(|c| c.name.as_str())
        .collect();
    finished.sort_unstable();
    let excess = finished.len().saturating_sub(limit as usize);
    finished[..excess].iter().map(|s| s.to_string()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: i64) -> Timestamp {
        Timestamp::from_second(secs).unwrap_or_else(|e| panic!("{e}"))
    }

    fn spec(interval: Option<u32>, schedule: Option<&str>) -> TitanBackupScheduleSpec {
        let mut spec: TitanBackupScheduleSpec = serde_json::from_value(serde_json::json!({
            "template": {"cluster": "demo",
                "destination": {"s3": {"bucket": "b", "credentialsSecret": "s3"}}}
        }))
        .unwrap_or_else(|e| panic!("{e}"));
        spec.interval_seconds = interval;
        spec.schedule = schedule.map(str::to_string);
        spec
    }

    /// 2026-12-08T00:00:00Z, a Tuesday.
    const DAY0: i64 = 1_796_688_000;

    #[test]
    fn an_interval_runs_at_creation_then_every_interval() {
        let hour = 3600;
        let every = Cadence::of(&spec(Some(3600), None), at(0)).expect("interval");
        let table = [(None, 0), (Some(0), hour), (Some(5 * hour), 6 * hour)];
        for (last, want) in table {
            assert_eq!(
                every.next_run(last.map(at), at(0), at(last.unwrap_or(0))),
                Some(at(want)),
                "{last:?}"
            );
        }
        // Due at once when created; a clock that went back waits at most an interval.
        assert_eq!(until(at(0), at(10)), Duration::ZERO);
        assert_eq!(
            until(
                every.next_run(Some(at(100)), at(0), at(50)).expect("next"),
                at(50)
            ),
            Duration::from_secs(3600)
        );
        let short = Cadence::of(&spec(Some(1), None), at(0)).expect("short");
        assert_eq!(
            short.next_run(Some(at(0)), at(0), at(0)),
            Some(at(300)),
            "intervals below the minimum count as the minimum"
        );
    }

    #[test]
    fn a_cron_schedule_runs_at_the_times_it_names_in_utc_at_most_every_five_minutes() {
        let h = 3600;
        // (pattern, last run, created, next run), seconds from DAY0
        let table: [(&str, Option<i64>, i64, i64); 7] = [
            ("0 3 * * *", None, 0, 3 * h),
            ("0 3 * * *", None, 3 * h, 27 * h),
            ("0 3 * * *", Some(3 * h), 0, 27 * h),
            ("@daily", Some(10), 0, 24 * h),
            ("30 1 * * MON", None, 0, 6 * 24 * h + h + 1800),
            ("*/5 * * * *", Some(300), 0, 600),
            // Every minute asked for: spaced to 300 s after the last run.
            ("* * * * *", Some(60), 0, 360),
        ];
        for (pattern, last, created, want) in table {
            let cron = Cadence::of(&spec(None, Some(pattern)), at(DAY0)).expect(pattern);
            let got = cron.next_run(
                last.map(|l| at(DAY0 + l)),
                at(DAY0 + created),
                at(DAY0 + created),
            );
            assert_eq!(got, Some(at(DAY0 + want)), "{pattern} last {last:?}");
        }
    }

    #[test]
    fn a_schedule_needs_exactly_one_cadence_and_a_pattern_that_can_match() {
        let table: [(Option<u32>, Option<&str>, &str); 6] = [
            (Some(3600), Some("0 3 * * *"), "not both"),
            (None, None, "set intervalSeconds or schedule"),
            (None, Some("0 3 * *"), "5-field cron pattern"),
            (None, Some("0 0 3 * * *"), "5-field cron pattern"),
            (None, Some("61 * * * *"), "5-field cron pattern"),
            (None, Some("0 0 30 2 *"), "never matches"),
        ];
        for (interval, schedule, want) in table {
            let err = Cadence::of(&spec(interval, schedule), at(DAY0)).expect_err("refused");
            assert!(err.contains(want), "{interval:?} {schedule:?}: {err}");
        }
    }

    #[test]
    fn names_sort_by_time_and_pruning_keeps_the_newest_finished() {
        let a = backup_name("nightly", at(1_765_000_000));
        let b = backup_name("nightly", at(1_765_086_400));
        assert_eq!(a, "nightly-20251206054640");
        assert!(a < b);
        let child = |name: &str, finished: bool| Child {
            name: name.to_string(),
            finished,
        };
        let children = [
            child("s-20261203000000", true),
            child("s-20261201000000", true),
            child("s-20261205000000", false),
            child("s-20261202000000", true),
            child("s-20261204000000", true),
        ];
        let table: [(u32, &[&str]); 3] = [
            (
                1,
                &["s-20261201000000", "s-20261202000000", "s-20261203000000"],
            ),
            (3, &["s-20261201000000"]),
            (4, &[]),
        ];
        for (limit, want) in table {
            assert_eq!(to_prune(&children, limit), want, "limit {limit}");
        }
    }
}
