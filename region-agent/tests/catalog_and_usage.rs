//! The catalog and the usage ledger as the edge and the control plane see them, against an
//! agent running in-process with the in-code test model: the copy kept on disk serves while
//! the control plane is down, `no_catalog` before any copy, `model_not_served` when the
//! catalog bills a model in another unit, and the per-job records the control plane reads
//! page by page (`GET /internal/v1/usage/records`), whose costs equal the `x-meridian-cost`
//! headers to the billionth.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::sync::Arc;

use contract::{Nanos, RegionId, headers};
use control_plane_client::wire::{UsageRecord, UsageRecordPage};
use region_agent::catalog::source;
use region_agent::serving::test_model::TestModel;
use reqwest::Method;
use serde_json::{Value, json};

use support::{Agent, catalog_toml, config};

const AGENT_TOKEN: &str = "agent-token-0123456789";
const ECHO: &str = "[[models]]\nid = \"test/echo\"\nweights_dir = \"unused\"\n";

/// A `[control_plane]` table for a control plane that refuses connections.
async fn unreachable_control_plane() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    drop(listener);
    format!(
        "[control_plane]\nurl = \"http://{address}\"\nagent_token = \"{AGENT_TOKEN}\"\n\
         heartbeat_interval_ms = 100\nrequest_timeout_ms = 1000\n"
    )
}

/// Keeps a catalog copy of `revision` in `data_dir`, as a control plane once gave it.
fn keep_catalog(data_dir: &std::path::Path, revision: i64, unit: &str, price: f64) {
    let region = RegionId::new("eu-west").unwrap();
    let text = catalog_toml(&[("test/echo", unit, price)]);
    let mut catalog = source::from_toml(&text, &region).unwrap();
    catalog.revision = revision;
    source::save_cache(data_dir, &catalog).unwrap();
}

async fn start(dir: &std::path::Path, extra: &str) -> Agent {
    let config = config(dir, ECHO, extra, &[("test/echo", "image", 0.5)]);
    Agent::start(config, vec![Arc::new(TestModel::new("test/echo"))]).await
}

/// `GET /internal/v1/usage/records?{query}` with `token`: (status, body).
async fn records(agent: &Agent, query: &str, token: Option<&str>) -> (u16, Value) {
    let mut request = agent
        .http
        .get(format!("{}/internal/v1/usage/records?{query}", agent.base));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap())
}

async fn page(agent: &Agent, query: &str) -> UsageRecordPage {
    let (status, body) = records(agent, query, Some(AGENT_TOKEN)).await;
    assert_eq!(status, 200, "{body}");
    serde_json::from_value(body).unwrap()
}

/// Runs a job synchronously for `tenant`; returns its id and its `x-meridian-cost` header.
async fn run(agent: &Agent, tenant: &str, text: &str) -> (String, String) {
    let (id, cost) = agent.run(tenant, "test/echo", json!({"text": text})).await;
    (id, cost.to_string())
}

