//! The edge's Prometheus metrics (docs/design.md §9) and the admin listener's app that serves
//! them at `GET /metrics`.
//!
//! Each edge has its own registry, so several edges in one process (as in tests) never
//! share counters.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use async_trait::async_trait;
use http::Response;
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;
use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};
use tokio::time::Instant;

use crate::regions::{Circuit, Regions};
use crate::snapshot::unix_now;

/// Every metric the edge exports.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// Requests answered, by region (`edge` when answered by the edge itself), model (`-`
    /// when none) and status.
    pub requests: IntCounterVec,
    /// Time from the request's arrival to the end of its answer, by region and model.
    pub latency: HistogramVec,
    /// Retries, by reason: to another region (`connect`, `refused`), or a keyed submission
    /// sent once more to the same region (`resend`).
    pub retries: IntCounterVec,
    /// Retries not sent because the retry budget was spent.
    pub retries_denied: IntCounter,
    /// Circuit state by region: 0 closed, 1 open, 2 half-open; for a region of named
    /// instances, closed while one instance's is, else half-open while one is, else open.
    pub breaker: IntGaugeVec,
    /// Circuit state by region and instance.
    pub instance_breaker: IntGaugeVec,
    /// Revision of the snapshot being routed on.
    pub snapshot_revision: IntGauge,
    /// Seconds since the routing snapshot was received (set when scraped).
    pub snapshot_age: IntGauge,
    /// Snapshots that did not validate and were dropped.
    pub snapshot_rejected: IntCounter,
    /// Client connections open now.
    pub connections_open: IntGauge,
    /// Client connections closed at once because too many were open.
    pub connections_refused: IntCounter,
    /// Client connections closed because the client was too slow, by phase (`idle`,
    /// `header`, `body`).
    pub slow_clients: IntCounterVec,
    /// Requests refused by a throttle that is not a tenant's quota, by type
    /// (`read_rate_limited`, `too_many_failed_keys`).
    pub throttled: IntCounterVec,
    received_unix: AtomicI64,
}

