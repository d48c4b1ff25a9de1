//! Slow and greedy clients against an agent running in-process on port 0, spoken to over
//! raw TCP: a declared body over the limit is refused before it is read, a dripped header
//! or body and an idle kept-alive connection are cut off by their deadlines, and the
//! connection caps (per client address and in all) turn the next connection away.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use region_agent::serving::test_model::TestModel;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

use support::{Agent, EDGE_TOKEN, config, within};

const ECHO: &str = "[[models]]\nid = \"test/echo\"\nweights_dir = \"unused\"\n";

async fn start(dir: &std::path::Path, extra: &str) -> Agent {
    let prices = [("test/echo", "image", 0.25)];
    let model = TestModel::new("test/echo");
    Agent::start(config(dir, ECHO, extra, &prices), vec![Arc::new(model)]).await
}

fn address(agent: &Agent) -> SocketAddr {
    agent.base.trim_start_matches("http://").parse().unwrap()
}

/// A connection from loopback address `from` (127.0.0.x).
async fn connect_from(agent: &Agent, from: [u8; 4]) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::from((from, 0))).unwrap();
    socket.connect(address(agent)).await.unwrap()
}

async fn connect(agent: &Agent) -> TcpStream {
    TcpStream::connect(address(agent)).await.unwrap()
}

/// Reads one answer (head and a `content-length` body) from `stream`.
async fn read_answer(stream: &mut TcpStream) -> String {
    let mut bytes = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let text = String::from_utf8_lossy(&bytes).into_owned();
        if let Some(end) = text.find("\r\n\r\n") {
            let length = text[..end]
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().parse::<usize>().unwrap())
                })
                .unwrap_or(0);
            if bytes.len() >= end + 4 + length {
                return text;
            }
        }
        let n = stream.read(&mut chunk).await.unwrap();
        assert!(
            n > 0,
            "the connection closed before a whole answer: {text:?}"
        );
        bytes.extend_from_slice(&chunk[..n]);
    }
}

/// Waits for the agent to close `stream`; returns what it sent before.
async fn closed(what: &str, stream: &mut TcpStream) -> String {
    let mut bytes = Vec::new();
    // A reset counts as closed too.
    let _ = within(what, stream.read_to_end(&mut bytes)).await;
    String::from_utf8_lossy(&bytes).into_owned()
}

const HEALTHZ: &[u8] = b"GET /healthz HTTP/1.1\r\nhost: agent\r\n\r\n";

#[tokio::test]
async fn a_declared_body_over_the_limit_is_refused_before_it_is_read() {
    let dir = tempfile::tempdir().unwrap();
    let agent = start(dir.path(), "max_body_bytes = 1000").await;
    let mut stream = connect(&agent).await;
    // 34 MiB declared, none of it sent: the answer must come from the header alone.
    let head = format!(
        "POST /v1/queue/test/echo HTTP/1.1\r\nhost: agent\r\nx-meridian-edge-token: {EDGE_TOKEN}\r\n\
         x-meridian-tenant: acme\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
        34 << 20
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let answer = within("the 413", read_answer(&mut stream)).await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains("too_large"), "{answer}");
    closed("the connection to close after the 413", &mut stream).await;
    assert_eq!(
        std::fs::read_dir(dir.path().join("jobs")).unwrap().count(),
        0
    );
    agent.stop().await;
}

#[tokio::test]
async fn a_dripped_header_is_cut_off_by_its_deadline() {
    let dir = tempfile::tempdir().unwrap();
    let agent = start(dir.path(), "header_read_timeout_ms = 300").await;
    let stream = connect(&agent).await;
    let (mut reader, mut writer) = stream.into_split();
    writer
        .write_all(b"GET /healthz HTTP/1.1\r\nx-slow: ")
        .await
        .unwrap();
    // One byte every 50 ms, never finishing the header, until the agent hangs up.
    let drip = tokio::spawn(async move {
        let mut interval = tokio::time::interval(Duration::from_millis(50));
        loop {
            interval.tick().await;
            if writer.write_all(b"a").await.is_err() {
                return;
            }
        }
    });
    let mut rest = Vec::new();
    let _ = within(
        "the dripping connection to close",
        reader.read_to_end(&mut rest),
    )
    .await;
    assert!(!String::from_utf8_lossy(&rest).contains("200 OK"));
    drip.abort();
    // The agent still serves others.
    assert_eq!(agent.get("/healthz").await.0, 200);
    agent.stop().await;
}

