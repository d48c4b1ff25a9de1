//! Webhooks as a receiver sees them, from an agent running in-process with the in-code test
//! model (`serving::test_model`, not a real model) and a receiver on a loopback port:
//! signed deliveries (Standard Webhooks with the tenant's secret, fal's Ed25519 with the
//! JWKS key), retried until answered and logged for the tenant, resumed after a restart,
//! and refused for destinations off the public internet unless the operator allows them.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use ed25519_dalek::{Signature, Verifier, VerifyingKey};
use hmac::{Hmac, Mac};
use region_agent::serving::Model;
use region_agent::serving::test_model::TestModel;
use reqwest::Method;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;

use support::{Agent, config};

const ECHO: &str = "[[models]]\nid = \"test/echo\"\nweights_dir = \"unused\"\n";
/// Deliveries to loopback allowed, tries 20 ms apart.
const ALLOW_LOOPBACK: &str =
    "[webhooks]\nallow = [\"127.0.0.1\"]\nretry_delays_ms = [20, 20, 20]\n";

fn models() -> Vec<Arc<dyn Model>> {
    vec![Arc::new(TestModel::new("test/echo"))]
}

async fn start(dir: &std::path::Path, extra: &str) -> Agent {
    let prices = [("test/echo", "image", 0.25)];
    Agent::start(config(dir, ECHO, extra, &prices), models()).await
}

/// One post the receiver got.
struct Received {
    headers: HeaderMap,
    body: Bytes,
}

/// A webhook receiver on a loopback port answering each post with the next status of its
/// script (the last one after that), and telling the test of each post.
struct Receiver {
    url: String,
    posts: mpsc::UnboundedReceiver<Received>,
}

impl Receiver {
    async fn start(script: &[u16]) -> Self {
        let (tx, posts) = mpsc::unbounded_channel();
        let script = Arc::new(Mutex::new(script.to_vec()));
        let app = axum::Router::new()
            .route("/hook", post(answer))
            .with_state((tx, script));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        Self { url, posts }
    }

    async fn next(&mut self) -> Received {
        testkit::within("a webhook post", self.posts.recv())
            .await
            .expect("the receiver is running")
    }
}

type ReceiverState = (mpsc::UnboundedSender<Received>, Arc<Mutex<Vec<u16>>>);

async fn answer(
    State((tx, script)): State<ReceiverState>,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    let status = {
        let mut script = script.lock().unwrap();
        if script.len() > 1 {
            script.remove(0)
        } else {
            script[0]
        }
    };
    let _ = tx.send(Received { headers, body });
    StatusCode::from_u16(status).unwrap()
}

fn header<'a>(post: &'a Received, name: &str) -> &'a str {
    post.headers[name].to_str().unwrap()
}

/// Checks a Standard Webhooks signature with the secret shown as `whsec_…`.
fn verify_standard(post: &Received, shown_secret: &str) {
    let secret = STANDARD
        .decode(shown_secret.strip_prefix("whsec_").unwrap())
        .unwrap();
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&secret).unwrap();
    let signed = format!(
        "{}.{}.{}",
        header(post, "webhook-id"),
        header(post, "webhook-timestamp"),
        std::str::from_utf8(&post.body).unwrap()
    );
    mac.update(signed.as_bytes());
    let expected = format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()));
    assert_eq!(header(post, "webhook-signature"), expected);
}

async fn get_json(agent: &Agent, path: &str) -> Value {
    let response = agent.call(Method::GET, path).send().await.unwrap();
    assert_eq!(response.status(), 200, "{path}");
    response.json().await.unwrap()
}

async fn deliveries(agent: &Agent, id: &str) -> Value {
    get_json(agent, &format!("/v1/requests/{id}/webhooks")).await
}

