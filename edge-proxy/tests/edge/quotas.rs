//! Quotas that count what a tenant holds rather than what it sends: the bound on jobs
//! queued or running (from the agents' counts), the rate of calls about existing
//! requests, and wrong keys from one address.

use contract::headers;
use serde_json::json;

use crate::support::{Answer, ESRGAN, TestEdge, World, cidr};

async fn queue(edge: &TestEdge, key: &str, extra: &[(&str, &str)]) -> Answer {
    queue_padded(edge, key, extra, 0).await
}

/// A submission with `padding` bytes more in its body (over 64 KiB: read whole and sent by
/// the edge's own client).
async fn queue_padded(
    edge: &TestEdge,
    key: &str,
    extra: &[(&str, &str)],
    padding: usize,
) -> Answer {
    let mut request = edge
        .http
        .post(format!("{}/v1/queue/{ESRGAN}", edge.base))
        .header("authorization", format!("Key {key}"))
        .json(&json!({"input": {"image": "aGVsbG8="}, "padding": ".".repeat(padding)}));
    for (name, value) in extra {
        request = request.header(*name, *value);
    }
    Answer::of(request.send().await.unwrap()).await
}

fn submissions(world: &World) -> usize {
    world
        .agents
        .values()
        .map(|a| a.seen().iter().filter(|s| s.method == "POST").count())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_job_bound_reaches_the_agent_whose_429_is_final_and_reported_jobs_refuse_early() {
    let world = World::start(&[]).await;
    let revision = world.report_jobs("us-west", &[("bounded", 1)]).await;
    let mut config = world.edge_config();
    config.max_body_bytes = 1 << 20;
    let edge = world.start_edge(config).await;
    edge.wait_for_revision(revision).await;
    let key = world.key("bounded").to_owned();

    // A client cannot raise its own bound; its idempotency key goes on. (A large body, sent
    // by the edge's own client.)
    let forged = [
        (headers::TENANT_MAX_JOBS, "1000"),
        (headers::IDEMPOTENCY_KEY, "order-1"),
    ];
    let first = queue_padded(&edge, &key, &forged, 100 * 1024).await;
    assert_eq!(first.status, 202, "{}", first.body);
    let region = first.header(headers::REGION).unwrap().to_owned();
    assert_ne!(region, "us-west");
    let seen = world.agent(&region).seen();
    let sent = |name: &str| {
        seen.last()
            .and_then(|s| s.headers.get(name))
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    assert_eq!(sent(headers::TENANT_MAX_JOBS).as_deref(), Some("2"));
    assert_eq!(sent(headers::TENANT_JOBS_ELSEWHERE).as_deref(), Some("1"));
    assert_eq!(sent(headers::IDEMPOTENCY_KEY).as_deref(), Some("order-1"));

    // Its agent now holds one job and us-west one: the agent refuses, and no other region
    // is tried. (A small body, sent through pingora.)
    let second = queue(&edge, &key, &[]).await;
    assert_eq!(second.status, 429, "{}", second.body);
    assert_eq!(second.error_type(), "concurrency_limited");
    assert_eq!(second.header(headers::REGION), Some(region.as_str()));
    assert_eq!(submissions(&world), 2, "no failover for the agent's 429");

    // A tenant without a bound is told none.
    let free = queue(&edge, world.key("acme"), &[]).await;
    assert_eq!(free.status, 202, "{}", free.body);
    let free_region = free.header(headers::REGION).unwrap();
    let last = world.agent(free_region).seen().pop().unwrap();
    assert!(!last.headers.contains_key(headers::TENANT_MAX_JOBS));

    // Once the reports say the tenant's jobs reach its bound, the edge refuses by itself.
    let revision = world.report_jobs("us-west", &[("bounded", 2)]).await;
    edge.wait_for_revision(revision).await;
    let before = submissions(&world);
    let early = queue(&edge, &key, &[]).await;
    assert_eq!(early.status, 429, "{}", early.body);
    assert_eq!(early.error_type(), "concurrency_limited");
    assert_eq!(early.header("retry-after"), Some("1"));
    assert_eq!(submissions(&world), before, "refused before any agent");
    edge.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_calls_have_their_own_rate_per_tenant() {
    let world = World::start(&[]).await;
    let mut config = world.edge_config();
    config.limits.reads = policy::quota::RateLimit {
        per_second: 0.1,
        burst: 3,
    };
    let edge = world.start_edge(config).await;
    let key = world.key("acme").to_owned();
    let job = queue(&edge, &key, &[]).await;
    assert_eq!(job.status, 202, "{}", job.body);
    let id = job.body["request_id"].as_str().unwrap().to_owned();
    let status = |key: String| {
        let edge = &edge;
        let id = id.clone();
        async move {
            Answer::of(
                edge.get(&format!("/v1/requests/{id}/status"), &key)
                    .await
                    .unwrap(),
            )
            .await
        }
    };
    for _ in 0..3 {
        let answer = status(key.clone()).await;
        assert_eq!(answer.status, 200, "{}", answer.body);
    }
    let limited = status(key.clone()).await;
    assert_eq!(limited.status, 429, "{}", limited.body);
    assert_eq!(limited.error_type(), "read_rate_limited");
    let retry_after: u64 = limited.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=10).contains(&retry_after), "{retry_after}");
    // Submissions are not counted against it, nor other tenants' calls.
    assert_eq!(queue(&edge, &key, &[]).await.status, 202);
    let euro = world.key("euro").to_owned();
    let theirs = status(euro).await;
    assert_eq!(
        theirs.status, 404,
        "another tenant's bucket: {}",
        theirs.body
    );
    edge.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_address_that_tries_many_wrong_keys_is_throttled() {
    let world = World::start(&[]).await;
    let mut config = world.edge_config();
    config.limits.failed_keys_per_minute = 3;
    config.trusted_proxies = vec![cidr("127.0.0.0/8")];
    let edge = world.start_edge(config).await;
    let from = |address: &'static str, key: String| {
        let edge = &edge;
        async move {
            Answer::of(
                edge.http
                    .get(format!("{}/v1/models", edge.base))
                    .header("authorization", format!("Key {key}"))
                    .header("x-forwarded-for", address)
                    .send()
                    .await
                    .unwrap(),
            )
            .await
        }
    };
    let attacker = "198.51.100.7";
    for i in 0..3 {
        let answer = from(attacker, format!("mk_live_wrong{i}")).await;
        assert_eq!(answer.status, 401, "{}", answer.body);
    }
    let throttled = from(attacker, "mk_live_wrong".into()).await;
    assert_eq!(throttled.status, 429, "{}", throttled.body);
    assert_eq!(throttled.error_type(), "too_many_failed_keys");
    let retry_after: u64 = throttled.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry_after), "{retry_after}");
    // Even a right key waits there; another address is not affected.
    let acme = world.key("acme").to_owned();
    assert_eq!(from(attacker, acme.clone()).await.status, 429);
    assert_eq!(from("198.51.100.8", acme).await.status, 200);
    let metrics = edge.metrics().await.unwrap();
    assert!(
        metrics.contains("meridian_edge_throttled_total{type=\"too_many_failed_keys\"} 2"),
        "{metrics}"
    );
    edge.stop().await;
}
