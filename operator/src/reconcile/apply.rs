//! Server-side apply of the built objects (field manager `titan-operator`).

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{ConfigMap, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{Api, DeleteParams, DynamicObject, Patch, PatchParams, Preconditions};
use kube::runtime::events::EventType;
use kube::{Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::execute::deleted_or_gone;
use super::{Context, Error, publish};
use crate::builders::{self, BuildInput, FIELD_MANAGER, Names};
use crate::crd::TitanCluster;

/// What applying revealed about the API server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Applied {
    /// A PodDisruptionBudget (`policy/v1` or `policy/v1beta1`) is served.
    pub pdb_supported: bool,
}

fn params() -> PatchParams {
    PatchParams::apply(FIELD_MANAGER).force()
}

async fn ssa<K>(api: &Api<K>, name: &str, obj: &K, op: &'static str) -> Result<(), Error>
where
    K: Clone + DeserializeOwned + Serialize + std::fmt::Debug,
{
    api.patch(name, &params(), &Patch::Apply(obj))
        .await
        .map_err(Error::kube(op))?;
    Ok(())
}

/// Applies the StatefulSet with `input.statefulset_replicas` (also the scale step).
pub async fn apply_statefulset(
    ctx: &Context,
    cluster: &TitanCluster,
    names: &Names,
    input: &BuildInput,
) -> Result<(), Error> {
    let api: Api<StatefulSet> = Api::namespaced(ctx.client.clone(), &names.namespace);
    ssa(
        &api,
        &names.statefulset(),
        &builders::statefulset(cluster, names, input),
        "apply statefulset",
    )
    .await
}

/// Applies the ConfigMap (also the MarkBootstrapped step).
pub async fn apply_configmap(
    ctx: &Context,
    cluster: &TitanCluster,
    names: &Names,
    input: &BuildInput,
) -> Result<(), Error> {
    let api: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), &names.namespace);
    ssa(
        &api,
        &names.configmap(),
        &builders::configmap(cluster, names, input),
        "apply configmap",
    )
    .await
}

/// Applies the Services (peers, client, leader), the NetworkPolicy (or
/// deletes it when disabled), ConfigMap, StatefulSet and PDB. A missing
/// `policy/v1` (404 on the PDB) is reported, not fatal.
pub async fn apply_objects(
    ctx: &Context,
    cluster: &TitanCluster,
    names: &Names,
    input: &BuildInput,
    creating: bool,
) -> Result<Applied, Error> {
    let services: Api<Service> = Api::namespaced(ctx.client.clone(), &names.namespace);
    ssa(
        &services,
        &names.peers_service(),
        &builders::peers_service(cluster, names),
        "apply peers service",
    )
    .await?;
    ssa(
        &services,
        &names.client_service(),
        &builders::client_service(cluster, names),
        "apply client service",
    )
    .await?;
    ssa(
        &services,
        &names.leader_service(),
        &builders::leader_service(cluster, names),
        "apply leader service",
    )
    .await?;
    apply_network_policy(ctx, cluster, names).await?;
    apply_configmap(ctx, cluster, names, input).await?;
    apply_statefulset(ctx, cluster, names, input).await?;
    if creating {
        let note = format!("bootstrapping {} initial members", input.initial_replicas);
        publish(
            ctx,
            cluster,
            EventType::Normal,
            "Created",
            "Bootstrap",
            note,
        )
        .await;
    }
    apply_pdb(ctx, cluster, names, input).await
}

