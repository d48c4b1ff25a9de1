//! A whole Meridian on loopback: control plane (etcd or embedded), agents, one edge.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use control_plane_client::ControlPlane;
use edge_proxy::EdgeConfig;
use edge_proxy::config::Cidr;
use policy::{CatalogSpec, Location};
use region_agent::config::AgentConfig;
use serde_json::{Value, json};
use testkit::catalog::{Catalog, Model, Region};
use testkit::tokens::{ADMIN, AGENT, AGENT_EDGE, EDGE};
use testkit::{TestControlPlane, TestEdge, eventually, patience, weights};
use tokio_util::sync::CancellationToken;

pub use testkit::Backend;

/// The model every agent here serves.
pub const MODEL: &str = "meridian/esrgan-x2";

/// The id of every test region's one GPU pool.
pub const POOL: &str = "gpu";

/// A region of the test world and its agent's pool.
#[derive(Debug, Clone, Copy)]
pub struct RegionDef {
    pub id: &'static str,
    pub jurisdiction: &'static str,
    pub lat: f64,
    pub lon: f64,
    pub reserved: u32,
    pub reserved_price: f64,
    pub on_demand: u32,
    pub on_demand_price: f64,
}

impl RegionDef {
    /// A region with `reserved` reserved slots at 2.0/h and no on-demand capacity.
    pub const fn reserved(
        id: &'static str,
        jurisdiction: &'static str,
        lat: f64,
        lon: f64,
    ) -> Self {
        Self {
            id,
            jurisdiction,
            lat,
            lon,
            reserved: 2,
            reserved_price: 2.0,
            on_demand: 0,
            on_demand_price: 0.0,
        }
    }
}

/// An answer as a client sees it.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    /// `x-meridian-region`, when present.
    pub region: Option<String>,
    pub headers: reqwest::header::HeaderMap,
    pub body: Value,
}

impl Answer {
    async fn of(response: reqwest::Response) -> Self {
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let region = headers
            .get("x-meridian-region")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let text = response.text().await.unwrap_or_default();
        let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
        Self {
            status,
            region,
            headers,
            body,
        }
    }
}

/// A region agent on a runtime of its own.
struct RunningAgent {
    runtime: tokio::runtime::Runtime,
    shutdown: CancellationToken,
}

/// The stack.
pub struct Stack {
    pub dir: tempfile::TempDir,
    control_plane: TestControlPlane,
    regions: Vec<RegionDef>,
    addresses: BTreeMap<&'static str, SocketAddr>,
    agents: BTreeMap<&'static str, RunningAgent>,
    edge: Option<TestEdge>,
    /// Tenant id → an API key of it.
    pub keys: BTreeMap<String, String>,
    pub http: reqwest::Client,
    /// The edge's own location (for clients geo-IP does not know).
    pub edge_location: Location,
}

