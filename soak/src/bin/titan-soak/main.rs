//! `titan-soak`: the opt-in process-level soak (run it with
//! `scripts/soak.sh [minutes]`, which creates the hub namespace and bridge
//! this driver runs in and removes every namespace afterwards).
//!
//! Real `titan-server` processes, each in its own network namespace with its
//! own address and tmpfs disk; clients write and read through `titan-client`
//! and record a history; a seeded nemesis injects faults and membership
//! changes; watchers follow every key through the etcd Watch API, resuming
//! across faults. At the end everything is healed and the run checks: no
//! acknowledged write lost, every key's history linearizable (WGL), every
//! watch stream equal to the committed history (each revision once, in
//! order, values matching), and the cluster converged. The seed is printed so a run can be replayed.

mod cluster;
mod nemesis;
mod net;
mod report;
mod watchers;
mod workload;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use clap::Parser;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use cluster::{Launcher, Node};
use nemesis::Nemesis;
use workload::History;

/// Process-level soak for Titan.
#[derive(Debug, Parser)]
struct Args {
    /// How long the nemesis runs, in minutes.
    #[arg(long, default_value_t = 5.0)]
    minutes: f64,
    /// Seed for the fault schedule and the workload (default: from the clock).
    #[arg(long)]
    seed: Option<u64>,
    /// The titan-server binary.
    #[arg(long, default_value = "target/release/titan-server")]
    bin: PathBuf,
    /// Work directory (tmpfs mount points and logs).
    #[arg(long, default_value = "/tmp/titan-soak")]
    work: PathBuf,
    /// Node slots (the first three start as voters; the rest are for joins).
    #[arg(long, default_value_t = 5)]
    slots: usize,
    /// Keys the clients touch.
    #[arg(long, default_value_t = 24)]
    keys: u32,
    /// Concurrent clients.
    #[arg(long, default_value_t = 4)]
    clients: u64,
    /// Watchers of every key (etcd Watch API), checked against the history.
    #[arg(long, default_value_t = 2)]
    watchers: usize,
}

/// How long watchers may take to reach the final revision after the run.
const WATCHERS_CATCH_UP: Duration = Duration::from_secs(60);

static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();

fn log(msg: &str) {
    let t = START.get_or_init(Instant::now).elapsed().as_secs_f64();
    println!("[{t:8.2}s] {msg}");
}

fn main() -> Result<()> {
    let args = Args::parse();
    START.get_or_init(Instant::now);
    let seed = args.seed.unwrap_or_else(|| {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        now.as_nanos() as u64
    });
    log(&format!(
        "seed {seed} (replay: scripts/soak.sh {} --seed {seed})",
        args.minutes
    ));
    let rt = tokio::runtime::Runtime::new()?;
    let passed = rt.block_on(soak(&args, seed))?;
    log(&format!(
        "seed {seed} (replay: scripts/soak.sh {} --seed {seed})",
        args.minutes
    ));
    if !passed {
        std::process::exit(1);
    }
    Ok(())
}

async fn setup(args: &Args) -> Result<Nemesis> {
    std::fs::create_dir_all(&args.work)?;
    let logs = args.work.join("logs");
    let _ = std::fs::remove_dir_all(&logs);
    std::fs::create_dir_all(&logs)?;
    let launcher = Launcher {
        bin: std::fs::canonicalize(&args.bin).context("titan-server binary")?,
        logs,
        pid_file: args.work.join("pids"),
    };
    let mut nodes = Vec::new();
    for slot in 1..=args.slots {
        let host = net::create_host(slot, &args.work)?;
        nodes.push(Node {
            name: format!("n{slot}"),
            host,
            child: None,
            paused: false,
            member: slot <= nemesis::MIN_VOTERS,
            id: 0,
        });
    }
    let peers: Vec<String> = (0..nodes.len())
        .map(|i| match nodes[i].member {
            true => cluster::peers_spec(&nodes, i),
            false => String::new(),
        })
        .collect();
    let mut nem = Nemesis::new(nodes, launcher, peers, log);
    for i in 0..nemesis::MIN_VOTERS {
        let peers = nem.peers[i].clone();
        nem.launcher.start(&mut nem.nodes[i], &peers)?;
    }
    Ok(nem)
}

async fn soak(args: &Args, seed: u64) -> Result<bool> {
    let mut nem = setup(args).await?;
    let endpoints: Vec<String> = nem.nodes.iter().map(Node::grpc_addr).collect();
    wait_first_write(&endpoints).await?;
    log("cluster up; starting clients, watchers and nemesis");
    let history = History::new();
    let stop = Arc::new(AtomicBool::new(false));
    let from = watchers::current_revision(&endpoints).await? + 1;
    let target = watchers::Target::default();
    let watching: Vec<_> = (0..args.watchers)
        .map(|i| {
            let w = watchers::run_watcher(
                i,
                endpoints.clone(),
                from,
                target.clone(),
                WATCHERS_CATCH_UP,
            );
            tokio::spawn(w)
        })
        .collect();
    let mut clients = Vec::new();
    for id in 1..=args.clients {
        let task = workload::run_client(
            id,
            seed,
            args.keys,
            endpoints.clone(),
            history.clone(),
            stop.clone(),
        );
        clients.push(tokio::spawn(task));
    }
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let deadline = Instant::now() + Duration::from_secs_f64(args.minutes * 60.0);
    while Instant::now() < deadline {
        nem.step(&mut rng).await;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    log("nemesis done; healing everything");
    nem.heal_all()?;
    tokio::time::sleep(Duration::from_secs(5)).await;
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.await??;
    }
    let watched = check_watchers(&endpoints, &history, from, target, watching).await?;
    let reported = report::finish(&mut nem, &history, args.keys, &endpoints, log).await?;
    Ok(reported && watched)
}

/// Lets the watchers reach the final revision, then checks every stream and
/// acknowledged put against the committed history.
async fn check_watchers(
    endpoints: &[String],
    history: &History,
    from: i64,
    target: watchers::Target,
    watching: Vec<tokio::task::JoinHandle<watchers::WatchLog>>,
) -> Result<bool> {
    let through = watchers::current_revision(endpoints).await?;
    target.store(through, Ordering::Relaxed);
    let mut logs = Vec::new();
    for w in watching {
        logs.push(w.await?);
    }
    let acked: Vec<(Vec<u8>, Vec<u8>)> = history
        .snapshot()
        .iter()
        .filter(|r| r.outcome == workload::Outcome::Ok)
        .filter_map(|r| {
            let value = r.op.kind.written()?;
            Some((
                r.op.key.to_string().into_bytes(),
                value.to_string().into_bytes(),
            ))
        })
        .collect();
    Ok(watchers::check_all(from, through, &logs, &acked, log))
}

/// Waits until a write succeeds (a leader exists and commits).
async fn wait_first_write(endpoints: &[String]) -> Result<()> {
    let c = workload::client(endpoints)?;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match c.put("soak-ready", "1").await {
            Ok(_) => return Ok(()),
            Err(e) if Instant::now() > deadline => anyhow::bail!("no leader after 60 s: {e}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(300)).await,
        }
    }
}
