//! How the edge serves: from its cached snapshot while the control plane is down, over
//! HTTPS, with metrics, and until it is shut down.

use std::path::PathBuf;

use edge_proxy::HttpsListen;

use crate::support::{Answer, World, client, run_esrgan};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_edge_serves_from_its_cached_snapshot_when_the_control_plane_is_down_at_start() {
    let mut world = World::start(&[]).await;
    let config = world.edge_config();
    let cache = config.snapshot_cache.clone();
    let first = world.start_edge(config.clone()).await;
    crate::support::eventually("the snapshot is cached", || async { cache.is_file() }).await;
    first.stop().await;
    world.stop_control_plane().await;

    let second = world.start_edge(config).await;
    let answer = run_esrgan(&second, world.key("acme"), None).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_eq!(answer.header("x-meridian-region"), Some("eu-central"));
    let metrics = second.metrics().await.unwrap();
    assert!(
        metrics.contains("meridian_edge_snapshot_revision"),
        "{metrics}"
    );
    second.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_control_plane_or_cache_the_edge_answers_503_not_500() {
    let mut world = World::start(&[]).await;
    world.stop_control_plane().await;
    let config = world.edge_config();
    let listeners = edge_proxy::Listeners::bind(&config).unwrap();
    let base = format!("http://{}", listeners.http[0].local_addr().unwrap());
    let shutdown = tokio_util::sync::CancellationToken::new();
    let task = tokio::spawn(edge_proxy::run(config, listeners, shutdown.clone()));
    // The listener is bound before the edge runs, so the request waits in its backlog.
    let response = client()
        .get(format!("{base}/v1/models"))
        .header("authorization", format!("Key {}", world.key("acme")))
        .send()
        .await
        .expect("the edge answers");
    let answer = Answer::of(response).await;
    assert_eq!(answer.status, 503, "{}", answer.body);
    assert_eq!(answer.error_type(), "unavailable");
    shutdown.cancel();
    task.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_with_a_certificate_from_files() {
    let world = World::start(&[]).await;
    let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let cert_pem = certified.cert.pem();
    let dir = tempfile::tempdir().unwrap();
    let cert: PathBuf = dir.path().join("edge.crt");
    let key: PathBuf = dir.path().join("edge.key");
    std::fs::write(&cert, &cert_pem).unwrap();
    std::fs::write(&key, certified.signing_key.serialize_pem()).unwrap();
    let mut config = world.edge_config();
    config.https = vec![HttpsListen {
        address: "127.0.0.1:0".parse().unwrap(),
        cert,
        key,
    }];
    let edge = world.start_edge(config).await;
    let address = edge.https.unwrap();
    let tls = reqwest::Client::builder()
        .no_proxy()
        .add_root_certificate(reqwest::Certificate::from_pem(cert_pem.as_bytes()).unwrap())
        .resolve("localhost", address)
        .build()
        .unwrap();
    let answer = Answer::of(
        tls.get(format!("https://localhost:{}/v1/models", address.port()))
            .header("authorization", format!("Key {}", world.key("acme")))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert!(
        answer.body["models"]
            .as_array()
            .is_some_and(|m| !m.is_empty())
    );
    edge.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_requests_by_region_model_and_status() {
    let world = World::start(&[]).await;
    let edge = world.start_edge(world.edge_config()).await;
    assert_eq!(run_esrgan(&edge, world.key("acme"), None).await.status, 200);
    assert_eq!(run_esrgan(&edge, "mk_live_wrong", None).await.status, 401);
    // A request is counted when pingora logs it, just after the client has its answer.
    let served = "meridian_edge_requests_total{model=\"meridian/esrgan-x4\",region=\"eu-central\",status=\"200\"} 1";
    let refused = "meridian_edge_requests_total{model=\"-\",region=\"edge\",status=\"401\"} 1";
    crate::support::eventually("both requests are counted", || async {
        let metrics = edge.metrics().await.unwrap();
        metrics.contains(served) && metrics.contains(refused)
    })
    .await;
    let metrics = edge.metrics().await.unwrap();
    assert!(
        metrics.contains("meridian_edge_request_duration_seconds_bucket"),
        "{metrics}"
    );
    assert!(
        metrics.contains("meridian_edge_snapshot_age_seconds"),
        "{metrics}"
    );
    edge.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_streams_pass_through_event_by_event() {
    let world = World::start(&[]).await;
    let edge = world.start_edge(world.edge_config()).await;
    let key = world.key("acme");
    let queued = Answer::of(
        edge.http
            .post(format!("{}/v1/queue/{}", edge.base, crate::support::ESRGAN))
            .header("authorization", format!("Key {key}"))
            .body(r#"{"input":{}}"#)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(queued.status, 202, "{}", queued.body);
    let id = queued.body["request_id"].as_str().unwrap().to_owned();
    let agent = world.agent("eu-central");
    agent.hold();
    let mut stream = edge
        .http
        .get(format!("{}/v1/requests/{id}/status", edge.base))
        .header("authorization", format!("Key {key}"))
        .header("accept", "text/event-stream")
        .send()
        .await
        .unwrap();
    assert_eq!(stream.status(), 200);
    assert_eq!(
        stream.headers()["content-type"].to_str().unwrap(),
        "text/event-stream"
    );
    // The first event arrives while the agent still holds the last one back: the edge does
    // not buffer the stream.
    let mut received = String::new();
    while !received.contains("IN_PROGRESS") {
        let chunk = stream.chunk().await.unwrap().expect("the first event");
        received.push_str(&String::from_utf8_lossy(&chunk));
    }
    assert!(!received.contains("COMPLETED"));
    agent.release();
    while let Some(chunk) = stream.chunk().await.unwrap() {
        received.push_str(&String::from_utf8_lossy(&chunk));
    }
    assert!(received.contains("event: status\ndata: {"), "{received}");
    assert!(received.contains("COMPLETED"), "{received}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_stops_accepting_and_lets_requests_in_flight_finish() {
    let world = World::start(&[]).await;
    let edge = world.start_edge(world.edge_config()).await;
    let base = edge.base.clone();
    let agent = world.agent("eu-central");
    agent.hold();
    let key = world.key("acme").to_owned();
    let http = edge.http.clone();
    let in_flight = tokio::spawn(async move {
        let response = http
            .post(format!("{base}/v1/run/{}", crate::support::ESRGAN))
            .header("authorization", format!("Key {key}"))
            .body(r#"{"input":{}}"#)
            .send()
            .await
            .unwrap();
        Answer::of(response).await
    });
    crate::support::eventually("the job reaches the agent", || async {
        !agent.seen().is_empty()
    })
    .await;
    let base = edge.base.clone();
    let stopping = tokio::spawn(edge.stop());
    crate::support::eventually("the edge stops accepting", || async {
        client()
            .get(format!("{base}/v1/models"))
            .send()
            .await
            .is_err()
    })
    .await;
    assert!(
        !stopping.is_finished(),
        "the edge waits for the request in flight"
    );
    agent.release();
    let answer = in_flight.await.unwrap();
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_eq!(answer.header("x-meridian-region"), Some("eu-central"));
    stopping.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_that_does_not_answer_in_time_gives_504() {
    let world = World::start(&[]).await;
    let mut config = world.edge_config();
    config.read_timeout = std::time::Duration::from_millis(300);
    let edge = world.start_edge(config).await;
    world.agent("eu-central").hold();
    let answer = run_esrgan(&edge, world.key("acme"), None).await;
    assert_eq!(answer.status, 504, "{}", answer.body);
    assert_eq!(answer.error_type(), "timeout");
    // The job may exist: it is not sent to another region.
    assert!(world.agent("eu-west").seen().is_empty());
    world.agent("eu-central").release();
}
