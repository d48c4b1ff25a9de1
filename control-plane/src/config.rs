//! `control-plane serve`'s configuration: the TOML file as written ([`ConfigFile`]) and the
//! checked runtime settings ([`ServerConfig`]) whose fields cannot hold invalid values.
//!
//! Precedence: command line over environment (`MERIDIAN_LISTEN`, `MERIDIAN_ADMIN_TOKEN`,
//! `MERIDIAN_EDGE_TOKEN`, `MERIDIAN_AGENT_TOKEN`) over the file. Relative paths in the file
//! are relative to the file's own directory. Every problem is reported at once, each naming
//! its field and how to fix it.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use contract::ConfigError;
use contract::{ConfigProblems, Secret};
use policy::CatalogSpec;
use serde::Deserialize;

use crate::api::{ApiSettings, ThrottleSettings, Token};
use crate::store::StoreConfig;

/// The configuration file, as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    /// Address and port the API listens on. Default `127.0.0.1:7070`.
    #[serde(default = "default_listen")]
    pub listen: String,
    /// Bearer token of the admin API; at least 16 characters.
    pub admin_token: Secret,
    /// Bearer token edges fetch snapshots with; at least 16 characters.
    pub edge_token: Secret,
    /// Bearer token region agents register with; at least 16 characters.
    pub agent_token: Secret,
    /// Where state is kept. Default: the embedded store under `meridian-data`.
    #[serde(default)]
    pub store: StoreFile,
    /// A catalog file (TOML, or JSON when it ends in `.json`) written into an empty store on
    /// the first start and never again.
    #[serde(default)]
    pub seed_catalog: Option<PathBuf>,
    /// Largest request body accepted, in bytes (1 KiB – 64 MiB). Default 1 MiB.
    #[serde(default = "default_max_body_bytes")]
    pub max_body_bytes: u64,
    /// Seconds a region agent's status outlives its last heartbeat (1–300). Default 10.
    #[serde(default = "default_lease_ttl")]
    pub agent_lease_ttl_secs: u64,
    /// Longest long poll of a snapshot, in seconds (1–600). Default 60.
    #[serde(default = "default_poll_wait")]
    pub max_poll_wait_secs: u64,
    /// Milliseconds between spend updates sent to waiting edges (100–600000): usage changes
    /// a tenant's month-to-date spend with every batch, and waking every edge for each would
    /// flood them, so spend changes are passed on at most this often (catalog changes at
    /// once). Default 5000.
    #[serde(default = "default_spend_refresh")]
    pub spend_refresh_ms: u64,
    /// Seconds of the store's history of old revisions kept (10–86400); older history is
    /// compacted, so the store's size follows its live keys, not the writes that passed
    /// through it. Default 300.
    #[serde(default = "default_history_retention")]
    pub history_retention_secs: u64,
    /// When an address that presents wrong tokens is answered 429 without its token being
    /// checked. Default: 10 wrong tokens a minute, then 30 s doubling up to 15 min.
    #[serde(default)]
    pub auth_throttle: AuthThrottleFile,
}

/// The `[auth_throttle]` section: wrong tokens (admin, edge or agent) from one client
/// address, counted per API, after which the address is answered `429` with `Retry-After`.
/// A request without a token is not counted.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthThrottleFile {
    /// Wrong tokens from one address within `window_secs` before it is throttled (1–1000).
    /// Default 10.
    #[serde(default = "default_throttle_failures")]
    pub failures: u32,
    /// Seconds wrong tokens are counted over (1–3600). Default 60.
    #[serde(default = "default_throttle_window")]
    pub window_secs: u64,
    /// Seconds of the first wait once throttled (1–3600); each further wrong token before
    /// the address is forgotten doubles it. Default 30.
    #[serde(default = "default_throttle_backoff")]
    pub backoff_secs: u64,
    /// Longest wait, in seconds (`backoff_secs`–86400); an address is forgotten after a
    /// quiet spell this long. Default 900.
    #[serde(default = "default_throttle_max_backoff")]
    pub max_backoff_secs: u64,
    /// Most addresses remembered at once (100–1000000); when full, the one whose last
    /// wrong token is oldest is forgotten. Default 10000.
    #[serde(default = "default_throttle_addresses")]
    pub max_addresses: u64,
}

