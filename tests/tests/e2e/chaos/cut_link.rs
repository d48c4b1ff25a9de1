//! An agent that took a job and then vanished — the edge's reused connection to it broke
//! before the answer, and new connections are refused — while another allowed region is up:
//! a submission with an `Idempotency-Key` may be sent again only to the region that may hold
//! its job, never to another, or one request makes two jobs and is billed twice.

use std::time::Duration;

use serde_json::json;
use tests::chaos::{Store, World, WorldSpec};
use tests::{MODEL, eventually};

use super::{NODE, TWO_REGIONS, records, spec};
use crate::LONDON_IP;

/// `POST /v1/run` of a small picture from London with `key` as its Idempotency-Key.
async fn run(world: &World, api_key: &str, key: &str) -> tests::Answer {
    let response = world
        .edge
        .http
        .post(format!("{}/v1/run/{MODEL}", world.edge.base))
        .header("authorization", format!("Key {api_key}"))
        .header("x-forwarded-for", LONDON_IP)
        .header(contract::headers::IDEMPOTENCY_KEY, key)
        .json(&json!({"input": {"image": tests::small_png_base64(8)}}))
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let region = headers
        .get(contract::headers::REGION)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let body = response.json().await.unwrap_or_default();
    tests::Answer {
        status,
        region,
        headers,
        body,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_keyed_submission_cut_mid_answer_is_never_sent_to_another_region() {
    let _turn = super::turn().await;
    let world = World::start(
        NODE,
        WorldSpec {
            proxied: Some("eu-west"),
            read_timeout: Duration::from_secs(30),
            ..spec(Store::Embedded, TWO_REGIONS)
        },
    )
    .await;
    let api_key = world.key("acme");
    // London runs in eu-west; the edge keeps the connection for the next request.
    let warm = run(&world, &api_key, "cut-link-warm").await;
    assert_eq!(
        (warm.status, warm.region.as_deref()),
        (200, Some("eu-west"))
    );

    let proxy = world.proxy.as_ref().unwrap();
    proxy.cut();
    let cut = run(&world, &api_key, "cut-link-job").await;
    eprintln!(
        "chaos | cut link | first answer {} from {:?}: {}",
        cut.status, cut.region, cut.body
    );
    // eu-west took the job (its agent runs on): it ends there. Its records are read through
    // its link, healed.
    proxy.heal();
    eventually("eu-west finished the job it took", || async {
        records(&world, "eu-west").await.len() == 2
    })
    .await;
    let elsewhere = records(&world, "eu-central").await;
    assert!(
        elsewhere.is_empty(),
        "one keyed request made a second job in eu-central (first answer {} from {:?}): {elsewhere:?}",
        cut.status,
        cut.region
    );
    assert_eq!(
        (cut.status, cut.body["error"]["type"].as_str()),
        (502, Some("bad_gateway")),
        "the job may exist: {}",
        cut.body
    );
    // The client sends it again with its key: the job eu-west took answers, nothing new.
    let again = run(&world, &api_key, "cut-link-job").await;
    assert_eq!(
        (again.status, again.region.as_deref()),
        (200, Some("eu-west")),
        "{}",
        again.body
    );
    assert!(records(&world, "eu-central").await.is_empty());
    assert_eq!(records(&world, "eu-west").await.len(), 2, "one job per key");
}
