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

    // Agents: two instances of eu-west register; the edge's next snapshot routes on the
    // region as their sum.
    let report = AgentReport {
        healthy: true,
        free_reserved: 2,
        instance: "host-a".into(),
        ..AgentReport::default()
    };
    let other = AgentReport {
        free_reserved: 3,
        instance: "host-b".into(),
        ..report.clone()
    };
    agent.register("eu-west", &other).await.unwrap();
    agent.register("eu-west", &report).await.unwrap();
    let west = first
        .catalog
        .validate()
        .unwrap()
        .region_index("eu-west")
        .unwrap();
    let mut revision = first.revision;
    let free = loop {
        let next = edge
            .poll_snapshot(revision, Duration::from_secs(10))
            .await
            .unwrap()
            .expect("a change after registration");
        revision = next.revision;
        let catalog = next.catalog.validate().unwrap();
        let free = next
            .live_status(&catalog)
            .region(west)
            .unwrap()
            .free_reserved;
        if next.regions.len() == 2 {
            break free;
        }
    };
    assert_eq!(free, 5);
    let bad = AgentReport {
        instance: "Host A".into(),
        ..report.clone()
    };
    let refused = agent.register("eu-west", &bad).await.unwrap_err();
    assert_eq!(refused.status(), Some(422));
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
    // One instance leaves; the other's lease and status stay.
    agent.deregister("eu-west", "host-a").await.unwrap();
    let gone = agent.heartbeat("eu-west", &report).await.unwrap_err();
    assert_eq!(gone.kind(), Some("not_registered"));
    agent.heartbeat("eu-west", &other).await.unwrap();
    agent.deregister("eu-west", "host-b").await.unwrap();
    let gone = agent.heartbeat("eu-west", &other).await.unwrap_err();
    assert_eq!(gone.kind(), Some("not_registered"));

    // The wrong token is an error the caller can tell apart.
    let denied = edge.create_key("acme", None).await.unwrap_err();
    assert_eq!(denied.status(), Some(401));
    admin.revoke_key("acme", &key.record.id).await.unwrap();
    server.stop().await;
}

crate::both_backends!(the_client_speaks_every_api);
