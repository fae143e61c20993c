//! The nemesis: one fault at a time, chosen by a ChaCha RNG seeded with the
//! run's seed (so a seed replays the same fault schedule): partition, kill -9,
//! SIGSTOP/SIGCONT, netem delay and loss, a full disk, and membership changes
//! (add a learner and promote it, remove a voter, replace a member that lost
//! its disk). Every fault is healed before the next one starts.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Context, Result};
use rand::RngExt;
use rand_chacha::ChaCha8Rng;

use crate::cluster::{self, Launcher, Node};
use crate::net;

/// Fewest voters the nemesis keeps (it never removes below this).
pub const MIN_VOTERS: usize = 3;
/// Attempts at removing a member (each within the admin client's retry deadline).
const REMOVE_ATTEMPTS: usize = 4;
/// How long a node may take to exit after a fatal storage error.
const ZOMBIE_GRACE: Duration = Duration::from_secs(5);

/// The slots, the launcher and what was injected.
pub struct Nemesis {
    /// Every slot, members or not.
    pub nodes: Vec<Node>,
    /// How nodes are started.
    pub launcher: Launcher,
    /// Faults injected, by kind.
    pub counts: BTreeMap<&'static str, u64>,
    /// Faults that failed to apply (e.g. a membership change refused).
    pub errors: Vec<String>,
    /// Misbehaviour seen while injecting (fails the run).
    pub findings: Vec<String>,
    /// Incarnation counter for replaced members' names.
    generation: u64,
    /// Peers spec each slot was first started with ("" = joined).
    pub peers: Vec<String>,
    log: fn(&str),
}

impl Nemesis {
    /// Wraps started slots.
    pub fn new(nodes: Vec<Node>, launcher: Launcher, peers: Vec<String>, log: fn(&str)) -> Self {
        Nemesis {
            nodes,
            launcher,
            counts: BTreeMap::new(),
            errors: Vec::new(),
            findings: Vec::new(),
            generation: 0,
            peers,
            log,
        }
    }

    fn members(&self) -> Vec<usize> {
        (0..self.nodes.len())
            .filter(|&i| self.nodes[i].member)
            .collect()
    }

    fn other_ips(&self, me: usize) -> Vec<String> {
        let others = self.nodes.iter().enumerate().filter(|(i, _)| *i != me);
        others.map(|(_, n)| n.host.ip.clone()).collect()
    }

    /// Injects one random fault, holds it for a random time, heals it.
    pub async fn step(&mut self, rng: &mut ChaCha8Rng) {
        let running: Vec<usize> = (0..self.nodes.len())
            .filter(|&i| self.nodes[i].member && self.nodes[i].child.is_some())
            .collect();
        if running.is_empty() {
            self.errors.push("no member running; healing".into());
            if let Err(e) = self.heal_all() {
                self.errors.push(format!("heal: {e:#}"));
            }
            return;
        }
        let target = running[rng.random_range(0..running.len())];
        let hold = Duration::from_millis(rng.random_range(1_000..6_000));
        // Below the minimum (a replacement failed), grow back first.
        let kind = match self.members().len() < MIN_VOTERS {
            true => 6,
            false => rng.random_range(0..9),
        };
        let name = match kind {
            0 | 1 => "partition",
            2 => "kill9",
            3 => "pause",
            4 => "netem",
            5 => "disk_full",
            6 => "add_member",
            7 => "remove_member",
            _ => "replace_wiped_member",
        };
        (self.log)(&format!(
            "nemesis: {name} on {} for {hold:?}",
            self.nodes[target].name
        ));
        let res = match name {
            "partition" => self.partition(target, hold).await,
            "kill9" => self.kill_restart(target, hold).await,
            "pause" => self.pause(target, hold).await,
            "netem" => self.netem(target, hold, rng).await,
            "disk_full" => self.disk_full(target, hold).await,
            "add_member" => self.add_member().await,
            "remove_member" => self.remove_member(target).await,
            _ => self.replace(target).await,
        };
        // Ok(false): nothing to do (no free slot, or already at MIN_VOTERS).
        if !matches!(res, Ok(false)) {
            *self.counts.entry(name).or_default() += 1;
        }
        if let Err(e) = res {
            let msg = format!("{name} on slot {}: {e:#}", target + 1);
            (self.log)(&format!("nemesis: {msg}"));
            self.errors.push(msg);
        }
    }

