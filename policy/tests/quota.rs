//! Behaviour of the quota primitives as the edge sees it.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Barrier};
use std::time::Duration;

use policy::quota::{
    BudgetExceeded, BudgetKind, ConcurrencyGate, ConcurrencyLimited, MonthlyBudget, QuotaError,
    RateDecision, RateLimit, RateLimiter, Spend, month_start, next_month_start, retry_after_secs,
    seconds_until_next_month,
};
use proptest::prelude::*;

fn limiter(per_second: f64, burst: u32) -> RateLimiter {
    RateLimiter::new(RateLimit { per_second, burst }).unwrap()
}

fn ms(millis: u64) -> Duration {
    Duration::from_millis(millis)
}

fn limited(retry_after: Duration) -> RateDecision {
    RateDecision::Limited { retry_after }
}

fn allowed(remaining: u32) -> RateDecision {
    RateDecision::Allowed { remaining }
}

// ---------------------------------------------------------------------------------------
// Rate limiter
// ---------------------------------------------------------------------------------------

#[test]
fn rate_burst_then_exact_retry_after() {
    let l = limiter(2.0, 4);
    assert_eq!(l.emission_interval(), ms(500));
    for remaining in [3, 2, 1, 0] {
        assert_eq!(l.check(Duration::ZERO), allowed(remaining));
    }
    let fifth = l.check(Duration::ZERO);
    assert_eq!(fifth, limited(ms(500)));
    assert_eq!(fifth.retry_after_secs(), Some(1));
    // One nanosecond early is still too early, by exactly that nanosecond.
    assert_eq!(
        l.check(ms(500) - Duration::from_nanos(1)),
        limited(Duration::from_nanos(1))
    );
    assert_eq!(l.check(ms(500)), allowed(0));
    assert_eq!(l.check(ms(500)), limited(ms(500)));
}

#[test]
fn rate_full_burst_returns_after_silence() {
    let l = limiter(2.0, 4);
    for _ in 0..4 {
        assert!(l.check(Duration::ZERO).is_allowed());
    }
    // 4 requests at 2/s take 2 s to drain; afterwards the whole burst is back, no more.
    let t = ms(2_000);
    for remaining in [3, 2, 1, 0] {
        assert_eq!(l.check(t), allowed(remaining));
    }
    assert_eq!(l.check(t), limited(ms(500)));
    // Longer silence does not bank more than the burst.
    let t = ms(60_000);
    for _ in 0..4 {
        assert!(l.check(t).is_allowed());
    }
    assert!(!l.check(t).is_allowed());
}

#[test]
fn rate_partial_refill() {
    let l = limiter(2.0, 4);
    for _ in 0..4 {
        l.check(Duration::ZERO);
    }
    // After 1.2 s, two whole requests have refilled (at 0.5 s and 1.0 s); the third comes
    // at 1.5 s.
    assert_eq!(l.check(ms(1_200)), allowed(1));
    assert_eq!(l.check(ms(1_200)), allowed(0));
    assert_eq!(l.check(ms(1_200)), limited(ms(300)));
}

#[test]
fn rate_limited_request_does_not_consume() {
    let l = limiter(2.0, 4);
    for _ in 0..4 {
        l.check(Duration::ZERO);
    }
    for _ in 0..1_000 {
        assert_eq!(l.check(ms(100)), limited(ms(400)));
    }
    // Exactly one request's worth has come back at 0.5 s, untouched by the refusals.
    assert_eq!(l.check(ms(500)), allowed(0));
    assert!(!l.check(ms(500)).is_allowed());
}

#[test]
fn rate_fractional() {
    let l = limiter(0.5, 1);
    assert_eq!(l.emission_interval(), ms(2_000));
    assert_eq!(l.check(Duration::ZERO), allowed(0));
    let refused = l.check(Duration::ZERO);
    assert_eq!(refused, limited(ms(2_000)));
    assert_eq!(refused.retry_after_secs(), Some(2));
    assert_eq!(l.check(ms(1_999)), limited(ms(1)));
    assert_eq!(l.check(ms(1_999)).retry_after_secs(), Some(1));
    assert_eq!(l.check(ms(2_000)), allowed(0));
    assert_eq!(l.check(ms(3_000)), limited(ms(1_000)));
}

