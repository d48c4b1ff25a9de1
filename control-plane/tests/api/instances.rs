//! A region's instances: their records beyond the lease (in the edge snapshot, expired ones
//! dropped), the check that their pool shares add up to the catalog's pools (admin API and
//! metric), and operators' drain orders.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use control_plane_client::wire::{InstanceRecord, Snapshot};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::server::{Backend, TestServer, json};

fn now_ms() -> u64 {
    u64::try_from(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_millis(),
    )
    .unwrap()
}

/// The report of `eu-west`'s instance `instance` keeping jobs `retention_s`, serving `pools`.
fn report(instance: &str, retention_s: u64, pools: Value) -> Value {
    json!({
        "schema": "1.4", "healthy": true, "instance": instance,
        "endpoint": format!("http://127.0.0.1:7000/{instance}"),
        "result_retention_s": retention_s, "pools": pools
    })
}

/// Sends `body` to `/agent/v1/regions/eu-west/{call}`; the status and answer.
async fn agent(server: &TestServer, call: &str, body: &Value) -> (StatusCode, Value) {
    json(
        server
            .agent(&format!("/agent/v1/regions/eu-west/{call}"))
            .json(body)
            .send()
            .await
            .unwrap(),
    )
    .await
}

async fn register(server: &TestServer, body: &Value) -> Value {
    let (status, answer) = agent(server, "register", body).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    answer
}

async fn heartbeat(server: &TestServer, body: &Value) -> Value {
    let (status, answer) = agent(server, "heartbeat", body).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    answer
}

async fn deregister(server: &TestServer, instance: &str) {
    let path = format!("/agent/v1/regions/eu-west/deregister?instance={instance}");
    let status = server.agent(&path).send().await.unwrap().status();
    assert_eq!(status, StatusCode::NO_CONTENT);
}

async fn snapshot_instances(server: &TestServer) -> Vec<InstanceRecord> {
    let response = server.edge("/edge/v1/snapshot").send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    response.json::<Snapshot>().await.unwrap().instances
}

fn named<'a>(records: &'a [InstanceRecord], instance: &str) -> Option<&'a InstanceRecord> {
    records.iter().find(|r| r.instance == instance)
}

async fn instances(server: &TestServer, region: &str) -> (StatusCode, Value) {
    let path = format!("/admin/v1/regions/{region}/instances");
    json(server.admin(Method::GET, &path).send().await.unwrap()).await
}

async fn instance_view(server: &TestServer, instance: &str) -> Value {
    let (status, body) = instances(server, "eu-west").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body["instances"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["instance"] == instance)
        .cloned()
        .unwrap_or(Value::Null)
}

/// The store's mod revision of the record of `eu-west`'s `instance`, read from etcd.
async fn record_revision(server: &TestServer, instance: &str) -> Option<i64> {
    use control_plane::store::Store;
    let store = crate::support::etcd_store(server.etcd()?).await;
    let key = format!("/meridian/v1/instances/eu-west/{instance}");
    Some(store.get(&key).await.unwrap().unwrap().mod_revision)
}