/// Applies the PDB as `policy/v1`, or as `policy/v1beta1` where only that is
/// served (Kubernetes 1.20); warns when neither is.
async fn apply_pdb(
    ctx: &Context,
    cluster: &TitanCluster,
    names: &Names,
    input: &BuildInput,
) -> Result<Applied, Error> {
    let pdbs: Api<PodDisruptionBudget> = Api::namespaced(ctx.client.clone(), &names.namespace);
    let pdb = builders::pdb(cluster, names, input);
    let mut result = pdbs
        .patch(&names.pdb(), &params(), &Patch::Apply(&pdb))
        .await
        .map(|_| ());
    if matches!(&result, Err(kube::Error::Api(status)) if status.code == 404) {
        let beta = builders::pdb_as_v1beta1(&pdb).map_err(|e| Error::Kube {
            op: "encode policy/v1beta1 pdb",
            source: kube::Error::SerdeError(e),
        })?;
        let api: Api<DynamicObject> = Api::namespaced_with(
            ctx.client.clone(),
            &names.namespace,
            &builders::pdb_v1beta1_resource(),
        );
        result = api
            .patch(&names.pdb(), &params(), &Patch::Apply(&beta))
            .await
            .map(|_| ());
    }
    match result {
        Ok(()) => Ok(Applied {
            pdb_supported: true,
        }),
        Err(kube::Error::Api(status)) if status.code == 404 => {
            let note = "Neither policy/v1 nor policy/v1beta1 PodDisruptionBudget is served by this cluster, so no PDB protects quorum.";
            publish(
                ctx,
                cluster,
                EventType::Warning,
                "PodDisruptionBudgetUnavailable",
                "ApplyPDB",
                note.to_string(),
            )
            .await;
            Ok(Applied {
                pdb_supported: false,
            })
        }
        Err(source) => Err(Error::Kube {
            op: "apply pdb",
            source,
        }),
    }
}

/// `spec.networkPolicy.enabled`: applies the NetworkPolicy, before the
/// StatefulSet so that new pods never run without it. Without the
/// operator's own identity the policy would shut the operator out of the
/// Admin API, so none is applied and a Warning event says why. Disabled:
/// deletes the policy this cluster owns, if there is one.
async fn apply_network_policy(
    ctx: &Context,
    cluster: &TitanCluster,
    names: &Names,
) -> Result<(), Error> {
    let api: Api<NetworkPolicy> = Api::namespaced(ctx.client.clone(), &names.namespace);
    if !cluster.spec.network_policy.enabled {
        return remove_network_policy(ctx, cluster, names, &api).await;
    }
    let Some(operator) = ctx.settings.operator.as_ref() else {
        let note = "spec.networkPolicy.enabled is true, but the operator does not know its own namespace and pod labels (POD_NAMESPACE and --pod-selector / TITAN_OPERATOR_POD_SELECTOR, set by the Helm chart), which the policy must admit to the Admin API; no NetworkPolicy applied.";
        publish(
            ctx,
            cluster,
            EventType::Warning,
            "NetworkPolicyNotApplied",
            "ApplyNetworkPolicy",
            note.to_string(),
        )
        .await;
        return Ok(());
    };
    ssa(
        &api,
        &names.network_policy(),
        &builders::network_policy(cluster, names, operator),
        "apply network policy",
    )
    .await
}

/// Deletes the NetworkPolicy `NAME` if this TitanCluster is its controller
/// owner (a user's own policy of the same name is left alone), with the
/// observed UID as a precondition. An operator not allowed to read
/// NetworkPolicies (RBAC from before they existed) never created one: that
/// is logged, not a failure.
async fn remove_network_policy(
    ctx: &Context,
    cluster: &TitanCluster,
    names: &Names,
    api: &Api<NetworkPolicy>,
) -> Result<(), Error> {
    let name = names.network_policy();
    let existing = match api.get_opt(&name).await {
        Ok(existing) => existing,
        Err(kube::Error::Api(status)) if status.code == 403 => {
            tracing::warn!(cluster = %names.cluster, namespace = %names.namespace,
                "cannot read NetworkPolicies (update the operator's RBAC from manifests/rbac.yaml)");
            return Ok(());
        }
        Err(source) => {
            return Err(Error::Kube {
                op: "get network policy",
                source,
            });
        }
    };
    let Some(existing) = existing else {
        return Ok(());
    };
    let uid = cluster.meta().uid.as_deref();
    let owned = existing
        .owner_references()
        .iter()
        .any(|o| o.controller == Some(true) && Some(o.uid.as_str()) == uid);
    if !owned {
        return Ok(());
    }
    let params = DeleteParams {
        preconditions: Some(Preconditions {
            uid: existing.uid(),
            resource_version: None,
        }),
        ..DeleteParams::default()
    };
    let deleted = deleted_or_gone(api.delete(&name, &params).await)
        .map_err(Error::kube("delete network policy"))?;
    if deleted {
        let note = format!("spec.networkPolicy.enabled is false: deleted NetworkPolicy {name}");
        publish(
            ctx,
            cluster,
            EventType::Normal,
            "NetworkPolicyDeleted",
            "DeleteNetworkPolicy",
            note,
        )
        .await;
    }
    Ok(())
}
