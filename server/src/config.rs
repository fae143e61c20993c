//! Command line and environment configuration for `titan-server`.
//!
//! The seed's single-dash flags (`-id=node1 -peers=...`) are accepted by
//! rewriting them to the double-dash form before clap sees them
//! ([`normalize_args`]); every flag also has a `TITAN_*` environment variable.

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

/// Errors in the configuration that clap cannot detect by itself.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    /// A `-peers` item is not `name:host:raftport:clientport`.
    #[error("bad peer spec {spec:?}: expected name:host:raftport:clientport")]
    BadPeerSpec {
        /// The offending item.
        spec: String,
    },
    /// Two timeouts that must be ordered are not.
    #[error("invalid timeouts: {0}")]
    BadTimeouts(String),
    /// `-peers` and `--join` ask for opposite things.
    #[error("-peers and --join are mutually exclusive")]
    PeersAndJoin,
    /// A size flag outside what the edge and storage can honour.
    #[error("{0}")]
    BadSize(String),
}

/// Raw flags, as clap parses them.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "titan-server",
    version,
    about = "Titan replicated key-value server"
)]
pub struct Cli {
    /// This node's name (unique in the cluster).
    #[arg(long, env = "TITAN_ID", default_value = "node1")]
    pub id: String,
    /// Peer (Raft + Admin gRPC) port.
    #[arg(long, env = "TITAN_PORT", default_value_t = 5001)]
    pub port: u16,
    /// Plaintext TCP client port.
    #[arg(
        long = "client-port",
        env = "TITAN_CLIENT_PORT",
        default_value_t = 6001
    )]
    pub client_port: u16,
    /// Client gRPC (KV service) port.
    #[arg(long = "grpc-port", env = "TITAN_GRPC_PORT", default_value_t = 7001)]
    pub grpc_port: u16,
    /// HTTP port for /metrics, /healthz and /readyz.
    #[arg(long = "http-port", env = "TITAN_HTTP_PORT", default_value_t = 8080)]
    pub http_port: u16,
    /// Address every listener binds to.
    #[arg(
        long = "listen-addr",
        env = "TITAN_LISTEN_ADDR",
        default_value = "0.0.0.0"
    )]
    pub listen_addr: String,
    /// `host:port` clients are redirected to (default: `<fqdn>:<client-port>`).
    #[arg(long = "advertise-client-addr", env = "TITAN_ADVERTISE_CLIENT_ADDR")]
    pub advertise_client_addr: Option<String>,
    /// `host:port` peers dial for Raft traffic (default: `<fqdn>:<port>`).
    #[arg(long = "advertise-peer-addr", env = "TITAN_ADVERTISE_PEER_ADDR")]
    pub advertise_peer_addr: Option<String>,
    /// `host:port` of the client gRPC service (default: `<fqdn>:<grpc-port>`).
    #[arg(long = "advertise-grpc-addr", env = "TITAN_ADVERTISE_GRPC_ADDR")]
    pub advertise_grpc_addr: Option<String>,
    /// Other initial members: `name:host:raftport:clientport,...` (bootstrap only).
    #[arg(long, env = "TITAN_PEERS", default_value = "")]
    pub peers: String,
    /// Start empty and wait to be added through Admin.AddMember.
    #[arg(long, env = "TITAN_JOIN", default_value_t = false)]
    pub join: bool,
    /// Data directory (default `./data/<id>`).
    #[arg(long = "data-dir", env = "TITAN_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Take a snapshot once this many entries were applied since the last one.
    #[arg(
        long = "snapshot-threshold",
        env = "TITAN_SNAPSHOT_THRESHOLD",
        default_value_t = 10_000
    )]
    pub snapshot_threshold: u64,
    /// Largest snapshot accepted from a leader; a bigger install stream is
    /// refused as soon as it passes this size.
    #[arg(
        long = "max-snapshot-bytes",
        env = "TITAN_MAX_SNAPSHOT_BYTES",
        default_value_t = crate::storage::snapshot::DEFAULT_MAX_INSTALL_BYTES
    )]
    pub max_snapshot_bytes: u64,
    /// Raft tick length.
    #[arg(long = "tick-ms", env = "TITAN_TICK_MS", default_value_t = 10)]
    pub tick_ms: u64,
    /// Minimum election timeout (randomised up to twice this).
    #[arg(
        long = "election-timeout-ms",
        env = "TITAN_ELECTION_TIMEOUT_MS",
        default_value_t = 150
    )]
    pub election_timeout_ms: u64,
    /// Leader heartbeat interval.
    #[arg(
        long = "heartbeat-ms",
        env = "TITAN_HEARTBEAT_MS",
        default_value_t = 50
    )]
    pub heartbeat_ms: u64,
    /// Longest accepted request line in bytes.
    #[arg(long = "max-line-bytes", env = "TITAN_MAX_LINE_BYTES", default_value_t = 1 << 20)]
    pub max_line_bytes: usize,
    /// Most concurrent client TCP connections.
    #[arg(
        long = "max-connections",
        env = "TITAN_MAX_CONNECTIONS",
        default_value_t = 4096
    )]
    pub max_connections: usize,
    /// Seconds a SIGTERM'd node waits for leadership transfer and in-flight requests.
    #[arg(
        long = "shutdown-grace-ms",
        env = "TITAN_SHUTDOWN_GRACE_MS",
        default_value_t = 1500
    )]
    pub shutdown_grace_ms: u64,
}

