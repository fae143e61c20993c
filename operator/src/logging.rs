//! Log set-up of `titan-operator run`: `--log-format text|json` and
//! `--log-level` (or `TITAN_LOG_FORMAT` / `TITAN_LOG_LEVEL`; `RUST_LOG` is
//! honoured when no level is given). The same rules as `titan-server`.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines (colours only on a terminal).
    Text,
    /// One JSON object per line, for log collectors.
    Json,
}

/// `--log-level` is neither a level nor `target=level` directives.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid --log-level {0:?}: use error, warn, info, debug, trace or off, \
     optionally followed by target=level directives (e.g. info,titan_operator=debug)"
)]
pub struct BadLogLevel(pub String);

/// Levels `--log-level` accepts as a bare word.
const LOG_LEVELS: [&str; 6] = ["error", "warn", "info", "debug", "trace", "off"];

/// Checks a `--log-level` value: comma-separated directives, each a level or
/// `target=level`. A bare word that is not a level is refused, because the
/// filter syntax would otherwise read it as a target and silence every log.
pub fn check_log_level(spec: &str) -> Result<(), BadLogLevel> {
    let bad = || BadLogLevel(spec.to_string());
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

/// The filter in force: `--log-level` when given (and valid), else
/// `RUST_LOG` when set, else `info`.
pub fn log_filter(log_level: Option<&str>, rust_log: Option<&str>) -> Result<String, BadLogLevel> {
    if let Some(level) = log_level {
        check_log_level(level)?;
        return Ok(level.to_string());
    }
    Ok(rust_log
        .filter(|s| !s.trim().is_empty())
        .unwrap_or("info")
        .to_string())
}

/// Installs the global subscriber writing to stdout; ANSI colours only when
/// stdout is a terminal and `NO_COLOR` is unset.
pub fn init(format: LogFormat, log_level: Option<&str>) -> anyhow::Result<()> {
    let rust_log = std::env::var("RUST_LOG").ok();
    let filter = log_filter(log_level, rust_log.as_deref())?;
    let filter = EnvFilter::try_new(&filter)?;
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => {
            let ansi = std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none();
            builder.with_ansi(ansi).init();
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_level_accepts_levels_and_directives_and_refuses_bare_words() {
        for good in [
            "info",
            "DEBUG",
            "warn,kube=error",
            "info,titan_operator::leader=trace",
        ] {
            assert_eq!(check_log_level(good), Ok(()), "{good}");
        }
        for bad in ["", "verbose", "info,loud", "=debug", "kube=loud"] {
            assert!(check_log_level(bad).is_err(), "{bad:?} should be refused");
        }
    }

    #[test]
    fn flag_wins_over_rust_log_which_wins_over_info() {
        assert_eq!(log_filter(Some("debug"), Some("trace")), Ok("debug".into()));
        assert_eq!(
            log_filter(None, Some("kube=trace")),
            Ok("kube=trace".into())
        );
        assert_eq!(log_filter(None, None), Ok("info".into()));
        assert_eq!(log_filter(None, Some(" ")), Ok("info".into()));
    }
}
