//! The world an edge runs in, started in-process on port 0: the real control plane over an
//! embedded store in a temporary directory, seeded with six regions; test stand-ins for
//! region agents (HTTP servers that follow region-agent/API.md as far as the edge needs:
//! accept, refuse with `503` + `x-meridian-refused`, or be down); and edges.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use control_plane::api::{ApiSettings, Token};
use control_plane::config::ServerConfig;
use control_plane::store::StoreConfig;
use control_plane_client::ControlPlane;
use control_plane_client::wire::AgentReport;
use edge_proxy::config::Cidr;
use edge_proxy::{EdgeConfig, Listeners};
use policy::{CatalogSpec, Location};
use serde_json::{Value, json};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

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

/// How a stand-in agent answers job submissions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Behaviour {
    /// Accepts every job.
    Accept,
    /// Refuses every job with `503` and `x-meridian-refused: queue_full`.
    Refuse,
    /// Nothing listens on its port.
    Down,
}

/// What a stand-in agent saw of one call.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub path: String,
    pub tenant: Option<String>,
    pub edge_token: Option<String>,
    pub authorization: bool,
}

/// A test stand-in for a region agent.
pub struct TestAgent {
    pub endpoint: String,
    refuse: Arc<AtomicBool>,
    /// While set, job submissions wait for [`TestAgent::release`] before answering.
    hold: Arc<AtomicBool>,
    gate: Arc<tokio::sync::Semaphore>,
    seen: Arc<Mutex<Vec<Seen>>>,
    task: Option<JoinHandle<()>>,
}

impl TestAgent {
    async fn start(region: &str, behaviour: Behaviour) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let refuse = Arc::new(AtomicBool::new(behaviour == Behaviour::Refuse));
        let hold = Arc::new(AtomicBool::new(false));
        let gate = Arc::new(tokio::sync::Semaphore::new(0));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let task = if behaviour == Behaviour::Down {
            drop(listener);
            None
        } else {
            let agent = Arc::new(AgentState {
                region: region.to_owned(),
                refuse: Arc::clone(&refuse),
                hold: Arc::clone(&hold),
                gate: Arc::clone(&gate),
                seen: Arc::clone(&seen),
                jobs: Mutex::new(HashMap::new()),
                next: AtomicU64::new(1),
            });
            let app = axum::Router::new().fallback(
                move |method: Method, uri: Uri, headers: HeaderMap, body: Bytes| {
                    let agent = Arc::clone(&agent);
                    async move { agent.handle(&method, &uri, &headers, &body).await }
                },
            );
            Some(tokio::spawn(async move {
                let _ = axum::serve(listener, app).await;
            }))
        };
        Self {
            endpoint: format!("http://{address}"),
            refuse,
            hold,
            gate,
            seen,
            task,
        }
    }

    /// Every call this agent received, oldest first.
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    /// Makes job submissions and status streams wait for [`TestAgent::release`].
    pub fn hold(&self) {
        self.hold.store(true, Ordering::SeqCst);
    }

    /// Lets one held answer go on.
    pub fn release(&self) {
        self.gate.add_permits(1);
    }

    /// Starts or stops refusing jobs.
    pub fn set_refusing(&self, refuse: bool) {
        self.refuse.store(refuse, Ordering::SeqCst);
    }
}

impl Drop for TestAgent {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

struct AgentState {
    region: String,
    refuse: Arc<AtomicBool>,
    hold: Arc<AtomicBool>,
    gate: Arc<tokio::sync::Semaphore>,
    seen: Arc<Mutex<Vec<Seen>>>,
    /// Request id → the tenant that created it.
    jobs: Mutex<HashMap<String, String>>,
    next: AtomicU64,
}

impl AgentState {
    /// Waits for a release while the agent is held.
    async fn wait_if_held(&self) {
        if self.hold.load(Ordering::SeqCst) {
            self.gate.acquire().await.unwrap().forget();
        }
    }

