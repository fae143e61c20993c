//! `spec.bootstrap.fromBackup`, the reconcile side: a cluster restored from
//! a backup gets its objects only after the backup checked out, so that a
//! missing, unreadable, damaged or too-new backup leaves a clear condition
//! and event and no pod, volume or half-restored member.
//!
//! The check ([`crate::backup::restore::check_object`]) reads the whole
//! object once, with bounded memory. It runs only while the cluster has
//! neither a StatefulSet nor a bootstrapped ConfigMap: an existing cluster
//! is never checked again, nor overwritten.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use kube::runtime::controller::Action as Requeue;
use kube::runtime::events::EventType;
use object_store::ObjectStore;

use super::observe::KubeState;
use super::status::DEGRADED;
use super::{Context, Error, degrade, publish};
use crate::backup::BackupError;
use crate::backup::resource::S3Destination;
use crate::backup::restore::{CheckedBackup, check_object};
use crate::backup::store::{S3Credentials, StoreConfig, read_credentials, s3_store};
use crate::builders::{BOOTSTRAPPED_KEY, Names, RESTORE_CONTAINER};
use crate::crd::{BackupSource, TitanCluster};

/// How long a failed check waits before the next (the user uploads the
/// object, fixes the Secret, the bucket comes back).
pub const RECHECK_AFTER: Duration = Duration::from_secs(30);

/// Makes the store a backup is read from (S3 in production, in memory in
/// tests).
pub type StoreFactory = Arc<
    dyn Fn(&S3Destination, &S3Credentials) -> Result<Arc<dyn ObjectStore>, BackupError>
        + Send
        + Sync,
>;

/// The production [`StoreFactory`]: S3 with the default retries and timeouts.
pub fn s3_stores() -> StoreFactory {
    Arc::new(|dest, credentials| s3_store(dest, credentials, &StoreConfig::default()))
}

/// `None` to go on with the reconcile (nothing to restore, the cluster
/// exists, or the backup checked out); otherwise the requeue after a failed
/// check, with the Degraded condition written and a Warning event.
pub(super) async fn gate(
    ctx: &Context,
    cluster: &TitanCluster,
    names: &Names,
    state: &KubeState,
    now: Timestamp,
) -> Result<Option<Requeue>, Error> {
    let Some(bootstrap) = &cluster.spec.bootstrap else {
        return Ok(None);
    };
    if state.statefulset.is_some() || bootstrapped(state) {
        return Ok(None);
    }
    let source = &bootstrap.from_backup;
    match check(ctx, &names.namespace, source).await? {
        Ok(checked) => {
            let note = format!(
                "s3://{}/{}: {} bytes, snapshot format {} at index {}, sha256 {}",
                source.s3.bucket,
                source.s3.key,
                checked.digest.size_bytes,
                checked.header.version,
                checked.header.index,
                checked.digest.sha256
            );
            publish(
                ctx,
                cluster,
                EventType::Normal,
                "BackupVerified",
                "Restore",
                note,
            )
            .await;
            Ok(None)
        }
        Err(failure) => {
            let reason = failure.reason();
            let note = format!("cannot restore from backup: {failure}");
            tracing::warn!(cluster = %names.cluster, %reason, %failure, "backup check failed");
            degrade(ctx, cluster, names, (reason, "Restore"), &note, now).await?;
            Ok(Some(Requeue::requeue(RECHECK_AFTER)))
        }
    }
}

fn bootstrapped(state: &KubeState) -> bool {
    state
        .configmap
        .as_ref()
        .and_then(|c| c.data.as_ref())
        .and_then(|d| d.get(BOOTSTRAPPED_KEY))
        .is_some_and(|v| v == "true")
}

/// The outer error is an API server failure (retried by the controller);
/// the inner one is the backup's.
async fn check(
    ctx: &Context,
    namespace: &str,
    source: &BackupSource,
) -> Result<Result<CheckedBackup, BackupError>, Error> {
    let s3 = &source.s3;
    let credentials = match read_credentials(&ctx.client, namespace, &s3.credentials_secret).await?
    {
        Ok(credentials) => credentials,
        Err(failure) => return Ok(Err(failure)),
    };
    let checked = async {
        let store = (ctx.backup_stores)(&s3.bucket_location(), &credentials)?;
        check_object(
            store.as_ref(),
            &s3.bucket,
            &s3.key,
            source.sha256.as_deref(),
        )
        .await
    };
    Ok(checked.await)
}

