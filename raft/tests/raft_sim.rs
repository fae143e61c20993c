//! Seeded whole-cluster simulation (VOPR style). One seed drives message
//! drop/delay/reorder/duplication, partitions (including one-way), crashes
//! that lose unsynced writes, client puts and reads, membership changes,
//! leadership transfers and log compaction. A *safety* phase injects
//! faults; a *liveness* phase heals everything and requires a leader and a
//! new committed write within a tick budget, then convergence.
//!
//! `TITAN_SIM_SEED=<n>` replays one seed; `TITAN_SIM_SEEDS=<count>` (and
//! optionally `TITAN_SIM_SEED_START`) runs a soak.

mod sim;

use std::collections::BTreeSet;

use sim::checker::check_log_matching;
use sim::cluster::Cluster;
use sim::linearizability::{self, Verdict};
use sim::network::Faults;
use sim::workload::Workload;
use titan_raft::rng::SplitMix64;
use titan_raft::{
    ConfChange, ConfChangeType, ConfState, EntryKind, NodeId, Role, Storage, apply_change,
};

/// Seeds run by a plain `cargo test`.
const DEFAULT_SEEDS: u64 = 300;
/// Length of the fault-injection phase.
const SAFETY_STEPS: u64 = 600;
/// Budget to elect a leader and commit a new write once healed.
const LIVENESS_COMMIT_TICKS: u64 = 400;
/// Budget for every member to apply the leader's commit index afterwards.
const CONVERGENCE_TICKS: u64 = 300;
/// Members in the simulated world (ids `1..=TOTAL_NODES`); the first three found the cluster.
const TOTAL_NODES: u64 = 5;
/// At most this many members are down at once during the safety phase.
const MAX_CRASHED: usize = 2;

/// What a run produced; equal for equal seeds.
#[derive(Debug, PartialEq, Eq)]
struct Summary {
    completed_ops: u64,
    /// Coverage: (terms with a leader, committed conf changes, snapshots
    /// installed, crashes, puts completed through a follower's forward).
    coverage: [u64; 5],
    messages: u64,
    final_applied: u64,
    inconclusive: bool,
}

fn run_seed(seed: u64) -> Result<Summary, String> {
    let mut rng = SplitMix64::new(seed.wrapping_mul(0x2545_F491_4F6C_DD1D) ^ 0x5EED);
    let pre_vote = rng.chance(3, 4);
    let check_quorum = rng.chance(3, 4);
    // Lease reads were removed; the draw that chose
    // them stays so every seed keeps the fault schedule it always had.
    let _former_lease_draw = check_quorum && rng.chance(1, 3);
    let mut c = Cluster::new(3, TOTAL_NODES, seed, |cfg| {
        cfg.pre_vote = pre_vote;
        cfg.check_quorum = check_quorum;
    });
    c.net.faults = Faults {
        drop_per_mille: rng.below(150),
        dup_per_mille: rng.below(50),
        max_delay_ticks: rng.below(4),
    };
    c.persist_per_mille = 500 + rng.below(501);
    c.checker.log_matching_every = 25;
    let mut w = Workload::new(3);
    for _ in 0..SAFETY_STEPS {
        inject_faults(&mut c, &mut rng)?;
        admin(&mut c, &mut rng);
        w.issue(&mut c, 300);
        c.step()?;
        w.observe(&mut c);
    }
    liveness(&mut c, &mut w)?;
    let final_applied = converge(&mut c, &mut w)?;
    check_log_matching(&c.nodes)?;
    let verdict = linearizability::check(&w.final_history());
    if let Verdict::Violation { key } = verdict {
        return Err(format!("history of key {key} is not linearizable"));
    }
    let conf_changes = c
        .checker
        .applied
        .values()
        .filter(|(e, _)| e.kind == EntryKind::ConfChange)
        .count();
    let coverage = [
        c.checker.leaders.len() as u64,
        conf_changes as u64,
        c.snapshots_installed,
        c.crashes,
        w.completed_forwarded,
    ];
    Ok(Summary {
        completed_ops: w.completed,
        coverage,
        messages: c.net.sent,
        final_applied,
        inconclusive: verdict == Verdict::Inconclusive,
    })
}

