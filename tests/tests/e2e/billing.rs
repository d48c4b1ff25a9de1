//! One truth per price: the catalog prices every job where it runs, a price change or a new
//! reservation made through the admin API reaches the agent without a restart, and what a
//! client is charged (`x-meridian-cost`), what the region keeps per job and what the control
//! plane's ledger sums agree to the billionth.

use contract::{Nanos, charge};
use control_plane_client::RecordQuery;
use control_plane_client::wire::{Capacity, Reservation, UsageRecord};
use policy::ModelSpec;
use rand::{Rng, SeedableRng};
use serde_json::json;
use testkit::tokens::EDGE;
use tests::{Answer, Backend, Stack, eventually};

use crate::{ASHBURN, DUBLIN, LONDON_IP, NEW_YORK, SEATTLE_IP, TENANTS};

const MODEL: &str = tests::MODEL;

/// The cost a client was charged.
fn cost(answer: &Answer) -> Nanos {
    let header = answer
        .headers
        .get("x-meridian-cost")
        .unwrap_or_else(|| panic!("no cost header: {}", answer.body));
    header.to_str().unwrap().parse().unwrap()
}

/// A synchronous ESRGAN ×2 run of a `size` × `size` picture from `from`.
async fn run(stack: &Stack, key: &str, from: &str, size: u32) -> Answer {
    let body = json!({"input": {"image": tests::small_png_base64(size)}});
    let answer = stack
        .post(
            &format!("/v1/run/{MODEL}"),
            key,
            Some(from),
            body.to_string(),
        )
        .await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    answer
}

/// Output megapixels of a ×2 upscale of a `size` × `size` picture: the job's units.
fn units(size: u32) -> f64 {
    f64::from(size * 2 * size * 2) / 1e6
}

/// Every per-job record `region` keeps, read page by page through the control plane.
async fn records(stack: &Stack, region: &str) -> Vec<UsageRecord> {
    let admin = stack.admin();
    let mut all = Vec::new();
    let mut cursor = None;
    loop {
        let page = admin
            .usage_records(&RecordQuery {
                region: region.into(),
                cursor: cursor.take(),
                limit: Some(5),
                ..RecordQuery::default()
            })
            .await
            .unwrap();
        assert_eq!(page.region, region);
        all.extend(page.records);
        match page.next {
            Some(next) => cursor = Some(next),
            None => return all,
        }
    }
}

/// The control plane's ledger: jobs counted and money charged, in all.
async fn ledger(stack: &Stack) -> (u64, Nanos) {
    let report = stack
        .admin()
        .usage(&control_plane_client::UsageQuery::default())
        .await
        .unwrap();
    (report.total.jobs, report.total.cost_nanos)
}

