//! Command line and environment configuration for `titan-server`.
//!
//! The original single-dash flags (`-id=node1 -peers=...`) are accepted by
//! rewriting them to the double-dash form before clap sees them
//! ([`normalize_args`]); every flag also has a `TITAN_*` environment variable.
//!
//! Ports the seed command line does not name follow the client port, so that
//! three nodes started on one host with only the seed flags do not collide
//! ([`derived_port`]): with `-client-port=6001+k` the client gRPC port
//! defaults to `7001+k` and the HTTP port to `8080+k`. An explicit flag or
//! `TITAN_*` variable always wins over the derived value.

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
    /// `--restore-from` seeds a new cluster; a joining member gets its data
    /// from the leader.
    #[error(
        "--restore-from and --join are mutually exclusive: restore every initial member, then add others"
    )]
    RestoreAndJoin,
    /// A size flag outside what the edge and storage can honour.
    #[error("{0}")]
    BadSize(String),
    /// A port derived from `--client-port` falls outside 1..=65535.
    #[error(
        "{flag} derived from --client-port {client_port} would be {value}, outside 1..=65535; \
         set {flag} explicitly"
    )]
    DerivedPortOutOfRange {
        /// The flag whose default was being derived.
        flag: &'static str,
        /// The client port it was derived from.
        client_port: u16,
        /// The out-of-range result.
        value: i64,
    },
    /// Two of this node's listeners would share one port.
    #[error("port {port} is given to both {first} and {second}; change {second}")]
    PortClash {
        /// The shared port.
        port: u16,
        /// The flag that claimed it first.
        first: &'static str,
        /// The flag to change.
        second: &'static str,
    },
    /// `--log-level` is neither a level nor `target=level` directives.
    #[error(
        "invalid --log-level {0:?}: use error, warn, info, debug, trace or off, \
         optionally followed by target=level directives (e.g. info,titan_server::raft=debug)"
    )]
    BadLogLevel(String),
    /// A TLS certificate was given without its key, or the other way round.
    #[error("{given} is set but {missing} is not; a TLS certificate needs its private key")]
    TlsPairIncomplete {
        /// The flag that was given.
        given: &'static str,
        /// The flag that is missing.
        missing: &'static str,
    },
    /// `--admin-allowed-cn` holds an empty name.
    #[error("--admin-allowed-cn {0:?} holds an empty name; give common names separated by commas")]
    BadAdminName(String),
    /// A TLS flag that only makes sense with another one.
    #[error("{given} needs {needs}: {why}")]
    TlsNeeds {
        /// The flag that was given.
        given: &'static str,
        /// The flag it needs.
        needs: &'static str,
        /// Why.
        why: &'static str,
    },
}

