//! A submission that may have reached an agent is never sent a second time — even when the
//! connection it went over was a reused one that broke before an answer — unless it has an
//! `Idempotency-Key`; then it goes to the same region again, and only there.

use std::sync::{Arc, Mutex};

use contract::headers;
use control_plane_client::wire::AgentReport;
use serde_json::json;
use testkit::catalog::{Catalog, Model, Region};
use testkit::{Backend, TestControlPlane};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::support::{Answer, ESRGAN, FRANKFURT, TestEdge};

/// An agent that answers the first request on each connection with 202 and reads every later
/// one whole, then closes the connection without answering — as an agent that accepted the
/// job and failed would. It records the body of every request it read. A crashing one also
/// stops listening then.
struct Breaking {
    endpoint: String,
    bodies: Arc<Mutex<Vec<serde_json::Value>>>,
}

impl Breaking {
    async fn start() -> Self {
        Self::listen(false).await
    }

    /// One that stops listening once it lost a request.
    async fn crashing() -> Self {
        Self::listen(true).await
    }

    async fn listen(crash: bool) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        let bodies = Arc::new(Mutex::new(Vec::new()));
        let seen = Arc::clone(&bodies);
        let crashed = Arc::new(tokio::sync::Notify::new());
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    accepted = listener.accept() => match accepted {
                        Ok((stream, _)) => {
                            let crashed = crash.then(|| Arc::clone(&crashed));
                            tokio::spawn(serve(stream, Arc::clone(&seen), crashed));
                        }
                        Err(_) => return,
                    },
                    () = crashed.notified() => return, // the listener closes
                }
            }
        });
        Self { endpoint, bodies }
    }

    /// How many requests with `marker` in their body it read.
    fn read(&self, marker: u64) -> usize {
        self.bodies
            .lock()
            .unwrap()
            .iter()
            .filter(|b| b["marker"] == marker)
            .count()
    }

    fn total(&self) -> usize {
        self.bodies.lock().unwrap().len()
    }
}

async fn serve(
    mut stream: TcpStream,
    seen: Arc<Mutex<Vec<serde_json::Value>>>,
    crash: Option<Arc<tokio::sync::Notify>>,
) {
    let mut buffer = Vec::new();
    for served in 0.. {
        let Some((head, length)) = read_head(&mut stream, &mut buffer).await else {
            return;
        };
        while buffer.len() < head + length {
            let mut chunk = [0u8; 4096];
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buffer.extend_from_slice(&chunk[..n]),
            }
        }
        let body: Vec<u8> = buffer.drain(..head + length).skip(head).collect();
        seen.lock()
            .unwrap()
            .push(serde_json::from_slice(&body).unwrap_or_default());
        if served > 0 {
            if let Some(crash) = crash {
                crash.notify_one();
            }
            return; // read, then gone without a word
        }
        let answer = r#"{"request_id":"eu-central.0123456789abcdef0123456789abcdef"}"#;
        let response = format!(
            "HTTP/1.1 202 Accepted\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{answer}",
            answer.len()
        );
        if stream.write_all(response.as_bytes()).await.is_err() {
            return;
        }
    }
}

/// Reads until the end of a request head; returns its length and the `content-length`.
async fn read_head(stream: &mut TcpStream, buffer: &mut Vec<u8>) -> Option<(usize, usize)> {
    loop {
        if let Some(end) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buffer[..end]).to_ascii_lowercase();
            let length = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            return Some((end + 4, length));
        }
        let mut chunk = [0u8; 4096];
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buffer.extend_from_slice(&chunk[..n]),
        }
    }
}