/// One `-peers` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerSpec {
    /// The peer's node name.
    pub name: String,
    /// Host peers and clients dial.
    pub host: String,
    /// Its Raft/Admin port.
    pub raft_port: u16,
    /// Its plaintext client port.
    pub client_port: u16,
}

impl PeerSpec {
    /// `host:raftport`.
    pub fn peer_addr(&self) -> String {
        format!("{}:{}", self.host, self.raft_port)
    }

    /// `host:clientport`.
    pub fn client_addr(&self) -> String {
        format!("{}:{}", self.host, self.client_port)
    }
}

/// Validated configuration the node runs with.
#[derive(Debug, Clone)]
pub struct Config {
    /// This node's name.
    pub name: String,
    /// Bind address of every listener.
    pub listen_addr: String,
    /// Peer port (Raft + Admin gRPC).
    pub peer_port: u16,
    /// Plaintext TCP port.
    pub client_port: u16,
    /// Client gRPC port.
    pub grpc_port: u16,
    /// HTTP port.
    pub http_port: u16,
    /// What peers dial to reach this node.
    pub advertise_peer_addr: String,
    /// What clients are redirected to.
    pub advertise_client_addr: String,
    /// Where gRPC clients are redirected to.
    pub advertise_grpc_addr: String,
    /// Other initial members (bootstrap only).
    pub peers: Vec<PeerSpec>,
    /// Start empty and wait to be added.
    pub join: bool,
    /// Where the WAL, snapshots and identity live.
    pub data_dir: PathBuf,
    /// Entries applied between automatic snapshots.
    pub snapshot_threshold_entries: u64,
    /// Largest snapshot accepted from a leader.
    pub max_snapshot_bytes: u64,
    /// Length of one Raft tick.
    pub tick: Duration,
    /// Minimum election timeout in ticks.
    pub election_ticks: u32,
    /// Heartbeat interval in ticks.
    pub heartbeat_ticks: u32,
    /// Longest accepted request line.
    pub max_line_bytes: usize,
    /// Most concurrent client connections.
    pub max_connections: usize,
    /// Time budget for a graceful shutdown.
    pub shutdown_grace: Duration,
}

impl Config {
    /// How long a request waits for a leader before `ERR UNAVAILABLE`
    /// (about two maximum election timeouts).
    pub fn leader_wait(&self) -> Duration {
        self.tick * self.election_ticks * 4
    }
}

/// Rewrites `-flag=value` and `-flag value` to `--flag...` so clap accepts the
/// seed's Go-style command line. `-h`/`-V` and anything already double-dashed
/// are left alone; a lone `-` (stdin convention) too.
pub fn normalize_args<I: IntoIterator<Item = OsString>>(args: I) -> Vec<OsString> {
    args.into_iter()
        .enumerate()
        .map(|(i, arg)| {
            if i == 0 {
                return arg;
            }
            match arg.to_str() {
                Some(s) if is_single_dash_long(s) => OsString::from(format!("-{s}")),
                _ => arg,
            }
        })
        .collect()
}