/// Default plaintext client port (`-client-port`).
pub const DEFAULT_CLIENT_PORT: u16 = 6001;
/// Default client gRPC port for a node on [`DEFAULT_CLIENT_PORT`].
pub const DEFAULT_GRPC_PORT: u16 = 7001;
/// Default HTTP port for a node on [`DEFAULT_CLIENT_PORT`].
pub const DEFAULT_HTTP_PORT: u16 = 8080;

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines (colours only on a terminal).
    Text,
    /// One JSON object per line, for log collectors.
    Json,
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
    /// Client gRPC (KV service) port [default: 7001, or client-port + 1000].
    #[arg(long = "grpc-port", env = "TITAN_GRPC_PORT")]
    pub grpc_port: Option<u16>,
    /// HTTP port for /metrics, /healthz and /readyz [default: 8080, or
    /// client-port + 2079, so 6001/6002/6003 get 8080/8081/8082].
    #[arg(long = "http-port", env = "TITAN_HTTP_PORT")]
    pub http_port: Option<u16>,
    /// Address every listener binds to.
    #[arg(
        long = "listen-addr",
        env = "TITAN_LISTEN_ADDR",
        default_value = "0.0.0.0"
    )]
    pub listen_addr: String,
    /// Address the plaintext TCP client port binds to [default:
    /// --listen-addr]. `127.0.0.1` keeps the plaintext protocol reachable
    /// only from inside the host or pod (for `nc localhost 6001`) when the
    /// other ports use TLS.
    #[arg(long = "client-listen-addr", env = "TITAN_CLIENT_LISTEN_ADDR")]
    pub client_listen_addr: Option<String>,
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
    /// Check the data dir offline and exit, changing nothing: the WAL's
    /// frames, every snapshot a start would load, the log after it, the
    /// replay. Prints what a start would find; exit 0 when it would start,
    /// 1 when it would refuse (with the same error). Never run it on the dir
    /// of a running member.
    #[arg(long = "check-data-dir", default_value_t = false)]
    pub check_data_dir: bool,
    /// Seed a new cluster from this backup (`titanctl snapshot save`,
    /// `etcdctl snapshot save`): every initial member starts with the same
    /// file and the same -peers. Ignored once the data dir holds a cluster.
    #[arg(long = "restore-from", env = "TITAN_RESTORE_FROM")]
    pub restore_from: Option<PathBuf>,
    /// Take a snapshot once this many entries were applied since the last one.
    #[arg(
        long = "snapshot-threshold",
        env = "TITAN_SNAPSHOT_THRESHOLD",
        default_value_t = 10_000
    )]
    pub snapshot_threshold: u64,
    /// An automatic snapshot also waits until the WAL on disk reaches this
    /// percentage of the newest snapshot's size, so a large state is not
    /// rewritten every few thousand entries; 0 = entry count only.
    #[arg(
        long = "snapshot-log-percent",
        env = "TITAN_SNAPSHOT_LOG_PERCENT",
        default_value_t = 50
    )]
    pub snapshot_log_percent: u64,
    /// Keep values of at least this many bytes in the value log (data files
    /// under `<data-dir>/vlog`, read back with one pread) instead of memory;
    /// 0 = every value. Unset: every value in memory. Experimental: the log
    /// is rebuilt at every start and not yet merged while running (see
    /// ARCHITECTURE.md).
    #[arg(long = "value-log-threshold", env = "TITAN_VALUE_LOG_THRESHOLD")]
    pub value_log_threshold: Option<u64>,
    /// A closed value-log file is merged (its live records copied, the file
    /// removed) once at least this share of its bytes is dead.
    #[arg(
        long = "value-log-merge-ratio",
        env = "TITAN_VALUE_LOG_MERGE_RATIO",
        default_value_t = 0.5
    )]
    pub value_log_merge_ratio: f64,
    /// Most bytes per second a value-log merge copies (0 = unlimited).
    #[arg(
        long = "value-log-merge-rate",
        env = "TITAN_VALUE_LOG_MERGE_RATE",
        default_value_t = 64 << 20
    )]
    pub value_log_merge_rate: u64,
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
    /// Log line format.
    #[arg(
        long = "log-format",
        env = "TITAN_LOG_FORMAT",
        value_enum,
        default_value_t = LogFormat::Text
    )]
    pub log_format: LogFormat,
    /// Log level or filter (`info`, `debug`, `info,titan_server::raft=debug`)
    /// [default: RUST_LOG if set, else info].
    #[arg(long = "log-level", env = "TITAN_LOG_LEVEL")]
    pub log_level: Option<String>,
    /// PEM certificate (chain) served on the client gRPC port; turns on TLS
    /// there. Needs --client-tls-key.
    #[arg(long = "client-tls-cert", env = "TITAN_CLIENT_TLS_CERT")]
    pub client_tls_cert: Option<PathBuf>,
    /// PEM private key of --client-tls-cert.
    #[arg(long = "client-tls-key", env = "TITAN_CLIENT_TLS_KEY")]
    pub client_tls_key: Option<PathBuf>,
    /// PEM CA bundle; when set, clients of the gRPC port must present a
    /// certificate it signed (mutual TLS).
    #[arg(long = "client-tls-ca", env = "TITAN_CLIENT_TLS_CA")]
    pub client_tls_ca: Option<PathBuf>,
    /// PEM certificate (chain) of this node on the peer port, also presented
    /// when it dials other members. Its SANs must name the host of
    /// --advertise-peer-addr (and of --advertise-grpc-addr when the client
    /// port uses TLS). Needs --peer-tls-key and --peer-tls-ca.
    #[arg(long = "peer-tls-cert", env = "TITAN_PEER_TLS_CERT")]
    pub peer_tls_cert: Option<PathBuf>,
    /// PEM private key of --peer-tls-cert.
    #[arg(long = "peer-tls-key", env = "TITAN_PEER_TLS_KEY")]
    pub peer_tls_key: Option<PathBuf>,
    /// PEM CA bundle that signs every member's peer certificate: the peer
    /// port requires a client certificate it signed, and dialled members are
    /// verified with it.
    #[arg(long = "peer-tls-ca", env = "TITAN_PEER_TLS_CA")]
    pub peer_tls_ca: Option<PathBuf>,
    /// How often the TLS files are re-read; a changed, valid set is used for
    /// new connections (a broken one is logged and the old set kept).
    #[arg(
        long = "tls-reload-interval-ms",
        env = "TITAN_TLS_RELOAD_INTERVAL_MS",
        default_value_t = DEFAULT_TLS_RELOAD_INTERVAL_MS
    )]
    pub tls_reload_interval_ms: u64,
    /// Subject common names allowed to make the Admin calls that change the
    /// cluster (membership, leadership transfer, snapshots, value-log
    /// merge), comma-separated or repeated. Needs peer mutual TLS. Status
    /// stays open to every certificate of --peer-tls-ca. Default: any.
    #[arg(
        long = "admin-allowed-cn",
        env = "TITAN_ADMIN_ALLOWED_CN",
        value_delimiter = ','
    )]
    pub admin_allowed_cn: Vec<String>,
}

