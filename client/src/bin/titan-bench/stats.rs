//! Latency and error accounting: one HDR histogram per worker, merged at the
//! end into a [`Summary`].

use hdrhistogram::Histogram;
use serde::Serialize;
use std::collections::BTreeMap;
use std::time::Duration;

/// Largest latency the histogram tracks exactly (60 s, in microseconds);
/// slower operations are recorded as this value.
pub const MAX_TRACKED_LATENCY_US: u64 = 60_000_000;
/// Significant decimal digits of every recorded latency.
const SIGNIFICANT_DIGITS: u8 = 3;

/// What one worker observed.
#[derive(Debug)]
pub struct Recorder {
    /// Latencies of successful operations, in microseconds.
    pub latency_us: Histogram<u64>,
    /// Failed operations by error kind.
    pub errors: BTreeMap<&'static str, u64>,
    /// NOT_LEADER redirects followed (not errors unless they ran out).
    pub redirects: u64,
    /// Txns whose compare failed (the else branch ran): counted as
    /// completed operations, reported apart.
    pub txn_conflicts: u64,
}

impl Recorder {
    pub fn new() -> Self {
        // 1 µs ..= 60 s at 3 digits is a valid, fixed configuration.
        let latency_us = Histogram::new_with_bounds(1, MAX_TRACKED_LATENCY_US, SIGNIFICANT_DIGITS)
            .unwrap_or_else(|e| panic!("fixed histogram bounds rejected: {e}"));
        Recorder {
            latency_us,
            errors: BTreeMap::new(),
            redirects: 0,
            txn_conflicts: 0,
        }
    }

    pub fn ok(&mut self, latency: Duration) {
        let us = (latency.as_micros() as u64).clamp(1, MAX_TRACKED_LATENCY_US);
        self.latency_us.saturating_record(us);
    }

    pub fn error(&mut self, kind: &'static str) {
        *self.errors.entry(kind).or_insert(0) += 1;
    }

    pub fn merge(&mut self, other: &Recorder) {
        // Same bounds on both sides, so `add` cannot fail.
        let _ = self.latency_us.add(&other.latency_us);
        for (kind, n) in &other.errors {
            *self.errors.entry(kind).or_insert(0) += n;
        }
        self.redirects += other.redirects;
        self.txn_conflicts += other.txn_conflicts;
    }
}

/// Latency percentiles in microseconds.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Latency {
    pub mean: f64,
    pub p50: u64,
    pub p95: u64,
    pub p99: u64,
    pub p999: u64,
    pub max: u64,
}

/// The machine-readable result of one run (`--json`).
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    /// Echo of the run's parameters, so a JSON file stands on its own.
    pub params: serde_json::Value,
    /// Measured wall time in seconds (warm-up excluded).
    pub elapsed_s: f64,
    /// Successful operations.
    pub ops: u64,
    /// Failed operations.
    pub errors_total: u64,
    /// Successful operations per second.
    pub throughput_ops_s: f64,
    /// Latency of successful operations, microseconds.
    pub latency_us: Latency,
    /// Failures by kind.
    pub errors: BTreeMap<String, u64>,
    /// NOT_LEADER redirects followed.
    pub redirects: u64,
    /// Txns that took the else branch (`--op txn`).
    pub txn_conflicts: u64,
    /// The client count the comparison table groups by, when it is not
    /// `params.clients`: watchers (watch mode) or leases (lease mode).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub clients: Option<u64>,
    /// Mode-specific figures (watch and lease modes).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub extra: Option<serde_json::Value>,
}

impl Summary {
    pub fn from_recorder(rec: &Recorder, elapsed: Duration, params: serde_json::Value) -> Self {
        let h = &rec.latency_us;
        let ops = h.len();
        let elapsed_s = elapsed.as_secs_f64();
        let errors_total = rec.errors.values().sum();
        Summary {
            params,
            elapsed_s,
            ops,
            errors_total,
            throughput_ops_s: if elapsed_s > 0.0 {
                ops as f64 / elapsed_s
            } else {
                0.0
            },
            latency_us: Latency {
                mean: if ops > 0 { h.mean() } else { 0.0 },
                p50: h.value_at_quantile(0.50),
                p95: h.value_at_quantile(0.95),
                p99: h.value_at_quantile(0.99),
                p999: h.value_at_quantile(0.999),
                max: h.max(),
            },
            errors: rec
                .errors
                .iter()
                .map(|(k, v)| (k.to_string(), *v))
                .collect(),
            redirects: rec.redirects,
            txn_conflicts: rec.txn_conflicts,
            clients: None,
            extra: None,
        }
    }

