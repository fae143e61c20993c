//! The original command line, verbatim, starts a three-node
//! cluster on one host. Each node gets exactly the original flags
//! (`-id -port -client-port -advertise-client-addr -peers`) and nothing else:
//! no `--grpc-port`/`--http-port` (derived from the client port), no
//! `--data-dir` (the default `./data/<id>` differs per id, so the three nodes
//! share one temporary working directory), no `TITAN_*` variables.
//!
//! The port numbers keep the original layout (peer `N+5001..`, client
//! `N+6001..`) shifted by a base `N` that is free on this host, so the test
//! never fights a developer's `make cluster-start` on 5001..6003.

mod common;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{Cluster, Node};
use titan_server::config::{DEFAULT_GRPC_PORT, DEFAULT_HTTP_PORT};

/// Bases tried for the original port layout; each gives peer `base+5001..5003`,
/// client `base+6001..6003`, derived gRPC `base+7001..` and HTTP `base+8080..`,
/// all below the kernel's ephemeral range. A layout spans about 3,100 ports
/// (`base+5001` to `base+8082`), so bases 4,000 apart never share a port.
const BASES: [u16; 4] = [10_000, 14_000, 18_000, 22_000];

/// The original ports shifted by `base`: (peer, client, derived gRPC, derived HTTP) of node `i`.
fn ports(base: u16, i: u16) -> (u16, u16, u16, u16) {
    let client = base + 6001 + i;
    (
        base + 5001 + i,
        client,
        client - 6001 + DEFAULT_GRPC_PORT,
        client - 6001 + DEFAULT_HTTP_PORT,
    )
}

/// A base whose twelve ports are all free right now. Tests of one process
/// (`cargo test` runs them on threads) start their search at different
/// bases, so two of them never race for the same free base.
fn free_base() -> u16 {
    static CALLS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let free = |p: u16| TcpListener::bind(("127.0.0.1", p)).is_ok();
    let call = CALLS.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    let start = (std::process::id() as usize + call) % BASES.len();
    (0..BASES.len())
        .map(|k| BASES[(start + k) % BASES.len()])
        .find(|&base| {
            (0..3).all(|i| {
                let (a, b, c, d) = ports(base, i);
                [a, b, c, d].into_iter().all(free)
            })
        })
        .expect("no free port base for the seed layout")
}

/// Exactly the original flags for node `i` (0-based) of three.
fn seed_flags(base: u16, i: u16) -> Vec<String> {
    let (peer, client, _, _) = ports(base, i);
    let peers: Vec<String> = (0..3)
        .filter(|&j| j != i)
        .map(|j| {
            let (p, c, _, _) = ports(base, j);
            format!("node{}:localhost:{p}:{c}", j + 1)
        })
        .collect();
    vec![
        format!("-id=node{}", i + 1),
        format!("-port={peer}"),
        format!("-client-port={client}"),
        format!("-advertise-client-addr=localhost:{client}"),
        format!("-peers={}", peers.join(",")),
    ]
}

/// `titan-server` with `args` only, in `cwd`, with no `TITAN_*` variables
/// inherited; stderr goes to `log`.
fn seed_command(cwd: &Path, args: &[String], log: &Path) -> Command {
    let log = std::fs::File::create(log).expect("log file");
    let mut cmd = Command::new(common::server_bin());
    cmd.args(args)
        .current_dir(cwd)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(log);
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("TITAN_") {
            cmd.env_remove(key);
        }
    }
    cmd
}

/// Starts the three seed nodes in one working directory.
fn start_seed_cluster() -> Cluster {
    let root = tempfile::tempdir().expect("tempdir");
    let data = root.path().join("data");
    std::fs::create_dir_all(&data).expect("data dir");
    let base = free_base();
    let nodes = (0..3u16)
        .map(|i| {
            let name = format!("node{}", i + 1);
            let (peer_port, client_port, grpc_port, http_port) = ports(base, i);
            let data_dir = data.join(&name);
            let args = seed_flags(base, i);
            let child = seed_command(root.path(), &args, &data_dir.with_extension("log"))
                .spawn()
                .expect("spawn titan-server");
            Node {
                name,
                peer_port,
                client_port,
                grpc_port,
                http_port,
                data_dir,
                args,
                child: Some(child),
            }
        })
        .collect();
    Cluster {
        nodes,
        proxies: Default::default(),
        root,
        admin_tls: None,
    }
}

