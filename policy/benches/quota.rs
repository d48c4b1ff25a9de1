//! Cost of the per-request quota checks the edge makes for each tenant.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use policy::quota::{ConcurrencyGate, MonthlyBudget, RateLimit, RateLimiter, Spend};

/// 2024-02-29T12:00:00Z.
const NOW_UNIX: i64 = 1_709_208_000;

fn limiter() -> RateLimiter {
    RateLimiter::new(RateLimit {
        per_second: 1_000.0,
        burst: 100,
    })
    .unwrap()
}

fn budget() -> MonthlyBudget {
    MonthlyBudget {
        money: Some(1_000.0),
        gpu_seconds: Some(360_000.0),
    }
}

const MONTH_TO_DATE: Spend = Spend {
    money: 412.5,
    gpu_seconds: 120_000.0,
};
const ESTIMATE: Spend = Spend {
    money: 0.02,
    gpu_seconds: 1.5,
};

fn quota(c: &mut Criterion) {
    // Time advances by one emission interval per iteration, so every check is admitted and
    // takes the compare-exchange path.
    let rate = limiter();
    let mut now = Duration::ZERO;
    c.bench_function("rate check (allowed)", |b| {
        b.iter(|| {
            now += Duration::from_millis(1);
            rate.check(black_box(now))
        })
    });

    // A drained limiter: every check is refused, with no write.
    let drained = limiter();
    while drained.check(Duration::ZERO).is_allowed() {}
    c.bench_function("rate check (limited)", |b| {
        b.iter(|| drained.check(black_box(Duration::ZERO)))
    });

    let gate = Arc::new(ConcurrencyGate::new(64));
    c.bench_function("concurrency acquire+release", |b| {
        b.iter(|| drop(black_box(gate.try_acquire())))
    });

    let monthly = budget();
    c.bench_function("budget check", |b| {
        b.iter(|| {
            black_box(&monthly).check(
                black_box(MONTH_TO_DATE),
                black_box(ESTIMATE),
                black_box(NOW_UNIX),
            )
        })
    });

    // What the edge does per request: rate, then a concurrency slot, then the budget, with
    // the permit held across the budget check and released at the end.
    let rate = limiter();
    let mut now = Duration::ZERO;
    c.bench_function("per request: rate + concurrency + budget", |b| {
        b.iter(|| {
            now += Duration::from_millis(1);
            let decision = rate.check(black_box(now));
            let permit = gate.try_acquire();
            let budget = black_box(&monthly).check(
                black_box(MONTH_TO_DATE),
                black_box(ESTIMATE),
                black_box(NOW_UNIX),
            );
            let _ = black_box((decision, &permit, budget));
            drop(permit);
        })
    });
}

criterion_group!(benches, quota);
criterion_main!(benches);
