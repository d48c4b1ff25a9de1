//! Usage totals: per tenant, model, region and day, and month-to-date spend, always equal to
//! what the stored records sum to — across redeliveries and concurrent batches — and carried
//! to edges in their snapshot.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use control_plane::store::{AnyStore, StoreConfig};
use control_plane::usage;
use control_plane_client::wire::{Capacity, UsageRecord};
use control_plane_client::{ControlPlane, UsageQuery};
use reqwest::{Method, StatusCode};
use serde_json::Value;

use crate::server::{ADMIN, AGENT, Backend, EDGE, SPEND_REFRESH, TestServer, json};
use crate::support::{EtcdServer, PATIENCE};

/// 2024-03-31T23:00:00Z and 2024-04-01T01:00:00Z: one hour apart, in two months.
const MARCH_31: u64 = 1_711_926_000_000;
const APRIL_1: u64 = 1_711_933_200_000;

fn now_ms() -> u64 {
    u64::try_from(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_millis(),
    )
    .unwrap()
}

fn record(job: &str, tenant: &str, region: &str, at: u64, capacity: Capacity) -> UsageRecord {
    UsageRecord {
        job_id: job.into(),
        tenant: tenant.into(),
        model: "meridian/esrgan-x4".into(),
        region: region.into(),
        units: 2.5,
        gpu_seconds: 1.1,
        capacity,
        cost: 0.1,
        finished_at_ms: at,
    }
}

async fn get(server: &TestServer, path: &str) -> (StatusCode, Value) {
    json(server.admin(Method::GET, path).send().await.unwrap()).await
}

fn close(a: &Value, b: f64) -> bool {
    (a.as_f64().unwrap() - b).abs() < 1e-9
}

