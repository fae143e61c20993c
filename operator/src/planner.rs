//! The membership planner: observed state in, exactly one next step out.
//!
//! **Architecture invariant:** this module is pure. It has no clock, no IO and
//! no memory between calls; every decision is derived from the [`Observed`]
//! snapshot the reconciler gathers (CR spec, StatefulSet, pods, PVCs and each
//! member's admin `Status`). Because of that, an operator that crashes between
//! any two steps re-derives the same next step on restart.
//!
//! Rules:
//! - one membership change per reconcile; the reconciler re-observes before the next;
//! - an unreachable pod is never treated as removed;
//! - no change may leave the healthy voters without a majority;
//! - scale up: StatefulSet +1 → AddLearner → wait for catch-up → Promote;
//! - scale down (highest ordinal): TransferLeadership if leader → RemoveMember →
//!   StatefulSet −1 → delete its PVC;
//! - replacement: a pod that is a member by name but reports another (or no)
//!   identity is removed under the old id, then re-added as a learner;
//! - rolling update: followers from the highest ordinal down, leader last after
//!   a transfer, each only when every member is healthy and caught up and the
//!   other healthy voters still form a majority without the restarted pod (so
//!   2 voters are never rolled: one of two is no majority).

use std::collections::{BTreeMap, BTreeSet};

use crate::crd::Phase;

/// Tunables of the planner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannerConfig {
    /// A learner is promoted, and a member counts as caught up, at or below this lag.
    pub catch_up_lag_entries: u64,
    /// A member unhealthy for longer than this turns a wait into Degraded.
    pub unhealthy_grace_secs: u64,
}

impl Default for PlannerConfig {
    fn default() -> Self {
        Self {
            catch_up_lag_entries: 100,
            unhealthy_grace_secs: 300,
        }
    }
}

/// Raft role as a server reports it about itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeRole {
    /// Leader of its term.
    Leader,
    /// Voter following a leader.
    Follower,
    /// Voter campaigning.
    Candidate,
    /// Non-voting member.
    Learner,
    /// Started with `--join`, not a member of any cluster yet.
    Joining,
    /// Role the server did not specify.
    Unknown,
}

/// A member as listed in a server's configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberView {
    /// Raft member id.
    pub id: u64,
    /// Server name (pod name).
    pub name: String,
    /// Voter (true) or learner.
    pub voter: bool,
    /// Entries behind the leader (meaningful in the leader's view).
    pub lag_entries: u64,
}

/// What one server reported through `Admin.Status`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeStatus {
    /// The server's own id; 0 when it has no identity yet.
    pub id: u64,
    /// Its role.
    pub role: NodeRole,
    /// Its current term (to choose between two leader claims).
    pub term: u64,
    /// Its view of the configuration.
    pub members: Vec<MemberView>,
}

/// One pod of the StatefulSet, as observed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodView {
    /// Pod Ready condition.
    pub ready: bool,
    /// Pod runs the StatefulSet's current revision.
    pub up_to_date: bool,
    /// Pod has a deletion timestamp.
    pub terminating: bool,
    /// Seconds since the pod last became not Ready (0 when Ready).
    pub unready_secs: u64,
    /// Admin `Status` result; `None` when the pod was unreachable or timed out.
    pub node: Option<NodeStatus>,
}

/// Everything the planner may look at.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Observed {
    /// `spec.replicas`.
    pub desired_replicas: u32,
    /// `spec.paused`.
    pub paused: bool,
    /// ConfigMap `bootstrapped` flag.
    pub bootstrapped: bool,
    /// StatefulSet `spec.replicas`; `None` when it does not exist yet.
    pub statefulset_replicas: Option<u32>,
    /// Pods by ordinal.
    pub pods: BTreeMap<u32, PodView>,
    /// Ordinals that have a `data` PVC.
    pub pvc_ordinals: BTreeSet<u32>,
    /// The snapshot schedule or a snapshot-request annotation asks for a snapshot.
    pub snapshot_due: bool,
}

/// Why the planner chose to wait.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WaitReason {
    /// `spec.paused`.
    Paused,
    /// StatefulSet not created yet.
    StatefulSetMissing,
    /// The initial members have not elected a leader yet.
    Bootstrapping,
    /// No reachable server claims leadership (election in progress?).
    NoLeader,
    /// The pod of this ordinal is not up and joining yet.
    PodStarting(u32),
    /// The learner of this ordinal is behind the leader.
    CatchingUp(u32),
    /// The member of this ordinal is unhealthy (within the grace period).
    MemberUnhealthy(u32),
    /// The pod of this ordinal is still terminating.
    PodTerminating(u32),
}

