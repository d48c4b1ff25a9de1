//! An agent running in-process on port 0 with a catalog file ([`config`], [`catalog_toml`]),
//! and HTTP helpers that call it as an edge would; real model weights through the test kit
//! ([`fetch_models`]); spoken test audio ([`speech`]). Waiting is the test kit's
//! ([`eventually`], [`within`], [`patience`]).
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

pub mod speech;

use std::path::PathBuf;
use std::sync::Arc;

use contract::headers;
use region_agent::config::AgentConfig;
use region_agent::serving::Model;
use reqwest::{Method, RequestBuilder};
use serde_json::Value;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub const EDGE_TOKEN: &str = "edge-token-0123456789";
use testkit::catalog::{self, Catalog, Region};
pub use testkit::{eventually, patience, within};

/// A model as the catalog lists it: id, pricing unit, price per unit.
pub type Priced<'a> = (&'a str, &'a str, f64);

/// A Meridian catalog with region eu-west (one reserved CPU slot at 2.2 an hour) and
/// `models`, each expecting 0.1 GPU-seconds a unit.
pub fn catalog(models: &[Priced<'_>]) -> Catalog {
    let mut catalog = Catalog::new().region(
        Region::new("eu-west", "eu", (53.35, -6.26), "http://127.0.0.1:9102")
            .pool("cpu", "cpu")
            .reserved(1, 2.2),
    );
    for (id, unit, price) in models {
        catalog = catalog.model(catalog::Model::new(id, "image-to-image", unit, *price));
    }
    catalog
}

/// [`catalog`] as TOML, as a `catalog_file` holds it.
pub fn catalog_toml(models: &[Priced<'_>]) -> String {
    catalog(models).toml()
}

/// A configuration serving `models` (TOML `[[models]]` tables), priced by `prices` in a
/// catalog file (written to `<data_dir>/catalog.toml`) with one reserved slot.
pub fn config(
    data_dir: &std::path::Path,
    models: &str,
    extra: &str,
    prices: &[Priced<'_>],
) -> AgentConfig {
    std::fs::create_dir_all(data_dir).unwrap();
    let catalog = data_dir.join("catalog.toml");
    std::fs::write(&catalog, catalog_toml(prices)).unwrap();
    AgentConfig::from_toml(&format!(
        r#"
region = "eu-west"
listen = "127.0.0.1:0"
edge_token = "{EDGE_TOKEN}"
data_dir = "{}"
{}
{extra}

{models}
"#,
        data_dir.display(),
        // With a control plane, the catalog comes from it.
        if extra.contains("[control_plane]") {
            String::new()
        } else {
            format!("catalog_file = \"{}\"", catalog.display())
        },
    ))
    .unwrap()
}

/// The weights of `model` (`esrgan-slim` or `silero-vad`), fetched once by the test kit
/// (`testkit::weights`; never skipped).
pub fn fetch_models(model: &str) -> PathBuf {
    testkit::weights::model(model)
}

pub struct Agent {
    pub base: String,
    pub http: reqwest::Client,
    pub shutdown: CancellationToken,
    task: Option<JoinHandle<anyhow::Result<()>>>,
}

impl Agent {
    pub async fn start(config: AgentConfig, models: Vec<Arc<dyn Model>>) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(region_agent::run_with_models(
            config,
            models,
            listener,
            shutdown.clone(),
        ));
        let agent = Self {
            base,
            http: reqwest::Client::builder()
                .timeout(patience())
                .build()
                .unwrap(),
            shutdown,
            task: Some(task),
        };
        eventually("the agent answers", || async {
            agent.get("/healthz").await.0 != 0
        })
        .await;
        agent
    }

    /// A request as the edge sends it for tenant `acme`.
    pub fn call(&self, method: Method, path: &str) -> RequestBuilder {
        self.as_tenant("acme", method, path)
    }

    pub fn as_tenant(&self, tenant: &str, method: Method, path: &str) -> RequestBuilder {
        self.http
            .request(method, format!("{}{path}", self.base))
            .header(headers::EDGE_TOKEN, EDGE_TOKEN)
            .header(headers::TENANT, tenant)
    }

    /// Queues a job and returns its request id.
    pub async fn queue(&self, model: &str, body: Value) -> String {
        let response = self
            .call(Method::POST, &format!("/v1/queue/{model}"))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 202, "{:?}", response.text().await);
        let body: Value = response.json().await.unwrap();
        body["request_id"].as_str().unwrap().to_owned()
    }

    pub async fn status(&self, id: &str) -> Value {
        let response = self
            .call(Method::GET, &format!("/v1/requests/{id}/status"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        response.json().await.unwrap()
    }

    /// Polls the status until it is `status`.
    pub async fn wait_status(&self, id: &str, status: &str) -> Value {
        let last = std::sync::Mutex::new(Value::Null);
        eventually(&format!("job {id} reaches {status}"), || async {
            let current = self.status(id).await;
            let reached = current["status"] == status;
            *last.lock().unwrap() = current;
            reached
        })
        .await;
        last.into_inner().unwrap()
    }

    /// `GET path` without edge headers: (status, body text); status 0 when unreachable.
    pub async fn get(&self, path: &str) -> (u16, String) {
        match self.http.get(format!("{}{path}", self.base)).send().await {
            Ok(response) => {
                let status = response.status().as_u16();
                (status, response.text().await.unwrap_or_default())
            }
            Err(_) => (0, String::new()),
        }
    }

    /// Asks the agent to shut down (as SIGTERM does) and waits for it to stop.
    pub async fn stop(mut self) {
        self.shutdown.cancel();
        self.join().await;
    }

    pub async fn join(&mut self) {
        if let Some(task) = self.task.take() {
            within("the agent to stop", task).await.unwrap().unwrap();
        }
    }
}

/// The ESRGAN-slim weights directory, fetched and converted by `scripts/fetch-models` once
/// per test process (needs npm; never skipped).
pub fn models_dir() -> PathBuf {
    testkit::weights::esrgan_slim()
}
