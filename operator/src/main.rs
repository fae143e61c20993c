//! `titan-operator` binary: `crd` prints the CRD YAML, `run` starts the controller.

use std::net::SocketAddr;
use std::time::Duration;

use clap::{Parser, Subcommand};
use titan_operator::admin::GrpcAdminConfig;
use titan_operator::controller::{RunConfig, run};
use titan_operator::crd::crd_yaml;
use titan_operator::leader::LeaseConfig;

/// Command line of the operator.
#[derive(Parser, Debug)]
#[command(
    name = "titan-operator",
    version,
    about = "Kubernetes operator for Titan clusters"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Print the TitanCluster CustomResourceDefinition as YAML.
    Crd,
    /// Run the controller (with Lease leader election).
    Run(RunArgs),
}

/// Flags of `run`.
#[derive(Parser, Debug)]
struct RunArgs {
    /// Watch only this namespace (default: all namespaces).
    #[arg(long, env = "TITAN_OPERATOR_WATCH_NAMESPACE")]
    watch_namespace: Option<String>,
    /// Address of /metrics and /healthz.
    #[arg(long, env = "TITAN_OPERATOR_HTTP_ADDR", default_value = "0.0.0.0:8080")]
    http_addr: SocketAddr,
    /// Namespace of the leader-election Lease (the operator's own).
    #[arg(long, env = "POD_NAMESPACE", default_value = "titan-system")]
    lease_namespace: String,
    /// Name of the leader-election Lease.
    #[arg(
        long,
        env = "TITAN_OPERATOR_LEASE_NAME",
        default_value = "titan-operator-leader"
    )]
    lease_name: String,
    /// Identity in the Lease (the pod name).
    #[arg(long, env = "POD_NAME", default_value = "titan-operator")]
    identity: String,
    /// Seconds without renewal after which another replica may take over.
    #[arg(long, default_value_t = 15)]
    lease_duration_secs: i32,
    /// Milliseconds between lease renewals.
    #[arg(long, default_value_t = 5000)]
    lease_renew_ms: u64,
    /// Admin gRPC connect timeout.
    #[arg(long, default_value_t = 2000)]
    admin_connect_timeout_ms: u64,
    /// Admin gRPC request timeout.
    #[arg(long, default_value_t = 10_000)]
    admin_request_timeout_ms: u64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Crd => {
            print!("{}", crd_yaml()?);
            Ok(())
        }
        Command::Run(args) => {
            tracing_subscriber::fmt()
                .with_env_filter(
                    tracing_subscriber::EnvFilter::try_from_default_env()
                        .unwrap_or_else(|_| "info".into()),
                )
                .init();
            run(RunConfig {
                watch_namespace: args.watch_namespace,
                http_addr: args.http_addr,
                lease: LeaseConfig {
                    name: args.lease_name,
                    namespace: args.lease_namespace,
                    identity: args.identity,
                    lease_duration_secs: args.lease_duration_secs,
                    renew_interval: Duration::from_millis(args.lease_renew_ms),
                },
                admin: GrpcAdminConfig {
                    connect_timeout_ms: args.admin_connect_timeout_ms,
                    request_timeout_ms: args.admin_request_timeout_ms,
                },
            })
            .await
        }
    }
}
