//! The agent against the real control plane, both in-process on port 0 (the control plane
//! on its embedded store): the agent takes its catalog from the control plane (and keeps
//! it on disk), registers and heartbeats its report (edges see it in their snapshot), follows
//! a reservation and a price change without a restart, sends its usage as numbered batches
//! whose totals equal its per-job records (read through the control plane) and the cost
//! headers to the billionth, reports draining at shutdown and deregisters. Two instances of
//! one region each report their endpoint, their share of the region's pool and their result
//! retention, and leave one by one (SIGTERM, or the control plane's drain order: the same
//! drain, then the agent stops). Jobs run on the in-code test model.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use contract::Nanos;
use control_plane_client::wire::{AgentReport, Reservation};
use control_plane_client::{ControlPlane, RecordQuery, UsageQuery};
use policy::{ModelSpec, RegionSpec};
use region_agent::serving::test_model::{Gate, TestModel};
use serde_json::json;
use testkit::catalog::{self, Catalog, Region};
use testkit::tokens::AGENT;
use testkit::{Backend, TestControlPlane, eventually};

use support::{Agent, config};

/// The control plane on an embedded store, with short leases.
async fn start_control_plane() -> TestControlPlane {
    TestControlPlane::builder(Backend::Embedded)
        .seed(
            support::catalog(&[("test/echo", "image", 0.25), ("test/slow", "image", 0.1)])
                .tenants(
                    "[[tenants]]\nid = \"acme\"\nresidency = { jurisdictions = [\"eu\"] }\n\
                     [[tenants]]\nid = \"globex\"\nresidency = \"any\"",
                )
                .build(),
        )
        .settings(|api| {
            api.agent_lease_ttl = Duration::from_secs(3);
            api.max_poll_wait = Duration::from_secs(5);
            api.spend_refresh = Duration::from_millis(200);
        })
        .start()
        .await
}

/// Waits until `probe` gives a value, and returns it.
async fn until<T, F, Fut>(what: &str, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let found = Mutex::new(None);
    eventually(what, || {
        let value = probe();
        let found = &found;
        async move {
            let value = value.await;
            let got = value.is_some();
            *found.lock().unwrap() = value;
            got
        }
    })
    .await;
    found
        .into_inner()
        .unwrap()
        .expect("a value once the condition holds")
}

/// The agent's report as the edges see it.
async fn report(edge: &ControlPlane) -> Option<AgentReport> {
    let snapshot = edge.snapshot().await.ok()?;
    let live = snapshot
        .regions
        .into_iter()
        .find(|r| r.region == "eu-west")?;
    Some(live.report)
}

/// Runs a job for `tenant`; returns its `x-meridian-cost`.
async fn run(agent: &Agent, tenant: &str, text: &str) -> Nanos {
    agent
        .run(tenant, "test/echo", json!({"text": text}))
        .await
        .1
}

fn now_ms() -> i64 {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
    i64::try_from(now.unwrap().as_millis()).unwrap()
}

async fn start_agent(cp: &TestControlPlane, dir: &std::path::Path, slow: &Gate) -> Agent {
    let extra = format!(
        "[control_plane]\nurl = \"{}\"\nagent_token = \"{AGENT}\"\nheartbeat_interval_ms = 100\n\
         usage_interval_ms = 100\n",
        cp.url
    );
    let models = "[[models]]\nid = \"test/echo\"\nweights_dir = \"unused\"\n\n\
                  [[models]]\nid = \"test/slow\"\nweights_dir = \"unused\"\n";
    let echo = TestModel::new("test/echo");
    let slow = TestModel::new("test/slow").gated(slow);
    Agent::start(
        config(dir, models, &extra, &[]),
        vec![Arc::new(echo), Arc::new(slow)],
    )
    .await
}

