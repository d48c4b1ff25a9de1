//! `Idempotency-Key` at the edge (docs/design.md §4, §7): the key's shape, and which region
//! a tenant's key was sent to.
//!
//! A submission with a key may be sent again safely: the agent that took the key answers
//! with the same job. That holds only inside one region, so a submission with a key goes
//! where the same key went before. The edge remembers, for
//! [`IDEMPOTENCY_WINDOW_SECS`](contract::headers::IDEMPOTENCY_WINDOW_SECS), the region each
//! (tenant, key) was last sent to — at most a configured number of entries, the oldest
//! forgotten first — and sends a client's retry there, and only there. Another edge does
//! not know this edge's keys; the route decision of both sends a client to the same region
//! in the common case, and the key still protects the retry within a region.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use contract::headers::{IDEMPOTENCY_KEY, IDEMPOTENCY_KEY_MAX_LEN};
use http::HeaderMap;
use parking_lot::Mutex;

use crate::error::ApiError;

/// The request's idempotency key, if it has one.
///
/// # Errors
///
/// 400 when the header is repeated, empty, longer than
/// [`IDEMPOTENCY_KEY_MAX_LEN`] or not visible ASCII.
pub fn key_of(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let mut values = headers.get_all(IDEMPOTENCY_KEY).iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    let bad = || {
        ApiError::bad_request(format!(
            "{IDEMPOTENCY_KEY} must be one header of 1 to {IDEMPOTENCY_KEY_MAX_LEN} visible \
             ASCII characters (e.g. a UUID)"
        ))
    };
    if values.next().is_some() {
        return Err(bad());
    }
    let bytes = value.as_bytes();
    if bytes.is_empty()
        || bytes.len() > IDEMPOTENCY_KEY_MAX_LEN
        || !bytes.iter().all(u8::is_ascii_graphic)
    {
        return Err(bad());
    }
    Ok(value.to_str().ok().map(str::to_owned))
}

type TenantKey = (String, String);

/// Where each (tenant, key) was last sent; see the [module docs](self).
#[derive(Debug)]
pub struct KeyRegions {
    capacity: usize,
    window: Duration,
    inner: Mutex<Entries>,
}

#[derive(Debug, Default)]
struct Entries {
    /// (tenant, key) → region id and when it was sent there.
    region: HashMap<TenantKey, (String, Instant)>,
    /// Every remembering, oldest first (some superseded by a later one).
    order: VecDeque<(TenantKey, Instant)>,
}

impl KeyRegions {
    /// Remembers at most `capacity` keys, each for `window`.
    pub fn new(capacity: usize, window: Duration) -> Self {
        Self {
            capacity: capacity.max(1),
            window,
            inner: Mutex::new(Entries::default()),
        }
    }

    /// The region `tenant`'s `key` was sent to, if within the window at `now`.
    pub fn region(&self, tenant: &str, key: &str, now: Instant) -> Option<String> {
        let entries = self.inner.lock();
        let (region, at) = entries.region.get(&(tenant.to_owned(), key.to_owned()))?;
        (now.saturating_duration_since(*at) < self.window).then(|| region.clone())
    }

    /// Remembers that `tenant`'s `key` was sent to `region` at `now`.
    pub fn remember(&self, tenant: &str, key: &str, region: &str, now: Instant) {
        let entry = (tenant.to_owned(), key.to_owned());
        let mut entries = self.inner.lock();
        entries
            .region
            .insert(entry.clone(), (region.to_owned(), now));
        entries.order.push_back((entry, now));
        while let Some((oldest, at)) = entries.order.front().cloned() {
            let expired = now.saturating_duration_since(at) >= self.window;
            if !expired && entries.order.len() <= self.capacity {
                break;
            }
            entries.order.pop_front();
            if entries
                .region
                .get(&oldest)
                .is_some_and(|(_, last)| *last == at)
            {
                entries.region.remove(&oldest);
            }
        }
    }

    /// Forgets `tenant`'s `key` if it was last sent to `region` (which refused it, so it
    /// holds no job for it).
    pub fn forget(&self, tenant: &str, key: &str, region: &str) {
        let entry = (tenant.to_owned(), key.to_owned());
        let mut entries = self.inner.lock();
        if entries.region.get(&entry).is_some_and(|(r, _)| r == region) {
            entries.region.remove(&entry);
        }
    }

    /// Keys remembered now.
    pub fn len(&self) -> usize {
        self.inner.lock().region.len()
    }

    /// Whether no key is remembered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use http::HeaderValue;

    use super::*;

    fn with(values: &[&[u8]]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for v in values {
            headers.append(IDEMPOTENCY_KEY, HeaderValue::from_bytes(v).unwrap());
        }
        headers
    }

    #[test]
    fn keys_are_one_header_of_visible_ascii_up_to_the_limit() {
        assert_eq!(key_of(&HeaderMap::new()), Ok(None));
        assert_eq!(
            key_of(&with(&[b"order-42"])),
            Ok(Some("order-42".to_owned()))
        );
        let longest = "k".repeat(IDEMPOTENCY_KEY_MAX_LEN);
        assert!(key_of(&with(&[longest.as_bytes()])).unwrap().is_some());
        let too_long = "k".repeat(IDEMPOTENCY_KEY_MAX_LEN + 1);
        for bad in [
            with(&[b""]),
            with(&[b"has space"]),
            with(&[b"caf\xc3\xa9"]),
            with(&[too_long.as_bytes()]),
            with(&[b"a", b"b"]),
        ] {
            let err = key_of(&bad).unwrap_err();
            assert_eq!((err.status, err.kind), (400, "bad_request"), "{bad:?}");
        }
    }

    #[test]
    fn a_key_names_its_region_for_the_window_and_the_oldest_go_first() {
        let start = Instant::now();
        let keys = KeyRegions::new(2, Duration::from_secs(100));
        keys.remember("acme", "k1", "eu-west", start);
        assert_eq!(keys.region("acme", "k1", start), Some("eu-west".into()));
        assert_eq!(
            keys.region("beta", "k1", start),
            None,
            "keys are per tenant"
        );
        assert_eq!(
            keys.region("acme", "k1", start + Duration::from_secs(100)),
            None
        );
        // Sent again elsewhere (the first region refused it): the last region counts.
        keys.remember("acme", "k1", "eu-central", start + Duration::from_secs(1));
        assert_eq!(keys.region("acme", "k1", start), Some("eu-central".into()));
        keys.remember("acme", "k2", "eu-west", start + Duration::from_secs(2));
        keys.remember("acme", "k3", "eu-west", start + Duration::from_secs(3));
        assert!(keys.len() <= 2, "{}", keys.len());
        assert_eq!(keys.region("acme", "k3", start), Some("eu-west".into()));
        // Expired entries go when new ones come.
        keys.remember("acme", "k4", "eu-west", start + Duration::from_secs(200));
        assert_eq!(keys.len(), 1);
        keys.forget("acme", "k4", "eu-central");
        assert_eq!(keys.len(), 1, "only the region that holds it forgets it");
        keys.forget("acme", "k4", "eu-west");
        assert!(keys.is_empty());
    }
}