impl Stack {
    /// Starts everything: `regions` with an agent each, `tenants` (TOML `[[tenants]]`
    /// tables) with a key each, and an edge at `edge_location` that believes
    /// X-Forwarded-For from loopback.
    pub async fn start(
        backend: Backend,
        regions: &[RegionDef],
        tenants: &str,
        edge_location: Location,
    ) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut addresses = BTreeMap::new();
        for r in regions {
            addresses.insert(r.id, free_address());
        }
        let control_plane = TestControlPlane::builder(backend)
            .seed(catalog(regions, &addresses, tenants))
            .settings(|api| {
                // Long enough that a killed agent stays in the snapshot while a scenario
                // runs: the edge must route around it by itself (connect failures, its
                // breaker).
                api.agent_lease_ttl = Duration::from_secs(6);
                api.max_poll_wait = Duration::from_secs(5);
                api.spend_refresh = Duration::from_millis(200);
            })
            .start()
            .await;
        let mut stack = Self {
            dir,
            control_plane,
            regions: regions.to_vec(),
            addresses,
            agents: BTreeMap::new(),
            edge: None,
            keys: BTreeMap::new(),
            http: reqwest::Client::builder()
                .timeout(patience())
                .build()
                .unwrap(),
            edge_location,
        };
        let admin = stack.control_plane(ADMIN);
        for r in regions {
            stack.start_agent(r.id);
        }
        let tenants: Vec<String> = admin
            .list::<Value>("tenants")
            .await
            .unwrap()
            .items
            .iter()
            .map(|t| t["id"].as_str().unwrap().to_owned())
            .collect();
        for tenant in tenants {
            let created = admin.create_key(&tenant, None).await.unwrap();
            stack.keys.insert(tenant, created.key);
        }
        stack.wait_until_live(regions.len()).await;
        stack.start_edge().await;
        stack
    }

    /// A typed client of the control plane with `token`.
    pub fn control_plane(&self, token: &str) -> ControlPlane {
        self.control_plane.client(token)
    }

    /// A typed client of the control plane's admin API.
    pub fn admin(&self) -> ControlPlane {
        self.control_plane.admin()
    }

    /// Waits until `n` agents hold a lease at the control plane.
    pub async fn wait_until_live(&self, n: usize) {
        let edge = self.control_plane(EDGE);
        eventually(&format!("{n} agents report"), || async {
            edge.snapshot().await.is_ok_and(|s| s.regions.len() == n)
        })
        .await;
    }

    /// Starts (or restarts, with the same address and data) the agent of `region`.
    pub fn start_agent(&mut self, region: &str) {
        let def = *self.regions.iter().find(|r| r.id == region).unwrap();
        let address = self.addresses[def.id];
        let config = AgentConfig::from_toml(&format!(
            r#"
            region = "{id}"
            listen = "{address}"
            edge_token = "{AGENT_EDGE}"
            data_dir = "{data}"
            drain_timeout_s = 5
            on_demand_start_ms = 0
            # The world's pools are H100s; its agents run on the CPU.
            [gpus]
            accept_mismatch = true
            [control_plane]
            url = "{cp}"
            agent_token = "{AGENT}"
            heartbeat_interval_ms = 200
            usage_interval_ms = 200
            [[models]]
            id = "{MODEL}"
            weights_dir = "{weights}"
            "#,
            id = def.id,
            data = self.dir.path().join(format!("agent-{}", def.id)).display(),
            cp = self.control_plane.url,
            weights = weights::esrgan_slim().display(),
        ))
        .unwrap();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let shutdown = CancellationToken::new();
        let stop = shutdown.clone();
        // Bound on the agent's own runtime, so that killing the runtime closes it.
        runtime.spawn(async move {
            let listener = bind_retrying(address).await;
            if let Err(e) = region_agent::run(config, listener, stop).await {
                tracing::error!(error = %e, "agent stopped with an error");
            }
        });
        self.agents
            .insert(def.id, RunningAgent { runtime, shutdown });
    }

    /// Kills the agent of `region` outright: its runtime, listener, heartbeats and open
    /// connections vanish at once, as when its machine dies.
    pub async fn kill_agent(&mut self, region: &str) {
        let agent = self.agents.remove(region).expect("a running agent");
        agent.runtime.shutdown_background();
        // The runtime's tasks, its listener among them, are dropped on its worker threads;
        // the agent is dead once its address refuses connections.
        let address = self.addresses[region];
        eventually(
            &format!("{region}'s address refuses connections"),
            || async { tokio::net::TcpStream::connect(address).await.is_err() },
        )
        .await;
    }

    /// Starts (or restarts) the edge; returns once it routes on the control plane's newest
    /// snapshot (or, with the control plane down, on the one it cached).
    pub async fn start_edge(&mut self) {
        let config = EdgeConfig {
            trusted_proxies: vec![Cidr::parse("127.0.0.0/8").unwrap()],
            control_plane_timeout: Duration::from_secs(2),
            connect_timeout: Duration::from_millis(500),
            max_body_bytes: 256 * 1024,
            retry_ratio: 1.0,
            retry_floor: 100,
            breaker_failures: 2,
            breaker_cool_down: Duration::from_secs(1),
            ..testkit::edge::edge_config(
                &self.control_plane.url,
                self.dir.path(),
                self.edge_location,
            )
        };
        let ready_at = match self.control_plane(EDGE).snapshot().await {
            Ok(snapshot) => snapshot.revision,
            // Down: the edge starts from its cache, whatever revision that holds.
            Err(_) => 1,
        };
        self.edge = Some(TestEdge::start(config, ready_at).await);
    }

    /// Stops the edge gracefully.
    pub async fn stop_edge(&mut self) {
        let edge = self.edge.take().expect("a running edge");
        edge.stop().await;
    }

    /// Stops the control plane (etcd stays up; edges and agents keep running).
    pub async fn stop_control_plane(&mut self) {
        self.control_plane.stop().await;
    }

    /// The API key of `tenant`.
    pub fn key(&self, tenant: &str) -> &str {
        &self.keys[tenant]
    }

    fn edge(&self) -> &TestEdge {
        self.edge.as_ref().expect("a running edge")
    }

    /// `GET path` at the edge with `key`.
    pub async fn get(&self, path: &str, key: &str) -> Answer {
        let response = self
            .http
            .get(format!("{}{path}", self.edge().base))
            .header("authorization", format!("Key {key}"))
            .send()
            .await
            .unwrap();
        Answer::of(response).await
    }

    /// `PUT path` at the edge with `key`.
    pub async fn put(&self, path: &str, key: &str) -> Answer {
        let response = self
            .http
            .put(format!("{}{path}", self.edge().base))
            .header("authorization", format!("Key {key}"))
            .send()
            .await
            .unwrap();
        Answer::of(response).await
    }

    /// `POST /v1/{kind}/meridian/esrgan-x2` (kind `run` or `queue`) with a small image,
    /// from the client address `from` (sent as X-Forwarded-For) when given.
    pub async fn submit(&self, kind: &str, key: &str, from: Option<&str>) -> Answer {
        let body = json!({"input": {"image": crate::small_png_base64(8)}});
        self.post(&format!("/v1/{kind}/{MODEL}"), key, from, body.to_string())
            .await
    }

    /// `n` synchronous ESRGAN runs at once from `from`: their answers.
    pub async fn run_many(&self, n: usize, key: &str, from: &str) -> Vec<Answer> {
        let mut runs = tokio::task::JoinSet::new();
        for _ in 0..n {
            let request = self
                .http
                .post(format!("{}/v1/run/{MODEL}", self.edge().base))
                .header("authorization", format!("Key {key}"))
                .header("x-forwarded-for", from)
                .json(&json!({"input": {"image": crate::small_png_base64(8)}}));
            runs.spawn(async move { Answer::of(request.send().await.unwrap()).await });
        }
        let mut answers = Vec::new();
        while let Some(answer) = runs.join_next().await {
            answers.push(answer.unwrap());
        }
        answers
    }

    /// `POST path` at the edge with `key` and a JSON `body`.
    pub async fn post(&self, path: &str, key: &str, from: Option<&str>, body: String) -> Answer {
        let mut request = self
            .http
            .post(format!("{}{path}", self.edge().base))
            .header("authorization", format!("Key {key}"))
            .header("content-type", "application/json")
            .body(body);
        if let Some(from) = from {
            request = request.header("x-forwarded-for", from);
        }
        Answer::of(request.send().await.unwrap()).await
    }

    /// The edge's base URL.
    pub fn edge_base(&self) -> &str {
        &self.edge().base
    }

    /// Revokes every key of `tenant` through the admin API.
    pub async fn revoke_keys(&self, tenant: &str) {
        let admin = self.control_plane(ADMIN);
        for key in admin.keys(tenant).await.unwrap().items {
            admin.revoke_key(tenant, &key.id).await.unwrap();
        }
    }

    /// The edge's Prometheus metrics.
    pub async fn metrics(&self) -> String {
        self.edge().metrics().await.unwrap()
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        for (_, agent) in std::mem::take(&mut self.agents) {
            agent.shutdown.cancel();
            agent.runtime.shutdown_background();
        }
        // The edge and the control plane stop when they are dropped.
    }
}

