//! API keys, the edge snapshot with its long poll, and region agents' leases.

use std::time::Duration;

use control_plane_client::wire::{CreatedKey, Snapshot};
use policy::{KeyError, KeyRing};
use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::server::{Backend, TestServer, json, revision};

async fn snapshot(server: &TestServer, query: &str) -> (StatusCode, Option<Snapshot>, String) {
    let response = server
        .edge(&format!("/edge/v1/snapshot{query}"))
        .send()
        .await
        .unwrap();
    let status = response.status();
    let text = response.text().await.unwrap();
    let parsed = (status == StatusCode::OK).then(|| serde_json::from_str(&text).unwrap());
    (status, parsed, text)
}

async fn keys_are_shown_once_and_hashed_in_snapshots(backend: Backend) {
    let server = TestServer::start(backend).await;
    let created = server
        .admin(Method::POST, "/admin/v1/tenants/acme/keys")
        .json(&json!({"label": "ci"}))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), StatusCode::CREATED);
    let created: CreatedKey = created.json().await.unwrap();
    let secret = created.key.clone();
    assert!(secret.starts_with(&format!("mk_live_{}_", created.record.id)));
    assert_eq!(created.record.tenant, "acme");
    assert_eq!(created.record.label.as_deref(), Some("ci"));

    // Listing and reading show the record, never the secret or its hash.
    let path = format!("/admin/v1/tenants/acme/keys/{}", created.record.id);
    for url in ["/admin/v1/tenants/acme/keys", path.as_str()] {
        let text = server
            .admin(Method::GET, url)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(text.contains(&created.record.id), "{text}");
        assert!(!text.contains(&secret) && !text.contains("hash"), "{text}");
    }
    let (status, _) = json(
        server
            .admin(Method::POST, "/admin/v1/tenants/nobody/keys")
            .json(&json!({}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = json(
        server
            .admin(
                Method::GET,
                &format!("/admin/v1/tenants/other/keys/{}", created.record.id),
            )
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // The snapshot carries the hash only, and it authenticates the key.
    let (status, snap, text) = snapshot(&server, "").await;
    assert_eq!(status, StatusCode::OK);
    assert!(!text.contains(&secret));
    let snap = snap.unwrap();
    assert_eq!(snap.catalog.regions.len(), 2);
    let ring = KeyRing::new(snap.keys.clone());
    assert_eq!(ring.authenticate(&secret).unwrap().tenant.as_str(), "acme");

    // A tenant with a live key cannot be deleted.
    let (status, body) = json(
        server
            .admin(Method::DELETE, "/admin/v1/tenants/acme")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");

    // Revocation shows in the next snapshot.
    let revoked = server.admin(Method::DELETE, &path).send().await.unwrap();
    let (status, view) = json(revoked).await;
    assert_eq!(status, StatusCode::OK);
    assert!(view["revoked_at"].is_i64());
    let (status, next, _) = snapshot(&server, &format!("?after={}&wait=10", snap.revision)).await;
    assert_eq!(status, StatusCode::OK);
    let next = next.unwrap();
    assert!(next.revision > snap.revision);
    assert_eq!(
        KeyRing::new(next.keys).authenticate(&secret).unwrap_err(),
        KeyError::Revoked
    );
    let (status, body) = json(
        server
            .admin(Method::DELETE, "/admin/v1/tenants/acme")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
    server.stop().await;
}

async fn long_poll_answers_after_a_write(backend: Backend) {
    let server = std::sync::Arc::new(TestServer::start(backend).await);
    let (_, first, _) = snapshot(&server, "").await;
    let first = first.unwrap();

    // Nothing changes: 304 once the wait runs out.
    let (status, _, _) = snapshot(&server, &format!("?after={}&wait=1", first.revision)).await;
    assert_eq!(status, StatusCode::NOT_MODIFIED);

    // Polls waiting for up to a minute return as soon as a record changes, all of them.
    let pollers: Vec<_> = (0..20)
        .map(|_| {
            let server = server.clone();
            let query = format!("?after={}&wait=60", first.revision);
            tokio::spawn(async move { snapshot(&server, &query).await })
        })
        .collect();
    let write = server
        .admin(Method::POST, "/admin/v1/jurisdictions")
        .json(&json!({"id": "uk"}))
        .send()
        .await
        .unwrap();
    assert_eq!(write.status(), StatusCode::CREATED);
    let written = revision(&write);
    for poller in pollers {
        let (status, next, _) = testkit::within("the poll to return", poller).await.unwrap();
        assert_eq!(status, StatusCode::OK);
        let next = next.unwrap();
        assert!(next.revision >= written);
        assert!(next.catalog.jurisdictions.iter().any(|j| j.id == "uk"));
    }

    // Usage reaches edges only as tenants' spend (under coalesced wake-ups).
    let (status, _) = json(
        server
            .agent("/agent/v1/usage")
            .json(&json!({
                "schema": "1.0", "region": "eu-west",
                "ledger": "0123456789abcdef0123456789abcdef", "seq": 1,
                "rows": [{
                    "tenant": "acme", "model": "meridian/esrgan-x4", "capacity": "on_demand",
                    "hour_ms": 0, "jobs": 1, "failed_jobs": 0, "units_nanos": 1_000_000_000u64,
                    "gpu_nanos": 400_000_000u64, "cost_nanos": 2_000_000u64
                }]
            }))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let (_, current, _) = snapshot(&server, "").await;
    // The snapshot's revision counts the usage write; polling from it sees no change.
    let (status, _, _) = snapshot(
        &server,
        &format!("?after={}&wait=1", current.unwrap().revision),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_MODIFIED);

    // An unreadable query is a 400.
    let (status, _, text) = snapshot(&server, "?after=soon").await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{text}");
    std::sync::Arc::into_inner(server).unwrap().stop().await;
}

async fn a_silent_agent_disappears_when_its_lease_expires(backend: Backend) {
    let server = TestServer::start(backend).await;
    let report = json!({
        "healthy": true,
        "free_reserved": 2,
        "models": {"meridian/esrgan-x4": {"queue_depth": 3, "queue_room": 10, "expected_wait_ms": 120.0, "loaded": true}}
    });
    let (status, body) = json(
        server
            .agent("/agent/v1/regions/nowhere/register")
            .json(&report)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    let (status, body) = json(
        server
            .agent("/agent/v1/regions/eu-west/heartbeat")
            .json(&report)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        (status, body["error"]["type"].as_str()),
        (StatusCode::NOT_FOUND, Some("not_registered"))
    );

    let mut bad = report.clone();
    bad["models"]["meridian/esrgan-x4"]["expected_wait_ms"] = json!(-5.0);
    let (status, body) = json(
        server
            .agent("/agent/v1/regions/eu-west/register")
            .json(&bad)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(
        body["error"]["details"][0]["place"],
        "models[meridian/esrgan-x4].expected_wait_ms"
    );
    // Reports of other schema versions: see skew.rs.

    let (status, body) = json(
        server
            .agent("/agent/v1/regions/eu-west/register")
            .json(&report)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["ttl_ms"], 2000);
    let mut draining = report.clone();
    draining["draining"] = json!(true);
    let (status, _) = json(
        server
            .agent("/agent/v1/regions/eu-west/heartbeat")
            .json(&draining)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let (_, snap, _) = snapshot(&server, "").await;
    let snap = snap.unwrap();
    assert_eq!(snap.regions.len(), 1);
    let live = &snap.regions[0];
    assert_eq!(live.region, "eu-west");
    assert!(live.report.draining && live.report.healthy);
    assert_eq!(live.report.models["meridian/esrgan-x4"].queue_depth, 3);

    // Heartbeats (every 300 ms, as an agent beats, against a 2 s lease) keep the status
    // well past one TTL. The lease is the store's, on real time: etcd's clock cannot be
    // paused (the embedded store's lease clock is tested on paused time in
    // embedded_durability.rs).
    let mut beats = tokio::time::interval(Duration::from_millis(300));
    for _ in 0..10 {
        beats.tick().await;
        let (status, _) = json(
            server
                .agent("/agent/v1/regions/eu-west/heartbeat")
                .json(&report)
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(status, StatusCode::OK);
    }
    // Then silence: the status goes once the lease runs out, and the edge sees it go.
    let mut revision = snapshot(&server, "").await.1.unwrap().revision;
    testkit::within("the silent agent's status to expire", async {
        loop {
            let (status, snap, _) = snapshot(&server, &format!("?after={revision}&wait=5")).await;
            if let Some(snap) = snap {
                if snap.regions.is_empty() {
                    break;
                }
                revision = snap.revision;
            }
            assert!(status == StatusCode::OK || status == StatusCode::NOT_MODIFIED);
        }
    })
    .await;
    let (status, body) = json(
        server
            .agent("/agent/v1/regions/eu-west/heartbeat")
            .json(&report)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        (status, body["error"]["type"].as_str()),
        (StatusCode::NOT_FOUND, Some("not_registered"))
    );

    // Registering again (a restarted agent, or a second one) works, heartbeats go on, and
    // deregistering removes the status at once.
    for path in [
        "/agent/v1/regions/us-east/register",
        "/agent/v1/regions/us-east/register",
        "/agent/v1/regions/us-east/heartbeat",
    ] {
        let status = server
            .agent(path)
            .json(&report)
            .send()
            .await
            .unwrap()
            .status();
        assert_eq!(status, StatusCode::OK, "{path}");
    }
    assert_eq!(snapshot(&server, "").await.1.unwrap().regions.len(), 1);
    assert_eq!(
        server
            .agent("/agent/v1/regions/us-east/deregister")
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::NO_CONTENT
    );
    assert!(snapshot(&server, "").await.1.unwrap().regions.is_empty());
    server.stop().await;
}

crate::both_backends!(
    keys_are_shown_once_and_hashed_in_snapshots,
    long_poll_answers_after_a_write,
    a_silent_agent_disappears_when_its_lease_expires,
);

/// A snapshot asked for after a compacted revision is answered in full, at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compacted_revision_gets_the_full_snapshot() {
    use control_plane::store::Store;
    let server = TestServer::start(Backend::Etcd).await;
    let (_, first, _) = snapshot(&server, "").await;
    let first = first.unwrap();
    for id in ["uk", "jp"] {
        let r = server
            .admin(Method::POST, "/admin/v1/jurisdictions")
            .json(&json!({"id": id}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::CREATED);
    }
    let store = crate::support::etcd_store(server.etcd().unwrap()).await;
    store
        .compact(store.revision().await.unwrap())
        .await
        .unwrap();
    let (status, snap, _) = snapshot(&server, &format!("?after={}&wait=30", first.revision)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(snap.unwrap().catalog.jurisdictions.len(), 4);
    server.stop().await;
}