/// Default `--tls-reload-interval-ms`: a rotated Kubernetes Secret reaches
/// the pod's volume within about a minute, so ten seconds adds little.
pub const DEFAULT_TLS_RELOAD_INTERVAL_MS: u64 = 10_000;
/// Accepted `--tls-reload-interval-ms` values: at least 100 ms (each poll
/// reads every file), at most a day.
pub const TLS_RELOAD_INTERVAL_MS_RANGE: std::ops::RangeInclusive<u64> = 100..=86_400_000;

/// The PEM files of one TLS listener (paths only; the transport reads and
/// checks them at start-up).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// Certificate chain, leaf first.
    pub cert: PathBuf,
    /// Private key of the leaf.
    pub key: PathBuf,
    /// CA bundle that client certificates must chain to; `None` accepts
    /// clients without a certificate.
    pub ca: Option<PathBuf>,
}

/// Which flags name the files of one TLS listener (for error messages).
struct TlsFlags {
    cert: &'static str,
    key: &'static str,
    ca: &'static str,
}

/// Pairs `cert` with `key` (both or neither); a CA alone is refused.
fn tls_files(
    flags: &TlsFlags,
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    ca: Option<PathBuf>,
) -> Result<Option<TlsFiles>, ConfigError> {
    match (cert, key) {
        (Some(cert), Some(key)) => Ok(Some(TlsFiles { cert, key, ca })),
        (Some(_), None) => Err(ConfigError::TlsPairIncomplete {
            given: flags.cert,
            missing: flags.key,
        }),
        (None, Some(_)) => Err(ConfigError::TlsPairIncomplete {
            given: flags.key,
            missing: flags.cert,
        }),
        (None, None) if ca.is_some() => Err(ConfigError::TlsNeeds {
            given: flags.ca,
            needs: flags.cert,
            why: "client certificates are only checked on a TLS listener",
        }),
        (None, None) => Ok(None),
    }
}