impl Default for AuthThrottleFile {
    fn default() -> Self {
        Self {
            failures: default_throttle_failures(),
            window_secs: default_throttle_window(),
            backoff_secs: default_throttle_backoff(),
            max_backoff_secs: default_throttle_max_backoff(),
            max_addresses: default_throttle_addresses(),
        }
    }
}

fn default_throttle_failures() -> u32 {
    ThrottleSettings::default().failures
}
fn default_throttle_window() -> u64 {
    ThrottleSettings::default().window.as_secs()
}
fn default_throttle_backoff() -> u64 {
    ThrottleSettings::default().backoff.as_secs()
}
fn default_throttle_max_backoff() -> u64 {
    ThrottleSettings::default().max_backoff.as_secs()
}
fn default_throttle_addresses() -> u64 {
    ThrottleSettings::default().max_addresses as u64
}

impl AuthThrottleFile {
    /// The checked settings; problems are added to `problems`.
    fn check(&self, problems: &mut ConfigProblems) -> ThrottleSettings {
        let bounded = |value: u64, low: u64, high: u64| (low..=high).contains(&value);
        if !bounded(u64::from(self.failures), 1, 1000) {
            problems.add(
                "auth_throttle.failures",
                format!("{} is outside 1–1000", self.failures),
                "allow a few mistyped tokens, e.g. 10",
            );
        }
        if !bounded(self.window_secs, 1, 3600) {
            problems.add(
                "auth_throttle.window_secs",
                format!("{} is outside 1–3600", self.window_secs),
                "count wrong tokens over e.g. 60 s",
            );
        }
        if !bounded(self.backoff_secs, 1, 3600) {
            problems.add(
                "auth_throttle.backoff_secs",
                format!("{} is outside 1–3600", self.backoff_secs),
                "set the first wait, e.g. 30",
            );
        }
        if !bounded(self.max_backoff_secs, self.backoff_secs, 86_400) {
            problems.add(
                "auth_throttle.max_backoff_secs",
                format!(
                    "{} is outside backoff_secs ({})–86400",
                    self.max_backoff_secs, self.backoff_secs
                ),
                "set the longest wait, at least backoff_secs, e.g. 900",
            );
        }
        if !bounded(self.max_addresses, 100, 1_000_000) {
            problems.add(
                "auth_throttle.max_addresses",
                format!("{} is outside 100–1000000", self.max_addresses),
                "remember e.g. 10000 addresses",
            );
        }
        ThrottleSettings {
            failures: self.failures,
            window: Duration::from_secs(self.window_secs),
            backoff: Duration::from_secs(self.backoff_secs),
            max_backoff: Duration::from_secs(self.max_backoff_secs),
            max_addresses: usize::try_from(self.max_addresses).unwrap_or(usize::MAX),
        }
    }
}

fn default_listen() -> String {
    "127.0.0.1:7070".to_owned()
}
fn default_max_body_bytes() -> u64 {
    1 << 20
}
fn default_lease_ttl() -> u64 {
    10
}
fn default_poll_wait() -> u64 {
    60
}
fn default_spend_refresh() -> u64 {
    5000
}
fn default_history_retention() -> u64 {
    DEFAULT_HISTORY_RETENTION.as_secs()
}

/// The store section: `backend = "embedded"` (default) or `backend = "etcd"`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(tag = "backend", rename_all = "lowercase", deny_unknown_fields)]
pub enum StoreFile {
    /// The embedded raft store on local disk.
    Embedded {
        /// Directory of the raft log and snapshots. Default `meridian-data`.
        #[serde(default = "default_data_dir")]
        data_dir: PathBuf,
    },
    /// An etcd v3 cluster.
    Etcd {
        /// Client URLs, e.g. `["http://127.0.0.1:2379"]`.
        endpoints: Vec<String>,
    },
}

