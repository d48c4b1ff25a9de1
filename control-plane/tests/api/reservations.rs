//! GPU reservations: CRUD with revisions, validation against the catalog, and their effect
//! on the reserved capacity edges route with, applied when they start and end.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use control_plane_client::ControlPlane;
use control_plane_client::wire::{AgentReport, Reservation, Snapshot};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::server::{ADMIN, AGENT, Backend, EDGE, TestServer, json, revision};

fn now_ms() -> i64 {
    i64::try_from(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_millis(),
    )
    .unwrap()
}

fn reservation(id: &str, gpus: i64, price: f64, start_ms: i64, end_ms: i64) -> Value {
    json!({
        "id": id, "region": "eu-west", "pool": "h100", "gpus": gpus,
        "price_per_gpu_hour": price, "start_ms": start_ms, "end_ms": end_ms,
        "note": "contract 42"
    })
}

async fn list_ids(server: &TestServer) -> Vec<String> {
    let (_, listed) = json(
        server
            .admin(Method::GET, "/admin/v1/reservations")
            .send()
            .await
            .unwrap(),
    )
    .await;
    listed["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap().to_owned())
        .collect()
}

async fn reservations_crud_and_validation(backend: Backend) {
    let server = TestServer::start(backend).await;
    let year = 365 * 86_400_000;
    let body = reservation("h100-2025", 4, 1.8, 0, year);
    let created = server
        .admin(Method::POST, "/admin/v1/reservations")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), StatusCode::CREATED);
    let first = revision(&created);
    let again = server
        .admin(Method::POST, "/admin/v1/reservations")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), StatusCode::CONFLICT);
    let read = server
        .admin(Method::GET, "/admin/v1/reservations/h100-2025")
        .send()
        .await
        .unwrap();
    assert_eq!(revision(&read), first);
    assert_eq!(json(read).await, (StatusCode::OK, body.clone()));

    // Replace conditionally; a stale revision is a 409 and changes nothing.
    let mut more = body.clone();
    more["gpus"] = json!(6);
    let replaced = server
        .admin(Method::PUT, "/admin/v1/reservations/h100-2025")
        .header("If-Match", first.to_string())
        .json(&more)
        .send()
        .await
        .unwrap();
    assert_eq!(replaced.status(), StatusCode::OK);
    let stale = server
        .admin(Method::PUT, "/admin/v1/reservations/h100-2025")
        .header("If-Match", first.to_string())
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(stale.status(), StatusCode::CONFLICT);
    let admin = server.client(ADMIN);
    let current = admin
        .get::<Reservation>("reservations", "h100-2025")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(current.record.gpus, 6);

    // Invalid reservations are 422s naming each field and a fix; nothing is stored.
    let cases = [
        (json!({"region": "mars"}), "reservations[bad].region"),
        (json!({"pool": "tpu"}), "reservations[bad].pool"),
        (json!({"gpus": 0}), "reservations[bad].gpus"),
        (
            json!({"price_per_gpu_hour": -1.0}),
            "reservations[bad].price_per_gpu_hour",
        ),
        (json!({"end_ms": 0}), "reservations[bad].end_ms"),
    ];
    for (change, path) in cases {
        let mut bad = reservation("bad", 1, 1.0, 0, year);
        for (k, v) in change.as_object().unwrap() {
            bad[k] = v.clone();
        }
        let (status, error) = json(
            server
                .admin(Method::PUT, "/admin/v1/reservations/bad")
                .json(&bad)
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{error}");
        let details = error["error"]["details"].as_array().unwrap();
        assert_eq!(details.len(), 1, "{error}");
        assert_eq!(details[0]["place"], path);
        assert!(!details[0]["fix"].as_str().unwrap().is_empty());
    }
    let (status, _) = json(
        server
            .admin(Method::POST, "/admin/v1/reservations")
            .json(&json!({"id": "x", "gpus": "many"}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(list_ids(&server).await, ["h100-2025"]);

    // The pool cannot go while a reservation needs it.
    let (status, error) = json(
        server
            .admin(Method::DELETE, "/admin/v1/regions/eu-west")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{error}");
    assert_eq!(
        error["error"]["details"][0]["place"],
        "reservations[h100-2025]"
    );

    // Delete: conditional on the revision, then gone.
    admin
        .delete("reservations", "h100-2025", Some(current.revision))
        .await
        .unwrap();
    let (status, _) = json(
        server
            .admin(Method::DELETE, "/admin/v1/reservations/h100-2025")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(list_ids(&server).await.is_empty());
    server.stop().await;
}

/// Long-polls snapshots, as an edge does, until `done` holds for one (failing the test
/// after the test kit's patience).
async fn snapshot_until(edge: &ControlPlane, done: impl Fn(&Snapshot) -> bool) -> Snapshot {
    testkit::within("a snapshot that shows it", async {
        let mut snapshot = edge.snapshot().await.unwrap();
        while !done(&snapshot) {
            if let Some(next) = edge
                .poll_snapshot(snapshot.revision, Duration::from_secs(5))
                .await
                .unwrap()
            {
                snapshot = next;
            }
        }
        snapshot
    })
    .await
}

fn pool(snapshot: &Snapshot, region: &str) -> (i64, Option<f64>) {
    let region = snapshot
        .catalog
        .regions
        .iter()
        .find(|r| r.id == region)
        .unwrap();
    (
        region.pools[0].reserved,
        region.pools[0].reserved_price_per_hour,
    )
}

async fn active_reservations_set_reserved_capacity(backend: Backend) {
    let server = TestServer::start(backend).await;
    let admin = server.client(ADMIN);
    let edge = server.client(EDGE);
    let agent = server.client(AGENT);
    assert_eq!(
        pool(&edge.snapshot().await.unwrap(), "eu-west"),
        (2, Some(2.2))
    );
    // The agent's view: its region's pools and the models placed in it, and heartbeats
    // that say which catalog revision is current (live status alone does not change it).
    let report = AgentReport {
        healthy: true,
        ..AgentReport::default()
    };
    let before = agent.register("eu-west", &report).await.unwrap();
    let beat = agent.heartbeat("eu-west", &report).await.unwrap();
    assert_eq!(beat.catalog_revision, before.catalog_revision);
    let catalog = agent.agent_catalog("eu-west").await.unwrap();
    assert!(catalog.revision >= before.catalog_revision);
    assert_eq!(catalog.region.pools[0].reserved, 2);
    let models: Vec<&str> = catalog.models.iter().map(|m| m.id.as_str()).collect();
    assert_eq!(models, ["meridian/esrgan-x4"]);
    let missing = agent.agent_catalog("mars-1").await.unwrap_err();
    assert_eq!(missing.status(), Some(404));

    let now = now_ms();
    let day = 86_400_000;
    // Two active reservations, one that ends in a moment, one that has not started.
    for (id, gpus, price, start, end) in [
        ("long", 3, 2.0, now - day, now + day),
        ("short", 1, 4.0, now - day, now + 1500),
        ("later", 50, 0.5, now + day, now + 2 * day),
    ] {
        admin
            .put(
                "reservations",
                id,
                &reservation(id, gpus, price, start, end),
                None,
            )
            .await
            .unwrap();
    }
    let with = snapshot_until(&edge, |s| pool(s, "eu-west").0 == 4).await;
    let (_, price) = pool(&with, "eu-west");
    assert!(
        (price.unwrap() - 2.5).abs() < 1e-9,
        "GPU-weighted: {price:?}"
    );
    assert_eq!(
        pool(&with, "us-east"),
        (0, None),
        "no reservations: as configured"
    );
    assert!(with.catalog.validate().is_ok());
    // The agent is told a newer catalog exists, and its catalog carries the reservations.
    let told = agent.heartbeat("eu-west", &report).await.unwrap();
    assert!(told.catalog_revision > catalog.revision, "{told:?}");
    let fetched = agent.agent_catalog("eu-west").await.unwrap();
    assert!(fetched.revision >= told.catalog_revision);
    assert_eq!(fetched.region.pools[0].reserved, 4);
    assert!((fetched.region.pools[0].reserved_price_per_hour.unwrap() - 2.5).abs() < 1e-9);

    // When "short" ends the edge is woken with the smaller reservation.
    let after = snapshot_until(&edge, |s| pool(s, "eu-west").0 == 3).await;
    assert_eq!(pool(&after, "eu-west"), (3, Some(2.0)));
    assert!(now_ms() >= now + 1500, "not before it ended");

    // Deleting every active one restores the configured values.
    admin.delete("reservations", "long", None).await.unwrap();
    admin.delete("reservations", "short", None).await.unwrap();
    snapshot_until(&edge, |s| pool(s, "eu-west") == (2, Some(2.2))).await;
    server.stop().await;
}

crate::both_backends!(
    reservations_crud_and_validation,
    active_reservations_set_reserved_capacity
);
