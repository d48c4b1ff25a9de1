//! A real region agent served in-process on a free loopback port, with the models the
//! binary knows or with stand-in models (the `test-model` feature's `TestModel`), called as
//! an edge calls it.

use std::sync::Arc;

use contract::{Nanos, headers};
use region_agent::config::AgentConfig;
use region_agent::serving::Model;
use reqwest::{Method, RequestBuilder};
use serde_json::Value;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::patience::{eventually, patience, within};
use crate::tokens::AGENT_EDGE;

/// An agent running in this process.
pub struct TestAgent {
    /// Its base URL, `http://127.0.0.1:PORT`.
    pub base: String,
    /// A client for calling it.
    pub http: reqwest::Client,
    /// Cancelled to shut it down (as SIGTERM does).
    pub shutdown: CancellationToken,
    task: Option<JoinHandle<anyhow::Result<()>>>,
}

impl TestAgent {
    /// Starts an agent with `config` (its listen address is replaced by a free loopback
    /// port) and `models`; returns once it answers.
    pub async fn start(config: AgentConfig, models: Vec<Arc<dyn Model>>) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind a loopback port");
        let base = format!("http://{}", listener.local_addr().expect("a bound address"));
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
                .expect("an HTTP client"),
            shutdown,
            task: Some(task),
        };
        // The listener is bound, so this waits in its backlog until the agent serves.
        within("the agent to answer", agent.get("/healthz")).await;
        agent
    }

    /// A request as the edge sends it for tenant `acme`.
    pub fn call(&self, method: Method, path: &str) -> RequestBuilder {
        self.as_tenant("acme", method, path)
    }

    /// A request as the edge sends it for `tenant`.
    pub fn as_tenant(&self, tenant: &str, method: Method, path: &str) -> RequestBuilder {
        self.http
            .request(method, format!("{}{path}", self.base))
            .header(headers::EDGE_TOKEN, AGENT_EDGE)
            .header(headers::TENANT, tenant)
    }

    /// Queues a job of `model` for `acme` and returns its request id.
    pub async fn queue(&self, model: &str, body: Value) -> String {
        let response = self
            .call(Method::POST, &format!("/v1/queue/{model}"))
            .json(&body)
            .send()
            .await
            .expect("the agent answers");
        let status = response.status();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        assert_eq!(status, 202, "{body}");
        body["request_id"]
            .as_str()
            .expect("a request id")
            .to_owned()
    }

    /// `POST /v1/run/{model}` with `input` for `acme`: the status and the body (`null` when it
    /// is not JSON), whatever they are.
    pub async fn try_run(&self, model: &str, input: Value) -> (u16, Value) {
        let response = self
            .call(Method::POST, &format!("/v1/run/{model}"))
            .json(&serde_json::json!({ "input": input }))
            .send()
            .await
            .expect("the agent answers");
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    /// Runs a job of `model` synchronously for `tenant` with `input`; returns its request id
    /// and what it cost (`x-meridian-cost`), failing the test unless it succeeded.
    pub async fn run(&self, tenant: &str, model: &str, input: Value) -> (String, Nanos) {
        let response = self
            .as_tenant(tenant, Method::POST, &format!("/v1/run/{model}"))
            .json(&serde_json::json!({ "input": input }))
            .send()
            .await
            .expect("the agent answers");
        assert_eq!(response.status(), 200, "{:?}", response.headers());
        let header = |name: &str| {
            response.headers()[name]
                .to_str()
                .expect("a text header")
                .to_owned()
        };
        let cost = header(headers::COST).parse().expect("a cost in billionths");
        (header(headers::REQUEST_ID), cost)
    }

    /// The status of job `id` (of `acme`).
    pub async fn status(&self, id: &str) -> Value {
        let response = self
            .call(Method::GET, &format!("/v1/requests/{id}/status"))
            .send()
            .await
            .expect("the agent answers");
        assert_eq!(response.status(), 200);
        response.json().await.expect("a JSON status")
    }

    /// Waits until job `id` has `status`; returns the status then.
    pub async fn wait_status(&self, id: &str, status: &str) -> Value {
        let last = std::sync::Mutex::new(Value::Null);
        eventually(&format!("job {id} reaches {status}"), || async {
            let current = self.status(id).await;
            let reached = current["status"] == status;
            *last
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner) = current;
            reached
        })
        .await;
        last.into_inner()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
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

    /// Waits for the agent to stop, which must be without error.
    pub async fn join(&mut self) {
        if let Some(task) = self.task.take() {
            within("the agent to stop", task)
                .await
                .expect("the agent task")
                .expect("the agent ran without error");
        }
    }
}

impl Drop for TestAgent {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}