#[test]
fn rate_non_dividing_rate_rounds_interval_up() {
    // 1e9 / 3 = 333_333_333.3 ns, rounded up so that 3 per second is never exceeded.
    let l = limiter(3.0, 1);
    assert_eq!(l.emission_interval(), Duration::from_nanos(333_333_334));
    assert!(l.check(Duration::ZERO).is_allowed());
    assert_eq!(
        l.check(Duration::ZERO),
        limited(Duration::from_nanos(333_333_334))
    );
}

#[test]
fn rate_very_high() {
    let l = limiter(1e9, 1_000);
    assert_eq!(l.emission_interval(), Duration::from_nanos(1));
    for _ in 0..1_000 {
        assert!(l.check(Duration::ZERO).is_allowed());
    }
    assert_eq!(l.check(Duration::ZERO), limited(Duration::from_nanos(1)));
    assert_eq!(l.check(Duration::from_nanos(1)), allowed(0));
    // A microsecond later, the whole burst again.
    assert_eq!(l.check(Duration::from_micros(2)), allowed(999));

    let l = limiter(1e6, 1);
    assert!(l.check(Duration::from_secs(5)).is_allowed());
    assert_eq!(
        l.check(Duration::from_secs(5)),
        limited(Duration::from_micros(1))
    );
}

#[test]
fn rate_time_going_backwards_grants_nothing() {
    let l = limiter(2.0, 4);
    let t = Duration::from_secs(10);
    for _ in 0..4 {
        assert!(l.check(t).is_allowed());
    }
    // An earlier now is only stricter: the refill is measured from the later time.
    assert_eq!(
        l.check(Duration::ZERO),
        limited(Duration::from_millis(10_500))
    );
    assert_eq!(l.check(ms(9_000)), limited(ms(1_500)));
    assert_eq!(l.check_n(Duration::ZERO, 0).unwrap(), allowed(0));
    assert_eq!(l.check(ms(10_500)), allowed(0));
}

#[test]
fn rate_extreme_times_do_not_panic() {
    let l = limiter(2.0, 4);
    assert!(l.check(Duration::MAX).is_allowed());
    // Far in the past relative to the TAT: refused, with a finite wait.
    assert!(matches!(
        l.check(Duration::ZERO),
        RateDecision::Limited { .. }
    ));
    for _ in 0..10 {
        l.check(Duration::MAX);
    }
    assert!(!l.check(Duration::MAX).is_allowed());
}

#[test]
fn rate_check_n() {
    let l = limiter(2.0, 4);
    assert_eq!(l.check_n(Duration::ZERO, 0).unwrap(), allowed(4));
    assert_eq!(l.check_n(Duration::ZERO, 3).unwrap(), allowed(1));
    // Two more do not fit; the refusal consumes nothing and says when both would.
    assert_eq!(l.check_n(Duration::ZERO, 2).unwrap(), limited(ms(500)));
    assert_eq!(l.check_n(Duration::ZERO, 1).unwrap(), allowed(0));
    assert_eq!(l.check_n(ms(1_000), 2).unwrap(), allowed(0));
    // A full burst at once is fine after a full refill.
    assert_eq!(l.check_n(ms(3_000), 4).unwrap(), allowed(0));
}

#[test]
fn rate_check_n_larger_than_burst_is_an_error() {
    let l = limiter(2.0, 4);
    let err = l.check_n(Duration::from_secs(100), 5).unwrap_err();
    assert_eq!(err, QuotaError::BatchExceedsBurst { n: 5, burst: 4 });
    assert_eq!(
        err.to_string(),
        "a batch of 5 requests can never pass a rate limit with burst 4; \
         split the batch into parts of at most 4 or raise the burst"
    );
    // And it consumed nothing.
    assert_eq!(l.check_n(Duration::from_secs(100), 4).unwrap(), allowed(0));
}

