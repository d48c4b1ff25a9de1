//! The usage ledger's footprint in the store: a simulated day of jobs over many regions fed
//! through ingestion as the agents send it, then the store's key count and bytes.
//!
//! Each region's agent keeps its per-job records on its own disk and sends the control plane
//! numbered batches of hourly aggregates (tenant × model × capacity class × UTC hour), one
//! flush every `--flush-s` seconds of simulated time, at most `MAX_USAGE_ROWS` rows a batch.
//! This bench draws the jobs (a diurnal demand over `--regions` regions, 7 tenants and
//! 6 models, prices as the simulator's global day), aggregates them per flush window
//! exactly as an agent does (integer billionths), and applies every batch with
//! `usage::ingest` on a fresh store — the embedded raft store, or a real etcd with
//! `--backend etcd` — while compacting the store's history on simulated time as the
//! control plane's `history` task does (default retention). It prints the store's keys and bytes (key + value of every live key)
//! after the day, the embedded store's size on disk, and the ingestion rate; it runs the
//! day twice, with `--jobs` and with a tenth of them, so the two footprints can be compared:
//! the store must grow with the catalog and with time, not with the number of jobs.
//!
//! `cargo bench -p control-plane --bench ledger` runs a day of 10 M jobs over 20 regions
//! (`-- --jobs N --regions R --flush-s S --hours H --backend embedded|etcd` change it);
//! without `--bench` (as `cargo test --all-targets` runs it) it runs one simulated hour of
//! 20 000 jobs over 4 regions, to check that it works.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

use std::collections::BTreeMap;
use std::time::Instant;

use contract::{Nanos, charge};
use control_plane::history::HistoryTrim;
use control_plane::store::{AnyStore, Store, StoreConfig};
use control_plane::{config, usage};
use control_plane_client::wire::{Capacity, MAX_USAGE_ROWS, UsageAggregate, UsageBatch};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const HOUR_MS: u64 = 3_600_000;
const TENANTS: [&str; 7] = [
    "acme", "globex", "initech", "umbrella", "hooli", "stark", "wayne",
];
/// Model ids, price per unit and GPU-seconds per unit, as in the simulator's global day
/// (`simulations/scenarios/global-day.toml`).
const MODELS: [(&str, f64, f64); 6] = [
    ("meridian/tiny-sd", 0.004, 1.5),
    ("meridian/esrgan-x4", 0.002, 0.1),
    ("meridian/video-upscale-x2", 0.02, 1.5),
    ("meridian/whisper-small", 0.0002, 0.02),
    ("meridian/silero-vad", 0.000_05, 0.002),
    ("meridian/tts-small", 0.0005, 0.05),
];

#[derive(Debug, Clone, Copy)]
struct Settings {
    jobs: u64,
    regions: usize,
    flush_s: u64,
    hours: u64,
    etcd: bool,
}

fn settings() -> Settings {
    let args: Vec<String> = std::env::args().collect();
    let measuring = args.iter().any(|a| a == "--bench");
    let value = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let number = |name: &str, default: u64| {
        value(name).map_or(default, |v| {
            v.parse()
                .unwrap_or_else(|_| panic!("{name} takes a whole number, not {v:?}"))
        })
    };
    let (jobs, regions, hours) = if measuring {
        (10_000_000, 20, 24)
    } else {
        (20_000, 4, 1)
    };
    Settings {
        jobs: number("--jobs", jobs),
        regions: usize::try_from(number("--regions", regions)).unwrap(),
        flush_s: number("--flush-s", 10),
        hours: number("--hours", hours),
        etcd: value("--backend").is_some_and(|b| b == "etcd"),
    }
}

/// What the day left in the store, and how long ingestion took.
#[derive(Debug)]
struct Footprint {
    jobs: u64,
    batches: u64,
    rows: u64,
    seconds: f64,
    keys: usize,
    bytes: usize,
    disk_bytes: Option<u64>,
    cost: Nanos,
}

