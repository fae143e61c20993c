//! Pure construction of `TitanCluster.status` and its conditions, following
//! the Kubernetes API conventions (a transition time that moves only when the
//! condition's status changes, `observedGeneration` on each condition).

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;

use super::observe::PodObservation;
use super::restore::FETCH_FAILED;
use crate::crd::{LastSnapshot, MemberRole, MemberStatus, Phase, TitanClusterStatus};
use crate::planner::{Action, NodeRole, NodeStatus, Plan, WaitReason};

/// Condition: a leader exists, so the cluster serves reads and writes.
pub const AVAILABLE: &str = "Available";
/// Condition: the operator is in the middle of a change.
pub const PROGRESSING: &str = "Progressing";
/// Condition: something needs attention (unhealthy member, quorum at risk, invalid spec).
pub const DEGRADED: &str = "Degraded";
/// Condition: `spec.paused` is set.
pub const RECONCILIATION_PAUSED: &str = "ReconciliationPaused";
/// Condition: the PodDisruptionBudget could be applied (policy/v1 exists).
pub const DISRUPTION_BUDGET: &str = "DisruptionBudget";

/// Everything the status is computed from.
pub struct StatusInput<'a> {
    /// Status currently stored (conditions keep their transition times).
    pub previous: Option<&'a TitanClusterStatus>,
    /// `metadata.generation`.
    pub generation: Option<i64>,
    /// The planner's decision this reconcile.
    pub plan: &'a Plan,
    /// Pods with their admin views.
    pub pods: &'a BTreeMap<u32, PodObservation>,
    /// Pod selector string.
    pub selector: String,
    /// The PDB could be applied.
    pub pdb_supported: bool,
    /// A snapshot completed this reconcile.
    pub snapshot: Option<LastSnapshot>,
    /// Before bootstrap, why a member could not fetch the backup it
    /// restores: the cluster is then Degraded/`RestoreFailed` with it.
    pub restore_failure: Option<String>,
    /// Now.
    pub now: Timestamp,
}

/// The leader's pod name and status, if any reachable pod claims leadership.
pub fn leader(pods: &BTreeMap<u32, PodObservation>) -> Option<(&str, &NodeStatus)> {
    pods.values()
        .filter_map(|p| p.view.node.as_ref().map(|n| (p.name.as_str(), n)))
        .filter(|(_, n)| n.role == NodeRole::Leader)
        .max_by_key(|(_, n)| n.term)
}

fn members(pods: &BTreeMap<u32, PodObservation>, leader: &NodeStatus) -> Vec<MemberStatus> {
    leader
        .members
        .iter()
        .map(|m| {
            let ready = pods.values().any(|p| {
                p.name == m.name
                    && p.view.ready
                    && p.view.node.as_ref().is_some_and(|n| n.id == m.id)
            });
            let role = if m.id == leader.id {
                MemberRole::Leader
            } else if m.voter {
                MemberRole::Follower
            } else {
                MemberRole::Learner
            };
            MemberStatus {
                name: m.name.clone(),
                id: m.id.to_string(),
                role,
                ready,
                lag_entries: m.lag_entries,
            }
        })
        .collect()
}

/// The full status to apply.
pub fn build_status(input: &StatusInput<'_>) -> TitanClusterStatus {
    let prev = input.previous.cloned().unwrap_or_default();
    let leader = leader(input.pods);
    let members = leader.map_or(prev.members.clone(), |(_, l)| members(input.pods, l));
    let ready = input
        .pods
        .values()
        .filter(|p| p.view.ready && !p.view.terminating)
        .count();
    let mut conditions = prev.conditions.clone();
    let availability = Availability::of(leader.is_some(), &members);
    for (type_, status, reason, message) in condition_values(input, &availability) {
        set_condition(
            &mut conditions,
            type_,
            status,
            &reason,
            &message,
            input.generation,
            input.now,
        );
    }
    let phase = if input.restore_failure.is_some() {
        Phase::Degraded
    } else {
        input.plan.phase
    };
    TitanClusterStatus {
        phase: Some(phase),
        replicas: i32::try_from(members.len()).unwrap_or(i32::MAX),
        selector: Some(input.selector.clone()),
        ready_replicas: i32::try_from(ready).unwrap_or(i32::MAX),
        leader: leader.map(|(name, _)| name.to_string()),
        members,
        last_snapshot: input.snapshot.clone().or(prev.last_snapshot),
        conditions,
        observed_generation: input.generation,
    }
}

