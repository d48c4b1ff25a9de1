//! What the edge refuses before a request leaves it: keys, quotas, body size, residency,
//! capacity — each with its status and JSON error.

use serde_json::json;

use crate::support::{Behaviour, ESRGAN, World, eventually, run_esrgan};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_missing_and_revoked_keys_get_401() {
    let world = World::start(&[]).await;
    let edge = world.start_edge(world.edge_config()).await;
    let acme = world.key("acme").to_owned();

    let swap = if acme.ends_with('a') { 'b' } else { 'a' };
    let forged = format!("{}{swap}", &acme[..acme.len() - 1]);
    for key in ["mk_live_nope", "", forged.as_str()] {
        let answer = run_esrgan(&edge, key, None).await;
        assert_eq!(answer.status, 401, "{key:?}: {}", answer.body);
        assert_eq!(answer.error_type(), "unauthorized");
    }
    let anonymous = edge
        .http
        .post(format!("{}/v1/run/{ESRGAN}", edge.base))
        .json(&json!({"input": {}}))
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), 401);
    assert!(world.agents.values().all(|a| a.seen().is_empty()));

    // The key works until it is revoked; then the next snapshot makes it a 401.
    assert_eq!(run_esrgan(&edge, &acme, None).await.status, 200);
    let admin = world.client(crate::support::ADMIN);
    let keys = admin.keys("acme").await.unwrap();
    admin.revoke_key("acme", &keys.items[0].id).await.unwrap();
    eventually("the revocation reaches the edge", || async {
        run_esrgan(&edge, &acme, None).await.status == 401
    })
    .await;
    edge.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_the_rate_limit_gets_429_with_retry_after() {
    let world = World::start(&[]).await;
    let edge = world.start_edge(world.edge_config()).await;
    // `slow` may send 0.2 requests per second with a burst of 1.
    let first = run_esrgan(&edge, world.key("slow"), None).await;
    assert_eq!(first.status, 200, "{}", first.body);
    let second = run_esrgan(&edge, world.key("slow"), None).await;
    assert_eq!(second.status, 429, "{}", second.body);
    assert_eq!(second.error_type(), "rate_limited");
    let retry_after: u64 = second.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=5).contains(&retry_after), "{retry_after}");
    // Another tenant is not affected.
    assert_eq!(run_esrgan(&edge, world.key("acme"), None).await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_over_the_limit_gets_413() {
    let world = World::start(&[]).await;
    let edge = world.start_edge(world.edge_config()).await;
    let big = "a".repeat(100 * 1024);
    let response = edge
        .http
        .post(format!("{}/v1/queue/{ESRGAN}", edge.base))
        .header("authorization", format!("Key {}", world.key("acme")))
        .json(&json!({"input": {"image": big}}))
        .send()
        .await
        .unwrap();
    let answer = crate::support::Answer::of(response).await;
    assert_eq!(answer.status, 413, "{}", answer.body);
    assert_eq!(answer.error_type(), "request_too_large");
    assert!(world.agents.values().all(|a| a.seen().is_empty()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn residency_without_a_serving_region_is_451_and_no_live_region_is_503() {
    let world = World::start(&[]).await;
    let edge = world.start_edge(world.edge_config()).await;
    // `brit` may only use uk-south, which does not serve ESRGAN.
    let answer = run_esrgan(&edge, world.key("brit"), None).await;
    assert_eq!(answer.status, 451, "{}", answer.body);
    assert_eq!(answer.error_type(), "residency");
    let message = answer.body["error"]["message"].as_str().unwrap();
    assert!(message.contains("residency"), "{message}");

    // `nippon` may only use jp-east, whose agent never reported.
    let answer = run_esrgan(&edge, world.key("nippon"), None).await;
    assert_eq!(answer.status, 503, "{}", answer.body);
    assert_eq!(answer.error_type(), "unavailable");
    let message = answer.body["error"]["message"].as_str().unwrap();
    assert!(message.contains("jp-east"), "{message}");
    assert!(world.agents.values().all(|a| a.seen().is_empty()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn models_lists_what_the_key_may_call_with_prices_and_unknown_calls_are_404() {
    let world = World::start(&[("us-west", Behaviour::Down)]).await;
    let edge = world.start_edge(world.edge_config()).await;
    let answer =
        crate::support::Answer::of(edge.get("/v1/models", world.key("euro")).await.unwrap()).await;
    assert_eq!(answer.status, 200);
    let models = answer.body["models"].as_array().unwrap();
    let esrgan = models.iter().find(|m| m["id"] == ESRGAN).unwrap();
    assert_eq!(esrgan["price_per_unit"], 0.002);
    assert_eq!(esrgan["unit"], "megapixel");
    let mut regions: Vec<&str> = esrgan["regions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_str().unwrap())
        .collect();
    regions.sort_unstable();
    assert_eq!(
        regions,
        ["eu-central", "eu-west"],
        "only regions inside the residency"
    );
    assert!(models.iter().all(|m| m["id"] != "meridian/nothing"));

    let unknown = crate::support::Answer::of(
        edge.http
            .post(format!("{}/v1/run/meridian/nothing", edge.base))
            .header("authorization", format!("Key {}", world.key("euro")))
            .body("{}")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(unknown.status, 404);
    assert_eq!(unknown.error_type(), "not_found");
    let elsewhere = crate::support::Answer::of(
        edge.get("/admin/v1/regions", world.key("euro"))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(elsewhere.status, 404);
}
