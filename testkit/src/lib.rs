//! Process-level test support shared by the server, client and operator
//! tests (dev-only, never published): real `titan-server` processes on
//! loopback with ports from one allocator, N-node clusters, leader discovery,
//! a line-protocol client, Admin status queries, a fault-injecting TCP proxy
//! on every peer link (partitions) and recording writers (`load`).
//!
//! It never builds anything: the server binary comes from `TITAN_SERVER_BIN`,
//! else from the target dir of the running test executable
//! (`target/<profile>/titan-server`); see [`server_bin`].

pub mod load;
pub mod proxy;
pub mod tls;

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use titan_proto::v1 as pb;
use titan_proto::v1::admin_client::AdminClient;
use tonic::transport::{ClientTlsConfig, Endpoint};

pub use proxy::Proxy;

/// First and last port handed out; below the kernel's ephemeral range
/// (32768+), so outbound connections never take a port a node is about to bind.
const PORT_RANGE: std::ops::Range<u32> = 20_000..32_000;

/// A port that was free a moment ago, from a per-process sequence outside
/// the ephemeral range.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let span = PORT_RANGE.end - PORT_RANGE.start;
    // Different test binaries start at different offsets.
    let offset = (std::process::id() * 97) % span;
    loop {
        let n = NEXT.fetch_add(1, Ordering::SeqCst);
        let port = PORT_RANGE.start + (offset + n) % span;
        let port = u16::try_from(port).expect("port range fits u16");
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// Environment variable naming the `titan-server` binary to run.
pub const SERVER_BIN_ENV: &str = "TITAN_SERVER_BIN";

/// The `titan-server` binary: `$TITAN_SERVER_BIN`, else `titan-server` in the
/// target dir of the running test executable (`target/<profile>/`, the test
/// itself lives in `target/<profile>/deps/`). Panics with the build command
/// to run when it is absent; tests never run `cargo build` themselves.
pub fn server_bin() -> PathBuf {
    match locate_server_bin() {
        Ok(bin) => bin,
        Err(why) => panic!("{why}"),
    }
}

/// Like [`server_bin`] but returns why the binary was not found.
pub fn locate_server_bin() -> Result<PathBuf, String> {
    if let Some(bin) = std::env::var_os(SERVER_BIN_ENV) {
        let bin = PathBuf::from(bin);
        return if bin.is_file() {
            Ok(bin)
        } else {
            Err(format!("{SERVER_BIN_ENV}={} is not a file", bin.display()))
        };
    }
    let exe = std::env::current_exe().map_err(|e| format!("current test executable: {e}"))?;
    let candidates = profile_dir_candidates(&exe);
    for dir in &candidates {
        let bin = dir.join(format!("titan-server{}", std::env::consts::EXE_SUFFIX));
        if bin.is_file() {
            return Ok(bin);
        }
    }
    Err(format!(
        "titan-server binary not found next to {} (looked in {:?}); run \
         `cargo build -p titan-server --bins` with the same profile and target dir, \
         or set {SERVER_BIN_ENV}",
        exe.display(),
        candidates
    ))
}

/// Directories that may hold the workspace binaries for a test executable:
/// its own dir and, when that is `deps/`, the profile dir above it.
fn profile_dir_candidates(exe: &Path) -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    if let Some(dir) = exe.parent() {
        if dir.file_name().is_some_and(|n| n == "deps")
            && let Some(profile) = dir.parent()
        {
            dirs.push(profile.to_path_buf());
        }
        dirs.push(dir.to_path_buf());
    }
    dirs
}

/// Sends one request line to `127.0.0.1:port` on a fresh connection and
/// returns the trimmed reply, or None on any I/O error or a 3 s timeout.
pub fn request(port: u16, line: &str) -> Option<String> {
    let mut c = Client::connect(port).ok()?;
    c.writer
        .set_read_timeout(Some(Duration::from_secs(3)))
        .ok()?;
    c.cmd(line).ok().map(|r| r.trim().to_string())
}

/// A minimal HTTP/1.1 GET to `127.0.0.1:port`, returning the raw response
/// (empty when the connection fails; a 5 s read timeout).
pub fn http_get(port: u16, path: &str) -> String {
    use std::io::{Read, Write};
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
        return String::new();
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    let _ = write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    );
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}

