//! `titanctl`: command-line client for Titan, in the spirit of `etcdctl`.
//!
//! Exit codes (also in client/README.md):
//! - 0: success
//! - 1: the server rejected the request, or another error
//! - 2: bad command line (from clap)
//! - 3: `get` of a key that does not exist; `lease ttl`/`keep-alive` of a
//!   lease that does not exist (any more)
//! - 4: a conditional write's condition did not hold; `txn` ran its
//!   failure branch
//! - 5: the cluster could not be reached / no leader within the retry bounds
//! - 6: a write's outcome is unknown (it may or may not have applied)
//! - 7: `status` reached only some members
//!
//! `snapshot save`/`verify` exit 1 for a bad or corrupt backup (the message
//! names the file and the damage) and 5 when the member cannot be reached.

mod admin_cmd;
mod etcd_cmd;
mod kv_cmd;
mod output;
mod snapshot_cmd;

use clap::{Parser, Subcommand, ValueEnum};
use std::process::ExitCode;
use std::time::Duration;
use titan_client::{ClientConfig, Error, TlsConfig};

/// Command-line client for a Titan cluster.
#[derive(Debug, Parser)]
#[command(
    name = "titanctl",
    version,
    about = "Command-line client for a Titan cluster: keys, status, membership, snapshots"
)]
struct Cli {
    /// Client gRPC endpoints (etcd v3 API, client gRPC port), comma-separated.
    #[arg(
        long,
        env = "TITAN_ENDPOINTS",
        value_delimiter = ',',
        default_value = "localhost:7001,localhost:7002,localhost:7003"
    )]
    endpoints: Vec<String>,
    /// Admin gRPC endpoints (peer port), comma-separated.
    #[arg(
        long,
        env = "TITAN_ADMIN_ENDPOINTS",
        value_delimiter = ',',
        default_value = "localhost:5001,localhost:5002,localhost:5003"
    )]
    admin_endpoints: Vec<String>,
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value_t = Format::Table)]
    output: Format,
    /// Per-request timeout in milliseconds.
    #[arg(long, env = "TITAN_TIMEOUT_MS", default_value_t = 3000)]
    timeout_ms: u64,
    /// Overall budget per command in milliseconds, retries included.
    #[arg(long, env = "TITAN_DEADLINE_MS", default_value_t = 10000)]
    deadline_ms: u64,
    /// Verify servers with this PEM CA bundle and dial every endpoint over
    /// TLS (as etcdctl's --cacert). The same files serve the client and the
    /// admin (peer) port.
    #[arg(long, env = "TITAN_CACERT", value_name = "FILE")]
    cacert: Option<std::path::PathBuf>,
    /// Client certificate (PEM) presented for mutual TLS; needs --key and
    /// --cacert.
    #[arg(
        long,
        env = "TITAN_CERT",
        value_name = "FILE",
        requires_all = ["key", "cacert"]
    )]
    cert: Option<std::path::PathBuf>,
    /// Private key (PEM) of --cert.
    #[arg(long, env = "TITAN_KEY", value_name = "FILE", requires = "cert")]
    key: Option<std::path::PathBuf>,
    /// Name to verify in the server certificates instead of each endpoint's
    /// host; needs --cacert.
    #[arg(long, env = "TITAN_TLS_SERVER_NAME", requires = "cacert")]
    tls_server_name: Option<String>,
    #[command(subcommand)]
    command: Command,
}

/// Output formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Format {
    /// Human-readable table / plain text.
    Table,
    /// One JSON document on stdout, for scripts.
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Read a key (exit 3 when absent), or a prefix; optionally at a past revision.
    Get(kv_cmd::GetArgs),
    /// Write a key, optionally as compare-and-set (exit 4 on conflict) or
    /// attached to a lease.
    #[command(visible_alias = "put")]
    Set(kv_cmd::SetArgs),
    /// Delete a key, optionally only at a given version.
    Del(kv_cmd::DelArgs),
    /// List keys by prefix or range.
    Range(kv_cmd::RangeArgs),
    /// Stream changes to a key or prefix, optionally from a past revision.
    Watch(etcd_cmd::WatchArgs),
    /// Leases: grant, revoke, keep-alive, ttl, list.
    Lease {
        #[command(subcommand)]
        action: etcd_cmd::LeaseAction,
    },
    /// Transaction: compares, then --then ops if all hold, else --else ops
    /// (exit 4 when the failure branch ran).
    Txn(etcd_cmd::TxnArgs),
    /// Cluster status: every member's role, term, commit, applied, lag, snapshot.
    Status,
    /// Membership: list, add (as learner), promote, remove.
    Members {
        #[command(subcommand)]
        action: admin_cmd::MembersAction,
    },
    /// Move leadership to another voter.
    TransferLeader(admin_cmd::TransferArgs),
    /// Snapshots: take one now on a node (`snapshot` alone, or `snapshot
    /// take`), `save` a backup streamed from a member, `verify` one offline.
    Snapshot(snapshot_cmd::SnapshotCmd),
    /// Merge a node's value log now (rewrite every closed data file holding
    /// dead records; needs --value-log-threshold on the node).
    MergeValueLog(admin_cmd::SnapshotArgs),
    /// Print a shell completion script (e.g. `source <(titanctl completion bash)`).
    Completion {
        /// The shell to complete for.
        shell: Shell,
    },
}

