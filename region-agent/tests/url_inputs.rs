//! Media inputs given as `http(s)` URLs, through the agent's API, against a media server on
//! loopback port 0 in the test that counts the requests it sees: an image URL upscales as
//! its base64 does (ESRGAN-slim with its real weights, fetched as `esrgan_api.rs` fetches
//! them) and the job is stored with the media, not the URL; the destination policy refuses loopback, private, metadata and IPv4-mapped
//! destinations — by name after resolution, and as IP literals — before any request; a
//! redirect to a refused address, too many redirects, a body over the size limit (declared
//! or streamed), a server that never answers, an error status, other schemes and
//! credentials are each a 422 that says why.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::convert::Infallible;
use std::io::Cursor;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use base64::Engine as _;
use image::{ImageFormat, Rgb, RgbImage};
use region_agent::serving::test_model::{Gate, TestModel};
use reqwest::Method;
use serde_json::{Value, json};

use support::{Agent, config, models_dir};

const ECHO: &str = "[[models]]\nid = \"test/echo\"\nweights_dir = \"unused\"\n";

/// The limits the policy tests run under.
const MAX_BYTES: u64 = 100_000;
const TIMEOUT_MS: u64 = 500;
const MAX_REDIRECTS: u32 = 2;

/// A small PNG, the same at every call.
fn png() -> Vec<u8> {
    let image = RgbImage::from_fn(12, 10, |x, y| {
        Rgb([(x * 20) as u8, (y * 25) as u8, ((x + y) * 9) as u8])
    });
    let mut bytes = Vec::new();
    image
        .write_to(&mut Cursor::new(&mut bytes), ImageFormat::Png)
        .unwrap();
    bytes
}

/// A media server on a loopback address, counting every request it receives.
struct MediaServer {
    address: SocketAddr,
    requests: Arc<AtomicUsize>,
}

impl MediaServer {
    /// Serves on `bind` (port 0), or `None` where that address cannot be bound.
    async fn start(bind: &str) -> Option<Self> {
        let listener = tokio::net::TcpListener::bind(bind).await.ok()?;
        let address = listener.local_addr().unwrap();
        let requests = Arc::new(AtomicUsize::new(0));
        let app = Router::new()
            .route("/image.png", get(|| async { image_png() }))
            .route("/redirect/{n}", get(redirect))
            .route("/to/{host}/{port}", get(redirect_to))
            .route("/declared-large", get(|| async { endless(true) }))
            .route("/endless", get(|| async { endless(false) }))
            .route("/silent", get(std::future::pending::<()>))
            .layer(middleware::from_fn_with_state(requests.clone(), count));
        tokio::spawn(async move { axum::serve(listener, app).await });
        Some(Self { address, requests })
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.address)
    }

    fn port(&self) -> u16 {
        self.address.port()
    }

    fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }
}

async fn count(State(requests): State<Arc<AtomicUsize>>, request: Request, next: Next) -> Response {
    requests.fetch_add(1, Ordering::SeqCst);
    next.run(request).await
}

fn image_png() -> Response {
    ([(header::CONTENT_TYPE, "image/png")], png()).into_response()
}

/// `/redirect/n`: `n` redirects (at least one) before the image.
async fn redirect(Path(n): Path<u32>) -> Response {
    let location = match n {
        0 | 1 => "/image.png".to_owned(),
        n => format!("/redirect/{}", n - 1),
    };
    (StatusCode::FOUND, [(header::LOCATION, location)]).into_response()
}

/// `/to/host/port`: a redirect to the image on another host.
async fn redirect_to(Path((host, port)): Path<(String, u16)>) -> Response {
    let location = format!("http://{host}:{port}/image.png");
    (StatusCode::FOUND, [(header::LOCATION, location)]).into_response()
}

/// A body that never ends, declared 10 GB long or sent chunked.
fn endless(declared: bool) -> Response {
    let chunk = Bytes::from(vec![7u8; 64 << 10]);
    let chunks = futures_util::stream::repeat_with(move || Ok::<_, Infallible>(chunk.clone()));
    let mut response = Body::from_stream(chunks).into_response();
    if declared {
        response
            .headers_mut()
            .insert(header::CONTENT_LENGTH, "10000000000".parse().unwrap());
    }
    response
}

