//! The TitanBackup controller: one-shot. A backup without a finished phase is
//! taken once (Running → Completed or Failed) and its outcome written to
//! status with a Kubernetes Event; a Completed or Failed backup is never
//! taken again. Only a cluster without a ready member leaves the backup
//! Pending and retries later.
//!
//! Talks to the API server (TitanCluster, Secret, TitanBackup status,
//! Events) and hands the data path to [`super::upload`]. Never modifies the
//! TitanCluster or its pods.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::Api;
use kube::runtime::controller::Action as Requeue;
use kube::runtime::events::{EventType, Recorder};
use kube::{Client, ResourceExt};

use super::BackupError;
use super::naming::backup_keys;
use super::resource::{BackupPhase, TitanBackup, TitanBackupStatus};
use super::store::{StoreConfig, read_credentials, s3_store};
use super::upload::{BackupOutcome, BackupRequest, StreamTls, UploadConfig, take_backup};
use crate::builders::{GRPC_PORT, Names};
use crate::crd::{MemberRole, TitanCluster, TitanClusterStatus};
use crate::kube_io::{apply_status, publish_event, secret_text};
use crate::reconcile::Error;
use crate::reconcile::certs::operator_identity;
use crate::reconcile::status::set_condition;

/// Condition: the backup is in the bucket.
pub const COMPLETED: &str = "Completed";
/// Condition: the backup failed; the reason says why.
pub const FAILED: &str = "Failed";

/// The client gRPC endpoint of pod `member` of a cluster.
pub type EndpointFn = dyn Fn(&Names, &str, bool) -> String + Send + Sync;

/// Shared state of every TitanBackup reconcile.
#[derive(Clone)]
pub struct BackupContext {
    /// Kubernetes client.
    pub client: Client,
    /// Event recorder.
    pub recorder: Recorder,
    /// Data path bounds.
    pub upload: UploadConfig,
    /// S3 retries and timeouts.
    pub store: StoreConfig,
    /// Where a member's client gRPC port is ([`member_endpoint`] in production).
    pub endpoint: Arc<EndpointFn>,
    /// Clock, injectable so tests are deterministic.
    pub clock: Arc<dyn Fn() -> Timestamp + Send + Sync>,
    /// Retry delay while the cluster has no ready member.
    pub requeue_no_member: Duration,
}

/// `http://POD.NAME-peers.NAMESPACE.svc:7001`, `https://` when `tls`.
pub fn member_endpoint(names: &Names, member: &str, tls: bool) -> String {
    let scheme = if tls { "https" } else { "http" };
    format!(
        "{scheme}://{member}.{}.{}.svc:{GRPC_PORT}",
        names.peers_service(),
        names.namespace
    )
}

/// The member to stream from: a ready follower with the least lag, else the
/// ready leader. Learners are never chosen (they may be far behind).
pub fn pick_member(status: Option<&TitanClusterStatus>) -> Option<String> {
    let members = &status?.members;
    let follower = members
        .iter()
        .filter(|m| m.ready && m.role == MemberRole::Follower)
        .min_by_key(|m| (m.lag_entries, m.name.clone()));
    let leader = || {
        members
            .iter()
            .find(|m| m.ready && m.role == MemberRole::Leader)
    };
    follower.or_else(leader).map(|m| m.name.clone())
}

