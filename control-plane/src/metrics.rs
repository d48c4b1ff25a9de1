//! The control plane's Prometheus metrics, served at `GET /metrics` (no token).
//!
//! | metric | labels | what |
//! | --- | --- | --- |
//! | `meridian_usage_records_quarantined_total` | `region`, `reason` | usage records set aside instead of counted (`GET /admin/v1/usage/quarantine` lists them) |
//! | `meridian_auth_failures_total` | `api` | requests with a wrong token |
//! | `meridian_auth_throttled_total` | `api` | requests answered 429 because their address presented too many wrong tokens |
//! | `meridian_region_pools_match` | `region` | 1 when the region's live instances report shares adding up to its pools in the catalog, 0 when they do not; absent while not reported ([`crate::instances::pools`]) |

use prometheus::{Encoder, IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder};

/// Every metric of one control plane, in its own registry.
#[derive(Debug, Clone)]
pub struct Metrics {
    registry: Registry,
    /// Usage records quarantined, by region and reason.
    pub usage_quarantined: IntCounterVec,
    /// Wrong tokens presented, by API (`admin`, `edge`, `agent`).
    pub auth_failures: IntCounterVec,
    /// Requests refused by the wrong-token throttle, by API.
    pub auth_throttled: IntCounterVec,
    /// Whether each region's instances add up to its pools (1) or not (0), by region.
    pub region_pools_match: IntGaugeVec,
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

fn gauge(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    // The names, help texts and labels are this module's constants, valid by construction.
    let gauge = IntGaugeVec::new(Opts::new(name, help), labels)
        .expect("a metric with a constant, valid name and labels");
    if let Err(e) = registry.register(Box::new(gauge.clone())) {
        tracing::error!(metric = name, error = %e, "could not register a metric");
    }
    gauge
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
        let auth_failures = counter(
            &registry,
            "meridian_auth_failures_total",
            "Requests with a wrong token",
            &["api"],
        );
        let auth_throttled = counter(
            &registry,
            "meridian_auth_throttled_total",
            "Requests answered 429 because their address presented too many wrong tokens",
            &["api"],
        );
        let region_pools_match = gauge(
            &registry,
            "meridian_region_pools_match",
            "1 when a region's live instances add up to its pools in the catalog, 0 when not",
            &["region"],
        );
        Self {
            registry,
            usage_quarantined,
            auth_failures,
            auth_throttled,
            region_pools_match,
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
