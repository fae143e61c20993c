//! `TitanBackupSchedule` (`titan.dev/v1alpha1`, short name `tbs`): a
//! TitanBackup created every `intervalSeconds`, the first at once.
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
    printcolumn(name = "Last", type_ = "string", json_path = ".status.lastBackup"),
    printcolumn(name = "Next", type_ = "date", json_path = ".status.nextScheduleTime")
)]
#[serde(rename_all = "camelCase")]
pub struct TitanBackupScheduleSpec {
    /// Seconds between two backups (at least 300, at most a year). The
    /// first backup is taken when the schedule is created.
    #[schemars(range(min = 300, max = 31_536_000))]
    pub interval_seconds: u32,
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

/// How long until the next run: zero when one is due now (never ran, or
/// the interval has passed since the last run).
pub fn until_next_run(last: Option<Timestamp>, interval_seconds: u32, now: Timestamp) -> Duration {
    let Some(last) = last else {
        return Duration::ZERO;
    };
    let interval = Duration::from_secs(u64::from(interval_seconds.max(MIN_INTERVAL_SECONDS)));
    let elapsed = now
        .duration_since(last)
        .try_into()
        .unwrap_or(Duration::ZERO);
    interval.saturating_sub(elapsed)
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

    #[test]
    fn a_run_is_due_at_once_then_every_interval() {
        let hour = 3600;
        let table = [
            (None, 0, 0),
            (Some(0), 0, hour),
            (Some(0), 1800, 1800),
            (Some(0), hour, 0),
            (Some(0), 5 * hour, 0),
            // A clock that went back never waits longer than one interval.
            (Some(100), 50, hour),
        ];
        for (last, now, want) in table {
            let got = until_next_run(last.map(at), 3600, at(now));
            assert_eq!(got, Duration::from_secs(want as u64), "{last:?} {now}");
        }
        assert_eq!(
            until_next_run(Some(at(0)), 1, at(10)),
            Duration::from_secs(290),
            "intervals below the minimum count as the minimum"
        );
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