/// Controller entry point.
pub async fn reconcile(
    backup: Arc<TitanBackup>,
    ctx: Arc<BackupContext>,
) -> Result<Requeue, Error> {
    if backup
        .status
        .as_ref()
        .is_some_and(TitanBackupStatus::is_finished)
    {
        return Ok(Requeue::await_change());
    }
    let ns = backup.namespace().ok_or(Error::MissingField("namespace"))?;
    // The watch cache may lag our own last status write (the event of the
    // Running write can trigger this reconcile before the Completed write
    // reaches the cache): read the object itself before taking a backup.
    let api: Api<TitanBackup> = Api::namespaced(ctx.client.clone(), &ns);
    let fresh = api
        .get_opt(&backup.name_any())
        .await
        .map_err(Error::kube("get TitanBackup"))?;
    let Some(backup) = fresh.filter(|b| {
        !b.status
            .as_ref()
            .is_some_and(TitanBackupStatus::is_finished)
    }) else {
        return Ok(Requeue::await_change());
    };
    let started = (ctx.clock)();
    let running = TitanBackupStatus {
        phase: Some(BackupPhase::Running),
        start_time: Some(Time(started)),
        ..TitanBackupStatus::default()
    };
    write_status(&ctx, &backup, &ns, &running).await?;
    let result = run(&ctx, &backup, &ns, started).await?;
    let now = (ctx.clock)();
    let generation = backup.metadata.generation;
    let (status, requeue) = match result {
        Ok((member, outcome)) => {
            let note = completed_note(&outcome);
            publish(&ctx, &backup, EventType::Normal, "BackupCompleted", note).await;
            if let Some(e) = &outcome.retention_error {
                let note = format!("retention failed: {e}");
                publish(&ctx, &backup, EventType::Warning, "RetentionFailed", note).await;
            }
            let status = completed_status(running, member, &outcome, generation, now);
            (status, Requeue::await_change())
        }
        Err(error) => {
            let reason = error.reason();
            publish(&ctx, &backup, EventType::Warning, reason, error.to_string()).await;
            if matches!(error, BackupError::NoReadyMember { .. }) {
                let status = pending_status(&error, generation, now);
                (status, Requeue::requeue(ctx.requeue_no_member))
            } else {
                let status = failed_status(running, &error, generation, now);
                (status, Requeue::await_change())
            }
        }
    };
    write_status(&ctx, &backup, &ns, &status).await?;
    Ok(requeue)
}

/// Logs, records a Warning event and retries later (API server errors only:
/// backup failures are recorded in status, not returned).
pub fn error_policy(backup: Arc<TitanBackup>, error: &Error, ctx: Arc<BackupContext>) -> Requeue {
    tracing::warn!(backup = %backup.name_any(), %error, "backup reconcile failed");
    let note = error.to_string();
    tokio::spawn(async move {
        publish(&ctx, &backup, EventType::Warning, "ReconcileFailed", note).await;
    });
    Requeue::requeue(Duration::from_secs(15))
}

/// Resolves cluster, member, credentials and store, then takes the backup.
/// The outer error is an API server failure (retried); the inner one is the
/// backup's outcome.
async fn run(
    ctx: &BackupContext,
    backup: &TitanBackup,
    ns: &str,
    started: Timestamp,
) -> Result<Result<(String, BackupOutcome), BackupError>, Error> {
    let spec = &backup.spec;
    let s3 = &spec.destination.s3;
    let clusters: Api<TitanCluster> = Api::namespaced(ctx.client.clone(), ns);
    let Some(cluster) = clusters
        .get_opt(&spec.cluster)
        .await
        .map_err(Error::kube("get TitanCluster"))?
    else {
        return Ok(Err(BackupError::ClusterNotFound {
            namespace: ns.to_string(),
            cluster: spec.cluster.clone(),
        }));
    };
    let Some(member) = pick_member(cluster.status.as_ref()) else {
        return Ok(Err(BackupError::NoReadyMember {
            cluster: spec.cluster.clone(),
        }));
    };
    let credentials = match read_credentials(&ctx.client, ns, &s3.credentials_secret).await? {
        Ok(credentials) => credentials,
        Err(failure) => return Ok(Err(failure)),
    };
    let names = Names::of(&cluster);
    let tls = cluster.spec.tls_enabled();
    let endpoint = (ctx.endpoint)(&names, &member, tls);
    let stream_tls = match stream_tls(&ctx.client, &cluster, &names, started).await? {
        Ok(settings) => settings,
        Err(detail) => return Ok(Err(BackupError::SnapshotStream { endpoint, detail })),
    };
    let request = BackupRequest {
        namespace: ns.to_string(),
        cluster: spec.cluster.clone(),
        backup: backup.name_any(),
        endpoint,
        tls: stream_tls,
        member: member.clone(),
        bucket: s3.bucket.clone(),
        keys: backup_keys(&s3.prefix, ns, &spec.cluster, &backup.name_any(), started),
        keep: spec.retention.as_ref().map(|r| r.keep),
    };
    let outcome = async {
        let store = s3_store(s3, &credentials, &ctx.store)?;
        take_backup(store.as_ref(), &request, &ctx.upload).await
    };
    Ok(outcome.await.map(|o| (member, o)))
}