/// The value of the Prometheus sample `series` (its name and labels exactly
/// as `/metrics` renders them, e.g. `titan_x_count{stage="applied"}`) in
/// `text`, if present.
pub fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        let (name, value) = l.rsplit_once(' ')?;
        (name == series).then(|| value.parse().ok())?
    })
}

/// xorshift64*: a fixed-seed source for picking victims and delays in
/// process tests; fully reproducible from its seed.
pub fn xorshift(state: &mut u64) -> u64 {
    *state ^= *state >> 12;
    *state ^= *state << 25;
    *state ^= *state >> 27;
    state.wrapping_mul(0x2545_f491_4f6c_dd1d)
}

/// Polls `f` every 50 ms until it returns `Some` or `timeout` passes.
pub fn wait_for<T>(timeout: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A blocking line-protocol client.
pub struct Client {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl Client {
    /// Connects to `127.0.0.1:port`.
    pub fn connect(port: u16) -> std::io::Result<Client> {
        let s = TcpStream::connect(("127.0.0.1", port))?;
        s.set_read_timeout(Some(Duration::from_secs(15)))?;
        s.set_nodelay(true)?;
        Ok(Client {
            reader: BufReader::new(s.try_clone()?),
            writer: s,
        })
    }

    /// Sends raw bytes.
    pub fn send_raw(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.writer.write_all(bytes)
    }

    /// Reads one reply line without its newline.
    pub fn read_line(&mut self) -> std::io::Result<String> {
        let mut line = String::new();
        let n = self.reader.read_line(&mut line)?;
        if n == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "closed",
            ));
        }
        Ok(line.trim_end_matches('\n').to_string())
    }

    /// Sends one request line and reads one reply.
    pub fn cmd(&mut self, line: &str) -> std::io::Result<String> {
        self.send_raw(format!("{line}\n").as_bytes())?;
        self.read_line()
    }
}

/// One `titan-server` process slot.
pub struct Node {
    /// Member id (`-id`).
    pub name: String,
    /// Admin/Raft gRPC port (`-port`).
    pub peer_port: u16,
    /// Plaintext TCP protocol port (`-client-port`).
    pub client_port: u16,
    /// KV and etcd-compatible gRPC port (`--grpc-port`).
    pub grpc_port: u16,
    /// HTTP port (`--http-port`).
    pub http_port: u16,
    /// Data dir; the node's stderr log is `<data_dir>.log`.
    pub data_dir: PathBuf,
    /// Flags added after the base flags (ports, addresses, data dir).
    pub args: Vec<String>,
    /// The running process, if any.
    pub child: Option<Child>,
}

impl Node {
    /// A slot with fresh ports under `root`.
    pub fn new(root: &std::path::Path, name: &str) -> Node {
        Node {
            name: name.to_string(),
            peer_port: free_port(),
            client_port: free_port(),
            grpc_port: free_port(),
            http_port: free_port(),
            data_dir: root.join(name),
            args: Vec::new(),
            child: None,
        }
    }

