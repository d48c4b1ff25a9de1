//! The typed client against a running control plane: what an edge, an agent and an admin
//! tool do with it.

use std::time::Duration;

use control_plane_client::wire::{AgentReport, Capacity, Nanos, UsageAggregate, UsageBatch};
use control_plane_client::{ControlPlane, Revisioned};
use policy::{KeyRing, TenantSpec};

use crate::server::{ADMIN, AGENT, Backend, EDGE, TestServer};

async fn the_client_speaks_every_api(backend: Backend) {
    let server = TestServer::start(backend).await;
    let timeout = Duration::from_secs(10);
    let admin = ControlPlane::new(&server.base, ADMIN, timeout).unwrap();
    let edge = ControlPlane::new(&server.base, EDGE, timeout).unwrap();
    let agent = ControlPlane::new(&server.base, AGENT, timeout).unwrap();

    // Admin: read, change conditionally, lose a race, create a key.
    let Revisioned {
        mut record,
        revision,
    } = admin
        .get::<TenantSpec>("tenants", "acme")
        .await
        .unwrap()
        .unwrap();
    record.latency_goal_ms = Some(600.0);
    let next = admin
        .put("tenants", "acme", &record, Some(revision))
        .await
        .unwrap();
    assert!(next > revision);
    let stale = admin
        .put("tenants", "acme", &record, Some(revision))
        .await
        .unwrap_err();
    assert_eq!(
        (stale.status(), stale.kind()),
        (Some(409), Some("conflict"))
    );
    assert!(
        admin
            .get::<TenantSpec>("tenants", "nobody")
            .await
            .unwrap()
            .is_none()
    );
    let key = admin.create_key("acme", Some("sdk".into())).await.unwrap();
    assert_eq!(
        admin.keys("acme").await.unwrap().items,
        vec![key.record.clone()]
    );

    // Edge: the snapshot authenticates the key and carries the change.
    let first = edge.snapshot().await.unwrap();
    assert!(
        KeyRing::new(first.keys.clone())
            .authenticate(&key.key)
            .is_ok()
    );
    let acme = first
        .catalog
        .tenants
        .iter()
        .find(|t| t.id == "acme")
        .unwrap();
    assert_eq!(acme.latency_goal_ms, Some(600.0));
    assert!(
        edge.poll_snapshot(first.revision, Duration::from_secs(1))
            .await
            .unwrap()
            .is_none()
    );

    // Agent: register, then the edge's next snapshot routes on it.
    let report = AgentReport {
        healthy: true,
        free_reserved: 2,
        ..AgentReport::default()
    };
    agent.register("eu-west", &report).await.unwrap();
    let next = edge
        .poll_snapshot(first.revision, Duration::from_secs(10))
        .await
        .unwrap()
        .expect("a change after registration");
    let catalog = next.catalog.validate().unwrap();
    let live = next.live_status(&catalog);
    let west = catalog.region_index("eu-west").unwrap();
    assert_eq!(live.region(west).unwrap().free_reserved, 2);
    agent.heartbeat("eu-west", &report).await.unwrap();
    let registration = agent.heartbeat("eu-west", &report).await.unwrap();
    let catalog = agent.agent_catalog("eu-west").await.unwrap();
    assert!(catalog.revision >= registration.catalog_revision);
    assert_eq!(catalog.region.id, "eu-west");
    let batch = UsageBatch {
        schema: contract::schema::USAGE_BATCH,
        region: "eu-west".into(),
        ledger: "0123456789abcdef0123456789abcdef".into(),
        seq: 1,
        rows: vec![UsageAggregate {
            tenant: "acme".into(),
            model: "meridian/esrgan-x4".into(),
            capacity: Capacity::Reserved,
            hour_ms: 0,
            jobs: 1,
            failed_jobs: 0,
            units_nanos: Nanos(1_000_000_000),
            gpu_nanos: Nanos(400_000_000),
            cost_nanos: Nanos(2_000_000),
        }],
    };
    let receipt = agent.report_usage(&batch).await.unwrap();
    assert!(receipt.applied);
    agent.deregister("eu-west").await.unwrap();
    let gone = agent.heartbeat("eu-west", &report).await.unwrap_err();
    assert_eq!(gone.kind(), Some("not_registered"));

    // The wrong token is an error the caller can tell apart.
    let denied = edge.create_key("acme", None).await.unwrap_err();
    assert_eq!(denied.status(), Some(401));
    admin.revoke_key("acme", &key.record.id).await.unwrap();
    server.stop().await;
}

crate::both_backends!(the_client_speaks_every_api);