    async fn partition(&mut self, t: usize, hold: Duration) -> Result<bool> {
        net::partition(&self.nodes[t].host, &self.other_ips(t))?;
        tokio::time::sleep(hold).await;
        net::heal_partition(&self.nodes[t].host);
        Ok(true)
    }

    async fn kill_restart(&mut self, t: usize, hold: Duration) -> Result<bool> {
        cluster::kill9(&mut self.nodes[t]);
        tokio::time::sleep(hold).await;
        self.launcher.start(&mut self.nodes[t], &self.peers[t])?;
        Ok(true)
    }

    async fn pause(&mut self, t: usize, hold: Duration) -> Result<bool> {
        let Some(pid) = self.nodes[t].pid() else {
            return Ok(false);
        };
        cluster::signal(pid, "STOP")?;
        self.nodes[t].paused = true;
        tokio::time::sleep(hold).await;
        cluster::signal(pid, "CONT")?;
        self.nodes[t].paused = false;
        Ok(true)
    }

    async fn netem(&mut self, t: usize, hold: Duration, rng: &mut ChaCha8Rng) -> Result<bool> {
        let delay = rng.random_range(5..80);
        let loss = rng.random_range(0..20);
        let how = net::netem(&self.nodes[t].host, delay, delay / 2, loss)?;
        (self.log)(&format!("nemesis: {how}: delay {delay} ms, loss {loss}%"));
        tokio::time::sleep(hold).await;
        net::heal_netem(&self.nodes[t].host);
        Ok(true)
    }

    /// How often the slot's current log says "fatal storage error".
    fn fatal_errors_logged(&self, t: usize) -> usize {
        let log = self
            .launcher
            .logs
            .join(format!("{}.log", self.nodes[t].name));
        let text = std::fs::read_to_string(log).unwrap_or_default();
        text.matches("fatal storage error").count()
    }

    async fn disk_full(&mut self, t: usize, hold: Duration) -> Result<bool> {
        let fatal_before = self.fatal_errors_logged(t);
        let filled = net::fill_disk(&self.nodes[t].host)?;
        (self.log)(&format!("nemesis: filled {filled} bytes"));
        tokio::time::sleep(hold).await;
        net::free_disk(&self.nodes[t].host);
        // A node may (correctly) exit on ENOSPC; bring it back with space.
        // One that logged a fatal storage error yet keeps running is a
        // zombie (it serves nothing and reports healthy): a finding, and it
        // is restarted so the soak can go on.
        let fatal_now = self.fatal_errors_logged(t);
        if fatal_now > fatal_before {
            tokio::time::sleep(ZOMBIE_GRACE).await;
            if self.nodes[t].running() {
                let msg = format!(
                    "{} kept running after a fatal storage error (disk full)",
                    self.nodes[t].name
                );
                (self.log)(&format!("FINDING: {msg}"));
                self.findings.push(msg);
                cluster::kill9(&mut self.nodes[t]);
            }
        }
        if self.nodes[t].child.is_none() || !self.nodes[t].running() {
            (self.log)(&format!(
                "nemesis: {} exited on a full disk; restarting",
                self.nodes[t].name
            ));
            self.launcher.start(&mut self.nodes[t], &self.peers[t])?;
        }
        Ok(true)
    }

    async fn add_member(&mut self) -> Result<bool> {
        let Some(free) = (0..self.nodes.len()).find(|&i| !self.nodes[i].member) else {
            return Ok(false);
        };
        self.start_fresh(free).await?;
        Ok(true)
    }