    /// Starts the process with its base flags plus `self.args`.
    pub fn start(&mut self) {
        assert!(self.child.is_none(), "{} already running", self.name);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.data_dir.with_extension("log"))
            .expect("open node log");
        let child = Command::new(server_bin())
            .arg(format!("-id={}", self.name))
            .arg(format!("-port={}", self.peer_port))
            .arg(format!("-client-port={}", self.client_port))
            .arg(format!("--grpc-port={}", self.grpc_port))
            .arg(format!("--http-port={}", self.http_port))
            .arg("--listen-addr=127.0.0.1")
            .arg(format!(
                "-advertise-client-addr=127.0.0.1:{}",
                self.client_port
            ))
            .arg(format!(
                "--advertise-grpc-addr=127.0.0.1:{}",
                self.grpc_port
            ))
            .arg(format!("--data-dir={}", self.data_dir.display()))
            .args(&self.args)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn titan-server");
        self.child = Some(child);
    }

    /// SIGKILL.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM and wait; returns the exit status code.
    pub fn terminate(&mut self, timeout: Duration) -> Option<i32> {
        let mut c = self.child.take()?;
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(c.id().to_string())
            .status();
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = c.try_wait() {
                return status.code();
            }
            if Instant::now() > deadline {
                let _ = c.kill();
                let _ = c.wait();
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL (if running) then start again with the same ports, data and flags.
    pub fn restart(&mut self) {
        self.kill();
        self.start();
    }

    /// `127.0.0.1:<peer_port>`, the Admin endpoint.
    pub fn admin_endpoint(&self) -> String {
        format!("127.0.0.1:{}", self.peer_port)
    }

    /// `127.0.0.1:<grpc_port>`, the KV and etcd-compatible gRPC endpoint.
    pub fn grpc_endpoint(&self) -> String {
        format!("127.0.0.1:{}", self.grpc_port)
    }

    /// `127.0.0.1:<client_port>`, the plaintext TCP endpoint.
    pub fn tcp_endpoint(&self) -> String {
        format!("127.0.0.1:{}", self.client_port)
    }

    /// Whether the process is running.
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// A fresh TCP client.
    pub fn client(&self) -> Client {
        wait_for(Duration::from_secs(10), "client port", || {
            Client::connect(self.client_port).ok()
        })
    }

    /// Admin.Status over gRPC (None if unreachable).
    pub fn status(&self) -> Option<pb::StatusResponse> {
        self.status_with(None)
    }

    /// Admin.Status over gRPC, over TLS when `tls` is given (None if
    /// unreachable).
    pub fn status_with(&self, tls: Option<&ClientTlsConfig>) -> Option<pb::StatusResponse> {
        let scheme = if tls.is_some() { "https" } else { "http" };
        let addr = format!("{scheme}://127.0.0.1:{}", self.peer_port);
        let tls = tls.cloned();
        rt().block_on(async move {
            let call = async {
                let mut endpoint = Endpoint::from_shared(addr).ok()?;
                if let Some(tls) = tls {
                    endpoint = endpoint.tls_config(tls).ok()?;
                }
                let mut c = AdminClient::new(endpoint.connect().await.ok()?);
                c.status(pb::StatusRequest {})
                    .await
                    .ok()
                    .map(|r| r.into_inner())
            };
            tokio::time::timeout(Duration::from_secs(2), call)
                .await
                .ok()
                .flatten()
        })
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A shared current-thread runtime for gRPC calls from blocking tests.
pub fn rt() -> &'static tokio::runtime::Runtime {
    static RT: std::sync::OnceLock<tokio::runtime::Runtime> = std::sync::OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("tokio runtime")
    })
}

/// A set of nodes that were bootstrapped together.
pub struct Cluster {
    /// The members, `node1`..`nodeN`.
    pub nodes: Vec<Node>,
    /// Per-link proxies `proxies[(from, to)]` when built with [`Cluster::with_proxies`].
    pub proxies: std::collections::HashMap<(usize, usize), Proxy>,
    /// Holds every data dir and log; removed on drop.
    pub root: tempfile::TempDir,
    /// How Admin calls reach the nodes when their peer port uses mutual
    /// TLS (`None`: plaintext).
    pub admin_tls: Option<ClientTlsConfig>,
}

impl Drop for Cluster {
    /// On failure, keeps the node logs in `$TMPDIR/titan-test-logs/<pid>/`.
    fn drop(&mut self) {
        for n in &mut self.nodes {
            n.kill();
        }
        if !std::thread::panicking() {
            return;
        }
        let keep = std::env::temp_dir()
            .join("titan-test-logs")
            .join(std::process::id().to_string());
        let _ = std::fs::create_dir_all(&keep);
        for n in &self.nodes {
            let log = n.data_dir.with_extension("log");
            let _ = std::fs::copy(&log, keep.join(format!("{}.log", n.name)));
        }
        eprintln!("node logs kept in {}", keep.display());
    }
}

/// Flags every test cluster uses: fast ticks, small snapshot threshold off by default.
pub fn base_args() -> Vec<String> {
    vec![
        "--tick-ms=10".into(),
        "--election-timeout-ms=300".into(),
        "--heartbeat-ms=50".into(),
    ]
}

impl Cluster {
    /// `n` nodes bootstrapped with `-peers`, direct links.
    pub fn start(n: usize, extra: &[&str]) -> Cluster {
        Self::build(n, extra, false, None)
    }

    /// `n` nodes whose peer traffic goes through one proxy per directed link.
    pub fn with_proxies(n: usize, extra: &[&str]) -> Cluster {
        Self::build(n, extra, true, None)
    }

    /// `n` nodes started with `extra` flags that put the peer port under
    /// mutual TLS; `admin_tls` is how this harness reaches their Admin
    /// service (leader discovery).
    pub fn start_tls(n: usize, extra: &[&str], admin_tls: ClientTlsConfig) -> Cluster {
        Self::build(n, extra, false, Some(admin_tls))
    }