async fn records_follow_registration_heartbeats_and_deregistration(backend: Backend) {
    let server = TestServer::start(backend).await;
    let before = now_ms();
    register(&server, &report("gpu-1", 3600, json!({}))).await;
    // The region's only agent (no instance id) is live but has no record.
    register(&server, &json!({"healthy": true})).await;
    let records = snapshot_instances(&server).await;
    assert_eq!(records.len(), 1, "{records:?}");
    let gpu1 = named(&records, "gpu-1").unwrap();
    assert_eq!(gpu1.region, "eu-west");
    assert_eq!(gpu1.endpoint, "http://127.0.0.1:7000/gpu-1");
    assert_eq!(gpu1.result_retention_s, 3600);
    assert!(!gpu1.deregistered);
    assert!(gpu1.last_seen_ms >= before && gpu1.last_seen_ms <= now_ms());

    // Heartbeats keep the status fresh without writing the record each time (at most every
    // 30 s); the snapshot's last-seen time follows the status.
    let written = record_revision(&server, "gpu-1").await;
    let beat = report("gpu-1", 3600, json!({}));
    testkit::eventually("a heartbeat's time to pass the registration's", || async {
        heartbeat(&server, &beat).await;
        named(&snapshot_instances(&server).await, "gpu-1")
            .unwrap()
            .last_seen_ms
            > gpu1.last_seen_ms
    })
    .await;
    assert_eq!(record_revision(&server, "gpu-1").await, written);

    // Deregistration marks the record; a changed endpoint is written at once.
    let mut beat = beat;
    beat["endpoint"] = json!("http://127.0.0.1:7001");
    heartbeat(&server, &beat).await;
    let left = now_ms();
    deregister(&server, "gpu-1").await;
    let records = snapshot_instances(&server).await;
    let gpu1 = named(&records, "gpu-1").unwrap();
    assert!(gpu1.deregistered && gpu1.last_seen_ms >= left);
    assert_eq!(gpu1.endpoint, "http://127.0.0.1:7001");

    // gpu-2 keeps its jobs 2 s: once it has been away longer, snapshots leave it out, while
    // gpu-1 (an hour) stays.
    register(&server, &report("gpu-2", 2, json!({}))).await;
    deregister(&server, "gpu-2").await;
    assert!(named(&snapshot_instances(&server).await, "gpu-2").is_some());
    testkit::eventually("gpu-2's record to expire", || async {
        named(&snapshot_instances(&server).await, "gpu-2").is_none()
    })
    .await;
    assert!(named(&snapshot_instances(&server).await, "gpu-1").is_some());
    let view = instance_view(&server, "gpu-1").await;
    assert_eq!(
        (view["live"].clone(), view["deregistered"].clone()),
        (json!(false), json!(true))
    );
    assert_eq!(instance_view(&server, "gpu-2").await, Value::Null);

    // The records outlive a restart of the control plane.
    let server = server.restart().await;
    assert!(
        named(&snapshot_instances(&server).await, "gpu-1")
            .unwrap()
            .deregistered
    );
    server.stop().await;
}

