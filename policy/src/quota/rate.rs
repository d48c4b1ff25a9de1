//! Request-rate limiting with GCRA (the generic cell rate algorithm).
//!
//! GCRA is a token bucket expressed as a single timestamp, the *theoretical arrival time*
//! (TAT): the time at which the bucket would be full again if no more requests came. Each
//! admitted request pushes the TAT forward by one *emission interval* `T = 1 / rate`; a
//! request is admitted if, after pushing, the TAT is no more than `burst × T` ahead of now.
//! So a fresh limiter admits `burst` requests at once and then one every `T`, and a refusal
//! can say exactly when the request would be admitted.
//!
//! The TAT lives in one [`AtomicU64`] of nanoseconds since the caller's time origin, updated
//! with a compare-exchange loop: checks are lock-free, take `&self`, and a refused request
//! changes nothing.
//!
//! # Resolution
//!
//! The emission interval is a whole number of nanoseconds, rounded **up** from `1e9 / rate`,
//! so the limiter never admits more than the configured rate; it is exact whenever
//! `1e9 / rate` is a whole number of nanoseconds (any rate that divides 1e9, such as 2, 1000
//! or 0.5 per second) and otherwise slower by less than one nanosecond per request (below
//! 0.0001 % for rates up to 1000 per second). Rates above 1e9 per second are refused.
//!
//! # Time going backwards
//!
//! Callers on different threads may pass slightly different `now`s, and a caller may pass an
//! earlier `now` than before. The TAT never moves backwards, so an earlier `now` only makes
//! the limiter stricter: it can never restore burst that was already spent.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::QuotaError;

const NANOS_PER_SEC: f64 = 1e9;

/// Times are clamped to this many nanoseconds (about 292 years after the caller's origin),
/// and the refill window to half of it, so that `now + window + window` cannot overflow.
const MAX_NOW_NS: u64 = u64::MAX / 2;
const MAX_WINDOW_NS: u64 = u64::MAX / 4;

/// A sustained request rate with a burst allowance.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimit {
    /// Sustained rate in requests per second; may be fractional (0.5 is one every 2 s).
    pub per_second: f64,
    /// How many requests may arrive at once after a quiet period (the bucket size).
    pub burst: u32,
}

/// The outcome of a rate check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RateDecision {
    /// The request was admitted and its capacity consumed.
    Allowed {
        /// How many more single requests would be admitted right now.
        remaining: u32,
    },
    /// The request was refused; nothing was consumed.
    Limited {
        /// How long until exactly this request would be admitted, if nothing else arrives
        /// in between. Always above zero.
        retry_after: Duration,
    },
}

impl RateDecision {
    /// Whether the request was admitted.
    pub fn is_allowed(&self) -> bool {
        matches!(self, RateDecision::Allowed { .. })
    }

    /// For a refusal, the whole seconds to put in a `Retry-After` header: `retry_after`
    /// rounded up, at least 1. `None` when the request was admitted.
    pub fn retry_after_secs(&self) -> Option<u64> {
        match self {
            RateDecision::Allowed { .. } => None,
            RateDecision::Limited { retry_after } => Some(super::retry_after_secs(*retry_after)),
        }
    }
}

/// A lock-free GCRA rate limiter; see the [module docs](self).
///
/// ```
/// # use std::time::Duration;
/// # use policy::quota::{RateDecision, RateLimit, RateLimiter};
/// let limiter = RateLimiter::new(RateLimit { per_second: 2.0, burst: 4 })?;
/// for _ in 0..4 {
///     assert!(limiter.check(Duration::ZERO).is_allowed());
/// }
/// assert_eq!(
///     limiter.check(Duration::ZERO),
///     RateDecision::Limited { retry_after: Duration::from_millis(500) },
/// );
/// # Ok::<(), policy::quota::QuotaError>(())
/// ```
#[derive(Debug)]
pub struct RateLimiter {
    limit: RateLimit,
    /// Emission interval `T` in nanoseconds, at least 1.
    interval_ns: u64,
    /// `burst × T`: how far ahead of now the TAT may be after admitting a request.
    window_ns: u64,
    /// Theoretical arrival time, nanoseconds since the caller's origin.
    tat_ns: AtomicU64,
}

