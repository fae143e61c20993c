//! `titan-bench table FILE...`: turns the JSON summaries that `--json` runs
//! wrote into one Markdown comparison table. Runs are grouped by op mix and
//! client count; repeated runs of one system in a group are reduced to their
//! median; the first system seen is the baseline of the ratio columns.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// Arguments of the `table` subcommand.
#[derive(Debug, clap::Parser)]
#[command(
    name = "titan-bench table",
    about = "Prints a Markdown table (medians, ratios to the first system) from titan-bench --json summaries"
)]
pub struct TableArgs {
    /// JSON summaries written by `titan-bench --json`.
    #[arg(required = true)]
    pub files: Vec<PathBuf>,
}

/// Why a summary cannot be tabulated.
#[derive(Debug, thiserror::Error)]
pub enum TableError {
    /// The file could not be read.
    #[error("{path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is not JSON.
    #[error("{path}: not JSON: {source}")]
    Json {
        /// The file.
        path: String,
        /// The parse error.
        source: serde_json::Error,
    },
    /// A field the table needs is missing or has the wrong type.
    #[error("{path}: missing or malformed field `{field}` (not a titan-bench --json summary?)")]
    Field {
        /// The file.
        path: String,
        /// The JSON pointer of the field.
        field: &'static str,
    },
}

/// The figures of one run that the table shows.
#[derive(Debug, Clone, PartialEq)]
pub struct Run {
    /// `params.target`: titan-tcp, titan-grpc or etcd.
    pub system: String,
    /// `params.mix`: put, get, mixed, cas.
    pub op: String,
    /// `params.clients`.
    pub clients: u64,
    /// Successful operations per second.
    pub throughput_ops_s: f64,
    /// Median latency, microseconds.
    pub p50_us: f64,
    /// 99th percentile latency, microseconds.
    pub p99_us: f64,
    /// Failed operations.
    pub errors: u64,
}

/// Reads one summary file.
pub fn load(path: &Path) -> Result<Run, TableError> {
    let name = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| TableError::Read {
        path: name.clone(),
        source,
    })?;
    let json: serde_json::Value =
        serde_json::from_str(&text).map_err(|source| TableError::Json {
            path: name.clone(),
            source,
        })?;
    parse(&json).map_err(|field| TableError::Field { path: name, field })
}

/// Extracts a [`Run`]; on failure, the JSON pointer of the missing field.
pub fn parse(s: &serde_json::Value) -> Result<Run, &'static str> {
    let str_at = |p: &'static str| s.pointer(p).and_then(|v| v.as_str()).ok_or(p);
    let u64_at = |p: &'static str| s.pointer(p).and_then(|v| v.as_u64()).ok_or(p);
    let f64_at = |p: &'static str| s.pointer(p).and_then(|v| v.as_f64()).ok_or(p);
    Ok(Run {
        system: str_at("/params/target")?.to_string(),
        op: str_at("/params/mix")?.to_string(),
        // Watch and lease summaries group by watchers / leases instead.
        clients: u64_at("/clients").or_else(|_| u64_at("/params/clients"))?,
        throughput_ops_s: f64_at("/throughput_ops_s")?,
        p50_us: f64_at("/latency_us/p50")?,
        p99_us: f64_at("/latency_us/p99")?,
        errors: u64_at("/errors_total")?,
    })
}

/// The median of `values` (mean of the middle two for an even count);
/// None when empty.
pub fn median(values: &[f64]) -> Option<f64> {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(v[n / 2]),
        _ => Some((v[n / 2 - 1] + v[n / 2]) / 2.0),
    }
}

/// Median figures of one system in one (op, clients) group.
struct Cell {
    runs: usize,
    ops_s: f64,
    p50_ms: f64,
    p99_ms: f64,
    errors: u64,
}

fn cell(runs: &[&Run]) -> Option<Cell> {
    let pick = |f: fn(&Run) -> f64| median(&runs.iter().map(|r| f(r)).collect::<Vec<_>>());
    Some(Cell {
        runs: runs.len(),
        ops_s: pick(|r| r.throughput_ops_s)?,
        p50_ms: pick(|r| r.p50_us)? / 1000.0,
        p99_ms: pick(|r| r.p99_us)? / 1000.0,
        errors: runs.iter().map(|r| r.errors).sum(),
    })
}

/// Renders the Markdown table: one row per (op, clients), per system the
/// median ops/s, p50 and p99 (ms), the summed errors and the run count, then
/// `first/other` ops/s ratios. Absent cells print `-`.
pub fn render(runs: &[Run]) -> String {
    let mut systems: Vec<&str> = Vec::new();
    let mut ops: Vec<&str> = Vec::new();
    for r in runs {
        if !systems.contains(&r.system.as_str()) {
            systems.push(&r.system);
        }
        if !ops.contains(&r.op.as_str()) {
            ops.push(&r.op);
        }
    }
    let mut out = String::from("| op | clients |");
    let mut rule = String::from("|---|---:|");
    for s in &systems {
        let _ = write!(
            out,
            " {s} ops/s | {s} p50 ms | {s} p99 ms | {s} errors | {s} runs |"
        );
        rule.push_str("---:|---:|---:|---:|---:|");
    }
    for s in systems.iter().skip(1) {
        let _ = write!(out, " {}/{s} ops/s |", systems[0]);
        rule.push_str("---:|");
    }
    let _ = writeln!(out, "\n{rule}");
    for op in &ops {
        let clients: BTreeSet<u64> = runs
            .iter()
            .filter(|r| r.op == *op)
            .map(|r| r.clients)
            .collect();
        for c in clients {
            let cells: Vec<Option<Cell>> = systems
                .iter()
                .map(|s| {
                    let group: Vec<&Run> = runs
                        .iter()
                        .filter(|r| r.op == *op && r.clients == c && r.system == *s)
                        .collect();
                    cell(&group)
                })
                .collect();
            out.push_str(&row(op, c, &cells));
        }
    }
    out
}