fn default_data_dir() -> PathBuf {
    PathBuf::from("meridian-data")
}

impl Default for StoreFile {
    fn default() -> Self {
        Self::Embedded {
            data_dir: default_data_dir(),
        }
    }
}

/// The checked configuration `run` takes.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Where to listen.
    pub listen: SocketAddr,
    /// The API's tokens and limits.
    pub api: ApiSettings,
    /// The store backend.
    pub store: StoreConfig,
    /// A valid catalog to write on the first start.
    pub seed_catalog: Option<CatalogSpec>,
    /// How much of the store's history of old revisions is kept.
    pub history_retention: Duration,
}

/// Default of [`ServerConfig::history_retention`].
pub const DEFAULT_HISTORY_RETENTION: Duration = Duration::from_secs(300);

/// Environment variables that override the file.
pub const ENV_OVERRIDES: [&str; 4] = [
    "MERIDIAN_LISTEN",
    "MERIDIAN_ADMIN_TOKEN",
    "MERIDIAN_EDGE_TOKEN",
    "MERIDIAN_AGENT_TOKEN",
];

impl ConfigFile {
    /// Reads and parses the file at `path`.
    pub fn read(path: &Path) -> Result<Self, ConfigError> {
        ConfigError::parse(&ConfigError::read(path)?, Some(path))
    }

    /// Applies environment overrides, looked up with `var`.
    pub fn apply_env(&mut self, var: impl Fn(&str) -> Option<String>) {
        let [listen, admin, edge, agent] = ENV_OVERRIDES;
        if let Some(value) = var(listen) {
            self.listen = value;
        }
        for (name, field) in [
            (admin, &mut self.admin_token),
            (edge, &mut self.edge_token),
            (agent, &mut self.agent_token),
        ] {
            if let Some(value) = var(name) {
                *field = Secret::new(value);
            }
        }
    }