    /// Starts `slot` empty under a new name with `--join`, adds and promotes it.
    async fn start_fresh(&mut self, slot: usize) -> Result<()> {
        cluster::kill9(&mut self.nodes[slot]);
        net::wipe(&self.nodes[slot].host)?;
        self.generation += 1;
        self.nodes[slot].name = format!("n{}g{}", slot + 1, self.generation);
        self.peers[slot] = String::new();
        self.launcher.start(&mut self.nodes[slot], "")?;
        let admin = cluster::leader_admin(&self.nodes).await?;
        cluster::add_and_promote(&admin, &mut self.nodes[slot]).await
    }

    async fn remove_member(&mut self, t: usize) -> Result<bool> {
        if self.members().len() <= MIN_VOTERS {
            return Ok(false);
        }
        self.remove(t).await?;
        cluster::kill9(&mut self.nodes[t]);
        net::wipe(&self.nodes[t].host)?;
        Ok(true)
    }

    async fn remove(&mut self, t: usize) -> Result<()> {
        let admin = cluster::leader_admin(&self.nodes).await?;
        let id = match self.nodes[t].id {
            0 => {
                cluster::wait_status(&admin, &self.nodes[t], Duration::from_secs(5))
                    .await?
                    .id
            }
            id => id,
        };
        // Retried: leaving a wiped voter in the configuration is what the
        // soak must never do itself (it could rejoin under its old id).
        let mut last = None;
        for _ in 0..REMOVE_ATTEMPTS {
            match admin.remove_member(id).await {
                Ok(_) => {
                    self.nodes[t].member = false;
                    return Ok(());
                }
                // An earlier attempt with an unknown outcome took effect.
                Err(e) if e.to_string().contains("is not a member") => {
                    self.nodes[t].member = false;
                    return Ok(());
                }
                Err(e) => last = Some(e),
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        Err(last.map_or_else(|| anyhow::anyhow!("no attempt"), Into::into)).context("remove member")
    }

    /// A member loses its disk: it is killed and wiped, removed from the
    /// configuration, and a fresh node takes its slot under a new name.
    async fn replace(&mut self, t: usize) -> Result<bool> {
        if self.nodes[t].id == 0 {
            let admin = cluster::admin(&self.nodes)?;
            self.nodes[t].id = cluster::wait_status(&admin, &self.nodes[t], Duration::from_secs(5))
                .await?
                .id;
        }
        cluster::kill9(&mut self.nodes[t]);
        net::wipe(&self.nodes[t].host)?;
        if let Err(e) = self.remove(t).await {
            // Never restart a wiped member as itself: leave the slot out.
            self.nodes[t].member = false;
            return Err(e.context("the wiped member stays in the configuration, down"));
        }
        self.start_fresh(t).await?;
        Ok(true)
    }

    /// Heals every fault and restarts every member that is down.
    pub fn heal_all(&mut self) -> Result<()> {
        for i in 0..self.nodes.len() {
            net::heal_partition(&self.nodes[i].host);
            net::heal_netem(&self.nodes[i].host);
            net::free_disk(&self.nodes[i].host);
            if self.nodes[i].paused
                && let Some(pid) = self.nodes[i].pid()
            {
                cluster::signal(pid, "CONT")?;
                self.nodes[i].paused = false;
            }
            if self.nodes[i].member && !self.nodes[i].running() {
                self.launcher.start(&mut self.nodes[i], &self.peers[i])?;
            }
        }
        Ok(())
    }
}

impl Drop for Nemesis {
    fn drop(&mut self) {
        for n in &mut self.nodes {
            if let Some(pid) = n.pid() {
                let _ = cluster::signal(pid, "CONT");
            }
            cluster::kill9(n);
            net::destroy_host(&n.host);
        }
    }
}