#[test]
fn rate_rejects_bad_parameters() {
    let new = |per_second, burst| RateLimiter::new(RateLimit { per_second, burst }).unwrap_err();
    for bad in [0.0, -1.0, f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
        assert!(
            matches!(new(bad, 1), QuotaError::InvalidRate { .. }),
            "rate {bad}"
        );
    }
    assert_eq!(
        new(0.0, 1).to_string(),
        "rate limit per_second must be a finite number above 0, got 0; \
         set a positive rate such as 10.0 (or 0.5 for one request every 2 s)"
    );
    assert_eq!(new(2.0, 0), QuotaError::ZeroBurst);
    assert_eq!(
        new(2.0, 0).to_string(),
        "rate limit burst must be at least 1, got 0; use burst = 1 to allow no bursting"
    );
    assert_eq!(new(2e9, 1), QuotaError::RateTooHigh { per_second: 2e9 });
    assert!(matches!(
        new(1e-10, 1),
        QuotaError::WindowTooLong { burst: 1, .. }
    ));
    assert!(matches!(
        new(f64::MIN_POSITIVE, 1),
        QuotaError::WindowTooLong { .. }
    ));
    // A slow rate with a moderate window is fine: one a day, burst 100 (100 days).
    assert!(
        RateLimiter::new(RateLimit {
            per_second: 1.0 / 86_400.0,
            burst: 100
        })
        .is_ok()
    );
}

#[test]
fn retry_after_rounds_up_to_whole_seconds() {
    assert_eq!(retry_after_secs(Duration::ZERO), 1);
    assert_eq!(retry_after_secs(Duration::from_nanos(1)), 1);
    assert_eq!(retry_after_secs(ms(1_000)), 1);
    assert_eq!(retry_after_secs(ms(1_001)), 2);
    assert_eq!(retry_after_secs(Duration::MAX), u64::MAX);
    assert_eq!(allowed(3).retry_after_secs(), None);
}