type ConditionValue = (&'static str, bool, String, String);

/// The `Available` condition: a leader exists and a quorum (majority) of the
/// voting members is Ready, so writes can commit. It agrees with
/// `readyReplicas` and the member list by construction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Availability {
    /// Condition status.
    pub available: bool,
    /// CamelCase reason.
    pub reason: &'static str,
    /// A sentence for humans.
    pub message: String,
}

impl Availability {
    /// Decides availability from the leader and the members it reports.
    pub fn of(has_leader: bool, members: &[MemberStatus]) -> Self {
        let voters = members
            .iter()
            .filter(|m| m.role != MemberRole::Learner)
            .count();
        let ready = members
            .iter()
            .filter(|m| m.role != MemberRole::Learner && m.ready)
            .count();
        let quorum = voters / 2 + 1;
        if !has_leader {
            return Self {
                available: false,
                reason: "NoLeader",
                message: "No member reports itself leader, so writes cannot commit.".to_string(),
            };
        }
        if ready < quorum {
            return Self {
                available: false,
                reason: "QuorumNotReady",
                message: format!(
                    "Only {ready} of {voters} voting members are Ready; {quorum} are needed for a quorum."
                ),
            };
        }
        Self {
            available: true,
            reason: "QuorumReady",
            message: format!(
                "A leader is elected and {ready} of {voters} voting members are Ready (quorum {quorum})."
            ),
        }
    }
}

fn condition_values(input: &StatusInput<'_>, availability: &Availability) -> Vec<ConditionValue> {
    let action = &input.plan.action;
    let (progressing, progress_reason) = progress(action);
    let degraded = degraded(action, input.plan.phase);
    let paused = input.plan.phase == Phase::Paused;
    vec![
        (
            AVAILABLE,
            availability.available,
            availability.reason.to_string(),
            availability.message.clone(),
        ),
        (
            PROGRESSING,
            progressing,
            progress_reason.clone(),
            progress_message(progressing, &progress_reason, action),
        ),
        match &input.restore_failure {
            Some(note) => (DEGRADED, true, FETCH_FAILED.to_string(), note.clone()),
            None => (
                DEGRADED,
                degraded.is_some(),
            degraded.clone().unwrap_or_else(|| "AsExpected".to_string()),
            degraded.map_or_else(
                || "Every member is healthy.".to_string(),
                |reason| {
                    format!(
                        "The cluster is degraded ({reason}); the operator is at step {action:?}."
                    )
                },
            ),
            ),
        },
        (
            RECONCILIATION_PAUSED,
            paused,
            if paused { "SpecPaused" } else { "NotPaused" }.to_string(),
            if paused {
                "The spec sets paused: true, so the operator makes no changes."
            } else {
                "The operator applies changes as they come."
            }
            .to_string(),
        ),
        (
            DISRUPTION_BUDGET,
            input.pdb_supported,
            if input.pdb_supported {
                "Applied"
            } else {
                "PolicyUnavailable"
            }
            .to_string(),
            if input.pdb_supported {
                "A PodDisruptionBudget keeps voluntary disruptions within what a quorum tolerates."
            } else {
                "No PodDisruptionBudget API is served, so voluntary disruptions are not limited."
            }
            .to_string(),
        ),
    ]
}

/// The `Progressing` message: a sentence naming the step in flight.
fn progress_message(progressing: bool, reason: &str, action: &Action) -> String {
    match (progressing, reason) {
        (true, _) => format!("The operator is changing the cluster, step {action:?}."),
        (false, "Stable") => "No change is in progress.".to_string(),
        (false, _) => format!("No change is in progress; waiting ({reason})."),
    }
}