fn is_single_dash_long(s: &str) -> bool {
    let Some(rest) = s.strip_prefix('-') else {
        return false;
    };
    let name = rest.split('=').next().unwrap_or("");
    !rest.starts_with('-')
        && name.len() > 1
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
}

/// Parses `name:host:raftport:clientport,...`; empty input means no peers.
pub fn parse_peers(spec: &str) -> Result<Vec<PeerSpec>, ConfigError> {
    spec.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(parse_peer)
        .collect()
}

fn parse_peer(item: &str) -> Result<PeerSpec, ConfigError> {
    let bad = || ConfigError::BadPeerSpec {
        spec: item.to_string(),
    };
    let parts: Vec<&str> = item.split(':').collect();
    let [name, host, raft, client] = parts.as_slice() else {
        return Err(bad());
    };
    if name.is_empty() || host.is_empty() {
        return Err(bad());
    }
    Ok(PeerSpec {
        name: name.to_string(),
        host: host.to_string(),
        raft_port: raft.parse().map_err(|_| bad())?,
        client_port: client.parse().map_err(|_| bad())?,
    })
}

/// The host's fully qualified name, as `hostname -f` prints it; falls back to
/// the kernel hostname and finally `localhost`.
pub fn default_host() -> String {
    let fqdn = std::process::Command::new("hostname")
        .arg("-f")
        .output()
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty());
    fqdn.or_else(|| {
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .ok()
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
    })
    .unwrap_or_else(|| "localhost".to_string())
}

impl Cli {
    /// Validates the flags and fills in derived defaults.
    pub fn into_config(self) -> Result<Config, ConfigError> {
        check_size_limits(self.max_line_bytes)?;
        let peers = parse_peers(&self.peers)?;
        if self.join && !peers.is_empty() {
            return Err(ConfigError::PeersAndJoin);
        }
        let tick_ms = self.tick_ms.max(1);
        let election_ticks = (self.election_timeout_ms / tick_ms).max(2);
        let heartbeat_ticks = (self.heartbeat_ms / tick_ms).max(1);
        if u64::from(heartbeat_ticks as u32) >= election_ticks {
            return Err(ConfigError::BadTimeouts(
                "heartbeat must be shorter than the election timeout".into(),
            ));
        }
        let needs_host = self.advertise_client_addr.is_none()
            || self.advertise_peer_addr.is_none()
            || self.advertise_grpc_addr.is_none();
        let host = if needs_host {
            default_host()
        } else {
            String::new()
        };
        let data_dir = self
            .data_dir
            .unwrap_or_else(|| PathBuf::from("data").join(&self.id));
        Ok(Config {
            advertise_peer_addr: self
                .advertise_peer_addr
                .unwrap_or_else(|| format!("{host}:{}", self.port)),
            advertise_client_addr: self
                .advertise_client_addr
                .unwrap_or_else(|| format!("{host}:{}", self.client_port)),
            advertise_grpc_addr: self
                .advertise_grpc_addr
                .unwrap_or_else(|| format!("{host}:{}", self.grpc_port)),
            name: self.id,
            listen_addr: self.listen_addr,
            peer_port: self.port,
            client_port: self.client_port,
            grpc_port: self.grpc_port,
            http_port: self.http_port,
            peers,
            join: self.join,
            data_dir,
            snapshot_threshold_entries: self.snapshot_threshold.max(1),
            max_snapshot_bytes: self.max_snapshot_bytes.max(1),
            tick: Duration::from_millis(tick_ms),
            election_ticks: u32::try_from(election_ticks).unwrap_or(u32::MAX),
            heartbeat_ticks: heartbeat_ticks as u32,
            max_line_bytes: self.max_line_bytes.max(64),
            max_connections: self.max_connections.max(1),
            shutdown_grace: Duration::from_millis(self.shutdown_grace_ms),
        })
    }
}

// ---- Size limits (issue #11: every size limit checked at the edge). ----
// Key and value limits come from the WAL (`node::limits`), never from a flag,
// so no flag value can make the edge accept what storage refuses. The line
// limit only bounds TCP buffering; it must leave room for the largest request
// storage accepts beyond the TCP memory budget's reach.