#[tokio::test]
async fn the_kept_catalog_serves_while_the_control_plane_is_down() {
    let dir = tempfile::tempdir().unwrap();
    keep_catalog(dir.path(), 42, "image", 0.3);
    let agent = start(dir.path(), &unreachable_control_plane().await).await;
    let mut costs = Vec::new();
    for (i, tenant) in ["acme", "globex", "acme", "acme", "globex"]
        .iter()
        .enumerate()
    {
        let (id, cost) = run(&agent, tenant, &format!("job {i}")).await;
        costs.push((id, tenant.to_string(), cost));
    }
    assert!(
        agent
            .get("/metrics")
            .await
            .1
            .contains("meridian_agent_catalog_revision 42")
    );

    // Every job's record names the kept copy, and its cost is the header's, exactly.
    let all = page(&agent, "").await;
    assert_eq!(
        (all.region.as_str(), all.records.len(), all.next),
        ("eu-west", 5, None)
    );
    for ((id, tenant, header), record) in costs.iter().zip(&all.records) {
        assert_eq!(
            (&record.job_id, &record.tenant),
            (id, tenant),
            "oldest first"
        );
        assert_eq!(record.cost_nanos.to_string(), *header);
        assert_eq!(record.cost_nanos, Nanos(300_000_000));
        assert_eq!((record.catalog_revision, record.price_per_unit), (42, 0.3));
        assert_eq!(record.unit, "image");
    }

    // Page by page with a filter.
    let mut seen: Vec<UsageRecord> = Vec::new();
    let mut query = "tenant=acme&limit=2".to_owned();
    loop {
        let page = page(&agent, &query).await;
        seen.extend(page.records);
        match page.next {
            Some(next) => query = format!("tenant=acme&limit=2&cursor={next}"),
            None => break,
        }
    }
    let acme: Vec<_> = all
        .records
        .iter()
        .filter(|r| r.tenant == "acme")
        .cloned()
        .collect();
    assert_eq!(seen, acme);
    let after = all.records[2].finished_at_ms;
    let later = page(&agent, &format!("from_ms={after}&model=test/echo")).await;
    assert!(later.records.iter().all(|r| r.finished_at_ms >= after));
    assert!(later.records.len() >= 3);
    agent.stop().await;
}

#[tokio::test]
async fn the_records_call_needs_the_agent_token_and_a_good_query() {
    let dir = tempfile::tempdir().unwrap();
    keep_catalog(dir.path(), 1, "image", 0.3);
    let agent = start(dir.path(), &unreachable_control_plane().await).await;
    for token in [None, Some("agent-token-wrong-0000")] {
        let (status, body) = records(&agent, "", token).await;
        assert_eq!(
            (status, body["error"]["type"].as_str()),
            (401, Some("unauthorized"))
        );
    }
    for query in [
        "limit=0",
        "limit=1001",
        "tenant=ACME",
        "model=esrgan",
        "cursor=not-a-cursor",
        "from_ms=10&to_ms=5",
        "from_ms=yesterday",
        "region=eu-west",
    ] {
        let (status, body) = records(&agent, query, Some(AGENT_TOKEN)).await;
        assert_eq!(status, 400, "{query}: {body}");
        assert_eq!(body["error"]["type"], "bad_request", "{query}");
    }
    agent.stop().await;

    // Without a control plane, nobody may read them.
    let dir = tempfile::tempdir().unwrap();
    let alone = start(dir.path(), "").await;
    let (status, _) = records(&alone, "", Some(AGENT_TOKEN)).await;
    assert_eq!(status, 401);
    alone.stop().await;
}

#[tokio::test]
async fn without_any_catalog_jobs_are_refused_with_no_catalog() {
    let dir = tempfile::tempdir().unwrap();
    let agent = start(dir.path(), &unreachable_control_plane().await).await;
    let response = agent
        .call(Method::POST, "/v1/queue/test/echo")
        .json(&json!({"input": {"text": "a"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 503);
    assert_eq!(response.headers()[headers::REFUSED], "no_catalog");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["reason"], "no_catalog");
    assert_eq!(
        std::fs::read_dir(dir.path().join("jobs")).unwrap().count(),
        0
    );
    assert!(
        agent
            .get("/metrics")
            .await
            .1
            .contains("meridian_agent_catalog_revision -1")
    );
    agent.stop().await;
}

#[tokio::test]
async fn a_model_the_catalog_bills_in_another_unit_is_not_served() {
    let dir = tempfile::tempdir().unwrap();
    // The test model measures images; this catalog bills it per second of audio.
    let config = config(dir.path(), ECHO, "", &[("test/echo", "audio_second", 0.5)]);
    let agent = Agent::start(config, vec![Arc::new(TestModel::new("test/echo"))]).await;
    let response = agent
        .call(Method::POST, "/v1/run/test/echo")
        .json(&json!({"input": {"text": "a"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 503);
    assert_eq!(response.headers()[headers::REFUSED], "model_not_served");
    agent.stop().await;
}
