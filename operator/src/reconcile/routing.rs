//! The leader Service's routing: which pod carries `titan.dev/role=leader`.
//!
//! The label follows the leader the operator observes (the reachable member
//! claiming leadership with the highest term), the way CloudNativePG's `-rw`
//! Service follows its primary. Labels are removed before one is added, so the
//! `NAME-leader` Service may briefly have no endpoint (connections refused)
//! but never selects two pods or a follower. A step that moves leadership away
//! on purpose (a transfer, deleting the leader's pod) removes the label first.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, Patch, PatchParams};

use super::observe::PodObservation;
use super::{Context, Error};
use crate::builders::{FIELD_MANAGER, Names, leader_role_patch};
use crate::planner::Action;

/// One label change on one pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LabelChange {
    /// Pod name.
    pub pod: String,
    /// True: set `titan.dev/role=leader`; false: remove it.
    pub leader: bool,
}

/// The pod that should carry the leader label this reconcile: the observed
/// leader's pod, unless it is terminating or `action` moves leadership away
/// from it (then no pod).
pub fn label_target(
    pods: &BTreeMap<u32, PodObservation>,
    leader: Option<&str>,
    action: &Action,
) -> Option<String> {
    let (ordinal, pod) = pods.iter().find(|(_, p)| Some(p.name.as_str()) == leader)?;
    let leaving = match action {
        Action::TransferLeadership { via, .. } => via == ordinal,
        Action::DeletePod(o) => o == ordinal,
        _ => false,
    };
    (!leaving && !pod.view.terminating).then(|| pod.name.clone())
}

/// Changes that make exactly `target` labelled: removals first, then the
/// addition. Terminating pods keep their label (their endpoint is already
/// gone and a patch would race their deletion).
pub fn label_changes(
    pods: &BTreeMap<u32, PodObservation>,
    target: Option<&str>,
) -> Vec<LabelChange> {
    let removals = pods
        .values()
        .filter(|p| p.leader_labeled && !p.view.terminating)
        .filter(|p| Some(p.name.as_str()) != target)
        .map(|p| LabelChange {
            pod: p.name.clone(),
            leader: false,
        });
    let addition = pods
        .values()
        .filter(|p| !p.leader_labeled && Some(p.name.as_str()) == target)
        .map(|p| LabelChange {
            pod: p.name.clone(),
            leader: true,
        });
    removals.chain(addition).collect()
}

/// True when `changes` take the label off a pod and `action` is the step that
/// moves leadership away from it: the step must then wait until the endpoint
/// removal has reached kube-proxy, else a client can still be routed to the
/// old leader after the transfer and get `ERR NOT_LEADER` (seen on a real node).
pub fn drain_before_step(changes: &[LabelChange], action: &Action) -> bool {
    let moves = matches!(
        action,
        Action::TransferLeadership { .. } | Action::DeletePod(_)
    );
    moves && changes.iter().any(|c| !c.leader)
}

/// Applies `changes` in order with JSON merge patches. A pod that is gone
/// (404) needs no label; other failures fail the reconcile, which retries.
pub async fn apply_label_changes(
    ctx: &Context,
    names: &Names,
    changes: &[LabelChange],
) -> Result<(), Error> {
    let api: Api<Pod> = Api::namespaced(ctx.client.clone(), &names.namespace);
    let params = PatchParams {
        field_manager: Some(FIELD_MANAGER.to_string()),
        ..PatchParams::default()
    };
    for change in changes {
        let patch = leader_role_patch(change.leader);
        let result = api.patch(&change.pod, &params, &Patch::Merge(&patch)).await;
        super::execute::deleted_or_gone(result).map_err(Error::kube("label leader pod"))?;
        tracing::info!(pod = %change.pod, leader = change.leader, "leader label");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::planner::PodView;

    fn pod(name: &str, labeled: bool, terminating: bool) -> PodObservation {
        PodObservation {
            name: name.to_string(),
            endpoint: None,
            view: PodView {
                ready: true,
                up_to_date: true,
                terminating,
                unready_secs: 0,
                node: None,
            },
            leader_labeled: labeled,
        }
    }

    fn pods(list: &[(bool, bool)]) -> BTreeMap<u32, PodObservation> {
        (0u32..)
            .zip(list)
            .map(|(o, (labeled, term))| (o, pod(&format!("c-{o}"), *labeled, *term)))
            .collect()
    }

    fn change(pod: &str, leader: bool) -> LabelChange {
        LabelChange {
            pod: pod.to_string(),
            leader,
        }
    }

    #[test]
    fn the_label_moves_to_the_new_leader_removal_first() {
        let p = pods(&[(true, false), (false, false), (false, false)]);
        let target = label_target(&p, Some("c-2"), &Action::Steady);
        assert_eq!(target.as_deref(), Some("c-2"));
        assert_eq!(
            label_changes(&p, target.as_deref()),
            vec![change("c-0", false), change("c-2", true)]
        );
    }

    #[test]
    fn a_labelled_leader_needs_no_change() {
        let p = pods(&[(false, false), (true, false)]);
        let target = label_target(&p, Some("c-1"), &Action::Steady);
        assert!(label_changes(&p, target.as_deref()).is_empty());
    }

    #[test]
    fn no_observed_leader_leaves_no_pod_labelled() {
        let p = pods(&[(false, false), (true, false), (true, false)]);
        let target = label_target(&p, None, &Action::Steady);
        assert_eq!(target, None);
        assert_eq!(
            label_changes(&p, None),
            vec![change("c-1", false), change("c-2", false)]
        );
    }

    #[test]
    fn moving_leadership_away_unlabels_the_leader_before_the_step() {
        let p = pods(&[(true, false), (false, false)]);
        let transfer = Action::TransferLeadership {
            to_id: 1,
            to_ordinal: 1,
            via: 0,
        };
        for action in [transfer, Action::DeletePod(0)] {
            let target = label_target(&p, Some("c-0"), &action);
            assert_eq!(target, None, "{action:?}");
            assert_eq!(label_changes(&p, None), vec![change("c-0", false)]);
        }
        let follower_restart = Action::DeletePod(1);
        assert_eq!(
            label_target(&p, Some("c-0"), &follower_restart).as_deref(),
            Some("c-0")
        );
    }

    #[test]
    fn a_transfer_right_after_unlabelling_waits_for_the_endpoint_to_drain() {
        let transfer = Action::TransferLeadership {
            to_id: 1,
            to_ordinal: 1,
            via: 0,
        };
        let removed = [change("c-0", false)];
        assert!(drain_before_step(&removed, &transfer));
        assert!(drain_before_step(&removed, &Action::DeletePod(0)));
        assert!(!drain_before_step(&[], &transfer), "label already gone");
        assert!(!drain_before_step(&removed, &Action::Steady));
        assert!(!drain_before_step(&[change("c-1", true)], &transfer));
    }

    #[test]
    fn terminating_pods_are_neither_labelled_nor_patched() {
        let p = pods(&[(true, true), (false, true)]);
        assert_eq!(label_target(&p, Some("c-1"), &Action::Steady), None);
        assert!(label_changes(&p, None).is_empty());
    }

    #[test]
    fn a_leader_without_a_pod_of_this_cluster_labels_nothing() {
        let p = pods(&[(false, false)]);
        assert_eq!(label_target(&p, Some("other-0"), &Action::Steady), None);
    }
}