#[tokio::test]
async fn catalog_heartbeats_usage_batches_draining_and_deregistration() {
    let mut cp = start_control_plane().await;
    let (edge, admin) = (cp.edge(), cp.admin());
    let dir = tempfile::tempdir().unwrap();
    let slow_gate = Gate::closed();
    let mut agent = start_agent(&cp, dir.path(), &slow_gate).await;

    // The control plane reads the agent's records at the region's endpoint.
    let mut region = admin
        .get::<RegionSpec>("regions", "eu-west")
        .await
        .unwrap()
        .unwrap();
    region.record.endpoint = agent.base.clone();
    admin
        .put("regions", "eu-west", &region.record, Some(region.revision))
        .await
        .unwrap();

    // The edge sees the region with the agent's report and the catalog it runs with.
    let first = until("the agent reports its catalog", || async {
        report(&edge).await.filter(|r| r.catalog_revision.is_some())
    })
    .await;
    assert!(first.healthy && !first.draining);
    assert_eq!(first.free_reserved, 1);
    // It reports as the instance it made at its first start and keeps in its data directory.
    let kept = std::fs::read_to_string(dir.path().join("instance")).unwrap();
    assert_eq!(first.instance, kept.trim());
    assert!(first.instance.starts_with("i-"), "{}", first.instance);
    assert!(first.models.contains_key("test/echo"));
    let mut costs = Vec::new();
    for (i, tenant) in ["acme", "globex", "acme"].iter().enumerate() {
        costs.push(run(&agent, tenant, &format!("job {i}")).await);
    }
    assert_eq!(costs[0], Nanos(250_000_000));

    // A reservation and a new price reach the running agent.
    let reservation = Reservation {
        id: "cpu-2026".into(),
        region: "eu-west".into(),
        pool: "cpu".into(),
        gpus: 2,
        price_per_gpu_hour: 1.5,
        start_ms: now_ms() - 60_000,
        end_ms: now_ms() + 3_600_000,
        note: None,
    };
    admin
        .put("reservations", "cpu-2026", &reservation, None)
        .await
        .unwrap();
    let mut model = admin
        .get::<ModelSpec>("models", "test/echo")
        .await
        .unwrap()
        .unwrap();
    model.record.price_per_unit = 0.5;
    admin
        .put("models", "test/echo", &model.record, Some(model.revision))
        .await
        .unwrap();
    let changed = until("the reservation's GPUs are slots", || async {
        report(&edge)
            .await
            .filter(|r| r.free_reserved == 2 && r.catalog_revision > first.catalog_revision)
    })
    .await;
    let repriced = until("the new price is in force", || async {
        let cost = run(&agent, "globex", "after").await;
        (cost == Nanos(500_000_000)).then_some(cost)
    })
    .await;
    costs.push(repriced);
    let cached = std::fs::read(dir.path().join("catalog.json")).unwrap();
    let cached: serde_json::Value = serde_json::from_slice(&cached).unwrap();
    assert!(
        cached["revision"].as_i64() >= changed.catalog_revision,
        "the copy is kept on disk"
    );

    // The control plane's totals equal the headers, and the per-job records it reads from
    // the region, to the billionth.
    let charged: Nanos = costs.iter().copied().sum();
    let usage = until("usage is delivered", || async {
        let query = UsageQuery {
            region: Some("eu-west".into()),
            ..UsageQuery::default()
        };
        let report = admin.usage(&query).await.ok()?;
        (report.total.jobs == costs.len() as u64).then_some(report)
    })
    .await;
    assert_eq!(usage.total.cost_nanos, charged);
    let mut records = Vec::new();
    let mut query = RecordQuery {
        region: "eu-west".into(),
        limit: Some(2),
        ..RecordQuery::default()
    };
    loop {
        let page = admin.usage_records(&query).await.unwrap();
        records.extend(page.records);
        match page.next {
            Some(next) => query.cursor = Some(next),
            None => break,
        }
    }
    assert_eq!(records.len(), costs.len());
    assert_eq!(records.iter().map(|r| r.cost_nanos).sum::<Nanos>(), charged);
    assert!(
        records
            .iter()
            .any(|r| r.price_per_unit == 0.5 && r.catalog_revision > 0)
    );

    // Shutdown with a job still running: the agent reports draining while it finishes it,
    // sends its last batch, then the region disappears from the snapshot at once.
    let last = agent
        .queue("test/slow", json!({"input": {"text": "last"}}))
        .await;
    agent.wait_status(&last, "IN_PROGRESS").await;
    agent.shutdown.cancel();
    until("the agent reports draining", || async {
        report(&edge).await.filter(|r| r.draining)
    })
    .await;
    slow_gate.open();
    agent.join().await;
    let snapshot = edge.snapshot().await.unwrap();
    assert!(
        snapshot.regions.iter().all(|r| r.region != "eu-west"),
        "deregistered"
    );
    let query = UsageQuery {
        region: Some("eu-west".into()),
        ..UsageQuery::default()
    };
    let usage = admin.usage(&query).await.unwrap();
    assert_eq!(
        (usage.total.jobs, usage.total.cost_nanos),
        (
            costs.len() as u64 + 1,
            charged.saturating_add(Nanos(100_000_000))
        ),
        "the last job's usage was flushed before the agent stopped"
    );
    cp.stop().await;
}