/// A loopback address no one listens on now.
fn free_address() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap()
}

/// Binds `address`, waiting while a killed agent's socket is still being released.
async fn bind_retrying(address: SocketAddr) -> tokio::net::TcpListener {
    let listener = std::sync::Mutex::new(None);
    eventually(&format!("{address} can be bound again"), || async {
        match tokio::net::TcpListener::bind(address).await {
            Ok(bound) => {
                *listener.lock().unwrap() = Some(bound);
                true
            }
            Err(_) => false,
        }
    })
    .await;
    listener.into_inner().unwrap().unwrap()
}

/// The test world's catalog: `regions` with one H100 pool each, their agents at
/// `endpoint(region id)`, the test model, and `tenants`.
pub(crate) fn world_catalog(
    regions: &[RegionDef],
    endpoint: impl Fn(&str) -> String,
    tenants: &str,
) -> Catalog {
    let mut catalog = Catalog::new()
        .routing("heartbeat_timeout_ms = 6000")
        .jurisdictions(&["eu", "us", "uk", "jp"]);
    for r in regions {
        catalog = catalog.region(
            Region::new(r.id, r.jurisdiction, (r.lat, r.lon), &endpoint(r.id))
                .pool(POOL, "H100")
                .reserved(r.reserved, r.reserved_price)
                .on_demand(r.on_demand, r.on_demand_price),
        );
    }
    catalog
        .model(Model::new(MODEL, "image-to-image", "megapixel", 0.001).gpu_seconds(0.05))
        .tenants(tenants)
}

fn catalog(
    regions: &[RegionDef],
    addresses: &BTreeMap<&'static str, SocketAddr>,
    tenants: &str,
) -> CatalogSpec {
    world_catalog(regions, |id| format!("http://{}", addresses[id]), tenants).build()
}