/// Checks the TLS flags of both ports: the peer port is mutual TLS or
/// plaintext, and a follower must be able to verify the leader's client
/// port when it relays lease calls there.
fn check_tls(cli: &Cli) -> Result<(Option<TlsFiles>, Option<TlsFiles>), ConfigError> {
    let client_flags = TlsFlags {
        cert: "--client-tls-cert",
        key: "--client-tls-key",
        ca: "--client-tls-ca",
    };
    let peer_flags = TlsFlags {
        cert: "--peer-tls-cert",
        key: "--peer-tls-key",
        ca: "--peer-tls-ca",
    };
    let client = tls_files(
        &client_flags,
        cli.client_tls_cert.clone(),
        cli.client_tls_key.clone(),
        cli.client_tls_ca.clone(),
    )?;
    let peer = tls_files(
        &peer_flags,
        cli.peer_tls_cert.clone(),
        cli.peer_tls_key.clone(),
        cli.peer_tls_ca.clone(),
    )?;
    if peer.as_ref().is_some_and(|p| p.ca.is_none()) {
        return Err(ConfigError::TlsNeeds {
            given: "--peer-tls-cert",
            needs: "--peer-tls-ca",
            why: "members verify each other's certificates with it",
        });
    }
    if client.as_ref().is_some_and(|c| c.ca.is_none()) && peer.is_none() {
        return Err(ConfigError::TlsNeeds {
            given: "--client-tls-cert",
            needs: "--client-tls-ca or --peer-tls-ca",
            why: "a follower relays etcd lease calls to the leader's client port \
                  and verifies its certificate with those CAs",
        });
    }
    Ok((client, peer))
}

/// `--admin-allowed-cn`: names without blanks, and only with peer mutual
/// TLS, where callers have a certificate to check.
fn check_admin_names(names: &[String], peer_tls: bool) -> Result<Vec<String>, ConfigError> {
    if names.is_empty() {
        return Ok(Vec::new());
    }
    if !peer_tls {
        return Err(ConfigError::TlsNeeds {
            given: "--admin-allowed-cn",
            needs: "--peer-tls-cert, --peer-tls-key and --peer-tls-ca",
            why: "the names are checked against the client certificate of the peer port's mutual TLS",
        });
    }
    let names: Vec<String> = names.iter().map(|n| n.trim().to_string()).collect();
    if names.iter().any(String::is_empty) {
        return Err(ConfigError::BadAdminName(names.join(",")));
    }
    Ok(names)
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
    /// Bind address of every listener but the plaintext TCP one.
    pub listen_addr: String,
    /// Bind address of the plaintext TCP client port.
    pub client_listen_addr: String,
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
    /// A backup to seed a bootstrapping member with.
    pub restore_from: Option<PathBuf>,
    /// Entries applied between automatic snapshots.
    pub snapshot_threshold_entries: u64,
    /// WAL size, as a percentage of the newest snapshot's size, that an
    /// automatic snapshot also waits for (0 = no size condition).
    pub snapshot_log_percent: u64,
    /// Values of at least this many bytes go to the value log (`None`: all
    /// in memory).
    pub value_log_threshold: Option<u64>,
    /// Dead share of a closed value-log file that makes it worth merging.
    pub value_log_merge_ratio: f64,
    /// Value-log merge copy rate in bytes per second (0 = unlimited).
    pub value_log_merge_rate: u64,
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
    /// TLS of the client gRPC port (`None`: plaintext).
    pub client_tls: Option<TlsFiles>,
    /// Mutual TLS of the peer port and of every dial to another member
    /// (`None`: plaintext).
    pub peer_tls: Option<TlsFiles>,
    /// How often the TLS files are re-read.
    pub tls_reload_interval: Duration,
    /// Subject CNs allowed to change the cluster through Admin (empty: any
    /// caller the peer port admits).
    pub admin_allowed_cn: Vec<String>,
}

impl Config {
    /// The flag that set a listening port, for errors such as "address in
    /// use" (the first match in the order peer, client, gRPC, HTTP).
    pub fn flag_for_port(&self, port: u16) -> Option<&'static str> {
        [
            ("--port", self.peer_port),
            ("--client-port", self.client_port),
            ("--grpc-port", self.grpc_port),
            ("--http-port", self.http_port),
        ]
        .into_iter()
        .find(|(_, p)| *p == port)
        .map(|(flag, _)| flag)
    }

    /// How long a request waits for a leader before `ERR UNAVAILABLE`
    /// (about two maximum election timeouts).
    pub fn leader_wait(&self) -> Duration {
        self.tick * self.election_ticks * 4
    }
}

/// Rewrites `-flag=value` and `-flag value` to `--flag...` so clap accepts the
/// original Go-style command line. `-h`/`-V` and anything already double-dashed
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

