//! Per-job usage records stay in their region: the admin reads them page by page through
//! the control plane, which asks the region's agent with the agent token and passes its
//! pages and refusals on; usage is the agents' to write and the admin's to read.

use std::sync::{Arc, Mutex};

use axum::extract::Query;
use axum::http::{HeaderMap, StatusCode as AxumStatus};
use axum::routing::get;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::server::{AGENT, Backend, TestServer, json, region};

/// What the stand-in agent was asked: the query and the bearer token.
type Asked = Arc<Mutex<Vec<(String, String)>>>;

/// A stand-in for a region agent's records endpoint: one page for the right token, a 400
/// for a bad cursor, a 401 for anything else. Returns its base URL.
async fn stand_in_agent(asked: Asked) -> String {
    let app = axum::Router::new().route(
        "/internal/v1/usage/records",
        get(
            move |headers: HeaderMap, Query(query): Query<Vec<(String, String)>>| {
                let asked = asked.clone();
                async move {
                    let token = headers
                        .get("authorization")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or_default()
                        .to_owned();
                    let text: Vec<String> = query.iter().map(|(k, v)| format!("{k}={v}")).collect();
                    asked.lock().unwrap().push((text.join("&"), token.clone()));
                    if token != format!("Bearer {AGENT}") {
                        return (
                            AxumStatus::UNAUTHORIZED,
                            axum::Json(json!({"error": {"type": "unauthorized", "message": "no"}})),
                        );
                    }
                    if query.iter().any(|(k, v)| k == "cursor" && v == "bad") {
                        return (
                            AxumStatus::BAD_REQUEST,
                            axum::Json(json!({"error": {"type": "bad_request", "message": "cursor \"bad\" is not a cursor"}})),
                        );
                    }
                    let page = json!({
                        "region": "eu-central",
                        "records": [{
                            "job_id": "eu-central.0123456789abcdef0123456789abcdef",
                            "tenant": "acme", "model": "meridian/esrgan-x4", "region": "eu-central",
                            "capacity": "reserved", "outcome": "completed", "unit": "megapixel",
                            "units_nanos": 1_000_000_000u64, "gpu_nanos": 400_000_000u64,
                            "price_per_unit": 0.002, "cost_nanos": 2_000_000u64,
                            "catalog_revision": 7, "finished_at_ms": 1_700_000_000_000u64
                        }],
                        "next": "journal:1"
                    });
                    (AxumStatus::OK, axum::Json(page))
                }
            },
        ),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    base
}

/// A loopback port nothing listens on.
fn closed_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

async fn put_region(server: &TestServer, id: &str, endpoint: &str) {
    let mut record = region(id, "eu");
    record["endpoint"] = json!(endpoint);
    let (status, body) = json(
        server
            .admin(Method::PUT, &format!("/admin/v1/regions/{id}"))
            .json(&record)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert!(status.is_success(), "{status}: {body}");
}

async fn records(server: &TestServer, query: &str) -> (StatusCode, Value) {
    json(
        server
            .admin(Method::GET, &format!("/admin/v1/usage/records{query}"))
            .send()
            .await
            .unwrap(),
    )
    .await
}

async fn records_are_read_from_their_region(backend: Backend) {
    let server = TestServer::start(backend).await;
    let asked = Asked::default();
    let agent = stand_in_agent(asked.clone()).await;
    put_region(&server, "eu-central", &agent).await;

    let (status, page) = records(
        &server,
        "?region=eu-central&tenant=acme&from_ms=5&limit=10&cursor=journal:0",
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{page}");
    assert_eq!(page["records"][0]["cost_nanos"], 2_000_000);
    assert_eq!(page["next"], "journal:1");
    let (query, token) = asked.lock().unwrap()[0].clone();
    assert_eq!(query, "tenant=acme&from_ms=5&cursor=journal:0&limit=10");
    assert_eq!(token, format!("Bearer {AGENT}"));

    // The agent's refusal of a bad query reaches the admin as it was.
    let (status, body) = records(&server, "?region=eu-central&cursor=bad").await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("cursor")
    );

    // Without a region, with an unknown one, or with one whose agent is down: clear errors.
    let (status, body) = records(&server, "?tenant=acme").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("?region="),
        "{body}"
    );
    let (status, _) = records(&server, "?region=mars-1").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = records(&server, "?region=eu-central&colour=red").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    put_region(
        &server,
        "eu-down",
        &format!("http://127.0.0.1:{}", closed_port()),
    )
    .await;
    let (status, body) = records(&server, "?region=eu-down").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["error"]["type"], "region_unavailable");
    server.stop().await;
}