#[test]
fn rate_is_shared_safely_across_threads() {
    // 8 threads hammer one limiter at the same instant: exactly `burst` get through.
    let l = Arc::new(limiter(10.0, 100));
    let admitted = Arc::new(AtomicU32::new(0));
    let barrier = Arc::new(Barrier::new(8));
    let threads: Vec<_> = (0..8)
        .map(|_| {
            let (l, admitted, barrier) = (l.clone(), admitted.clone(), barrier.clone());
            std::thread::spawn(move || {
                barrier.wait();
                for _ in 0..1_000 {
                    if l.check(Duration::from_secs(1)).is_allowed() {
                        admitted.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(admitted.load(Ordering::Relaxed), 100);
}

/// Arrival times as increments, in multiples of the emission interval, so that every rate
/// sees a mix of bursts, steady traffic and silences.
fn arrivals() -> impl Strategy<Value = (f64, u32, Vec<u64>)> {
    (
        prop_oneof![0.01..1.0_f64, 1.0..1_000.0_f64, 1_000.0..1e9_f64],
        1..20_u32,
        prop::collection::vec(prop_oneof![Just(0.0), 0.0..0.2_f64, 0.0..3.0_f64], 1..150),
    )
        .prop_map(|(rate, burst, gaps)| {
            let interval = 1e9 / rate;
            let mut t = 0_u64;
            let times = gaps
                .into_iter()
                .map(|gap| {
                    t += (gap * interval) as u64;
                    t
                })
                .collect();
            (rate, burst, times)
        })
}

proptest! {
    /// GCRA's guarantee: in any closed window [t, t + w], at most `burst + floor(w / T)`
    /// requests are admitted, where T is the emission interval. Proof: each admission pushes
    /// the TAT forward by T and may leave it at most `burst × T` ahead of its arrival; k
    /// admissions in the window push it from at least t to at most t + w + burst × T.
    ///
    /// Because T is rounded *up* to whole nanoseconds, `w / T <= rate × w`, so the bound in
    /// terms of the configured rate is `burst + rate × w`. The usual "+1 for rounding" is
    /// only needed for a limiter that rounds T down; here the only slack is a tiny epsilon
    /// for the floating-point product `rate × w`.
    #[test]
    fn rate_never_admits_more_than_burst_plus_rate_times_window(
        (rate, burst, times) in arrivals()
    ) {
        let l = limiter(rate, burst);
        let interval = u64::try_from(l.emission_interval().as_nanos()).unwrap();
        let admitted: Vec<u64> = times
            .iter()
            .copied()
            .filter(|&t| l.check(Duration::from_nanos(t)).is_allowed())
            .collect();
        for (i, &start) in admitted.iter().enumerate() {
            for (j, &end) in admitted.iter().enumerate().skip(i) {
                let count = (j - i + 1) as u64;
                let w = end - start;
                prop_assert!(count <= u64::from(burst) + w / interval,
                    "{count} admitted in {w} ns; burst {burst}, interval {interval} ns");
                let by_rate = f64::from(burst) + rate * (w as f64 / 1e9);
                prop_assert!(count as f64 <= by_rate + 1e-6,
                    "{count} admitted in {w} ns; burst {burst}, rate {rate}/s");
            }
        }
    }

    /// A refusal's retry_after is exact: retrying then (with nothing in between) succeeds,
    /// and one nanosecond earlier does not.
    #[test]
    fn rate_retry_after_is_exact((rate, burst, times) in arrivals()) {
        let l = limiter(rate, burst);
        for t in times {
            let now = Duration::from_nanos(t);
            if let RateDecision::Limited { retry_after } = l.check(now) {
                prop_assert!(retry_after > Duration::ZERO);
                let early = now + retry_after - Duration::from_nanos(1);
                prop_assert_eq!(l.check(early), limited(Duration::from_nanos(1)));
                prop_assert!(l.check(now + retry_after).is_allowed());
                break;
            }
        }
    }

    /// Arbitrary, unsorted times and batch sizes never panic, and decisions stay in range.
    #[test]
    fn rate_never_panics_on_arbitrary_times(
        rate in prop_oneof![1e-6..1.0_f64, 1.0..1e9_f64],
        burst in 1..1_000_u32,
        calls in prop::collection::vec((any::<u64>(), 0..1_000_000_000_u32, 0..1_100_u32), 1..100),
    ) {
        let l = limiter(rate, burst);
        for (secs, nanos, n) in calls {
            let now = Duration::new(secs >> (secs % 64), nanos);
            match l.check_n(now, n) {
                Ok(RateDecision::Allowed { remaining }) => {
                    prop_assert!(remaining <= burst - n);
                }
                Ok(RateDecision::Limited { retry_after }) => {
                    prop_assert!(n > 0);
                    prop_assert!(retry_after > Duration::ZERO);
                }
                Err(e) => prop_assert_eq!(e, QuotaError::BatchExceedsBurst { n, burst }),
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// Concurrency gate
// ---------------------------------------------------------------------------------------

#[test]
fn gate_refuses_beyond_max_and_releases_on_drop() {
    let gate = Arc::new(ConcurrencyGate::new(2));
    let a = gate.try_acquire().unwrap();
    let b = gate.try_acquire().unwrap();
    assert_eq!(gate.in_use(), 2);
    let err = gate.try_acquire().unwrap_err();
    assert_eq!(err, ConcurrencyLimited { limit: 2 });
    assert_eq!(
        err.to_string(),
        "concurrency limit reached: 2 requests already in flight"
    );
    // The refusal took nothing.
    assert_eq!(gate.in_use(), 2);
    drop(a);
    assert_eq!(gate.in_use(), 1);
    let c = gate.try_acquire().unwrap();
    assert_eq!(gate.in_use(), 2);
    drop((b, c));
    assert_eq!(gate.in_use(), 0);
}

#[test]
fn gate_with_zero_max_refuses_everything() {
    let gate = Arc::new(ConcurrencyGate::new(0));
    assert_eq!(
        gate.try_acquire().unwrap_err(),
        ConcurrencyLimited { limit: 0 }
    );
    assert_eq!(gate.in_use(), 0);
}

#[test]
fn gate_releases_on_panic_unwind() {
    let gate = Arc::new(ConcurrencyGate::new(1));
    let g = gate.clone();
    let result = std::thread::spawn(move || {
        let _permit = g.try_acquire().unwrap();
        panic!("request handler failed");
    })
    .join();
    assert!(result.is_err());
    assert_eq!(gate.in_use(), 0);
    assert!(gate.try_acquire().is_ok());
}

#[test]
fn gate_never_exceeds_max_across_threads() {
    const MAX: u32 = 5;
    const THREADS: usize = 16;
    let gate = Arc::new(ConcurrencyGate::new(MAX));
    // Counted independently of the gate, while each permit is held.
    let holding = Arc::new(AtomicU32::new(0));
    let peak = Arc::new(AtomicU32::new(0));
    let admitted = Arc::new(AtomicU32::new(0));
    let barrier = Arc::new(Barrier::new(THREADS));
    let threads: Vec<_> = (0..THREADS)
        .map(|_| {
            let (gate, holding, peak, admitted, barrier) = (
                gate.clone(),
                holding.clone(),
                peak.clone(),
                admitted.clone(),
                barrier.clone(),
            );
            std::thread::spawn(move || {
                barrier.wait();
                for _ in 0..20_000 {
                    if let Ok(permit) = gate.try_acquire() {
                        let now = holding.fetch_add(1, Ordering::SeqCst) + 1;
                        peak.fetch_max(now, Ordering::SeqCst);
                        assert!(gate.in_use() <= MAX);
                        // Hold the slot across a reschedule so that permits overlap.
                        std::thread::yield_now();
                        holding.fetch_sub(1, Ordering::SeqCst);
                        admitted.fetch_add(1, Ordering::Relaxed);
                        drop(permit);
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let peak = peak.load(Ordering::SeqCst);
    assert!(peak <= MAX, "peak {peak} > {MAX}");
    assert!(peak >= 1);
    assert!(admitted.load(Ordering::Relaxed) > 0);
    assert_eq!(gate.in_use(), 0);
}

// ---------------------------------------------------------------------------------------
// Monthly budget
// ---------------------------------------------------------------------------------------

/// 2024-02-29T12:00:00Z; next month starts 2024-03-01T00:00:00Z, 12 h later.
const LEAP_DAY_NOON: i64 = 1_709_208_000;
const MARCH_2024: i64 = 1_709_251_200;

fn spend(money: f64, gpu_seconds: f64) -> Spend {
    Spend { money, gpu_seconds }
}

#[test]
fn budget_money_under_at_over() {
    let b = MonthlyBudget {
        money: Some(100.0),
        gpu_seconds: None,
    };
    let now = LEAP_DAY_NOON;
    assert_eq!(b.check(spend(50.0, 1e12), spend(10.0, 1e12), now), Ok(()));
    // Landing exactly on the limit is allowed.
    assert_eq!(b.check(spend(90.0, 0.0), spend(10.0, 0.0), now), Ok(()));
    let over = b
        .check(spend(95.0, 0.0), spend(10.0, 0.0), now)
        .unwrap_err();
    assert_eq!(
        over,
        BudgetExceeded {
            kind: BudgetKind::Money,
            limit: 100.0,
            spent: 95.0,
            estimate: 10.0,
            resets_at: MARCH_2024,
            retry_after_secs: 43_200,
        }
    );
    assert_eq!(
        over.to_string(),
        "monthly money budget of 100 reached: 95 spent this month and this request is \
         estimated at 10; the budget resets at 2024-03-01T00:00:00Z (in 43200 s)"
    );
    // Once spending has reached the limit, even a zero estimate is refused.
    let exhausted = b
        .check(spend(100.0, 0.0), spend(0.0, 0.0), now)
        .unwrap_err();
    assert_eq!(exhausted.kind, BudgetKind::Money);
    assert_eq!(exhausted.spent, 100.0);
}

#[test]
fn budget_gpu_seconds_under_at_over() {
    let b = MonthlyBudget {
        money: None,
        gpu_seconds: Some(3_600.0),
    };
    let now = LEAP_DAY_NOON;
    assert_eq!(b.check(spend(1e9, 0.0), spend(1e9, 3_599.0), now), Ok(()));
    assert_eq!(b.check(spend(0.0, 3_000.0), spend(0.0, 600.0), now), Ok(()));
    let over = b
        .check(spend(0.0, 3_000.0), spend(0.0, 600.5), now)
        .unwrap_err();
    assert_eq!(over.kind, BudgetKind::GpuSeconds);
    assert_eq!(over.limit, 3_600.0);
    assert_eq!(over.spent, 3_000.0);
    assert_eq!(over.estimate, 600.5);
    assert_eq!(over.resets_at, MARCH_2024);
    assert_eq!(
        over.to_string(),
        "monthly GPU-seconds budget of 3600 reached: 3000 spent this month and this request \
         is estimated at 600.5; the budget resets at 2024-03-01T00:00:00Z (in 43200 s)"
    );
}

#[test]
fn budget_both_limits() {
    let b = MonthlyBudget {
        money: Some(10.0),
        gpu_seconds: Some(100.0),
    };
    let now = LEAP_DAY_NOON;
    assert_eq!(b.check(spend(5.0, 50.0), spend(5.0, 50.0), now), Ok(()));
    assert_eq!(
        b.check(spend(5.0, 50.0), spend(1.0, 51.0), now)
            .unwrap_err()
            .kind,
        BudgetKind::GpuSeconds
    );
    assert_eq!(
        b.check(spend(5.0, 50.0), spend(6.0, 1.0), now)
            .unwrap_err()
            .kind,
        BudgetKind::Money
    );
    // Both over: money is reported.
    assert_eq!(
        b.check(spend(10.0, 100.0), spend(1.0, 1.0), now)
            .unwrap_err()
            .kind,
        BudgetKind::Money
    );
}

#[test]
fn budget_no_limits_admits_anything() {
    let b = MonthlyBudget::UNLIMITED;
    assert_eq!(b, MonthlyBudget::default());
    assert_eq!(b.check(spend(1e300, 1e300), spend(1e300, 1e300), 0), Ok(()));
    assert_eq!(b.validate(), Ok(()));
}

#[test]
fn budget_zero_limit_and_odd_spends() {
    let zero = MonthlyBudget {
        money: Some(0.0),
        gpu_seconds: None,
    };
    assert!(zero.check(spend(0.0, 0.0), spend(0.0, 0.0), 0).is_err());

    let b = MonthlyBudget {
        money: Some(10.0),
        gpu_seconds: None,
    };
    // A negative or NaN estimate counts as zero; a NaN spend fails closed.
    assert_eq!(b.check(spend(9.0, 0.0), spend(-100.0, 0.0), 0), Ok(()));
    assert_eq!(b.check(spend(9.0, 0.0), spend(f64::NAN, 0.0), 0), Ok(()));
    assert!(b.check(spend(f64::NAN, 0.0), spend(0.0, 0.0), 0).is_err());
}

#[test]
fn budget_validate() {
    for bad in [-1.0, f64::NAN, f64::INFINITY] {
        let b = MonthlyBudget {
            money: Some(1.0),
            gpu_seconds: Some(bad),
        };
        assert!(matches!(
            b.validate(),
            Err(QuotaError::InvalidBudget {
                kind: BudgetKind::GpuSeconds,
                ..
            })
        ));
    }
    let b = MonthlyBudget {
        money: Some(-5.0),
        gpu_seconds: None,
    };
    assert_eq!(
        b.validate().unwrap_err().to_string(),
        "monthly money budget must be a finite number of at least 0, got -5; \
         set a non-negative limit, or leave it unset for no limit"
    );
}

#[test]
fn budget_serde_shape() {
    let b: MonthlyBudget =
        serde_json::from_str(r#"{"money": 250.0, "gpu_seconds": null}"#).unwrap();
    assert_eq!(
        b,
        MonthlyBudget {
            money: Some(250.0),
            gpu_seconds: None
        }
    );
    assert!(serde_json::from_str::<MonthlyBudget>(r#"{"mony": 1.0}"#).is_err());
}

// ---------------------------------------------------------------------------------------
// Calendar helpers (expected values from `date -u -d YYYY-MM-DD +%s`)
// ---------------------------------------------------------------------------------------

#[test]
fn calendar_known_timestamps() {
    // (some instant, start of its month, start of next month)
    let cases = [
        (0, 0, 2_678_400),                             // 1970-01-01T00:00:00Z
        (-1, -2_678_400, 0),                           // 1969-12-31T23:59:59Z
        (LEAP_DAY_NOON, 1_706_745_600, MARCH_2024),    // 2024-02-29T12:00:00Z
        (1_706_745_600, 1_706_745_600, MARCH_2024),    // 2024-02-01T00:00:00Z
        (MARCH_2024 - 1, 1_706_745_600, MARCH_2024),   // 2024-02-29T23:59:59Z
        (MARCH_2024, MARCH_2024, 1_711_929_600),       // 2024-03-01 → 04-01
        (1_704_067_199, 1_701_388_800, 1_704_067_200), // 2023-12-31T23:59:59Z
        (1_704_067_200, 1_704_067_200, 1_706_745_600), // 2024-01-01T00:00:00Z
        (4_107_542_399, 4_105_123_200, 4_107_542_400), // 2100-02-28T23:59:59Z
        (951_868_799, 949_363_200, 951_868_800),       // 2000-02-29T23:59:59Z
        (2_147_483_647, 2_145_916_800, 2_148_595_200), // 2038-01-19T03:14:07Z
        (1_719_791_999, 1_717_200_000, 1_719_792_000), // 2024-06-30T23:59:59Z
    ];
    for (t, start, next) in cases {
        assert_eq!(month_start(t), start, "month_start({t})");
        assert_eq!(next_month_start(t), next, "next_month_start({t})");
        assert_eq!(
            seconds_until_next_month(t),
            u64::try_from(next - t).unwrap()
        );
    }
}

#[test]
fn calendar_month_lengths() {
    let days = |t: i64| (next_month_start(t) - month_start(t)) / 86_400;
    assert_eq!(days(LEAP_DAY_NOON), 29); // 2024 is leap
    assert_eq!(days(1_675_209_600), 28); // 2023-02-01: not leap
    assert_eq!(days(4_105_123_200), 28); // 2100-02-01: divisible by 100, not leap
    assert_eq!(days(949_363_200), 29); // 2000-02-01: divisible by 400, leap
    assert_eq!(days(1_717_200_000), 30); // 2024-06
    assert_eq!(days(1_701_388_800), 31); // 2023-12
}

#[test]
fn calendar_retry_after_just_before_reset() {
    assert_eq!(seconds_until_next_month(MARCH_2024 - 1), 1);
    // At the reset instant itself, the wait is a whole month (March 2024: 31 days).
    assert_eq!(seconds_until_next_month(MARCH_2024), 31 * 86_400);
}

#[test]
fn calendar_extremes_do_not_panic() {
    for t in [i64::MIN, i64::MIN + 1, -1, 0, i64::MAX - 1, i64::MAX] {
        assert!(month_start(t) <= t);
        assert!(next_month_start(t) >= t);
        assert!(seconds_until_next_month(t) >= 1);
    }
}

proptest! {
    #[test]
    fn calendar_months_tile_time(t in -10_000_000_000_000_i64..10_000_000_000_000) {
        let start = month_start(t);
        let next = next_month_start(t);
        prop_assert!(start <= t && t < next);
        prop_assert_eq!(start % 86_400, 0);
        prop_assert!((28 * 86_400..=31 * 86_400).contains(&(next - start)));
        prop_assert_eq!(month_start(next), next);
        prop_assert_eq!(month_start(start), start);
        prop_assert_eq!(next_month_start(start), next);
        prop_assert_eq!(next_month_start(next - 1), next);
        prop_assert!(month_start(start - 1) < start);
        prop_assert_eq!(next_month_start(start - 1), start);
        prop_assert_eq!(seconds_until_next_month(t), (next - t) as u64);
    }
}