    /// Checks every rule; relative paths resolve against `base` (the file's directory).
    pub fn check(&self, base: &Path) -> Result<ServerConfig, ConfigError> {
        let mut problems = ConfigProblems::new();
        let throttle = self.auth_throttle.check(&mut problems);
        let mut problem = |field: &str, problem: String, fix: &str| {
            problems.add(field, problem, fix);
        };
        let listen = self.listen.parse::<SocketAddr>().ok();
        if listen.is_none() {
            problem(
                "listen",
                format!("{:?} is not an address and port", self.listen),
                "write an IP address and port, e.g. \"127.0.0.1:7070\" or \"[::]:7070\"",
            );
        }
        let tokens = [
            ("admin_token", self.admin_token.expose()),
            ("edge_token", self.edge_token.expose()),
            ("agent_token", self.agent_token.expose()),
        ];
        for (field, token) in tokens {
            if token.chars().count() < 16 || token.chars().any(char::is_whitespace) {
                problem(
                    field,
                    "is shorter than 16 characters or contains whitespace".into(),
                    "use a long random token, e.g. the output of `openssl rand -hex 32`",
                );
            }
        }
        for (i, (a, ta)) in tokens.iter().enumerate() {
            for (b, tb) in &tokens[i + 1..] {
                if ta == tb {
                    problem(
                        b,
                        format!("is the same as {a}"),
                        "give admins, edges and agents different tokens",
                    );
                }
            }
        }
        let bounded = |value: u64, low: u64, high: u64| (low..=high).contains(&value);
        if !bounded(self.max_body_bytes, 1 << 10, 64 << 20) {
            problem(
                "max_body_bytes",
                format!("{} is outside 1024–67108864", self.max_body_bytes),
                "set a limit between 1 KiB and 64 MiB, e.g. 1048576",
            );
        }
        if !bounded(self.agent_lease_ttl_secs, 1, 300) {
            problem(
                "agent_lease_ttl_secs",
                format!("{} is outside 1–300", self.agent_lease_ttl_secs),
                "set a few times the agents' heartbeat interval, e.g. 10",
            );
        }
        if !bounded(self.max_poll_wait_secs, 1, 600) {
            problem(
                "max_poll_wait_secs",
                format!("{} is outside 1–600", self.max_poll_wait_secs),
                "set e.g. 60",
            );
        }
        if !bounded(self.spend_refresh_ms, 100, 600_000) {
            problem(
                "spend_refresh_ms",
                format!("{} is outside 100–600000", self.spend_refresh_ms),
                "set how stale an edge's view of spend may get, e.g. 5000",
            );
        }
        if !bounded(self.history_retention_secs, 10, 86_400) {
            problem(
                "history_retention_secs",
                format!("{} is outside 10–86400", self.history_retention_secs),
                "keep a few minutes of history, e.g. 300",
            );
        }
        let store = match &self.store {
            StoreFile::Embedded { data_dir } => {
                if data_dir.as_os_str().is_empty() {
                    problem(
                        "store.data_dir",
                        "is empty".into(),
                        "name a directory, e.g. \"/var/lib/meridian\"",
                    );
                }
                StoreConfig::embedded(base.join(data_dir))
            }
            StoreFile::Etcd { endpoints } => {
                if endpoints.is_empty() {
                    problem(
                        "store.endpoints",
                        "lists no etcd endpoint".into(),
                        "list the cluster's client URLs, e.g. [\"http://127.0.0.1:2379\"]",
                    );
                }
                for e in endpoints {
                    if !(e.starts_with("http://") || e.starts_with("https://")) {
                        problem(
                            "store.endpoints",
                            format!("{e:?} is not an http:// or https:// URL"),
                            "write client URLs such as \"http://10.0.0.5:2379\"",
                        );
                    }
                }
                StoreConfig::Etcd {
                    endpoints: endpoints.clone(),
                }
            }
        };
        let seed_catalog = self.seed_catalog.as_ref().and_then(|path| {
            let path = base.join(path);
            match crate::offline::read_catalog(&path).and_then(|spec| {
                spec.validate()?;
                Ok(spec)
            }) {
                Ok(spec) => Some(spec),
                Err(e) => {
                    problem(
                        "seed_catalog",
                        format!("{e:#}"),
                        "fix the catalog (check it with `control-plane validate-catalog`) or remove seed_catalog",
                    );
                    None
                }
            }
        });
        match listen {
            Some(listen) if problems.is_empty() => Ok(ServerConfig {
                listen,
                api: ApiSettings {
                    admin_token: Token::new(self.admin_token.expose()),
                    edge_token: Token::new(self.edge_token.expose()),
                    agent_token: Token::new(self.agent_token.expose()),
                    agent_secret: self.agent_token.clone(),
                    max_body_bytes: usize::try_from(self.max_body_bytes).unwrap_or(usize::MAX),
                    agent_lease_ttl: Duration::from_secs(self.agent_lease_ttl_secs),
                    max_poll_wait: Duration::from_secs(self.max_poll_wait_secs),
                    spend_refresh: Duration::from_millis(self.spend_refresh_ms),
                    throttle,
                },
                store,
                seed_catalog,
                history_retention: Duration::from_secs(self.history_retention_secs),
            }),
            _ => Err(ConfigError::Invalid(problems)),
        }
    }
}

