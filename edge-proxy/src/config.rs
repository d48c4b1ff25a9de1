//! The edge's configuration: the TOML file as written ([`ConfigFile`]) and the checked
//! runtime settings ([`EdgeConfig`]) that [`run`](crate::run) takes.
//!
//! Precedence: environment (`MERIDIAN_EDGE_TOKEN` for the control plane's edge token,
//! `MERIDIAN_AGENT_TOKEN` for the token sent to region agents) over the file. Relative paths
//! are relative to the file's own directory. Every problem is reported at once, each naming
//! its field and how to fix it. See `examples/edge.toml` for a documented example.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use contract::ConfigError;
use contract::{ConfigProblems, Secret};
use policy::Location;
use serde::Deserialize;

pub use crate::cidr::Cidr;
pub use limits::{ClientLimits, ConnectionLimits, ConnectionsFile, LimitsFile};

mod limits;

/// Environment variable overriding `control_plane.edge_token`.
pub const ENV_CONTROL_PLANE_TOKEN: &str = "MERIDIAN_EDGE_TOKEN";
/// Environment variable overriding `agents.edge_token`.
pub const ENV_AGENT_TOKEN: &str = "MERIDIAN_AGENT_TOKEN";

/// The configuration file, as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    /// Where the edge listens.
    pub listen: ListenFile,
    /// How the edge reaches the control plane.
    pub control_plane: ControlPlaneFile,
    /// How the edge locates clients.
    pub geoip: GeoIpFile,
    /// How the edge calls region agents.
    pub agents: AgentsFile,
    /// Limits on clients' requests.
    #[serde(default)]
    pub limits: LimitsFile,
    /// Deadlines on what clients send and caps on open connections.
    #[serde(default)]
    pub connections: ConnectionsFile,
    /// How many retries (failovers) the edge may add to its traffic.
    #[serde(default)]
    pub retry: RetryFile,
    /// The per-region circuit breaker.
    #[serde(default)]
    pub breaker: BreakerFile,
}

/// `[listen]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenFile {
    /// Plain HTTP addresses, e.g. `["0.0.0.0:8080"]`. Default none.
    #[serde(default)]
    pub http: Vec<String>,
    /// HTTPS listeners. Default none; at least one HTTP or HTTPS listener is required.
    #[serde(default)]
    pub https: Vec<HttpsFile>,
    /// Address of the admin listener serving `/metrics`; absent: no admin listener.
    #[serde(default)]
    pub admin: Option<String>,
    /// Unix socket over which a running edge hands its listening sockets to its successor
    /// (`edge-proxy --upgrade`, then `SIGQUIT` to the running edge). Absent: no upgrades.
    #[serde(default)]
    pub upgrade_socket: Option<PathBuf>,
    /// The URL clients reach the edge at, e.g. `https://api.example.com` (http or https, no
    /// query or fragment), when it is not what they send in `Host` (a load balancer or CDN
    /// in front). Agents write status, result and file links under it. Absent: the
    /// listener's scheme and the request's `Host`.
    #[serde(default)]
    pub public_url: Option<String>,
}

/// One HTTPS listener.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpsFile {
    /// Address, e.g. `0.0.0.0:8443`.
    pub address: String,
    /// PEM certificate chain file.
    pub cert: PathBuf,
    /// PEM private key file.
    pub key: PathBuf,
}

/// `[control_plane]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ControlPlaneFile {
    /// Base URL, e.g. `http://127.0.0.1:7070`.
    pub url: String,
    /// The control plane's edge token (at least 16 characters); `MERIDIAN_EDGE_TOKEN`
    /// overrides it.
    #[serde(default)]
    pub edge_token: Option<Secret>,
    /// Where the last good snapshot is kept, loaded at start when the control plane cannot
    /// be reached. Default `edge-snapshot.json`.
    #[serde(default = "default_snapshot_cache")]
    pub snapshot_cache: PathBuf,
    /// Longest wait of one snapshot long poll, in seconds (1–600). Default 30.
    #[serde(default = "default_poll_wait")]
    pub poll_wait_secs: u64,
    /// Time limit of one call to the control plane (on top of a long poll's wait), in ms
    /// (100–60 000). Default 5000.
    #[serde(default = "default_cp_timeout")]
    pub timeout_ms: u64,
}