/// Every instance's report as the edges see it, by instance id.
async fn instances(edge: &ControlPlane) -> Option<BTreeMap<String, AgentReport>> {
    let snapshot = edge.snapshot().await.ok()?;
    let reports = snapshot
        .regions
        .into_iter()
        .filter(|r| r.region == "eu-west")
        .map(|live| (live.report.instance.clone(), live.report))
        .collect();
    Some(reports)
}

/// Each instance the control plane remembers, and whether it deregistered.
async fn deregistered(edge: &ControlPlane) -> Vec<(String, bool)> {
    let mut records: Vec<_> = edge
        .snapshot()
        .await
        .unwrap()
        .instances
        .into_iter()
        .filter(|i| i.region == "eu-west")
        .map(|i| (i.instance, i.deregistered))
        .collect();
    records.sort();
    records
}

/// The control plane with eu-west's `cpu` pool of two reserved slots and no endpoint in the
/// catalog: its instances report their own.
async fn start_shared_region() -> TestControlPlane {
    let region = Region::new("eu-west", "eu", (53.35, -6.26), "")
        .pool("cpu", "cpu")
        .reserved(2, 2.2);
    let catalog = Catalog::new()
        .region(region)
        .model(catalog::Model::new(
            "test/echo",
            "image-to-image",
            "image",
            0.25,
        ))
        .model(catalog::Model::new(
            "test/slow",
            "image-to-image",
            "image",
            0.1,
        ))
        .tenants("[[tenants]]\nid = \"acme\"\nresidency = \"any\"");
    TestControlPlane::builder(Backend::Embedded)
        .seed(catalog.build())
        .settings(|api| api.agent_lease_ttl = Duration::from_secs(3))
        .start()
        .await
}

/// Instance `instance` of eu-west, serving one reserved slot of the `cpu` pool and reporting
/// `endpoint`.
async fn start_instance(
    cp: &TestControlPlane,
    dir: &std::path::Path,
    instance: &str,
    endpoint: &str,
    slow: &Gate,
) -> Agent {
    let extra = format!(
        "instance = \"{instance}\"\nendpoint = \"{endpoint}\"\nresult_retention_s = 600\n\n\
         [pools]\ncpu = {{ reserved = 1, on_demand = 0 }}\n\n\
         [control_plane]\nurl = \"{}\"\nagent_token = \"{AGENT}\"\nheartbeat_interval_ms = 100\n\
         usage_interval_ms = 100\n",
        cp.url
    );
    let models = "[[models]]\nid = \"test/echo\"\nweights_dir = \"unused\"\n\n\
                  [[models]]\nid = \"test/slow\"\nweights_dir = \"unused\"\n";
    let slow = TestModel::new("test/slow").gated(slow);
    Agent::start(
        config(dir, models, &extra, &[]),
        vec![Arc::new(TestModel::new("test/echo")), Arc::new(slow)],
    )
    .await
}

