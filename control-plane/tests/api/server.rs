//! A control plane running in-process on port 0, with a seeded catalog and HTTP helpers.

use std::time::Duration;

use control_plane::InProcess;
use control_plane::api::ApiSettings;
use control_plane::store::StoreConfig;
use policy::CatalogSpec;
use reqwest::{Method, RequestBuilder, Response, StatusCode};
use serde_json::Value;

use crate::support::{EtcdServer, PATIENCE};

pub const ADMIN: &str = "admin-token-0123456789";
pub const EDGE: &str = "edge-token-0123456789";
pub const AGENT: &str = "agent-token-0123456789";
/// How often the test server passes spend changes on to waiting edges.
pub const SPEND_REFRESH: Duration = Duration::from_millis(300);
/// The body limit of the test server.
pub const BODY_LIMIT: usize = 64 * 1024;

/// The catalog every test server starts with.
pub const SEED: &str = r#"
    [[jurisdictions]]
    id = "eu"
    [[jurisdictions]]
    id = "us"

    [[regions]]
    id = "eu-west"
    jurisdiction = "eu"
    location = { lat = 53.35, lon = -6.26 }
    endpoint = "http://127.0.0.1:9102"
    pools = [{ id = "h100", gpu = "H100", reserved = 2, reserved_price_per_hour = 2.2 }]

    [[regions]]
    id = "us-east"
    jurisdiction = "us"
    location = { lat = 39.04, lon = -77.49 }
    endpoint = "http://127.0.0.1:9101"
    pools = [{ id = "h100", gpu = "H100", on_demand_max = 4, on_demand_price_per_hour = 3.9 }]

    [[models]]
    id = "meridian/esrgan-x4"
    kind = "image-to-image"
    unit = "megapixel"
    price_per_unit = 0.002
    gpu_seconds_per_unit = 0.4

    [[tenants]]
    id = "acme"
    residency = { jurisdictions = ["eu"] }
    latency_goal_ms = 800
"#;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Embedded,
    Etcd,
}

enum Holder {
    Dir(#[allow(dead_code)] tempfile::TempDir),
    Etcd(EtcdServer),
}

pub struct TestServer {
    pub base: String,
    pub http: reqwest::Client,
    server: Option<InProcess>,
    holder: Option<Holder>,
    store: StoreConfig,
}

impl TestServer {
    pub async fn start(backend: Backend) -> Self {
        let (store, holder) = match backend {
            Backend::Embedded => {
                let dir = tempfile::tempdir().unwrap();
                (StoreConfig::embedded(dir.path()), Holder::Dir(dir))
            }
            Backend::Etcd => {
                let etcd = EtcdServer::start().await;
                let config = StoreConfig::Etcd {
                    endpoints: vec![etcd.endpoint.clone()],
                };
                (config, Holder::Etcd(etcd))
            }
        };
        Self::serve(store, holder).await
    }

    async fn serve(store: StoreConfig, holder: Holder) -> Self {
        let api = ApiSettings {
            max_body_bytes: BODY_LIMIT,
            agent_lease_ttl: Duration::from_secs(2),
            max_poll_wait: Duration::from_secs(30),
            spend_refresh: SPEND_REFRESH,
            ..ApiSettings::with_tokens(ADMIN, EDGE, AGENT)
        };
        let seed = CatalogSpec::from_toml(SEED).unwrap();
        let running = InProcess::start(api, store.clone(), Some(seed))
            .await
            .unwrap();
        let server = Self {
            base: running.url.clone(),
            http: reqwest::Client::builder()
                .timeout(PATIENCE * 3)
                .build()
                .unwrap(),
            server: Some(running),
            holder: Some(holder),
            store,
        };
        server.wait_ready().await;
        server
    }

    /// Stops the server and starts a new one on the same store (and seed catalog).
    pub async fn restart(mut self) -> Self {
        if let Some(server) = self.server.take() {
            server.stop().await.unwrap();
        }
        let holder = self.holder.take().unwrap();
        Self::serve(self.store.clone(), holder).await
    }

    /// Waits until the server answers (the store is open and seeded).
    async fn wait_ready(&self) {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            if let Ok(r) = self.admin(Method::GET, "/admin/v1/regions").send().await
                && r.status() == StatusCode::OK
            {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "server never got ready"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// A request with `token`.
    pub fn call(&self, token: &str, method: Method, path: &str) -> RequestBuilder {
        self.http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(token)
    }

    pub fn admin(&self, method: Method, path: &str) -> RequestBuilder {
        self.call(ADMIN, method, path)
    }

    pub fn edge(&self, path: &str) -> RequestBuilder {
        self.call(EDGE, Method::GET, path)
    }

    pub fn agent(&self, path: &str) -> RequestBuilder {
        self.call(AGENT, Method::POST, path)
    }

    /// The etcd server behind this control plane, if that is the backend.
    pub fn etcd(&self) -> Option<&EtcdServer> {
        match &self.holder {
            Some(Holder::Etcd(etcd)) => Some(etcd),
            _ => None,
        }
    }

    /// Shuts the server down and waits for `run` to return.
    pub async fn stop(mut self) {
        if let Some(server) = self.server.take() {
            tokio::time::timeout(PATIENCE, server.stop())
                .await
                .expect("run returns after shutdown")
                .unwrap();
        }
    }
}

/// The response's status and JSON body (`Null` when empty).
pub async fn json(response: Response) -> (StatusCode, Value) {
    let status = response.status();
    let text = response.text().await.unwrap();
    let body = if text.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
    };
    (status, body)
}

/// The `ETag` revision of a response.
pub fn revision(response: &Response) -> i64 {
    response.headers()["etag"]
        .to_str()
        .unwrap()
        .trim_matches('"')
        .parse()
        .unwrap()
}

/// A region record in `jurisdiction`.
pub fn region(id: &str, jurisdiction: &str) -> Value {
    serde_json::json!({
        "id": id,
        "jurisdiction": jurisdiction,
        "location": {"lat": 50.11, "lon": 8.68},
        "endpoint": "http://127.0.0.1:9200",
        "pools": [{"id": "a100", "gpu": "A100", "reserved": 1, "reserved_price_per_hour": 1.5, "on_demand_max": 0}]
    })
}