/// What the agent of `region` reports: (catalog revision, idle reserved slots).
async fn agent_report(stack: &Stack, region: &str) -> Option<(i64, u32)> {
    let snapshot = stack.control_plane(EDGE).snapshot().await.ok()?;
    let live = snapshot.regions.iter().find(|r| r.region == region)?;
    Some((live.report.catalog_revision?, live.report.free_reserved))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_price_change_and_a_new_reservation_reach_the_agent_and_the_bill() {
    let stack = Stack::start(Backend::Embedded, &[DUBLIN], TENANTS, NEW_YORK).await;
    let acme = stack.key("acme").to_owned();
    let admin = stack.admin();

    // At the catalog's price.
    let first = run(&stack, &acme, LONDON_IP, 64).await;
    assert_eq!(cost(&first), charge(units(64), 0.001));

    // The admin raises the price; the agent takes the new catalog without a restart.
    let model = admin
        .get::<ModelSpec>("models", MODEL)
        .await
        .unwrap()
        .unwrap();
    let mut dearer = model.record.clone();
    dearer.price_per_unit = 0.004;
    let changed = admin
        .put("models", MODEL, &dearer, Some(model.revision))
        .await
        .unwrap();
    eventually("the agent runs on the new catalog", || async {
        agent_report(&stack, "eu-west")
            .await
            .is_some_and(|(revision, _)| revision >= changed)
    })
    .await;
    let second = run(&stack, &acme, LONDON_IP, 64).await;
    assert_eq!(cost(&second), charge(units(64), 0.004));
    // The edge quotes the same price.
    eventually("the edge quotes the new price", || async {
        let models = stack.get("/v1/models", &acme).await;
        models.body["models"].as_array().is_some_and(|all| {
            all.iter()
                .any(|m| m["id"] == MODEL && m["price_per_unit"] == 0.004)
        })
    })
    .await;

    // A reservation made now gives the region more reserved GPUs, on the agent too.
    eventually("the agent reports its two reserved slots idle", || async {
        agent_report(&stack, "eu-west").await.map(|r| r.1) == Some(2)
    })
    .await;
    let now = i64::try_from(tests::now_ms()).unwrap();
    let reservation = Reservation {
        id: "dublin-extra".into(),
        region: "eu-west".into(),
        pool: tests::POOL.into(),
        gpus: 5,
        price_per_gpu_hour: 1.5,
        start_ms: now - 60_000,
        end_ms: now + 86_400_000,
        note: None,
    };
    admin
        .put("reservations", &reservation.id, &reservation, None)
        .await
        .unwrap();
    eventually("the agent has five reserved slots", || async {
        agent_report(&stack, "eu-west").await.map(|r| r.1) == Some(5)
    })
    .await;
    let third = run(&stack, &acme, LONDON_IP, 32).await;
    assert_eq!(third.body["capacity"], "reserved", "{}", third.body);
    assert_eq!(cost(&third), charge(units(32), 0.004));

    // The region's records name the catalog revision and price that priced each job, and
    // the ledger sums to the same money.
    let charged = [&first, &second, &third]
        .iter()
        .map(|a| cost(a))
        .sum::<Nanos>();
    eventually("the ledger has every job", || async {
        ledger(&stack).await == (3, charged)
    })
    .await;
    let kept = records(&stack, "eu-west").await;
    assert_eq!(kept.len(), 3);
    assert_eq!(kept.iter().map(|r| r.cost_nanos).sum::<Nanos>(), charged);
    assert!(kept[0].catalog_revision < changed && kept[0].price_per_unit == 0.001);
    assert!(kept[1].catalog_revision >= changed && kept[1].price_per_unit == 0.004);
    assert!(kept.iter().all(|r| r.capacity == Capacity::Reserved));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn random_jobs_cost_the_same_in_headers_region_records_and_the_ledger() {
    let stack = Stack::start(Backend::Embedded, &[DUBLIN, ASHBURN], TENANTS, NEW_YORK).await;
    let acme = stack.key("acme").to_owned();
    let mut rng = rand::rngs::StdRng::seed_from_u64(11);
    let mut charged = Nanos::ZERO;
    let jobs = 14;
    for _ in 0..jobs {
        let size = rng.random_range(3..=48);
        let from = if rng.random_bool(0.5) {
            LONDON_IP
        } else {
            SEATTLE_IP
        };
        let answer = run(&stack, &acme, from, size).await;
        assert_eq!(cost(&answer), charge(units(size), 0.001), "{}", answer.body);
        charged += cost(&answer);
    }
    eventually("the ledger has every job", || async {
        ledger(&stack).await.0 == jobs
    })
    .await;
    assert_eq!(ledger(&stack).await.1, charged, "ledger = headers");
    let mut kept = records(&stack, "eu-west").await;
    kept.extend(records(&stack, "us-east").await);
    assert_eq!(kept.len(), usize::try_from(jobs).unwrap());
    let in_regions: Nanos = kept.iter().map(|r| r.cost_nanos).sum();
    assert_eq!(in_regions, charged, "region records = headers");
}