async fn start_echo(dir: &std::path::Path, input_urls: &str) -> Agent {
    let prices = [("test/echo", "image", 0.25)];
    let config = config(dir, ECHO, input_urls, &prices);
    Agent::start(config, vec![Arc::new(TestModel::new("test/echo"))]).await
}

/// Queues a test/echo job whose `image` field is `url`: the status and the error message.
async fn queue_image(agent: &Agent, url: &str) -> (u16, Value) {
    let response = agent
        .call(Method::POST, "/v1/queue/test/echo")
        .json(&json!({"input": {"text": "x", "image": url}}))
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap())
}

/// Asserts a 422 `invalid_input` whose message says each of `says`; returns the message.
async fn refused(agent: &Agent, url: &str, says: &[&str]) -> String {
    let (status, body) = queue_image(agent, url).await;
    assert_eq!(status, 422, "{url}: {body}");
    assert_eq!(body["error"]["type"], "invalid_input", "{url}: {body}");
    let message = body["error"]["message"].as_str().unwrap().to_owned();
    assert!(message.starts_with("input.image: "), "{url}: {message}");
    for part in says {
        assert!(message.contains(part), "{url}: {message:?} lacks {part:?}");
    }
    // The policy's and the limits' own problems are never a mere failure to fetch.
    let transport = says.iter().any(|part| part.contains("cannot fetch it"));
    assert!(
        transport || !message.contains("cannot fetch it"),
        "{message}"
    );
    message
}

