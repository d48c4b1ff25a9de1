//! Throttles that are not a tenant's quota: calls about existing requests per tenant and,
//! for signed file links, per client address ([`ReadRates`]), and wrong API keys (and
//! refused link signatures) per client address ([`FailedKeys`]).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use policy::quota::{RateDecision, RateLimit, RateLimiter, retry_after_secs};

use crate::error::ApiError;

/// Token buckets for calls about existing requests (status, SSE streams, files, cancel),
/// separate from a tenant's submission rate (docs/design.md §4): one per tenant, and one per
/// client address (see [`network_of`]) for signed file links, which carry no key.
#[derive(Debug)]
pub struct ReadRates {
    limit: RateLimit,
    /// Whose calls the buckets count, for the refusal's message: "tenant" or "address".
    whose: &'static str,
    callers: Mutex<Callers>,
}

#[derive(Debug, Default)]
struct Callers {
    buckets: HashMap<String, Arc<RateLimiter>>,
    /// When full buckets were last swept out.
    swept: Option<Duration>,
}

/// Most callers followed at once by one [`ReadRates`]; past it, buckets that are full again
/// are swept out (at most once a second), and a new caller waits while none is.
pub const READ_CALLERS: usize = 100_000;

impl ReadRates {
    /// Buckets of `limit` (checked by the configuration), one per tenant.
    pub fn new(limit: RateLimit) -> Self {
        Self::per(limit, "tenant")
    }

    /// Buckets of `limit`, one per caller of kind `whose` ("tenant", "address").
    pub fn per(limit: RateLimit, whose: &'static str) -> Self {
        Self {
            limit,
            whose,
            callers: Mutex::new(Callers::default()),
        }
    }

    /// Takes one call of `caller` at `now`, the edge's monotonic clock.
    ///
    /// # Errors
    ///
    /// 429 `read_rate_limited` with `Retry-After`.
    pub fn check(&self, caller: &str, now: Duration) -> Result<(), ApiError> {
        let limited = |retry_after| {
            ApiError::quota(
                "read_rate_limited",
                format!(
                    "too many status, stream, file or cancel calls for this {} (at most {} per \
                     second, {} at once)",
                    self.whose, self.limit.per_second, self.limit.burst
                ),
                retry_after,
            )
        };
        let Some(limiter) = self.bucket(caller, now) else {
            return Err(limited(1));
        };
        match limiter.check(now) {
            RateDecision::Allowed { .. } => Ok(()),
            RateDecision::Limited { retry_after } => Err(limited(retry_after_secs(retry_after))),
        }
    }

    /// `caller`'s bucket, made when it has none; `None` when [`READ_CALLERS`] are followed
    /// and none of their buckets is full.
    fn bucket(&self, caller: &str, now: Duration) -> Option<Arc<RateLimiter>> {
        let mut callers = self.callers.lock();
        if let Some(limiter) = callers.buckets.get(caller) {
            return Some(Arc::clone(limiter));
        }
        if callers.buckets.len() >= READ_CALLERS {
            if callers
                .swept
                .is_some_and(|at| now < at + Duration::from_secs(1))
            {
                return None;
            }
            let burst = self.limit.burst;
            callers.buckets.retain(|_, limiter| {
                !matches!(limiter.check_n(now, 0), Ok(RateDecision::Allowed { remaining }) if remaining >= burst)
            });
            callers.swept = Some(now);
            if callers.buckets.len() >= READ_CALLERS {
                return None;
            }
        }
        // The configuration checked that the limit builds.
        let limiter = Arc::new(RateLimiter::new(self.limit).ok()?);
        callers
            .buckets
            .insert(caller.to_owned(), Arc::clone(&limiter));
        Some(limiter)
    }
}

/// The network a client address stands for in per-address limits: an IPv4 address itself,
/// an IPv6 address's /64 (one site's or one host's whole allocation, which a client can
/// rotate through at will).
pub fn network_of(address: IpAddr) -> IpAddr {
    match address {
        IpAddr::V4(_) => address,
        IpAddr::V6(v6) => {
            let bits = u128::from(v6) & !((1u128 << 64) - 1);
            IpAddr::V6(bits.into())
        }
    }
}

/// How long one window of wrong keys lasts.
pub const FAILED_KEY_WINDOW: Duration = Duration::from_secs(60);
/// Most client addresses whose wrong keys are counted at once.
pub const FAILED_KEY_ADDRESSES: usize = 100_000;

/// Wrong API keys per client address (IPv6: per /64, see [`network_of`]), counted in fixed
/// one-minute windows: past the limit, the address is refused with 429 until its window
/// ends, without its key being looked at. At most [`FAILED_KEY_ADDRESSES`] addresses are
/// followed; when that many failed within a window, new ones are not counted until the
/// next sweep of ended windows (at most one sweep per window, so the work stays bounded).
#[derive(Debug)]
pub struct FailedKeys {
    limit: u32,
    addresses: Mutex<Failures>,
}