/// A control plane with two EU regions whose agents are `near` (Frankfurt, where the edge
/// is) and `far` (Dublin), and an edge; returns them with tenant `acme`'s key.
async fn world(
    near: &str,
    far: &str,
    dir: &std::path::Path,
    max_body_bytes: u64,
) -> (TestControlPlane, TestEdge, String) {
    let catalog = Catalog::new()
        .routing("heartbeat_timeout_ms = 86400000")
        .jurisdictions(&["eu"])
        .region(Region::new("eu-central", "eu", (50.11, 8.68), near))
        .region(Region::new("eu-west", "eu", (53.35, -6.26), far))
        .model(Model::esrgan_x4())
        .tenants("[[tenants]]\nid = \"acme\"\nresidency = \"any\"")
        .build();
    let control_plane = TestControlPlane::builder(Backend::Embedded)
        .seed(catalog)
        .start()
        .await;
    let report = AgentReport {
        healthy: true,
        free_reserved: 2,
        ..AgentReport::default()
    };
    for region in ["eu-central", "eu-west"] {
        control_plane
            .agent()
            .register(region, &report)
            .await
            .unwrap();
    }
    let key = control_plane
        .admin()
        .create_key("acme", None)
        .await
        .unwrap()
        .key;
    let ready_at = control_plane.edge().snapshot().await.unwrap().revision;
    let mut config = testkit::edge::edge_config(&control_plane.url, dir, FRANKFURT);
    config.read_timeout = std::time::Duration::from_secs(10);
    config.max_body_bytes = max_body_bytes;
    let edge = TestEdge::start(config, ready_at).await;
    (control_plane, edge, key)
}

/// A body limit under which every submission here fits pingora's retry buffer.
const SMALL: u64 = 64 * 1024;

async fn submit(edge: &TestEdge, key: &str, marker: u64, idempotency: Option<&str>) -> Answer {
    submit_padded(edge, key, marker, idempotency, 0).await
}