/// Reads, overrides from the environment and checks the configuration at `path`.
pub fn load(path: &Path) -> Result<ServerConfig, ConfigError> {
    let mut file = ConfigFile::read(path)?;
    file.apply_env(|name| std::env::var(name).ok());
    let base = path.parent().unwrap_or_else(|| Path::new("."));
    file.check(base)
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
        admin_token = "admin-0123456789abcdef"
        edge_token = "edge-0123456789abcdef"
        agent_token = "agent-0123456789abcdef"
    "#;

    #[test]
    fn defaults_are_the_embedded_store_on_loopback() {
        let file: ConfigFile = contract::problems::from_toml_strict(GOOD).unwrap();
        let config = file.check(Path::new("/etc/meridian")).unwrap();
        assert_eq!(config.listen, "127.0.0.1:7070".parse().unwrap());
        assert_eq!(
            config.store,
            StoreConfig::embedded("/etc/meridian/meridian-data")
        );
        assert_eq!(config.api.agent_lease_ttl, Duration::from_secs(10));
        assert!(config.api.admin_token.matches("admin-0123456789abcdef"));
    }

    #[test]
    fn etcd_is_chosen_by_backend() {
        let text = format!(
            "{GOOD}\n[store]\nbackend = \"etcd\"\nendpoints = [\"http://127.0.0.1:2379\"]\n"
        );
        let file: ConfigFile = contract::problems::from_toml_strict(&text).unwrap();
        let config = file.check(Path::new(".")).unwrap();
        assert!(
            matches!(config.store, StoreConfig::Etcd { ref endpoints } if endpoints.len() == 1)
        );
        let typo = text.replace("endpoints =", "endpoint =");
        assert!(contract::problems::from_toml_strict::<ConfigFile>(&typo).is_err());
    }

    #[test]
    fn every_problem_names_its_field() {
        let text = r#"
            listen = "localhost"
            admin_token = "short"
            edge_token = "same-token-0123456789"
            agent_token = "same-token-0123456789"
            agent_lease_ttl_secs = 0
            spend_refresh_ms = 10
            [store]
            backend = "etcd"
            endpoints = []
        "#;
        let file: ConfigFile = contract::problems::from_toml_strict(text).unwrap();
        let ConfigError::Invalid(problems) = file.check(Path::new(".")).unwrap_err() else {
            panic!("expected problems");
        };
        let fields: Vec<&str> = problems.iter().map(|p| p.place.as_str()).collect();
        assert_eq!(
            fields,
            [
                "listen",
                "admin_token",
                "agent_token",
                "agent_lease_ttl_secs",
                "spend_refresh_ms",
                "store.endpoints"
            ]
        );
    }

    #[test]
    fn the_auth_throttle_has_defaults_and_bounds() {
        let file: ConfigFile = contract::problems::from_toml_strict(GOOD).unwrap();
        let config = file.check(Path::new(".")).unwrap();
        assert_eq!(config.api.throttle, ThrottleSettings::default());
        let text = format!(
            "{GOOD}\n[auth_throttle]\nfailures = 0\nbackoff_secs = 60\nmax_backoff_secs = 30\n"
        );
        let file: ConfigFile = contract::problems::from_toml_strict(&text).unwrap();
        let ConfigError::Invalid(problems) = file.check(Path::new(".")).unwrap_err() else {
            panic!("expected problems");
        };
        let fields: Vec<&str> = problems.iter().map(|p| p.place.as_str()).collect();
        assert_eq!(
            fields,
            ["auth_throttle.failures", "auth_throttle.max_backoff_secs"]
        );
        let typo = format!("{GOOD}\n[auth_throttle]\nfailure = 3\n");
        assert!(contract::problems::from_toml_strict::<ConfigFile>(&typo).is_err());
    }

    #[test]
    fn the_environment_overrides_the_file() {
        let mut file: ConfigFile = contract::problems::from_toml_strict(GOOD).unwrap();
        file.apply_env(|name| (name == "MERIDIAN_LISTEN").then(|| "0.0.0.0:9000".to_owned()));
        assert_eq!(file.listen, "0.0.0.0:9000");
        assert_eq!(file.admin_token.expose(), "admin-0123456789abcdef");
    }

    #[test]
    fn debug_never_shows_a_token() {
        let mut file: ConfigFile = contract::problems::from_toml_strict(GOOD).unwrap();
        file.apply_env(|name| {
            (name == "MERIDIAN_EDGE_TOKEN").then(|| "edge-from-env-0123456789".to_owned())
        });
        let config = file.check(Path::new(".")).unwrap();
        for shown in [
            format!("{file:?}"),
            format!("{config:?}"),
            format!("{file:#?}"),
        ] {
            for token in [
                "admin-0123456789abcdef",
                "edge-from-env-0123456789",
                "agent-0123456789abcdef",
                "0123456789abcdef",
            ] {
                assert!(!shown.contains(token), "{token} in {shown}");
            }
            assert!(shown.contains("agent_lease_ttl"), "{shown}");
        }
    }
}
