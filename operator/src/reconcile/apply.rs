//! Server-side apply of the built objects (field manager `titan-operator`).

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{ConfigMap, Service};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{Api, DynamicObject, Patch, PatchParams};
use kube::runtime::events::EventType;
use serde::Serialize;
use serde::de::DeserializeOwned;

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

/// Applies the Services (peers, client, leader), ConfigMap, StatefulSet and PDB. A missing `policy/v1`
/// (404 on the PDB) is reported, not fatal.
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
