//! Everything the edge does for one request before it proxies, on one thread (docs/design.md
//! §11: key check + quota + geo-IP + route ≤ 10 µs median): parse the `Authorization`
//! header and check the key against 10 000 stored keys, apply the tenant's rate limit,
//! concurrency gate and monthly budget, resolve the client address with the MaxMind City
//! test database, and route over 50 regions and 200 models.
//!
//! `cargo bench -p policy --bench request_path`
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::hint::black_box;
use std::sync::Arc;

use criterion::{Criterion, criterion_group, criterion_main};
use policy::key::{self, KeyRing};
use policy::quota::{ConcurrencyGate, MonthlyBudget, RateLimit, RateLimiter, Spend};
use policy::{GeoIp, Location, RouteRequest, TenantId};
use rand::SeedableRng;
use rand::rngs::StdRng;

use support::{NOW_MS, world};

fn request_path(c: &mut Criterion) {
    let (catalog, live) = world(50, 200);
    let mut rng = StdRng::seed_from_u64(9);
    let tenant = TenantId::new("global").unwrap();
    let mut records = Vec::new();
    let mut presented = String::new();
    for i in 0..10_000 {
        let new = key::generate(&mut rng, tenant.clone(), None, 0);
        if i == 5_000 {
            presented = format!("Key {}", new.key);
        }
        records.push(new.record);
    }
    let ring = KeyRing::new(records);
    // A rate no benchmark can exhaust, so every iteration takes the "allowed" path.
    let limiter = RateLimiter::new(RateLimit {
        per_second: 1e8,
        burst: 1_000_000,
    })
    .unwrap();
    let gate = Arc::new(ConcurrencyGate::new(1_000));
    let budget = MonthlyBudget {
        money: Some(1_000.0),
        gpu_seconds: Some(1e6),
    };
    let geoip = GeoIp::from_bytes(
        std::fs::read(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/data/geoip/GeoLite2-City-Test.mmdb"
        ))
        .unwrap(),
    )
    .unwrap();
    let client_ip = "81.2.69.142".parse().unwrap();
    let edge_location = Location::new(50.11, 8.68);
    let models: Vec<String> = (0..200).map(|m| format!("bench/model-{m}")).collect();
    let start = std::time::Instant::now();

    let mut i = 0usize;
    c.bench_function("request_path/key+quota+geoip+route", |b| {
        b.iter(|| {
            i = i.wrapping_add(1);
            let header = key::from_authorization(Some(black_box(&presented))).unwrap();
            let record = ring.authenticate(header).unwrap();
            assert!(limiter.check(start.elapsed()).is_allowed());
            let permit = gate.try_acquire().unwrap();
            budget
                .check(
                    Spend {
                        money: 10.0,
                        gpu_seconds: 100.0,
                    },
                    Spend {
                        money: 0.002,
                        gpu_seconds: 0.5,
                    },
                    1_800_000_000,
                )
                .unwrap();
            let client = geoip
                .lookup(black_box(client_ip))
                .unwrap()
                .and_then(|place| place.location)
                .unwrap_or(edge_location);
            let request = RouteRequest {
                tenant: record.tenant.as_str(),
                model: &models[i % 200],
                client,
                narrowing: None,
                units: 1.0,
                now_ms: NOW_MS,
            };
            let decision = catalog.route(&live, &request).unwrap();
            drop(permit);
            black_box(decision.candidates.len())
        })
    });
}

criterion_group!(benches, request_path);
criterion_main!(benches);