#[derive(Debug, Default)]
struct Failures {
    /// Network → when its window started (edge clock) and its failures in it.
    windows: HashMap<IpAddr, (Duration, u32)>,
    /// When ended windows were last swept out.
    swept: Duration,
}

impl FailedKeys {
    /// At most `limit` wrong keys per address and window.
    pub fn new(limit: u32) -> Self {
        Self {
            limit,
            addresses: Mutex::new(Failures::default()),
        }
    }

    /// Refuses `address` while it is over the limit at `now`.
    ///
    /// # Errors
    ///
    /// 429 `too_many_failed_keys` with `Retry-After` (the rest of the window).
    pub fn check(&self, address: IpAddr, now: Duration) -> Result<(), ApiError> {
        let failures = self.addresses.lock();
        match failures.windows.get(&network_of(address)) {
            Some((start, failures))
                if *failures >= self.limit && now < *start + FAILED_KEY_WINDOW =>
            {
                Err(ApiError::quota(
                    "too_many_failed_keys",
                    format!(
                        "more than {} wrong API keys from this address in a minute",
                        self.limit
                    ),
                    retry_after_secs((*start + FAILED_KEY_WINDOW).saturating_sub(now)),
                ))
            }
            _ => Ok(()),
        }
    }

    /// Counts a wrong key from `address` at `now`.
    pub fn failed(&self, address: IpAddr, now: Duration) {
        let network = network_of(address);
        let mut failures = self.addresses.lock();
        let Failures { windows, swept } = &mut *failures;
        if windows.len() >= FAILED_KEY_ADDRESSES && !windows.contains_key(&network) {
            if now >= *swept + FAILED_KEY_WINDOW {
                windows.retain(|_, (start, _)| now < *start + FAILED_KEY_WINDOW);
                *swept = now;
            }
            if windows.len() >= FAILED_KEY_ADDRESSES {
                return;
            }
        }
        let window = windows.entry(network).or_insert((now, 0));
        if now >= window.0 + FAILED_KEY_WINDOW {
            *window = (now, 0);
        }
        window.1 = window.1.saturating_add(1);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn each_tenant_has_its_own_read_bucket() {
        let reads = ReadRates::new(RateLimit {
            per_second: 10.0,
            burst: 3,
        });
        let at = Duration::from_secs(5);
        for _ in 0..3 {
            reads.check("acme", at).unwrap();
        }
        let err = reads.check("acme", at).unwrap_err();
        assert_eq!((err.status, err.kind), (429, "read_rate_limited"));
        assert_eq!(err.retry_after, Some(1));
        reads.check("beta", at).unwrap();
        reads
            .check("acme", at + Duration::from_millis(100))
            .unwrap();
    }

    #[test]
    fn address_buckets_stay_bounded_sweeping_those_full_again() {
        let reads = ReadRates::per(
            RateLimit {
                per_second: 1.0,
                burst: 2,
            },
            "address",
        );
        let start = Duration::from_secs(10);
        for caller in 0..READ_CALLERS {
            reads.check(&caller.to_string(), start).unwrap();
        }
        // Every bucket is in use: a new caller waits, and is told so.
        let err = reads.check("newcomer", start).unwrap_err();
        assert_eq!((err.status, err.kind), (429, "read_rate_limited"));
        assert!(err.message.contains("this address"), "{err}");
        // Once the buckets have filled again they are swept out, and the newcomer is served.
        let later = start + Duration::from_secs(5);
        reads.check("newcomer", later).unwrap();
        assert_eq!(reads.callers.lock().buckets.len(), 1);
    }

    #[test]
    fn an_address_with_too_many_wrong_keys_waits_for_its_window_to_end() {
        let keys = FailedKeys::new(3);
        let (one, two): (IpAddr, IpAddr) = ("192.0.2.1".parse().unwrap(), "::1".parse().unwrap());
        let start = Duration::from_secs(100);
        for _ in 0..3 {
            keys.check(one, start).unwrap();
            keys.failed(one, start);
        }
        let err = keys
            .check(one, start + Duration::from_secs(20))
            .unwrap_err();
        assert_eq!((err.status, err.kind), (429, "too_many_failed_keys"));
        assert_eq!(err.retry_after, Some(40));
        keys.check(two, start).unwrap();
        // Another address of the same IPv6 /64 is the same client.
        let (v6, neighbour): (IpAddr, IpAddr) = (
            "2001:db8:1:2::1".parse().unwrap(),
            "2001:db8:1:2:ffff::9".parse().unwrap(),
        );
        for _ in 0..3 {
            keys.failed(v6, start);
        }
        assert!(keys.check(neighbour, start).is_err());
        keys.check("2001:db8:1:3::1".parse().unwrap(), start)
            .unwrap();
        keys.check(one, start + FAILED_KEY_WINDOW).unwrap();
        keys.failed(one, start + FAILED_KEY_WINDOW);
        keys.check(one, start + FAILED_KEY_WINDOW).unwrap();
    }
}
