//! Where requests go: by the client's location, along the candidate list on failure (never
//! outside the tenant's residency), around open circuits, and back to the region that holds
//! a request.

use testkit::stand_in::STAND_IN_COST;

use crate::support::{AGENT_EDGE, Answer, Behaviour, ESRGAN, World, cidr, run_esrgan};

/// London and a place near Seattle in MaxMind's test database.
const LONDON: &str = "81.2.69.142";
const NEAR_SEATTLE: &str = "216.160.83.56";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_for_from_a_trusted_proxy_picks_the_nearest_region() {
    let world = World::start(&[]).await;
    let mut config = world.edge_config();
    config.trusted_proxies = vec![cidr("127.0.0.0/8")];
    let trusting = world.start_edge(config).await;
    let key = world.key("acme");

    let london = run_esrgan(&trusting, key, Some(LONDON)).await;
    assert_eq!(london.status, 200, "{}", london.body);
    assert_eq!(london.header("x-meridian-region"), Some("eu-west"));
    assert_eq!(london.body["tenant"], "acme");
    let seattle = run_esrgan(&trusting, key, Some(&format!("{NEAR_SEATTLE}, 127.0.0.1"))).await;
    assert_eq!(seattle.header("x-meridian-region"), Some("us-west"));
    // The request id and the cost come from the agent.
    assert!(
        seattle
            .header("x-request-id")
            .unwrap()
            .starts_with("us-west.")
    );
    assert_eq!(
        seattle.header("x-meridian-cost"),
        Some(STAND_IN_COST.to_string().as_str())
    );

    // An edge that trusts no proxy ignores the header: the client is on loopback, unknown
    // to geo-IP, so the edge's own place (Frankfurt) counts.
    let wary = world.start_edge(world.edge_config()).await;
    let ignored = run_esrgan(&wary, key, Some(NEAR_SEATTLE)).await;
    assert_eq!(ignored.header("x-meridian-region"), Some("eu-central"));

    // The agent saw the tenant and the edge's token, never the client's key.
    let seen = world.agent("us-west").seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].tenant.as_deref(), Some("acme"));
    assert_eq!(
        seen[0].edge_token.as_deref(),
        Some(crate::support::AGENT_EDGE)
    );
    assert!(!seen[0].authorization);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_on_connect_failure_and_refusal_stays_inside_residency() {
    // The edge is in Frankfurt: eu-central is first for `euro`, then eu-west.
    let world = World::start(&[("eu-central", Behaviour::Down)]).await;
    let edge = world.start_edge(world.edge_config()).await;
    let key = world.key("euro");

    let moved = run_esrgan(&edge, key, None).await;
    assert_eq!(moved.status, 200, "{}", moved.body);
    assert_eq!(moved.header("x-meridian-region"), Some("eu-west"));

    // eu-west now refuses: both allowed regions are out, and the request is not sent to the
    // US regions, which would take it.
    world.agent("eu-west").set_refusing(true);
    let refused = run_esrgan(&edge, key, None).await;
    assert_eq!(refused.status, 503, "{}", refused.body);
    // The last allowed region's refusal is the answer: the agent's own 503.
    assert_eq!(refused.header("x-meridian-refused"), Some("queue_full"));
    assert_eq!(refused.header("x-meridian-region"), Some("eu-west"));
    for region in ["us-west", "us-east", "uk-south", "jp-east"] {
        assert!(world.agent(region).seen().is_empty(), "{region} was used");
    }

    // A refusal by the first candidate moves the job on along the list: from Dublin, `acme`
    // (residency: anywhere) goes to eu-west (refusing), eu-central (down), then the US.
    let mut config = world.edge_config();
    config.location = policy::Location::new(53.35, -6.26);
    let dublin = world.start_edge(config).await;
    let posts = |region: &str| {
        world
            .agent(region)
            .seen()
            .iter()
            .filter(|s| s.method == "POST")
            .count()
    };
    let before = posts("eu-west");
    let answer = run_esrgan(&dublin, world.key("acme"), None).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_eq!(answer.header("x-meridian-region"), Some("us-east"));
    assert_eq!(posts("eu-west"), before + 1, "eu-west refused it once");
    assert_eq!(posts("us-east"), 1);
    let metrics = dublin.metrics().await.unwrap();
    assert!(
        metrics.contains("meridian_edge_retries_total{reason=\"refused\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("meridian_edge_retries_total{reason=\"connect\"} 1"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_breaker_opens_after_consecutive_failures() {
    let world = World::start(&[("eu-central", Behaviour::Down)]).await;
    let mut config = world.edge_config();
    config.breaker_failures = 2;
    let edge = world.start_edge(config).await;
    let key = world.key("euro");
    for _ in 0..2 {
        let answer = run_esrgan(&edge, key, None).await;
        assert_eq!(answer.header("x-meridian-region"), Some("eu-west"));
    }
    let metrics = edge.metrics().await.unwrap();
    assert!(
        metrics.contains("meridian_edge_circuit_state{region=\"eu-central\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("meridian_edge_retries_total{reason=\"connect\"} 2"),
        "{metrics}"
    );
    // With the circuit open, eu-central is not tried at all: no further connect retry.
    let answer = run_esrgan(&edge, key, None).await;
    assert_eq!(answer.header("x-meridian-region"), Some("eu-west"));
    let metrics = edge.metrics().await.unwrap();
    assert!(
        metrics.contains("meridian_edge_retries_total{reason=\"connect\"} 2"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_id_calls_go_to_the_region_that_holds_the_request() {
    let world = World::start(&[]).await;
    let mut config = world.edge_config();
    config.trusted_proxies = vec![cidr("127.0.0.1/32")];
    let edge = world.start_edge(config).await;
    let queued = Answer::of(
        edge.http
            .post(format!("{}/v1/queue/{}", edge.base, crate::support::ESRGAN))
            .header("authorization", format!("Key {}", world.key("acme")))
            .header("x-forwarded-for", NEAR_SEATTLE)
            .body(r#"{"input":{}}"#)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(queued.status, 202, "{}", queued.body);
    let id = queued.body["request_id"].as_str().unwrap().to_owned();
    assert!(id.starts_with("us-west."), "{id}");

    // From anywhere, the status comes from us-west.
    let status = Answer::of(
        edge.get(&format!("/v1/requests/{id}/status"), world.key("acme"))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status.status, 200, "{}", status.body);
    assert_eq!(status.header("x-meridian-region"), Some("us-west"));
    assert_eq!(status.header("x-request-id"), Some(id.as_str()));
    assert_eq!(status.body["status"], "COMPLETED");
    let last = world.agent("us-west").seen().pop().unwrap();
    assert_eq!(last.path, format!("/v1/requests/{id}/status"));
    assert_eq!(last.tenant.as_deref(), Some("acme"));

    // Another tenant: us-west is outside `euro`'s residency, so the edge answers 404
    // without asking it.
    let before = world.agent("us-west").seen().len();
    let other = Answer::of(
        edge.get(&format!("/v1/requests/{id}"), world.key("euro"))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(other.status, 404, "{}", other.body);
    assert_eq!(world.agent("us-west").seen().len(), before);

    // A request in a region inside `euro`'s residency but created by `acme`: the agent's 404
    // passes through.
    let eu = Answer::of(
        edge.http
            .post(format!("{}/v1/queue/{}", edge.base, crate::support::ESRGAN))
            .header("authorization", format!("Key {}", world.key("acme")))
            .header("x-forwarded-for", LONDON)
            .body(r#"{"input":{}}"#)
            .send()
            .await
            .unwrap(),
    )
    .await;
    let eu_id = eu.body["request_id"].as_str().unwrap().to_owned();
    assert!(eu_id.starts_with("eu-west."), "{eu_id}");
    let foreign = Answer::of(
        edge.get(&format!("/v1/requests/{eu_id}/status"), world.key("euro"))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(foreign.status, 404, "{}", foreign.body);
    assert_eq!(foreign.header("x-meridian-region"), Some("eu-west"));
    let last = world.agent("eu-west").seen().pop().unwrap();
    assert_eq!(last.tenant.as_deref(), Some("euro"));

    // Unknown regions and malformed ids are 404 at the edge.
    for path in [
        "/v1/requests/mars-1.0123456789abcdef0123456789abcdef/status".to_owned(),
        "/v1/requests/not-an-id".to_owned(),
    ] {
        let answer = Answer::of(edge.get(&path, world.key("acme")).await.unwrap()).await;
        assert_eq!(answer.status, 404, "{path}: {}", answer.body);
        assert_eq!(answer.error_type(), "not_found");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_body_moves_on_whole_after_a_refusal() {
    // From Frankfurt, `euro` goes to eu-central (refusing), then eu-west. The bodies are
    // larger than the 64 KiB pingora keeps for a retry.
    let world = World::start(&[("eu-central", Behaviour::Refuse)]).await;
    let mut config = world.edge_config();
    config.max_body_bytes = 1 << 20;
    let edge = world.start_edge(config).await;
    let key = world.key("euro");
    let image: String = (0..300 * 1024u32)
        .map(|i| char::from(b'a' + (i % 26) as u8))
        .collect();
    let body = serde_json::json!({"input": {"image": image}}).to_string();
    let last_post = |region: &str| {
        world
            .agent(region)
            .seen()
            .into_iter()
            .rfind(|s| s.method == "POST")
            .unwrap()
    };

    let response = edge
        .http
        .post(format!("{}/v1/run/{ESRGAN}", edge.base))
        .header("authorization", format!("Key {key}"))
        .header("content-type", "application/json")
        .body(body.clone())
        .send()
        .await
        .unwrap();
    let answer = Answer::of(response).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_eq!(answer.header("x-meridian-region"), Some("eu-west"));
    assert!(
        answer
            .header("x-request-id")
            .unwrap()
            .starts_with("eu-west.")
    );
    assert_eq!(
        answer.header("x-meridian-cost"),
        Some(STAND_IN_COST.to_string().as_str())
    );
    assert_eq!(last_post("eu-central").body, body.as_bytes());
    let served = last_post("eu-west");
    assert_eq!(
        served.body,
        body.as_bytes(),
        "the whole body reached eu-west"
    );
    assert_eq!(served.tenant.as_deref(), Some("euro"));
    assert_eq!(served.edge_token.as_deref(), Some(AGENT_EDGE));
    assert!(
        !served.authorization,
        "the client's key never reaches an agent"
    );

    // The same without a declared length: chunked.
    let (status, head) = post_chunked(&edge.base, key, body.as_bytes()).await;
    assert_eq!(status, 200, "{head}");
    assert!(head.contains("x-meridian-region: eu-west"), "{head}");
    assert_eq!(last_post("eu-west").body, body.as_bytes());

    // A client that waits for `100 Continue` before sending the body, as curl does.
    let (status, head) = post_expecting_continue(&edge.base, key, body.as_bytes()).await;
    assert_eq!(status, 200, "{head}");
    assert!(head.contains("x-meridian-region: eu-west"), "{head}");
    assert_eq!(last_post("eu-west").body, body.as_bytes());

    // A chunked body over the limit is refused before any agent sees it.
    let posts = world.agent("eu-west").seen().len();
    let (status, head) = post_chunked(&edge.base, key, &vec![b'x'; (1 << 20) + 1]).await;
    assert_eq!(status, 413, "{head}");
    assert_eq!(world.agent("eu-west").seen().len(), posts);

    // Both allowed regions refusing: the last refusal is the answer, and no region outside
    // the residency sees the job.
    world.agent("eu-west").set_refusing(true);
    let response = edge
        .http
        .post(format!("{}/v1/run/{ESRGAN}", edge.base))
        .header("authorization", format!("Key {key}"))
        .body(body.clone())
        .send()
        .await
        .unwrap();
    let refused = Answer::of(response).await;
    assert_eq!(refused.status, 503, "{}", refused.body);
    assert_eq!(refused.header("x-meridian-refused"), Some("queue_full"));
    assert_eq!(refused.header("x-meridian-region"), Some("eu-west"));
    for region in ["us-west", "us-east", "uk-south", "jp-east"] {
        assert!(world.agent(region).seen().is_empty(), "{region} was used");
    }
    let metrics = edge.metrics().await.unwrap();
    assert!(
        metrics.contains("meridian_edge_retries_total{reason=\"refused\"} 4"),
        "{metrics}"
    );
}

/// `POST /v1/run/{ESRGAN}` with a chunked body over a raw HTTP/1.1 connection; the status
/// and the answer's head (lower-case).
async fn post_chunked(base: &str, key: &str, body: &[u8]) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let address = base.trim_start_matches("http://");
    let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
    let head = format!(
        "POST /v1/run/{ESRGAN} HTTP/1.1\r\nhost: {address}\r\nauthorization: Key {key}\r\n\
         content-type: application/json\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    for chunk in body.chunks(16 * 1024) {
        stream
            .write_all(format!("{:x}\r\n", chunk.len()).as_bytes())
            .await
            .unwrap();
        // The edge may answer 413 and close before the rest is sent.
        if stream.write_all(chunk).await.is_err() || stream.write_all(b"\r\n").await.is_err() {
            break;
        }
    }
    let _ = stream.write_all(b"0\r\n\r\n").await;
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer).await;
    let text = String::from_utf8_lossy(&answer).to_lowercase();
    let head = text.split("\r\n\r\n").next().unwrap_or_default().to_owned();
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, head)
}

/// `POST /v1/run/{ESRGAN}` with `expect: 100-continue`, sending the body only once the edge
/// has said `100 Continue`; the final status and the answer's head (lower-case).
async fn post_expecting_continue(base: &str, key: &str, body: &[u8]) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let address = base.trim_start_matches("http://");
    let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
    let head = format!(
        "POST /v1/run/{ESRGAN} HTTP/1.1\r\nhost: {address}\r\nauthorization: Key {key}\r\n\
         content-type: application/json\r\ncontent-length: {}\r\nexpect: 100-continue\r\n\
         connection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut interim = [0u8; 25];
    stream.read_exact(&mut interim).await.unwrap();
    assert_eq!(&interim, b"HTTP/1.1 100 Continue\r\n\r\n");
    stream.write_all(body).await.unwrap();
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).await.unwrap();
    let text = String::from_utf8_lossy(&answer).to_lowercase();
    let head = text.split("\r\n\r\n").next().unwrap_or_default().to_owned();
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, head)
}
