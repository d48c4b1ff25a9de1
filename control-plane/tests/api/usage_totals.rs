//! Usage totals: per tenant, model, region and day, and month-to-date spend, fed by agents'
//! numbered batches of hourly aggregates — each batch applied exactly once, across resends
//! and concurrent batches — and carried to edges in their snapshot.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use control_plane::store::{AnyStore, Store, StoreConfig};
use control_plane::usage;
use control_plane_client::UsageQuery;
use control_plane_client::wire::{
    Capacity, MAX_USAGE_ROWS, Nanos, Schema, UsageAggregate, UsageBatch,
};
use reqwest::{Method, StatusCode};
use serde_json::Value;

use crate::server::{ADMIN, AGENT, Backend, EDGE, SPEND_REFRESH, TestServer, json};
use crate::support::Etcd;

/// 2024-03-31T23:00:00Z and 2024-04-01T01:00:00Z: one hour apart, in two months.
const MARCH_31: u64 = 1_711_926_000_000;
const APRIL_1: u64 = 1_711_933_200_000;
const HOUR: u64 = 3_600_000;
const LEDGER_A: &str = "0123456789abcdef0123456789abcdef";
const LEDGER_B: &str = "fedcba9876543210fedcba9876543210";

fn now_ms() -> u64 {
    u64::try_from(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_millis(),
    )
    .unwrap()
}

/// An hour's aggregate of `jobs` jobs, each 2.5 units, 1.1 GPU-seconds and 0.1 in money.
fn row(tenant: &str, hour_ms: u64, capacity: Capacity, jobs: u64) -> UsageAggregate {
    UsageAggregate {
        tenant: tenant.into(),
        model: "meridian/esrgan-x4".into(),
        capacity,
        hour_ms: hour_ms - hour_ms % HOUR,
        jobs,
        failed_jobs: 0,
        units_nanos: Nanos(2_500_000_000 * jobs),
        gpu_nanos: Nanos(1_100_000_000 * jobs),
        cost_nanos: Nanos(100_000_000 * jobs),
    }
}

