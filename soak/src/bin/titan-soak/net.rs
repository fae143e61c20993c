//! The soak's network and disk: one network namespace per node slot, a veth
//! into the hub's bridge (the hub namespace is where this driver runs,
//! created by `scripts/soak.sh`), a small tmpfs per slot, and the faults that
//! act on them (nft partitions, netem delay/loss, a full disk).

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

/// Namespace name prefix; `scripts/soak.sh` removes every namespace with it.
pub const NS_PREFIX: &str = "tsoak-";
/// The hub's bridge (in the namespace this driver runs in).
pub const BRIDGE: &str = "br0";
/// Size of each slot's tmpfs data disk.
pub const DISK_BYTES: u64 = 128 << 20;

/// A node slot's "host": namespace, address and disk.
#[derive(Debug, Clone)]
pub struct Host {
    /// Network namespace name.
    pub ns: String,
    /// The node's address on the bridge.
    pub ip: String,
    /// Mount point of the slot's tmpfs.
    pub disk: PathBuf,
}

impl Host {
    /// The data directory inside the tmpfs.
    pub fn data_dir(&self) -> PathBuf {
        self.disk.join("data")
    }
    fn filler(&self) -> PathBuf {
        self.disk.join("filler")
    }
}

/// Runs a command and fails with its stderr when it fails.
pub fn run(program: &str, args: &[&str]) -> Result<()> {
    let out = Command::new(program)
        .args(args)
        .output()
        .with_context(|| format!("spawning {program}"))?;
    if !out.status.success() {
        bail!(
            "{program} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

fn in_ns(ns: &str, program: &str, args: &[&str]) -> Result<()> {
    let mut all = vec!["netns", "exec", ns, program];
    all.extend_from_slice(args);
    run("ip", &all)
}

/// Creates the slot's namespace, veth, address and tmpfs.
pub fn create_host(slot: usize, work: &Path) -> Result<Host> {
    let host = Host {
        ns: format!("{NS_PREFIX}n{slot}"),
        ip: format!("10.99.0.{}", 10 + slot),
        disk: work.join(format!("n{slot}")),
    };
    let hub_end = format!("tsv{slot}");
    run("ip", &["netns", "add", &host.ns])?;
    run(
        "ip",
        &[
            "link", "add", &hub_end, "type", "veth", "peer", "name", "eth0", "netns", &host.ns,
        ],
    )?;
    run("ip", &["link", "set", &hub_end, "master", BRIDGE, "up"])?;
    let cidr = format!("{}/24", host.ip);
    run("ip", &["-n", &host.ns, "addr", "add", &cidr, "dev", "eth0"])?;
    run("ip", &["-n", &host.ns, "link", "set", "eth0", "up"])?;
    run("ip", &["-n", &host.ns, "link", "set", "lo", "up"])?;
    std::fs::create_dir_all(&host.disk)?;
    let size = format!("size={DISK_BYTES}");
    let disk = host.disk.display().to_string();
    run("mount", &["-t", "tmpfs", "-o", &size, "tmpfs", &disk])?;
    Ok(host)
}

/// Removes the slot's namespace (and with it the veth pair) and its tmpfs.
pub fn destroy_host(host: &Host) {
    let _ = run("umount", &[&host.disk.display().to_string()]);
    let _ = run("ip", &["netns", "del", &host.ns]);
}

/// Drops all traffic between `host` and the `others` (clients still reach it).
pub fn partition(host: &Host, others: &[String]) -> Result<()> {
    heal_partition(host);
    let set = others.join(", ");
    let script = format!(
        "table inet soak {{
  chain in {{ type filter hook input priority 0; ip saddr {{ {set} }} drop; }}
  chain out {{ type filter hook output priority 0; ip daddr {{ {set} }} drop; }}
}}"
    );
    let file = host.disk.with_extension("nft");
    std::fs::write(&file, script)?;
    in_ns(&host.ns, "nft", &["-f", &file.display().to_string()])
}

/// Removes the partition rules, if any.
pub fn heal_partition(host: &Host) {
    let _ = in_ns(&host.ns, "nft", &["delete", "table", "inet", "soak"]);
}

/// Delays and drops the node's outgoing packets with netem. Kernels without
/// `sch_netem` get the same fault shape from what they have: a token-bucket
/// (`tbf`) rate limit that queues packets (delay) and an nft rule dropping
/// `loss_pct`% of incoming packets at random. Returns which one was used.
pub fn netem(host: &Host, delay_ms: u64, jitter_ms: u64, loss_pct: u64) -> Result<&'static str> {
    let (delay, jitter, loss) = (
        format!("{delay_ms}ms"),
        format!("{jitter_ms}ms"),
        format!("{loss_pct}%"),
    );
    let args = [
        "qdisc", "replace", "dev", "eth0", "root", "netem", "delay", &delay, &jitter, "loss", &loss,
    ];
    match in_ns(&host.ns, "tc", &args) {
        Ok(()) => return Ok("netem"),
        Err(e) if !e.to_string().contains("unknown") => return Err(e),
        Err(_) => {}
    }
    let latency = format!("{}ms", delay_ms.max(1) * 10);
    let tbf = [
        "qdisc", "replace", "dev", "eth0", "root", "tbf", "rate", "2mbit", "burst", "16kbit",
        "latency", &latency,
    ];
    in_ns(&host.ns, "tc", &tbf)?;
    let script = format!(
        "table inet soakloss {{\n  chain in {{\n    type filter hook input priority 0;\n    numgen random mod 100 < {loss_pct} drop\n  }}\n}}\n"
    );
    let file = host.disk.with_extension("loss.nft");
    std::fs::write(&file, script)?;
    in_ns(&host.ns, "nft", &["-f", &file.display().to_string()])?;
    Ok("tbf+nft-loss")
}

/// Removes the delay/loss fault, if any.
pub fn heal_netem(host: &Host) {
    let _ = in_ns(&host.ns, "tc", &["qdisc", "del", "dev", "eth0", "root"]);
    let _ = in_ns(&host.ns, "nft", &["delete", "table", "inet", "soakloss"]);
}

/// Fills the slot's tmpfs until writing fails (ENOSPC).
pub fn fill_disk(host: &Host) -> Result<u64> {
    use std::io::Write;
    let mut f = std::fs::File::create(host.filler())?;
    let chunk = vec![0u8; 1 << 20];
    let mut written = 0u64;
    while f.write_all(&chunk).is_ok() {
        written += chunk.len() as u64;
        if written > DISK_BYTES {
            break;
        }
    }
    Ok(written)
}

/// Frees the space [`fill_disk`] took.
pub fn free_disk(host: &Host) {
    let _ = std::fs::remove_file(host.filler());
}

/// Deletes the node's data (a member that lost its disk).
pub fn wipe(host: &Host) -> Result<()> {
    let dir = host.data_dir();
    if dir.exists() {
        std::fs::remove_dir_all(&dir)?;
    }
    Ok(())
}
