//! The edge→agent API (API.md) as an edge sees it, against an agent running in-process on
//! port 0 with the in-code test model (`serving::test_model`, not a real model): auth,
//! tenant isolation, every kind of bad input, refusals, queue → status → result → file,
//! SSE, cancellation, synchronous runs, draining on shutdown and restart.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::sync::Arc;

use region_agent::serving::Model;
use region_agent::serving::test_model::{Gate, TestModel};
use reqwest::Method;
use serde_json::{Value, json};

use support::{Agent, EDGE_TOKEN, config};

const ECHO: &str = "[[models]]\nid = \"test/echo\"\nweights_dir = \"unused\"\n";

fn models(model: TestModel) -> Vec<Arc<dyn Model>> {
    vec![Arc::new(model)]
}

async fn start(dir: &std::path::Path, model: TestModel, extra: &str) -> Agent {
    let prices = [("test/echo", "image", 0.25)];
    Agent::start(config(dir, ECHO, extra, &prices), models(model)).await
}

fn error_type(body: &Value) -> &str {
    body["error"]["type"].as_str().unwrap_or_default()
}

#[tokio::test]
async fn queue_status_result_and_file() {
    let dir = tempfile::tempdir().unwrap();
    let agent = start(dir.path(), TestModel::new("test/echo"), "").await;
    let id = agent
        .queue("test/echo", json!({"input": {"text": "hello"}}))
        .await;
    // The id names the region and this agent's instance (made at its first start and kept).
    let kept = std::fs::read_to_string(dir.path().join("instance")).unwrap();
    let parsed = contract::RequestId::new(&id).unwrap();
    assert_eq!(parsed.region(), "eu-west");
    assert_eq!(parsed.instance(), Some(kept.trim()), "{id}");
    agent.wait_status(&id, "COMPLETED").await;

    let response = agent
        .call(Method::GET, &format!("/v1/requests/{id}"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["x-meridian-region"], "eu-west");
    assert_eq!(response.headers()["x-request-id"], id.as_str());
    assert_eq!(response.headers()["x-meridian-cost"], "0.250000000");
    let result: Value = response.json().await.unwrap();
    assert_eq!(result["cost_nanos"], 250_000_000);
    assert_eq!(result["cost"], 0.25);
    assert_eq!(result["status"], "COMPLETED");
    assert_eq!(result["output"]["text"], "HELLO");
    assert_eq!(result["capacity"], "reserved");
    assert_eq!(result["units"], 1.0);
    let file = &result["output"]["file"];
    assert_eq!(file["content_type"], "text/plain");
    assert_eq!(file["bytes"], 5);

    let url = file["url"].as_str().unwrap();
    let response = agent.call(Method::GET, url).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "text/plain");
    assert_eq!(response.text().await.unwrap(), "HELLO");
    let missing = agent
        .call(Method::GET, &format!("/v1/requests/{id}/files/nope.txt"))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);
    agent.stop().await;
}

#[tokio::test]
async fn edge_token_and_tenant_isolation() {
    let dir = tempfile::tempdir().unwrap();
    let agent = start(dir.path(), TestModel::new("test/echo"), "").await;
    let id = agent
        .queue("test/echo", json!({"input": {"text": "secret"}}))
        .await;
    agent.wait_status(&id, "COMPLETED").await;

    let no_token = agent
        .http
        .get(format!("{}/v1/requests/{id}", agent.base))
        .header("x-meridian-tenant", "acme")
        .send()
        .await
        .unwrap();
    assert_eq!(no_token.status(), 401);
    let wrong = agent
        .http
        .get(format!("{}/v1/requests/{id}", agent.base))
        .header("x-meridian-edge-token", format!("{EDGE_TOKEN}x"))
        .header("x-meridian-tenant", "acme")
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 401);
    assert_eq!(error_type(&wrong.json().await.unwrap()), "unauthorized");

    for path in [
        format!("/v1/requests/{id}"),
        format!("/v1/requests/{id}/status"),
        format!("/v1/requests/{id}/files/echo.txt"),
    ] {
        let other = agent
            .as_tenant("globex", Method::GET, &path)
            .send()
            .await
            .unwrap();
        assert_eq!(other.status(), 404, "{path}");
    }
    let cancel = agent
        .as_tenant("globex", Method::PUT, &format!("/v1/requests/{id}/cancel"))
        .send()
        .await
        .unwrap();
    assert_eq!(cancel.status(), 404);
    let unknown = agent
        .call(
            Method::GET,
            "/v1/requests/eu-west.0123456789abcdef0123456789abcdef",
        )
        .send()
        .await
        .unwrap();
    assert_eq!(unknown.status(), 404);
    agent.stop().await;
}

