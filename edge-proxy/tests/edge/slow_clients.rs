//! Clients that hold connections without finishing requests: a header or body dripped a byte
//! at a time is cut off at its deadline, an idle connection at its own, and one address
//! cannot open more than its share.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::{TestEdge, World};
use testkit::within;

/// A raw connection to the edge.
async fn connect(edge: &TestEdge) -> TcpStream {
    TcpStream::connect(edge.base.trim_start_matches("http://"))
        .await
        .unwrap()
}

/// Sends `GET /v1/models` with `key` and reads the whole answer; returns its status line.
async fn models(stream: &mut TcpStream, key: &str) -> String {
    let request =
        format!("GET /v1/models HTTP/1.1\r\nhost: edge\r\nauthorization: Key {key}\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = within("the answer", stream.read(&mut chunk)).await.unwrap();
        assert!(n > 0, "closed before answering");
        answer.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&answer).to_string();
        if let Some(end) = text.find("\r\n\r\n") {
            let length: usize = text[..end]
                .to_ascii_lowercase()
                .lines()
                .find_map(|l| {
                    l.strip_prefix("content-length:")
                        .map(|v| v.trim().parse().unwrap())
                })
                .unwrap_or(0);
            if answer.len() >= end + 4 + length {
                return text.lines().next().unwrap_or_default().to_owned();
            }
        }
    }
}