/// An agent that does not take the control plane's agent token: a 503 that says so, never
/// the agent's 401 (which would read as the admin's token being wrong).
async fn an_agent_with_another_token_is_named(backend: Backend) {
    let server = TestServer::start(backend).await;
    let app = axum::Router::new().route(
        "/internal/v1/usage/records",
        get(|| async {
            (
                AxumStatus::UNAUTHORIZED,
                axum::Json(json!({"error": {"type": "unauthorized", "message": "no"}})),
            )
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    put_region(&server, "eu-central", &base).await;
    let (status, body) = records(&server, "?region=eu-central").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("agent_token"),
        "{body}"
    );

    // Usage is the agents' to write and the admin's to read.
    let (status, _) = json(
        server
            .admin(Method::POST, "/agent/v1/usage")
            .json(&json!({}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _) = json(
        server
            .call(
                AGENT,
                Method::GET,
                "/admin/v1/usage/records?region=eu-central",
            )
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    server.stop().await;
}

/// A stand-in for one instance's records endpoint: two pages of one record each, the job
/// naming the instance. Returns its base URL.
async fn instance_agent(instance: &'static str) -> String {
    let app = axum::Router::new().route(
        "/internal/v1/usage/records",
        get(
            move |Query(query): Query<Vec<(String, String)>>| async move {
                let second = query.iter().any(|(k, v)| k == "cursor" && v == "p2");
                let job = format!("eu-central.{instance}.{:032x}", u128::from(second));
                axum::Json(json!({
                    "region": "eu-central",
                    "records": [{
                        "job_id": job,
                        "tenant": "acme", "model": "meridian/esrgan-x4", "region": "eu-central",
                        "capacity": "reserved", "outcome": "completed", "unit": "megapixel",
                        "units_nanos": 1_000_000_000u64, "gpu_nanos": 400_000_000u64,
                        "price_per_unit": 0.002, "cost_nanos": 2_000_000u64,
                        "catalog_revision": 7, "finished_at_ms": 1_700_000_000_000u64
                    }],
                    "next": if second { Value::Null } else { json!("p2") }
                }))
            },
        ),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    base
}

/// A region of several instances: each keeps its own records, and the pages walk through
/// all of them, one instance after another; `instance=` reads one.
async fn records_are_read_from_every_instance_of_their_region(backend: Backend) {
    let server = TestServer::start(backend).await;
    put_region(&server, "eu-central", "").await;
    let agent = server.client(AGENT);
    for instance in ["gpu-2", "gpu-1"] {
        let report = control_plane_client::wire::AgentReport {
            healthy: true,
            instance: instance.into(),
            endpoint: instance_agent(instance).await,
            ..Default::default()
        };
        agent.register("eu-central", &report).await.unwrap();
    }
    let mut jobs = Vec::new();
    let mut query = "?region=eu-central".to_owned();
    for _ in 0..10 {
        let (status, page) = records(&server, &query).await;
        assert_eq!(status, StatusCode::OK, "{page}");
        for record in page["records"].as_array().unwrap() {
            jobs.push(record["job_id"].as_str().unwrap()[11..16].to_owned());
        }
        match page["next"].as_str() {
            Some(next) => query = format!("?region=eu-central&cursor={next}"),
            None => break,
        }
    }
    assert_eq!(jobs, ["gpu-1", "gpu-1", "gpu-2", "gpu-2"]);

    let (status, page) = records(&server, "?region=eu-central&instance=gpu-2").await;
    assert_eq!(status, StatusCode::OK, "{page}");
    assert_eq!(page["next"], "p2", "one instance: the agent's own cursor");
    let (status, body) = records(&server, "?region=eu-central&instance=gpu-9").await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    let (status, body) = records(&server, "?region=eu-central&cursor=p2").await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    server.stop().await;
}

crate::both_backends!(
    records_are_read_from_their_region,
    an_agent_with_another_token_is_named,
    records_are_read_from_every_instance_of_their_region
);