#[tokio::test]
async fn instances_report_their_endpoint_share_and_retention_and_leave_one_by_one() {
    let mut cp = start_shared_region().await;
    let edge = cp.edge();
    let (one, two) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let gate = Gate::closed();
    gate.open();
    let mut first = start_instance(&cp, one.path(), "gpu-1", "http://gpu-1.test:9100", &gate).await;
    let second = start_instance(&cp, two.path(), "gpu-2", "http://gpu-2.test:9100/", &gate).await;

    let reports = until("both instances report a catalog", || async {
        instances(&edge)
            .await
            .filter(|all| all.len() == 2 && all.values().all(|r| r.catalog_revision.is_some()))
    })
    .await;
    for (instance, endpoint) in [
        ("gpu-1", "http://gpu-1.test:9100"),
        ("gpu-2", "http://gpu-2.test:9100"),
    ] {
        let report = &reports[instance];
        assert_eq!(report.endpoint, endpoint);
        assert_eq!(report.result_retention_s, 600);
        assert_eq!(report.free_reserved, 1, "{instance} serves its share only");
        let cpu = report.pools["cpu"];
        assert_eq!((cpu.reserved, cpu.on_demand), (1, 0), "{instance}");
    }
    // Each runs jobs with the id of the instance that holds them.
    let (id, _) = second.run("acme", "test/echo", json!({"text": "x"})).await;
    assert!(id.starts_with("eu-west.gpu-2."), "{id}");

    // SIGTERM on one: it deregisters as its instance, and the other serves on.
    first.shutdown.cancel();
    first.join().await;
    let left = instances(&edge).await.unwrap();
    assert_eq!(
        left.keys().collect::<Vec<_>>(),
        ["gpu-2"],
        "only gpu-1 left"
    );
    let expected = [("gpu-1".to_owned(), true), ("gpu-2".to_owned(), false)];
    assert_eq!(deregistered(&edge).await, expected);
    cp.stop().await;
}

#[tokio::test]
async fn an_instance_ordered_to_drain_finishes_its_work_deregisters_and_stops() {
    let mut cp = start_shared_region().await;
    let (edge, admin) = (cp.edge(), cp.admin());
    let (one, two) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let gate = Gate::closed();
    let mut ordered =
        start_instance(&cp, one.path(), "gpu-1", "http://gpu-1.test:9100", &gate).await;
    let other = start_instance(&cp, two.path(), "gpu-2", "http://gpu-2.test:9100", &gate).await;
    until("both instances report", || async {
        instances(&edge).await.filter(|all| all.len() == 2)
    })
    .await;
    let running = ordered
        .queue("test/slow", json!({"input": {"text": "last"}}))
        .await;
    ordered.wait_status(&running, "IN_PROGRESS").await;

    let order = reqwest::Client::new()
        .post(format!(
            "{}/admin/v1/regions/eu-west/instances/gpu-1/drain",
            cp.url
        ))
        .bearer_auth(testkit::tokens::ADMIN)
        .send()
        .await
        .unwrap();
    assert_eq!(order.status(), 202);

    // It drains as on SIGTERM: reports draining and refuses new jobs while its job runs.
    until("gpu-1 reports draining", || async {
        instances(&edge)
            .await
            .and_then(|all| all.get("gpu-1").cloned())
            .filter(|r| r.draining)
    })
    .await;
    assert!(
        ordered.shutdown.is_cancelled(),
        "the order starts the shutdown"
    );
    assert_eq!(ordered.get("/healthz").await.0, 503);
    assert!(!instances(&edge).await.unwrap()["gpu-2"].draining);

    // Its job finishes; its usage is flushed, it deregisters and the agent stops cleanly.
    gate.open();
    ordered.join().await;
    let left = instances(&edge).await.unwrap();
    assert_eq!(left.keys().collect::<Vec<_>>(), ["gpu-2"]);
    let expected = [("gpu-1".to_owned(), true), ("gpu-2".to_owned(), false)];
    assert_eq!(deregistered(&edge).await, expected);
    let query = UsageQuery {
        region: Some("eu-west".into()),
        ..UsageQuery::default()
    };
    let usage = admin.usage(&query).await.unwrap();
    assert_eq!(
        (usage.total.jobs, usage.total.cost_nanos),
        (1, Nanos(100_000_000)),
        "the running job finished and its usage was sent before the agent stopped"
    );
    drop(other);
    cp.stop().await;
}
