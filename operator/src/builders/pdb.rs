//! PodDisruptionBudget that never lets voluntary disruptions take the cluster
//! below a Raft majority: `policy/v1` where served, else the same object as
//! `policy/v1beta1` (Kubernetes 1.20 and older serve only that).

use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use kube::api::{ApiResource, DynamicObject, GroupVersionKind};

use super::{BuildInput, Names, child_meta};
use crate::crd::TitanCluster;

/// Pods that may be voluntarily disrupted at once: the failures a Raft
/// cluster of `voters` tolerates, `(voters - 1) / 2`. The PDB controller
/// counts already-unhealthy pods against it, so a cluster that is already
/// missing a member allows correspondingly fewer evictions.
pub fn max_unavailable(voters: u32) -> i32 {
    i32::try_from(voters.saturating_sub(1) / 2).unwrap_or(0)
}

/// The PDB. Sized from the smaller of spec and current voters, so that during a
/// scale-up the budget never assumes voters that are not members yet.
pub fn pdb(cluster: &TitanCluster, names: &Names, input: &BuildInput) -> PodDisruptionBudget {
    let spec_voters = u32::try_from(cluster.spec.replicas).unwrap_or(1);
    let voters = spec_voters.min(input.voters.max(1));
    PodDisruptionBudget {
        metadata: child_meta(cluster, names, names.pdb()),
        spec: Some(PodDisruptionBudgetSpec {
            max_unavailable: Some(IntOrString::Int(max_unavailable(voters))),
            selector: Some(LabelSelector {
                match_labels: Some(names.selector_labels()),
                ..LabelSelector::default()
            }),
            ..PodDisruptionBudgetSpec::default()
        }),
        status: None,
    }
}

/// The `policy/v1beta1` PodDisruptionBudget resource, for API servers
/// that do not serve `policy/v1`.
pub fn v1beta1_resource() -> ApiResource {
    ApiResource::from_gvk(&GroupVersionKind::gvk(
        "policy",
        "v1beta1",
        "PodDisruptionBudget",
    ))
}

/// The same PDB as a `policy/v1beta1` object: the fields this operator sets
/// (`maxUnavailable`, `selector`) mean the same in both versions.
pub fn as_v1beta1(pdb: &PodDisruptionBudget) -> Result<DynamicObject, serde_json::Error> {
    let mut value = serde_json::to_value(pdb)?;
    if let Some(obj) = value.as_object_mut() {
        obj.insert("apiVersion".into(), "policy/v1beta1".into());
        obj.insert("kind".into(), "PodDisruptionBudget".into());
    }
    serde_json::from_value(value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures;

    /// On a 1.20 API server the PDB goes out as policy/v1beta1 with the
    /// same budget and selector.
    #[test]
    fn v1beta1_pdb_keeps_budget_and_selector() {
        for (replicas, want) in [(1, 0), (3, 1), (5, 2)] {
            let cluster = fixtures::cluster(serde_json::json!({"replicas": replicas}));
            let names = Names::of(&cluster);
            let input = BuildInput {
                initial_replicas: replicas,
                cluster_id: "id".to_string(),
                bootstrapped: true,
                statefulset_replicas: replicas,
                voters: replicas,
                keep_no_resources: false,
            };
            let v1 = pdb(&cluster, &names, &input);
            let beta = as_v1beta1(&v1)
                .and_then(serde_json::to_value)
                .unwrap_or_else(|e| panic!("conversion failed for {replicas}: {e}"));
            assert_eq!(beta["apiVersion"], "policy/v1beta1");
            assert_eq!(beta["kind"], "PodDisruptionBudget");
            assert_eq!(beta["metadata"]["name"], names.pdb());
            assert_eq!(beta["spec"]["maxUnavailable"], want, "replicas={replicas}");
            assert_eq!(
                beta["spec"]["selector"]["matchLabels"],
                serde_json::json!(names.selector_labels())
            );
        }
    }

    /// Quorum math from a table: disruptions allowed never exceed f = (n-1)/2.
    #[test]
    fn max_unavailable_keeps_a_majority() {
        let cases = [
            (0, 0),
            (1, 0),
            (2, 0),
            (3, 1),
            (4, 1),
            (5, 2),
            (6, 2),
            (7, 3),
            (9, 4),
        ];
        for (voters, want) in cases {
            assert_eq!(max_unavailable(voters), want, "voters={voters}");
            let remaining = voters as i32 - want;
            assert!(
                voters == 0 || remaining > voters as i32 / 2,
                "voters={voters}"
            );
        }
    }
}