#[tokio::test]
async fn an_image_url_upscales_as_its_base64_does_and_keys_name_what_was_sent() {
    let media = MediaServer::start("127.0.0.1:0").await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let weights = models_dir().display().to_string();
    let models = format!("[[models]]\nid = \"meridian/esrgan-x2\"\nweights_dir = \"{weights}\"\n");
    let prices = [("meridian/esrgan-x2", "megapixel", 0.002)];
    let allow = "[input_urls]\nallow = [\"127.0.0.1/32\"]\n";
    let config = config(dir.path(), &models, allow, &prices);
    let built = region_agent::serving::builtin::build(&config).unwrap();
    let agent = Agent::start(config, built).await;

    let base64 = base64::engine::general_purpose::STANDARD.encode(png());
    let run = |image: String| {
        agent
            .call(Method::POST, "/v1/run/meridian/esrgan-x2")
            .json(&json!({"input": {"image": image}}))
            .send()
    };
    let by_value: Value = run(base64.clone()).await.unwrap().json().await.unwrap();
    let response = run(media.url("/image.png")).await.unwrap();
    assert_eq!(response.status(), 200);
    let by_url: Value = response.json().await.unwrap();
    assert_eq!(media.requests(), 1);
    assert_eq!(by_url["status"], "COMPLETED", "{by_url}");
    assert_eq!(by_url["units"], by_value["units"]);
    assert_eq!(by_url["cost_nanos"], by_value["cost_nanos"]);
    let file = |result: &Value| {
        let url = result["output"]["image"]["url"]
            .as_str()
            .unwrap()
            .to_owned();
        let request = agent.call(Method::GET, &url);
        async move { request.send().await.unwrap().bytes().await.unwrap() }
    };
    let (from_value, from_url) = (file(&by_value).await, file(&by_url).await);
    assert!(!from_url.is_empty());
    assert_eq!(from_url, from_value, "the upscaled images differ");

    // A key names what the client sent (the URL): sent again, it answers with its job and
    // fetches nothing; the same image sent as base64 under that key is another submission.
    let keyed = |image: String| {
        agent
            .call(Method::POST, "/v1/queue/meridian/esrgan-x2")
            .header(contract::headers::IDEMPOTENCY_KEY, "url-image-1")
            .json(&json!({"input": {"image": image}}))
            .send()
    };
    let first: Value = keyed(media.url("/image.png"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(media.requests(), 2);
    let again: Value = keyed(media.url("/image.png"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(again["request_id"], first["request_id"], "{again}");
    assert_eq!(media.requests(), 2, "a known key fetched the URL again");
    let other = keyed(base64).await.unwrap();
    assert_eq!(other.status(), 422);
    let other: Value = other.json().await.unwrap();
    assert_eq!(other["error"]["type"], "idempotency_key_reused", "{other}");
    agent.stop().await;
}

#[tokio::test]
async fn a_job_is_stored_with_the_media_fetched_not_its_url() {
    let media = MediaServer::start("127.0.0.1:0").await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let weights = models_dir().display().to_string();
    let esrgan = format!("[[models]]\nid = \"meridian/esrgan-x2\"\nweights_dir = \"{weights}\"\n");
    let prices = [
        ("meridian/esrgan-x2", "megapixel", 0.002),
        ("test/echo", "image", 0.25),
    ];
    let allow = "[input_urls]\nallow = [\"127.0.0.1/32\"]\n";
    let built = config(dir.path(), &esrgan, allow, &prices);
    let mut models = region_agent::serving::builtin::build(&built).unwrap();
    // The echo job holds the region's one slot, so the upscaling job stays queued.
    let gate = Gate::closed();
    models.push(Arc::new(TestModel::new("test/echo").gated(&gate)));
    let both = config(dir.path(), &format!("{esrgan}\n{ECHO}"), allow, &prices);
    let agent = Agent::start(both, models).await;
    let holding = agent
        .queue("test/echo", json!({"input": {"text": "hold"}}))
        .await;
    agent.wait_status(&holding, "IN_PROGRESS").await;
    let url = media.url("/image.png");
    let id = agent
        .queue("meridian/esrgan-x2", json!({"input": {"image": url}}))
        .await;
    assert_eq!(agent.status(&id).await["status"], "IN_QUEUE");

    // What a restart would read back: the media itself, as a data: URL.
    let stored = std::fs::read(dir.path().join("jobs").join(&id).join("input.json")).unwrap();
    let stored: Value = serde_json::from_slice(&stored).unwrap();
    let image = stored["image"].as_str().unwrap();
    let data = image.strip_prefix("data:image/png;base64,").expect(image);
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(data)
        .unwrap();
    assert_eq!(decoded, png());

    gate.open();
    let done = agent.wait_status(&id, "COMPLETED").await;
    assert_eq!(done["error"], Value::Null, "{done}");
    assert_eq!(media.requests(), 1);
    agent.stop().await;
}

#[tokio::test]
async fn the_default_policy_refuses_loopback_private_and_metadata_before_any_request() {
    let media = MediaServer::start("127.0.0.1:0").await.unwrap();
    let media_v6 = MediaServer::start("[::1]:0").await;
    let dir = tempfile::tempdir().unwrap();
    let agent = start_echo(dir.path(), "").await;
    let port = media.port();

    let localhost = format!("http://localhost:{port}/image.png");
    let by_name = refused(&agent, &localhost, &[]).await;
    let says = format!(
        "input.image: {localhost}: refused: localhost resolves only to addresses off the public \
         internet ("
    );
    assert!(by_name.starts_with(&says), "{by_name}");
    assert!(
        by_name.contains("127.0.0.1 is a loopback address")
            || by_name.contains("::1 is a loopback address"),
        "{by_name}"
    );
    let cases: &[(String, &str)] = &[
        (media.url("/image.png"), "127.0.0.1 is a loopback address"),
        (
            format!("http://2130706433:{port}/image.png"),
            "127.0.0.1 is a loopback address",
        ),
        (
            format!("http://[::ffff:127.0.0.1]:{port}/image.png"),
            "::ffff:127.0.0.1 is a loopback address",
        ),
        (
            format!(
                "http://[::1]:{}/image.png",
                media_v6.as_ref().map_or(port, MediaServer::port)
            ),
            "::1 is a loopback address",
        ),
        (
            "http://169.254.169.254/latest/meta-data/".to_owned(),
            "169.254.169.254 is a cloud metadata address",
        ),
        (
            "http://[fd00:ec2::254]/latest/meta-data/".to_owned(),
            "fd00:ec2::254 is a cloud metadata address",
        ),
        (
            "http://10.0.0.1/a.png".to_owned(),
            "10.0.0.1 is a private address",
        ),
        (
            "https://100.64.0.1/a.png".to_owned(),
            "100.64.0.1 is a shared (carrier-grade NAT) address",
        ),
    ];
    for (url, says) in cases {
        refused(&agent, url, &["refused: ", says]).await;
    }
    assert_eq!(media.requests(), 0, "a refused destination was requested");
    if let Some(v6) = &media_v6 {
        assert_eq!(v6.requests(), 0, "a refused destination was requested");
    }
    agent.stop().await;
}

#[tokio::test]
async fn redirects_sizes_time_and_schemes_are_bounded() {
    let media = MediaServer::start("127.0.0.1:0").await.unwrap();
    let other = MediaServer::start("127.0.0.2:0")
        .await
        .expect("Linux answers on all of 127.0.0.0/8");
    let dir = tempfile::tempdir().unwrap();
    let input_urls = format!(
        "[input_urls]\nallow = [\"127.0.0.1/32\"]\nmax_bytes = {MAX_BYTES}\n\
         timeout_ms = {TIMEOUT_MS}\nmax_redirects = {MAX_REDIRECTS}\n"
    );
    let agent = start_echo(dir.path(), &input_urls).await;

    // Redirects up to the limit are followed.
    let (status, body) = queue_image(&agent, &media.url("/redirect/2")).await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(media.requests(), 3);
    let id = body["request_id"].as_str().unwrap();
    agent.wait_status(id, "COMPLETED").await;

    refused(
        &agent,
        &media.url("/redirect/3"),
        &["more than 2 redirects"],
    )
    .await;
    assert_eq!(media.requests(), 6, "the third redirect was followed");
    let to_other = format!("/to/127.0.0.2/{}", other.port());
    let says = format!(
        "redirected to http://127.0.0.2:{}/image.png: refused: 127.0.0.2 is a loopback address",
        other.port()
    );
    refused(&agent, &media.url(&to_other), &[&says]).await;
    assert_eq!(other.requests(), 0, "the refused redirect was followed");

    let too_large = format!("the response is larger than the limit of {MAX_BYTES} bytes");
    refused(&agent, &media.url("/declared-large"), &[&too_large]).await;
    refused(&agent, &media.url("/endless"), &[&too_large]).await;
    let too_slow = format!("no complete response within the time limit of {TIMEOUT_MS} ms");
    refused(&agent, &media.url("/silent"), &[&too_slow]).await;
    refused(
        &agent,
        &media.url("/missing"),
        &["answered HTTP 404 Not Found"],
    )
    .await;
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let nobody = format!("http://127.0.0.1:{closed}/image.png");
    refused(&agent, &nobody, &["cannot fetch it: "]).await;
    let tls_to_plain = format!("https://127.0.0.1:{}/image.png", media.port());
    refused(&agent, &tls_to_plain, &["cannot fetch it: "]).await;
    let seen = media.requests();

    let port = media.port();
    let credentials = refused(
        &agent,
        &format!("http://user:secret@127.0.0.1:{port}/image.png"),
        &["must not carry a user name or password"],
    )
    .await;
    assert!(!credentials.contains("secret"), "{credentials}");
    let ftp = format!("ftp://127.0.0.1:{port}/image.png");
    refused(
        &agent,
        &ftp,
        &["only http:// and https:// URLs", "not ftp:"],
    )
    .await;
    refused(&agent, "file:///etc/passwd", &["not file:"]).await;
    refused(&agent, "http://[::1/image.png", &["not a valid URL"]).await;
    assert_eq!(media.requests(), seen, "a refused URL was requested");
    agent.stop().await;
}

#[tokio::test]
async fn with_fetching_off_a_url_is_refused_and_never_requested() {
    let media = MediaServer::start("127.0.0.1:0").await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let input_urls = "[input_urls]\nenabled = false\nallow = [\"127.0.0.1/32\"]\n";
    let agent = start_echo(dir.path(), input_urls).await;
    refused(
        &agent,
        &media.url("/image.png"),
        &["does not fetch media from URLs"],
    )
    .await;
    assert_eq!(media.requests(), 0);
    agent.stop().await;
}
