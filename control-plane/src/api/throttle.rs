//! Throttling of wrong tokens: an address that presents a wrong token `failures` times within
//! `window` to one API is answered `429` with `Retry-After` for `backoff`, without its token
//! being checked; each further wrong token before the address is forgotten doubles the wait,
//! up to `max_backoff`. A right token clears only its own address's record for that API.
//!
//! Addresses are the TCP peer's (IPv6 ones by their /64, which one host usually holds
//! whole); behind a reverse proxy every client shares the proxy's address. At most
//! `max_addresses` records are kept: when full, the one whose last failure is oldest goes.
//! Requests without a token guess nothing and are not counted.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

/// The limits of the throttle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ThrottleSettings {
    /// Wrong tokens from one address within `window` before it is throttled.
    pub failures: u32,
    /// The window wrong tokens are counted in.
    pub window: Duration,
    /// The first wait once throttled; each further wrong token doubles it.
    pub backoff: Duration,
    /// The longest wait.
    pub max_backoff: Duration,
    /// Most addresses remembered at once.
    pub max_addresses: usize,
}

impl Default for ThrottleSettings {
    /// The configuration file's defaults: 10 wrong tokens a minute, then 30 s doubling up to
    /// 15 min, 10 000 addresses.
    fn default() -> Self {
        Self {
            failures: 10,
            window: Duration::from_secs(60),
            backoff: Duration::from_secs(30),
            max_backoff: Duration::from_secs(900),
            max_addresses: 10_000,
        }
    }
}

/// Which API a token was presented to; each is throttled apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Audience {
    /// `/admin/v1/…`.
    Admin,
    /// `/edge/v1/…`.
    Edge,
    /// `/agent/v1/…`.
    Agent,
}

impl Audience {
    /// Its name, as in metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Admin => "admin",
            Self::Edge => "edge",
            Self::Agent => "agent",
        }
    }
}

/// What is remembered of one address and API.
#[derive(Debug, Clone, Copy)]
struct Record {
    /// Wrong tokens in the current window.
    failures: u32,
    window_start: Instant,
    /// How many times it was throttled since it was last forgotten.
    strikes: u32,
    blocked_until: Option<Instant>,
    last_failure: Instant,
}

impl Record {
    /// Whether it may be forgotten at `now`: not throttled, and quiet for a window (after
    /// a throttle, for the longest wait), so that waiting out a wait does not earn a fresh
    /// set of tries.
    fn stale(&self, now: Instant, settings: &ThrottleSettings) -> bool {
        match self.blocked_until {
            Some(until) => now >= until + settings.max_backoff,
            None => now >= self.last_failure + settings.window,
        }
    }
}

type Key = (IpAddr, Audience);

/// The records of recent wrong tokens, per address and API.
#[derive(Debug)]
pub struct Throttle {
    settings: ThrottleSettings,
    records: Mutex<HashMap<Key, Record>>,
}

/// The address an address is throttled as: itself, or for IPv6 its /64.
fn client(address: IpAddr) -> IpAddr {
    match address {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let bits = u128::from(v6) & !((1_u128 << 64) - 1);
                IpAddr::V6(Ipv6Addr::from(bits))
            }
        },
        v4 @ IpAddr::V4(_) => v4,
    }
}

impl Throttle {
    /// A throttle with `settings` and nothing remembered.
    pub fn new(settings: ThrottleSettings) -> Self {
        Self {
            settings,
            records: Mutex::new(HashMap::new()),
        }
    }

    fn records(&self) -> std::sync::MutexGuard<'_, HashMap<Key, Record>> {
        self.records.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// How long `address` must still wait before its token for `api` is checked again;
    /// `None` when it may be checked now.
    pub fn wait(&self, address: IpAddr, api: Audience) -> Option<Duration> {
        let now = Instant::now();
        let records = self.records();
        let until = records.get(&(client(address), api))?.blocked_until?;
        (until > now).then(|| until - now)
    }

    /// Notes a right token: the address's record for `api` is cleared (no other).
    pub fn succeeded(&self, address: IpAddr, api: Audience) {
        self.records().remove(&(client(address), api));
    }

    /// Notes a wrong token; returns how long the address must now wait, if it is throttled.
    pub fn failed(&self, address: IpAddr, api: Audience) -> Option<Duration> {
        let now = Instant::now();
        let settings = self.settings;
        let key = (client(address), api);
        let mut records = self.records();
        if !records.contains_key(&key) && records.len() >= settings.max_addresses {
            records.retain(|_, record| !record.stale(now, &settings));
            if records.len() >= settings.max_addresses
                && let Some(oldest) = records
                    .iter()
                    .min_by_key(|(_, record)| record.last_failure)
                    .map(|(key, _)| *key)
            {
                records.remove(&oldest);
            }
        }
        let record = records.entry(key).or_insert(Record {
            failures: 0,
            window_start: now,
            strikes: 0,
            blocked_until: None,
            last_failure: now,
        });
        if record.stale(now, &settings) {
            *record = Record {
                failures: 0,
                window_start: now,
                strikes: 0,
                blocked_until: None,
                last_failure: now,
            };
        }
        record.last_failure = now;
        if record.strikes == 0 {
            if now >= record.window_start + settings.window {
                record.failures = 0;
                record.window_start = now;
            }
            record.failures = record.failures.saturating_add(1);
            if record.failures < settings.failures {
                return None;
            }
        }
        record.strikes = record.strikes.saturating_add(1);
        let doublings = (record.strikes - 1).min(31);
        let wait = settings
            .backoff
            .saturating_mul(1_u32 << doublings)
            .min(settings.max_backoff);
        record.blocked_until = Some(now + wait);
        Some(wait)
    }