#[tokio::test]
async fn bad_input_gets_a_4xx_and_never_a_500() {
    let dir = tempfile::tempdir().unwrap();
    let agent = start(
        dir.path(),
        TestModel::new("test/echo"),
        "max_body_bytes = 1000",
    )
    .await;
    let post = |body: reqwest::Body, content_type: &str| {
        agent
            .call(Method::POST, "/v1/run/test/echo")
            .header("content-type", content_type)
            .body(body)
    };
    let cases: Vec<(&str, reqwest::RequestBuilder, u16)> = vec![
        (
            "malformed JSON",
            post("{\"input\":".into(), "application/json"),
            400,
        ),
        ("not an object", post("[1]".into(), "application/json"), 400),
        ("missing input", post("{}".into(), "application/json"), 400),
        (
            "input not an object",
            post("{\"input\": 3}".into(), "application/json"),
            400,
        ),
        (
            "missing field",
            post("{\"input\": {}}".into(), "application/json"),
            400,
        ),
        (
            "wrong type",
            post("{\"input\": {\"text\": 3}}".into(), "application/json"),
            400,
        ),
        (
            "bad priority",
            post(
                "{\"input\": {\"text\": \"a\"}, \"priority\": \"urgent\"}".into(),
                "application/json",
            ),
            400,
        ),
        (
            "unusable value",
            post("{\"input\": {\"text\": \"\"}}".into(), "application/json"),
            422,
        ),
        (
            "not JSON",
            post("text=a".into(), "application/x-www-form-urlencoded"),
            415,
        ),
        (
            "too large",
            post(
                format!("{{\"input\": {{\"text\": \"{}\"}}}}", "a".repeat(2000)).into(),
                "application/json",
            ),
            413,
        ),
    ];
    for (what, request, status) in cases {
        let response = request.send().await.unwrap();
        assert_eq!(response.status().as_u16(), status, "{what}");
        let body: Value = response.json().await.unwrap();
        assert!(!error_type(&body).is_empty(), "{what}: {body}");
        assert!(body["error"]["message"].is_string(), "{what}: {body}");
    }
    let missing_tenant = agent
        .http
        .post(format!("{}/v1/run/test/echo", agent.base))
        .header("x-meridian-edge-token", EDGE_TOKEN)
        .json(&json!({"input": {"text": "a"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(missing_tenant.status(), 400);
    // A slug of at most 63 characters, as the catalog's tenant ids.
    let long = "a".repeat(64);
    for bad in ["ACME", "acme corp", "-acme", "", "acme.corp", long.as_str()] {
        let response = agent
            .as_tenant(bad, Method::POST, "/v1/run/test/echo")
            .json(&json!({"input": {"text": "a"}}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 400, "tenant {bad:?}");
        let body: Value = response.json().await.unwrap();
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap()
                .contains("tenant"),
            "{body}"
        );
    }
    let jobs = std::fs::read_dir(dir.path().join("jobs")).unwrap().count();
    assert_eq!(jobs, 0, "no refused or invalid request created a job");
    agent.stop().await;
}

#[tokio::test]
async fn refusals_are_503_with_a_reason_and_create_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let gate = Gate::closed();
    let agent = start(dir.path(), TestModel::new("test/echo").gated(&gate), "").await;
    let unknown = agent
        .call(Method::POST, "/v1/queue/meridian/tiny-sd")
        .json(&json!({"input": {"prompt": "a"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(unknown.status(), 503);
    assert_eq!(unknown.headers()["x-meridian-refused"], "model_not_served");
    let body: Value = unknown.json().await.unwrap();
    assert_eq!(
        (error_type(&body), body["error"]["reason"].as_str()),
        ("refused", Some("model_not_served"))
    );

    // Default queue bound is 64: one job runs, 64 wait, the next is refused.
    let running = agent
        .queue("test/echo", json!({"input": {"text": "r"}}))
        .await;
    agent.wait_status(&running, "IN_PROGRESS").await;
    for i in 0..64 {
        agent
            .queue("test/echo", json!({"input": {"text": format!("q{i}")}}))
            .await;
    }
    let full = agent
        .call(Method::POST, "/v1/queue/test/echo")
        .json(&json!({"input": {"text": "over"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(full.status(), 503);
    assert_eq!(full.headers()["x-meridian-refused"], "queue_full");
    let jobs = std::fs::read_dir(dir.path().join("jobs")).unwrap().count();
    assert_eq!(jobs, 65);
    gate.open();
    agent.stop().await;
}

#[tokio::test]
async fn status_stream_cancel_and_sync_run() {
    let dir = tempfile::tempdir().unwrap();
    let gate = Gate::closed();
    let agent = start(
        dir.path(),
        TestModel::new("test/echo").gated(&gate),
        "sync_timeout_ms = 300",
    )
    .await;
    let first = agent
        .queue("test/echo", json!({"input": {"text": "first"}}))
        .await;
    agent.wait_status(&first, "IN_PROGRESS").await;
    let second = agent
        .queue(
            "test/echo",
            json!({"input": {"text": "second"}, "priority": "low"}),
        )
        .await;
    let third = agent
        .queue(
            "test/echo",
            json!({"input": {"text": "third"}, "priority": "high"}),
        )
        .await;
    assert_eq!(agent.status(&second).await["queue_position"], 1);
    assert_eq!(agent.status(&third).await["queue_position"], 0);

    // Not ready yet; the queued job is cancelled at once.
    let not_ready = agent
        .call(Method::GET, &format!("/v1/requests/{first}"))
        .send()
        .await
        .unwrap();
    assert_eq!(not_ready.status(), 409);
    assert_eq!(error_type(&not_ready.json().await.unwrap()), "not_ready");
    let cancel = |id: &str| {
        agent
            .call(Method::PUT, &format!("/v1/requests/{id}/cancel"))
            .send()
    };
    let cancelled = cancel(&second).await.unwrap();
    assert_eq!(cancelled.status(), 200);
    assert_eq!(
        cancelled.json::<Value>().await.unwrap()["status"],
        "CANCELLED"
    );
    let result: Value = agent
        .call(Method::GET, &format!("/v1/requests/{second}"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(result["status"], "CANCELLED");

    // A synchronous run that cannot finish in time: 504 with the id; the job goes on.
    let slow = agent
        .call(Method::POST, "/v1/run/test/echo")
        .json(&json!({"input": {"text": "sync"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(slow.status(), 504);
    let body: Value = slow.json().await.unwrap();
    assert_eq!(error_type(&body), "timeout");
    let sync_id = body["request_id"].as_str().unwrap().to_owned();

    // Follow the third job's events while the gate opens.
    let mut stream = agent
        .call(Method::GET, &format!("/v1/requests/{third}/status"))
        .header("accept", "text/event-stream")
        .send()
        .await
        .unwrap();
    assert_eq!(stream.status(), 200);
    assert!(
        stream.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    gate.open();
    let mut text = String::new();
    while let Some(chunk) = support::within("the next event", stream.chunk())
        .await
        .unwrap()
    {
        text.push_str(&String::from_utf8_lossy(&chunk));
    }
    let statuses: Vec<String> = text
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .map(|d| {
            serde_json::from_str::<Value>(d).unwrap()["status"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(
        statuses.first().map(String::as_str),
        Some("IN_QUEUE"),
        "{text}"
    );
    assert_eq!(
        statuses.last().map(String::as_str),
        Some("COMPLETED"),
        "{text}"
    );
    assert!(text.contains("event: status"));
    agent.wait_status(&sync_id, "COMPLETED").await;

    // A completed job can no longer be cancelled.
    agent.wait_status(&first, "COMPLETED").await;
    let done = cancel(&first).await.unwrap();
    assert_eq!(done.status(), 409);
    assert_eq!(error_type(&done.json().await.unwrap()), "not_cancellable");

    // A synchronous run that finishes in time answers with the result.
    let quick = agent
        .call(Method::POST, "/v1/run/test/echo")
        .json(&json!({"input": {"text": "quick"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(quick.status(), 200);
    assert!(quick.headers().contains_key("x-meridian-cost"));
    assert_eq!(
        quick.json::<Value>().await.unwrap()["output"]["text"],
        "QUICK"
    );
    agent.stop().await;
}

#[tokio::test]
async fn shutdown_drains_refuses_new_jobs_and_results_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let gate = Gate::closed();
    let mut agent = start(dir.path(), TestModel::new("test/echo").gated(&gate), "").await;
    let running = agent
        .queue("test/echo", json!({"input": {"text": "a"}}))
        .await;
    agent.wait_status(&running, "IN_PROGRESS").await;
    let queued = agent
        .queue("test/echo", json!({"input": {"text": "b"}}))
        .await;

    agent.shutdown.cancel();
    support::eventually("healthz says draining", || async {
        agent.get("/healthz").await.0 == 503
    })
    .await;
    let refused = agent
        .call(Method::POST, "/v1/queue/test/echo")
        .json(&json!({"input": {"text": "late"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 503);
    assert_eq!(refused.headers()["x-meridian-refused"], "draining");
    assert!(
        agent
            .get("/metrics")
            .await
            .1
            .contains("meridian_agent_draining 1")
    );
    assert_eq!(
        agent.status(&queued).await["status"],
        "IN_QUEUE",
        "status is still served"
    );
    gate.open();
    agent.join().await;

    // Both jobs finished during the drain; a new agent on the same data serves the results.
    let agent = start(dir.path(), TestModel::new("test/echo"), "").await;
    for (id, text) in [(&running, "A"), (&queued, "B")] {
        let result: Value = agent
            .call(Method::GET, &format!("/v1/requests/{id}"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(result["status"], "COMPLETED");
        assert_eq!(result["output"]["text"], text);
    }
    let metrics = agent.get("/metrics").await.1;
    assert!(
        metrics.contains("meridian_agent_queue_depth{model=\"test/echo\"} 0"),
        "{metrics}"
    );
    agent.stop().await;
}
