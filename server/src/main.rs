//! `titan-server` binary: parse flags (the original single-dash form too), set up logging, start
//! the node and its listeners, and shut down gracefully on SIGTERM / Ctrl-C.

use std::io::IsTerminal;

use anyhow::Context;
use clap::Parser;
use tracing_subscriber::EnvFilter;

use titan_server::config::{Cli, Config, LogFormat, log_filter, normalize_args};
use titan_server::node::start::{self, StartError};

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse_from(normalize_args(std::env::args_os()));
    init_logging(&cli)?;
    let cfg = cli.into_config().context("invalid configuration")?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("building the tokio runtime")?;
    runtime.block_on(async move {
        let server = start::launch(cfg.clone())
            .await
            .map_err(|e| explain_start_error(e, &cfg))?;
        tracing::info!(
            peer = cfg.peer_port,
            client = cfg.client_port,
            grpc = cfg.grpc_port,
            http = cfg.http_port,
            listen = %cfg.listen_addr,
            "listening"
        );
        tokio::select! {
            r = wait_for_signal() => r?,
            () = server.handle.fatal() => start::exit_after_fatal().await,
        }
        tracing::info!("signal received; shutting down");
        if server.shutdown().await {
            start::exit_after_fatal().await;
        }
        anyhow::Ok(())
    })?;
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    Ok(())
}

/// Logs go to stderr: text (ANSI colours only on a terminal and without
/// `NO_COLOR`) or one JSON object per line.
fn init_logging(cli: &Cli) -> anyhow::Result<()> {
    let rust_log = std::env::var("RUST_LOG").ok();
    let filter = log_filter(cli.log_level.as_deref(), rust_log.as_deref())?;
    let filter = EnvFilter::try_new(&filter).with_context(|| format!("log filter {filter:?}"))?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match cli.log_format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => {
            let ansi = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
            builder.with_ansi(ansi).init();
        }
    }
    Ok(())
}

/// A port that is already taken is reported with the flag that sets it.
fn explain_start_error(err: StartError, cfg: &Config) -> anyhow::Error {
    let StartError::Bind { addr, source } = &err else {
        return err.into();
    };
    let port = addr.rsplit(':').next().and_then(|p| p.parse::<u16>().ok());
    let Some(flag) = port.and_then(|p| cfg.flag_for_port(p)) else {
        return err.into();
    };
    let hint = if source.kind() == std::io::ErrorKind::AddrInUse {
        format!(
            "port {} is already in use (another titan-server on this host?); \
             choose another with {flag}",
            port.unwrap_or_default()
        )
    } else {
        format!("cannot listen there; choose another address or port ({flag}, --listen-addr)")
    };
    anyhow::Error::new(err).context(hint)
}

async fn wait_for_signal() -> anyhow::Result<()> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    tokio::select! {
        _ = term.recv() => {}
        r = tokio::signal::ctrl_c() => r.context("waiting for Ctrl-C")?,
    }
    Ok(())
}
