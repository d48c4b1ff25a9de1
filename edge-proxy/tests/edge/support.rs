//! The world an edge runs in, started in-process on port 0: the real control plane over an
//! embedded store in a temporary directory, seeded with six regions; a test stand-in agent
//! per region (see `agent`); and edges.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use axum::http::StatusCode;
use control_plane::InProcess;
use control_plane::api::ApiSettings;
use control_plane::store::StoreConfig;
use control_plane_client::ControlPlane;
use control_plane_client::wire::AgentReport;
use edge_proxy::config::Cidr;
use edge_proxy::{EdgeConfig, Listeners};
use policy::{CatalogSpec, Location};
use serde_json::{Value, json};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub use crate::agent::{Behaviour, TestAgent};

/// How long any awaited condition may take before the test fails.
pub const PATIENCE: Duration = Duration::from_secs(30);

pub const ADMIN: &str = "admin-token-0123456789";
pub const EDGE: &str = "edge-token-0123456789";
pub const AGENT: &str = "agent-token-0123456789";
/// What the edge sends agents as `x-meridian-edge-token`.
pub const AGENT_EDGE_TOKEN: &str = "agent-edge-token-0123456789";
pub const ESRGAN: &str = "meridian/esrgan-x4";

/// Where the regions are: id, jurisdiction, lat, lon, whether it serves ESRGAN.
const REGIONS: [(&str, &str, f64, f64, bool); 6] = [
    ("eu-west", "eu", 53.35, -6.26, true),   // Dublin
    ("eu-central", "eu", 50.11, 8.68, true), // Frankfurt
    ("us-west", "us", 47.61, -122.33, true), // Seattle
    ("us-east", "us", 39.04, -77.49, true),  // Ashburn
    ("uk-south", "uk", 51.51, -0.13, false), // London: serves only silero-vad
    ("jp-east", "jp", 35.68, 139.69, true),  // Tokyo: no agent ever reports
];

/// Frankfurt: where the test edges say they are.
pub const FRANKFURT: Location = Location::new(50.11, 8.68);

/// The control plane with its catalog, the agents, and a key per tenant.
pub struct World {
    pub url: String,
    pub agents: HashMap<String, TestAgent>,
    /// Tenant id → an API key of it.
    pub keys: HashMap<String, String>,
    pub dir: tempfile::TempDir,
    control_plane: Option<InProcess>,
}

impl World {
    /// Starts everything; agents of regions in `behaviours` behave so, all others accept.
    pub async fn start(behaviours: &[(&str, Behaviour)]) -> Self {
        let mut agents = HashMap::new();
        for (region, ..) in REGIONS {
            let behaviour = behaviours
                .iter()
                .find(|(r, _)| *r == region)
                .map_or(Behaviour::Accept, |(_, b)| *b);
            agents.insert(region.to_owned(), TestAgent::start(region, behaviour).await);
        }
        let dir = tempfile::tempdir().unwrap();
        let api = ApiSettings {
            agent_lease_ttl: Duration::from_secs(600),
            max_poll_wait: Duration::from_secs(30),
            spend_refresh: Duration::from_millis(200),
            ..ApiSettings::with_tokens(ADMIN, EDGE, AGENT)
        };
        let store = StoreConfig::embedded(dir.path().join("store"));
        let control_plane = InProcess::start(api, store, Some(catalog(&agents)))
            .await
            .unwrap();
        let mut world = Self {
            url: control_plane.url.clone(),
            agents,
            keys: HashMap::new(),
            dir,
            control_plane: Some(control_plane),
        };
        let admin = world.client(ADMIN);
        eventually("the control plane serves", || async {
            admin.list::<Value>("regions").await.is_ok()
        })
        .await;
        let agent = world.client(AGENT);
        let report = AgentReport {
            healthy: true,
            free_reserved: 2,
            ..AgentReport::default()
        };
        for (region, ..) in REGIONS.iter().filter(|r| r.0 != "jp-east") {
            agent.register(region, &report).await.unwrap();
        }
        for tenant in ["acme", "euro", "brit", "nippon", "slow"] {
            let created = admin.create_key(tenant, None).await.unwrap();
            world.keys.insert(tenant.to_owned(), created.key);
        }
        world
    }

