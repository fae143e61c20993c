//! `titan-operator` binary: `crd` prints the CRD YAML, `run` starts the
//! controller, `fetch-backup` downloads and checks a backup for a restore.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use titan_operator::admin::GrpcAdminConfig;
use titan_operator::backup::resource::{ACCESS_KEY_ID, S3Source, SECRET_ACCESS_KEY, SESSION_TOKEN};
use titan_operator::backup::restore;
use titan_operator::backup::store::{S3Credentials, StoreConfig, s3_store};
use titan_operator::builders::{OperatorIdentity, parse_pod_selector};
use titan_operator::controller::{RunConfig, run};
use titan_operator::crd::crd_yaml;
use titan_operator::leader::{LeaseConfig, resolve_namespace};
use titan_operator::logging::{self, LogFormat};

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
    /// Print the TitanCluster and TitanBackup CustomResourceDefinitions as YAML.
    Crd,
    /// Run the controller (with Lease leader election).
    Run(Box<RunArgs>),
    /// Download a backup from S3 and check all of it (an initial member's
    /// init container runs this for `spec.bootstrap.fromBackup`). Credentials
    /// come from AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY and optionally
    /// AWS_SESSION_TOKEN.
    FetchBackup(FetchArgs),
}

/// Flags of `fetch-backup`.
#[derive(Parser, Debug)]
struct FetchArgs {
    /// Bucket name.
    #[arg(long)]
    bucket: String,
    /// Object key of the snapshot.
    #[arg(long)]
    key: String,
    /// Region of the bucket.
    #[arg(long, default_value = "us-east-1")]
    region: String,
    /// Endpoint URL of an S3-compatible server (AWS S3 when unset).
    #[arg(long)]
    endpoint: Option<String>,
    /// Allow a plain http:// endpoint.
    #[arg(long)]
    allow_http: bool,
    /// Expected SHA-256 of the whole object (hex).
    #[arg(long)]
    sha256: Option<String>,
    /// Where the checked file goes; nothing is written there unless the
    /// whole object checks out.
    #[arg(long)]
    out: std::path::PathBuf,
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
    /// Namespace of the leader-election Lease [default: POD_NAMESPACE, else
    /// the namespace the operator runs in, else the kubeconfig context's].
    #[arg(long, env = "TITAN_OPERATOR_LEASE_NAMESPACE")]
    lease_namespace: Option<String>,
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
    /// Exit non-zero when lease requests keep failing this long (missing
    /// namespace, RBAC, unreachable API server); 0 retries forever.
    #[arg(long, default_value_t = 30)]
    lease_error_timeout_secs: u64,
    /// Log line format.
    #[arg(long, env = "TITAN_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    /// Log level or filter (`info`, `debug`, `info,kube=warn`) [default:
    /// RUST_LOG if set, else info].
    #[arg(long, env = "TITAN_LOG_LEVEL")]
    log_level: Option<String>,
    /// Labels selecting the operator's own pods, `key=value[,key=value...]`
    /// (the chart sets the Deployment's selector labels). With POD_NAMESPACE
    /// it tells each cluster's NetworkPolicy whom to admit to the Admin API;
    /// without either, `spec.networkPolicy.enabled` clusters get no policy.
    #[arg(long, env = "TITAN_OPERATOR_POD_SELECTOR")]
    pod_selector: Option<String>,
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
        Command::FetchBackup(args) => fetch_backup(args).await,
        Command::Run(args) => {
            logging::init(args.log_format, args.log_level.as_deref())?;
            let pod_namespace = std::env::var("POD_NAMESPACE").ok();
            let operator =
                operator_identity(pod_namespace.as_deref(), args.pod_selector.as_deref())?;
            let client = kube::Client::try_default().await.context(
                "no Kubernetes API to talk to: run in a pod, or set KUBECONFIG / ~/.kube/config",
            )?;
            let (namespace, source) = resolve_namespace(
                args.lease_namespace.as_deref(),
                pod_namespace.as_deref(),
                client.default_namespace(),
            );
            tracing::info!(%namespace, from = %source, "leader-election Lease namespace");
            let timeout = args.lease_error_timeout_secs;
            let config = RunConfig {
                watch_namespace: args.watch_namespace,
                http_addr: args.http_addr,
                lease: LeaseConfig {
                    name: args.lease_name,
                    namespace,
                    identity: args.identity,
                    lease_duration_secs: args.lease_duration_secs,
                    renew_interval: Duration::from_millis(args.lease_renew_ms),
                },
                lease_error_timeout: (timeout > 0).then(|| Duration::from_secs(timeout)),
                admin: GrpcAdminConfig {
                    connect_timeout_ms: args.admin_connect_timeout_ms,
                    request_timeout_ms: args.admin_request_timeout_ms,
                },
                operator,
            };
            run(client, config).await
        }
    }
}

/// The operator's identity for NetworkPolicies: `POD_NAMESPACE` plus the
/// parsed `--pod-selector`. A malformed selector is an error naming the flag;
/// a missing part is logged once and leaves the identity unknown.
fn operator_identity(
    pod_namespace: Option<&str>,
    pod_selector: Option<&str>,
) -> anyhow::Result<Option<OperatorIdentity>> {
    let namespace = pod_namespace.filter(|ns| !ns.trim().is_empty());
    let selector = pod_selector.filter(|s| !s.trim().is_empty());
    let pod_labels = selector
        .map(parse_pod_selector)
        .transpose()
        .context("--pod-selector / TITAN_OPERATOR_POD_SELECTOR")?;
    match (namespace, pod_labels) {
        (Some(namespace), Some(pod_labels)) => Ok(Some(OperatorIdentity {
            namespace: namespace.to_string(),
            pod_labels,
        })),
        _ => {
            tracing::warn!(
                "POD_NAMESPACE or --pod-selector is unset: clusters with spec.networkPolicy.enabled get no NetworkPolicy"
            );
            Ok(None)
        }
    }
}

/// `fetch-backup`: one download, one line on success, the reason on failure.
async fn fetch_backup(args: FetchArgs) -> anyhow::Result<()> {
    let source = S3Source {
        bucket: args.bucket,
        key: args.key,
        endpoint: args.endpoint,
        region: args.region,
        credentials_secret: "environment".to_string(),
        allow_http: args.allow_http,
    };
    let env = |key: &str| std::env::var(key).ok().filter(|v| !v.trim().is_empty());
    let credentials = S3Credentials {
        access_key_id: env(ACCESS_KEY_ID).context("AWS_ACCESS_KEY_ID is not set")?,
        secret_access_key: env(SECRET_ACCESS_KEY).context("AWS_SECRET_ACCESS_KEY is not set")?,
        session_token: env(SESSION_TOKEN),
    };
    let store = s3_store(
        &source.bucket_location(),
        &credentials,
        &StoreConfig::default(),
    )?;
    let summary = restore::fetch(
        store.as_ref(),
        &source.bucket,
        &source.key,
        &args.out,
        args.sha256.as_deref(),
    )
    .await
    .map_err(|e| anyhow::anyhow!("{}: {e}", e.reason()))?;
    println!(
        "fetched s3://{}/{} to {}: {} bytes, revision {}, {} live keys, checked whole",
        source.bucket,
        source.key,
        args.out.display(),
        summary.file_bytes,
        summary.revision,
        summary.live_keys
    );
    Ok(())
}
