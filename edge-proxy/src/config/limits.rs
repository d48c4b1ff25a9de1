//! The `[limits]` and `[connections]` sections: what one client, one address or one tenant
//! may take of the edge — body size, deadlines and connection caps against slow or idle
//! clients, the rate of calls about existing requests, idempotency keys remembered, and
//! wrong API keys tolerated from one address.

use std::time::Duration;

use policy::quota::{RateLimit, RateLimiter};
use serde::Deserialize;

use super::Problems;

/// `[limits]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsFile {
    /// Largest request body, in bytes (1 KiB – 1 GiB); larger bodies get 413. Default
    /// 32 MiB.
    #[serde(default = "default_body_limit")]
    pub max_body_bytes: u64,
    /// Calls about existing requests (status, SSE streams, files, cancel) each tenant may
    /// make per second through this edge, sustained (above 0, at most 1 000 000); over it:
    /// 429 `read_rate_limited`. Default 50.
    #[serde(default = "default_reads_per_second")]
    pub reads_per_second: f64,
    /// How many such calls a tenant may make at once after a quiet period (1–1 000 000).
    /// Default 100.
    #[serde(default = "default_read_burst")]
    pub read_burst: u32,
    /// `Idempotency-Key`s whose region this edge remembers (for 24 h), entries
    /// (1–10 000 000); the oldest are forgotten first. Default 100 000.
    #[serde(default = "default_idempotency_keys")]
    pub idempotency_keys: u64,
    /// Wrong or unknown API keys one client address (IPv6: one /64) may present per minute
    /// (1–100 000);
    /// past it the address gets 429 `too_many_failed_keys` until the minute ends. Default 20.
    #[serde(default = "default_failed_keys")]
    pub failed_keys_per_minute: u32,
}

impl Default for LimitsFile {
    fn default() -> Self {
        Self {
            max_body_bytes: default_body_limit(),
            reads_per_second: default_reads_per_second(),
            read_burst: default_read_burst(),
            idempotency_keys: default_idempotency_keys(),
            failed_keys_per_minute: default_failed_keys(),
        }
    }
}

/// `[connections]`: deadlines on what clients send, and caps on open connections.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConnectionsFile {
    /// Longest time a client may take to send a request's header, from its first byte, in
    /// ms (100–600 000); then the connection is closed. Default 10 000.
    #[serde(default = "default_header_timeout")]
    pub header_timeout_ms: u64,
    /// Longest time a client may take to send a request's whole body, from the end of its
    /// header, in ms (100–3 600 000); then the connection is closed. Default 60 000.
    #[serde(default = "default_body_timeout")]
    pub body_timeout_ms: u64,
    /// Longest time a connection may stay open without a request (before the first one, or
    /// between two on a kept-alive connection), in ms (100–60 000). Default 60 000.
    #[serde(default = "default_idle_timeout")]
    pub idle_timeout_ms: u64,
    /// Most client connections open at once, in all (1–1 000 000); past it new connections
    /// are closed at once. Default 10 000.
    #[serde(default = "default_max_connections")]
    pub max: u32,
    /// Most client connections open at once from one client address (IPv6: one /64;
    /// 1–1 000 000, at most `max`); past it that address's new connections are closed at
    /// once. Default 256.
    #[serde(default = "default_max_per_address")]
    pub max_per_address: u32,
}

impl Default for ConnectionsFile {
    fn default() -> Self {
        Self {
            header_timeout_ms: default_header_timeout(),
            body_timeout_ms: default_body_timeout(),
            idle_timeout_ms: default_idle_timeout(),
            max: default_max_connections(),
            max_per_address: default_max_per_address(),
        }
    }
}

fn default_body_limit() -> u64 {
    32 << 20
}
fn default_reads_per_second() -> f64 {
    50.0
}
fn default_read_burst() -> u32 {
    100
}
fn default_idempotency_keys() -> u64 {
    100_000
}
fn default_failed_keys() -> u32 {
    20
}
fn default_header_timeout() -> u64 {
    10_000
}
fn default_body_timeout() -> u64 {
    60_000
}
fn default_idle_timeout() -> u64 {
    60_000
}
fn default_max_connections() -> u32 {
    10_000
}
fn default_max_per_address() -> u32 {
    256
}

