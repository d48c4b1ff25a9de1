//! The control plane under test: the test kit's in-process control plane with this
//! suite's seed catalog and settings, and HTTP helpers for calling it as each audience.

use std::time::Duration;

use policy::CatalogSpec;
use reqwest::{Method, RequestBuilder, Response, StatusCode};
use serde_json::Value;
pub use testkit::Backend;
use testkit::TestControlPlane;
use testkit::catalog::{Catalog, Model, Region};
pub use testkit::tokens::{ADMIN, AGENT, EDGE};

/// How often the test server passes spend changes on to waiting edges.
pub const SPEND_REFRESH: Duration = Duration::from_millis(300);
/// The body limit of the test server.
pub const BODY_LIMIT: usize = 64 * 1024;

/// The catalog every test server starts with: `eu-west` with two reserved H100s, `us-east`
/// with four on-demand ones, ESRGAN ×4, and `acme` in the EU with an 800 ms goal.
pub fn seed() -> CatalogSpec {
    Catalog::new()
        .region(Region::new(
            "eu-west",
            "eu",
            (53.35, -6.26),
            "http://127.0.0.1:9102",
        ))
        .region(
            Region::new("us-east", "us", (39.04, -77.49), "http://127.0.0.1:9101")
                .reserved(0, 0.0)
                .on_demand(4, 3.9),
        )
        .model(Model::esrgan_x4())
        .tenants(
            "[[tenants]]\nid = \"acme\"\nresidency = { jurisdictions = [\"eu\"] }\n\
             latency_goal_ms = 800",
        )
        .build()
}

pub struct TestServer {
    pub base: String,
    pub http: reqwest::Client,
    control_plane: TestControlPlane,
}

impl TestServer {
    pub async fn start(backend: Backend) -> Self {
        let control_plane = TestControlPlane::builder(backend)
            .seed(seed())
            .settings(|api| {
                api.max_body_bytes = BODY_LIMIT;
                api.agent_lease_ttl = Duration::from_secs(2);
                api.max_poll_wait = Duration::from_secs(30);
                api.spend_refresh = SPEND_REFRESH;
            })
            .start()
            .await;
        Self {
            base: control_plane.url.clone(),
            http: reqwest::Client::builder()
                .timeout(testkit::patience() * 3)
                .build()
                .unwrap(),
            control_plane,
        }
    }

    /// Stops the server and starts a new one on the same store (and seed catalog).
    pub async fn restart(mut self) -> Self {
        self.control_plane.restart().await;
        self.base = self.control_plane.url.clone();
        self
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

    /// A typed client with `token`.
    pub fn client(&self, token: &str) -> control_plane_client::ControlPlane {
        self.control_plane.client(token)
    }

    /// The etcd behind this control plane, if that is the backend.
    pub fn etcd(&self) -> Option<&testkit::etcd::Etcd> {
        self.control_plane.etcd()
    }

    /// Shuts the server down and waits for `run` to return.
    pub async fn stop(mut self) {
        self.control_plane.stop().await;
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