/// Why the planner refuses to proceed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DegradedReason {
    /// The step would leave healthy voters without a majority.
    QuorumAtRisk {
        /// Healthy voters after the step.
        healthy: u32,
        /// Voters after the step.
        voters: u32,
    },
    /// No healthy caught-up voter can take over leadership.
    NoTransferTarget,
    /// A member has been unhealthy longer than the grace period.
    MemberUnhealthy(u32),
    /// No leader for longer than the grace period.
    NoLeader,
    /// The configuration holds a member that is not one of our pods.
    ForeignMember(String),
    /// The pod of this ordinal has not become Ready within the grace period
    /// while being added (never joined, or the learner never caught up).
    Stalled(u32),
}

/// The single next step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Set StatefulSet replicas.
    ScaleStatefulSet(u32),
    /// Set the ConfigMap `bootstrapped` flag: later pods join instead of bootstrapping.
    MarkBootstrapped,
    /// `AddMember` (learner) on the leader at ordinal `via`.
    AddLearner {
        /// Identity the joining server reported.
        id: u64,
        /// Its ordinal.
        ordinal: u32,
        /// Leader ordinal.
        via: u32,
    },
    /// `PromoteMember` on the leader.
    Promote {
        /// Learner id.
        id: u64,
        /// Its ordinal.
        ordinal: u32,
        /// Leader ordinal.
        via: u32,
    },
    /// `TransferLeadership` on the leader.
    TransferLeadership {
        /// Target member id.
        to_id: u64,
        /// Target ordinal.
        to_ordinal: u32,
        /// Current leader ordinal.
        via: u32,
    },
    /// `RemoveMember` on the leader.
    RemoveMember {
        /// Member id to remove.
        id: u64,
        /// Member name, for events.
        name: String,
        /// Leader ordinal.
        via: u32,
    },
    /// Delete the PVC of an ordinal at or above the StatefulSet size.
    DeletePvc(u32),
    /// Delete a pod so the StatefulSet recreates it on the new revision.
    DeletePod(u32),
    /// `TakeSnapshot` on every member.
    TakeSnapshot,
    /// Nothing to do until something changes.
    Wait(WaitReason),
    /// Stop and report.
    Degraded(DegradedReason),
    /// Cluster matches spec.
    Steady,
}

/// The planner's answer: the step plus the phase it implies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// Next step.
    pub action: Action,
    /// Phase to report.
    pub phase: Phase,
}

impl Plan {
    fn new(action: Action, phase: Phase) -> Self {
        let phase = match action {
            Action::Degraded(_) => Phase::Degraded,
            _ => phase,
        };
        Self { action, phase }
    }
}

/// Decides the next step. See the module docs for the rules.
pub fn plan(obs: &Observed, cfg: &PlannerConfig, names: &dyn Fn(&str) -> Option<u32>) -> Plan {
    if obs.paused {
        return Plan::new(Action::Wait(WaitReason::Paused), Phase::Paused);
    }
    let Some(sts) = obs.statefulset_replicas else {
        return Plan::new(
            Action::Wait(WaitReason::StatefulSetMissing),
            Phase::Bootstrapping,
        );
    };
    let Some((via, leader)) = find_leader(obs) else {
        return no_leader(obs, cfg);
    };
    if !obs.bootstrapped {
        return Plan::new(Action::MarkBootstrapped, Phase::Bootstrapping);
    }
    let view = match ClusterView::new(obs, cfg, names, via, leader) {
        Ok(view) => view,
        Err(reason) => return Plan::new(Action::Degraded(reason), Phase::Degraded),
    };
    view.replacement()
        .or_else(|| view.learners())
        .or_else(|| view.shrink_statefulset(sts))
        .or_else(|| view.delete_stale_pvc(sts))
        .or_else(|| view.scale_down())
        .or_else(|| view.scale_up(sts))
        .or_else(|| view.rolling_update())
        .unwrap_or_else(|| {
            if obs.snapshot_due {
                Plan::new(Action::TakeSnapshot, Phase::Running)
            } else {
                Plan::new(Action::Steady, Phase::Running)
            }
        })
}