fn batch(region: &str, ledger: &str, seq: u64, rows: Vec<UsageAggregate>) -> UsageBatch {
    UsageBatch {
        schema: contract::schema::USAGE_BATCH,
        region: region.into(),
        ledger: ledger.into(),
        seq,
        rows,
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
    let agent = server.client(AGENT);
    let west = batch(
        "eu-west",
        LEDGER_A,
        1,
        vec![
            row("acme", MARCH_31, Capacity::Reserved, 1),
            row("acme", APRIL_1, Capacity::OnDemand, 1),
        ],
    );
    let east = batch(
        "us-east",
        LEDGER_B,
        1,
        vec![
            row("acme", APRIL_1, Capacity::OnDemand, 1),
            row("beta", APRIL_1, Capacity::Reserved, 1),
        ],
    );
    for b in [&west, &east] {
        let receipt = agent.report_usage(b).await.unwrap();
        assert!(receipt.applied && receipt.seq == 1, "{receipt:?}");
    }
    // The same batch again, as an agent that lost the answer sends it: nothing changes.
    let receipt = agent.report_usage(&west).await.unwrap();
    assert!(!receipt.applied, "a resent batch is applied once");

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
    // A batch whose envelope is invalid is refused whole, naming the field.
    for (change, place) in [
        (batch("eu-west", LEDGER_A, 0, vec![]), "seq"),
        (batch("eu-west", "not-a-ledger", 2, vec![]), "ledger"),
        (batch("EU west", LEDGER_A, 2, vec![]), "region"),
        (
            batch(
                "eu-west",
                LEDGER_A,
                2,
                vec![row("acme", APRIL_1, Capacity::Reserved, 1); MAX_USAGE_ROWS + 1],
            ),
            "rows",
        ),
    ] {
        let refused = agent.report_usage(&change).await.unwrap_err();
        assert_eq!(refused.status(), Some(422), "{place}: {refused}");
        let control_plane_client::ClientError::Api { error, .. } = &refused else {
            panic!("{refused}")
        };
        assert_eq!(error.details[0].place, place);
    }
    // A batch of a schema major version this build does not read: both versions named.
    let mut newer = batch("eu-west", LEDGER_A, 2, vec![]);
    newer.schema = Schema::new(2, 0);
    let refused = agent.report_usage(&newer).await.unwrap_err();
    assert_eq!(refused.status(), Some(400));
    assert_eq!(refused.kind(), Some("unsupported_schema"));
    assert!(
        refused.to_string().contains("usage batch schema 2.0"),
        "{refused}"
    );
    assert!(refused.to_string().contains("1.x"), "{refused}");
    let (_, all) = get(&server, "/admin/v1/usage").await;
    assert_eq!(all["total"]["jobs"], 4);
    // Ledger numbers go on where they stopped: seq 2 applies once.
    let next = batch(
        "eu-west",
        LEDGER_A,
        2,
        vec![row("acme", APRIL_1, Capacity::Reserved, 3)],
    );
    assert!(agent.report_usage(&next).await.unwrap().applied);
    assert!(!agent.report_usage(&next).await.unwrap().applied);
    let (_, all) = get(&server, "/admin/v1/usage").await;
    assert_eq!(all["total"]["jobs"], 7);
    assert_eq!(all["total"]["cost_nanos"], 700_000_000);
    server.stop().await;
}

/// The value of the metric line that starts with `name{` and has every one of `labels`.
fn metric(text: &str, name: &str, labels: &[&str]) -> Option<f64> {
    text.lines()
        .filter(|line| line.starts_with(&format!("{name}{{")))
        .find(|line| labels.iter().all(|label| line.contains(label)))
        .and_then(|line| line.rsplit(' ').next())
        .and_then(|value| value.parse().ok())
}

/// A batch with records that cannot be counted — a tenant that is not an id, a row that
/// is not an aggregate — has its other records counted; the bad ones are kept in
/// quarantine once, counted in a metric, and listed for the admin; a resend changes
/// nothing.
async fn bad_records_are_quarantined_and_the_rest_counted(backend: Backend) {
    let server = TestServer::start(backend).await;
    let good = serde_json::to_value(row("acme", APRIL_1, Capacity::Reserved, 2)).unwrap();
    let bad_tenant =
        serde_json::to_value(row("Acme/../x", APRIL_1, Capacity::Reserved, 5)).unwrap();
    let not_a_row = serde_json::json!({"tenant": 5, "jobs": "many"});
    let other = serde_json::to_value(row("beta", APRIL_1, Capacity::OnDemand, 1)).unwrap();
    let sent = serde_json::json!({
        "schema": "1.0",
        "region": "eu-west",
        "ledger": LEDGER_A,
        "seq": 1,
        "rows": [good, bad_tenant, not_a_row, other],
    });
    let send = || async {
        json(
            server
                .agent("/agent/v1/usage")
                .json(&sent)
                .send()
                .await
                .unwrap(),
        )
        .await
    };
    let (status, receipt) = send().await;
    assert_eq!(status, StatusCode::OK, "{receipt}");
    assert_eq!(receipt["applied"], true);
    let (_, report) = get(&server, "/admin/v1/usage?group_by=tenant").await;
    assert_eq!(
        report["total"]["jobs"], 3,
        "the good records are counted: {report}"
    );
    assert_eq!(report["rows"].as_array().unwrap().len(), 2, "{report}");

    let quarantined = |server: &TestServer| {
        let request = server.admin(Method::GET, "/admin/v1/usage/quarantine");
        async move { json(request.send().await.unwrap()).await }
    };
    let (status, listed) = quarantined(&server).await;
    assert_eq!(status, StatusCode::OK, "{listed}");
    let items = listed["items"].as_array().unwrap();
    assert_eq!(items.len(), 2, "{listed}");
    assert_eq!(
        (
            &items[0]["position"],
            &items[0]["reason"],
            &items[0]["batch"]
        ),
        (
            &serde_json::json!(1),
            &serde_json::json!("tenant"),
            &serde_json::json!(1)
        )
    );
    assert_eq!(items[0]["record"], bad_tenant, "kept as sent");
    assert_eq!(items[0]["problems"][0]["place"], "rows[1].tenant");
    assert_eq!(
        (&items[1]["position"], &items[1]["reason"]),
        (&serde_json::json!(2), &serde_json::json!("malformed"))
    );
    assert_eq!(items[1]["record"], not_a_row);
    assert_eq!(items[1]["region"], "eu-west");
    assert_eq!(items[1]["ledger"], LEDGER_A);

    let metrics = || async {
        server
            .http
            .get(format!("{}/metrics", server.base))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    };
    let name = "meridian_usage_records_quarantined_total";
    let text = metrics().await;
    for reason in ["tenant", "malformed"] {
        let labels = [r#"region="eu-west""#, &format!(r#"reason="{reason}""#)];
        assert_eq!(metric(&text, name, &labels), Some(1.0), "{reason}: {text}");
    }

    // The agent did not hear the answer and sends the batch again: nothing changes.
    let (status, receipt) = send().await;
    assert_eq!(status, StatusCode::OK, "{receipt}");
    assert_eq!(receipt["applied"], false);
    let (_, again) = get(&server, "/admin/v1/usage?group_by=tenant").await;
    assert_eq!(again["total"], report["total"]);
    let (_, listed_again) = quarantined(&server).await;
    assert_eq!(listed_again["items"], listed["items"]);
    let text = metrics().await;
    let labels = [r#"region="eu-west""#, r#"reason="tenant""#];
    assert_eq!(metric(&text, name, &labels), Some(1.0), "{text}");

    // The listing filters by region and checks it.
    let (status, other_region) = get(&server, "/admin/v1/usage/quarantine?region=us-east").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(other_region["items"], serde_json::json!([]));
    let (status, _) = get(&server, "/admin/v1/usage/quarantine?region=EU%20west").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    // It is the admin's: the agent token does not read it.
    let response = server
        .call(AGENT, Method::GET, "/admin/v1/usage/quarantine")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    // A huge bad record is kept as an excerpt, its problems cut short: a batch's writes
    // stay small whatever an agent sends.
    let mut huge = sent.clone();
    huge["seq"] = serde_json::json!(2);
    let mut long = row("acme", APRIL_1, Capacity::Reserved, 1);
    long.tenant = "X".repeat(40_000);
    huge["rows"] = serde_json::json!([long]);
    let (status, receipt) = json(
        server
            .agent("/agent/v1/usage")
            .json(&huge)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        (status, &receipt["applied"]),
        (StatusCode::OK, &serde_json::json!(true))
    );
    let (_, listed) = quarantined(&server).await;
    let kept = &listed["items"][2];
    assert_eq!(kept["batch"], 2, "{kept}");
    assert!(kept["record"].as_str().unwrap().len() <= 2048);
    assert!(kept["problems"][0]["problem"].as_str().unwrap().len() <= 520);
    assert!(
        kept.to_string().len() < 4096,
        "{} bytes kept",
        kept.to_string().len()
    );
    // A batch whose rows are not a list is still refused whole.
    let mut broken = sent.clone();
    broken["seq"] = serde_json::json!(3);
    broken["rows"] = serde_json::json!({"not": "a list"});
    let (status, body) = json(
        server
            .agent("/agent/v1/usage")
            .json(&broken)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    server.stop().await;
}

async fn spend_reaches_edges(backend: Backend) {
    let server = TestServer::start(backend).await;
    let agent = server.client(AGENT);
    let edge = server.client(EDGE);
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
    let rows = vec![
        row("acme", now, Capacity::Reserved, 1),
        row("acme", now, Capacity::OnDemand, 1),
        // Last month's work is not this month's spend.
        row("acme", now - 40 * 86_400_000, Capacity::OnDemand, 1),
    ];
    let first_batch = batch("eu-west", LEDGER_A, 1, rows);
    agent.report_usage(&first_batch).await.unwrap();
    let next = testkit::within("the poll to return", poll)
        .await
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
    let admin = server.client(ADMIN);
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

    // A redelivery changes nothing an edge sees: its poll runs out.
    assert!(!agent.report_usage(&first_batch).await.unwrap().applied);
    let wait = SPEND_REFRESH * 3 + Duration::from_secs(1);
    let quiet = edge.poll_snapshot(next.revision, wait).await.unwrap();
    assert!(quiet.is_none(), "a duplicate woke the edge");
    server.stop().await;
}

/// Concurrent ledgers over one store, each resending every batch as an agent that lost
/// the answers would, count every batch exactly once: the totals equal the rows' sum.
async fn concurrent_batches_count_each_job_once(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let mut etcd = None;
    let config = match backend {
        Backend::Embedded => StoreConfig::embedded(dir.path()),
        Backend::Etcd => {
            let server = Etcd::start().await;
            let config = server.store_config();
            etcd = Some(server);
            config
        }
    };
    let store = Arc::new(AnyStore::open(&config).await.unwrap());
    // Four agents of one region, six batches each, all adding to the same day's totals.
    let ledgers: Vec<Vec<UsageBatch>> = (0..4_u64)
        .map(|w| {
            let ledger = format!("{w:032x}");
            (1..=6)
                .map(|seq| {
                    let capacity = if seq % 3 == 0 {
                        Capacity::Reserved
                    } else {
                        Capacity::OnDemand
                    };
                    let mut r = row("acme", APRIL_1 + (seq % 2) * HOUR, capacity, w + seq);
                    r.cost_nanos = Nanos(1_000_001 * (w + 1) * seq);
                    r.failed_jobs = seq % 2;
                    batch("eu-west", &ledger, seq, vec![r])
                })
                .collect()
        })
        .collect();
    let writers: Vec<_> = ledgers
        .iter()
        .cloned()
        .map(|batches| {
            let store = store.clone();
            tokio::spawn(async move {
                let mut applied = 0;
                for b in batches.iter().chain(batches.iter()) {
                    let mut tries = 0;
                    let receipt = loop {
                        match usage::ingest(&store, b).await {
                            Ok(receipt) => break receipt,
                            Err(e) if tries < 10 => {
                                tries += 1;
                                eprintln!("resending a batch after: {e}");
                            }
                            Err(e) => panic!("a batch failed ten times: {e}"),
                        }
                    };
                    applied += usize::from(receipt.applied);
                }
                applied
            })
        })
        .collect();
    let mut applied = 0;
    for writer in writers {
        applied += writer.await.unwrap();
    }
    assert_eq!(applied, 24, "every batch applied exactly once");
    let (daily, _) = usage::daily(&store, Some("acme")).await.unwrap();
    assert_eq!(daily.len(), 1);
    let mut expected = usage::Totals::default();
    ledgers
        .iter()
        .flatten()
        .flat_map(|b| &b.rows)
        .for_each(|r| expected.add(r));
    assert_eq!(daily[0].totals, expected);
    let spend = usage::spend(&store, "acme", "2024-04").await.unwrap();
    assert_eq!(spend.totals, expected);
    // The store holds totals and one mark per ledger, never a key per job or batch.
    let listing = store.list("/meridian/").await.unwrap();
    let usage_keys = listing
        .kvs
        .iter()
        .filter(|kv| !kv.key.starts_with("/meridian/v1/") || kv.key.contains("/spend/"))
        .count();
    let keys: Vec<&String> = listing.kvs.iter().map(|kv| &kv.key).collect();
    assert_eq!(usage_keys, 1 + 4 + 1, "{keys:?}");
    if let AnyStore::Embedded(embedded) = &*store {
        embedded.close().await;
    }
    drop(etcd);
}

crate::both_backends!(
    totals_group_by_day_and_dimension,
    bad_records_are_quarantined_and_the_rest_counted,
    spend_reaches_edges,
    concurrent_batches_count_each_job_once
);
