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

use k8s_openapi::jiff::Timestamp;
use kube::runtime::controller::Action as Requeue;
use kube::runtime::events::EventType;
use object_store::ObjectStore;

use super::observe::KubeState;
use super::{Context, Error, publish, write_degraded_status};
use crate::backup::BackupError;
use crate::backup::resource::S3Destination;
use crate::backup::restore::{CheckedBackup, check_object};
use crate::backup::store::{S3Credentials, StoreConfig, read_credentials, s3_store};
use crate::builders::{BOOTSTRAPPED_KEY, Names};
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
            publish(
                ctx,
                cluster,
                EventType::Warning,
                reason,
                "Restore",
                note.clone(),
            )
            .await;
            write_degraded_status(ctx, cluster, names, reason, &note, now).await?;
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