async fn totals_group_by_day_and_dimension(backend: Backend) {
    let server = TestServer::start(backend).await;
    let agent = ControlPlane::new(&server.base, AGENT, PATIENCE).unwrap();
    let batch = vec![
        record("eu-west.1", "acme", "eu-west", MARCH_31, Capacity::Reserved),
        record("eu-west.2", "acme", "eu-west", APRIL_1, Capacity::OnDemand),
        record("us-east.3", "acme", "us-east", APRIL_1, Capacity::OnDemand),
        record("us-east.4", "beta", "us-east", APRIL_1, Capacity::Reserved),
        // Repeated inside the batch: counted once.
        record("us-east.4", "beta", "us-east", APRIL_1, Capacity::Reserved),
    ];
    let receipt = agent.report_usage(batch.clone()).await.unwrap();
    assert_eq!((receipt.accepted, receipt.duplicates), (4, 1));
    // The whole batch again, as an agent that lost the answer would send it.
    let receipt = agent.report_usage(batch).await.unwrap();
    assert_eq!((receipt.accepted, receipt.duplicates), (0, 5));

    let (status, all) = get(&server, "/admin/v1/usage").await;
    assert_eq!(status, StatusCode::OK, "{all}");
    assert_eq!(all["rows"].as_array().unwrap().len(), 4, "{all}");
    assert_eq!(all["total"]["jobs"], 4);
    assert!(close(&all["total"]["cost"], 0.4));
    assert!(close(&all["total"]["units"], 10.0));
    assert!(close(&all["total"]["reserved_gpu_seconds"], 2.2));
    assert!(close(&all["total"]["on_demand_gpu_seconds"], 2.2));

    let (_, by_day) = get(&server, "/admin/v1/usage?tenant=acme&group_by=day").await;
    let rows = by_day["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 2, "{by_day}");
    assert_eq!(rows[0]["day"], "2024-03-31");
    assert_eq!(rows[0]["usage"]["jobs"], 1);
    assert!(rows[0].get("tenant").is_none(), "not grouped by tenant");
    assert_eq!(rows[1]["day"], "2024-04-01");
    assert_eq!(rows[1]["usage"]["jobs"], 2);
    assert!(close(&rows[1]["usage"]["on_demand_gpu_seconds"], 2.2));

    let (_, april) = get(
        &server,
        "/admin/v1/usage?from=2024-04-01&to=2024-04-30&group_by=tenant,region",
    )
    .await;
    let rows: Vec<(String, String, u64)> = april["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["tenant"].as_str().unwrap().to_owned(),
                r["region"].as_str().unwrap().to_owned(),
                r["usage"]["jobs"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        rows,
        [
            ("acme".into(), "eu-west".into(), 1),
            ("acme".into(), "us-east".into(), 1),
            ("beta".into(), "us-east".into(), 1)
        ]
    );

    // Month-to-date spend per tenant, next to its budgets.
    let (status, march) = get(&server, "/admin/v1/tenants/acme/spend?month=2024-03").await;
    assert_eq!(status, StatusCode::OK, "{march}");
    assert_eq!(march["usage"]["jobs"], 1);
    let (_, april) = get(&server, "/admin/v1/tenants/acme/spend?month=2024-04").await;
    assert!(close(&april["usage"]["cost"], 0.2));
    let (_, now) = get(&server, "/admin/v1/tenants/acme/spend").await;
    assert_eq!(now["usage"]["jobs"], 0, "nothing this month");

    // Bad queries are 400s that say what to send, unknown tenants 404s.
    for bad in [
        "/admin/v1/usage?from=2024-02-30",
        "/admin/v1/usage?from=2024-04-02&to=2024-04-01",
        "/admin/v1/usage?group_by=week",
        "/admin/v1/usage?colour=red",
        "/admin/v1/tenants/acme/spend?month=2024-13",
    ] {
        let (status, body) = get(&server, bad).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}: {body}");
        assert_eq!(body["error"]["type"], "bad_request");
    }
    let (status, _) = get(&server, "/admin/v1/tenants/nobody/spend").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    // Records with ids that are not ids are refused before anything is stored.
    let bad = record(
        "eu-west.9",
        "Acme/../x",
        "eu-west",
        APRIL_1,
        Capacity::Reserved,
    );
    let refused = agent.report_usage(vec![bad]).await.unwrap_err();
    assert_eq!(refused.status(), Some(422));
    let (_, all) = get(&server, "/admin/v1/usage").await;
    assert_eq!(all["total"]["jobs"], 4);
    server.stop().await;
}

async fn spend_reaches_edges(backend: Backend) {
    let server = TestServer::start(backend).await;
    let agent = ControlPlane::new(&server.base, AGENT, PATIENCE).unwrap();
    let edge = ControlPlane::new(&server.base, EDGE, PATIENCE).unwrap();
    let first = edge.snapshot().await.unwrap();
    assert!(first.spend.is_empty());

    // A batch this month wakes a waiting edge (within the spend refresh) with the spend.
    let poll = {
        let edge = edge.clone();
        tokio::spawn(async move {
            edge.poll_snapshot(first.revision, Duration::from_secs(20))
                .await
        })
    };
    let now = now_ms();
    agent
        .report_usage(vec![
            record("eu-west.a", "acme", "eu-west", now, Capacity::Reserved),
            record("eu-west.b", "acme", "eu-west", now, Capacity::OnDemand),
            // Last month's work is not this month's spend.
            record(
                "eu-west.c",
                "acme",
                "eu-west",
                now - 40 * 86_400_000,
                Capacity::OnDemand,
            ),
        ])
        .await
        .unwrap();
    let next = tokio::time::timeout(PATIENCE, poll)
        .await
        .unwrap()
        .unwrap()
        .unwrap()
        .expect("spend wakes the poll");
    assert_eq!(next.spend.len(), 1, "{:?}", next.spend);
    let acme = &next.spend[0];
    assert_eq!(acme.tenant, "acme");
    assert_eq!(acme.month, usage::month_of(now));
    assert!((acme.cost - 0.2).abs() < 1e-9);
    assert!((acme.gpu_seconds - 2.2).abs() < 1e-9);
    // The admin's view of the month agrees with the edge's, and so do the daily totals.
    let admin = ControlPlane::new(&server.base, ADMIN, PATIENCE).unwrap();
    let spend = admin.spend("acme", None).await.unwrap();
    assert_eq!((spend.usage.jobs, spend.usage.cost), (2, acme.cost));
    let this_month = UsageQuery {
        tenant: Some("acme".into()),
        from: Some(format!("{}-01", acme.month)),
        group_by: Some("tenant".into()),
        ..UsageQuery::default()
    };
    let report = admin.usage(&this_month).await.unwrap();
    assert_eq!(report.rows.len(), 1);
    assert_eq!(report.rows[0].usage, spend.usage);
    assert_eq!(
        admin.usage_records(Some("acme")).await.unwrap().items.len(),
        3
    );

    // A redelivery changes nothing an edge sees: its poll runs out.
    agent
        .report_usage(vec![record(
            "eu-west.a",
            "acme",
            "eu-west",
            now,
            Capacity::Reserved,
        )])
        .await
        .unwrap();
    let wait = SPEND_REFRESH * 3 + Duration::from_secs(1);
    let quiet = edge.poll_snapshot(next.revision, wait).await.unwrap();
    assert!(quiet.is_none(), "a duplicate woke the edge");
    server.stop().await;
}

/// Concurrent batches over one store, each retried whole when it fails as an agent would,
/// count every job exactly once: the totals equal the records' sum.
async fn concurrent_batches_count_each_job_once(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let mut etcd = None;
    let config = match backend {
        Backend::Embedded => StoreConfig::embedded(dir.path()),
        Backend::Etcd => {
            let server = EtcdServer::start().await;
            let config = StoreConfig::Etcd {
                endpoints: vec![server.endpoint.clone()],
            };
            etcd = Some(server);
            config
        }
    };
    let store = Arc::new(AnyStore::open(&config).await.unwrap());
    let jobs: Vec<UsageRecord> = (0..120)
        .map(|i| {
            let capacity = if i % 3 == 0 {
                Capacity::Reserved
            } else {
                Capacity::OnDemand
            };
            let mut r = record(
                &format!("eu-west.j{i}"),
                "acme",
                "eu-west",
                APRIL_1,
                capacity,
            );
            r.cost = 0.001 * f64::from(i % 7 + 1);
            r
        })
        .collect();
    // Four writers, each sending overlapping halves of the jobs in batches of 20.
    let writers: Vec<_> = (0..4)
        .map(|w| {
            let store = store.clone();
            let mine: Vec<UsageRecord> = jobs.iter().skip(w * 20).take(60).cloned().collect();
            tokio::spawn(async move {
                let mut accepted = 0;
                for batch in mine.chunks(20) {
                    let mut tries = 0;
                    let receipt = loop {
                        match usage::ingest(&store, batch).await {
                            Ok(receipt) => break receipt,
                            Err(e) if tries < 10 => {
                                tries += 1;
                                eprintln!("resending a batch after: {e}");
                            }
                            Err(e) => panic!("a batch failed ten times: {e}"),
                        }
                    };
                    accepted += receipt.accepted;
                }
                accepted
            })
        })
        .collect();
    let mut accepted = 0;
    for writer in writers {
        accepted += writer.await.unwrap();
    }
    // Together the writers sent every job, most of them twice.
    assert_eq!(accepted, jobs.len(), "every job accepted exactly once");
    let (daily, _) = usage::daily(&store, Some("acme")).await.unwrap();
    assert_eq!(daily.len(), 1);
    let mut expected = usage::Totals::default();
    jobs.iter().for_each(|r| expected.add(r));
    assert_eq!(daily[0].totals, expected);
    let spend = usage::spend(&store, "acme", "2024-04").await.unwrap();
    assert_eq!(spend.totals, expected);
    if let AnyStore::Embedded(embedded) = &*store {
        embedded.close().await;
    }
    drop(etcd);
}

crate::both_backends!(
    totals_group_by_day_and_dimension,
    spend_reaches_edges,
    concurrent_batches_count_each_job_once
);
