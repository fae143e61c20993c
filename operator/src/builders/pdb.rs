//! PodDisruptionBudget (`policy/v1`) that never lets voluntary disruptions
//! take the cluster below a Raft majority.

use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

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

#[cfg(test)]
mod tests {
    use super::*;

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