    /// A control plane client with `token`.
    pub fn client(&self, token: &str) -> ControlPlane {
        ControlPlane::new(&self.url, token, PATIENCE).unwrap()
    }

    pub fn key(&self, tenant: &str) -> &str {
        &self.keys[tenant]
    }

    pub fn agent(&self, region: &str) -> &TestAgent {
        &self.agents[region]
    }

    /// Stops the control plane (agents keep serving).
    pub async fn stop_control_plane(&mut self) {
        if let Some(control_plane) = self.control_plane.take() {
            tokio::time::timeout(PATIENCE, control_plane.stop())
                .await
                .expect("the control plane stops")
                .unwrap();
        }
    }

    /// An edge configuration for this world: HTTP and admin on port 0, at `FRANKFURT`.
    pub fn edge_config(&self) -> EdgeConfig {
        EdgeConfig {
            http: vec!["127.0.0.1:0".parse().unwrap()],
            https: Vec::new(),
            admin: Some("127.0.0.1:0".parse().unwrap()),
            upgrade_socket: None,
            control_plane_url: self.url.clone(),
            control_plane_token: EDGE.to_owned(),
            snapshot_cache: self.dir.path().join("edge-snapshot.json"),
            poll_wait: Duration::from_secs(5),
            control_plane_timeout: Duration::from_secs(5),
            geoip_database: Some(geoip_db()),
            location: FRANKFURT,
            trusted_proxies: Vec::new(),
            agent_token: AGENT_EDGE_TOKEN.to_owned(),
            connect_timeout: Duration::from_secs(2),
            read_timeout: Duration::from_secs(10),
            max_body_bytes: 64 * 1024,
            retry_ratio: 0.2,
            retry_floor: 10,
            breaker_failures: 5,
            breaker_cool_down: Duration::from_secs(600),
        }
    }
}

/// The MaxMind test database that `policy`'s tests ship.
pub fn geoip_db() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../policy/tests/data/geoip/GeoIP2-City-Test.mmdb")
}

fn catalog(agents: &HashMap<String, TestAgent>) -> CatalogSpec {
    let mut text = String::from(
        r#"
        [routing]
        heartbeat_timeout_ms = 86400000
        [[jurisdictions]]
        id = "eu"
        [[jurisdictions]]
        id = "us"
        [[jurisdictions]]
        id = "uk"
        [[jurisdictions]]
        id = "jp"
        "#,
    );
    for (id, jurisdiction, lat, lon, _) in REGIONS {
        text.push_str(&format!(
            r#"
            [[regions]]
            id = "{id}"
            jurisdiction = "{jurisdiction}"
            location = {{ lat = {lat}, lon = {lon} }}
            endpoint = "{}"
            pools = [{{ id = "h100", gpu = "H100", reserved = 2, reserved_price_per_hour = 2.0 }}]
            "#,
            agents[id].endpoint
        ));
    }
    let esrgan: Vec<String> = REGIONS
        .iter()
        .filter(|r| r.4)
        .map(|r| format!("\"{}\"", r.0))
        .collect();
    text.push_str(&format!(
        r#"
        [[models]]
        id = "{ESRGAN}"
        kind = "image-to-image"
        unit = "megapixel"
        price_per_unit = 0.002
        gpu_seconds_per_unit = 0.4
        regions = [{}]
        [[models]]
        id = "meridian/silero-vad"
        kind = "audio-analysis"
        unit = "audio_second"
        price_per_unit = 0.0001
        gpu_seconds_per_unit = 0.01
        regions = ["uk-south"]

        [[tenants]]
        id = "acme"
        residency = "any"
        [[tenants]]
        id = "euro"
        residency = {{ jurisdictions = ["eu"] }}
        [[tenants]]
        id = "brit"
        residency = {{ jurisdictions = ["uk"] }}
        [[tenants]]
        id = "nippon"
        residency = {{ jurisdictions = ["jp"] }}
        [[tenants]]
        id = "slow"
        residency = "any"
        quotas = {{ requests_per_second = 0.2, burst = 1 }}
        "#,
        esrgan.join(", ")
    ));
    CatalogSpec::from_toml(&text).unwrap()
}