/// The default of a port the seed command line does not name: `default` moved
/// by as much as `client_port` is away from [`DEFAULT_CLIENT_PORT`], so that
/// nodes on 6001, 6002, 6003 get gRPC 7001, 7002, 7003 and HTTP 8080, 8081,
/// 8082. Client port 0 (any free port) derives 0 as well.
pub fn derived_port(
    flag: &'static str,
    client_port: u16,
    default: u16,
) -> Result<u16, ConfigError> {
    if client_port == 0 {
        return Ok(0);
    }
    let value = i64::from(default) + i64::from(client_port) - i64::from(DEFAULT_CLIENT_PORT);
    match u16::try_from(value) {
        Ok(port) if port != 0 => Ok(port),
        _ => Err(ConfigError::DerivedPortOutOfRange {
            flag,
            client_port,
            value,
        }),
    }
}

/// Fails when two listeners of this node would bind the same port (0, "any
/// free port", never clashes). The error names the later flag, the one the
/// user is more likely to want to change.
fn check_distinct_ports(ports: &[(&'static str, u16)]) -> Result<(), ConfigError> {
    for (i, &(second, port)) in ports.iter().enumerate() {
        let earlier = ports[..i].iter().find(|(_, p)| *p == port && port != 0);
        if let Some(&(first, _)) = earlier {
            return Err(ConfigError::PortClash {
                port,
                first,
                second,
            });
        }
    }
    Ok(())
}

/// Levels `--log-level` accepts as a bare word.
const LOG_LEVELS: [&str; 6] = ["error", "warn", "info", "debug", "trace", "off"];

/// Checks a `--log-level` value: comma-separated directives, each a level or
/// `target=level`. A bare word that is not a level is refused, because the
/// filter syntax would otherwise read it as a target and silence every log.
pub fn check_log_level(spec: &str) -> Result<(), ConfigError> {
    let bad = || ConfigError::BadLogLevel(spec.to_string());
    let directives: Vec<&str> = spec.split(',').map(str::trim).collect();
    if directives.iter().all(|d| d.is_empty()) {
        return Err(bad());
    }
    for d in directives.into_iter().filter(|d| !d.is_empty()) {
        let level = match d.rsplit_once('=') {
            Some((target, level)) if !target.is_empty() => level,
            Some(_) => return Err(bad()),
            None => d,
        };
        if !LOG_LEVELS.contains(&level.to_ascii_lowercase().as_str()) {
            return Err(bad());
        }
    }
    Ok(())
}

/// The log filter in force: `--log-level`/`TITAN_LOG_LEVEL` when given (and
/// valid), else `RUST_LOG` when set, else `info`.
pub fn log_filter(log_level: Option<&str>, rust_log: Option<&str>) -> Result<String, ConfigError> {
    if let Some(level) = log_level {
        check_log_level(level)?;
        return Ok(level.to_string());
    }
    Ok(rust_log
        .filter(|s| !s.trim().is_empty())
        .unwrap_or("info")
        .to_string())
}

impl Cli {
    /// The gRPC and HTTP ports (given or derived from the client port),
    /// checked to differ from every other listener's.
    fn derived_ports(&self) -> Result<(u16, u16), ConfigError> {
        let grpc_port = match self.grpc_port {
            Some(p) => p,
            None => derived_port("--grpc-port", self.client_port, DEFAULT_GRPC_PORT)?,
        };
        let http_port = match self.http_port {
            Some(p) => p,
            None => derived_port("--http-port", self.client_port, DEFAULT_HTTP_PORT)?,
        };
        check_distinct_ports(&[
            ("--port", self.port),
            ("--client-port", self.client_port),
            ("--grpc-port", grpc_port),
            ("--http-port", http_port),
        ])?;
        Ok((grpc_port, http_port))
    }

    /// Validates the flags and fills in derived defaults.
    pub fn into_config(self) -> Result<Config, ConfigError> {
        check_size_limits(self.max_line_bytes)?;
        let (client_tls, peer_tls) = check_tls(&self)?;
        check_tls_reload_interval(self.tls_reload_interval_ms)?;
        let (grpc_port, http_port) = self.derived_ports()?;
        let peers = parse_peers(&self.peers)?;
        if self.join && !peers.is_empty() {
            return Err(ConfigError::PeersAndJoin);
        }
        if self.join && self.restore_from.is_some() {
            return Err(ConfigError::RestoreAndJoin);
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
                .unwrap_or_else(|| format!("{host}:{grpc_port}")),
            name: self.id,
            client_listen_addr: self
                .client_listen_addr
                .unwrap_or_else(|| self.listen_addr.clone()),
            listen_addr: self.listen_addr,
            peer_port: self.port,
            client_port: self.client_port,
            grpc_port,
            http_port,
            peers,
            join: self.join,
            data_dir,
            restore_from: self.restore_from,
            snapshot_threshold_entries: self.snapshot_threshold.max(1),
            snapshot_log_percent: self.snapshot_log_percent,
            value_log_threshold: self.value_log_threshold,
            value_log_merge_ratio: self.value_log_merge_ratio.clamp(0.0, 1.0),
            value_log_merge_rate: self.value_log_merge_rate,
            max_snapshot_bytes: self.max_snapshot_bytes.max(1),
            tick: Duration::from_millis(tick_ms),
            election_ticks: u32::try_from(election_ticks).unwrap_or(u32::MAX),
            heartbeat_ticks: heartbeat_ticks as u32,
            max_line_bytes: self.max_line_bytes.max(64),
            max_connections: self.max_connections.max(1),
            shutdown_grace: Duration::from_millis(self.shutdown_grace_ms),
            admin_allowed_cn: check_admin_names(&self.admin_allowed_cn, peer_tls.is_some())?,
            client_tls,
            peer_tls,
            tls_reload_interval: Duration::from_millis(self.tls_reload_interval_ms),
        })
    }
}

fn check_tls_reload_interval(ms: u64) -> Result<(), ConfigError> {
    if TLS_RELOAD_INTERVAL_MS_RANGE.contains(&ms) {
        return Ok(());
    }
    Err(ConfigError::BadTimeouts(format!(
        "--tls-reload-interval-ms {ms} is outside {}..={}",
        TLS_RELOAD_INTERVAL_MS_RANGE.start(),
        TLS_RELOAD_INTERVAL_MS_RANGE.end()
    )))
}

// ---- Size limits (every size limit checked at the edge). ----
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

    fn config(args: &[&str]) -> Result<Config, ConfigError> {
        let mut argv = vec!["titan-server", "--advertise-client-addr=x:1"];
        argv.extend_from_slice(args);
        argv.extend(["--advertise-peer-addr=x:2", "--advertise-grpc-addr=x:3"]);
        parse(&argv).into_config()
    }

    #[test]
    fn unnamed_ports_follow_the_client_port() {
        // (client port, gRPC, HTTP): the original three nodes on one host, the
        // defaults, and "any free port".
        let cases = [
            (None, 7001, 8080),
            (Some(6001), 7001, 8080),
            (Some(6002), 7002, 8081),
            (Some(6003), 7003, 8082),
            (Some(16001), 17001, 18080),
            (Some(0), 0, 0),
        ];
        for (client, grpc, http) in cases {
            let flag = client.map(|c| format!("--client-port={c}"));
            let mut args = vec!["--port=5999"];
            args.extend(flag.as_deref());
            let cfg = config(&args).expect("valid");
            assert_eq!((cfg.grpc_port, cfg.http_port), (grpc, http), "{client:?}");
        }
    }

    #[test]
    fn the_plaintext_tcp_port_binds_where_told_else_with_the_others() {
        let cases: [(&[&str], &str, &str); 3] = [
            (&[], "0.0.0.0", "0.0.0.0"),
            (&["--listen-addr=10.0.0.5"], "10.0.0.5", "10.0.0.5"),
            (&["--client-listen-addr=127.0.0.1"], "0.0.0.0", "127.0.0.1"),
        ];
        for (flags, listen, client) in cases {
            let cfg = config(flags).expect("valid");
            assert_eq!(
                (cfg.listen_addr.as_str(), cfg.client_listen_addr.as_str()),
                (listen, client),
                "{flags:?}"
            );
        }
    }

    #[test]
    fn explicit_ports_win_over_derived_ones() {
        let cfg =
            config(&["-client-port=6002", "--grpc-port=9001", "--http-port=9002"]).expect("valid");
        assert_eq!(
            (cfg.client_port, cfg.grpc_port, cfg.http_port),
            (6002, 9001, 9002)
        );
        let cfg = config(&["-client-port=6002", "--http-port=9002"]).expect("valid");
        assert_eq!((cfg.grpc_port, cfg.http_port), (7002, 9002));
    }

    #[test]
    fn derived_port_outside_the_port_range_names_the_flag() {
        let err = config(&["-client-port=65000"]).err();
        assert!(matches!(
            err,
            Some(ConfigError::DerivedPortOutOfRange {
                flag: "--grpc-port",
                client_port: 65000,
                ..
            })
        ));
        let text = err.map(|e| e.to_string()).unwrap_or_default();
        assert!(text.contains("set --grpc-port explicitly"), "{text}");
        let err = config(&["-client-port=64000"]).err();
        assert!(matches!(
            err,
            Some(ConfigError::DerivedPortOutOfRange {
                flag: "--http-port",
                ..
            })
        ));
    }

    #[test]
    fn two_listeners_on_one_port_name_the_flag_to_change() {
        let err = config(&["-port=7001", "-client-port=6001"]).err();
        assert_eq!(
            err,
            Some(ConfigError::PortClash {
                port: 7001,
                first: "--port",
                second: "--grpc-port"
            })
        );
        let text = err.map(|e| e.to_string()).unwrap_or_default();
        assert!(text.contains("change --grpc-port"), "{text}");
        assert!(
            config(&[
                "-port=0",
                "-client-port=0",
                "--grpc-port=0",
                "--http-port=0"
            ])
            .is_ok()
        );
    }

    #[test]
    fn flag_for_port_names_the_listener() {
        let cfg = config(&["-port=5002", "-client-port=6002"]).expect("valid");
        assert_eq!(cfg.flag_for_port(5002), Some("--port"));
        assert_eq!(cfg.flag_for_port(6002), Some("--client-port"));
        assert_eq!(cfg.flag_for_port(7002), Some("--grpc-port"));
        assert_eq!(cfg.flag_for_port(8081), Some("--http-port"));
        assert_eq!(cfg.flag_for_port(1), None);
    }

    #[test]
    fn log_level_accepts_levels_and_directives_and_refuses_bare_words() {
        for good in [
            "info",
            "DEBUG",
            "warn,tonic=error",
            "info,titan_server::raft=trace",
            "off",
        ] {
            assert_eq!(check_log_level(good), Ok(()), "{good}");
        }
        for bad in ["", " , ", "verbose", "info,loud", "=debug", "raft=loud"] {
            assert!(check_log_level(bad).is_err(), "{bad:?} should be refused");
        }
    }

    #[test]
    fn log_level_flag_wins_over_rust_log_which_wins_over_info() {
        assert_eq!(log_filter(Some("debug"), Some("trace")), Ok("debug".into()));
        assert_eq!(
            log_filter(None, Some("tonic=trace")),
            Ok("tonic=trace".into())
        );
        assert_eq!(log_filter(None, None), Ok("info".into()));
        assert!(log_filter(Some("chatty"), None).is_err());
    }

    #[test]
    fn tls_flags_come_in_pairs_and_each_port_gets_the_cas_it_needs() {
        let refused = [
            (vec!["--client-tls-cert=c"], "--client-tls-key"),
            (vec!["--client-tls-key=k"], "--client-tls-cert"),
            (vec!["--client-tls-ca=a"], "--client-tls-cert"),
            (
                vec!["--peer-tls-cert=c", "--peer-tls-key=k"],
                "--peer-tls-ca",
            ),
            (
                vec!["--peer-tls-key=k", "--peer-tls-ca=a"],
                "--peer-tls-cert",
            ),
            (
                vec!["--client-tls-cert=c", "--client-tls-key=k"],
                "--peer-tls-ca",
            ),
        ];
        for (args, named) in refused {
            let err = config(&args).expect_err("refused");
            assert!(err.to_string().contains(named), "{args:?}: {err}");
        }
        let peer = ["--peer-tls-cert=p", "--peer-tls-key=pk", "--peer-tls-ca=pa"];
        let cfg = config(&peer).expect("peer mTLS alone");
        assert_eq!(cfg.client_tls, None);
        assert_eq!(cfg.peer_tls.map(|t| t.ca), Some(Some(PathBuf::from("pa"))));
        let cfg = config(&[
            "--client-tls-cert=c",
            "--client-tls-key=k",
            "--client-tls-ca=a",
        ])
        .expect("client mTLS alone");
        assert_eq!(cfg.client_tls.map(|t| t.key), Some(PathBuf::from("k")));
        let mut both = peer.to_vec();
        both.extend(["--client-tls-cert=c", "--client-tls-key=k"]);
        assert!(
            config(&both).is_ok(),
            "server-only client TLS next to peer mTLS"
        );
        assert!(config(&[]).is_ok_and(|c| c.client_tls.is_none() && c.peer_tls.is_none()));
    }

    #[test]
    fn admin_allowed_names_need_peer_mutual_tls_and_no_blank_name() {
        let peer = ["--peer-tls-cert=p", "--peer-tls-key=pk", "--peer-tls-ca=pa"];
        /// Ok(the names kept) or Err(text the error carries).
        type Want = Result<Vec<&'static str>, &'static str>;
        // (extra flags, with peer mTLS, wanted)
        let table: Vec<(Vec<&str>, bool, Want)> = vec![
            (vec![], false, Ok(vec![])),
            (vec![], true, Ok(vec![])),
            (
                vec!["--admin-allowed-cn=titan-operator"],
                false,
                Err("--peer-tls-ca"),
            ),
            (
                vec!["--admin-allowed-cn=titan-operator"],
                true,
                Ok(vec!["titan-operator"]),
            ),
            (
                vec!["--admin-allowed-cn=titan-operator, ops"],
                true,
                Ok(vec!["titan-operator", "ops"]),
            ),
            (
                vec!["--admin-allowed-cn=a", "--admin-allowed-cn=b"],
                true,
                Ok(vec!["a", "b"]),
            ),
            (vec!["--admin-allowed-cn=a,,b"], true, Err("empty name")),
            (vec!["--admin-allowed-cn= "], true, Err("empty name")),
        ];
        for (extra, mtls, want) in table {
            let mut args: Vec<&str> = if mtls { peer.to_vec() } else { vec![] };
            args.extend(&extra);
            match (config(&args), want) {
                (Ok(cfg), Ok(names)) => assert_eq!(cfg.admin_allowed_cn, names, "{args:?}"),
                (Err(e), Err(text)) => assert!(e.to_string().contains(text), "{args:?}: {e}"),
                (got, want) => panic!("{args:?}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn tls_reload_interval_defaults_to_ten_seconds_and_is_bounded() {
        let cfg = config(&[]).expect("defaults");
        assert_eq!(cfg.tls_reload_interval, Duration::from_secs(10));
        let cfg = config(&["--tls-reload-interval-ms=1000"]).expect("one second");
        assert_eq!(cfg.tls_reload_interval, Duration::from_secs(1));
        for bad in [
            "--tls-reload-interval-ms=0",
            "--tls-reload-interval-ms=99999999999",
        ] {
            let err = config(&[bad]).expect_err("out of range");
            assert!(
                err.to_string().contains("--tls-reload-interval-ms"),
                "{err}"
            );
        }
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

    /// A joining member gets its data from the leader; restoring it from
    /// a backup as well is refused rather than silently ignored.
    #[test]
    fn restore_from_and_join_conflict() {
        let cli = parse(&[
            "t",
            "--join",
            "--restore-from=/backups/titan.db",
            "--advertise-peer-addr=x:1",
            "--advertise-client-addr=x:1",
        ]);
        assert_eq!(cli.into_config().err(), Some(ConfigError::RestoreAndJoin));
    }
}
