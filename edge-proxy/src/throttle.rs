//! Throttles that are not a tenant's quota: calls about existing requests per tenant
//! ([`ReadRates`]), and wrong API keys per client address ([`FailedKeys`]).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use policy::quota::{RateDecision, RateLimit, RateLimiter, retry_after_secs};

use crate::error::ApiError;

/// Each tenant's token bucket for calls about existing requests (status, SSE streams,
/// files, cancel), separate from its submission rate (docs/design.md §4).
#[derive(Debug)]
pub struct ReadRates {
    limit: RateLimit,
    tenants: Mutex<HashMap<String, Arc<RateLimiter>>>,
}

impl ReadRates {
    /// Buckets of `limit` (checked by the configuration).
    pub fn new(limit: RateLimit) -> Self {
        Self {
            limit,
            tenants: Mutex::new(HashMap::new()),
        }
    }

    /// Takes one call of `tenant` (an authenticated tenant, so the map holds at most the
    /// catalog's tenants) at `now`, the edge's monotonic clock.
    ///
    /// # Errors
    ///
    /// 429 `read_rate_limited` with `Retry-After`.
    pub fn check(&self, tenant: &str, now: Duration) -> Result<(), ApiError> {
        let limiter = {
            let mut tenants = self.tenants.lock();
            match tenants.get(tenant) {
                Some(limiter) => Arc::clone(limiter),
                None => {
                    let Ok(limiter) = RateLimiter::new(self.limit) else {
                        // The configuration checked that the limit builds.
                        return Ok(());
                    };
                    let limiter = Arc::new(limiter);
                    tenants.insert(tenant.to_owned(), Arc::clone(&limiter));
                    limiter
                }
            }
        };
        match limiter.check(now) {
            RateDecision::Allowed { .. } => Ok(()),
            RateDecision::Limited { retry_after } => Err(ApiError::quota(
                "read_rate_limited",
                format!(
                    "too many status, stream, file or cancel calls for this tenant (at most \
                     {} per second, {} at once)",
                    self.limit.per_second, self.limit.burst
                ),
                retry_after_secs(retry_after),
            )),
        }
    }
}

/// How long one window of wrong keys lasts.
pub const FAILED_KEY_WINDOW: Duration = Duration::from_secs(60);
/// Most client addresses whose wrong keys are counted at once; when more fail within one
/// window, the oldest windows are dropped first.
const FAILED_KEY_ADDRESSES: usize = 100_000;

/// Wrong API keys per client address, counted in fixed one-minute windows: past the limit,
/// the address is refused with 429 until its window ends, without its key being looked at.
#[derive(Debug)]
pub struct FailedKeys {
    limit: u32,
    /// Address → when its window started (edge clock) and its failures in it.
    addresses: Mutex<HashMap<IpAddr, (Duration, u32)>>,
}

impl FailedKeys {
    /// At most `limit` wrong keys per address and window.
    pub fn new(limit: u32) -> Self {
        Self {
            limit,
            addresses: Mutex::new(HashMap::new()),
        }
    }

    /// Refuses `address` while it is over the limit at `now`.
    ///
    /// # Errors
    ///
    /// 429 `too_many_failed_keys` with `Retry-After` (the rest of the window).
    pub fn check(&self, address: IpAddr, now: Duration) -> Result<(), ApiError> {
        let addresses = self.addresses.lock();
        match addresses.get(&address) {
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
        let mut addresses = self.addresses.lock();
        if addresses.len() >= FAILED_KEY_ADDRESSES && !addresses.contains_key(&address) {
            addresses.retain(|_, (start, _)| now < *start + FAILED_KEY_WINDOW);
            if addresses.len() >= FAILED_KEY_ADDRESSES
                && let Some(oldest) = addresses
                    .iter()
                    .min_by_key(|(_, (start, _))| *start)
                    .map(|(a, _)| *a)
            {
                addresses.remove(&oldest);
            }
        }
        let window = addresses.entry(address).or_insert((now, 0));
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
        keys.check(one, start + FAILED_KEY_WINDOW).unwrap();
        keys.failed(one, start + FAILED_KEY_WINDOW);
        keys.check(one, start + FAILED_KEY_WINDOW).unwrap();
    }
}