/// The reachable server claiming leadership in the highest term.
fn find_leader(obs: &Observed) -> Option<(u32, &NodeStatus)> {
    obs.pods
        .iter()
        .filter(|(_, p)| !p.terminating)
        .filter_map(|(ordinal, p)| p.node.as_ref().map(|n| (*ordinal, n)))
        .filter(|(_, n)| n.role == NodeRole::Leader)
        .max_by_key(|(_, n)| n.term)
}

fn no_leader(obs: &Observed, cfg: &PlannerConfig) -> Plan {
    if !obs.bootstrapped {
        return Plan::new(
            Action::Wait(WaitReason::Bootstrapping),
            Phase::Bootstrapping,
        );
    }
    let all_unready_long = !obs.pods.is_empty()
        && obs
            .pods
            .values()
            .all(|p| !p.ready && p.unready_secs > cfg.unhealthy_grace_secs);
    if all_unready_long {
        Plan::new(Action::Degraded(DegradedReason::NoLeader), Phase::Degraded)
    } else {
        Plan::new(Action::Wait(WaitReason::NoLeader), Phase::Degraded)
    }
}

/// A member of the leader's configuration joined with its pod.
#[derive(Debug, Clone)]
struct Slot<'a> {
    ordinal: u32,
    member: &'a MemberView,
    pod: Option<&'a PodView>,
}

impl Slot<'_> {
    /// Pod Ready, not terminating, reachable, and reporting this member's identity.
    fn healthy(&self) -> bool {
        self.pod.is_some_and(|p| {
            p.ready && !p.terminating && p.node.as_ref().is_some_and(|n| n.id == self.member.id)
        })
    }

    fn unready_secs(&self) -> u64 {
        self.pod.map_or(u64::MAX, |p| p.unready_secs)
    }

    /// The pod answers with another (or no) identity: its data dir was lost.
    fn lost_identity(&self) -> bool {
        self.pod
            .and_then(|p| p.node.as_ref())
            .is_some_and(|n| n.id != self.member.id && (n.id == 0 || n.role == NodeRole::Joining))
    }
}

/// The leader's configuration, indexed by ordinal, plus everything the rules need.
struct ClusterView<'a> {
    obs: &'a Observed,
    cfg: &'a PlannerConfig,
    leader_ordinal: u32,
    leader_id: u64,
    slots: Vec<Slot<'a>>,
}

impl<'a> ClusterView<'a> {
    fn new(
        obs: &'a Observed,
        cfg: &'a PlannerConfig,
        names: &dyn Fn(&str) -> Option<u32>,
        leader_ordinal: u32,
        leader: &'a NodeStatus,
    ) -> Result<Self, DegradedReason> {
        let mut slots = Vec::with_capacity(leader.members.len());
        for member in &leader.members {
            let ordinal = names(&member.name)
                .ok_or_else(|| DegradedReason::ForeignMember(member.name.clone()))?;
            slots.push(Slot {
                ordinal,
                member,
                pod: obs.pods.get(&ordinal),
            });
        }
        slots.sort_by_key(|s| s.ordinal);
        Ok(Self {
            obs,
            cfg,
            leader_ordinal,
            leader_id: leader.id,
            slots,
        })
    }

    fn desired(&self) -> u32 {
        self.obs.desired_replicas
    }