fn main() {
    let settings = settings();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    println!(
        "ledger: {} h of demand over {} regions, {} tenants, {} models; agents flush every {} s \
         (at most {MAX_USAGE_ROWS} rows a batch); store: {}",
        settings.hours,
        settings.regions,
        TENANTS.len(),
        MODELS.len(),
        settings.flush_s,
        if settings.etcd { "etcd" } else { "embedded" },
    );
    let tenth = Settings {
        jobs: settings.jobs / 10,
        ..settings
    };
    let mut rows = Vec::new();
    for run in [tenth, settings] {
        let footprint = runtime.block_on(day(run));
        print_footprint(&footprint);
        rows.push(footprint);
    }
    let (small, large) = (&rows[0], &rows[1]);
    println!(
        "keys with {}× the jobs: {} vs {} ({:+}); bytes {} vs {} ({:.2}×)",
        large.jobs / small.jobs.max(1),
        large.keys,
        small.keys,
        i64::try_from(large.keys).unwrap() - i64::try_from(small.keys).unwrap(),
        large.bytes,
        small.bytes,
        large.bytes as f64 / small.bytes.max(1) as f64,
    );
}

fn print_footprint(f: &Footprint) {
    let disk = f
        .disk_bytes
        .map(|b| format!("; on disk {:.1} MB", b as f64 / 1e6))
        .unwrap_or_default();
    println!(
        "{:>10} jobs: {} batches, {} rows in {:.1} s ({:.0} batches/s, {:.0} jobs/s); store: {} \
         keys, {:.2} MB of keys and values{disk}; billed {}",
        f.jobs,
        f.batches,
        f.rows,
        f.seconds,
        f.batches as f64 / f.seconds,
        f.jobs as f64 / f.seconds,
        f.keys,
        f.bytes as f64 / 1e6,
        f.cost,
    );
}

/// Demand weight of a region at an hour: each region peaks at its own local afternoon.
fn weight(region: usize, regions: usize, hour: u64) -> f64 {
    let offset = region as f64 * 24.0 / regions as f64;
    let phase = ((hour as f64 - offset) / 24.0) * std::f64::consts::TAU;
    1.0 + 0.8 * phase.sin()
}

