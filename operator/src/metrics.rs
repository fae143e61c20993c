//! Prometheus metrics of the operator (served on `/metrics`).

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Label set: the reconcile outcome or the error reason.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    /// Short machine-readable reason.
    pub reason: String,
}

/// Label set: the planner action executed.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ActionLabels {
    /// Planner action name.
    pub action: String,
}

/// All metrics, registered in one [`Registry`].
pub struct Metrics {
    /// Registry rendered by `/metrics`.
    pub registry: Registry,
    /// Reconciliations started.
    pub reconciliations: Counter,
    /// Reconcile failures by error reason.
    pub failures: Family<ReasonLabels, Counter>,
    /// Planner actions executed, by action.
    pub actions: Family<ActionLabels, Counter>,
    /// Reconcile wall-clock duration.
    pub duration: Histogram,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("titan_operator");
        let reconciliations = Counter::default();
        let failures = Family::<ReasonLabels, Counter>::default();
        let actions = Family::<ActionLabels, Counter>::default();
        let duration = Histogram::new(exponential_buckets(0.005, 2.0, 14));
        registry.register(
            "reconciliations",
            "Reconciliations started",
            reconciliations.clone(),
        );
        registry.register(
            "reconcile_failures",
            "Reconcile failures by reason",
            failures.clone(),
        );
        registry.register("actions", "Planner actions executed", actions.clone());
        registry.register(
            "reconcile_duration_seconds",
            "Reconcile duration",
            duration.clone(),
        );
        Self {
            registry,
            reconciliations,
            failures,
            actions,
            duration,
        }
    }
}

impl Metrics {
    /// Counts one reconcile and its duration.
    pub fn observe_reconcile(&self, took: Duration) {
        self.reconciliations.inc();
        self.duration.observe(took.as_secs_f64());
    }

    /// Counts a failure under `reason`.
    pub fn count_failure(&self, reason: &str) {
        self.failures
            .get_or_create(&ReasonLabels {
                reason: reason.to_string(),
            })
            .inc();
    }

    /// Counts an executed planner action.
    pub fn count_action(&self, action: &str) {
        self.actions
            .get_or_create(&ActionLabels {
                action: action.to_string(),
            })
            .inc();
    }

    /// Text exposition format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rendered_metrics_carry_counts_by_reason_and_action() {
        let m = Metrics::default();
        m.observe_reconcile(Duration::from_millis(12));
        m.count_failure("kube");
        m.count_failure("kube");
        m.count_action("AddLearner");
        let text = m.render();
        assert!(
            text.contains("titan_operator_reconciliations_total 1"),
            "{text}"
        );
        assert!(
            text.contains("titan_operator_reconcile_failures_total{reason=\"kube\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("titan_operator_actions_total{action=\"AddLearner\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("titan_operator_reconcile_duration_seconds_count 1"),
            "{text}"
        );
    }
}