/// The checked `[limits]`, apart from the body limit.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ClientLimits {
    /// Each tenant's rate of calls about existing requests.
    pub reads: RateLimit,
    /// Idempotency keys remembered, entries.
    pub idempotency_keys: usize,
    /// Wrong API keys tolerated per address and minute.
    pub failed_keys_per_minute: u32,
}

impl Default for ClientLimits {
    fn default() -> Self {
        LimitsFile::default().client_limits()
    }
}

impl LimitsFile {
    pub(super) fn check(&self, problems: &mut Problems) {
        problems.range("limits.max_body_bytes", self.max_body_bytes, 1024, 1 << 30);
        let rate = self.reads_per_second;
        if !(rate > 0.0 && rate <= 1e6) {
            problems.add(
                "limits.reads_per_second",
                format!("{rate} is not above 0 and at most 1000000"),
                "use e.g. 50 for fifty calls per second",
            );
        }
        problems.range(
            "limits.read_burst",
            u64::from(self.read_burst),
            1,
            1_000_000,
        );
        if rate > 0.0 && rate <= 1e6 && RateLimiter::new(self.client_limits().reads).is_err() {
            problems.add(
                "limits.read_burst",
                "the burst takes too long to refill at reads_per_second",
                "raise reads_per_second or lower read_burst",
            );
        }
        problems.range(
            "limits.idempotency_keys",
            self.idempotency_keys,
            1,
            10_000_000,
        );
        problems.range(
            "limits.failed_keys_per_minute",
            u64::from(self.failed_keys_per_minute),
            1,
            100_000,
        );
    }

    pub(super) fn client_limits(&self) -> ClientLimits {
        ClientLimits {
            reads: RateLimit {
                per_second: self.reads_per_second,
                burst: self.read_burst,
            },
            idempotency_keys: usize::try_from(self.idempotency_keys).unwrap_or(usize::MAX),
            failed_keys_per_minute: self.failed_keys_per_minute,
        }
    }
}

/// The checked `[connections]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// Longest time to send a request's header, from its first byte.
    pub header_timeout: Duration,
    /// Longest time to send a request's body, from the end of its header.
    pub body_timeout: Duration,
    /// Longest time a connection may stay open without a request.
    pub idle_timeout: Duration,
    /// Most connections open at once.
    pub max: usize,
    /// Most connections open at once from one address.
    pub max_per_address: usize,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        ConnectionsFile::default().limits()
    }
}

impl ConnectionsFile {
    pub(super) fn check(&self, problems: &mut Problems) {
        problems.range(
            "connections.header_timeout_ms",
            self.header_timeout_ms,
            100,
            600_000,
        );
        problems.range(
            "connections.body_timeout_ms",
            self.body_timeout_ms,
            100,
            3_600_000,
        );
        problems.range(
            "connections.idle_timeout_ms",
            self.idle_timeout_ms,
            100,
            60_000,
        );
        problems.range("connections.max", u64::from(self.max), 1, 1_000_000);
        problems.range(
            "connections.max_per_address",
            u64::from(self.max_per_address),
            1,
            1_000_000,
        );
        if self.max_per_address > self.max {
            problems.add(
                "connections.max_per_address",
                format!(
                    "{} is above connections.max ({})",
                    self.max_per_address, self.max
                ),
                "lower max_per_address or raise max",
            );
        }
    }

    pub(super) fn limits(&self) -> ConnectionLimits {
        ConnectionLimits {
            header_timeout: Duration::from_millis(self.header_timeout_ms),
            body_timeout: Duration::from_millis(self.body_timeout_ms),
            idle_timeout: Duration::from_millis(self.idle_timeout_ms),
            max: self.max as usize,
            max_per_address: self.max_per_address as usize,
        }
    }
}
