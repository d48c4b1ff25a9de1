//! Versions skew across regions: a control plane reads the messages of agents one release
//! behind (schema 1.0, as `tests/data/heartbeat-1.0.json` was sent before messages carried a
//! version) and one minor version ahead (fields it does not know), and refuses only a major
//! version it does not read, naming both versions.

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::server::{Backend, TestServer, json};

const HEARTBEAT_1_0: &str = include_str!("../data/heartbeat-1.0.json");

async fn post(server: &TestServer, path: &str, body: &Value) -> (StatusCode, Value) {
    json(server.agent(path).json(body).send().await.unwrap()).await
}

/// The live status an edge receives for `region`.
async fn live(server: &TestServer, region: &str) -> Value {
    let (_, snapshot) = json(server.edge("/edge/v1/snapshot").send().await.unwrap()).await;
    assert_eq!(snapshot["schema"], "1.2", "the snapshot says its version");
    snapshot["regions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["region"] == region)
        .cloned()
        .unwrap_or(Value::Null)
}

async fn agents_of_other_versions_are_read(backend: Backend) {
    let server = TestServer::start(backend).await;
    // One release behind: no schema field, no catalog revision.
    let older: Value = serde_json::from_str(HEARTBEAT_1_0).unwrap();
    let (status, body) = post(&server, "/agent/v1/regions/eu-west/register", &older).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = post(&server, "/agent/v1/regions/eu-west/heartbeat", &older).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let status = live(&server, "eu-west").await;
    assert_eq!(status["report"]["free_reserved"], 2);
    assert_eq!(
        status["report"]["models"]["meridian/esrgan-x4"]["queue_depth"],
        3
    );

    // A minor version ahead: fields this build does not know, at every level, are ignored.
    let mut newer = older.clone();
    newer["schema"] = json!("1.7");
    newer["gpu_temperature_c"] = json!(61);
    newer["free_reserved"] = json!(1);
    newer["models"]["meridian/esrgan-x4"]["batch_fill"] = json!(0.8);
    let (status, body) = post(&server, "/agent/v1/regions/us-east/register", &newer).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(live(&server, "us-east").await["report"]["free_reserved"], 1);

    // A usage batch a minor version ahead is applied; its unknown fields are ignored.
    let batch = json!({
        "schema": "1.3", "region": "eu-west", "ledger": "0123456789abcdef0123456789abcdef",
        "seq": 1, "signature": "later",
        "rows": [{
            "tenant": "acme", "model": "meridian/esrgan-x4", "capacity": "reserved",
            "hour_ms": 0, "jobs": 2, "failed_jobs": 0, "units_nanos": 1, "gpu_nanos": 2,
            "cost_nanos": 3, "queue_ms_p50": 12
        }]
    });
    let (status, body) = post(&server, "/agent/v1/usage", &batch).await;
    assert_eq!(
        (status, body["applied"].as_bool()),
        (StatusCode::OK, Some(true)),
        "{body}"
    );

    // A major version ahead is refused with both versions named; nothing is written.
    let mut breaking = older.clone();
    breaking["schema"] = json!("2.0");
    breaking["free_reserved"] = json!(9);
    let (status, body) = post(&server, "/agent/v1/regions/eu-west/heartbeat", &breaking).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["error"]["type"], "unsupported_schema");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("heartbeat schema 2.0") && message.contains("1.x"),
        "{message}"
    );
    assert_eq!(live(&server, "eu-west").await["report"]["free_reserved"], 2);
    server.stop().await;
}

crate::both_backends!(agents_of_other_versions_are_read);