/// Runs one simulated day through a fresh store.
async fn day(settings: Settings) -> Footprint {
    let dir = tempfile::tempdir().unwrap();
    let etcd = if settings.etcd {
        Some(testkit::etcd::Etcd::start().await)
    } else {
        None
    };
    let config = match &etcd {
        Some(server) => server.store_config(),
        None => StoreConfig::embedded(dir.path()),
    };
    let store = AnyStore::open(&config).await.unwrap();
    let mut rng = StdRng::seed_from_u64(1);
    let windows_per_hour = 3600 / settings.flush_s.max(1);
    let total_weight: f64 = (0..settings.hours)
        .flat_map(|h| (0..settings.regions).map(move |r| weight(r, settings.regions, h)))
        .sum();
    let ledgers: Vec<String> = (0..settings.regions)
        .map(|r| format!("{:032x}", r + 1))
        .collect();
    let mut seqs = vec![0_u64; settings.regions];
    let mut footprint = Footprint {
        jobs: 0,
        batches: 0,
        rows: 0,
        seconds: 0.0,
        keys: 0,
        bytes: 0,
        disk_bytes: None,
        cost: Nanos::ZERO,
    };
    // 2026-12-07T00:00:00Z.
    let start_ms = 1_796_601_600_000_u64;
    let retention = config::DEFAULT_HISTORY_RETENTION;
    let mut trim = HistoryTrim::new(retention);
    let clock = tokio::time::Instant::now();
    let mut next_look = 0;
    for hour in 0..settings.hours {
        for window in 0..windows_per_hour {
            let simulated_s = (hour * windows_per_hour + window) * settings.flush_s;
            if simulated_s >= next_look {
                let now = clock + std::time::Duration::from_secs(simulated_s);
                trim.look(&store, now).await.unwrap();
                next_look = simulated_s + retention.as_secs() / 4;
            }
            for region in 0..settings.regions {
                let share = weight(region, settings.regions, hour) / total_weight;
                let expected = settings.jobs as f64 * share / windows_per_hour as f64;
                // Round the expected count at random, so the day's total comes out right.
                let jobs = expected.floor() as u64 + u64::from(rng.random_bool(expected.fract()));
                let hour_ms = start_ms + hour * HOUR_MS;
                let aggregates = draw_window(&mut rng, jobs, hour_ms);
                footprint.jobs += jobs;
                for chunk in aggregates.chunks(MAX_USAGE_ROWS) {
                    seqs[region] += 1;
                    let batch = UsageBatch {
                        schema: contract::schema::USAGE_BATCH,
                        region: format!("region-{region}"),
                        ledger: ledgers[region].clone(),
                        seq: seqs[region],
                        rows: chunk.to_vec(),
                    };
                    footprint.cost += chunk.iter().map(|r| r.cost_nanos).sum();
                    let started = Instant::now();
                    let receipt = usage::ingest(&store, &batch).await.unwrap();
                    footprint.seconds += started.elapsed().as_secs_f64();
                    assert!(receipt.applied);
                    footprint.batches += 1;
                    footprint.rows += chunk.len() as u64;
                }
            }
        }
    }
    let listing = store.list("").await.unwrap();
    footprint.keys = listing.kvs.len();
    footprint.bytes = listing
        .kvs
        .iter()
        .map(|kv| kv.key.len() + kv.value.len())
        .sum();
    let billed: Nanos = usage::daily(&store, None)
        .await
        .unwrap()
        .0
        .iter()
        .map(|d| Nanos(d.totals.cost))
        .sum();
    assert_eq!(
        billed, footprint.cost,
        "the totals equal what the agents sent"
    );
    if let AnyStore::Embedded(embedded) = &store {
        embedded.close().await;
        footprint.disk_bytes = Some(disk_size(dir.path()));
    }
    drop(etcd);
    footprint
}

/// The hourly aggregates of `jobs` jobs finished in one flush window of one region.
fn draw_window(rng: &mut StdRng, jobs: u64, hour_ms: u64) -> Vec<UsageAggregate> {
    let mut rows: BTreeMap<(usize, usize, bool), UsageAggregate> = BTreeMap::new();
    for _ in 0..jobs {
        let tenant = rng.random_range(0..TENANTS.len());
        let model = rng.random_range(0..MODELS.len());
        let reserved = rng.random_bool(0.7);
        let failed = rng.random_bool(0.01);
        let (id, price, gpu_per_unit) = MODELS[model];
        let units: f64 = rng.random_range(0.05..4.0);
        let row = rows
            .entry((tenant, model, reserved))
            .or_insert_with(|| UsageAggregate {
                tenant: TENANTS[tenant].to_owned(),
                model: id.to_owned(),
                capacity: if reserved {
                    Capacity::Reserved
                } else {
                    Capacity::OnDemand
                },
                hour_ms,
                jobs: 0,
                failed_jobs: 0,
                units_nanos: Nanos::ZERO,
                gpu_nanos: Nanos::ZERO,
                cost_nanos: Nanos::ZERO,
            });
        row.jobs += 1;
        row.failed_jobs += u64::from(failed);
        row.units_nanos += Nanos::from_amount(units);
        row.gpu_nanos += Nanos::from_amount(units * gpu_per_unit);
        if !failed {
            row.cost_nanos += charge(units, price);
        }
    }
    rows.into_values().collect()
}

fn disk_size(dir: &std::path::Path) -> u64 {
    walk(dir)
}

fn walk(path: &std::path::Path) -> u64 {
    let Ok(meta) = std::fs::metadata(path) else {
        return 0;
    };
    if meta.is_file() {
        return meta.len();
    }
    std::fs::read_dir(path)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .map(|e| walk(&e.path()))
                .sum()
        })
        .unwrap_or(0)
}