/// How to stream from a member of `cluster`: nothing without `spec.tls`;
/// else verified with the CA certificate of the member Secret and, under
/// `spec.tls.clientAuth`, presenting the operator's client certificate.
/// The inner `Err` says which Secret is missing what.
async fn stream_tls(
    client: &Client,
    cluster: &TitanCluster,
    names: &Names,
    now: Timestamp,
) -> Result<Result<Option<StreamTls>, String>, Error> {
    if !cluster.spec.tls_enabled() {
        return Ok(Ok(None));
    }
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &names.namespace);
    let secret = secrets
        .get_opt(&names.tls_secret())
        .await
        .map_err(Error::kube("get member certificates secret"))?;
    let Some(ca_pem) = secret.and_then(|s| secret_text(&s, crate::tls::CA_CERT_KEY)) else {
        return Ok(Err(format!(
            "the cluster uses TLS but Secret {} has no {}",
            names.tls_secret(),
            crate::tls::CA_CERT_KEY
        )));
    };
    let identity = if cluster.spec.client_auth() {
        match operator_identity(client, names, now.as_second()).await? {
            Some(identity) => Some(identity),
            None => {
                return Ok(Err(format!(
                    "the cluster requires client certificates but its CA Secret {} is missing",
                    names.ca_secret()
                )));
            }
        }
    } else {
        None
    };
    Ok(Ok(Some(StreamTls { ca_pem, identity })))
}

fn completed_note(outcome: &BackupOutcome) -> String {
    let m = &outcome.manifest;
    let mut note = format!(
        "{} bytes at revision {} from {} to {} (sha256 {})",
        m.size_bytes, m.revision, m.member, m.snapshot_key, m.sha256
    );
    if !outcome.expired.is_empty() {
        note.push_str(&format!(
            "; retention deleted {} older backup(s)",
            outcome.expired.len()
        ));
    }
    note
}

/// Status of a completed backup.
pub fn completed_status(
    running: TitanBackupStatus,
    member: String,
    outcome: &BackupOutcome,
    generation: Option<i64>,
    now: Timestamp,
) -> TitanBackupStatus {
    let m = &outcome.manifest;
    let mut status = TitanBackupStatus {
        phase: Some(BackupPhase::Completed),
        object_key: Some(m.snapshot_key.clone()),
        manifest_key: super::naming::manifest_key_of(&m.snapshot_key),
        size_bytes: Some(m.size_bytes),
        revision: Some(m.revision),
        sha256: Some(m.sha256.clone()),
        member: Some(member),
        completion_time: Some(Time(now)),
        ..running
    };
    let message = format!("{} bytes at revision {}", m.size_bytes, m.revision);
    let c = &mut status.conditions;
    set_condition(
        c,
        COMPLETED,
        true,
        "BackupCompleted",
        &message,
        generation,
        now,
    );
    set_condition(
        c,
        FAILED,
        false,
        "BackupCompleted",
        &message,
        generation,
        now,
    );
    status
}

/// Status of a failed backup: the reason names the cause.
pub fn failed_status(
    running: TitanBackupStatus,
    error: &BackupError,
    generation: Option<i64>,
    now: Timestamp,
) -> TitanBackupStatus {
    let mut status = TitanBackupStatus {
        phase: Some(BackupPhase::Failed),
        completion_time: Some(Time(now)),
        ..running
    };
    let (reason, message) = (error.reason(), error.to_string());
    let c = &mut status.conditions;
    set_condition(c, FAILED, true, reason, &message, generation, now);
    set_condition(c, COMPLETED, false, reason, &message, generation, now);
    status
}

