//! A real edge served in-process on free loopback ports, and what a client sees of it.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use edge_proxy::{EdgeConfig, Listeners};
use policy::Location;
use reqwest::StatusCode;
use serde_json::Value;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::patience::{eventually, patience, within};
use crate::tokens::{AGENT_EDGE, EDGE};

/// The MaxMind test database that `policy`'s tests ship (81.2.69.142 is London,
/// 216.160.83.56 near Seattle, 89.160.20.112 Linköping, 175.16.199.0 Changchun).
pub fn geoip_db() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../policy/tests/data/geoip/GeoIP2-City-Test.mmdb")
}

/// An edge configuration for the control plane at `control_plane_url`: plain HTTP and the
/// admin listener on port 0, located at `location`, its snapshot cache in `dir`, the test
/// kit's tokens, the geo-IP test database, short timeouts, and read rates, wrong-key
/// throttles and connection caps that no test load from one loopback address reaches (tests
/// of those limits set their own).
pub fn edge_config(control_plane_url: &str, dir: &Path, location: Location) -> EdgeConfig {
    EdgeConfig {
        http: vec![SocketAddr::from(([127, 0, 0, 1], 0))],
        https: Vec::new(),
        admin: Some(SocketAddr::from(([127, 0, 0, 1], 0))),
        upgrade_socket: None,
        public_url: None,
        control_plane_url: control_plane_url.to_owned(),
        control_plane_token: EDGE.to_owned().into(),
        snapshot_cache: dir.join("edge-snapshot.json"),
        poll_wait: Duration::from_secs(5),
        control_plane_timeout: Duration::from_secs(5),
        geoip_database: Some(geoip_db()),
        location,
        trusted_proxies: Vec::new(),
        agent_token: AGENT_EDGE.to_owned().into(),
        connect_timeout: Duration::from_secs(2),
        read_timeout: Duration::from_secs(60),
        agent_idle_timeout: Duration::from_secs(20),
        max_body_bytes: 64 * 1024,
        limits: edge_proxy::config::ClientLimits {
            reads: policy::quota::RateLimit {
                per_second: 100_000.0,
                burst: 100_000,
            },
            failed_keys_per_minute: 100_000,
            ..edge_proxy::config::ClientLimits::default()
        },
        connections: edge_proxy::config::ConnectionLimits {
            max_per_address: 10_000,
            ..edge_proxy::config::ConnectionLimits::default()
        },
        retry_ratio: 0.2,
        retry_floor: 10,
        breaker_failures: 5,
        breaker_cool_down: Duration::from_secs(600),
    }
}

/// An edge running in-process.
pub struct TestEdge {
    /// Its public API, `http://127.0.0.1:PORT`.
    pub base: String,
    /// Its admin listener (metrics, health).
    pub admin: String,
    /// Its HTTPS listener, when the configuration asked for one.
    pub https: Option<SocketAddr>,
    /// A client that never uses a proxy from the environment.
    pub http: reqwest::Client,
    shutdown: CancellationToken,
    task: Option<JoinHandle<anyhow::Result<()>>>,
}

impl TestEdge {
    /// Starts an edge with `config` (its HTTPS addresses are replaced by port 0) and
    /// returns once it routes on a snapshot of revision `ready_at` or later (see
    /// [`TestEdge::wait_for_revision`]).
    pub async fn start(mut config: EdgeConfig, ready_at: i64) -> Self {
        let https = std::mem::take(&mut config.https);
        let mut listeners = Listeners::bind(&config).expect("bind the edge's listeners");
        let mut https_address = None;
        for h in https {
            let listener =
                std::net::TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
            https_address = listener.local_addr().ok();
            listeners.https.push((listener, h));
        }
        let address = |l: &std::net::TcpListener| l.local_addr().expect("a bound address");
        let base = format!("http://{}", address(&listeners.http[0]));
        let admin = listeners
            .admin
            .as_ref()
            .map(|l| format!("http://{}", address(l)))
            .expect("the test edge has an admin listener");
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(edge_proxy::run(config, listeners, shutdown.clone()));
        let edge = Self {
            base,
            admin,
            https: https_address,
            http: client(),
            shutdown,
            task: Some(task),
        };
        edge.wait_for_revision(ready_at).await;
        edge
    }

    /// The revision of the snapshot the edge routes on, as its metrics report it (0 before
    /// it has one).
    pub async fn revision(&self) -> i64 {
        let Ok(metrics) = self.metrics().await else {
            return 0;
        };
        metrics
            .lines()
            .find_map(|line| line.strip_prefix("meridian_edge_snapshot_revision "))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    }

    /// Waits until the edge routes on a snapshot of revision `revision` or later: the
    /// edge's readiness for whatever the control plane held at that revision.
    pub async fn wait_for_revision(&self, revision: i64) {
        eventually(&format!("the edge has snapshot {revision}"), || async {
            self.revision().await >= revision
        })
        .await;
    }

    /// The admin listener's metrics text.
    pub async fn metrics(&self) -> reqwest::Result<String> {
        self.http
            .get(format!("{}/metrics", self.admin))
            .send()
            .await?
            .text()
            .await
    }

    /// `GET path` with `key`.
    pub async fn get(&self, path: &str, key: &str) -> reqwest::Result<reqwest::Response> {
        self.http
            .get(format!("{}{path}", self.base))
            .header("authorization", format!("Key {key}"))
            .send()
            .await
    }

    /// Shuts the edge down and waits for `run` to return.
    pub async fn stop(mut self) {
        self.shutdown.cancel();
        if let Some(task) = self.task.take() {
            within("the edge to stop", task)
                .await
                .expect("the edge task")
                .expect("the edge ran without error");
        }
    }
}

impl Drop for TestEdge {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// An HTTP client that never uses a proxy from the environment.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(patience())
        .build()
        .expect("an HTTP client")
}

/// What a client saw: status, headers, JSON body (`Null` when not JSON).
#[derive(Debug)]
pub struct Answer {
    /// The status.
    pub status: u16,
    /// The headers.
    pub headers: reqwest::header::HeaderMap,
    /// The body as JSON, `Null` when it is not JSON.
    pub body: Value,
}

impl Answer {
    /// Reads a whole response.
    pub async fn of(response: reqwest::Response) -> Self {
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let text = response.text().await.unwrap_or_default();
        let body = serde_json::from_str(&text).unwrap_or(Value::Null);
        Self {
            status,
            headers,
            body,
        }
    }

    /// A header's value.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The error type of an error body.
    pub fn error_type(&self) -> &str {
        self.body["error"]["type"].as_str().unwrap_or("")
    }

    /// Whether the status is 200.
    pub fn ok(&self) -> bool {
        self.status == StatusCode::OK.as_u16()
    }
}
