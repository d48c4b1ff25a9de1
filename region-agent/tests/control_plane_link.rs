//! The agent against the real control plane, both in-process on port 0 (the control plane
//! on its embedded store): the agent registers and heartbeats its report (edges see it in
//! their snapshot), delivers usage until acknowledged, reports draining at shutdown and
//! deregisters. Jobs run on the in-code test model.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use control_plane::InProcess;
use control_plane::api::ApiSettings;
use control_plane::store::StoreConfig;
use control_plane_client::ControlPlane;
use control_plane_client::wire::{Capacity, UsageRecord};
use policy::CatalogSpec;
use region_agent::serving::test_model::{Gate, TestModel};
use reqwest::Method;
use serde_json::json;

use support::{Agent, PATIENCE, config};

const ADMIN: &str = "admin-token-0123456789";
const EDGE: &str = "edge-token-cp-0123456789";
const AGENT: &str = "agent-token-0123456789";

const SEED: &str = r#"
    [[jurisdictions]]
    id = "eu"

    [[regions]]
    id = "eu-west"
    jurisdiction = "eu"
    location = { lat = 53.35, lon = -6.26 }
    endpoint = "http://127.0.0.1:9102"
    pools = [{ id = "cpu", gpu = "H100", reserved = 1, reserved_price_per_hour = 2.2 }]

    [[models]]
    id = "test/echo"
    kind = "image-to-image"
    unit = "image"
    price_per_unit = 0.25
    gpu_seconds_per_unit = 0.1

    [[tenants]]
    id = "acme"
    residency = { jurisdictions = ["eu"] }
"#;

/// The control plane on an embedded store in a temporary directory.
struct ControlPlaneUnderTest {
    server: InProcess,
    _dir: tempfile::TempDir,
}

async fn start_control_plane() -> ControlPlaneUnderTest {
    let dir = tempfile::tempdir().unwrap();
    let api = ApiSettings {
        agent_lease_ttl: Duration::from_secs(3),
        max_poll_wait: Duration::from_secs(5),
        spend_refresh: Duration::from_millis(200),
        ..ApiSettings::with_tokens(ADMIN, EDGE, AGENT)
    };
    let seed = CatalogSpec::from_toml(SEED).unwrap();
    let server = InProcess::start(api, StoreConfig::embedded(dir.path()), Some(seed))
        .await
        .unwrap();
    ControlPlaneUnderTest { server, _dir: dir }
}

async fn eventually<T, F, Fut>(what: &str, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(value) = probe().await {
            return value;
        }
        assert!(start.elapsed() < PATIENCE, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn heartbeats_usage_draining_and_deregistration() {
    let cp = start_control_plane().await;
    let edge = ControlPlane::new(&cp.server.url, EDGE, Duration::from_secs(10)).unwrap();
    let admin = ControlPlane::new(&cp.server.url, ADMIN, Duration::from_secs(10)).unwrap();

    let dir = tempfile::tempdir().unwrap();
    let extra = format!(
        "[control_plane]\nurl = \"{}\"\nagent_token = \"{AGENT}\"\nheartbeat_interval_ms = 100\n",
        cp.server.url
    );
    let models = "[[models]]\nid = \"test/echo\"\nweights_dir = \"unused\"\nprice_per_unit = 0.25\n\n\
                  [[models]]\nid = \"test/slow\"\nweights_dir = \"unused\"\n";
    let gate = Gate::closed();
    let model = TestModel::new("test/echo").gated(&gate);
    let slow_gate = Gate::closed();
    let slow = TestModel::new("test/slow").gated(&slow_gate);
    let mut agent = Agent::start(
        config(dir.path(), models, &extra),
        vec![Arc::new(model), Arc::new(slow)],
    )
    .await;

    // The edge sees the region with the agent's report.
    let live = eventually("the agent's report is in the snapshot", || async {
        let snapshot = edge.snapshot().await.ok()?;
        snapshot.regions.into_iter().find(|r| r.region == "eu-west")
    })
    .await;
    assert!(live.report.healthy && !live.report.draining);
    assert_eq!(live.report.free_reserved, 1);
    assert!(live.report.models.contains_key("test/echo"));

    // A running job and a queued one show in the reports.
    let running = agent
        .queue("test/echo", json!({"input": {"text": "a"}}))
        .await;
    agent.wait_status(&running, "IN_PROGRESS").await;
    let queued = agent
        .queue("test/echo", json!({"input": {"text": "b"}}))
        .await;
    eventually("the queue depth is reported", || async {
        let snapshot = edge.snapshot().await.ok()?;
        let live = snapshot
            .regions
            .into_iter()
            .find(|r| r.region == "eu-west")?;
        let model = &live.report.models["test/echo"];
        (model.queue_depth == 1 && live.report.free_reserved == 0 && model.loaded).then_some(())
    })
    .await;
    gate.open();
    agent.wait_status(&queued, "COMPLETED").await;

    // Usage reaches the control plane, and the agent forgets it once acknowledged.
    let records: Vec<UsageRecord> = eventually("usage is delivered", || async {
        let listed = admin
            .list::<UsageRecord>("usage/records?region=eu-west")
            .await
            .ok()?;
        (listed.items.len() == 2).then_some(listed.items)
    })
    .await;
    let record = records.iter().find(|r| r.job_id == queued).unwrap();
    assert_eq!(
        (record.tenant.as_str(), record.model.as_str()),
        ("acme", "test/echo")
    );
    assert_eq!(record.capacity, Capacity::Reserved);
    assert_eq!(record.cost, 0.25);
    eventually("the usage spool is empty", || async {
        let left = std::fs::read_dir(dir.path().join("usage")).ok()?.count();
        (left == 0).then_some(())
    })
    .await;
    let result = agent
        .call(Method::GET, &format!("/v1/requests/{queued}"))
        .send()
        .await
        .unwrap();
    assert_eq!(result.status(), 200);

    // Shutdown with a job still running: the agent reports draining while it finishes it,
    // then the region disappears from the snapshot at once (deregistered, not expired).
    let last = agent
        .queue("test/slow", json!({"input": {"text": "last"}}))
        .await;
    agent.wait_status(&last, "IN_PROGRESS").await;
    agent.shutdown.cancel();
    eventually("the agent reports draining", || async {
        let snapshot = edge.snapshot().await.ok()?;
        let live = snapshot
            .regions
            .into_iter()
            .find(|r| r.region == "eu-west")?;
        live.report.draining.then_some(())
    })
    .await;
    slow_gate.open();
    agent.join().await;
    let snapshot = edge.snapshot().await.unwrap();
    assert!(
        snapshot.regions.iter().all(|r| r.region != "eu-west"),
        "deregistered"
    );
    let usage = admin
        .list::<UsageRecord>("usage/records?region=eu-west")
        .await
        .unwrap();
    assert!(
        usage.items.iter().any(|r| r.job_id == last),
        "the last job's usage was flushed before the agent stopped"
    );
    cp.server.stop().await.unwrap();
}
