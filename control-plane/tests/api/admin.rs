//! The admin API over the catalog: CRUD, validation, bad input, auth and conflicts.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::server::{ADMIN, AGENT, BODY_LIMIT, Backend, EDGE, TestServer, json, region, revision};

async fn crud_round_trip(backend: Backend) {
    let server = TestServer::start(backend).await;
    let (status, listed) = json(
        server
            .admin(Method::GET, "/admin/v1/regions")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let ids: Vec<&str> = listed["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["eu-west", "us-east"]);

    // Create.
    let record = region("eu-central", "eu");
    let created = server
        .admin(Method::PUT, "/admin/v1/regions/eu-central")
        .json(&record)
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), StatusCode::CREATED);
    let first = revision(&created);
    // Read.
    let read = server
        .admin(Method::GET, "/admin/v1/regions/eu-central")
        .send()
        .await
        .unwrap();
    assert_eq!(revision(&read), first);
    assert_eq!(json(read).await, (StatusCode::OK, record.clone()));
    // Replace, conditionally.
    let mut changed = record.clone();
    changed["endpoint"] = json!("http://127.0.0.1:9300");
    let replaced = server
        .admin(Method::PUT, "/admin/v1/regions/eu-central")
        .header("If-Match", first.to_string())
        .json(&changed)
        .send()
        .await
        .unwrap();
    assert_eq!(replaced.status(), StatusCode::OK);
    let second = revision(&replaced);
    assert!(second > first);
    let (_, read) = json(
        server
            .admin(Method::GET, "/admin/v1/regions/eu-central")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(read["endpoint"], "http://127.0.0.1:9300");
    // A stale revision is refused.
    let stale = server
        .admin(Method::PUT, "/admin/v1/regions/eu-central")
        .header("If-Match", format!("\"{first}\""))
        .json(&record)
        .send()
        .await
        .unwrap();
    let (status, body) = json(stale).await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(body["error"]["type"], "conflict");
    // Delete.
    let deleted = server
        .admin(Method::DELETE, "/admin/v1/regions/eu-central")
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status(), StatusCode::NO_CONTENT);
    for method in [Method::GET, Method::DELETE] {
        let (status, body) = json(
            server
                .admin(method, "/admin/v1/regions/eu-central")
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert_eq!(body["error"]["type"], "not_found");
    }

    // POST creates and refuses an existing id; models are addressed as owner/name.
    let uk = json!({"id": "uk", "name": "United Kingdom"});
    let post = |body: &Value| {
        server
            .admin(Method::POST, "/admin/v1/jurisdictions")
            .json(body)
            .send()
    };
    assert_eq!(post(&uk).await.unwrap().status(), StatusCode::CREATED);
    assert_eq!(post(&uk).await.unwrap().status(), StatusCode::CONFLICT);
    let (status, model) = json(
        server
            .admin(Method::GET, "/admin/v1/models/meridian/esrgan-x4")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(model["unit"], "megapixel");
    let (status, tenant) = json(
        server
            .admin(Method::GET, "/admin/v1/tenants/acme")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(tenant["residency"]["jurisdictions"], json!(["eu"]));
    let (status, settings) = json(
        server
            .admin(Method::GET, "/admin/v1/settings")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(settings["currency"], "USD");
    server.stop().await;
}

/// The details of a 422, as (path, fix) pairs.
fn details(body: &Value) -> Vec<(String, String)> {
    assert_eq!(body["error"]["type"], "invalid_catalog", "{body}");
    body["error"]["details"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            assert!(!d["problem"].as_str().unwrap().is_empty());
            (
                d["place"].as_str().unwrap().to_owned(),
                d["fix"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

async fn invalid_writes_are_422_with_paths(backend: Backend) {
    let server = TestServer::start(backend).await;
    let mut bad = region("eu-central", "mars");
    bad["pools"][0]["reserved"] = json!(-3);
    let (status, body) = json(
        server
            .admin(Method::PUT, "/admin/v1/regions/eu-central")
            .json(&bad)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    let paths: Vec<String> = details(&body).into_iter().map(|(p, _)| p).collect();
    assert!(
        paths.contains(&"regions[eu-central].jurisdiction".to_owned()),
        "{paths:?}"
    );
    assert!(
        paths.contains(&"regions[eu-central].pools[0].reserved".to_owned()),
        "{paths:?}"
    );
    assert!(details(&body).iter().all(|(_, fix)| !fix.is_empty()));
    let (status, _) = json(
        server
            .admin(Method::GET, "/admin/v1/regions/eu-central")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        status,
        StatusCode::NOT_FOUND,
        "an invalid record is not stored"
    );

    // The body's id must be the URL's.
    let (status, body) = json(
        server
            .admin(Method::PUT, "/admin/v1/regions/other")
            .json(&region("eu-central", "eu"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(details(&body)[0].0, "id");

    // Records others reference cannot be deleted.
    let (status, body) = json(
        server
            .admin(Method::DELETE, "/admin/v1/jurisdictions/eu")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    let paths: Vec<String> = details(&body).into_iter().map(|(p, _)| p).collect();
    assert!(
        paths.iter().any(|p| p.starts_with("regions[eu-west]")),
        "{paths:?}"
    );
    let (status, _) = json(
        server
            .admin(Method::GET, "/admin/v1/jurisdictions/eu")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::OK);

    // A bad currency in the settings.
    let (status, body) = json(
        server
            .admin(Method::PUT, "/admin/v1/settings")
            .json(&json!({"currency": "euro"}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(details(&body)[0].0, "currency");
    server.stop().await;
}

async fn bad_bodies_are_400_and_413(backend: Backend) {
    let server = TestServer::start(backend).await;
    let put = |body: String| {
        server
            .admin(Method::PUT, "/admin/v1/regions/eu-central")
            .header("content-type", "application/json")
            .body(body)
            .send()
    };
    let (status, body) = json(put("{\"id\": \"eu-central\",".into()).await.unwrap()).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"]["type"], "bad_request");

    let mut unknown = region("eu-central", "eu");
    unknown["colour"] = json!("blue");
    let (status, body) = json(put(unknown.to_string()).await.unwrap()).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("colour"),
        "{body}"
    );

    let (status, body) = json(
        put(json!({"id": "eu-central", "jurisdiction": 7}).to_string())
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");

    let mut huge = region("eu-central", "eu");
    huge["endpoint"] = json!("x".repeat(BODY_LIMIT + 1));
    let (status, body) = json(put(huge.to_string()).await.unwrap()).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(body["error"]["type"], "too_large");

    let (status, body) = json(
        server
            .admin(Method::PUT, "/admin/v1/regions/eu-west")
            .header("If-Match", "yesterday")
            .json(&region("eu-west", "eu"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let (status, body) = json(
        server
            .admin(Method::GET, "/admin/v1/nothing-here")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    let (status, body) = json(
        server
            .admin(Method::PATCH, "/admin/v1/regions/eu-west")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED, "{body}");
    assert_eq!(body["error"]["type"], "method_not_allowed");
    server.stop().await;
}

async fn tokens_are_checked(backend: Backend) {
    let server = TestServer::start(backend).await;
    let url = format!("{}/admin/v1/regions", server.base);
    let missing = server.http.get(&url).send().await.unwrap();
    assert_eq!(missing.headers()["www-authenticate"], "Bearer");
    let (status, body) = json(missing).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(body["error"]["type"], "unauthorized");
    for token in [
        "wrong-token-0123456789",
        EDGE,
        AGENT,
        &ADMIN[..ADMIN.len() - 1],
    ] {
        let (status, _) = json(
            server
                .call(token, Method::GET, "/admin/v1/regions")
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{token}");
    }
    let basic = server
        .http
        .get(&url)
        .basic_auth("admin", Some(ADMIN))
        .send()
        .await
        .unwrap();
    assert_eq!(basic.status(), StatusCode::UNAUTHORIZED);
    // A write without the token changes nothing.
    let (status, _) = json(
        server
            .http
            .put(format!("{url}/eu-central"))
            .json(&region("eu-central", "eu"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        server
            .admin(Method::GET, "/admin/v1/regions/eu-central")
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::NOT_FOUND
    );
    // Each API takes only its own token.
    assert_eq!(
        server
            .call(ADMIN, Method::GET, "/edge/v1/snapshot")
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        server
            .call(EDGE, Method::POST, "/agent/v1/regions/eu-west/heartbeat")
            .json(&json!({"healthy": true}))
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::UNAUTHORIZED
    );
    server.stop().await;
}

/// A client of the test server connecting from the loopback address `from`.
fn client_from(from: [u8; 4]) -> reqwest::Client {
    reqwest::Client::builder()
        .local_address(std::net::IpAddr::from(from))
        .timeout(testkit::patience())
        .build()
        .unwrap()
}

/// Ten wrong admin tokens from one address and it is answered 429 with `Retry-After`, its
/// token unchecked — the right one included — while another address, and the same address
/// on another API, are served; a right token clears only its own address's count.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_tokens_are_throttled_per_address() {
    let server = TestServer::start(Backend::Embedded).await;
    let url = format!("{}/admin/v1/regions", server.base);
    let (a, b) = (client_from([127, 0, 0, 1]), client_from([127, 0, 0, 2]));
    let get = |client: &reqwest::Client, token: &str| {
        let request = client.get(&url).bearer_auth(token);
        async move { request.send().await.unwrap() }
    };
    for i in 0..10 {
        let answer = get(&a, &format!("wrong-token-{i:02}-0123456789")).await;
        assert_eq!(answer.status(), StatusCode::UNAUTHORIZED, "try {i}");
    }
    let throttled = get(&a, ADMIN).await;
    assert_eq!(throttled.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(throttled.headers()["retry-after"], "30");
    let (_, body) = json(throttled).await;
    assert_eq!(body["error"]["type"], "throttled", "{body}");
    // Another address is served, and its own wrong tokens and right token count for it only.
    assert_eq!(get(&b, ADMIN).await.status(), StatusCode::OK);
    for _ in 0..9 {
        assert_eq!(
            get(&b, "wrong-token-0123456789").await.status(),
            StatusCode::UNAUTHORIZED
        );
    }
    assert_eq!(get(&b, ADMIN).await.status(), StatusCode::OK);
    assert_eq!(
        get(&b, "wrong-token-0123456789").await.status(),
        StatusCode::UNAUTHORIZED,
        "B's right token cleared B's count"
    );
    assert_eq!(get(&a, ADMIN).await.status(), StatusCode::TOO_MANY_REQUESTS);
    // The edge API counts apart: the throttled address still reads its snapshot.
    let snapshot = a
        .get(format!("{}/edge/v1/snapshot", server.base))
        .bearer_auth(EDGE)
        .send()
        .await
        .unwrap();
    assert_eq!(snapshot.status(), StatusCode::OK);
    let metrics = a
        .get(format!("{}/metrics", server.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for line in [
        "meridian_auth_failures_total{api=\"admin\"} 20",
        "meridian_auth_throttled_total{api=\"admin\"} 2",
    ] {
        assert!(metrics.lines().any(|l| l == line), "{line}: {metrics}");
    }
    server.stop().await;
}

async fn concurrent_conflicting_writes_one_wins(backend: Backend) {
    let server = TestServer::start(backend).await;
    let read = server
        .admin(Method::GET, "/admin/v1/tenants/acme")
        .send()
        .await
        .unwrap();
    let base = revision(&read);
    let (_, tenant) = json(read).await;
    let writers = (0..8).map(|i| {
        let mut changed = tenant.clone();
        changed["latency_goal_ms"] = json!(500 + i);
        server
            .admin(Method::PUT, "/admin/v1/tenants/acme")
            .header("If-Match", base.to_string())
            .json(&changed)
            .send()
    });
    let statuses: Vec<StatusCode> = futures_join(writers).await;
    let won = statuses.iter().filter(|s| **s == StatusCode::OK).count();
    let lost = statuses
        .iter()
        .filter(|s| **s == StatusCode::CONFLICT)
        .count();
    assert_eq!((won, lost), (1, 7), "{statuses:?}");
    server.stop().await;
}

/// Sends every request at once and collects the statuses.
async fn futures_join<F>(requests: impl Iterator<Item = F>) -> Vec<StatusCode>
where
    F: std::future::Future<Output = reqwest::Result<reqwest::Response>> + Send + 'static,
{
    let tasks: Vec<_> = requests.map(tokio::spawn).collect();
    let mut out = Vec::new();
    for task in tasks {
        out.push(task.await.unwrap().unwrap().status());
    }
    out
}

async fn records_outlive_a_restart_and_the_seed_applies_once(backend: Backend) {
    let server = TestServer::start(backend).await;
    let put = server
        .admin(Method::PUT, "/admin/v1/regions/eu-central")
        .json(&region("eu-central", "eu"))
        .send()
        .await
        .unwrap();
    let kept = revision(&put);
    let (status, _) = json(
        server
            .admin(Method::PUT, "/admin/v1/regions/us-east")
            .json(&region("us-east", "us"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    // A delete with a stale revision is refused; with the current one it goes through.
    let (status, _) = json(
        server
            .admin(Method::DELETE, "/admin/v1/models/meridian/esrgan-x4")
            .header("If-Match", "1")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::CONFLICT);
    let model = server
        .admin(Method::GET, "/admin/v1/models/meridian/esrgan-x4")
        .send()
        .await
        .unwrap();
    let current = revision(&model);
    let deleted = server
        .admin(Method::DELETE, "/admin/v1/models/meridian/esrgan-x4")
        .header("If-Match", current.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status(), StatusCode::NO_CONTENT);

    let server = server.restart().await;
    let read = server
        .admin(Method::GET, "/admin/v1/regions/eu-central")
        .send()
        .await
        .unwrap();
    assert_eq!(revision(&read), kept);
    let (status, us_east) = json(
        server
            .admin(Method::GET, "/admin/v1/regions/us-east")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        us_east["pools"][0]["gpu"], "A100",
        "the seed did not overwrite the change"
    );
    let (status, _) = json(
        server
            .admin(Method::GET, "/admin/v1/models/meridian/esrgan-x4")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        status,
        StatusCode::NOT_FOUND,
        "the seed did not bring back a deleted record"
    );
    server.stop().await;
}

crate::both_backends!(
    crud_round_trip,
    records_outlive_a_restart_and_the_seed_applies_once,
    invalid_writes_are_422_with_paths,
    bad_bodies_are_400_and_413,
    tokens_are_checked,
    concurrent_conflicting_writes_one_wins,
);