/// A submission with `padding` bytes more in its body.
async fn submit_padded(
    edge: &TestEdge,
    key: &str,
    marker: u64,
    idempotency: Option<&str>,
    padding: usize,
) -> Answer {
    let mut request = edge
        .http
        .post(format!("{}/v1/queue/{ESRGAN}", edge.base))
        .header("authorization", format!("Key {key}"))
        .json(&json!({"input": {"image": "aGVsbG8="}, "marker": marker, "padding": ".".repeat(padding)}));
    if let Some(key) = idempotency {
        request = request.header(headers::IDEMPOTENCY_KEY, key);
    }
    Answer::of(request.send().await.unwrap()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_submission_lost_on_a_reused_connection_is_not_sent_again() {
    let (near, far) = (Breaking::start().await, Breaking::start().await);
    let dir = tempfile::tempdir().unwrap();
    let (_control_plane, edge, key) = world(&near.endpoint, &far.endpoint, dir.path(), SMALL).await;
    // Submissions go over the edge's pooled connection to `near` until one is read on a
    // reused connection and lost (and, were it sent again, read twice).
    let mut lost = None;
    for marker in 0..20 {
        let answer = submit(&edge, &key, marker, None).await;
        if answer.status != 202 || near.read(marker) > 1 {
            lost = Some((marker, answer));
            break;
        }
    }
    let (marker, answer) = lost.expect("a submission went over a reused connection");
    assert_eq!(near.read(marker), 1, "the lost submission was sent again");
    assert_eq!(answer.status, 502, "{}", answer.body);
    assert_eq!(answer.error_type(), "bad_gateway");
    let message = answer.body["error"]["message"].as_str().unwrap();
    assert!(message.contains("Idempotency-Key"), "{message}");
    assert_eq!(far.total(), 0, "nor failed over");
    for earlier in 0..marker {
        assert_eq!(near.read(earlier), 1);
    }
    edge.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keyed_submission_lost_on_a_reused_connection_goes_to_the_same_region_again() {
    let (near, far) = (Breaking::start().await, Breaking::start().await);
    let dir = tempfile::tempdir().unwrap();
    let (control_plane, edge, key) = world(&near.endpoint, &far.endpoint, dir.path(), SMALL).await;
    let mut resent = None;
    for marker in 0..20 {
        let idempotency = format!("order-{marker}");
        let answer = submit(&edge, &key, marker, Some(&idempotency)).await;
        assert_eq!(answer.status, 202, "{marker}: {}", answer.body);
        if near.read(marker) > 1 {
            resent = Some(marker);
            break;
        }
    }
    let marker = resent.expect("a keyed submission went over a reused connection");
    assert_eq!(near.read(marker), 2, "sent once more, to the same region");
    assert_eq!(far.total(), 0);
    // The near region drains: new jobs go to the far one…
    let draining = AgentReport {
        healthy: true,
        draining: true,
        free_reserved: 2,
        ..AgentReport::default()
    };
    control_plane
        .agent()
        .heartbeat("eu-central", &draining)
        .await
        .unwrap();
    let revision = control_plane.edge().snapshot().await.unwrap().revision;
    edge.wait_for_revision(revision).await;
    let other = submit(&edge, &key, 500, None).await;
    assert_eq!(
        other.header(headers::REGION),
        Some("eu-west"),
        "{}",
        other.body
    );
    // …but a client's own retry of the key goes to the region that took it, and only there.
    let before = near.read(marker);
    submit(&edge, &key, marker, Some(&format!("order-{marker}"))).await;
    assert!(
        near.read(marker) > before,
        "the retry went to the region that took the key"
    );
    assert_eq!(far.read(marker), 0);
    // A malformed key is refused before any agent sees the job.
    let before = near.total();
    let bad = submit(&edge, &key, 99, Some("two words")).await;
    assert_eq!(bad.status, 400, "{}", bad.body);
    assert_eq!(near.total(), before);
    edge.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_submissions_sent_by_the_edge_itself_follow_the_same_rule() {
    let (near, far) = (Breaking::start().await, Breaking::start().await);
    let dir = tempfile::tempdir().unwrap();
    let (_control_plane, edge, key) =
        world(&near.endpoint, &far.endpoint, dir.path(), 1 << 20).await;
    let padding = 100 * 1024; // over pingora's retry buffer: read whole and sent by the edge
    let mut lost = None;
    for marker in 0..20 {
        let answer = submit_padded(&edge, &key, marker, None, padding).await;
        if answer.status != 202 || near.read(marker) > 1 {
            lost = Some((marker, answer));
            break;
        }
    }
    let (marker, answer) = lost.expect("a submission went over a reused connection");
    assert_eq!(near.read(marker), 1, "the lost submission was sent again");
    assert_eq!(answer.status, 502, "{}", answer.body);
    assert_eq!(far.total(), 0);

    let mut resent = None;
    for marker in 100..120 {
        let idempotency = format!("order-{marker}");
        let answer = submit_padded(&edge, &key, marker, Some(&idempotency), padding).await;
        assert_eq!(answer.status, 202, "{marker}: {}", answer.body);
        if near.read(marker) > 1 {
            resent = Some(marker);
            break;
        }
    }
    let marker = resent.expect("a keyed submission went over a reused connection");
    assert_eq!(near.read(marker), 2, "sent once more, to the same region");
    assert_eq!(far.total(), 0);
    edge.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keyed_submission_sent_again_never_moves_to_another_region() {
    let (near, far) = (Breaking::crashing().await, Breaking::start().await);
    let dir = tempfile::tempdir().unwrap();
    let (_control_plane, edge, key) = world(&near.endpoint, &far.endpoint, dir.path(), SMALL).await;
    let mut lost = None;
    for marker in 0..20 {
        let idempotency = format!("order-{marker}");
        let answer = submit(&edge, &key, marker, Some(&idempotency)).await;
        if answer.status != 202 {
            lost = Some((marker, answer));
            break;
        }
    }
    // The agent read the job, then went away: sending it again finds nobody there, and the
    // job it may hold must not be made a second time elsewhere.
    let (marker, answer) = lost.expect("a keyed submission was lost");
    assert_eq!(
        far.read(marker),
        0,
        "moved to another region after it was sent"
    );
    assert_eq!(answer.status, 502, "{}", answer.body);
    let message = answer.body["error"]["message"].as_str().unwrap();
    assert!(message.contains("may have accepted"), "{message}");
    edge.stop().await;
}