fn inject_faults(c: &mut Cluster, rng: &mut SplitMix64) -> Result<(), String> {
    let ids = c.ids.clone();
    let down: Vec<NodeId> = ids
        .iter()
        .copied()
        .filter(|&id| !c.node(id).is_up())
        .collect();
    if down.len() < MAX_CRASHED && rng.chance(5, 1000) {
        let up = c.up_ids();
        c.crash(up[rng.below(up.len() as u64) as usize]);
    }
    for id in down {
        if rng.chance(30, 1000) {
            c.restart(id)?;
        }
    }
    if rng.chance(10, 1000) {
        c.net.heal();
        let a = ids[rng.below(ids.len() as u64) as usize];
        let b = ids[rng.below(ids.len() as u64) as usize];
        match rng.below(3) {
            0 => c.net.isolate(a, &ids),
            1 => c.net.split(&[a, b], &ids),
            _ => c.net.block_one_way(a, b),
        }
    } else if rng.chance(20, 1000) {
        c.net.heal();
    }
    if rng.chance(10, 1000) {
        let up = c.up_ids();
        c.compact(up[rng.below(up.len() as u64) as usize]);
    }
    Ok(())
}

/// Occasional leadership transfers and single-server membership changes.
fn admin(c: &mut Cluster, rng: &mut SplitMix64) {
    if !rng.chance(15, 1000) {
        return;
    }
    let Some(leader) = c.leader() else { return };
    let conf = c.node(leader).raw().status().conf;
    if rng.chance(1, 3) {
        let voters: Vec<NodeId> = conf.voters.iter().copied().collect();
        let target = voters[rng.below(voters.len() as u64) as usize];
        let _ = c.node_mut(leader).raw_mut().transfer_leader(target);
        return;
    }
    let cc = pick_conf_change(&conf, &c.ids, rng);
    if let Some(cc) = cc {
        let _ = c.node_mut(leader).raw_mut().propose_conf_change(cc);
    }
}

fn pick_conf_change(conf: &ConfState, ids: &[NodeId], rng: &mut SplitMix64) -> Option<ConfChange> {
    let outsiders: Vec<NodeId> = ids
        .iter()
        .copied()
        .filter(|&id| !conf.contains(id))
        .collect();
    let learners: Vec<NodeId> = conf.learners.iter().copied().collect();
    let voters: Vec<NodeId> = conf.voters.iter().copied().collect();
    let pick = |v: &[NodeId], rng: &mut SplitMix64| v[rng.below(v.len() as u64) as usize];
    let (change, node_id) = match rng.below(3) {
        0 if !outsiders.is_empty() => (ConfChangeType::AddLearner, pick(&outsiders, rng)),
        1 if !learners.is_empty() => (ConfChangeType::PromoteLearner, pick(&learners, rng)),
        2 if !learners.is_empty() && rng.chance(1, 2) => {
            (ConfChangeType::RemoveNode, pick(&learners, rng))
        }
        2 if voters.len() > 3 => (ConfChangeType::RemoveNode, pick(&voters, rng)),
        _ => return None,
    };
    Some(ConfChange {
        change,
        node_id,
        context: Vec::new(),
    })
}

/// Membership as of the entries the checker saw applied (committed).
fn committed_conf(c: &Cluster) -> ConfState {
    let mut conf = ConfState::default();
    for (e, _) in c.checker.applied.values() {
        if e.kind != EntryKind::ConfChange {
            continue;
        }
        if let Ok(cc) = ConfChange::decode(&e.data)
            && let Ok(next) = apply_change(&conf, &cc)
        {
            conf = next;
        }
    }
    conf
}

/// Heal, restart members, retire non-members (as an operator would), then
/// require a leader and a newly committed write within the budget.
fn liveness(c: &mut Cluster, w: &mut Workload) -> Result<(), String> {
    c.net.heal();
    c.net.faults = Faults {
        drop_per_mille: 0,
        dup_per_mille: 0,
        max_delay_ticks: 1,
    };
    let members = committed_conf(c);
    for id in c.ids.clone() {
        if members.contains(id) {
            c.restart(id)?;
        } else if c.node(id).is_up() {
            c.crash(id);
        }
    }
    let mut probe: Option<(u64, u64)> = None; // (op id, started at)
    for _ in 0..LIVENESS_COMMIT_TICKS {
        c.step()?;
        w.observe(c);
        if let Some((op, _)) = probe
            && w.put_completed(op)
        {
            return Ok(());
        }
        let stale = probe.is_none_or(|(_, at)| c.now > at + 50);
        if let (true, Some(leader)) = (stale, c.leader()) {
            let client = w.clients;
            probe = w.start_put(c, client, leader, 0).map(|op| (op, c.now));
        }
    }
    Err(format!(
        "liveness: no new write committed within {LIVENESS_COMMIT_TICKS} ticks of healing"
    ))
}