fn row(op: &str, clients: u64, cells: &[Option<Cell>]) -> String {
    let mut line = format!("| {op} | {clients} |");
    for c in cells {
        match c {
            Some(c) => {
                let _ = write!(
                    line,
                    " {:.0} | {:.2} | {:.2} | {} | {} |",
                    c.ops_s, c.p50_ms, c.p99_ms, c.errors, c.runs
                );
            }
            None => line.push_str(" - | - | - | - | - |"),
        }
    }
    for c in cells.iter().skip(1) {
        match (&cells[0], c) {
            (Some(base), Some(other)) if other.ops_s > 0.0 => {
                let _ = write!(line, " {:.2}x |", base.ops_s / other.ops_s);
            }
            _ => line.push_str(" - |"),
        }
    }
    line.push('\n');
    line
}

/// Runs the subcommand: loads every file, prints the table.
pub fn main(args: &TableArgs) -> Result<String, TableError> {
    let runs = args
        .files
        .iter()
        .map(|p| load(p))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(render(&runs))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(system: &str, op: &str, clients: u64, ops_s: f64, p50_us: f64) -> Run {
        Run {
            system: system.into(),
            op: op.into(),
            clients,
            throughput_ops_s: ops_s,
            p50_us,
            p99_us: p50_us * 4.0,
            errors: 0,
        }
    }

    #[test]
    fn median_of_odd_even_and_empty_sets() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), Some(2.5));
        assert_eq!(median(&[]), None);
    }

    #[test]
    fn repeated_runs_reduce_to_medians_and_ratios_compare_to_the_first_system() {
        let runs = [
            run("titan-tcp", "put", 16, 9000.0, 1500.0),
            run("titan-tcp", "put", 16, 1000.0, 900.0),
            run("titan-tcp", "put", 16, 3000.0, 1000.0),
            run("etcd", "put", 16, 1500.0, 2000.0),
            run("titan-tcp", "get", 1, 500.0, 250.0),
        ];
        let table = render(&runs);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(
            lines[0],
            "| op | clients | titan-tcp ops/s | titan-tcp p50 ms | titan-tcp p99 ms | \
             titan-tcp errors | titan-tcp runs | etcd ops/s | etcd p50 ms | etcd p99 ms | \
             etcd errors | etcd runs | titan-tcp/etcd ops/s |"
        );
        assert_eq!(
            lines[1],
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
        );
        assert_eq!(
            lines[2],
            "| put | 16 | 3000 | 1.00 | 4.00 | 0 | 3 | 1500 | 2.00 | 8.00 | 0 | 1 | 2.00x |"
        );
        assert_eq!(
            lines[3],
            "| get | 1 | 500 | 0.25 | 1.00 | 0 | 1 | - | - | - | - | - | - |"
        );
        assert_eq!(lines.len(), 4);
    }

    #[test]
    fn a_real_summary_parses_and_a_foreign_json_names_the_missing_field() {
        let summary = serde_json::json!({
            "params": {"target": "titan-grpc", "mix": "mixed", "clients": 64},
            "elapsed_s": 1.0, "ops": 10, "errors_total": 2, "throughput_ops_s": 10.0,
            "latency_us": {"mean": 1.0, "p50": 700, "p95": 900, "p99": 1200, "p999": 1300, "max": 1400},
            "errors": {}, "redirects": 0
        });
        let r = parse(&summary).expect("a summary");
        assert_eq!(r.system, "titan-grpc");
        assert_eq!((r.op.as_str(), r.clients, r.errors), ("mixed", 64, 2));
        assert_eq!(
            parse(&serde_json::json!({"params": {}})),
            Err("/params/target")
        );
    }

    #[test]
    fn watch_and_lease_summaries_group_by_their_own_client_count() {
        let summary = serde_json::json!({
            "params": {"target": "titan-etcd", "mix": "watch", "clients": 4},
            "clients": 1000, "errors_total": 0, "throughput_ops_s": 2e5,
            "latency_us": {"p50": 900, "p99": 4000}
        });
        let r = parse(&summary).expect("a watch summary");
        assert_eq!((r.op.as_str(), r.clients), ("watch", 1000));
    }

    #[test]
    fn an_unreadable_or_non_json_file_is_a_clear_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let bad = dir.path().join("bad.json");
        std::fs::write(&bad, "not json").expect("write");
        let err = load(&bad).expect_err("not JSON").to_string();
        assert!(err.contains("bad.json: not JSON"), "{err}");
        let err = load(&dir.path().join("missing.json"))
            .expect_err("absent")
            .to_string();
        assert!(err.contains("missing.json"), "{err}");
    }
}
