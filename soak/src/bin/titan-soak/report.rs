//! The end of a soak: wait for convergence, read every key back (through the
//! leader and from every member), then check the history: no acknowledged
//! write lost, every key linearizable, every member holding the same data.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::Result;
use titan_client::Consistency;
use titan_soak::linearizability::{self, CasOutcome, OpKind, Verdict};

use crate::cluster::{self, Node};
use crate::nemesis::Nemesis;
use crate::workload::{self, History, Outcome, Record};

/// How long the healed cluster gets to agree.
const CONVERGE_WITHIN: Duration = Duration::from_secs(60);
/// How long the final read-back of every key may take in total.
const FINAL_READS_WITHIN: Duration = Duration::from_secs(60);

/// Runs the final checks and prints the summary; `Ok(true)` if all passed.
pub async fn finish(
    nem: &mut Nemesis,
    history: &History,
    keys: u32,
    endpoints: &[String],
    log: fn(&str),
) -> Result<bool> {
    let converged = wait_converged(&nem.nodes, log).await;
    let c = workload::client(endpoints)?;
    let first_final = history.snapshot().len();
    let deadline = Instant::now() + FINAL_READS_WITHIN;
    for key in 0..keys {
        while workload::read(&c, history, key).await.is_none() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
    let records = history.snapshot();
    if let Err(e) = write_history(&records, &nem.launcher.logs.join("history.tsv")) {
        log(&format!("could not write the history: {e}"));
    }
    let finals = final_values(&records[first_final..]);
    let replicas_agree = replicas_agree(&nem.nodes, &finals, log).await;
    let lost = lost_acknowledged_writes(&records, &finals);
    let ops: Vec<_> = records.iter().map(|r| r.op).collect();
    let verdict = linearizability::check(&ops);
    print_summary(
        nem,
        &records,
        &finals,
        lost,
        &verdict,
        converged && replicas_agree,
        log,
    );
    let passed = lost == 0
        && nem.findings.is_empty()
        && verdict == Verdict::Linearizable
        && converged
        && replicas_agree
        && finals.len() == keys as usize;
    log(if passed {
        "RESULT: PASS"
    } else {
        "RESULT: FAIL"
    });
    Ok(passed)
}

/// Every member running, one leader, and equal applied indexes.
async fn wait_converged(nodes: &[Node], log: fn(&str)) -> bool {
    let Ok(admin) = cluster::admin(nodes) else {
        return false;
    };
    let deadline = Instant::now() + CONVERGE_WITHIN;
    let mut last = String::new();
    while Instant::now() < deadline {
        let mut applied = Vec::new();
        for n in nodes.iter().filter(|n| n.member) {
            match admin.status_of(&n.admin_addr()).await {
                Ok(s) if s.leader_id != 0 => {
                    applied.push((n.name.clone(), s.applied_index, s.commit_index))
                }
                Ok(_) => applied.push((n.name.clone(), 0, u64::MAX)),
                Err(_) => applied.push((n.name.clone(), 0, u64::MAX)),
            }
        }
        last = format!("{applied:?}");
        let first = applied.first().map(|a| a.1);
        if applied
            .iter()
            .all(|a| Some(a.1) == first && a.1 == a.2 && a.1 > 0)
        {
            log(&format!("converged: {last}"));
            return true;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    log(&format!("NOT converged within {CONVERGE_WITHIN:?}: {last}"));
    false
}

/// The value each key's last successful final read saw.
fn final_values(final_reads: &[Record]) -> BTreeMap<u32, Option<u64>> {
    let mut finals = BTreeMap::new();
    for r in final_reads {
        if let (OpKind::Get { value }, Outcome::Ok) = (r.op.kind, r.outcome) {
            finals.insert(r.op.key, value);
        }
    }
    finals
}

/// Each member's own (serializable) view of every key equals the final value.
async fn replicas_agree(
    nodes: &[Node],
    finals: &BTreeMap<u32, Option<u64>>,
    log: fn(&str),
) -> bool {
    let mut agree = true;
    for n in nodes.iter().filter(|n| n.member) {
        let Ok(c) = workload::client(&[n.grpc_addr()]) else {
            return false;
        };
        for (key, want) in finals {
            let got = c.get(key.to_string(), Consistency::Serializable).await;
            let got = got
                .ok()
                .map(|v| v.and_then(|(v, _)| String::from_utf8(v).ok()?.parse::<u64>().ok()));
            if got != Some(*want) {
                log(&format!(
                    "replica {} key {key}: has {got:?}, leader has {want:?}",
                    n.name
                ));
                agree = false;
            }
        }
    }
    agree
}

/// Acknowledged writes (puts and swapped transactions) invoked after the
/// write whose value survived returned: they should have overwritten it,
/// so they were lost.
fn lost_acknowledged_writes(records: &[Record], finals: &BTreeMap<u32, Option<u64>>) -> usize {
    let mut lost = 0;
    for (key, fin) in finals {
        let puts = records.iter().filter(|r| r.op.key == *key);
        let puts: Vec<_> = puts.filter(|r| r.op.kind.written().is_some()).collect();
        let survivor_ret = match fin {
            None => Some(0),
            Some(v) => puts
                .iter()
                .find(|r| r.op.kind.written() == Some(*v))
                .map(|r| r.op.ret.unwrap_or(u64::MAX)),
        };
        // A value no put wrote is caught by the linearizability check.
        let Some(after) = survivor_ret else { continue };
        lost += puts
            .iter()
            .filter(|r| r.outcome == Outcome::Ok && r.op.call > after)
            .count();
    }
    lost
}

fn print_summary(
    nem: &Nemesis,
    records: &[Record],
    finals: &BTreeMap<u32, Option<u64>>,
    lost: usize,
    verdict: &Verdict<u32>,
    converged: bool,
    log: fn(&str),
) {
    let count = |kind: &str, o: Outcome| {
        let of_kind = |r: &&Record| kind_name(r.op.kind) == kind;
        records
            .iter()
            .filter(of_kind)
            .filter(|r| r.outcome == o)
            .count()
    };
    let swapped = records
        .iter()
        .filter(|r| r.outcome == Outcome::Ok && kind_name(r.op.kind) == "cas")
        .filter(|r| r.op.kind.written().is_some())
        .count();
    log(&format!(
        "ops: {} total; puts ok {} unknown {}; reads ok {} failed {}; \
         txns (compare-and-swap) answered {} (swapped {swapped}) unknown {}",
        records.len(),
        count("put", Outcome::Ok),
        count("put", Outcome::Unknown),
        count("get", Outcome::Ok),
        count("get", Outcome::Fail),
        count("cas", Outcome::Ok),
        count("cas", Outcome::Unknown),
    ));
    let total: u64 = nem.counts.values().sum();
    log(&format!("faults injected: {total} {:?}", nem.counts));
    log(&format!(
        "fault steps that failed to apply: {}",
        nem.errors.len()
    ));
    for e in &nem.errors {
        log(&format!("  {e}"));
    }
    let members: Vec<_> = nem
        .nodes
        .iter()
        .filter(|n| n.member)
        .map(|n| n.name.clone())
        .collect();
    log(&format!(
        "final members: {members:?}; keys read back: {}",
        finals.len()
    ));
    log(&format!("findings during the run: {}", nem.findings.len()));
    for f in &nem.findings {
        log(&format!("  {f}"));
    }
    log(&format!("acknowledged writes lost: {lost}"));
    log(&format!(
        "linearizability (WGL, per key, txns included): {verdict:?}"
    ));
    log(&format!(
        "cluster converged and replicas agree: {converged}"
    ));
}

/// The history's name for an operation kind.
fn kind_name(kind: OpKind) -> &'static str {
    match kind {
        OpKind::Put { .. } => "put",
        OpKind::Get { .. } => "get",
        OpKind::Cas { .. } => "cas",
    }
}

/// A value or `absent`.
fn shown(v: Option<u64>) -> String {
    v.map_or("absent".into(), |v| v.to_string())
}

/// Writes the history, one operation per line:
/// `key  put|get|cas  value  call_ns  return_ns|-  ok|fail|unknown`, where
/// a cas's value is `EXPECT>VALUE:swapped|failed=OBSERVED|?`.
fn write_history(records: &[Record], path: &std::path::Path) -> std::io::Result<()> {
    use std::io::Write;
    let mut out = std::io::BufWriter::new(std::fs::File::create(path)?);
    for r in records {
        let kind = kind_name(r.op.kind);
        let value = match r.op.kind {
            OpKind::Put { value } => value.to_string(),
            OpKind::Get { value } => shown(value),
            OpKind::Cas {
                expect,
                value,
                outcome,
            } => {
                let how = match outcome {
                    Some(CasOutcome::Swapped) => "swapped".to_string(),
                    Some(CasOutcome::Failed { observed }) => format!("failed={}", shown(observed)),
                    None => "?".to_string(),
                };
                format!("{}>{value}:{how}", shown(expect))
            }
        };
        let ret = r.op.ret.map_or("-".into(), |t| t.to_string());
        let outcome = format!("{:?}", r.outcome).to_lowercase();
        writeln!(
            out,
            "{}\t{kind}\t{value}\t{}\t{ret}\t{outcome}",
            r.op.key, r.op.call
        )?;
    }
    out.flush()
}