/// Runs until every live member has applied the leader's commit index, then
/// compares their state machines.
fn converge(c: &mut Cluster, w: &mut Workload) -> Result<u64, String> {
    for _ in 0..CONVERGENCE_TICKS {
        c.step()?;
        w.observe(c);
        let Some(leader) = c.leader() else { continue };
        let commit = c.node(leader).raw().status().commit;
        let members: BTreeSet<NodeId> = c
            .members(leader)
            .into_iter()
            .filter(|&id| c.node(id).is_up())
            .collect();
        if members.iter().all(|&id| c.node(id).applied == commit) {
            let reference = &c.node(leader).kv;
            for &id in &members {
                if &c.node(id).kv != reference {
                    return Err(format!(
                        "applied state of {id} differs from leader {leader} at {commit}"
                    ));
                }
            }
            return Ok(commit);
        }
    }
    if std::env::var("TITAN_SIM_DEBUG").is_ok() {
        for n in c.nodes.values() {
            if let Some(r) = n.raw.as_ref() {
                eprintln!(
                    "{} {:?} pending={} snap={:?} first={}",
                    n.id,
                    r.status(),
                    n.pending.is_some(),
                    r.storage().snapshot_meta(),
                    r.storage().first_index()
                );
            }
        }
    }
    let roles: Vec<(NodeId, Option<Role>, u64)> = c
        .nodes
        .values()
        .map(|n| (n.id, n.raw.as_ref().map(|r| r.status().role), n.applied))
        .collect();
    Err(format!(
        "members did not converge within {CONVERGENCE_TICKS} ticks: {roles:?}"
    ))
}

/// Runs `seed`, turning a panic into an error so the seed is reported.
fn run_reported(seed: u64) -> Result<Summary, String> {
    match std::panic::catch_unwind(|| run_seed(seed)) {
        Ok(r) => r,
        Err(p) => {
            let msg = p
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()));
            Err(format!("panic: {}", msg.unwrap_or_default()))
        }
    }
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

#[test]
fn seeded_fault_runs_stay_safe_linearizable_and_recover() {
    let seeds: Vec<u64> = match env_u64("TITAN_SIM_SEED") {
        Some(seed) => vec![seed],
        None => {
            let start = env_u64("TITAN_SIM_SEED_START").unwrap_or(0);
            (start..start + env_u64("TITAN_SIM_SEEDS").unwrap_or(DEFAULT_SEEDS)).collect()
        }
    };
    let (mut failures, mut ops, mut inconclusive, mut coverage) = (Vec::new(), 0, 0, [0u64; 5]);
    for &seed in &seeds {
        match run_reported(seed) {
            Ok(s) => {
                ops += s.completed_ops;
                inconclusive += u64::from(s.inconclusive);
                for (total, n) in coverage.iter_mut().zip(s.coverage) {
                    *total += n;
                }
            }
            Err(e) => {
                eprintln!("seed {seed} failed: {e}\nreproduce with TITAN_SIM_SEED={seed}");
                failures.push(seed);
                if failures.len() >= 5 {
                    break;
                }
            }
        }
    }
    let [leaders, confs, snaps, crashes, forwarded] = coverage;
    eprintln!(
        "{} seeds: {ops} completed client ops ({forwarded} forwarded by a follower), \
         {inconclusive} inconclusive histories, \
         {leaders} leader terms, {confs} committed conf-change entries (incl. bootstrap), \
         {snaps} snapshots installed, {crashes} crashes",
        seeds.len()
    );
    assert!(
        failures.is_empty(),
        "failing seeds: {failures:?} (reproduce with TITAN_SIM_SEED=<n>)"
    );
    assert!(
        seeds.len() < 10 || forwarded > 0,
        "no forwarded put completed: the follower path went unexercised"
    );
}

#[test]
fn same_seed_replays_the_identical_run() {
    let a = run_reported(42);
    let b = run_reported(42);
    assert!(a.is_ok(), "{a:?}");
    assert_eq!(a, b);
    assert_ne!(
        run_reported(43).ok(),
        a.ok(),
        "different seeds explore different runs"
    );
}