/// `[geoip]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GeoIpFile {
    /// A GeoIP2/GeoLite2 City or Country database (`.mmdb`); absent: every client is taken
    /// to be at `location`.
    #[serde(default)]
    pub database: Option<PathBuf>,
    /// The edge's own location, used when the database has no answer: `{ lat, lon }`.
    pub location: Location,
    /// Proxies (CIDRs, e.g. `10.0.0.0/8`, or single addresses) whose `X-Forwarded-For` is
    /// believed. Default none: the peer address is the client.
    #[serde(default)]
    pub trusted_proxies: Vec<String>,
}

/// `[agents]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentsFile {
    /// Sent to agents as `x-meridian-edge-token` (at least 16 characters);
    /// `MERIDIAN_AGENT_TOKEN` overrides it.
    #[serde(default)]
    pub edge_token: Option<Secret>,
    /// Time to connect to an agent before failing over, in ms (10–60 000). Default 1000.
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout_ms: u64,
    /// Longest wait for an agent's answer (or the next part of it), in ms (100–3 600 000);
    /// past it the client gets 504. Default 120 000 (a synchronous run may take a minute).
    #[serde(default = "default_read_timeout")]
    pub read_timeout_ms: u64,
    /// How long an idle connection to an agent is kept for reuse, in ms (1000–3 600 000).
    /// Keep it below the agents' `keep_alive_idle_ms` (30 000 by default), so the edge
    /// drops a connection before the agent closes it under a request. Default 20 000.
    #[serde(default = "default_agent_idle_timeout")]
    pub idle_timeout_ms: u64,
}

/// `[retry]`: a token bucket that earns `ratio` of a retry per request.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetryFile {
    /// Retries allowed per request sent (0–1). Default 0.2.
    #[serde(default = "default_retry_ratio")]
    pub ratio: f64,
    /// Retries the bucket holds at most, and at start (1–10 000). Default 10.
    #[serde(default = "default_retry_floor")]
    pub floor: u32,
}

impl Default for RetryFile {
    fn default() -> Self {
        Self {
            ratio: default_retry_ratio(),
            floor: default_retry_floor(),
        }
    }
}

/// `[breaker]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BreakerFile {
    /// Consecutive failures (connect failures, timeouts) that open a region's circuit
    /// (1–1000). Default 5.
    #[serde(default = "default_breaker_failures")]
    pub failures: u32,
    /// Time an open circuit waits before letting one trial request through, in ms
    /// (10–600 000). Default 5000.
    #[serde(default = "default_breaker_cool_down")]
    pub cool_down_ms: u64,
}

impl Default for BreakerFile {
    fn default() -> Self {
        Self {
            failures: default_breaker_failures(),
            cool_down_ms: default_breaker_cool_down(),
        }
    }
}

fn default_snapshot_cache() -> PathBuf {
    PathBuf::from("edge-snapshot.json")
}
fn default_poll_wait() -> u64 {
    30
}
fn default_cp_timeout() -> u64 {
    5000
}
fn default_connect_timeout() -> u64 {
    1000
}
fn default_read_timeout() -> u64 {
    120_000
}
fn default_agent_idle_timeout() -> u64 {
    20_000
}
fn default_retry_ratio() -> f64 {
    0.2
}
fn default_retry_floor() -> u32 {
    10
}
fn default_breaker_failures() -> u32 {
    5
}
fn default_breaker_cool_down() -> u64 {
    5000
}

/// An HTTPS listener, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpsListen {
    /// Address.
    pub address: SocketAddr,
    /// PEM certificate chain file.
    pub cert: PathBuf,
    /// PEM private key file.
    pub key: PathBuf,
}

/// The checked configuration [`run`](crate::run) takes.
#[derive(Debug, Clone)]
pub struct EdgeConfig {
    /// Plain HTTP listen addresses.
    pub http: Vec<SocketAddr>,
    /// HTTPS listeners.
    pub https: Vec<HttpsListen>,
    /// Admin (metrics) listener.
    pub admin: Option<SocketAddr>,
    /// Unix socket for handing the listening sockets to a new edge.
    pub upgrade_socket: Option<PathBuf>,
    /// The URL clients reach the edge at, without a trailing slash; `None`: from each
    /// request (see [`public_url`](crate::public_url)).
    pub public_url: Option<String>,
    /// Control plane base URL.
    pub control_plane_url: String,
    /// Control plane edge token (printed as `[redacted]`).
    pub control_plane_token: Secret,
    /// Snapshot cache file.
    pub snapshot_cache: PathBuf,
    /// Longest wait of one long poll.
    pub poll_wait: Duration,
    /// Time limit of one control plane call.
    pub control_plane_timeout: Duration,
    /// MaxMind database file.
    pub geoip_database: Option<PathBuf>,
    /// The edge's own location.
    pub location: Location,
    /// Proxies whose `X-Forwarded-For` is believed.
    pub trusted_proxies: Vec<Cidr>,
    /// Token sent to agents (printed as `[redacted]`).
    pub agent_token: Secret,
    /// Agent connect timeout.
    pub connect_timeout: Duration,
    /// Agent read timeout.
    pub read_timeout: Duration,
    /// How long an idle connection to an agent is kept for reuse.
    pub agent_idle_timeout: Duration,
    /// Largest request body, bytes.
    pub max_body_bytes: u64,
    /// Read rate, idempotency keys remembered, wrong keys tolerated.
    pub limits: ClientLimits,
    /// Client deadlines and connection caps.
    pub connections: ConnectionLimits,
    /// Retries earned per request.
    pub retry_ratio: f64,
    /// Retry bucket size.
    pub retry_floor: u32,
    /// Consecutive failures that open a circuit.
    pub breaker_failures: u32,
    /// Open-circuit cool-down.
    pub breaker_cool_down: Duration,
}

