//! `titan-bench`: closed-loop load generator for Titan (TCP, gRPC or its etcd
//! v3 API) and, for comparison, etcd (v3 gRPC). Each client sends one
//! operation, waits for the reply, records the latency and sends the next.
//! Over the etcd API two more modes exist: watch fan-out (`--op watch`, see
//! `watch`) and leases kept alive (`--op lease`, see `lease`).
//!
//! `titan-bench table FILE...` instead prints a Markdown comparison table of
//! the JSON summaries earlier `--json` runs wrote (see `table`), and
//! `titan-bench quantiles FILE...` the p50/p90/p99 of the histograms in saved
//! `/metrics` files (see `quantiles`).

mod conn;
mod etcd_ops;
mod lease;
mod quantiles;
mod runner;
mod stats;
mod table;
mod tcp;
mod watch;
mod workload;
mod zipf;

use clap::{Parser, ValueEnum};
use conn::Target;
use std::process::ExitCode;
use workload::{Dist, Mix};

/// Closed-loop load generator for Titan (and etcd, for comparison).
#[derive(Debug, Clone, Parser, serde::Serialize)]
#[command(
    name = "titan-bench",
    version,
    about = "Closed-loop load generator for Titan (TCP or gRPC) and etcd v3, for comparison",
    after_help = "Comparison table: `titan-bench table FILE...` prints a Markdown table \
                  (medians, ratios to the first system) of --json summaries. Histogram \
                  quantiles: `titan-bench quantiles FILE...` reads saved /metrics text."
)]
pub struct Args {
    /// What to load.
    #[arg(long, value_enum, default_value_t = Target::TitanTcp)]
    pub target: Target,
    /// Node addresses, comma-separated. Connections are spread over them;
    /// Titan writes follow NOT_LEADER redirects to the leader.
    #[arg(
        long,
        env = "TITAN_BENCH_ENDPOINTS",
        value_delimiter = ',',
        default_value = "localhost:6001"
    )]
    pub endpoints: Vec<String>,
    /// Concurrent closed-loop clients.
    #[arg(long, default_value_t = 16)]
    pub clients: usize,
    /// Connections shared by the clients (0 = one per client).
    #[arg(long, default_value_t = 0)]
    pub connections: usize,
    /// Measured run time in seconds (ignored with --ops).
    #[arg(long, default_value_t = 10.0)]
    pub duration_secs: f64,
    /// Stop after this many operations instead of after a duration.
    #[arg(long)]
    pub ops: Option<u64>,
    /// Unmeasured warm-up before the measured run, in seconds.
    #[arg(long, default_value_t = 0.0)]
    pub warmup_secs: f64,
    /// Operation mix.
    #[arg(long = "op", value_enum, default_value_t = Mix::Put)]
    pub mix: Mix,
    /// Share of reads in the `mixed` op mix.
    #[arg(long, default_value_t = 0.5)]
    pub read_ratio: f64,
    /// Value size in bytes.
    #[arg(long, default_value_t = 256)]
    pub value_size: usize,
    /// Number of distinct keys.
    #[arg(long, default_value_t = 10_000)]
    pub keys: usize,
    /// Key distribution.
    #[arg(long, value_enum, default_value_t = Dist::Uniform)]
    pub dist: Dist,
    /// Zipf exponent (with --dist zipf).
    #[arg(long, default_value_t = 0.99)]
    pub zipf_s: f64,
    /// Read consistency.
    #[arg(long, value_enum, default_value_t = ReadConsistency::Linearizable)]
    pub consistency: ReadConsistency,
    /// Write every key once before measuring (so that reads find values).
    #[arg(long)]
    pub preload: bool,
    /// Per-operation timeout in milliseconds.
    #[arg(long, default_value_t = 5000)]
    pub timeout_ms: u64,
    /// Seed of the key and op choice (worker i uses seed + i).
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Prefix of every key.
    #[arg(long, default_value = "bench/")]
    pub key_prefix: String,
    /// Keys per page with `--op range` (a page of the prefix from a random key).
    #[arg(long, default_value_t = 10)]
    pub range_limit: i64,
    /// Watchers on the key prefix (`--op watch`).
    #[arg(long, default_value_t = 1000)]
    pub watchers: usize,
    /// Watch streams the watchers are spread over, one connection each,
    /// round-robin over the endpoints (`--op watch`).
    #[arg(long, default_value_t = 10)]
    pub watch_streams: usize,
    /// Puts per second of all writers together (`--op watch`); 0 = as fast
    /// as the `--clients` writers can.
    #[arg(long, default_value_t = 0.0)]
    pub rate: f64,
    /// After the writers stop, how long to wait for events still in flight
    /// (`--op watch`).
    #[arg(long, default_value_t = 5.0)]
    pub drain_secs: f64,
    /// Leases granted and kept alive (`--op lease`).
    #[arg(long, default_value_t = 10_000)]
    pub leases: usize,
    /// TTL of every lease, seconds; each is renewed every TTL/3 (`--op lease`).
    #[arg(long, default_value_t = 10)]
    pub lease_ttl_secs: i64,
    /// LeaseKeepAlive streams the leases are spread over (`--op lease`).
    #[arg(long, default_value_t = 16)]
    pub keepalive_streams: usize,
    /// Print the summary as JSON on stdout.
    #[arg(long)]
    pub json: bool,
    /// No progress line on stderr.
    #[arg(long)]
    pub quiet: bool,
}