/// Is a change in flight, and its reason.
pub fn progress(action: &Action) -> (bool, String) {
    let name = action_name(action);
    match action {
        Action::Steady | Action::TakeSnapshot | Action::Degraded(_) => {
            (false, "Stable".to_string())
        }
        Action::Wait(
            WaitReason::Paused | WaitReason::MemberUnhealthy(_) | WaitReason::NoLeader,
        ) => (false, name.to_string()),
        _ => (true, name.to_string()),
    }
}

fn degraded(action: &Action, phase: Phase) -> Option<String> {
    match action {
        Action::Degraded(reason) => Some(
            format!("{reason:?}")
                .split(['(', ' ', '{'])
                .next()
                .unwrap_or("Degraded")
                .to_string(),
        ),
        Action::Wait(WaitReason::MemberUnhealthy(_)) => Some("MemberUnhealthy".to_string()),
        Action::Wait(WaitReason::NoLeader) => Some("NoLeader".to_string()),
        _ if phase == Phase::Degraded => Some("Degraded".to_string()),
        _ => None,
    }
}

/// Short CamelCase name of an action (events, metrics, condition reasons).
pub fn action_name(action: &Action) -> &'static str {
    match action {
        Action::ScaleStatefulSet(_) => "ScaleStatefulSet",
        Action::MarkBootstrapped => "MarkBootstrapped",
        Action::AddLearner { .. } => "AddLearner",
        Action::Promote { .. } => "Promote",
        Action::TransferLeadership { .. } => "TransferLeadership",
        Action::RemoveMember { .. } => "RemoveMember",
        Action::DeletePvc(_) => "DeletePvc",
        Action::DeletePod(_) => "DeletePod",
        Action::TakeSnapshot => "TakeSnapshot",
        Action::Wait(WaitReason::Paused) => "Paused",
        Action::Wait(WaitReason::StatefulSetMissing) => "StatefulSetMissing",
        Action::Wait(WaitReason::Bootstrapping) => "Bootstrapping",
        Action::Wait(WaitReason::NoLeader) => "NoLeader",
        Action::Wait(WaitReason::PodStarting(_)) => "PodStarting",
        Action::Wait(WaitReason::CatchingUp(_)) => "CatchingUp",
        Action::Wait(WaitReason::MemberUnhealthy(_)) => "MemberUnhealthy",
        Action::Wait(WaitReason::PodTerminating(_)) => "PodTerminating",
        Action::Degraded(_) => "Degraded",
        Action::Steady => "Steady",
    }
}