/// Largest `--max-line-bytes`: four times the largest request storage
/// accepts, and far inside the server-wide TCP memory budget.
pub const MAX_LINE_BYTES_LIMIT: usize = 64 << 20;
// Compile-time facts the cap relies on.
const _: () = assert!(MAX_LINE_BYTES_LIMIT <= crate::api::server::MAX_TCP_BUFFERED_BYTES / 8);
const _: () = assert!(crate::node::limits::MAX_GRPC_REQUEST_BYTES < MAX_LINE_BYTES_LIMIT);

fn check_size_limits(max_line_bytes: usize) -> Result<(), ConfigError> {
    if max_line_bytes > MAX_LINE_BYTES_LIMIT {
        return Err(ConfigError::BadSize(format!(
            "--max-line-bytes {max_line_bytes} is above {MAX_LINE_BYTES_LIMIT}; \
             values over {} bytes are refused whatever the line limit",
            crate::node::limits::MAX_VALUE_BYTES
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_limits_beyond_the_cap_are_refused_and_never_raise_the_value_limit() {
        let big = format!("--max-line-bytes={}", MAX_LINE_BYTES_LIMIT + 1);
        let cli = parse(&["t", &big, "--advertise-client-addr=x:1"]);
        assert!(matches!(cli.into_config(), Err(ConfigError::BadSize(_))));
        let at_cap = format!("--max-line-bytes={MAX_LINE_BYTES_LIMIT}");
        let cli = parse(&["t", &at_cap, "--advertise-client-addr=x:1"]);
        assert_eq!(
            cli.into_config().map(|c| c.max_line_bytes),
            Ok(MAX_LINE_BYTES_LIMIT)
        );
    }

    fn parse(args: &[&str]) -> Cli {
        let argv = normalize_args(args.iter().map(OsString::from));
        Cli::try_parse_from(argv).expect("valid command line")
    }

    #[test]
    fn seed_command_line_parses_verbatim() {
        let cli = parse(&[
            "titan-server",
            "-id=node1",
            "-port=5001",
            "-client-port=6001",
            "-advertise-client-addr=localhost:6001",
            "-peers=node2:localhost:5002:6002,node3:localhost:5003:6003",
        ]);
        assert_eq!(cli.id, "node1");
        assert_eq!(cli.port, 5001);
        assert_eq!(cli.client_port, 6001);
        assert_eq!(cli.advertise_client_addr.as_deref(), Some("localhost:6001"));
        let peers = parse_peers(&cli.peers).expect("peers");
        assert_eq!(peers.len(), 2);
        assert_eq!(peers[1].name, "node3");
        assert_eq!(peers[1].peer_addr(), "localhost:5003");
        assert_eq!(peers[1].client_addr(), "localhost:6003");
    }

    #[test]
    fn double_dash_and_space_separated_forms_parse() {
        let cli = parse(&[
            "titan-server",
            "--id",
            "n2",
            "-port",
            "5002",
            "--client-port=6002",
        ]);
        assert_eq!(
            (cli.id.as_str(), cli.port, cli.client_port),
            ("n2", 5002, 6002)
        );
    }

    #[test]
    fn short_flags_and_values_are_not_rewritten() {
        let out = normalize_args(["x", "-h", "--id", "-", "-5"].map(OsString::from));
        assert_eq!(out, ["x", "-h", "--id", "-", "-5"].map(OsString::from));
    }

    #[test]
    fn malformed_peer_specs_are_rejected() {
        for bad in ["node2", "node2:h:1", "node2:h:x:2", ":h:1:2", "n:h:1:2:3"] {
            assert!(parse_peers(bad).is_err(), "{bad} should be rejected");
        }
        assert_eq!(parse_peers("").expect("empty is fine"), vec![]);
    }

    #[test]
    fn peers_and_join_conflict() {
        let cli = parse(&[
            "t",
            "--join",
            "--peers=a:h:1:2",
            "--advertise-client-addr=x:1",
        ]);
        assert_eq!(cli.into_config().err(), Some(ConfigError::PeersAndJoin));
    }
}