/// Shells `titanctl completion` writes scripts for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Shell {
    /// bash (`source <(titanctl completion bash)`).
    Bash,
    /// zsh (save as `_titanctl` in a directory on `$fpath`).
    Zsh,
    /// fish (save as `~/.config/fish/completions/titanctl.fish`).
    Fish,
}

/// Writes the completion script for `shell` to stdout.
fn print_completion(shell: Shell) -> Exit {
    use clap::CommandFactory;
    let generator = match shell {
        Shell::Bash => clap_complete::Shell::Bash,
        Shell::Zsh => clap_complete::Shell::Zsh,
        Shell::Fish => clap_complete::Shell::Fish,
    };
    clap_complete::generate(
        generator,
        &mut Cli::command(),
        "titanctl",
        &mut std::io::stdout(),
    );
    Exit::Ok
}

/// Exit codes, one per outcome class a script may branch on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// The command did what it was asked.
    Ok = 0,
    /// A failure not covered below (bad arguments, refused request).
    Failed = 1,
    /// The key (or lease) does not exist.
    NotFound = 3,
    /// A compare-and-swap, conditional write or txn compare did not hold.
    Conflict = 4,
    /// Retries ran out without an answer (no endpoint reachable).
    Unreachable = 5,
    /// A write was sent but its outcome is unknown (the leader was lost).
    OutcomeUnknown = 6,
    /// `status`: some members answered, others were unreachable.
    Partial = 7,
}

/// Maps a client error to its exit code.
pub fn exit_for(err: &Error) -> Exit {
    match err {
        Error::OutcomeUnknown { .. } => Exit::OutcomeUnknown,
        Error::RetriesExhausted { .. } => Exit::Unreachable,
        _ => Exit::Failed,
    }
}

impl Cli {
    fn config(&self, endpoints: &[String]) -> ClientConfig {
        let mut config = ClientConfig::new(endpoints.iter().cloned());
        config.request_timeout = Duration::from_millis(self.timeout_ms);
        config.retry.overall_deadline = Duration::from_millis(self.deadline_ms);
        config.tls = self.tls();
        config
    }

    /// TLS settings from `--cacert`, `--cert`, `--key`; `None` without
    /// `--cacert` (plaintext).
    fn tls(&self) -> Option<TlsConfig> {
        Some(TlsConfig {
            ca_cert_path: self.cacert.clone()?,
            client_identity: self.cert.clone().zip(self.key.clone()),
            domain_name: self.tls_server_name.clone(),
        })
    }
}

async fn run(cli: Cli) -> Result<Exit, Error> {
    let kv = || titan_client::Client::connect(cli.config(&cli.endpoints));
    let admin = || titan_client::AdminClient::connect(cli.config(&cli.admin_endpoints));
    let fmt = cli.output;
    match &cli.command {
        Command::Get(args) => kv_cmd::get(&kv()?, args, fmt).await,
        Command::Set(args) => kv_cmd::set(&kv()?, args, fmt).await,
        Command::Del(args) => kv_cmd::del(&kv()?, args, fmt).await,
        Command::Range(args) => kv_cmd::range(&kv()?, args, fmt).await,
        Command::Watch(args) => etcd_cmd::watch(&kv()?, args, fmt).await,
        Command::Lease { action } => etcd_cmd::lease(&kv()?, action, fmt).await,
        Command::Txn(args) => etcd_cmd::txn(&kv()?, args, fmt).await,
        Command::Status => admin_cmd::status(&admin()?, fmt).await,
        Command::Members { action } => admin_cmd::members(&admin()?, action, fmt).await,
        Command::TransferLeader(args) => admin_cmd::transfer(&admin()?, args, fmt).await,
        Command::Snapshot(cmd) => snapshot(&cli, cmd).await,
        Command::MergeValueLog(args) => admin_cmd::merge_value_log(&admin()?, args, fmt).await,
        Command::Completion { shell } => Ok(print_completion(*shell)),
    }
}

async fn snapshot(cli: &Cli, cmd: &snapshot_cmd::SnapshotCmd) -> Result<Exit, Error> {
    use snapshot_cmd::SnapshotAction;
    let admin = || titan_client::AdminClient::connect(cli.config(&cli.admin_endpoints));
    let (timeout, idle) = (
        Duration::from_millis(cli.timeout_ms),
        Duration::from_millis(cli.deadline_ms),
    );
    match &cmd.action {
        None => admin_cmd::snapshot(&admin()?, &cmd.take, cli.output).await,
        Some(SnapshotAction::Take(args)) => admin_cmd::snapshot(&admin()?, args, cli.output).await,
        Some(SnapshotAction::Save(args)) => {
            let tls = cli.tls();
            let wait = (timeout, idle);
            Ok(snapshot_cmd::save(args, &cli.endpoints, tls.as_ref(), wait, cli.output).await)
        }
        Some(SnapshotAction::Verify(args)) => Ok(snapshot_cmd::verify(args, cli.output)),
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let fmt = cli.output;
    let code = match run(cli).await {
        Ok(exit) => exit,
        Err(err) => {
            output::print_error(&err, fmt);
            exit_for(&err)
        }
    };
    ExitCode::from(code as u8)
}