/// Whether the edge closed `stream` (a read returns end of file or an error).
async fn closed(stream: &mut TcpStream) -> bool {
    let mut byte = [0u8; 1];
    matches!(stream.read(&mut byte).await, Ok(0) | Err(_))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_header_dripped_after_a_request_is_cut_off_at_the_header_deadline() {
    let world = World::start(&[]).await;
    let mut config = world.edge_config();
    config.connections.header_timeout = Duration::from_millis(500);
    let edge = world.start_edge(config).await;
    let key = world.key("acme").to_owned();
    let mut stream = connect(&edge).await;
    assert!(models(&mut stream, &key).await.contains("200"));

    // The next request's header, a byte every 100 ms: 4 s for the whole line, each byte
    // well within any per-read timeout.
    let header = format!("GET /v1/models HTTP/1.1\r\nauthorization: Key {key}\r\n\r\n");
    let (mut reader, mut writer) = stream.into_split();
    let drip = tokio::spawn(async move {
        let mut sent = 0;
        for byte in header.as_bytes() {
            if writer.write_all(&[*byte]).await.is_err() {
                break;
            }
            sent += 1;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        (sent, header.len())
    });
    let mut answer = Vec::new();
    let ended = within(
        "the edge to close the connection",
        reader.read_to_end(&mut answer),
    )
    .await;
    let (sent, whole) = drip.await.unwrap();
    assert!(
        answer.is_empty(),
        "the dripped request was answered: {}",
        String::from_utf8_lossy(&answer)
    );
    assert!(ended.is_ok() || sent < whole, "{ended:?}");
    assert!(sent < whole, "the whole header ({whole} bytes) got through");
    let metrics = edge.metrics().await.unwrap();
    assert!(
        metrics.contains("meridian_edge_slow_clients_total{phase=\"header\"} 1"),
        "{metrics}"
    );
    edge.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_address_cannot_open_more_than_its_connections() {
    let world = World::start(&[]).await;
    let mut config = world.edge_config();
    config.connections.max_per_address = 3;
    let edge = world.start_edge(config).await;
    let key = world.key("acme").to_owned();
    let mut open = Vec::new();
    for _ in 0..3 {
        let mut stream = connect(&edge).await;
        // Answered: the edge holds the connection.
        assert!(models(&mut stream, &key).await.contains("200"));
        open.push(stream);
    }
    let mut fourth = connect(&edge).await;
    assert!(
        within(
            "the edge to close the fourth connection",
            closed(&mut fourth)
        )
        .await,
        "the fourth connection stayed open"
    );
    let metrics = edge.metrics().await.unwrap();
    assert!(
        metrics.contains("meridian_edge_connections_refused_total 1"),
        "{metrics}"
    );
    // The three are still served; closing one makes room.
    assert!(models(&mut open[0], &key).await.contains("200"));
    drop(open.pop());
    testkit::eventually("a place frees up", || async {
        let mut stream = connect(&edge).await;
        let request =
            format!("GET /v1/models HTTP/1.1\r\nhost: edge\r\nauthorization: Key {key}\r\n\r\n");
        if stream.write_all(request.as_bytes()).await.is_err() {
            return false;
        }
        let mut chunk = [0u8; 12];
        matches!(stream.read(&mut chunk).await, Ok(n) if n > 0)
    })
    .await;
    edge.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dripped_body_is_cut_off_at_the_body_deadline_and_reaches_no_agent() {
    let world = World::start(&[]).await;
    let mut config = world.edge_config();
    config.connections.body_timeout = Duration::from_millis(500);
    let edge = world.start_edge(config).await;
    let key = world.key("acme").to_owned();
    let body = r#"{"input": {"image": "aGVsbG8="}, "padding": "................"}"#;
    let head = format!(
        "POST /v1/queue/{} HTTP/1.1\r\nhost: edge\r\nauthorization: Key {key}\r\n\
         content-type: application/json\r\ncontent-length: {}\r\n\r\n",
        crate::support::ESRGAN,
        body.len()
    );
    let mut stream = connect(&edge).await;
    stream.write_all(head.as_bytes()).await.unwrap();
    let (mut reader, mut writer) = stream.into_split();
    let body = body.to_owned();
    let drip = tokio::spawn(async move {
        let mut sent = 0;
        for byte in body.as_bytes() {
            if writer.write_all(&[*byte]).await.is_err() {
                break;
            }
            sent += 1;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        (sent, body.len())
    });
    let mut answer = Vec::new();
    let _ = within(
        "the edge to close the connection",
        reader.read_to_end(&mut answer),
    )
    .await;
    let (sent, whole) = drip.await.unwrap();
    let answer = String::from_utf8_lossy(&answer);
    assert!(
        !answer.contains("202"),
        "the dripped job was accepted: {answer}"
    );
    assert!(sent < whole, "the whole body ({whole} bytes) got through");
    assert!(
        world.agents.values().all(|a| a.seen().is_empty()),
        "an agent saw the job"
    );
    edge.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_are_closed_after_the_idle_deadline() {
    let world = World::start(&[]).await;
    let mut config = world.edge_config();
    config.connections.idle_timeout = Duration::from_millis(500);
    let edge = world.start_edge(config).await;
    let key = world.key("acme").to_owned();
    // Silent from the start…
    let mut silent = connect(&edge).await;
    assert!(within("the silent connection to close", closed(&mut silent)).await);
    // …or after a request.
    let mut stream = connect(&edge).await;
    assert!(models(&mut stream, &key).await.contains("200"));
    assert!(within("the kept-alive connection to close", closed(&mut stream)).await);
    edge.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_run_is_not_cut_off_by_the_clients_deadlines() {
    let world = World::start(&[]).await;
    let mut config = world.edge_config();
    config.connections.body_timeout = Duration::from_millis(300);
    config.connections.idle_timeout = Duration::from_millis(300);
    let edge = world.start_edge(config).await;
    for agent in world.agents.values() {
        agent.hold();
    }
    let key = world.key("acme").to_owned();
    let run = tokio::spawn({
        let http = edge.http.clone();
        let url = format!("{}/v1/run/{}", edge.base, crate::support::ESRGAN);
        async move {
            http.post(url)
                .header("authorization", format!("Key {key}"))
                .json(&serde_json::json!({"input": {"image": "aGVsbG8="}}))
                .send()
                .await
                .unwrap()
                .status()
        }
    });
    testkit::eventually("an agent holds the run", || async {
        world.agents.values().any(|a| !a.seen().is_empty())
    })
    .await;
    // A connection opened now and left silent is closed at the same deadline as the run's
    // body would be: once it is, the run has outlived that deadline.
    let mut clock = connect(&edge).await;
    assert!(within("the silent connection to close", closed(&mut clock)).await);
    for agent in world.agents.values() {
        agent.release();
    }
    assert_eq!(within("the run's answer", run).await.unwrap(), 200);
    edge.stop().await;
}