#[tokio::test]
async fn an_idle_kept_alive_connection_is_closed() {
    let dir = tempfile::tempdir().unwrap();
    let agent = start(dir.path(), "keep_alive_idle_ms = 300").await;
    let mut stream = connect(&agent).await;
    stream.write_all(HEALTHZ).await.unwrap();
    let answer = within("the first answer", read_answer(&mut stream)).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    // Kept alive after the answer, then silent: closed by the idle deadline.
    closed("the idle connection to close", &mut stream).await;
    agent.stop().await;
}

#[tokio::test]
async fn a_dripped_body_gets_408_and_the_connection_closes() {
    let dir = tempfile::tempdir().unwrap();
    let agent = start(dir.path(), "body_read_timeout_ms = 300").await;
    let stream = connect(&agent).await;
    let (mut reader, mut writer) = stream.into_split();
    let head = format!(
        "POST /v1/queue/test/echo HTTP/1.1\r\nhost: agent\r\nx-meridian-edge-token: {EDGE_TOKEN}\r\n\
         x-meridian-tenant: acme\r\ncontent-type: application/json\r\ncontent-length: 1000\r\n\r\n{{"
    );
    writer.write_all(head.as_bytes()).await.unwrap();
    let drip = tokio::spawn(async move {
        let mut interval = tokio::time::interval(Duration::from_millis(50));
        loop {
            interval.tick().await;
            if writer.write_all(b" ").await.is_err() {
                return;
            }
        }
    });
    let mut answer = Vec::new();
    let _ = within(
        "the slow body's connection to close",
        reader.read_to_end(&mut answer),
    )
    .await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("body_timeout"), "{answer}");
    drip.abort();
    assert_eq!(
        std::fs::read_dir(dir.path().join("jobs")).unwrap().count(),
        0
    );
    agent.stop().await;
}

/// A connection over a cap is closed, with a `503` that names the refusal (so an edge may
/// send the request to another region) when the socket took it.
fn assert_turned_away(answer: &str) {
    if answer.is_empty() {
        return;
    }
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    let refused = format!("{}: too_many_connections", contract::headers::REFUSED);
    assert!(answer.to_ascii_lowercase().contains(&refused), "{answer}");
}

#[tokio::test]
async fn connections_over_the_caps_are_turned_away() {
    let dir = tempfile::tempdir().unwrap();
    // The test kit's own client keeps one connection from 127.0.0.1: two places are left.
    let agent = start(
        dir.path(),
        "max_connections = 3\nmax_connections_per_client = 1",
    )
    .await;
    let mut first = connect_from(&agent, [127, 0, 0, 2]).await;
    first.write_all(HEALTHZ).await.unwrap();
    let answer = read_answer(&mut first).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");

    // A second connection from the same address is over the per-client cap.
    let mut same = connect_from(&agent, [127, 0, 0, 2]).await;
    let answer = closed("the second connection from one address", &mut same).await;
    assert_turned_away(&answer);

    // Another address has its own place, until the total is reached.
    let mut other = connect_from(&agent, [127, 0, 0, 3]).await;
    other.write_all(HEALTHZ).await.unwrap();
    let answer = read_answer(&mut other).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let mut over = connect_from(&agent, [127, 0, 0, 4]).await;
    let answer = closed("a connection over the total", &mut over).await;
    assert_turned_away(&answer);

    // A closed connection frees its place.
    drop(first);
    support::eventually("a place to free up", || async {
        let mut stream = connect_from(&agent, [127, 0, 0, 4]).await;
        if stream.write_all(HEALTHZ).await.is_err() {
            return false;
        }
        let mut bytes = [0u8; 64];
        matches!(stream.read(&mut bytes).await, Ok(n) if bytes[..n].starts_with(b"HTTP/1.1 200"))
    })
    .await;
    agent.stop().await;
}
