//! `titan-server` binary: parse flags (seed-compatible), start the node and
//! its listeners, and shut down gracefully on SIGTERM / Ctrl-C.

use anyhow::Context;
use clap::Parser;
use tracing_subscriber::EnvFilter;

use titan_server::config::{Cli, normalize_args};
use titan_server::node::start;

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse_from(normalize_args(std::env::args_os()));
    let cfg = cli.into_config().context("invalid configuration")?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("building the tokio runtime")?;
    runtime.block_on(async move {
        let server = start::launch(cfg).await?;
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

async fn wait_for_signal() -> anyhow::Result<()> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    tokio::select! {
        _ = term.recv() => {}
        r = tokio::signal::ctrl_c() => r.context("waiting for Ctrl-C")?,
    }
    Ok(())
}