    /// How many address records are kept.
    pub fn remembered(&self) -> usize {
        self.records().len()
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;

    const A: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1));
    const B: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 2));

    fn throttle() -> Throttle {
        Throttle::new(ThrottleSettings::default())
    }

    #[tokio::test(start_paused = true)]
    async fn ten_wrong_tokens_throttle_the_address_with_a_growing_wait() {
        let t = throttle();
        for _ in 0..9 {
            assert_eq!(t.failed(A, Audience::Admin), None);
            assert_eq!(t.wait(A, Audience::Admin), None);
        }
        assert_eq!(t.failed(A, Audience::Admin), Some(Duration::from_secs(30)));
        assert_eq!(t.wait(A, Audience::Admin), Some(Duration::from_secs(30)));
        // Other addresses and other APIs are not throttled.
        assert_eq!(t.wait(B, Audience::Admin), None);
        assert_eq!(t.wait(A, Audience::Edge), None);
        tokio::time::advance(Duration::from_secs(10)).await;
        assert_eq!(t.wait(A, Audience::Admin), Some(Duration::from_secs(20)));
        tokio::time::advance(Duration::from_secs(20)).await;
        assert_eq!(t.wait(A, Audience::Admin), None);
        // Once throttled, each further wrong token doubles the wait, up to the longest.
        let mut waits = Vec::new();
        for _ in 0..7 {
            waits.push(t.failed(A, Audience::Admin).map(|d| d.as_secs()));
            let wait = t.wait(A, Audience::Admin).unwrap_or_default();
            tokio::time::advance(wait).await;
        }
        assert_eq!(waits, [60, 120, 240, 480, 900, 900, 900].map(Some).to_vec());
    }

    #[tokio::test(start_paused = true)]
    async fn failures_outside_the_window_are_not_added_up() {
        let t = throttle();
        for _ in 0..9 {
            assert_eq!(t.failed(A, Audience::Agent), None);
        }
        tokio::time::advance(Duration::from_secs(61)).await;
        for _ in 0..9 {
            assert_eq!(t.failed(A, Audience::Agent), None);
        }
        assert!(t.failed(A, Audience::Agent).is_some());
    }

    #[tokio::test(start_paused = true)]
    async fn a_right_token_clears_only_its_own_address() {
        let t = throttle();
        for _ in 0..10 {
            t.failed(A, Audience::Admin);
        }
        for _ in 0..9 {
            t.failed(B, Audience::Admin);
        }
        // A right token from B clears B's count, not A's throttle.
        t.succeeded(B, Audience::Admin);
        assert!(t.wait(A, Audience::Admin).is_some());
        for _ in 0..9 {
            assert_eq!(t.failed(B, Audience::Admin), None);
        }
        // Waiting out a throttle does not earn fresh tries; a quiet spell as long as the
        // longest wait does.
        tokio::time::advance(Duration::from_secs(30)).await;
        assert_eq!(t.failed(A, Audience::Admin), Some(Duration::from_secs(60)));
        tokio::time::advance(Duration::from_secs(60 + 900)).await;
        assert_eq!(t.failed(A, Audience::Admin), None);
    }

    #[tokio::test(start_paused = true)]
    async fn memory_is_bounded() {
        let t = Throttle::new(ThrottleSettings {
            max_addresses: 100,
            ..ThrottleSettings::default()
        });
        for i in 0..1000_u32 {
            t.failed(IpAddr::V4(Ipv4Addr::from(i)), Audience::Admin);
            tokio::time::advance(Duration::from_millis(1)).await;
        }
        assert_eq!(t.remembered(), 100);
        // The most recent stay remembered.
        for _ in 0..9 {
            t.failed(IpAddr::V4(Ipv4Addr::from(999)), Audience::Admin);
        }
        assert!(
            t.wait(IpAddr::V4(Ipv4Addr::from(999)), Audience::Admin)
                .is_some()
        );
    }

    #[test]
    fn ipv6_addresses_count_by_their_64_prefix() {
        let a: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(client(a), client(b));
        assert_ne!(client(a), client(c));
        let mapped: IpAddr = "::ffff:192.0.2.1".parse().unwrap();
        assert_eq!(client(mapped), A);
    }
}