/// Read consistency for gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ReadConsistency {
    /// Confirmed with a quorum (ReadIndex) before answering.
    Linearizable,
    /// Served from the member's applied state, possibly stale.
    Serializable,
}

/// Rejects combinations that cannot run, before any connection is made.
fn validate(args: &Args) -> Result<(), String> {
    if args.clients == 0 {
        return Err("--clients must be at least 1".into());
    }
    if args.endpoints.is_empty() {
        return Err("--endpoints is empty".into());
    }
    if args.mix == Mix::Cas && args.target != Target::TitanGrpc {
        return Err("--op cas needs --target titan-grpc (the TCP protocol has no CAS)".into());
    }
    if args.mix.needs_etcd_api() && !args.target.speaks_etcd() {
        return Err(format!(
            "--op {:?} needs the etcd API: --target titan-etcd or etcd",
            args.mix
        )
        .to_lowercase());
    }
    if args.mix == Mix::Watch && (args.watchers == 0 || args.rate < 0.0) {
        return Err("--op watch needs --watchers >= 1 and --rate >= 0".into());
    }
    if args.mix == Mix::Lease && (args.leases == 0 || args.lease_ttl_secs < 1) {
        return Err("--op lease needs --leases >= 1 and --lease-ttl-secs >= 1".into());
    }
    if args.range_limit < 0 {
        return Err("--range-limit must not be negative".into());
    }
    if args.duration_secs <= 0.0 && args.ops.is_none() {
        return Err("give a positive --duration-secs or --ops".into());
    }
    if !(0.0..=1.0).contains(&args.read_ratio) {
        return Err("--read-ratio must be within 0..=1".into());
    }
    Ok(())
}

/// Prints a subcommand's report, or its error with exit code 2.
fn report<E: std::fmt::Display>(name: &str, result: Result<String, E>) -> ExitCode {
    match result {
        Ok(text) => {
            print!("{text}");
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("titan-bench {name}: {err}");
            ExitCode::from(2)
        }
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    match std::env::args().nth(1).as_deref() {
        Some("table") => {
            let args = table::TableArgs::parse_from(std::env::args().skip(1));
            return report("table", table::main(&args));
        }
        Some("quantiles") => {
            let args = quantiles::QuantileArgs::parse_from(std::env::args().skip(1));
            return report("quantiles", quantiles::main(&args));
        }
        _ => {}
    }
    let args = Args::parse();
    if let Err(msg) = validate(&args) {
        eprintln!("titan-bench: {msg}");
        return ExitCode::from(2);
    }
    let result = match args.mix {
        Mix::Watch => watch::run(args.clone()).await,
        Mix::Lease => lease::run(args.clone()).await,
        _ => runner::run(args.clone()).await,
    };
    match result {
        Ok(summary) => {
            if args.json {
                match serde_json::to_string_pretty(&summary) {
                    Ok(text) => println!("{text}"),
                    Err(err) => eprintln!("titan-bench: cannot render JSON: {err}"),
                }
            } else {
                print!("{}", summary.render());
            }
            if summary.ops == 0 {
                ExitCode::from(1)
            } else {
                ExitCode::SUCCESS
            }
        }
        Err(err) => {
            eprintln!("titan-bench: {err:#}");
            ExitCode::from(1)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(line: &str) -> Args {
        Args::parse_from(std::iter::once("titan-bench").chain(line.split_whitespace()))
    }

    #[test]
    fn etcd_only_ops_are_refused_on_other_targets() {
        for op in ["range", "txn", "watch", "lease"] {
            let err = validate(&args(&format!("--target titan-tcp --op {op}")));
            assert!(err.is_err_and(|e| e.contains("needs the etcd api")), "{op}");
            assert_eq!(
                validate(&args(&format!("--target titan-etcd --op {op}"))),
                Ok(())
            );
            assert_eq!(validate(&args(&format!("--target etcd --op {op}"))), Ok(()));
        }
    }

    #[test]
    fn empty_watch_and_lease_runs_are_refused() {
        assert!(validate(&args("--target etcd --op watch --watchers 0")).is_err());
        assert!(validate(&args("--target etcd --op watch --rate=-1")).is_err());
        assert!(validate(&args("--target etcd --op lease --leases 0")).is_err());
        assert!(validate(&args("--target etcd --op lease --lease-ttl-secs 0")).is_err());
    }
}