#[tokio::test]
async fn a_native_webhook_is_signed_retried_until_answered_and_logged() {
    let dir = tempfile::tempdir().unwrap();
    let agent = start(dir.path(), ALLOW_LOOPBACK).await;
    let mut receiver = Receiver::start(&[500, 503, 200]).await;
    let secret = get_json(&agent, "/v1/webhooks/default/secret").await;
    let secret = secret["key"].as_str().unwrap().to_owned();
    let id = agent
        .queue(
            "test/echo",
            json!({"input": {"text": "hello"}, "webhook": receiver.url}),
        )
        .await;
    let posts = [
        receiver.next().await,
        receiver.next().await,
        receiver.next().await,
    ];
    for post in &posts {
        verify_standard(post, &secret);
        assert_eq!(header(post, "webhook-id"), header(&posts[0], "webhook-id"));
        let body: Value = serde_json::from_slice(&post.body).unwrap();
        assert_eq!(body["request_id"], id.as_str());
        assert_eq!(body["status"], "COMPLETED");
        assert_eq!(body["output"]["text"], "HELLO");
        assert_eq!(body["event"], "completed");
    }
    // Another tenant's secret does not verify it.
    let other = agent
        .as_tenant("globex", Method::GET, "/v1/webhooks/default/secret")
        .send()
        .await
        .unwrap()
        .json::<Value>()
        .await
        .unwrap();
    assert_ne!(other["key"], secret.as_str());
    testkit::eventually("the delivery to be logged as delivered", || async {
        deliveries(&agent, &id).await["deliveries"][0]["state"] == "delivered"
    })
    .await;
    let log = deliveries(&agent, &id).await;
    let tries = log["deliveries"][0]["tries"].as_array().unwrap();
    let statuses: Vec<&Value> = tries.iter().map(|t| &t["status"]).collect();
    assert_eq!(statuses, [&json!(500), &json!(503), &json!(200)]);
    assert_eq!(tries[0]["error"], "answered HTTP 500 Internal Server Error");
    // Another tenant sees nothing of it.
    let hidden = agent
        .as_tenant(
            "globex",
            Method::GET,
            &format!("/v1/requests/{id}/webhooks"),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(hidden.status(), 404);
}

#[tokio::test]
async fn deliveries_go_on_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    // The second try is due a second after the first: the agent is stopped in between.
    let extra = "[webhooks]\nallow = [\"127.0.0.1\"]\nretry_delays_ms = [1000, 20]\n";
    let agent = start(dir.path(), extra).await;
    let mut receiver = Receiver::start(&[500, 200]).await;
    let id = agent
        .queue(
            "test/echo",
            json!({"input": {"text": "x"}, "webhook": receiver.url}),
        )
        .await;
    let first = receiver.next().await;
    // Stopped once the try is written down (a try whose outcome was not is made again).
    testkit::eventually("the first try to be logged", || async {
        deliveries(&agent, &id).await["deliveries"][0]["tries"]
            .as_array()
            .is_some_and(|tries| tries.len() == 1)
    })
    .await;
    agent.stop().await;
    let agent = start(dir.path(), extra).await;
    let second = receiver.next().await;
    assert_eq!(header(&first, "webhook-id"), header(&second, "webhook-id"));
    testkit::eventually("the delivery to be logged as delivered", || async {
        deliveries(&agent, &id).await["deliveries"][0]["state"] == "delivered"
    })
    .await;
    let log = deliveries(&agent, &id).await;
    assert_eq!(log["deliveries"][0]["tries"].as_array().unwrap().len(), 2);
}