/// Upserts a condition; the transition time moves only when the status flips.
pub fn set_condition(
    conditions: &mut Vec<Condition>,
    type_: &str,
    status: bool,
    reason: &str,
    message: &str,
    generation: Option<i64>,
    now: Timestamp,
) {
    let status = if status { "True" } else { "False" }.to_string();
    let reason = if reason.is_empty() { "Unknown" } else { reason };
    // Never send an empty message: server-side apply on Kubernetes 1.20 turns
    // "" into null for CRD fields and then rejects it as not a string.
    let message = if message.is_empty() { reason } else { message };
    let existing = conditions.iter_mut().find(|c| c.type_ == type_);
    let transition = match &existing {
        Some(c) if c.status == status => c.last_transition_time.clone(),
        _ => Time(now),
    };
    let condition = Condition {
        type_: type_.to_string(),
        status,
        reason: reason.to_string(),
        message: message.to_string(),
        last_transition_time: transition,
        observed_generation: generation,
    };
    match existing {
        Some(c) => *c = condition,
        None => conditions.push(condition),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::planner::{DegradedReason, MemberView, PodView};

    fn t(secs: i64) -> Timestamp {
        Timestamp::from_second(secs).unwrap_or(Timestamp::UNIX_EPOCH)
    }

    fn pods(leader_ready: bool) -> BTreeMap<u32, PodObservation> {
        let members = vec![
            MemberView {
                id: 11,
                name: "c-0".into(),
                voter: true,
                lag_entries: 0,
            },
            MemberView {
                id: 12,
                name: "c-1".into(),
                voter: false,
                lag_entries: 40,
            },
        ];
        let node = |id, role| NodeStatus {
            id,
            role,
            term: 2,
            members: members.clone(),
        };
        let obs = |name: &str, ready, node| PodObservation {
            name: name.to_string(),
            endpoint: None,
            view: PodView {
                ready,
                up_to_date: true,
                terminating: false,
                unready_secs: 0,
                node: Some(node),
            },
            leader_labeled: false,
        };
        BTreeMap::from([
            (0, obs("c-0", leader_ready, node(11, NodeRole::Leader))),
            (1, obs("c-1", false, node(12, NodeRole::Learner))),
        ])
    }

    fn input<'a>(
        plan: &'a Plan,
        pods: &'a BTreeMap<u32, PodObservation>,
        prev: Option<&'a TitanClusterStatus>,
        now: i64,
    ) -> StatusInput<'a> {
        StatusInput {
            previous: prev,
            generation: Some(4),
            plan,
            pods,
            selector: "a=b".to_string(),
            pdb_supported: true,
            snapshot: None,
            restore_failure: None,
            now: t(now),
        }
    }

    #[test]
    fn a_failed_backup_fetch_makes_the_cluster_degraded_with_its_message() {
        let plan = Plan {
            action: Action::Wait(WaitReason::Bootstrapping),
            phase: Phase::Bootstrapping,
        };
        let pods = BTreeMap::new();
        let mut i = input(&plan, &pods, None, 1000);
        i.restore_failure = Some("demo-0 could not fetch the backup: gone".to_string());
        let s = build_status(&i);
        assert_eq!(s.phase, Some(Phase::Degraded));
        let degraded = condition(&s, DEGRADED);
        assert_eq!(
            (
                degraded.status.as_str(),
                degraded.reason.as_str(),
                degraded.message.as_str()
            ),
            (
                "True",
                FETCH_FAILED,
                "demo-0 could not fetch the backup: gone"
            )
        );
    }

    fn condition<'a>(s: &'a TitanClusterStatus, type_: &str) -> &'a Condition {
        s.conditions
            .iter()
            .find(|c| c.type_ == type_)
            .unwrap_or_else(|| panic!("missing condition {type_}"))
    }

    #[test]
    fn status_reports_leader_members_roles_and_lag() {
        let plan = Plan {
            action: Action::Wait(WaitReason::CatchingUp(1)),
            phase: Phase::Scaling,
        };
        let pods = pods(true);
        let s = build_status(&input(&plan, &pods, None, 100));
        assert_eq!(s.leader.as_deref(), Some("c-0"));
        assert_eq!(s.replicas, 2);
        assert_eq!(s.ready_replicas, 1);
        assert_eq!(s.members[0].role, MemberRole::Leader);
        assert_eq!(s.members[1].role, MemberRole::Learner);
        assert_eq!(s.members[1].lag_entries, 40);
        assert_eq!(s.members[1].id, "12");
        assert_eq!(s.observed_generation, Some(4));
        assert_eq!(condition(&s, PROGRESSING).status, "True");
        assert_eq!(condition(&s, PROGRESSING).reason, "CatchingUp");
        assert_eq!(condition(&s, AVAILABLE).status, "True");
    }

    #[test]
    fn transition_time_moves_only_when_condition_status_flips() {
        let pods = pods(true);
        let steady = Plan {
            action: Action::Steady,
            phase: Phase::Running,
        };
        let first = build_status(&input(&steady, &pods, None, 100));
        let second = build_status(&input(&steady, &pods, Some(&first), 200));
        assert_eq!(
            condition(&second, AVAILABLE).last_transition_time,
            Time(t(100))
        );
        let degraded = Plan {
            action: Action::Degraded(DegradedReason::QuorumAtRisk {
                healthy: 1,
                voters: 3,
            }),
            phase: Phase::Degraded,
        };
        let third = build_status(&input(&degraded, &pods, Some(&second), 300));
        assert_eq!(condition(&third, DEGRADED).status, "True");
        assert_eq!(condition(&third, DEGRADED).reason, "QuorumAtRisk");
        assert_eq!(
            condition(&third, DEGRADED).last_transition_time,
            Time(t(300))
        );
        assert_eq!(
            condition(&third, AVAILABLE).last_transition_time,
            Time(t(100))
        );
    }

    #[test]
    fn available_requires_a_leader_and_a_ready_quorum_of_voters() {
        fn m(role: MemberRole, ready: bool) -> MemberStatus {
            MemberStatus {
                name: "x".to_string(),
                id: "1".to_string(),
                role,
                ready,
                lag_entries: 0,
            }
        }
        use MemberRole::{Follower as F, Leader as L, Learner as N};
        let cases: [(&str, bool, Vec<MemberStatus>, bool, &str); 7] = [
            (
                "no leader",
                false,
                vec![m(F, true), m(F, true)],
                false,
                "NoLeader",
            ),
            (
                "3 all ready",
                true,
                vec![m(L, true), m(F, true), m(F, true)],
                true,
                "QuorumReady",
            ),
            (
                "3 one down",
                true,
                vec![m(L, true), m(F, false), m(F, true)],
                true,
                "QuorumReady",
            ),
            (
                "3 two down",
                true,
                vec![m(L, true), m(F, false), m(F, false)],
                false,
                "QuorumNotReady",
            ),
            (
                "learner not counted",
                true,
                vec![m(L, true), m(F, false), m(F, false), m(N, true)],
                false,
                "QuorumNotReady",
            ),
            (
                "5 three ready",
                true,
                vec![m(L, true), m(F, true), m(F, true), m(F, false), m(F, false)],
                true,
                "QuorumReady",
            ),
            ("single member", true, vec![m(L, true)], true, "QuorumReady"),
        ];
        for (name, has_leader, members, want, reason) in cases {
            let a = Availability::of(has_leader, &members);
            assert_eq!((a.available, a.reason), (want, reason), "{name}");
            assert!(a.message.ends_with('.'), "{name}: {}", a.message);
            assert!(
                a.message.starts_with(char::is_uppercase),
                "{name}: {}",
                a.message
            );
        }
    }

    /// Every condition message is a sentence for humans, whatever the plan.
    #[test]
    fn every_condition_message_is_a_sentence() {
        let plans = [
            (Action::Steady, Phase::Running),
            (Action::Wait(WaitReason::CatchingUp(1)), Phase::Scaling),
            (Action::Wait(WaitReason::Paused), Phase::Paused),
            (Action::Wait(WaitReason::NoLeader), Phase::Degraded),
        ];
        for (action, phase) in plans {
            let plan = Plan { action, phase };
            for leader_ready in [true, false] {
                let pods = pods(leader_ready);
                let s = build_status(&input(&plan, &pods, None, 100));
                for c in &s.conditions {
                    assert!(
                        c.message.starts_with(char::is_uppercase) && c.message.ends_with('.'),
                        "{:?} {}: {:?}",
                        plan.action,
                        c.type_,
                        c.message
                    );
                }
            }
        }
    }

    #[test]
    fn paused_plan_sets_reconciliation_paused() {
        let pods = pods(true);
        let plan = Plan {
            action: Action::Wait(WaitReason::Paused),
            phase: Phase::Paused,
        };
        let s = build_status(&input(&plan, &pods, None, 1));
        assert_eq!(condition(&s, RECONCILIATION_PAUSED).status, "True");
        assert_eq!(condition(&s, PROGRESSING).status, "False");
        assert_eq!(s.phase, Some(Phase::Paused));
    }
}
