//! Per-tenant quota primitives: a request-rate limiter, a concurrency gate and a monthly
//! budget.
//!
//! Like the rest of `policy`, these are pure: they read no clock and do no I/O. Time is
//! passed in by the caller:
//!
//! * for the rate limiter, as a [`Duration`] since a monotonic origin of the caller's
//!   choosing (the edge passes `start.elapsed()`, tests pass constructed values);
//! * for the monthly budget, as Unix seconds in UTC, because months are calendar things.
//!
//! The edge keeps one of each per tenant and consults them on every request from many
//! threads at once, so every check takes `&self`, is lock-free (a single atomic updated by
//! compare-exchange or fetch-add) and allocates nothing.
//!
//! * [`RateLimiter`] — GCRA (generic cell rate algorithm): a sustained rate with a burst
//!   allowance, whose refusals say exactly when to retry.
//! * [`ConcurrencyGate`] — at most `max` requests in flight; a [`ConcurrencyPermit`] frees its
//!   slot when dropped.
//! * [`MonthlyBudget`] — money and/or GPU-seconds per calendar month (UTC), with the calendar
//!   helpers [`month_start`], [`next_month_start`] and [`seconds_until_next_month`].
//!
//! Parameters that can never work (a rate of zero, a burst of zero, a negative budget) are
//! refused with a [`QuotaError`] that says what to fix.

use std::time::Duration;

pub mod budget;
pub mod concurrency;
pub mod rate;

pub use budget::{
    BudgetExceeded, BudgetKind, MonthlyBudget, Spend, month_start, next_month_start,
    seconds_until_next_month,
};
pub use concurrency::{ConcurrencyGate, ConcurrencyLimited, ConcurrencyPermit};
pub use rate::{RateDecision, RateLimit, RateLimiter};

/// Parameters that no quota can be built or checked with.
///
/// Every message names the offending value and says how to fix it.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum QuotaError {
    /// The rate is zero, negative, NaN or infinite.
    #[error(
        "rate limit per_second must be a finite number above 0, got {per_second}; \
         set a positive rate such as 10.0 (or 0.5 for one request every 2 s)"
    )]
    InvalidRate {
        /// The rejected rate.
        per_second: f64,
    },
    /// The rate is finer than the limiter's nanosecond resolution.
    #[error(
        "rate limit per_second = {per_second} is above the supported maximum of 1e9 \
         (one request per nanosecond); lower it, or configure no rate limit at all"
    )]
    RateTooHigh {
        /// The rejected rate.
        per_second: f64,
    },
    /// The burst is zero, which would refuse every request.
    #[error("rate limit burst must be at least 1, got 0; use burst = 1 to allow no bursting")]
    ZeroBurst,
    /// Refilling the full burst would take longer than the limiter can represent.
    #[error(
        "rate limit burst {burst} at {per_second} per second takes {seconds:.0} s to refill, \
         beyond the limiter's range of about 146 years; raise per_second or lower burst"
    )]
    WindowTooLong {
        /// The configured rate.
        per_second: f64,
        /// The configured burst.
        burst: u32,
        /// `burst / per_second`, in seconds.
        seconds: f64,
    },
    /// A batch larger than the burst, which the limiter could never admit.
    #[error(
        "a batch of {n} requests can never pass a rate limit with burst {burst}; \
         split the batch into parts of at most {burst} or raise the burst"
    )]
    BatchExceedsBurst {
        /// The size of the batch asked for.
        n: u32,
        /// The limiter's burst.
        burst: u32,
    },
    /// A monthly budget limit is negative, NaN or infinite.
    #[error(
        "monthly {kind} budget must be a finite number of at least 0, got {value}; \
         set a non-negative limit, or leave it unset for no limit"
    )]
    InvalidBudget {
        /// Which limit is wrong.
        kind: BudgetKind,
        /// The rejected value.
        value: f64,
    },
}

/// Whole seconds to put in a `Retry-After` header for a wait of `wait`: rounded up, and at
/// least 1, so that a client that honours it never comes back too early.
///
/// ```
/// # use std::time::Duration;
/// # use policy::quota::retry_after_secs;
/// assert_eq!(retry_after_secs(Duration::ZERO), 1);
/// assert_eq!(retry_after_secs(Duration::from_millis(500)), 1);
/// assert_eq!(retry_after_secs(Duration::from_secs(2)), 2);
/// assert_eq!(retry_after_secs(Duration::from_nanos(2_000_000_001)), 3);
/// ```
pub fn retry_after_secs(wait: Duration) -> u64 {
    let whole = wait.as_secs();
    let rounded = if wait.subsec_nanos() > 0 {
        whole.saturating_add(1)
    } else {
        whole
    };
    rounded.max(1)
}
