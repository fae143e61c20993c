//! Executes the planner's single step, with an event for each change.

use std::collections::BTreeMap;

use futures::future::join_all;
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams};
use kube::runtime::events::EventType;

use super::observe::{PodObservation, pending_snapshot_token};
use super::status::action_name;
use super::{Context, Error, apply, publish};
use crate::admin::{AdminError, AdminTarget, NewMember};
use crate::builders::{BuildInput, Names};
use crate::crd::{LastSnapshot, TitanCluster};
use crate::planner::Action;

/// Runs `action`. Returns the snapshot record when a snapshot round completed.
pub async fn execute(
    ctx: &Context,
    cluster: &TitanCluster,
    names: &Names,
    input: &BuildInput,
    pods: &BTreeMap<u32, PodObservation>,
    action: &Action,
    now: Timestamp,
) -> Result<Option<LastSnapshot>, Error> {
    let name = action_name(action);
    match action {
        Action::Wait(_) | Action::Steady => return Ok(None),
        Action::Degraded(reason) => {
            publish(
                ctx,
                cluster,
                EventType::Warning,
                "Degraded",
                "Plan",
                format!("{reason:?}"),
            )
            .await;
            return Ok(None);
        }
        _ => ctx.metrics.count_action(name),
    }
    let note = match action {
        Action::TakeSnapshot => return snapshot(ctx, cluster, pods, now).await.map(Some),
        Action::ScaleStatefulSet(n) => scale(ctx, cluster, names, input, *n).await?,
        Action::MarkBootstrapped => mark_bootstrapped(ctx, cluster, names, input).await?,
        Action::DeletePvc(ordinal) => delete_pvc(ctx, names, *ordinal).await?,
        Action::DeletePod(ordinal) => delete_pod(ctx, names, *ordinal).await?,
        _ => membership(ctx, names, pods, action).await?,
    };
    publish(ctx, cluster, EventType::Normal, name, name, note).await;
    Ok(None)
}

async fn scale(
    ctx: &Context,
    cluster: &TitanCluster,
    names: &Names,
    input: &BuildInput,
    n: u32,
) -> Result<String, Error> {
    let mut next = input.clone();
    next.statefulset_replicas = n;
    apply::apply_statefulset(ctx, cluster, names, &next).await?;
    Ok(format!(
        "StatefulSet {} scaled from {} to {n}",
        names.statefulset(),
        input.statefulset_replicas
    ))
}

async fn mark_bootstrapped(
    ctx: &Context,
    cluster: &TitanCluster,
    names: &Names,
    input: &BuildInput,
) -> Result<String, Error> {
    let mut next = input.clone();
    next.bootstrapped = true;
    apply::apply_configmap(ctx, cluster, names, &next).await?;
    Ok("initial members formed a cluster; new pods join".to_string())
}

/// A delete that found nothing already has the result it wanted (the
/// observation it was planned from can lag the API server): true when this
/// call deleted it, false when it was already gone, other errors as errors.
pub(crate) fn deleted_or_gone<T>(result: Result<T, kube::Error>) -> Result<bool, kube::Error> {
    match result {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(status)) if status.code == 404 => Ok(false),
        Err(e) => Err(e),
    }
}

async fn delete_pvc(ctx: &Context, names: &Names, ordinal: u32) -> Result<String, Error> {
    let api: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client.clone(), &names.namespace);
    let deleted = deleted_or_gone(
        api.delete(&names.pvc(ordinal), &DeleteParams::default())
            .await,
    )
    .map_err(Error::kube("delete pvc"))?;
    let verb = if deleted {
        "deleted"
    } else {
        "found already deleted"
    };
    Ok(format!(
        "{verb} PVC {} of removed member",
        names.pvc(ordinal)
    ))
}

async fn delete_pod(ctx: &Context, names: &Names, ordinal: u32) -> Result<String, Error> {
    let api: Api<Pod> = Api::namespaced(ctx.client.clone(), &names.namespace);
    deleted_or_gone(
        api.delete(&names.pod(ordinal), &DeleteParams::default())
            .await,
    )
    .map_err(Error::kube("delete pod"))?;
    Ok(format!(
        "restarting {} onto the current revision",
        names.pod(ordinal)
    ))
}

fn endpoint(
    pods: &BTreeMap<u32, PodObservation>,
    ordinal: u32,
    action: &'static str,
) -> Result<AdminTarget, Error> {
    pods.get(&ordinal)
        .and_then(|p| p.endpoint.clone())
        .ok_or_else(|| Error::Admin {
            action,
            source: AdminError::Rpc {
                endpoint: format!("ordinal {ordinal}"),
                status: Box::new(tonic::Status::unavailable("pod has no IP")),
            },
        })
}