/// An edge running in-process.
pub struct TestEdge {
    pub base: String,
    pub admin: String,
    pub https: Option<SocketAddr>,
    pub http: reqwest::Client,
    shutdown: CancellationToken,
    task: Option<JoinHandle<anyhow::Result<()>>>,
}

impl TestEdge {
    /// Starts an edge with `config` (its addresses are replaced by port 0) and waits until
    /// it has a snapshot in which `ready_key` works.
    pub async fn start(mut config: EdgeConfig, ready_key: &str) -> Self {
        let https = std::mem::take(&mut config.https);
        let mut listeners = Listeners::bind(&config).unwrap();
        let mut https_address = None;
        for h in https {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            https_address = Some(listener.local_addr().unwrap());
            listeners.https.push((listener, h));
        }
        let base = format!("http://{}", listeners.http[0].local_addr().unwrap());
        let admin = format!(
            "http://{}",
            listeners.admin.as_ref().unwrap().local_addr().unwrap()
        );
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
        edge.wait_until_key_works(ready_key).await;
        edge
    }

    /// Waits until `GET /v1/models` with `key` answers 200.
    pub async fn wait_until_key_works(&self, key: &str) {
        eventually("the edge accepts the key", || async {
            matches!(self.get("/v1/models", key).await, Ok(r) if r.status() == StatusCode::OK)
        })
        .await;
    }

    pub async fn get(&self, path: &str, key: &str) -> reqwest::Result<reqwest::Response> {
        self.http
            .get(format!("{}{path}", self.base))
            .header("authorization", format!("Key {key}"))
            .send()
            .await
    }

    /// `POST /v1/run/meridian/esrgan-x4` with `key`, from `forwarded_for` if given.
    pub async fn run_esrgan(&self, key: &str, forwarded_for: Option<&str>) -> Answer {
        let mut request = self
            .http
            .post(format!("{}/v1/run/{ESRGAN}", self.base))
            .header("authorization", format!("Bearer {key}"))
            .json(&json!({"input": {"image": "aGVsbG8="}}));
        if let Some(xff) = forwarded_for {
            request = request.header("x-forwarded-for", xff);
        }
        Answer::of(request.send().await.unwrap()).await
    }

    /// The admin listener's metrics text.
    pub async fn metrics(&self) -> String {
        self.http
            .get(format!("{}/metrics", self.admin))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// Shuts the edge down and waits for `run` to return.
    pub async fn stop(mut self) {
        self.shutdown.cancel();
        if let Some(task) = self.task.take() {
            tokio::time::timeout(PATIENCE, task)
                .await
                .expect("the edge stops")
                .unwrap()
                .unwrap();
        }
    }
}

impl Drop for TestEdge {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// A client that never uses a proxy from the environment.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(PATIENCE)
        .build()
        .unwrap()
}

/// What a client saw: status, headers, JSON body (`Null` when not JSON).
pub struct Answer {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub body: Value,
}

impl Answer {
    pub async fn of(response: reqwest::Response) -> Self {
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let text = response.text().await.unwrap();
        let body = serde_json::from_str(&text).unwrap_or(Value::Null);
        Self {
            status,
            headers,
            body,
        }
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The error type of an error body.
    pub fn error_type(&self) -> &str {
        self.body["error"]["type"].as_str().unwrap_or("")
    }
}

/// Waits until `condition` holds, failing the test after [`PATIENCE`].
pub async fn eventually<F, Fut>(what: &str, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while !condition().await {
        assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// A trusted-proxy network.
pub fn cidr(text: &str) -> Cidr {
    Cidr::parse(text).unwrap()
}