/// The status line of `GET path` on `127.0.0.1:port`.
fn http_status(port: u16, path: &str) -> Option<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    s.write_all(request.as_bytes()).ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    out.lines().next().map(str::to_string)
}

#[test]
fn seed_command_line_starts_three_nodes_on_one_host() {
    let cluster = start_seed_cluster();
    let leader = cluster.wait_leader(Duration::from_secs(20));
    for (i, node) in cluster.nodes.iter().enumerate() {
        assert!(
            node.data_dir.is_dir(),
            "node{} keeps its data under ./data/<id>",
            i + 1
        );
        assert_eq!(node.client().cmd("PING").unwrap(), "PONG", "node{}", i + 1);
    }
    let mut l = cluster.nodes[leader].client();
    assert_eq!(l.cmd("SET greeting hello world").unwrap(), "OK");
    let leader_addr = format!("localhost:{}", cluster.nodes[leader].client_port);
    for (i, node) in cluster.nodes.iter().enumerate() {
        let mut c = node.client();
        assert_eq!(
            c.cmd("GET greeting").unwrap(),
            "VALUE hello world",
            "node{}",
            i + 1
        );
        if i != leader {
            assert_eq!(
                c.cmd("SET greeting again").unwrap(),
                format!("ERR NOT_LEADER {leader_addr}"),
                "a follower redirects to the leader's advertised client address"
            );
        }
    }
    // Every node serves its derived HTTP port; all report ready.
    for node in &cluster.nodes {
        let ready = common::wait_for(Duration::from_secs(10), "/readyz 200", || {
            http_status(node.http_port, "/readyz").filter(|s| s.contains(" 200 "))
        });
        assert!(ready.starts_with("HTTP/1.1 200"), "{ready}");
        assert!(
            TcpStream::connect(("127.0.0.1", node.grpc_port)).is_ok(),
            "{} listens on its derived gRPC port {}",
            node.name,
            node.grpc_port
        );
    }
    assert_eq!(l.cmd("GET greeting").unwrap(), "VALUE hello world");
}

#[test]
fn taken_derived_port_fails_fast_naming_the_flag_to_change() {
    let root = tempfile::tempdir().expect("tempdir");
    let base = free_base();
    let (_, _, grpc, _) = ports(base, 0);
    let _squatter = TcpListener::bind(("127.0.0.1", grpc)).expect("hold the gRPC port");
    let log = root.path().join("node1.log");
    let mut child = seed_command(root.path(), &seed_flags(base, 0), &log)
        .spawn()
        .expect("spawn titan-server");
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if started.elapsed() > Duration::from_secs(20) {
            let _ = child.kill();
            panic!("titan-server kept running with its gRPC port taken");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(!status.success(), "a port in use is a failed start");
    let stderr = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        stderr.contains(&format!("port {grpc} is already in use"))
            && stderr.contains("choose another with --grpc-port"),
        "the error names the taken port and the flag: {stderr}"
    );
}

#[test]
fn titan_port_variables_win_over_derived_ports() {
    let root = tempfile::tempdir().expect("tempdir");
    let base = free_base();
    let (grpc, http) = (common::free_port(), common::free_port());
    let log = root.path().join("node1.log");
    let mut cmd = seed_command(root.path(), &seed_flags(base, 0), &log);
    cmd.env("TITAN_GRPC_PORT", grpc.to_string())
        .env("TITAN_HTTP_PORT", http.to_string());
    let child = cmd.spawn().expect("spawn titan-server");
    let (peer_port, client_port, _, _) = ports(base, 0);
    let _node = Node {
        name: "node1".into(),
        peer_port,
        client_port,
        grpc_port: grpc,
        http_port: http,
        data_dir: root.path().join("data/node1"),
        args: Vec::new(),
        child: Some(child),
    };
    let line = common::wait_for(Duration::from_secs(10), "the listening line", || {
        let text = std::fs::read_to_string(&log).ok()?;
        text.lines()
            .find(|l| l.contains("listening"))
            .map(str::to_string)
    });
    assert!(
        line.contains(&format!("grpc={grpc}")) && line.contains(&format!("http={http}")),
        "{line}"
    );
    let status = common::wait_for(Duration::from_secs(10), "/healthz", || {
        http_status(http, "/healthz")
    });
    assert!(status.starts_with("HTTP/1.1 200"), "{status}");
}
