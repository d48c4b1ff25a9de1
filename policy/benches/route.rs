//! The route decision over 50 regions and 200 models (docs/design.md §11: ≤ 2 µs median):
//! one-off (`route`), through a reused decision for clients it has seen (`route_into_reused`,
//! three cities) and for clients it has not (`…_new_clients`, 4,096 places).
//!
//! `cargo bench -p policy --bench route`
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use policy::{Location, RouteDecision, RouteRequest};

use support::{NOW_MS, world};

fn route(c: &mut Criterion) {
    let (catalog, live) = world(50, 200);
    let mut group = c.benchmark_group("route_50_regions_200_models");
    let clients = [
        Location::new(51.51, -0.13),
        Location::new(35.68, 139.69),
        Location::new(-23.55, -46.63),
    ];
    for (name, tenant) in [("global_tenant", "global"), ("eu_tenant", "eu-only")] {
        let models: Vec<String> = (0..200).map(|m| format!("bench/model-{m}")).collect();
        let mut i = 0usize;
        group.bench_function(format!("{name}/route"), |b| {
            b.iter(|| {
                i = i.wrapping_add(1);
                let request = RouteRequest {
                    tenant,
                    model: &models[i % 200],
                    client: clients[i % clients.len()],
                    narrowing: None,
                    units: 1.0,
                    now_ms: NOW_MS,
                };
                black_box(catalog.route(&live, black_box(&request)).unwrap())
            })
        });
        // Every request from a client location the reused decision has not remembered: the
        // round trips are computed each time, as for a first visit.
        let scattered: Vec<Location> = (0..4096)
            .map(|i| Location::new(f64::from(i % 160) - 80.0, f64::from(i * 37 % 360) - 180.0))
            .collect();
        for (bench, places) in [
            ("route_into_reused", &clients[..]),
            ("route_into_reused_new_clients", &scattered[..]),
        ] {
            let mut out = RouteDecision::default();
            let mut i = 0usize;
            group.bench_function(format!("{name}/{bench}"), |b| {
                b.iter(|| {
                    i = i.wrapping_add(1);
                    let request = RouteRequest {
                        tenant,
                        model: &models[i % 200],
                        client: places[i % places.len()],
                        narrowing: None,
                        units: 1.0,
                        now_ms: NOW_MS,
                    };
                    catalog
                        .route_into(&live, black_box(&request), &mut out)
                        .unwrap();
                    black_box(out.candidates.len())
                })
            });
        }
    }
    group.finish();
}

criterion_group!(benches, route);
criterion_main!(benches);
