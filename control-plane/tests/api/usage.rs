//! Usage ingestion: idempotent by job id, checked whole, readable by the admin.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::server::{Backend, TestServer, json};

fn record(job: &str, tenant: &str, cost: f64) -> Value {
    json!({
        "job_id": job,
        "tenant": tenant,
        "model": "meridian/esrgan-x4",
        "region": "eu-west",
        "units": 2.0,
        "gpu_seconds": 0.8,
        "capacity": "reserved",
        "cost": cost,
        "finished_at_ms": 1_700_000_000_000u64
    })
}

async fn usage_is_idempotent_by_job_id(backend: Backend) {
    let server = TestServer::start(backend).await;
    let batch = json!({"records": [record("eu-west.a1", "acme", 0.004), record("eu-west.a2", "acme", 0.004)]});
    let (status, receipt) = json(
        server
            .agent("/agent/v1/usage")
            .json(&batch)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(receipt, json!({"accepted": 2, "duplicates": 0}));
    // A redelivery with one new record stores only the new one.
    let again = json!({"records": [record("eu-west.a2", "acme", 0.004), record("eu-west.b1", "other", 1.0)]});
    let (_, receipt) = json(
        server
            .agent("/agent/v1/usage")
            .json(&again)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(receipt, json!({"accepted": 1, "duplicates": 1}));

    let (status, listed) = json(
        server
            .admin(Method::GET, "/admin/v1/usage/records?tenant=acme")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let jobs: Vec<&str> = listed["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["job_id"].as_str().unwrap())
        .collect();
    assert_eq!(jobs, ["eu-west.a1", "eu-west.a2"]);
    let (_, all) = json(
        server
            .admin(Method::GET, "/admin/v1/usage/records")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(all["items"].as_array().unwrap().len(), 3);

    // A bad batch is refused whole, naming each problem.
    let bad =
        json!({"records": [record("eu-west.c1", "acme", 0.1), record("../etc", "acme", -1.0)]});
    let (status, body) = json(
        server
            .agent("/agent/v1/usage")
            .json(&bad)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    let paths: Vec<&str> = body["error"]["details"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["path"].as_str().unwrap())
        .collect();
    assert_eq!(paths, ["records[1].job_id", "records[1].cost"]);
    let (_, all) = json(
        server
            .admin(Method::GET, "/admin/v1/usage/records")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        all["items"].as_array().unwrap().len(),
        3,
        "nothing of a refused batch is stored"
    );

    // Usage is the agents' to write and the admin's to read.
    let (status, _) = json(
        server
            .admin(Method::POST, "/agent/v1/usage")
            .json(&batch)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _) = json(
        server
            .call(crate::server::AGENT, Method::GET, "/admin/v1/usage/records")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    // Usage records are not part of the edge snapshot.
    let snapshot = server
        .edge("/edge/v1/snapshot")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(!snapshot.contains("eu-west.a1"));
    server.stop().await;
}

crate::both_backends!(usage_is_idempotent_by_job_id);