impl RateLimiter {
    /// A limiter for `limit`, with a full bucket.
    ///
    /// # Errors
    ///
    /// [`QuotaError::InvalidRate`] if the rate is not a finite number above zero,
    /// [`QuotaError::RateTooHigh`] if it is above 1e9 per second, [`QuotaError::ZeroBurst`]
    /// if the burst is zero, and [`QuotaError::WindowTooLong`] if refilling the burst would
    /// take more than about 146 years.
    pub fn new(limit: RateLimit) -> Result<Self, QuotaError> {
        let RateLimit { per_second, burst } = limit;
        if !per_second.is_finite() || per_second <= 0.0 {
            return Err(QuotaError::InvalidRate { per_second });
        }
        if per_second > NANOS_PER_SEC {
            return Err(QuotaError::RateTooHigh { per_second });
        }
        if burst == 0 {
            return Err(QuotaError::ZeroBurst);
        }
        let interval = (NANOS_PER_SEC / per_second).ceil();
        let window = interval * f64::from(burst);
        // Compared in f64 before converting; `window` may be infinite for tiny rates.
        if window > MAX_WINDOW_NS as f64 {
            return Err(QuotaError::WindowTooLong {
                per_second,
                burst,
                seconds: f64::from(burst) / per_second,
            });
        }
        // A whole number in [1, MAX_WINDOW_NS], so the conversion is exact.
        let interval_ns = (interval as u64).max(1);
        let window_ns = interval_ns.saturating_mul(u64::from(burst));
        Ok(Self {
            limit,
            interval_ns,
            window_ns,
            tat_ns: AtomicU64::new(0),
        })
    }

    /// The limit this limiter enforces.
    pub fn limit(&self) -> RateLimit {
        self.limit
    }

    /// The emission interval: the time one request's capacity takes to come back.
    pub fn emission_interval(&self) -> Duration {
        Duration::from_nanos(self.interval_ns)
    }

    /// Checks one request arriving at `now` and, if it is admitted, consumes its capacity.
    pub fn check(&self, now: Duration) -> RateDecision {
        // `n = 1` never exceeds the burst, which `new` guarantees is at least 1.
        self.decide(now, 1)
    }

    /// Checks a batch of `n` requests arriving together at `now`: all are admitted or none.
    ///
    /// `n = 0` consumes nothing and is always [`RateDecision::Allowed`] with the capacity
    /// remaining at `now`.
    ///
    /// # Errors
    ///
    /// [`QuotaError::BatchExceedsBurst`] if `n` is larger than the burst: such a batch could
    /// never be admitted, however long the caller waited, so it gets an error rather than a
    /// [`RateDecision::Limited`] with a retry time that would never come true.
    pub fn check_n(&self, now: Duration, n: u32) -> Result<RateDecision, QuotaError> {
        if n > self.limit.burst {
            return Err(QuotaError::BatchExceedsBurst {
                n,
                burst: self.limit.burst,
            });
        }
        Ok(self.decide(now, n))
    }

    /// The GCRA step, for `n <= burst`.
    fn decide(&self, now: Duration, n: u32) -> RateDecision {
        let now_ns = u64::try_from(now.as_nanos())
            .unwrap_or(u64::MAX)
            .min(MAX_NOW_NS);
        // n <= burst, so cost <= window_ns <= MAX_WINDOW_NS.
        let cost = self.interval_ns.saturating_mul(u64::from(n));
        let deadline = now_ns + self.window_ns;
        // Relaxed suffices: the TAT is the only shared state, and all read-modify-writes of
        // one atomic are totally ordered whatever the ordering.
        let mut tat = self.tat_ns.load(Ordering::Relaxed);
        if cost == 0 {
            let next = tat.max(now_ns);
            return RateDecision::Allowed {
                remaining: self.remaining(deadline, next),
            };
        }
        loop {
            // An allowed update leaves tat <= some earlier now + window, and nows are
            // clamped, so none of these additions can overflow.
            let new_tat = tat.max(now_ns) + cost;
            if new_tat > deadline {
                // Admitted once the deadline reaches new_tat; new_tat > deadline >= now
                // here, and since cost <= window, waiting does not move new_tat.
                return RateDecision::Limited {
                    retry_after: Duration::from_nanos(new_tat - deadline),
                };
            }
            match self.tat_ns.compare_exchange_weak(
                tat,
                new_tat,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => {
                    return RateDecision::Allowed {
                        remaining: self.remaining(deadline, new_tat),
                    };
                }
                Err(current) => tat = current,
            }
        }
    }

    /// Single requests that fit between `new_tat` and `deadline`.
    fn remaining(&self, deadline: u64, new_tat: u64) -> u32 {
        let spare = deadline.saturating_sub(new_tat) / self.interval_ns;
        // spare <= window / interval = burst.
        u32::try_from(spare).unwrap_or(self.limit.burst)
    }
}
