//! `titan-server` binary: parse flags (the original single-dash form too), set up logging, start
//! the node and its listeners, and shut down gracefully on SIGTERM / Ctrl-C.

use std::io::IsTerminal;

use anyhow::Context;
use clap::Parser;
use tracing_subscriber::EnvFilter;

use titan_server::config::{Cli, Config, LogFormat, log_filter, normalize_args};
use titan_server::server::{self, StartError};

/// mimalloc instead of glibc's allocator: the write path allocates and frees
/// many small buffers on several threads, where glibc's arenas cost about a
/// sixth of the server's CPU under load (measured with `perf`; figures in
/// BENCHMARKS.md).
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// `mi_option_arena_eager_commit` in mimalloc.h's `mi_option_e` (the same
/// index in mimalloc v2 and v3; `libmimalloc-sys` does not name it). A test
/// below checks the index against the option's documented default.
const MI_OPTION_ARENA_EAGER_COMMIT: std::ffi::c_int = 4;

unsafe extern "C" {
    fn mi_option_set(option: std::ffi::c_int, value: std::ffi::c_long);
    #[cfg(test)]
    fn mi_option_get(option: std::ffi::c_int) -> std::ffi::c_long;
}

/// Commits mimalloc's arenas lazily. With eager commit (its default on
/// Linux) the put p99.9 of a 64-client load doubled (about 100 ms against
/// 55 ms) while throughput did not change; BENCHMARKS.md has the runs.
/// An operator's `MIMALLOC_ARENA_EAGER_COMMIT` still wins.
extern "C" fn tune_allocator() {
    if std::env::var_os("MIMALLOC_ARENA_EAGER_COMMIT").is_none() {
        // SAFETY: sets one process-wide integer option, which mimalloc
        // allows at any time; it reads it when it reserves an arena.
        unsafe { mi_option_set(MI_OPTION_ARENA_EAGER_COMMIT, 0) };
    }
}

/// Runs [`tune_allocator`] as an ELF constructor ahead of mimalloc's own
/// (priority 101), so before its first arena is reserved: set in `main`,
/// the option comes too late for that arena, which holds most of the heap.
#[cfg(all(target_os = "linux", not(test)))]
#[used]
#[unsafe(link_section = ".init_array.00100")]
static TUNE_ALLOCATOR: extern "C" fn() = tune_allocator;

/// `--check-data-dir`: the report on stdout, the verdict as the exit code.
fn check_data_dir(dir: &std::path::Path) -> anyhow::Result<()> {
    use titan_server::storage::BootOptions;
    use titan_server::storage::check::check_data_dir;
    let report = check_data_dir(dir, &BootOptions::default());
    for line in &report.lines {
        println!("{line}");
    }
    match report.verdict {
        Ok(start) => {
            println!(
                "ok: {} would start from snapshot index {} with {} log entries, applied through {}, revision {}, {} keys indexed",
                dir.display(),
                start.snapshot_index,
                start.entries,
                start.applied_index,
                start.revision,
                start.keys
            );
            Ok(())
        }
        Err(e) => {
            println!("refused: {}: {e}", dir.display());
            std::process::exit(1);
        }
    }
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse_from(normalize_args(std::env::args_os()));
    init_logging(&cli)?;
    let check_only = cli.check_data_dir;
    let cfg = cli.into_config().context("invalid configuration")?;
    if check_only {
        return check_data_dir(&cfg.data_dir);
    }
    check_data_dir_writable(&cfg.data_dir)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("building the tokio runtime")?;
    runtime.block_on(async move {
        let running = server::launch(cfg.clone())
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
            () = running.handle.fatal() => server::exit_after_fatal().await,
        }
        tracing::info!("signal received; shutting down");
        if running.shutdown().await {
            server::exit_after_fatal().await;
        }
        anyhow::Ok(())
    })?;
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    Ok(())
}

/// Name of the probe file that proves the data dir is writable.
const WRITE_PROBE: &str = ".titan-write-check";

/// Fails start-up, naming the directory, its owner and mode and our uid, when
/// the data dir cannot be created or written (a volume the provisioner made
/// root-owned, for example), instead of failing later inside storage.
fn check_data_dir_writable(dir: &std::path::Path) -> anyhow::Result<()> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let probe = dir.join(WRITE_PROBE);
    let result = std::fs::create_dir_all(dir)
        .and_then(|()| std::fs::write(&probe, b"ok"))
        .and_then(|()| std::fs::remove_file(&probe));
    let Err(err) = result else { return Ok(()) };
    let owner = match std::fs::metadata(dir) {
        Ok(m) => format!(
            "owned by uid {} gid {} with mode {:o}",
            m.uid(),
            m.gid(),
            m.permissions().mode() & 0o7777
        ),
        Err(e) => format!("not readable ({e})"),
    };
    anyhow::bail!(
        "data dir {} is not writable: {err}; it is {owner}, and titan-server runs as uid {} \
         (make the volume writable for that uid, e.g. fsGroup or the operator's \
         spec.storage.fixPermissions)",
        dir.display(),
        process_uid()
    )
}

/// The effective uid, from /proc (no libc dependency); `unknown` elsewhere.
fn process_uid() -> String {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|v| v.split_whitespace().nth(1).map(str::to_string))
        })
        .unwrap_or_else(|| "unknown".to_string())
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

#[cfg(test)]
mod data_dir_tests {
    use super::*;

    /// A data dir that cannot be created is reported with its path and our
    /// uid; a writable one passes and keeps no probe file.
    #[test]
    fn unwritable_data_dir_is_reported_with_owner_mode_and_uid() {
        let tmp = std::env::temp_dir().join(format!("titan-dd-{}", std::process::id()));
        let file = tmp.join("a-file");
        std::fs::create_dir_all(&tmp).unwrap();
        std::fs::write(&file, b"x").unwrap();
        let bad = file.join("data");
        let msg = check_data_dir_writable(&bad).unwrap_err().to_string();
        assert!(msg.contains(&bad.display().to_string()), "{msg}");
        assert!(msg.contains("runs as uid"), "{msg}");
        assert!(msg.contains("not writable"), "{msg}");

        let good = tmp.join("data");
        check_data_dir_writable(&good).unwrap();
        assert!(!good.join(WRITE_PROBE).exists());
        std::fs::remove_dir_all(&tmp).unwrap();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Guards the hard-coded index: `arena_eager_commit` is the only option
    /// around it that defaults to 2 (its neighbours default to 1 and 0).
    /// The constructor is not linked into this test binary, so the default
    /// shows unless the environment overrides it.
    #[test]
    fn arena_eager_commit_option_index_matches_mimalloc() {
        if std::env::var_os("MIMALLOC_ARENA_EAGER_COMMIT").is_some() {
            return;
        }
        // SAFETY: reads one process-wide integer option.
        assert_eq!(unsafe { mi_option_get(MI_OPTION_ARENA_EAGER_COMMIT) }, 2);
        tune_allocator();
        // SAFETY: as above.
        assert_eq!(unsafe { mi_option_get(MI_OPTION_ARENA_EAGER_COMMIT) }, 0);
    }
}
