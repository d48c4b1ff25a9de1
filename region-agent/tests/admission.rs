//! What an edge sees when it passes a tenant's job bound (`x-meridian-tenant-max-jobs`,
//! `x-meridian-tenant-jobs-elsewhere`) and a client's `Idempotency-Key`, against an agent
//! running in-process on port 0 with the in-code test model.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::sync::Arc;

use contract::headers;
use region_agent::serving::test_model::{Gate, TestModel};
use reqwest::Method;
use serde_json::{Value, json};

use support::{Agent, config};

const ECHO: &str = "[[models]]\nid = \"test/echo\"\nweights_dir = \"unused\"\n";

async fn start(dir: &std::path::Path, model: TestModel) -> Agent {
    let prices = [("test/echo", "image", 0.25)];
    Agent::start(config(dir, ECHO, "", &prices), vec![Arc::new(model)]).await
}

fn jobs_on_disk(dir: &std::path::Path) -> usize {
    std::fs::read_dir(dir.join("jobs")).unwrap().count()
}

fn bounded(
    agent: &Agent,
    tenant: &str,
    max: u32,
    elsewhere: Option<u32>,
) -> reqwest::RequestBuilder {
    let mut request = agent
        .as_tenant(tenant, Method::POST, "/v1/queue/test/echo")
        .header(headers::TENANT_MAX_JOBS, max.to_string())
        .json(&json!({"input": {"text": "x"}}));
    if let Some(elsewhere) = elsewhere {
        request = request.header(headers::TENANT_JOBS_ELSEWHERE, elsewhere.to_string());
    }
    request
}