    fn voters(&self) -> impl Iterator<Item = &Slot<'a>> {
        self.slots.iter().filter(|s| s.member.voter)
    }

    fn caught_up(&self, slot: &Slot<'_>) -> bool {
        slot.member.lag_entries <= self.cfg.catch_up_lag_entries
    }

    /// Would the voters (after removing `removed` and adding `added`) keep a healthy majority?
    fn quorum_after(&self, removed: Option<u64>, added_healthy: u32) -> Result<(), DegradedReason> {
        let remaining: Vec<_> = self
            .voters()
            .filter(|s| Some(s.member.id) != removed)
            .collect();
        let voters = u32::try_from(remaining.len())
            .unwrap_or(u32::MAX)
            .saturating_add(added_healthy);
        let healthy = u32::try_from(remaining.iter().filter(|s| s.healthy()).count())
            .unwrap_or(0)
            .saturating_add(added_healthy);
        if voters > 0 && healthy > voters / 2 {
            Ok(())
        } else {
            Err(DegradedReason::QuorumAtRisk { healthy, voters })
        }
    }

    /// Would the healthy voters other than `down` still be a majority of the
    /// unchanged configuration while `down`'s pod restarts?
    fn quorum_while_down(&self, down: u64) -> Result<(), DegradedReason> {
        let voters = u32::try_from(self.voters().count()).unwrap_or(u32::MAX);
        let healthy = u32::try_from(
            self.voters()
                .filter(|s| s.member.id != down && s.healthy())
                .count(),
        )
        .unwrap_or(0);
        if voters > 0 && healthy > voters / 2 {
            Ok(())
        } else {
            Err(DegradedReason::QuorumAtRisk { healthy, voters })
        }
    }

    fn remove(&self, slot: &Slot<'_>, phase: Phase) -> Plan {
        let removed = slot.member.voter.then_some(slot.member.id);
        match self.quorum_after(removed, 0) {
            Ok(()) => Plan::new(
                Action::RemoveMember {
                    id: slot.member.id,
                    name: slot.member.name.clone(),
                    via: self.leader_ordinal,
                },
                phase,
            ),
            Err(reason) => Plan::new(Action::Degraded(reason), Phase::Degraded),
        }
    }

    /// A member whose pod reports another identity is removed under its old id.
    fn replacement(&self) -> Option<Plan> {
        let slot = self.slots.iter().find(|s| s.lost_identity())?;
        Some(self.remove(slot, Phase::Scaling))
    }

    /// Learners: removed if above the spec, promoted once caught up, else waited on.
    fn learners(&self) -> Option<Plan> {
        let slot = self.slots.iter().find(|s| !s.member.voter)?;
        if slot.ordinal >= self.desired() {
            return Some(self.remove(slot, Phase::Scaling));
        }
        if !(slot.healthy() && self.caught_up(slot)) {
            return Some(self.wait_or_stalled(slot.ordinal, WaitReason::CatchingUp(slot.ordinal)));
        }
        Some(match self.quorum_after(None, 1) {
            Ok(()) => Plan::new(
                Action::Promote {
                    id: slot.member.id,
                    ordinal: slot.ordinal,
                    via: self.leader_ordinal,
                },
                Phase::Scaling,
            ),
            Err(reason) => Plan::new(Action::Degraded(reason), Phase::Degraded),
        })
    }

    /// Healthy caught-up voter (other than the leader) below `limit`, lowest lag first.
    fn transfer_target(&self, limit: u32, want_up_to_date: bool) -> Option<&Slot<'a>> {
        self.voters()
            .filter(|s| s.member.id != self.leader_id && s.ordinal < limit)
            .filter(|s| s.healthy() && self.caught_up(s))
            .filter(|s| !want_up_to_date || s.pod.is_some_and(|p| p.up_to_date))
            .min_by_key(|s| (s.member.lag_entries, s.ordinal))
    }

    fn transfer(&self, limit: u32, want_up_to_date: bool, phase: Phase) -> Plan {
        match self.transfer_target(limit, want_up_to_date) {
            Some(target) => Plan::new(
                Action::TransferLeadership {
                    to_id: target.member.id,
                    to_ordinal: target.ordinal,
                    via: self.leader_ordinal,
                },
                phase,
            ),
            None => Plan::new(
                Action::Degraded(DegradedReason::NoTransferTarget),
                Phase::Degraded,
            ),
        }
    }

    /// The highest-ordinal voter above the spec leaves: leader transfers first.
    fn scale_down(&self) -> Option<Plan> {
        let slot = self
            .voters()
            .filter(|s| s.ordinal >= self.desired())
            .max_by_key(|s| s.ordinal)?;
        if slot.member.id == self.leader_id {
            return Some(self.transfer(self.desired(), false, Phase::Scaling));
        }
        Some(self.remove(slot, Phase::Scaling))
    }

    /// StatefulSet −1 once no member lives on its highest ordinal.
    fn shrink_statefulset(&self, sts: u32) -> Option<Plan> {
        if sts <= self.desired() {
            return None;
        }
        let top = sts - 1;
        if self.slots.iter().any(|s| s.ordinal >= top) {
            return None;
        }
        Some(Plan::new(Action::ScaleStatefulSet(top), Phase::Scaling))
    }

    /// PVCs above the StatefulSet are deleted once their pod is gone, so a
    /// later scale-up starts clean instead of resurrecting a removed identity.
    fn delete_stale_pvc(&self, sts: u32) -> Option<Plan> {
        let ordinal = *self.obs.pvc_ordinals.iter().find(|o| **o >= sts)?;
        if self.obs.pods.contains_key(&ordinal) {
            return Some(Plan::new(
                Action::Wait(WaitReason::PodTerminating(ordinal)),
                Phase::Scaling,
            ));
        }
        Some(Plan::new(Action::DeletePvc(ordinal), Phase::Scaling))
    }

    /// The lowest ordinal below the spec without a member gets one.
    fn scale_up(&self, sts: u32) -> Option<Plan> {
        let members: BTreeSet<u32> = self.slots.iter().map(|s| s.ordinal).collect();
        let next = (0..self.desired()).find(|o| !members.contains(o))?;
        if next >= sts {
            return Some(Plan::new(Action::ScaleStatefulSet(sts + 1), Phase::Scaling));
        }
        let joining = self
            .obs
            .pods
            .get(&next)
            .and_then(|p| p.node.as_ref())
            .filter(|n| n.id != 0);
        Some(match joining {
            Some(node) if node.role == NodeRole::Joining => Plan::new(
                Action::AddLearner {
                    id: node.id,
                    ordinal: next,
                    via: self.leader_ordinal,
                },
                Phase::Scaling,
            ),
            _ => self.wait_or_stalled(next, WaitReason::PodStarting(next)),
        })
    }

    /// Waits on the pod of `ordinal`, or reports it Stalled once it has been
    /// not Ready for longer than the grace period. A missing pod cannot be aged: wait.
    fn wait_or_stalled(&self, ordinal: u32, reason: WaitReason) -> Plan {
        let unready_secs = self.obs.pods.get(&ordinal).map_or(0, |p| p.unready_secs);
        if unready_secs > self.cfg.unhealthy_grace_secs {
            Plan::new(
                Action::Degraded(DegradedReason::Stalled(ordinal)),
                Phase::Degraded,
            )
        } else {
            Plan::new(Action::Wait(reason), Phase::Scaling)
        }
    }

    /// First unhealthy or lagging member: a wait within the grace period, Degraded after it.
    fn health_gate(&self) -> Option<Plan> {
        let sick = self
            .slots
            .iter()
            .find(|s| !(s.healthy() && self.caught_up(s)))?;
        let action = if sick.unready_secs() > self.cfg.unhealthy_grace_secs {
            Action::Degraded(DegradedReason::MemberUnhealthy(sick.ordinal))
        } else {
            Action::Wait(WaitReason::MemberUnhealthy(sick.ordinal))
        };
        Some(Plan::new(action, Phase::Degraded))
    }

    /// Restart outdated pods one at a time: followers from the highest ordinal, leader last.
    fn rolling_update(&self) -> Option<Plan> {
        let outdated: Vec<&Slot<'_>> = self
            .slots
            .iter()
            .rev()
            .filter(|s| s.pod.is_some_and(|p| !p.up_to_date))
            .collect();
        if outdated.is_empty() {
            return self.health_gate();
        }
        if let Some(gate) = self.health_gate() {
            return Some(Plan::new(gate.action, Phase::Updating));
        }
        if let Some(follower) = outdated.iter().find(|s| s.member.id != self.leader_id) {
            if follower.member.voter
                && let Err(reason) = self.quorum_while_down(follower.member.id)
            {
                return Some(Plan::new(Action::Degraded(reason), Phase::Degraded));
            }
            return Some(Plan::new(
                Action::DeletePod(follower.ordinal),
                Phase::Updating,
            ));
        }
        if self.voters().count() == 1 {
            // A single member cannot hand off; its restart is an unavoidable outage.
            return Some(Plan::new(
                Action::DeletePod(self.leader_ordinal),
                Phase::Updating,
            ));
        }
        Some(self.transfer(u32::MAX, true, Phase::Updating))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CFG: PlannerConfig = PlannerConfig {
        catch_up_lag_entries: 100,
        unhealthy_grace_secs: 300,
    };

    fn ordinal(name: &str) -> Option<u32> {
        name.strip_prefix("t-")?.parse().ok()
    }

    fn id(ordinal: u32) -> u64 {
        1000 + u64::from(ordinal)
    }

    /// A healthy, up-to-date cluster: `members` voters, leader at `leader`, spec = members.
    fn cluster(members: u32, leader: u32) -> Observed {
        let config: Vec<MemberView> = (0..members)
            .map(|o| MemberView {
                id: id(o),
                name: format!("t-{o}"),
                voter: true,
                lag_entries: 0,
            })
            .collect();
        let pods = (0..members)
            .map(|o| {
                let node = NodeStatus {
                    id: id(o),
                    role: if o == leader {
                        NodeRole::Leader
                    } else {
                        NodeRole::Follower
                    },
                    term: 7,
                    members: config.clone(),
                };
                (o, pod(Some(node)))
            })
            .collect();
        Observed {
            desired_replicas: members,
            paused: false,
            bootstrapped: true,
            statefulset_replicas: Some(members),
            pods,
            pvc_ordinals: (0..members).collect(),
            snapshot_due: false,
        }
    }

    fn pod(node: Option<NodeStatus>) -> PodView {
        PodView {
            ready: true,
            up_to_date: true,
            terminating: false,
            unready_secs: 0,
            node,
        }
    }

    fn joining(ordinal: u32) -> PodView {
        PodView {
            ready: false,
            unready_secs: 5,
            ..pod(Some(NodeStatus {
                id: id(ordinal) + 500,
                role: NodeRole::Joining,
                term: 0,
                members: vec![],
            }))
        }
    }

    /// Applies `f` to the member list every pod reports.
    fn edit_members(obs: &mut Observed, f: impl Fn(&mut Vec<MemberView>)) {
        for p in obs.pods.values_mut() {
            if let Some(n) = p.node.as_mut() {
                f(&mut n.members);
            }
        }
    }

    fn add_learner(obs: &mut Observed, ordinal: u32, lag_entries: u64) {
        edit_members(obs, |m| {
            m.push(MemberView {
                id: id(ordinal),
                name: format!("t-{ordinal}"),
                voter: false,
                lag_entries,
            })
        });
        obs.pods.insert(
            ordinal,
            pod(Some(NodeStatus {
                id: id(ordinal),
                role: NodeRole::Learner,
                term: 7,
                members: vec![],
            })),
        );
        obs.pvc_ordinals.insert(ordinal);
    }

    fn unhealthy(obs: &mut Observed, ordinal: u32, unready_secs: u64) {
        if let Some(p) = obs.pods.get_mut(&ordinal) {
            p.ready = false;
            p.node = None;
            p.unready_secs = unready_secs;
        }
    }

    fn run(obs: &Observed) -> Action {
        plan(obs, &CFG, &ordinal).action
    }

    fn remove(ordinal: u32, via: u32) -> Action {
        Action::RemoveMember {
            id: id(ordinal),
            name: format!("t-{ordinal}"),
            via,
        }
    }

    #[test]
    fn steady_cluster_does_nothing_and_runs_snapshots_when_due() {
        let mut obs = cluster(3, 0);
        assert_eq!(
            plan(&obs, &CFG, &ordinal),
            Plan::new(Action::Steady, Phase::Running)
        );
        obs.snapshot_due = true;
        assert_eq!(run(&obs), Action::TakeSnapshot);
    }

    #[test]
    fn paused_cluster_only_waits_even_when_scaling_is_wanted() {
        let mut obs = cluster(3, 0);
        obs.paused = true;
        obs.desired_replicas = 5;
        assert_eq!(
            plan(&obs, &CFG, &ordinal),
            Plan::new(Action::Wait(WaitReason::Paused), Phase::Paused)
        );
    }

    #[test]
    fn bootstrap_waits_for_a_leader_then_marks_bootstrapped() {
        let mut obs = cluster(3, 0);
        obs.bootstrapped = false;
        assert_eq!(run(&obs), Action::MarkBootstrapped);
        for p in obs.pods.values_mut() {
            p.node = None;
        }
        assert_eq!(run(&obs), Action::Wait(WaitReason::Bootstrapping));
    }

    /// Scale up 3 → 5 walked step by step, as the reconciler would observe it.
    #[test]
    fn scale_up_adds_one_learner_at_a_time_and_promotes_after_catch_up() {
        let mut obs = cluster(3, 1);
        obs.desired_replicas = 5;
        assert_eq!(run(&obs), Action::ScaleStatefulSet(4));
        obs.statefulset_replicas = Some(4);
        assert_eq!(run(&obs), Action::Wait(WaitReason::PodStarting(3)));
        obs.pods.insert(3, joining(3));
        assert_eq!(
            run(&obs),
            Action::AddLearner {
                id: id(3) + 500,
                ordinal: 3,
                via: 1
            }
        );
        add_learner(&mut obs, 3, 5000);
        assert_eq!(run(&obs), Action::Wait(WaitReason::CatchingUp(3)));
        edit_members(&mut obs, |m| m.iter_mut().for_each(|x| x.lag_entries = 0));
        assert_eq!(
            run(&obs),
            Action::Promote {
                id: id(3),
                ordinal: 3,
                via: 1
            }
        );
        edit_members(&mut obs, |m| m.iter_mut().for_each(|x| x.voter = true));
        assert_eq!(run(&obs), Action::ScaleStatefulSet(5));
    }

    #[test]
    fn joiner_or_learner_that_never_gets_ready_is_reported_stalled() {
        let mut obs = cluster(3, 0);
        obs.desired_replicas = 4;
        obs.statefulset_replicas = Some(4);
        let mut stuck = joining(3);
        stuck.node = None;
        stuck.unready_secs = 10_000;
        obs.pods.insert(3, stuck);
        assert_eq!(run(&obs), Action::Degraded(DegradedReason::Stalled(3)));
        add_learner(&mut obs, 3, 9_000);
        if let Some(p) = obs.pods.get_mut(&3) {
            p.ready = false;
            p.unready_secs = 10;
        }
        assert_eq!(run(&obs), Action::Wait(WaitReason::CatchingUp(3)));
        if let Some(p) = obs.pods.get_mut(&3) {
            p.unready_secs = 10_000;
        }
        assert_eq!(run(&obs), Action::Degraded(DegradedReason::Stalled(3)));
    }

    #[test]
    fn scale_down_removes_highest_follower_then_shrinks_then_deletes_pvc() {
        let mut obs = cluster(5, 0);
        obs.desired_replicas = 3;
        assert_eq!(run(&obs), remove(4, 0));
        edit_members(&mut obs, |m| m.retain(|x| x.id != id(4)));
        assert_eq!(run(&obs), Action::ScaleStatefulSet(4));
        obs.statefulset_replicas = Some(4);
        if let Some(p) = obs.pods.get_mut(&4) {
            p.terminating = true;
        }
        assert_eq!(run(&obs), Action::Wait(WaitReason::PodTerminating(4)));
        obs.pods.remove(&4);
        assert_eq!(run(&obs), Action::DeletePvc(4));
        obs.pvc_ordinals.remove(&4);
        assert_eq!(run(&obs), remove(3, 0));
    }

    #[test]
    fn scale_down_of_the_leader_transfers_leadership_first() {
        let mut obs = cluster(5, 4);
        obs.desired_replicas = 3;
        edit_members(&mut obs, |m| m[2].lag_entries = 3);
        assert_eq!(
            run(&obs),
            Action::TransferLeadership {
                to_id: id(0),
                to_ordinal: 0,
                via: 4
            }
        );
    }

    /// Quorum table: (voters, unhealthy ordinals, spec) → removal allowed?
    #[test]
    fn removal_never_leaves_healthy_voters_without_a_majority() {
        let cases: [(u32, &[u32], u32, bool); 5] = [
            (5, &[], 4, true),
            (5, &[1], 4, true),
            (5, &[1, 2], 4, false),
            (3, &[1], 2, false),
            (2, &[], 1, true),
        ];
        for (voters, sick, desired, allowed) in cases {
            let mut obs = cluster(voters, 0);
            obs.desired_replicas = desired;
            for o in sick {
                unhealthy(&mut obs, *o, 10);
            }
            let action = run(&obs);
            let top = voters - 1;
            if allowed {
                assert_eq!(action, remove(top, 0), "voters={voters} sick={sick:?}");
            } else {
                assert!(
                    matches!(
                        action,
                        Action::Degraded(DegradedReason::QuorumAtRisk { .. })
                    ),
                    "voters={voters} sick={sick:?}: {action:?}"
                );
            }
        }
    }

    #[test]
    fn unreachable_member_is_never_removed_or_replaced() {
        let mut obs = cluster(3, 0);
        unhealthy(&mut obs, 2, 10);
        assert_eq!(run(&obs), Action::Wait(WaitReason::MemberUnhealthy(2)));
        unhealthy(&mut obs, 2, 10_000);
        assert_eq!(
            run(&obs),
            Action::Degraded(DegradedReason::MemberUnhealthy(2))
        );
    }

    #[test]
    fn member_with_wiped_data_is_removed_under_old_id_then_re_added() {
        let mut obs = cluster(3, 0);
        obs.pods.insert(2, joining(2));
        assert_eq!(run(&obs), remove(2, 0));
        edit_members(&mut obs, |m| m.retain(|x| x.id != id(2)));
        assert_eq!(
            run(&obs),
            Action::AddLearner {
                id: id(2) + 500,
                ordinal: 2,
                via: 0
            }
        );
    }

    #[test]
    fn rolling_update_goes_followers_highest_first_and_leader_last() {
        let mut obs = cluster(3, 1);
        for p in obs.pods.values_mut() {
            p.up_to_date = false;
        }
        assert_eq!(run(&obs), Action::DeletePod(2));
        if let Some(p) = obs.pods.get_mut(&2) {
            p.up_to_date = true;
        }
        assert_eq!(run(&obs), Action::DeletePod(0));
        if let Some(p) = obs.pods.get_mut(&0) {
            p.up_to_date = true;
        }
        assert_eq!(
            run(&obs),
            Action::TransferLeadership {
                to_id: id(0),
                to_ordinal: 0,
                via: 1
            }
        );
    }

    #[test]
    fn rolling_update_waits_for_the_restarted_pod_and_degrades_if_it_stays_down() {
        let mut obs = cluster(3, 1);
        if let Some(p) = obs.pods.get_mut(&0) {
            p.up_to_date = false;
        }
        unhealthy(&mut obs, 2, 30);
        assert_eq!(run(&obs), Action::Wait(WaitReason::MemberUnhealthy(2)));
        unhealthy(&mut obs, 2, 3000);
        assert_eq!(plan(&obs, &CFG, &ordinal).phase, Phase::Degraded);
    }

    /// Regression: with 2 voters the rolling update deleted the
    /// follower's pod, leaving 1 of 2 voters: no majority, no writes.
    #[test]
    fn two_voter_rolling_update_never_deletes_a_pod_and_drops_quorum() {
        let mut obs = cluster(2, 0);
        for p in obs.pods.values_mut() {
            p.up_to_date = false;
        }
        assert_eq!(
            run(&obs),
            Action::Degraded(DegradedReason::QuorumAtRisk {
                healthy: 1,
                voters: 2
            })
        );
        assert_eq!(plan(&obs, &CFG, &ordinal).phase, Phase::Degraded);
    }

    #[test]
    fn single_member_rolling_update_restarts_the_only_pod() {
        let mut obs = cluster(1, 0);
        if let Some(p) = obs.pods.get_mut(&0) {
            p.up_to_date = false;
        }
        assert_eq!(run(&obs), Action::DeletePod(0));
    }

    #[test]
    fn learner_above_spec_is_removed_when_scale_up_is_reverted() {
        let mut obs = cluster(3, 0);
        obs.statefulset_replicas = Some(4);
        add_learner(&mut obs, 3, 9000);
        assert_eq!(run(&obs), remove(3, 0));
    }

    #[test]
    fn stale_pvc_above_statefulset_is_deleted_before_scaling_up() {
        let mut obs = cluster(3, 0);
        obs.pvc_ordinals.insert(3);
        obs.desired_replicas = 4;
        assert_eq!(run(&obs), Action::DeletePvc(3));
    }

    #[test]
    fn foreign_member_stops_the_planner() {
        let mut obs = cluster(3, 0);
        edit_members(&mut obs, |m| {
            m.push(MemberView {
                id: 9,
                name: "intruder".to_string(),
                voter: true,
                lag_entries: 0,
            })
        });
        assert_eq!(
            run(&obs),
            Action::Degraded(DegradedReason::ForeignMember("intruder".to_string()))
        );
    }

    #[test]
    fn stale_leader_claim_from_an_older_term_is_ignored() {
        let mut obs = cluster(3, 0);
        if let Some(n) = obs.pods.get_mut(&2).and_then(|p| p.node.as_mut()) {
            n.role = NodeRole::Leader;
            n.term = 3;
        }
        obs.desired_replicas = 2;
        assert_eq!(run(&obs), remove(2, 0));
    }

    #[test]
    fn no_leader_after_bootstrap_waits_then_degrades() {
        let mut obs = cluster(3, 0);
        for o in 0..3 {
            unhealthy(&mut obs, o, 10);
        }
        assert_eq!(run(&obs), Action::Wait(WaitReason::NoLeader));
        for o in 0..3 {
            unhealthy(&mut obs, o, 10_000);
        }
        assert_eq!(run(&obs), Action::Degraded(DegradedReason::NoLeader));
    }
}