    fn build(
        n: usize,
        extra: &[&str],
        proxied: bool,
        admin_tls: Option<ClientTlsConfig>,
    ) -> Cluster {
        let root = tempfile::tempdir().expect("tempdir");
        let mut nodes: Vec<Node> = (0..n)
            .map(|i| Node::new(root.path(), &format!("node{}", i + 1)))
            .collect();
        let mut proxies = std::collections::HashMap::new();
        for i in 0..n {
            let mut peers = Vec::new();
            for j in (0..n).filter(|&j| j != i) {
                let port = if proxied {
                    let p = Proxy::start(nodes[j].peer_port);
                    let port = p.port();
                    proxies.insert((i, j), p);
                    port
                } else {
                    nodes[j].peer_port
                };
                peers.push(format!(
                    "{}:127.0.0.1:{}:{}",
                    nodes[j].name, port, nodes[j].client_port
                ));
            }
            let node = &mut nodes[i];
            node.args = base_args();
            node.args.push(format!(
                "--advertise-peer-addr=127.0.0.1:{}",
                node.peer_port
            ));
            if !peers.is_empty() {
                node.args.push(format!("-peers={}", peers.join(",")));
            }
            node.args.extend(extra.iter().map(|s| s.to_string()));
        }
        for node in &mut nodes {
            node.start();
        }
        let c = Cluster {
            nodes,
            proxies,
            root,
            admin_tls,
        };
        c.wait_leader(Duration::from_secs(20));
        c
    }

    /// The client ports of every node, shared with writer threads.
    pub fn client_ports(&self) -> std::sync::Arc<Vec<u16>> {
        std::sync::Arc::new(self.nodes.iter().map(|n| n.client_port).collect())
    }

    /// Admin endpoints (`127.0.0.1:<peer_port>`) of every node.
    pub fn admin_endpoints(&self) -> Vec<String> {
        self.nodes.iter().map(Node::admin_endpoint).collect()
    }

    /// KV/etcd gRPC endpoints (`127.0.0.1:<grpc_port>`) of every node.
    pub fn grpc_endpoints(&self) -> Vec<String> {
        self.nodes.iter().map(Node::grpc_endpoint).collect()
    }

    /// Plaintext TCP endpoints (`127.0.0.1:<client_port>`) of every node.
    pub fn tcp_endpoints(&self) -> Vec<String> {
        self.nodes.iter().map(Node::tcp_endpoint).collect()
    }

    /// Index of a running node that reports itself leader, waiting up to `timeout`.
    pub fn wait_leader(&self, timeout: Duration) -> usize {
        wait_for(timeout, "a leader", || self.current_leader())
    }

    /// The leader's index if a running node reports itself as leader.
    pub fn current_leader(&self) -> Option<usize> {
        self.nodes.iter().position(|n| {
            n.is_running()
                && n.status_with(self.admin_tls.as_ref())
                    .is_some_and(|s| s.role == pb::Role::Leader as i32)
        })
    }

    /// Sets a value through the leader, following redirects; returns true on OK.
    pub fn set(&self, key: &str, value: &str) -> bool {
        let Some(l) = self.current_leader() else {
            return false;
        };
        Client::connect(self.nodes[l].client_port)
            .and_then(|mut c| c.cmd(&format!("SET {key} {value}")))
            .is_ok_and(|r| r == "OK")
    }

    /// Cuts (or restores) every link to and from node `i`.
    pub fn isolate(&self, i: usize, cut: bool) {
        for ((from, to), p) in &self.proxies {
            if *from == i || *to == i {
                p.set_blocked(cut);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_port_never_hands_out_the_same_port_twice_in_a_process() {
        let ports: std::collections::HashSet<u16> = (0..64).map(|_| free_port()).collect();
        assert_eq!(ports.len(), 64);
        assert!(ports.iter().all(|p| PORT_RANGE.contains(&u32::from(*p))));
    }

    #[test]
    fn server_bin_is_looked_up_in_the_profile_dir_above_deps() {
        let exe = Path::new("/t/target/debug/deps/cluster_failover-0123abcd");
        assert_eq!(
            profile_dir_candidates(exe),
            [
                PathBuf::from("/t/target/debug"),
                PathBuf::from("/t/target/debug/deps")
            ]
        );
        let bin = Path::new("/t/target/release/titan-soak");
        assert_eq!(
            profile_dir_candidates(bin),
            [PathBuf::from("/t/target/release")]
        );
    }
}