/// Reads, parses and checks `path`, applying the environment overrides.
pub fn load(path: &Path) -> Result<EdgeConfig, ConfigError> {
    let file: ConfigFile = ConfigError::parse(&ConfigError::read(path)?, Some(path))?;
    let base = path.parent().unwrap_or(Path::new("."));
    file.check(base, |name| std::env::var(name).ok())
}

impl ConfigFile {
    /// Checks the file: relative paths are taken from `base`, `env` reads overrides.
    pub fn check(
        self,
        base: &Path,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<EdgeConfig, ConfigError> {
        let mut problems = Problems::default();
        let http = self
            .listen
            .http
            .iter()
            .enumerate()
            .filter_map(|(i, a)| problems.address(&format!("listen.http[{i}]"), a))
            .collect::<Vec<_>>();
        let mut https = Vec::new();
        for (i, h) in self.listen.https.iter().enumerate() {
            let field = format!("listen.https[{i}]");
            let address = problems.address(&format!("{field}.address"), &h.address);
            for (name, file) in [("cert", &h.cert), ("key", &h.key)] {
                if !base.join(file).is_file() {
                    problems.add(
                        format!("{field}.{name}"),
                        format!("{} is not a readable file", base.join(file).display()),
                        "point it at a PEM file",
                    );
                }
            }
            if let Some(address) = address {
                https.push(HttpsListen {
                    address,
                    cert: base.join(&h.cert),
                    key: base.join(&h.key),
                });
            }
        }
        if self.listen.http.is_empty() && self.listen.https.is_empty() {
            problems.add(
                "listen",
                "no listener",
                "add an address to listen.http or a listener to listen.https",
            );
        }
        let admin = self
            .listen
            .admin
            .as_ref()
            .and_then(|a| problems.address("listen.admin", a));
        let upgrade_socket = self.listen.upgrade_socket.as_ref().map(|p| base.join(p));
        if let Some(socket) = &upgrade_socket
            && (socket.to_str().is_none() || socket.as_os_str().len() > 100)
        {
            problems.add(
                "listen.upgrade_socket",
                format!(
                    "{} is not a usable Unix socket path (UTF-8, at most 100 bytes)",
                    socket.display()
                ),
                "choose a shorter path, e.g. /run/meridian/edge-upgrade.sock",
            );
        }
        let public_url = self.listen.public_url.as_deref().and_then(|url| {
            crate::public_url::checked(url)
                .map_err(|problem| {
                    problems.add(
                        "listen.public_url",
                        problem,
                        "write it like https://api.example.com, or remove it",
                    );
                })
                .ok()
        });
        let cp = &self.control_plane;
        if !(cp.url.starts_with("http://") || cp.url.starts_with("https://")) {
            problems.add(
                "control_plane.url",
                format!("{:?} is not an http(s) URL", cp.url),
                "write it like http://10.0.0.2:7070",
            );
        }
        let control_plane_token = problems.token(
            "control_plane.edge_token",
            ENV_CONTROL_PLANE_TOKEN,
            env(ENV_CONTROL_PLANE_TOKEN)
                .or_else(|| cp.edge_token.as_ref().map(|t| t.expose().to_owned())),
        );
        problems.range("control_plane.poll_wait_secs", cp.poll_wait_secs, 1, 600);
        problems.range("control_plane.timeout_ms", cp.timeout_ms, 100, 60_000);
        let g = &self.geoip;
        if let Some(db) = &g.database
            && !base.join(db).is_file()
        {
            problems.add(
                "geoip.database",
                format!("{} is not a readable file", base.join(db).display()),
                "point it at a GeoIP2/GeoLite2 City .mmdb file, or remove the field",
            );
        }
        if !g.location.is_valid() {
            problems.add(
                "geoip.location",
                "latitude must be in −90…90 and longitude in −180…180",
                "give the edge's coordinates in decimal degrees",
            );
        }
        let mut trusted_proxies = Vec::new();
        for (i, text) in g.trusted_proxies.iter().enumerate() {
            match Cidr::parse(text) {
                Some(cidr) => trusted_proxies.push(cidr),
                None => problems.add(
                    format!("geoip.trusted_proxies[{i}]"),
                    format!("{text:?} is not a CIDR or an IP address"),
                    "write it like 10.0.0.0/8 or 192.0.2.7",
                ),
            }
        }
        let a = &self.agents;
        let agent_token = problems.token(
            "agents.edge_token",
            ENV_AGENT_TOKEN,
            env(ENV_AGENT_TOKEN).or_else(|| a.edge_token.as_ref().map(|t| t.expose().to_owned())),
        );
        problems.range(
            "agents.connect_timeout_ms",
            a.connect_timeout_ms,
            10,
            60_000,
        );
        problems.range("agents.read_timeout_ms", a.read_timeout_ms, 100, 3_600_000);
        problems.range("agents.idle_timeout_ms", a.idle_timeout_ms, 1000, 3_600_000);
        self.limits.check(&mut problems);
        self.connections.check(&mut problems);
        if !(0.0..=1.0).contains(&self.retry.ratio) {
            problems.add(
                "retry.ratio",
                format!("{} is not in 0…1", self.retry.ratio),
                "use e.g. 0.2 for at most one retry per five requests",
            );
        }
        problems.range("retry.floor", u64::from(self.retry.floor), 1, 10_000);
        problems.range(
            "breaker.failures",
            u64::from(self.breaker.failures),
            1,
            1000,
        );
        problems.range(
            "breaker.cool_down_ms",
            self.breaker.cool_down_ms,
            10,
            600_000,
        );
        if !problems.0.is_empty() {
            return Err(ConfigError::Invalid(problems.0));
        }
        Ok(EdgeConfig {
            http,
            https,
            admin,
            upgrade_socket,
            public_url,
            control_plane_url: cp.url.trim_end_matches('/').to_owned(),
            control_plane_token,
            snapshot_cache: base.join(&cp.snapshot_cache),
            poll_wait: Duration::from_secs(cp.poll_wait_secs),
            control_plane_timeout: Duration::from_millis(cp.timeout_ms),
            geoip_database: g.database.as_ref().map(|d| base.join(d)),
            location: g.location,
            trusted_proxies,
            agent_token,
            connect_timeout: Duration::from_millis(a.connect_timeout_ms),
            read_timeout: Duration::from_millis(a.read_timeout_ms),
            agent_idle_timeout: Duration::from_millis(a.idle_timeout_ms),
            max_body_bytes: self.limits.max_body_bytes,
            limits: self.limits.client_limits(),
            connections: self.connections.limits(),
            retry_ratio: self.retry.ratio,
            retry_floor: self.retry.floor,
            breaker_failures: self.breaker.failures,
            breaker_cool_down: Duration::from_millis(self.breaker.cool_down_ms),
        })
    }
}

/// The configuration's problems, with the checks the edge's fields share.
#[derive(Default)]
pub(crate) struct Problems(ConfigProblems);

impl Problems {
    fn add(&mut self, field: impl Into<String>, problem: impl Into<String>, fix: &str) {
        self.0.add(field, problem, fix);
    }

    fn address(&mut self, field: &str, text: &str) -> Option<SocketAddr> {
        let parsed = text.parse().ok();
        if parsed.is_none() {
            self.add(
                field,
                format!("{text:?} is not an IP address and port"),
                "write it like 0.0.0.0:8080 or [::]:8443",
            );
        }
        parsed
    }

    fn token(&mut self, field: &str, env: &str, value: Option<String>) -> Secret {
        let value = value.unwrap_or_default();
        if value.len() < 16 {
            self.add(
                field,
                "missing or shorter than 16 characters",
                &format!("set a secret of at least 16 characters here or in {env}"),
            );
        }
        Secret::new(value)
    }

    fn range(&mut self, field: &str, value: u64, min: u64, max: u64) {
        if !(min..=max).contains(&value) {
            self.add(
                field,
                format!("{value} is outside {min}…{max}"),
                &format!("use a value from {min} to {max}"),
            );
        }
    }
}

#[cfg(test)]
mod tests;