/// The line of the pools gauge for `eu-west`, if any.
async fn pools_gauge(server: &TestServer) -> Option<String> {
    let text = server
        .http
        .get(format!("{}/metrics", server.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find(|l| l.starts_with(r#"meridian_region_pools_match{region="eu-west"}"#))
        .map(str::to_owned)
}

async fn wait_for_gauge(server: &TestServer, expected: Option<&str>) {
    let expected =
        expected.map(|v| format!(r#"meridian_region_pools_match{{region="eu-west"}} {v}"#));
    testkit::eventually(&format!("the pools gauge to read {expected:?}"), || async {
        pools_gauge(server).await == expected
    })
    .await;
}

/// The pool check of `eu-west`: `pools_match` and `(pool, catalog reserved, instances
/// reserved, matches)` per pool.
async fn pool_check(server: &TestServer) -> (Value, Vec<(String, u64, u64, Value)>) {
    let (status, body) = instances(server, "eu-west").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let pools = body["pools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["pool"].as_str().unwrap().to_owned(),
                p["catalog"]["reserved"].as_u64().unwrap(),
                p["instances"]["reserved"].as_u64().unwrap(),
                p["matches"].clone(),
            )
        })
        .collect();
    (body["pools_match"].clone(), pools)
}

fn h100(catalog: u64, instances: u64, matches: Value) -> Vec<(String, u64, u64, Value)> {
    vec![("h100".to_owned(), catalog, instances, matches)]
}

/// Sends each of `beats` as a heartbeat every 300 ms (against the test server's 2 s
/// leases) until aborted; an instance not registered (yet, or any more) is answered 404,
/// which is left alone.
fn keep_beating(server: Arc<TestServer>, beats: Vec<Value>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut every = tokio::time::interval(Duration::from_millis(300));
        loop {
            every.tick().await;
            for beat in &beats {
                agent(&server, "heartbeat", beat).await;
            }
        }
    })
}

async fn the_pool_check_compares_live_instances_with_the_catalog(backend: Backend) {
    let server = Arc::new(TestServer::start(backend).await);
    // eu-west has two reserved H100s; no instance reports yet.
    assert_eq!(
        pool_check(&server).await,
        (Value::Null, h100(2, 0, Value::Null))
    );
    let (status, body) = instances(&server, "atlantis").await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert_eq!(body["error"]["type"], "not_found");

    let one = json!({"h100": {"reserved": 1, "on_demand": 0}});
    let beats = vec![
        report("gpu-1", 60, one.clone()),
        report("gpu-2", 60, one.clone()),
        report("old", 60, json!({})),
    ];
    let beating = keep_beating(server.clone(), beats);
    register(&server, &report("gpu-1", 60, one.clone())).await;
    assert_eq!(
        pool_check(&server).await,
        (json!(false), h100(2, 1, json!(false)))
    );
    wait_for_gauge(&server, Some("0")).await;

    register(&server, &report("gpu-2", 60, one.clone())).await;
    assert_eq!(
        pool_check(&server).await,
        (json!(true), h100(2, 2, json!(true)))
    );
    wait_for_gauge(&server, Some("1")).await;
    let view = instance_view(&server, "gpu-2").await;
    assert_eq!(view["pools"], one);
    assert_eq!(
        (view["live"].clone(), view["healthy"].clone()),
        (json!(true), json!(true))
    );

    // A reservation of three GPUs, active now, makes the pool three: the shares no longer
    // add up.
    let now = i64::try_from(now_ms()).unwrap();
    let (status, body) = json(
        server
            .admin(Method::POST, "/admin/v1/reservations")
            .json(&json!({
                "id": "h100-now", "region": "eu-west", "pool": "h100", "gpus": 3,
                "price_per_gpu_hour": 2.0, "start_ms": now - 1000, "end_ms": now + 3_600_000
            }))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    testkit::eventually("the reservation to count in the pool", || async {
        pool_check(&server).await == (json!(false), h100(3, 2, json!(false)))
    })
    .await;
    wait_for_gauge(&server, Some("0")).await;

    // An instance that reports no pools (an older agent) makes the check not reported.
    register(&server, &report("old", 60, json!({}))).await;
    let (status, body) = instances(&server, "eu-west").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["pools_match"], Value::Null, "{body}");
    assert_eq!(body["pools_unreported"], json!(["old"]));
    wait_for_gauge(&server, None).await;

    // Once it leaves, the rest are compared again.
    deregister(&server, "old").await;
    wait_for_gauge(&server, Some("0")).await;
    beating.abort();
    let _ = beating.await;
    Arc::into_inner(server).unwrap().stop().await;
}

async fn drain(server: &TestServer, region: &str, instance: &str) -> (StatusCode, Value) {
    let path = format!("/admin/v1/regions/{region}/instances/{instance}/drain");
    json(server.admin(Method::POST, &path).send().await.unwrap()).await
}

async fn a_drain_order_reaches_heartbeats_until_the_instance_registers_again(backend: Backend) {
    let server = TestServer::start(backend).await;
    for (region, instance) in [
        ("atlantis", "gpu-1"),
        ("eu-west", "gpu-1"),
        ("eu-west", "Not_An-Id"),
    ] {
        let (status, body) = drain(&server, region, instance).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{region}/{instance}: {body}");
        assert_eq!(body["error"]["type"], "not_found");
    }
    let beat = report("gpu-1", 60, json!({}));
    assert_eq!(register(&server, &beat).await.get("drain"), None);
    assert_eq!(heartbeat(&server, &beat).await.get("drain"), None);
    register(&server, &report("gpu-2", 60, json!({}))).await;

    let (status, body) = drain(&server, "eu-west", "gpu-1").await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    assert_eq!(
        (body["instance"].clone(), body["drain_requested"].clone()),
        (json!("gpu-1"), json!(true))
    );
    assert_eq!(
        instance_view(&server, "gpu-1").await["drain_requested"],
        true
    );
    assert_eq!(
        instance_view(&server, "gpu-2").await["drain_requested"],
        false
    );
    for _ in 0..2 {
        assert_eq!(heartbeat(&server, &beat).await["drain"], true);
    }
    let other = heartbeat(&server, &report("gpu-2", 60, json!({}))).await;
    assert_eq!(other.get("drain"), None, "only the ordered instance drains");

    // The order is kept in the store: it outlives a restart of the control plane.
    let server = server.restart().await;
    assert_eq!(
        instance_view(&server, "gpu-1").await["drain_requested"],
        true
    );

    // A restarted instance registers again and serves.
    assert_eq!(register(&server, &beat).await.get("drain"), None);
    assert_eq!(heartbeat(&server, &beat).await.get("drain"), None);
    assert_eq!(
        instance_view(&server, "gpu-1").await["drain_requested"],
        false
    );

    // Deregistration clears an order too.
    register(&server, &report("gpu-2", 60, json!({}))).await;
    assert_eq!(
        drain(&server, "eu-west", "gpu-2").await.0,
        StatusCode::ACCEPTED
    );
    deregister(&server, "gpu-2").await;
    let view = instance_view(&server, "gpu-2").await;
    assert_eq!(
        (
            view["deregistered"].clone(),
            view["drain_requested"].clone()
        ),
        (json!(true), json!(false))
    );
    server.stop().await;
}

crate::both_backends!(
    records_follow_registration_heartbeats_and_deregistration,
    the_pool_check_compares_live_instances_with_the_catalog,
    a_drain_order_reaches_heartbeats_until_the_instance_registers_again,
);