#[tokio::test]
async fn destinations_off_the_public_internet_are_refused_unless_allowed() {
    let dir = tempfile::tempdir().unwrap();
    let agent = start(dir.path(), "[webhooks]\nretry_delays_ms = []\n").await;
    for (url, why) in [
        ("http://127.0.0.1:9/hook", "loopback"),
        ("http://169.254.169.254/latest", "metadata"),
        ("http://10.1.2.3/hook", "private"),
        ("ftp://hooks.example/x", "ftp"),
    ] {
        let response = agent
            .call(Method::POST, "/v1/queue/test/echo")
            .json(&json!({"input": {"text": "x"}, "webhook": url}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 422, "{url}");
        let body: Value = response.json().await.unwrap();
        let message = body["error"]["message"].as_str().unwrap();
        assert!(message.starts_with("webhook: "), "{message}");
        assert!(message.contains(why), "{url}: {message}");
    }
    // A host name is checked once resolved, at each try: the job runs, the delivery fails.
    let id = agent
        .queue(
            "test/echo",
            json!({"input": {"text": "x"}, "webhook": "http://localhost:9/hook"}),
        )
        .await;
    testkit::eventually("the delivery to fail", || async {
        deliveries(&agent, &id).await["deliveries"][0]["state"] == "failed"
    })
    .await;
    let log = deliveries(&agent, &id).await;
    let error = log["deliveries"][0]["tries"][0]["error"].as_str().unwrap();
    assert!(
        error.contains("refused") && error.contains("127.0.0.1"),
        "{error}"
    );
}

#[tokio::test]
async fn a_fal_webhook_verifies_with_the_jwks_key() {
    let dir = tempfile::tempdir().unwrap();
    let agent = start(dir.path(), ALLOW_LOOPBACK).await;
    let mut receiver = Receiver::start(&[200]).await;
    let url = format!(
        "/fal/queue/test/echo?fal_webhook={}",
        url_escape(&receiver.url)
    );
    let response = agent
        .call(Method::POST, &url)
        .json(&json!({"text": "fal"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let id = response.json::<Value>().await.unwrap()["request_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let post = receiver.next().await;
    let body: Value = serde_json::from_slice(&post.body).unwrap();
    assert_eq!(body["request_id"], id.as_str());
    assert_eq!(body["status"], "OK");
    assert_eq!(body["payload"]["text"], "FAL");
    assert_eq!(header(&post, "x-fal-webhook-user-id"), "acme");
    let jwks = get_json(&agent, "/fal/.well-known/jwks.json").await;
    let x = URL_SAFE_NO_PAD
        .decode(jwks["keys"][0]["x"].as_str().unwrap())
        .unwrap();
    let key = VerifyingKey::from_bytes(&x.try_into().unwrap()).unwrap();
    let message = format!(
        "{}\n{}\n{}\n{}",
        header(&post, "x-fal-webhook-request-id"),
        header(&post, "x-fal-webhook-user-id"),
        header(&post, "x-fal-webhook-timestamp"),
        hex::encode(Sha256::digest(&post.body))
    );
    let signature = hex::decode(header(&post, "x-fal-webhook-signature")).unwrap();
    let signature = Signature::from_slice(&signature).unwrap();
    key.verify(message.as_bytes(), &signature).unwrap();
}

fn url_escape(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[tokio::test]
async fn a_delivery_is_kept_as_long_as_its_jobs_result() {
    let dir = tempfile::tempdir().unwrap();
    let extra = format!("result_retention_s = 1\n{ALLOW_LOOPBACK}");
    let agent = start(dir.path(), &extra).await;
    let mut receiver = Receiver::start(&[200]).await;
    let id = agent
        .queue(
            "test/echo",
            json!({"input": {"text": "x"}, "webhook": receiver.url}),
        )
        .await;
    receiver.next().await;
    let kept = dir.path().join("webhooks");
    testkit::eventually("the delivery to be written as delivered", || async {
        deliveries(&agent, &id).await["deliveries"][0]["state"] == "delivered"
    })
    .await;
    assert_eq!(std::fs::read_dir(&kept).unwrap().count(), 1);
    testkit::eventually("the result and its delivery to be swept", || async {
        let gone = agent
            .call(Method::GET, &format!("/v1/requests/{id}"))
            .send()
            .await
            .unwrap()
            .status()
            == 404;
        gone && std::fs::read_dir(&kept).unwrap().count() == 0
    })
    .await;
}