    async fn handle(
        self: Arc<Self>,
        method: &Method,
        uri: &Uri,
        headers: &HeaderMap,
        _body: &Bytes,
    ) -> Response {
        let header = |name: &str| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        let tenant = header("x-meridian-tenant");
        self.seen.lock().unwrap().push(Seen {
            method: method.to_string(),
            path: uri.path().to_owned(),
            tenant: tenant.clone(),
            edge_token: header("x-meridian-edge-token"),
            authorization: headers.contains_key("authorization"),
        });
        if header("x-meridian-edge-token").as_deref() != Some(AGENT_EDGE_TOKEN) {
            return error(StatusCode::UNAUTHORIZED, "unauthorized");
        }
        let Some(tenant) = tenant else {
            return error(StatusCode::BAD_REQUEST, "bad_request");
        };
        let path = uri.path();
        let region = [("x-meridian-region", self.region.clone())];
        if *method == Method::POST {
            if self.refuse.load(Ordering::SeqCst) {
                return (
                    StatusCode::SERVICE_UNAVAILABLE,
                    [("x-meridian-refused", "queue_full")],
                    json!({"error": {"type": "queue_full", "message": "queue full"}}).to_string(),
                )
                    .into_response();
            }
            let id = format!(
                "{}.{:032x}",
                self.region,
                self.next.fetch_add(1, Ordering::SeqCst)
            );
            self.wait_if_held().await;
            self.jobs.lock().unwrap().insert(id.clone(), tenant.clone());
            let body = json!({"request_id": id, "region": self.region, "tenant": tenant});
            let status = if path.starts_with("/v1/queue/") {
                StatusCode::ACCEPTED
            } else {
                StatusCode::OK
            };
            return (
                status,
                [
                    ("x-request-id", id.clone()),
                    ("x-meridian-cost", "0.002".to_owned()),
                ],
                region,
                body.to_string(),
            )
                .into_response();
        }
        let id = path
            .strip_prefix("/v1/requests/")
            .and_then(|rest| rest.split('/').next())
            .unwrap_or_default()
            .to_owned();
        if self.jobs.lock().unwrap().get(&id) != Some(&tenant) {
            return error(StatusCode::NOT_FOUND, "not_found");
        }
        if header("accept").as_deref() == Some("text/event-stream") {
            return self.status_stream(id);
        }
        let body = json!({"request_id": id, "region": self.region, "status": "COMPLETED"});
        (
            StatusCode::OK,
            [("x-request-id", id)],
            region,
            body.to_string(),
        )
            .into_response()
    }
}

impl AgentState {
    /// An SSE stream of statuses: `IN_PROGRESS` at once, `COMPLETED` once released.
    fn status_stream(self: Arc<Self>, id: String) -> Response {
        let (events, body) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(4);
        let event = |status: &str| {
            let data = json!({"request_id": id, "status": status});
            Ok(Bytes::from(format!("event: status\ndata: {data}\n\n")))
        };
        let first = event("IN_PROGRESS");
        let last = event("COMPLETED");
        tokio::spawn(async move {
            let _ = events.send(first).await;
            self.wait_if_held().await;
            let _ = events.send(last).await;
        });
        let stream = ReceiverStream(body);
        (
            [("content-type", "text/event-stream")],
            axum::body::Body::from_stream(stream),
        )
            .into_response()
    }
}

/// A channel's receiving end as a stream of body chunks.
struct ReceiverStream(tokio::sync::mpsc::Receiver<Result<Bytes, std::io::Error>>);

impl futures_core::Stream for ReceiverStream {
    type Item = Result<Bytes, std::io::Error>;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        self.0.poll_recv(cx)
    }
}

fn error(status: StatusCode, kind: &str) -> Response {
    (
        status,
        json!({"error": {"type": kind, "message": kind}}).to_string(),
    )
        .into_response()
}

/// The control plane with its catalog, the agents, and a key per tenant.
pub struct World {
    pub url: String,
    pub agents: HashMap<String, TestAgent>,
    /// Tenant id → an API key of it.
    pub keys: HashMap<String, String>,
    pub dir: tempfile::TempDir,
    shutdown: CancellationToken,
    task: Option<JoinHandle<anyhow::Result<()>>>,
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
        let config = ServerConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            api: ApiSettings {
                admin_token: Token::new(ADMIN),
                edge_token: Token::new(EDGE),
                agent_token: Token::new(AGENT),
                max_body_bytes: 1 << 20,
                agent_lease_ttl: Duration::from_secs(600),
                max_poll_wait: Duration::from_secs(30),
            },
            store: StoreConfig::embedded(dir.path().join("store")),
            seed_catalog: Some(catalog(&agents)),
        };
        let listener = tokio::net::TcpListener::bind(config.listen).await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(control_plane::run(config, listener, shutdown.clone()));
        let mut world = Self {
            url,
            agents,
            keys: HashMap::new(),
            dir,
            shutdown,
            task: Some(task),
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
        self.shutdown.cancel();
        if let Some(task) = self.task.take() {
            tokio::time::timeout(PATIENCE, task)
                .await
                .expect("the control plane stops")
                .unwrap()
                .unwrap();
        }
    }

    /// An edge configuration for this world: HTTP and admin on port 0, at `FRANKFURT`.
    pub fn edge_config(&self) -> EdgeConfig {
        EdgeConfig {
            http: vec!["127.0.0.1:0".parse().unwrap()],
            https: Vec::new(),
            admin: Some("127.0.0.1:0".parse().unwrap()),
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

impl Drop for World {
    fn drop(&mut self) {
        self.shutdown.cancel();
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