    /// The human-readable report.
    pub fn render(&self) -> String {
        let l = &self.latency_us;
        let ms = |us: u64| us as f64 / 1000.0;
        let mut out = format!(
            "ops {}  errors {}  elapsed {:.2}s  throughput {:.0} ops/s\n\
             latency ms: mean {:.3}  p50 {:.3}  p95 {:.3}  p99 {:.3}  p99.9 {:.3}  max {:.3}\n",
            self.ops,
            self.errors_total,
            self.elapsed_s,
            self.throughput_ops_s,
            l.mean / 1000.0,
            ms(l.p50),
            ms(l.p95),
            ms(l.p99),
            ms(l.p999),
            ms(l.max),
        );
        if self.redirects > 0 {
            out.push_str(&format!("redirects followed: {}\n", self.redirects));
        }
        if self.txn_conflicts > 0 {
            out.push_str(&format!(
                "txn compare failed (else branch ran): {}\n",
                self.txn_conflicts
            ));
        }
        for (kind, n) in &self.errors {
            out.push_str(&format!("error {kind}: {n}\n"));
        }
        if let Some(serde_json::Value::Object(extra)) = &self.extra {
            for (name, value) in extra {
                out.push_str(&format!("{name}: {value}\n"));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_reports_percentiles_of_known_latencies() {
        let mut rec = Recorder::new();
        for us in 1..=1000u64 {
            rec.ok(Duration::from_micros(us));
        }
        let s = Summary::from_recorder(&rec, Duration::from_secs(2), serde_json::json!({}));
        assert_eq!(s.ops, 1000);
        assert!((s.throughput_ops_s - 500.0).abs() < 1e-9);
        // 3 significant digits: values are exact up to 1000 µs within 0.1%.
        assert!(
            (499..=501).contains(&s.latency_us.p50),
            "{}",
            s.latency_us.p50
        );
        assert!(
            (989..=991).contains(&s.latency_us.p99),
            "{}",
            s.latency_us.p99
        );
        assert!((998..=1000).contains(&s.latency_us.p999));
        assert_eq!(s.latency_us.max, 1000);
        assert!((s.latency_us.mean - 500.5).abs() < 1.0);
    }

    #[test]
    fn merge_adds_latencies_errors_and_redirects() {
        let (mut a, mut b) = (Recorder::new(), Recorder::new());
        a.ok(Duration::from_millis(1));
        a.error("timeout");
        b.ok(Duration::from_millis(3));
        b.error("timeout");
        b.error("connection");
        b.redirects = 2;
        a.merge(&b);
        let s = Summary::from_recorder(&a, Duration::from_secs(1), serde_json::json!({}));
        assert_eq!(s.ops, 2);
        assert_eq!(s.errors_total, 3);
        assert_eq!(s.errors.get("timeout"), Some(&2));
        assert_eq!(s.errors.get("connection"), Some(&1));
        assert_eq!(s.redirects, 2);
    }

    #[test]
    fn over_limit_latency_is_clamped_not_dropped() {
        let mut rec = Recorder::new();
        rec.ok(Duration::from_secs(3600));
        assert_eq!(rec.latency_us.len(), 1);
        assert!(rec.latency_us.max() >= MAX_TRACKED_LATENCY_US - MAX_TRACKED_LATENCY_US / 1000);
    }

    #[test]
    fn empty_run_has_zero_throughput_and_no_nan() {
        let s = Summary::from_recorder(&Recorder::new(), Duration::ZERO, serde_json::json!({}));
        assert_eq!(s.ops, 0);
        assert_eq!(s.throughput_ops_s, 0.0);
        assert_eq!(s.latency_us.mean, 0.0);
    }
}
