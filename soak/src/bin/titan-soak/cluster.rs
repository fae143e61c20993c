//! The soak's titan-server processes: one per slot, each in its slot's
//! namespace with default ports on its own address, plus membership changes
//! through the admin API (add learner, promote, remove).

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use titan_client::proto as pb;
use titan_client::{AdminClient, ClientConfig, RetryConfig};

use crate::net::Host;

/// Raft/admin gRPC port on every host.
pub const PEER_PORT: u16 = 5001;
/// Plaintext client port on every host.
pub const CLIENT_PORT: u16 = 6001;
/// Client gRPC port on every host.
pub const GRPC_PORT: u16 = 7001;

/// One slot's process and identity.
#[derive(Debug)]
pub struct Node {
    /// The slot's host.
    pub host: Host,
    /// Member name of the current incarnation (changes when replaced).
    pub name: String,
    /// The running process, if any.
    pub child: Option<Child>,
    /// Whether it is currently SIGSTOPped.
    pub paused: bool,
    /// Whether this slot is meant to be a cluster member.
    pub member: bool,
    /// Raft id once known.
    pub id: u64,
}

impl Node {
    /// `host:port` of the admin API.
    pub fn admin_addr(&self) -> String {
        format!("{}:{PEER_PORT}", self.host.ip)
    }
    /// `host:port` of the client gRPC API.
    pub fn grpc_addr(&self) -> String {
        format!("{}:{GRPC_PORT}", self.host.ip)
    }
    /// Whether the process is alive.
    pub fn running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }
    /// The process id, if running.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }
}

/// Where the binary is and where logs go.
#[derive(Debug, Clone)]
pub struct Launcher {
    /// titan-server binary.
    pub bin: PathBuf,
    /// Log directory.
    pub logs: PathBuf,
    /// Every started process id, one per line: `scripts/soak.sh` kills
    /// these on exit (namespaces made from inside the hub's mount namespace
    /// are invisible to `ip netns pids` outside it).
    pub pid_file: PathBuf,
}

impl Launcher {
    /// Starts `node` (bootstrap with `peers`, or `--join` when `peers` is empty).
    pub fn start(&self, node: &mut Node, peers: &str) -> Result<()> {
        std::fs::create_dir_all(node.host.data_dir())?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.logs.join(format!("{}.log", node.name)))?;
        let ip = &node.host.ip;
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &node.host.ns])
            .arg(&self.bin)
            .arg(format!("--id={}", node.name))
            .arg(format!("--advertise-peer-addr={ip}:{PEER_PORT}"))
            .arg(format!("--advertise-client-addr={ip}:{CLIENT_PORT}"))
            .arg(format!("--advertise-grpc-addr={ip}:{GRPC_PORT}"))
            .arg(format!("--data-dir={}", node.host.data_dir().display()))
            .args([
                "--tick-ms=10",
                "--election-timeout-ms=500",
                "--heartbeat-ms=50",
            ])
            .arg("--snapshot-threshold=2000");
        if peers.is_empty() {
            cmd.arg("--join");
        } else {
            cmd.arg(format!("--peers={peers}"));
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting titan-server")?;
        use std::io::Write;
        let mut pids = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.pid_file)?;
        writeln!(pids, "{}", child.id())?;
        node.child = Some(child);
        node.paused = false;
        Ok(())
    }
}

/// Sends a signal to `pid` with kill(1).
pub fn signal(pid: u32, sig: &str) -> Result<()> {
    crate::net::run("kill", &[&format!("-{sig}"), &pid.to_string()])
}

/// SIGKILLs the node and reaps it.
pub fn kill9(node: &mut Node) {
    if let Some(mut c) = node.child.take() {
        let _ = c.kill();
        let _ = c.wait();
    }
    node.paused = false;
}

/// The peers spec for the initial voters.
pub fn peers_spec(nodes: &[Node], me: usize) -> String {
    let spec: Vec<String> = nodes
        .iter()
        .enumerate()
        .filter(|(i, n)| *i != me && n.member)
        .map(|(_, n)| format!("{}:{}:{PEER_PORT}:{CLIENT_PORT}", n.name, n.host.ip))
        .collect();
    spec.join(",")
}

/// An admin client over the started members' admin addresses (a joining
/// node knows no leader and would stop leader discovery), with short timeouts.
pub fn admin(nodes: &[Node]) -> Result<AdminClient> {
    let members = nodes.iter().filter(|n| n.member && n.child.is_some());
    let mut cfg = ClientConfig::new(members.map(Node::admin_addr));
    cfg.connect_timeout = Duration::from_millis(500);
    cfg.request_timeout = Duration::from_secs(2);
    cfg.retry = RetryConfig {
        overall_deadline: Duration::from_secs(8),
        ..RetryConfig::default()
    };
    Ok(AdminClient::connect(cfg)?)
}

/// An admin client whose first endpoint is the leader some member names
/// (`AdminClient` asks only the first member that answers, which may be one
/// that knows no leader), falling back to [`admin`].
pub async fn leader_admin(nodes: &[Node]) -> Result<AdminClient> {
    let probe = admin(nodes)?;
    let live: Vec<String> = nodes
        .iter()
        .filter(|n| n.member && n.child.is_some())
        .map(Node::admin_addr)
        .collect();
    for addr in &live {
        let Ok(s) = probe.status_of(addr).await else {
            continue;
        };
        // Followers may still name a leader that was just killed.
        if s.leader_id != 0 && live.contains(&s.leader_peer_addr) {
            let leader = s.leader_peer_addr;
            let rest: Vec<String> = live.iter().filter(|a| **a != leader).cloned().collect();
            let mut cfg = ClientConfig::new(std::iter::once(leader).chain(rest));
            cfg.connect_timeout = Duration::from_millis(500);
            cfg.request_timeout = Duration::from_secs(2);
            cfg.retry.overall_deadline = Duration::from_secs(8);
            return Ok(AdminClient::connect(cfg)?);
        }
    }
    Ok(probe)
}

/// Waits for `node` to answer `Status`.
pub async fn wait_status(
    a: &AdminClient,
    node: &Node,
    within: Duration,
) -> Result<pb::StatusResponse> {
    let deadline = Instant::now() + within;
    loop {
        match a.status_of(&node.admin_addr()).await {
            Ok(s) if s.id != 0 => return Ok(s),
            Ok(_) | Err(_) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Ok(_) => bail!("{} has no id yet", node.name),
            Err(e) => bail!("{} does not answer Status: {e}", node.name),
        }
    }
}

/// Adds a started `--join` node as a learner, waits for it to catch up,
/// and promotes it.
pub async fn add_and_promote(a: &AdminClient, node: &mut Node) -> Result<()> {
    let st = wait_status(a, node, Duration::from_secs(15)).await?;
    node.id = st.id;
    let ip = &node.host.ip;
    let req = pb::AddMemberRequest {
        id: st.id,
        name: node.name.clone(),
        peer_addr: format!("{ip}:{PEER_PORT}"),
        client_addr: format!("{ip}:{CLIENT_PORT}"),
        grpc_addr: format!("{ip}:{GRPC_PORT}"),
    };
    a.add_member(req).await.context("add learner")?;
    node.member = true;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let caught_up = a
            .status_of(&node.admin_addr())
            .await
            .is_ok_and(|s| s.applied_index > 0 && s.role == pb::Role::Learner as i32);
        if caught_up {
            break;
        }
        if Instant::now() > deadline {
            bail!("learner {} did not catch up", node.name);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    a.promote_member(st.id).await.context("promote")?;
    Ok(())
}