/// Admin calls on the leader: AddLearner, Promote, TransferLeadership, RemoveMember.
async fn membership(
    ctx: &Context,
    names: &Names,
    pods: &BTreeMap<u32, PodObservation>,
    action: &Action,
) -> Result<String, Error> {
    let name = action_name(action);
    let admin_err = |source| Error::Admin {
        action: name,
        source,
    };
    match action {
        Action::AddLearner { id, ordinal, via } => {
            let member = NewMember {
                id: *id,
                name: names.pod(*ordinal),
                peer_addr: names.peer_addr(*ordinal),
                client_addr: names.client_addr(*ordinal),
                grpc_addr: names.grpc_addr(*ordinal),
            };
            ctx.admin
                .add_learner(endpoint(pods, *via, name)?, member)
                .await
                .map_err(admin_err)?;
            Ok(format!(
                "added {} (id {id}) as a learner",
                names.pod(*ordinal)
            ))
        }
        Action::Promote { id, ordinal, via } => {
            ctx.admin
                .promote(endpoint(pods, *via, name)?, *id)
                .await
                .map_err(admin_err)?;
            Ok(format!(
                "promoted {} (id {id}) to voter",
                names.pod(*ordinal)
            ))
        }
        Action::TransferLeadership {
            to_id,
            to_ordinal,
            via,
        } => {
            ctx.admin
                .transfer_leadership(endpoint(pods, *via, name)?, *to_id)
                .await
                .map_err(admin_err)?;
            Ok(format!(
                "leadership moved from {} to {}",
                names.pod(*via),
                names.pod(*to_ordinal)
            ))
        }
        Action::RemoveMember {
            id,
            name: member,
            via,
        } => {
            ctx.admin
                .remove(endpoint(pods, *via, name)?, *id)
                .await
                .map_err(admin_err)?;
            Ok(format!("removed member {member} (id {id})"))
        }
        other => Ok(format!("{other:?}")),
    }
}

/// TakeSnapshot on every reachable member; the round counts when all succeed.
async fn snapshot(
    ctx: &Context,
    cluster: &TitanCluster,
    pods: &BTreeMap<u32, PodObservation>,
    now: Timestamp,
) -> Result<LastSnapshot, Error> {
    let calls = pods
        .values()
        .filter(|p| p.view.node.as_ref().is_some_and(|n| n.id != 0))
        .filter_map(|p| p.endpoint.clone())
        .map(|e| ctx.admin.take_snapshot(e));
    let mut index = 0;
    for result in join_all(calls).await {
        let taken = result.map_err(|source| Error::Admin {
            action: "TakeSnapshot",
            source,
        })?;
        index = index.max(taken.index);
    }
    let token = pending_snapshot_token(cluster);
    let note = format!(
        "snapshot taken on all members (index {index}, request {})",
        token.as_deref().unwrap_or("scheduled")
    );
    publish(
        ctx,
        cluster,
        EventType::Normal,
        "TakeSnapshot",
        "TakeSnapshot",
        note,
    )
    .await;
    let previous_token = cluster
        .status
        .as_ref()
        .and_then(|s| s.last_snapshot.as_ref())
        .and_then(|l| l.request_token.clone());
    Ok(LastSnapshot {
        index,
        time: Some(Time(now)),
        request_token: token.or(previous_token),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api_error(code: u16) -> kube::Error {
        let status = serde_json::json!({"kind": "Status", "apiVersion": "v1",
            "status": "Failure", "code": code, "message": "m"});
        let status: kube::core::Status =
            serde_json::from_value(status).unwrap_or_else(|e| panic!("status: {e}"));
        kube::Error::Api(Box::new(status))
    }

    /// A PVC or pod that is already gone (a stale observation planned the
    /// delete) is success, not a reconcile failure; other errors stay errors.
    #[test]
    fn deleting_what_is_already_gone_is_not_a_failure() {
        assert!(matches!(deleted_or_gone(Ok::<(), _>(())), Ok(true)));
        assert!(matches!(
            deleted_or_gone::<()>(Err(api_error(404))),
            Ok(false)
        ));
        for code in [403, 409, 500] {
            assert!(
                deleted_or_gone::<()>(Err(api_error(code))).is_err(),
                "{code}"
            );
        }
    }
}