#[tokio::test]
async fn twenty_submissions_for_a_bound_of_sixteen_accept_sixteen() {
    let dir = tempfile::tempdir().unwrap();
    let gate = Gate::closed();
    let agent = start(dir.path(), TestModel::new("test/echo").gated(&gate)).await;
    let answers =
        futures_util::future::join_all((0..20).map(|_| bounded(&agent, "acme", 16, None).send()))
            .await;
    let mut accepted = Vec::new();
    let mut limited = 0;
    for answer in answers {
        let answer = answer.unwrap();
        match answer.status().as_u16() {
            202 => {
                let body: Value = answer.json().await.unwrap();
                accepted.push(body["request_id"].as_str().unwrap().to_owned());
            }
            429 => {
                assert_eq!(answer.headers()["retry-after"], "1");
                assert!(
                    !answer.headers().contains_key(headers::REFUSED),
                    "a tenant at its bound is a final answer, not a refusal to retry elsewhere"
                );
                let body: Value = answer.json().await.unwrap();
                assert_eq!(body["error"]["type"], "concurrency_limited", "{body}");
                limited += 1;
            }
            other => panic!("unexpected {other}"),
        }
    }
    assert_eq!((accepted.len(), limited), (16, 4));
    assert_eq!(jobs_on_disk(dir.path()), 16);

    // The jobs the edge counts elsewhere take places too; other tenants are not held back.
    let other = bounded(&agent, "globex", 16, Some(15))
        .send()
        .await
        .unwrap();
    assert_eq!(other.status(), 202);
    let full = bounded(&agent, "globex", 16, Some(15))
        .send()
        .await
        .unwrap();
    assert_eq!(full.status(), 429);
    for bad in ["-1", "many", "99999999999"] {
        let response = agent
            .call(Method::POST, "/v1/queue/test/echo")
            .header(headers::TENANT_MAX_JOBS, bad)
            .json(&json!({"input": {"text": "x"}}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 400, "{bad}");
    }

    // Once the jobs finish there is room again.
    gate.open();
    for id in &accepted {
        agent.wait_status(id, "COMPLETED").await;
    }
    let again = bounded(&agent, "acme", 16, None).send().await.unwrap();
    assert_eq!(again.status(), 202);
    agent.stop().await;
}

#[tokio::test]
async fn a_synchronous_run_counts_while_it_runs() {
    let dir = tempfile::tempdir().unwrap();
    let gate = Gate::closed();
    let agent = start(dir.path(), TestModel::new("test/echo").gated(&gate)).await;
    let run = agent
        .call(Method::POST, "/v1/run/test/echo")
        .header(headers::TENANT_MAX_JOBS, "1")
        .json(&json!({"input": {"text": "sync"}}))
        .send();
    let running = tokio::spawn(run);
    support::eventually("the synchronous job is accepted", || async {
        jobs_on_disk(dir.path()) == 1
    })
    .await;
    let second = bounded(&agent, "acme", 1, None).send().await.unwrap();
    assert_eq!(second.status(), 429);
    gate.open();
    let done = running.await.unwrap().unwrap();
    assert_eq!(done.status(), 200);
    let third = bounded(&agent, "acme", 1, None).send().await.unwrap();
    assert_eq!(third.status(), 202);
    agent.stop().await;
}

fn keyed(agent: &Agent, path: &str, key: &str, text: &str) -> reqwest::RequestBuilder {
    agent
        .call(Method::POST, path)
        .header(headers::IDEMPOTENCY_KEY, key)
        .json(&json!({"input": {"text": text}}))
}

#[tokio::test]
async fn an_idempotency_key_names_one_job_even_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let gate = Gate::closed();
    let mut agent = start(dir.path(), TestModel::new("test/echo").gated(&gate)).await;
    let queue = "/v1/queue/test/echo";
    let first = keyed(&agent, queue, "order-17", "a").send().await.unwrap();
    assert_eq!(first.status(), 202);
    let first_id = first.headers()[headers::REQUEST_ID].clone();
    let first: Value = first.json().await.unwrap();
    let again = keyed(&agent, queue, "order-17", "a").send().await.unwrap();
    assert_eq!(again.status(), 202);
    assert_eq!(again.headers()[headers::REQUEST_ID], first_id);
    assert_eq!(
        again.json::<Value>().await.unwrap(),
        first,
        "the same answer"
    );
    assert_eq!(jobs_on_disk(dir.path()), 1);

    // Another body (or model) under the same key is refused; nothing is created.
    let reused = keyed(&agent, queue, "order-17", "b").send().await.unwrap();
    assert_eq!(reused.status(), 422);
    let body: Value = reused.json().await.unwrap();
    assert_eq!(body["error"]["type"], "idempotency_key_reused", "{body}");
    // Another tenant's key is its own.
    let globex = agent
        .as_tenant("globex", Method::POST, queue)
        .header(headers::IDEMPOTENCY_KEY, "order-17")
        .json(&json!({"input": {"text": "a"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(globex.status(), 202);
    assert_ne!(globex.headers()[headers::REQUEST_ID], first_id);
    let long = "k".repeat(headers::IDEMPOTENCY_KEY_MAX_LEN + 1);
    for bad in [long.as_str(), "two words", ""] {
        let response = keyed(&agent, queue, bad, "a").send().await.unwrap();
        assert_eq!(response.status(), 400, "key {bad:?}");
    }
    assert_eq!(jobs_on_disk(dir.path()), 2);

    // A synchronous call with the key waits for the same job and answers with its result.
    let id = first["request_id"].as_str().unwrap().to_owned();
    let waiting = tokio::spawn(keyed(&agent, "/v1/run/test/echo", "order-17", "a").send());
    gate.open();
    let result = waiting.await.unwrap().unwrap();
    assert_eq!(result.status(), 200);
    assert_eq!(result.headers()[headers::REQUEST_ID], first_id);
    assert_eq!(result.json::<Value>().await.unwrap()["output"]["text"], "A");

    // After a restart the key still names the job.
    agent.shutdown.cancel();
    agent.join().await;
    let agent = start(dir.path(), TestModel::new("test/echo")).await;
    let after = keyed(&agent, queue, "order-17", "a").send().await.unwrap();
    assert_eq!(after.status(), 202);
    assert_eq!(
        after.json::<Value>().await.unwrap()["request_id"],
        id.as_str()
    );
    let run = keyed(&agent, "/v1/run/test/echo", "order-17", "a")
        .send()
        .await
        .unwrap();
    assert_eq!(run.status(), 200);
    assert_eq!(run.headers()[headers::REQUEST_ID], first_id);
    assert_eq!(jobs_on_disk(dir.path()), 2);
    agent.stop().await;
}
