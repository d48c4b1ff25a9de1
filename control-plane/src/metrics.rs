//! The control plane's Prometheus metrics, served at `GET /metrics` (no token).
//!
//! | metric | labels | what |
//! | --- | --- | --- |
//! | `meridian_usage_records_quarantined_total` | `region`, `reason` | usage records set aside instead of counted (`GET /admin/v1/usage/quarantine` lists them) |

use prometheus::{Encoder, IntCounterVec, Opts, Registry, TextEncoder};

/// Every metric of one control plane, in its own registry.
#[derive(Debug, Clone)]
pub struct Metrics {
    registry: Registry,
    /// Usage records quarantined, by region and reason.
    pub usage_quarantined: IntCounterVec,
}

fn counter(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    // The names, help texts and labels are this module's constants, valid by construction.
    let counter = IntCounterVec::new(Opts::new(name, help), labels)
        .expect("a metric with a constant, valid name and labels");
    if let Err(e) = registry.register(Box::new(counter.clone())) {
        tracing::error!(metric = name, error = %e, "could not register a metric");
    }
    counter
}

impl Metrics {
    /// A fresh registry with every metric registered.
    pub fn new() -> Self {
        let registry = Registry::new();
        let usage_quarantined = counter(
            &registry,
            "meridian_usage_records_quarantined_total",
            "Usage records set aside in quarantine instead of counted",
            &["region", "reason"],
        );
        Self {
            registry,
            usage_quarantined,
        }
    }

    /// The metrics in Prometheus' text format.
    pub fn render(&self) -> Vec<u8> {
        let mut out = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut out) {
            tracing::error!(error = %e, "could not encode the metrics");
        }
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