/// The first initial member whose `restore-backup` init container failed
/// (exited non-zero, now or last time), with what it said: the object went
/// away or changed after the operator's check, or the download broke. The
/// container's message is its last log lines (`FallbackToLogsOnError`).
pub fn fetch_failure(pods: &[Pod]) -> Option<(String, String)> {
    pods.iter().find_map(|pod| {
        let statuses = pod.status.as_ref()?.init_container_statuses.as_ref()?;
        let status = statuses.iter().find(|s| s.name == RESTORE_CONTAINER)?;
        let failed = [status.state.as_ref(), status.last_state.as_ref()]
            .into_iter()
            .flatten()
            .filter_map(|s| s.terminated.as_ref())
            .find(|t| t.exit_code != 0)?;
        let message = failed
            .message
            .as_deref()
            .map(str::trim)
            .filter(|m| !m.is_empty())
            .unwrap_or("no message")
            .to_string();
        Some((pod.name_any(), message))
    })
}

/// Until bootstrap, a `restore-backup` init container that failed: its
/// note (`POD could not fetch the backup: MESSAGE`), which `build_status`
/// turns into Degraded/`RestoreFailed`. A Warning event is published the
/// first time the note appears in the condition.
pub(super) async fn fetch_failure_note(
    ctx: &Context,
    cluster: &TitanCluster,
    state: &KubeState,
) -> Option<String> {
    if cluster.spec.bootstrap.is_none() || bootstrapped(state) {
        return None;
    }
    let (pod, message) = fetch_failure(&state.pods)?;
    let note = format!("{pod} could not fetch the backup: {message}");
    let already = cluster.status.as_ref().is_some_and(|s| {
        s.conditions
            .iter()
            .any(|c| c.type_ == DEGRADED && c.reason == FETCH_FAILED && c.message == note)
    });
    if !already {
        publish(
            ctx,
            cluster,
            EventType::Warning,
            FETCH_FAILED,
            "Restore",
            note.clone(),
        )
        .await;
    }
    Some(note)
}

/// Condition and event reason of a failed fetch.
pub const FETCH_FAILED: &str = "RestoreFailed";

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(name: &str, init: serde_json::Value) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": name},
            "status": {"initContainerStatuses": init},
        }))
        .unwrap_or_else(|e| panic!("{e}"))
    }

    fn init(state: serde_json::Value, last: serde_json::Value) -> serde_json::Value {
        json!([{"name": "restore-backup", "image": "i", "imageID": "", "ready": false,
                "restartCount": 1, "state": state, "lastState": last}])
    }

    #[test]
    fn a_failed_fetch_is_found_with_its_message_and_nothing_else_is() {
        let crashed = init(
            json!({"waiting": {"reason": "CrashLoopBackOff"}}),
            json!({"terminated": {"exitCode": 1, "message": "Error: BackupNotFound: no backup at s3://b/k\n"}}),
        );
        let table = [
            (vec![pod("t-0", json!([]))], None),
            (
                vec![pod("t-0", init(json!({"running": {}}), json!({})))],
                None,
            ),
            (
                vec![pod(
                    "t-0",
                    init(json!({"terminated": {"exitCode": 0}}), json!({})),
                )],
                None,
            ),
            (
                vec![pod("t-0", json!([])), pod("t-1", crashed)],
                Some(("t-1", "Error: BackupNotFound: no backup at s3://b/k")),
            ),
            (
                vec![pod(
                    "t-2",
                    init(json!({"terminated": {"exitCode": 2}}), json!({})),
                )],
                Some(("t-2", "no message")),
            ),
        ];
        for (pods, want) in table {
            let got = fetch_failure(&pods);
            let got = got.as_ref().map(|(p, m)| (p.as_str(), m.as_str()));
            assert_eq!(got, want);
        }
    }
}