/// Status while waiting for a ready member.
pub fn pending_status(
    error: &BackupError,
    generation: Option<i64>,
    now: Timestamp,
) -> TitanBackupStatus {
    let mut status = TitanBackupStatus {
        phase: Some(BackupPhase::Pending),
        ..TitanBackupStatus::default()
    };
    let (reason, message) = (error.reason(), error.to_string());
    set_condition(
        &mut status.conditions,
        COMPLETED,
        false,
        reason,
        &message,
        generation,
        now,
    );
    status
}

/// Server-side apply of the status subresource.
async fn write_status(
    ctx: &BackupContext,
    backup: &TitanBackup,
    ns: &str,
    status: &TitanBackupStatus,
) -> Result<(), Error> {
    let api: Api<TitanBackup> = Api::namespaced(ctx.client.clone(), ns);
    let op = "patch TitanBackup status";
    apply_status(&api, "TitanBackup", &backup.name_any(), status, op).await
}

/// Publishes an event; failing to record one never fails the reconcile.
async fn publish(
    ctx: &BackupContext,
    backup: &TitanBackup,
    type_: EventType,
    reason: &str,
    note: String,
) {
    publish_event(&ctx.recorder, backup, type_, reason, "Backup", note).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::MemberStatus;

    fn member(name: &str, role: MemberRole, ready: bool, lag: u64) -> MemberStatus {
        MemberStatus {
            name: name.into(),
            id: "1".into(),
            role,
            ready,
            lag_entries: lag,
        }
    }

    #[test]
    fn picks_the_least_lagging_ready_follower_then_the_leader_never_a_learner() {
        use MemberRole::{Follower, Leader, Learner};
        let table = [
            (vec![], None),
            (vec![member("a-0", Leader, true, 0)], Some("a-0")),
            (vec![member("a-0", Leader, false, 0)], None),
            (vec![member("a-3", Learner, true, 0)], None),
            (
                vec![
                    member("a-0", Leader, true, 0),
                    member("a-1", Follower, true, 9),
                    member("a-2", Follower, true, 3),
                ],
                Some("a-2"),
            ),
            (
                vec![
                    member("a-0", Leader, true, 0),
                    member("a-1", Follower, false, 0),
                    member("a-3", Learner, true, 0),
                ],
                Some("a-0"),
            ),
        ];
        for (members, want) in table {
            let status = TitanClusterStatus {
                members: members.clone(),
                ..TitanClusterStatus::default()
            };
            assert_eq!(pick_member(Some(&status)).as_deref(), want, "{members:?}");
        }
        assert_eq!(pick_member(None), None);
    }

    #[test]
    fn endpoint_is_the_pods_stable_dns_name_on_the_grpc_port() {
        let names = Names {
            cluster: "demo".into(),
            namespace: "prod".into(),
        };
        assert_eq!(
            member_endpoint(&names, "demo-1", false),
            "http://demo-1.demo-peers.prod.svc:7001"
        );
        assert_eq!(
            member_endpoint(&names, "demo-1", true),
            "https://demo-1.demo-peers.prod.svc:7001"
        );
    }

    #[test]
    fn failed_status_names_the_reason_and_keeps_the_start_time() {
        let t0: Timestamp = "2026-12-07T01:00:00Z".parse().unwrap_or_default();
        let t1: Timestamp = "2026-12-07T01:00:05Z".parse().unwrap_or_default();
        let running = TitanBackupStatus {
            phase: Some(BackupPhase::Running),
            start_time: Some(Time(t0)),
            ..TitanBackupStatus::default()
        };
        let error = BackupError::CredentialsSecretMissing {
            secret: "s3".into(),
        };
        let status = failed_status(running, &error, Some(3), t1);
        assert_eq!(status.phase, Some(BackupPhase::Failed));
        assert_eq!(status.start_time, Some(Time(t0)));
        assert_eq!(status.completion_time, Some(Time(t1)));
        let failed = status.conditions.iter().find(|c| c.type_ == FAILED);
        let failed = failed.unwrap_or_else(|| panic!("{:?}", status.conditions));
        assert_eq!(
            (failed.status.as_str(), failed.reason.as_str()),
            ("True", "CredentialsSecretMissing")
        );
        assert_eq!(failed.message, "credentials Secret s3 not found");
        assert_eq!(failed.observed_generation, Some(3));
        assert!(status.is_finished());
    }
}
