//! The compatible surfaces (fal, OpenAI, Replicate) through the edge: a job that names its
//! model in a multipart body goes where that model is served, calls about a request go to
//! the region in its id, the edge's own errors take each surface's envelope, agents learn
//! the URL the client reached the edge at, and a file by signed link needs no key.

use std::path::PathBuf;

use edge_proxy::HttpsListen;
use serde_json::json;

use testkit::stand_in::Seen;

use crate::support::*;

/// A multipart form of `parts` (name, value) with boundary `b0und`.
fn form(parts: &[(&str, &[u8])]) -> Vec<u8> {
    let mut body = Vec::new();
    for (name, value) in parts {
        body.extend_from_slice(
            format!("--b0und\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n")
                .as_bytes(),
        );
        body.extend_from_slice(value);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(b"--b0und--\r\n");
    body
}

const FORM: &str = "multipart/form-data; boundary=b0und";

/// The calls `region`'s agent received on `path`.
fn calls_to(world: &World, region: &str, path: &str) -> Vec<Seen> {
    world
        .agent(region)
        .seen()
        .into_iter()
        .filter(|seen| seen.path == path)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_openai_multipart_job_goes_where_its_model_field_is_served() {
    let world = World::start(&[]).await;
    let edge = world.start_edge(world.edge_config()).await;
    let path = "/v1/audio/transcriptions";
    // Speech bytes that look like a delimiter line do not end the part early.
    let audio: &[u8] = b"RIFF\r\n--b0un\r\n\x00\x01";
    let body = form(&[
        ("file", audio),
        ("model", b"meridian/whisper-tiny-en"),
        ("response_format", b"text"),
    ]);
    let post = |key: &str, content_type: &str, body: Vec<u8>| {
        edge.http
            .post(format!("{}{path}", edge.base))
            .header("authorization", format!("Bearer {key}"))
            .header("content-type", content_type)
            .body(body)
            .send()
    };
    let answer = Answer::of(post(world.key("acme"), FORM, body.clone()).await.unwrap()).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    // whisper-tiny-en is served only in uk-south.
    assert_eq!(answer.header("x-meridian-region"), Some("uk-south"));
    let seen = calls_to(&world, "uk-south", path);
    assert_eq!(seen.len(), 1);
    assert_eq!(
        seen[0].body, body,
        "the agent gets the body as the client sent it"
    );
    assert_eq!(seen[0].tenant.as_deref(), Some("acme"));
    assert!(!seen[0].authorization);

    // The edge's own refusals, in OpenAI's envelope.
    let unknown = form(&[("model", b"meridian/nothing")]);
    let answer = Answer::of(post(world.key("acme"), FORM, unknown).await.unwrap()).await;
    assert_eq!(answer.status, 404);
    assert_eq!(answer.body["error"]["code"], "model_not_found");
    assert_eq!(answer.body["error"]["param"], serde_json::Value::Null);
    let nameless = form(&[("file", audio)]);
    let answer = Answer::of(post(world.key("acme"), FORM, nameless).await.unwrap()).await;
    assert_eq!(answer.status, 400);
    assert_eq!(answer.body["error"]["type"], "bad_request");
    // A model of another kind than the call takes.
    let other_kind = form(&[("file", audio), ("model", b"meridian/silero-vad")]);
    let answer = Answer::of(post(world.key("acme"), FORM, other_kind).await.unwrap()).await;
    assert_eq!(answer.status, 400);
    assert_eq!(answer.body["error"]["code"], "model_not_supported");
    let answer = Answer::of(post("mk_live_nope", FORM, body).await.unwrap()).await;
    assert_eq!(answer.status, 401);
    assert_eq!(answer.body["error"]["code"], "unauthorized");
    // A JSON body names its model in the `model` field.
    let answer = Answer::of(
        post(
            world.key("acme"),
            "application/json",
            json!({"model": "meridian/whisper-tiny-en", "file": "x"})
                .to_string()
                .into_bytes(),
        )
        .await
        .unwrap(),
    )
    .await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_eq!(answer.header("x-meridian-region"), Some("uk-south"));
    // Only uk-south ever saw the form.
    for region in ["eu-west", "eu-central", "us-west", "us-east"] {
        let forms = calls_to(&world, region, path)
            .into_iter()
            .filter(|s| s.body.starts_with(b"--b0und"))
            .count();
        assert_eq!(forms, 0, "{region}");
    }
    edge.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fal_and_replicate_calls_about_a_request_go_to_the_region_in_its_id() {
    let world = World::start(&[]).await;
    let edge = world.start_edge(world.edge_config()).await;
    let key = world.key("acme");
    let id = format!("us-west.{:032x}", 7);
    let status = format!("/fal/queue/{ESRGAN}/requests/{id}/status");
    let answer = Answer::of(
        edge.http
            .get(format!("{}{status}?logs=1", edge.base))
            .header("authorization", format!("Key {key}"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    let seen = calls_to(&world, "us-west", &status);
    assert_eq!(seen.len(), 1, "us-west's agent got the status call");
    assert_eq!(seen[0].query.as_deref(), Some("logs=1"));
    // The stand-in knows no such job: its answer is passed on, from us-west.
    assert_eq!(answer.status, 404);
    assert_eq!(answer.header("x-meridian-region"), Some("us-west"));

    let cancel = format!("/v1/predictions/{id}/cancel");
    let response = edge
        .http
        .post(format!("{}{cancel}", edge.base))
        .header("authorization", format!("Bearer {key}"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["x-meridian-region"], "us-west");
    assert_eq!(calls_to(&world, "us-west", &cancel)[0].method, "POST");

    // The edge's own answers on fal's paths: fal's envelope.
    let nowhere = format!("/fal/queue/{ESRGAN}/requests/mars-north.{:032x}", 7);
    let answer = Answer::of(edge.get(&nowhere, key).await.unwrap()).await;
    assert_eq!(answer.status, 404);
    assert_eq!(answer.body["error_type"], "not_found");
    assert!(answer.body["detail"].is_string(), "{}", answer.body);
    let answer = Answer::of(edge.get(&status, "mk_live_wrong").await.unwrap()).await;
    assert_eq!(answer.status, 401);
    assert_eq!(answer.body["error_type"], "unauthorized");
    // Replicate's, on its paths.
    let answer = Answer::of(
        edge.get(&format!("/v1/predictions/{id}"), "mk_live_wrong")
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        answer.body,
        json!({"title": "unauthorized", "detail": answer.body["detail"], "status": 401})
    );
    edge.stop().await;
}

/// The `x-meridian-public-url` each agent call of `region` carried.
fn public_urls(world: &World, region: &str) -> Vec<Option<String>> {
    world
        .agent(region)
        .seen()
        .iter()
        .map(|seen| {
            seen.headers
                .get(contract::headers::PUBLIC_URL)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_learn_the_url_the_client_reached_the_edge_at() {
    let world = World::start(&[]).await;
    let mut config = world.edge_config();
    config.max_body_bytes = 1 << 20;
    let edge = world.start_edge(config).await;
    let key = world.key("euro");
    // A small body (through pingora) and a large one (read whole by the edge), each with a
    // public URL the client made up: the edge's own replaces it.
    for image in ["aGVsbG8=".to_owned(), "A".repeat(100 * 1024)] {
        let answer = Answer::of(
            edge.http
                .post(format!("{}/v1/queue/{ESRGAN}", edge.base))
                .header("authorization", format!("Bearer {key}"))
                .header(contract::headers::PUBLIC_URL, "https://evil.example")
                .json(&json!({"input": {"image": image}}))
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(answer.status, 202, "{}", answer.body);
    }
    let id = format!("eu-west.{:032x}", 1);
    edge.get(&format!("/v1/requests/{id}"), key).await.unwrap();
    let seen: Vec<_> = ["eu-west", "eu-central"]
        .iter()
        .flat_map(|region| public_urls(&world, region))
        .collect();
    assert_eq!(seen.len(), 3, "{seen:?}");
    for url in seen {
        assert_eq!(url.as_deref(), Some(edge.base.as_str()));
    }
    edge.stop().await;

    // Over HTTPS: https:// and the host the client named.
    let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (cert, tls_key): (PathBuf, PathBuf) = (dir.path().join("c.pem"), dir.path().join("k.pem"));
    std::fs::write(&cert, certified.cert.pem()).unwrap();
    std::fs::write(&tls_key, certified.signing_key.serialize_pem()).unwrap();
    let mut config = world.edge_config();
    config.https = vec![HttpsListen {
        address: "127.0.0.1:0".parse().unwrap(),
        cert,
        key: tls_key,
    }];
    let edge = world.start_edge(config).await;
    let address = edge.https.unwrap();
    let tls = reqwest::Client::builder()
        .no_proxy()
        .add_root_certificate(
            reqwest::Certificate::from_pem(certified.cert.pem().as_bytes()).unwrap(),
        )
        .resolve("localhost", address)
        .build()
        .unwrap();
    let status = tls
        .get(format!(
            "https://localhost:{}/v1/requests/{id}",
            address.port()
        ))
        .header("authorization", format!("Key {key}"))
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, 404, "the stand-in knows no such job");
    let last = public_urls(&world, "eu-west").pop().flatten();
    assert_eq!(last, Some(format!("https://localhost:{}", address.port())));
    edge.stop().await;

    // An operator's public_url wins.
    let mut config = world.edge_config();
    config.public_url = Some("https://api.example.com".to_owned());
    let edge = world.start_edge(config).await;
    edge.get(&format!("/v1/requests/{id}"), key).await.unwrap();
    let last = public_urls(&world, "eu-west").pop().flatten();
    assert_eq!(last.as_deref(), Some("https://api.example.com"));
    edge.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_by_signed_link_needs_no_key() {
    let world = World::start(&[]).await;
    let mut config = world.edge_config();
    config.limits.reads = policy::quota::RateLimit {
        per_second: 0.001,
        burst: 2,
    };
    let edge = world.start_edge(config).await;
    let path = format!("/v1/requests/eu-west.{:032x}/files/image.png", 3);
    let signed = "expires=4102444800&signature=c2lnbmVk";
    let get = |url: String| edge.http.get(url).send();
    let answer = Answer::of(get(format!("{}{path}?{signed}", edge.base)).await.unwrap()).await;
    let seen = calls_to(&world, "eu-west", &path);
    assert_eq!(seen.len(), 1, "the link went to the region in its id");
    let call = &seen[0];
    assert_eq!(
        call.query.as_deref(),
        Some(signed),
        "path and query unchanged"
    );
    assert_eq!(call.tenant, None, "a link names no tenant");
    assert_eq!(call.edge_token.as_deref(), Some(AGENT_EDGE));
    assert!(!call.authorization);
    // Whatever the agent answers is the client's answer (the stand-in wants a tenant).
    assert_eq!(answer.status, 400);
    assert_eq!(answer.header("x-meridian-region"), Some("eu-west"));

    // Without a signature, the call needs a key, and nothing reaches the agent.
    let answer = Answer::of(
        get(format!("{}{path}?expires=4102444800", edge.base))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(answer.status, 401);
    assert_eq!(answer.error_type(), "unauthorized");
    // A region the catalog does not have holds no file.
    let nowhere = format!(
        "/v1/requests/mars-north.{:032x}/files/image.png?{signed}",
        3
    );
    let answer = Answer::of(get(format!("{}{nowhere}", edge.base)).await.unwrap()).await;
    assert_eq!(answer.status, 404);
    assert_eq!(calls_to(&world, "eu-west", &path).len(), 1);

    // Links without a key share the address's read rate: its burst of two is spent (the
    // 404 took the second).
    let answer = Answer::of(get(format!("{}{path}?{signed}", edge.base)).await.unwrap()).await;
    assert_eq!(answer.status, 429);
    assert_eq!(answer.error_type(), "read_rate_limited");
    assert!(answer.header("retry-after").is_some());
    assert_eq!(calls_to(&world, "eu-west", &path).len(), 1);
    edge.stop().await;
}