impl Metrics {
    /// A fresh registry with every metric registered.
    ///
    /// # Errors
    ///
    /// When a metric cannot be registered (a programming error, e.g. a duplicate name).
    pub fn new() -> prometheus::Result<Self> {
        let registry = Registry::new();
        let requests = IntCounterVec::new(
            Opts::new("meridian_edge_requests_total", "Requests answered"),
            &["region", "model", "status"],
        )?;
        let latency = HistogramVec::new(
            HistogramOpts::new(
                "meridian_edge_request_duration_seconds",
                "Time to answer a request",
            )
            .buckets(vec![
                0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
            ]),
            &["region", "model"],
        )?;
        let retries = IntCounterVec::new(
            Opts::new(
                "meridian_edge_retries_total",
                "Requests sent on to another region",
            ),
            &["reason"],
        )?;
        let retries_denied = IntCounter::new(
            "meridian_edge_retries_denied_total",
            "Retries not sent because the retry budget was spent",
        )?;
        let breaker = IntGaugeVec::new(
            Opts::new(
                "meridian_edge_circuit_state",
                "Circuit breaker state per region: 0 closed, 1 open, 2 half-open",
            ),
            &["region"],
        )?;
        let instance_breaker = IntGaugeVec::new(
            Opts::new(
                "meridian_edge_instance_circuit_state",
                "Circuit breaker state per instance of a region: 0 closed, 1 open, 2 half-open",
            ),
            &["region", "instance"],
        )?;
        let snapshot_revision = IntGauge::new(
            "meridian_edge_snapshot_revision",
            "Store revision of the routing snapshot",
        )?;
        let snapshot_age = IntGauge::new(
            "meridian_edge_snapshot_age_seconds",
            "Seconds since the routing snapshot was received",
        )?;
        let snapshot_rejected = IntCounter::new(
            "meridian_edge_snapshots_rejected_total",
            "Snapshots dropped because they did not validate",
        )?;
        let connections_open = IntGauge::new(
            "meridian_edge_connections_open",
            "Client connections open now",
        )?;
        let connections_refused = IntCounter::new(
            "meridian_edge_connections_refused_total",
            "Client connections closed at once because too many were open (in all or from one address)",
        )?;
        let slow_clients = IntCounterVec::new(
            Opts::new(
                "meridian_edge_slow_clients_total",
                "Client connections closed at a deadline, by phase (idle, header, body)",
            ),
            &["phase"],
        )?;
        let throttled = IntCounterVec::new(
            Opts::new(
                "meridian_edge_throttled_total",
                "Requests refused by the read rate or the wrong-key throttle, by type",
            ),
            &["type"],
        )?;
        registry.register(Box::new(connections_open.clone()))?;
        registry.register(Box::new(connections_refused.clone()))?;
        registry.register(Box::new(slow_clients.clone()))?;
        registry.register(Box::new(throttled.clone()))?;
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(latency.clone()))?;
        registry.register(Box::new(retries.clone()))?;
        registry.register(Box::new(retries_denied.clone()))?;
        registry.register(Box::new(breaker.clone()))?;
        registry.register(Box::new(instance_breaker.clone()))?;
        registry.register(Box::new(snapshot_revision.clone()))?;
        registry.register(Box::new(snapshot_age.clone()))?;
        registry.register(Box::new(snapshot_rejected.clone()))?;
        Ok(Self {
            registry,
            requests,
            latency,
            retries,
            retries_denied,
            breaker,
            instance_breaker,
            snapshot_revision,
            snapshot_age,
            snapshot_rejected,
            connections_open,
            connections_refused,
            slow_clients,
            throttled,
            received_unix: AtomicI64::new(0),
        })
    }

    /// Notes when the current snapshot was received.
    pub fn snapshot_received(&self, unix_secs: i64) {
        self.received_unix.store(unix_secs, Ordering::Relaxed);
    }

    /// The metrics in Prometheus' text format.
    pub fn render(&self, regions: &Regions) -> Vec<u8> {
        let received = self.received_unix.load(Ordering::Relaxed);
        if received > 0 {
            self.snapshot_age.set((unix_now() - received).max(0));
        }
        let circuits = regions.circuits(Instant::now());
        let mut of_instances: BTreeMap<&str, Circuit> = BTreeMap::new();
        for (key, circuit) in &circuits {
            if let Some((region, instance)) = key.split_once('/') {
                self.instance_breaker
                    .with_label_values(&[region, instance])
                    .set(circuit.gauge());
                let best = of_instances.entry(region).or_insert(*circuit);
                *best = best.best(*circuit);
            }
        }
        for (key, circuit) in &circuits {
            if !key.contains('/') && !of_instances.contains_key(key.as_str()) {
                self.breaker.with_label_values(&[key]).set(circuit.gauge());
            }
        }
        for (region, circuit) in of_instances {
            self.breaker
                .with_label_values(&[region])
                .set(circuit.gauge());
        }
        let mut out = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut out) {
            tracing::error!(error = %e, "could not encode the metrics");
        }
        out
    }
}

/// The admin listener's app: `GET /metrics`, and `GET /healthz`.
pub struct AdminApp {
    /// The metrics.
    pub metrics: Arc<Metrics>,
    /// The regions whose circuits are reported.
    pub regions: Arc<Regions>,
}

#[async_trait]
impl ServeHttp for AdminApp {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let path = session.req_header().uri.path().to_owned();
        let (status, content_type, body) = match path.as_str() {
            "/metrics" => (
                200,
                "text/plain; version=0.0.4",
                self.metrics.render(&self.regions),
            ),
            "/healthz" => (200, "text/plain", b"ok\n".to_vec()),
            _ => (404, "text/plain", b"not found\n".to_vec()),
        };
        let mut response = Response::new(body);
        *response.status_mut() = http::StatusCode::from_u16(status).unwrap_or_default();
        if let Ok(value) = http::HeaderValue::from_str(content_type) {
            response
                .headers_mut()
                .insert(http::header::CONTENT_TYPE, value);
        }
        let length = response.body().len();
        response.headers_mut().insert(
            http::header::CONTENT_LENGTH,
            http::HeaderValue::from(length),
        );
        response
    }
}
