//! `titan-bench quantiles FILE...`: reads Prometheus text exposition (a
//! node's `/metrics`, saved with `curl`) and prints, for every histogram
//! series whose name starts with one of the `--metric` prefixes, its count
//! and its p50/p90/p99 estimated from the buckets the way Prometheus's
//! `histogram_quantile` does (linear inside the bucket). Used to read the
//! server's write-path stage histograms after a benchmark cell.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;

/// Arguments of the `quantiles` subcommand.
#[derive(Debug, clap::Parser)]
#[command(
    name = "titan-bench quantiles",
    about = "Prints count and p50/p90/p99 of the histograms in saved /metrics files"
)]
pub struct QuantileArgs {
    /// Files holding a node's `/metrics` text.
    #[arg(required = true)]
    pub files: Vec<PathBuf>,
    /// Histogram name prefixes to show (repeatable).
    #[arg(long = "metric", default_values_t = [
        "titan_write_stage_seconds".to_string(),
        "titan_wal_fsync_duration_seconds".to_string(),
        "titan_request_duration_seconds".to_string(),
    ])]
    pub metrics: Vec<String>,
}

/// One histogram series: cumulative counts by upper bound.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Series {
    /// (upper bound, cumulative count), in file order (ascending `le`).
    pub buckets: Vec<(f64, f64)>,
}

impl Series {
    /// Observations in the series.
    pub fn count(&self) -> f64 {
        self.buckets.last().map_or(0.0, |b| b.1)
    }

    /// The `q` quantile (0..=1), linear within the bucket that holds it;
    /// `None` without observations. A quantile in the `+Inf` bucket is
    /// reported as the highest finite bound.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        let total = self.count();
        if total <= 0.0 {
            return None;
        }
        let rank = q * total;
        let mut lower = (0.0, 0.0);
        for &(le, cum) in &self.buckets {
            if cum >= rank {
                if le.is_infinite() {
                    return Some(lower.0);
                }
                let in_bucket = cum - lower.1;
                let frac = if in_bucket > 0.0 {
                    (rank - lower.1) / in_bucket
                } else {
                    1.0
                };
                return Some(lower.0 + (le - lower.0) * frac);
            }
            lower = (le, cum);
        }
        Some(lower.0)
    }
}

/// Every `<name>_bucket{...,le="x"} n` line of `text` whose name starts
/// with one of `prefixes`, grouped by name and the other labels.
pub fn parse(text: &str, prefixes: &[String]) -> BTreeMap<String, Series> {
    let mut out: BTreeMap<String, Series> = BTreeMap::new();
    for line in text.lines() {
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let Some((name, labels)) = series.split_once("_bucket{") else {
            continue;
        };
        if !prefixes.iter().any(|p| name.starts_with(p.as_str())) {
            continue;
        }
        let labels = labels.trim_end_matches('}');
        // prometheus-client renders `le` first; other encoders last.
        let mut le = None;
        let mut rest = Vec::new();
        for label in labels.split(',') {
            match label.strip_prefix("le=\"") {
                Some(v) => le = Some(v.trim_end_matches('"')),
                None => rest.push(label),
            }
        }
        let le = match le {
            Some("+Inf") => f64::INFINITY,
            Some(v) => match v.parse::<f64>() {
                Ok(v) => v,
                Err(_) => continue,
            },
            None => continue,
        };
        let Ok(count) = value.parse::<f64>() else {
            continue;
        };
        let key = if rest.is_empty() {
            name.to_string()
        } else {
            format!("{name}{{{}}}", rest.join(","))
        };
        out.entry(key).or_default().buckets.push((le, count));
    }
    out
}

/// The report for all files: one table per file.
pub fn main(args: &QuantileArgs) -> Result<String, String> {
    let mut text = String::new();
    for path in &args.files {
        let body = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let series = parse(&body, &args.metrics);
        let _ = writeln!(text, "{}\n", path.display());
        let _ = writeln!(text, "| series | count | p50 ms | p90 ms | p99 ms |");
        let _ = writeln!(text, "|---|---:|---:|---:|---:|");
        for (name, s) in &series {
            let ms = |q| {
                s.quantile(q)
                    .map_or("-".to_string(), |v| format!("{:.3}", v * 1e3))
            };
            let _ = writeln!(
                text,
                "| `{name}` | {} | {} | {} | {} |",
                s.count(),
                ms(0.5),
                ms(0.9),
                ms(0.99)
            );
        }
        text.push('\n');
    }
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = r#"# HELP titan_write_stage_seconds x
titan_write_stage_seconds_sum{stage="applied",path="local"} 0.5
titan_write_stage_seconds_count{stage="applied",path="local"} 100
titan_write_stage_seconds_bucket{le="0.001",stage="applied",path="local"} 50
titan_write_stage_seconds_bucket{le="0.002",stage="applied",path="local"} 90
titan_write_stage_seconds_bucket{stage="applied",path="local",le="0.004"} 100
titan_write_stage_seconds_bucket{stage="applied",path="local",le="+Inf"} 100
titan_write_stage_seconds_bucket{stage="queued",path="local",le="0.001"} 0
titan_write_stage_seconds_bucket{stage="queued",path="local",le="+Inf"} 0
titan_other_bucket{le="1"} 3
titan_write_stage_seconds_total_bucket{le="1"} 3
garbage line
"#;

    fn series() -> BTreeMap<String, Series> {
        parse(TEXT, &["titan_write_stage_seconds".to_string()])
    }

    /// Buckets group by series (wherever `le` sits among the labels; a
    /// series without other labels is its bare name); other families and
    /// malformed lines are skipped.
    #[test]
    fn buckets_group_by_series_and_other_lines_are_skipped() {
        let s = series();
        let keys: Vec<&str> = s.keys().map(String::as_str).collect();
        assert_eq!(
            keys,
            [
                "titan_write_stage_seconds_total",
                r#"titan_write_stage_seconds{stage="applied",path="local"}"#,
                r#"titan_write_stage_seconds{stage="queued",path="local"}"#,
            ]
        );
    }

    /// Quantiles interpolate linearly inside the bucket that holds the rank,
    /// as Prometheus does; an empty series has none.
    #[test]
    fn quantiles_interpolate_within_the_bucket() {
        let s = series();
        let applied = &s[r#"titan_write_stage_seconds{stage="applied",path="local"}"#];
        let cases = [
            (0.25, 0.0005),
            (0.5, 0.001),
            (0.7, 0.0015),
            (0.9, 0.002),
            (0.95, 0.003),
        ];
        for (q, want) in cases {
            let got = applied.quantile(q).expect("observations");
            assert!((got - want).abs() < 1e-9, "q={q}: {got} != {want}");
        }
        let queued = &s[r#"titan_write_stage_seconds{stage="queued",path="local"}"#];
        assert_eq!(queued.quantile(0.5), None);
    }

    /// A rank in the +Inf bucket reports the highest finite bound.
    #[test]
    fn a_rank_past_the_last_finite_bound_reports_that_bound() {
        let s = Series {
            buckets: vec![(0.001, 1.0), (f64::INFINITY, 10.0)],
        };
        assert_eq!(s.quantile(0.99), Some(0.001));
    }
}
