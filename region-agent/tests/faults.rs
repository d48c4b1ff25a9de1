//! The agent's own faults as an edge sees them, against an agent running in-process on port
//! 0 with the in-code test model: a failing disk is answered with a generic `500` that names
//! an error id and never a path; a disk short of free space refuses new jobs before
//! accepting them; an accepted job whose result cannot be stored ends failed with a reason.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::sync::Arc;

use region_agent::serving::test_model::{Gate, TestModel};
use reqwest::Method;
use serde_json::{Value, json};

use support::{Agent, config};

const ECHO: &str = "[[models]]\nid = \"test/echo\"\nweights_dir = \"unused\"\n";

async fn start(dir: &std::path::Path, model: TestModel, extra: &str) -> Agent {
    let prices = [("test/echo", "image", 0.25)];
    Agent::start(config(dir, ECHO, extra, &prices), vec![Arc::new(model)]).await
}

#[tokio::test]
async fn a_failing_disk_gets_a_500_without_paths_or_os_errors() {
    let dir = tempfile::tempdir().unwrap();
    let agent = start(dir.path(), TestModel::new("test/echo"), "").await;
    // The jobs directory becomes a file: storing a job fails (even for root).
    let jobs = dir.path().join("jobs");
    std::fs::remove_dir_all(&jobs).unwrap();
    std::fs::write(&jobs, b"not a directory").unwrap();
    let response = agent
        .call(Method::POST, "/v1/queue/test/echo")
        .json(&json!({"input": {"text": "a"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 500);
    let text = response.text().await.unwrap();
    let body: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(body["error"]["type"], "internal");
    let id = body["request_id"].as_str().unwrap();
    assert!(
        body["error"]["message"].as_str().unwrap().contains(id),
        "{text}"
    );
    let dir_text = dir.path().display().to_string();
    for leak in [dir_text.as_str(), "jobs", "directory", "os error", "/tmp"] {
        assert!(!text.contains(leak), "{leak:?} in {text}");
    }
    agent.stop().await;
}

#[tokio::test]
async fn a_disk_short_of_free_space_refuses_new_jobs_before_accepting_them() {
    let dir = tempfile::tempdir().unwrap();
    // More free space asked for than any disk has.
    let agent = start(
        dir.path(),
        TestModel::new("test/echo"),
        "min_free_disk_bytes = 9223372036854775807",
    )
    .await;
    for path in ["/v1/queue/test/echo", "/v1/run/test/echo"] {
        let response = agent
            .call(Method::POST, path)
            .json(&json!({"input": {"text": "a"}}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 503, "{path}");
        assert_eq!(response.headers()["x-meridian-refused"], "disk_full");
        assert!(response.headers().contains_key("retry-after"));
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["error"]["reason"], "disk_full", "{body}");
    }
    assert_eq!(
        std::fs::read_dir(dir.path().join("jobs")).unwrap().count(),
        0
    );
    agent.stop().await;
}

#[tokio::test]
async fn a_job_whose_result_cannot_be_stored_fails_with_a_reason() {
    let dir = tempfile::tempdir().unwrap();
    let gate = Gate::closed();
    let agent = start(dir.path(), TestModel::new("test/echo").gated(&gate), "").await;
    let id = agent
        .queue("test/echo", json!({"input": {"text": "a"}}))
        .await;
    agent.wait_status(&id, "IN_PROGRESS").await;
    // The job's files directory becomes a file: its output cannot be written.
    let files = dir.path().join("jobs").join(&id).join("files");
    std::fs::remove_dir_all(&files).unwrap();
    std::fs::write(&files, b"in the way").unwrap();
    gate.open();
    let status = agent.wait_status(&id, "FAILED").await;
    assert_eq!(status["error"]["type"], "storage", "{status}");
    let message = status["error"]["message"].as_str().unwrap();
    let dir_text = dir.path().display().to_string();
    for leak in [dir_text.as_str(), "files", "directory", "os error"] {
        assert!(!message.contains(leak), "{leak:?} in {message}");
    }
    // The job did not vanish: its result says why, and the next job is served.
    let result = agent
        .call(Method::GET, &format!("/v1/requests/{id}"))
        .send()
        .await
        .unwrap();
    assert_eq!(result.status(), 200);
    let result: Value = result.json().await.unwrap();
    assert_eq!(result["status"], "FAILED", "{result}");
    let next = agent
        .queue("test/echo", json!({"input": {"text": "b"}}))
        .await;
    agent.wait_status(&next, "COMPLETED").await;
    agent.stop().await;
}
