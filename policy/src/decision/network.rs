//! Network round trips from recently seen client locations to each region, kept in a reused
//! [`RouteDecision`](super::RouteDecision): a client location seen again (edges resolve
//! clients to cities, the simulator draws them from cities) costs no trigonometry.

use crate::catalog::Catalog;
use crate::location::{Location, UnitVector};

/// Sets of remembered client locations, chosen by a hash of the coordinates…
const SETS: usize = 64;
/// …and client locations per set; the one used least recently is replaced. Four ways keep
/// a few dozen cities (an edge's or the simulator's clients) from evicting each other.
const WAYS: usize = 4;
const SLOTS: usize = SETS * WAYS;

/// Per slot: the client it holds and its round trip to each region, NaN until computed.
#[derive(Debug, Clone, Default)]
pub(super) struct NetworkCache {
    /// Off for one-off decisions, which would only pay for filling it.
    enabled: bool,
    /// The catalog the values belong to (`0`: none yet).
    generation: u64,
    regions: usize,
    clients: Vec<Option<(u64, u64)>>,
    /// Per slot, when it was last used (a count of lookups).
    used: Vec<u64>,
    lookups: u64,
    rtt_ms: Vec<f64>,
}

/// The round trips of one client: what [`NetworkCache::client`] lends the decision.
pub(super) struct ClientRtts<'a> {
    client: Location,
    point: Option<UnitVector>,
    rtt_ms_per_km: f64,
    rtt_ms: &'a mut [f64],
}

impl NetworkCache {
    pub(super) fn enabled() -> Self {
        Self {
            enabled: true,
            ..Self::default()
        }
    }

    /// The round trips of `client` to `catalog`'s regions: remembered ones where this client
    /// was seen with this catalog, computed and remembered on first use otherwise.
    pub(super) fn client<'a>(
        &'a mut self,
        catalog: &Catalog,
        client: Location,
        scratch: &'a mut Vec<f64>,
    ) -> ClientRtts<'a> {
        let n = catalog.regions.len();
        let rtt_ms_per_km = catalog.routing.network.rtt_ms_per_km();
        if !self.enabled {
            scratch.clear();
            scratch.resize(n, f64::NAN);
            return ClientRtts {
                client,
                point: None,
                rtt_ms_per_km,
                rtt_ms: scratch,
            };
        }
        if self.generation != catalog.generation || self.regions != n {
            self.generation = catalog.generation;
            self.regions = n;
            self.clients.clear();
            self.clients.resize(SLOTS, None);
            self.used.clear();
            self.used.resize(SLOTS, 0);
            self.lookups = 0;
            self.rtt_ms.clear();
            self.rtt_ms.resize(SLOTS * n, f64::NAN);
        }
        let key = (client.lat.to_bits(), client.lon.to_bits());
        let set = set_of(key);
        let ways = set * WAYS..(set + 1) * WAYS;
        let hit = ways.clone().find(|&s| self.clients[s] == Some(key));
        let slot = hit.unwrap_or_else(|| {
            // The least recently used way (an empty one has never been used).
            ways.min_by_key(|&s| self.used[s]).unwrap_or(set * WAYS)
        });
        self.lookups += 1;
        self.used[slot] = self.lookups;
        let row = &mut self.rtt_ms[slot * n..(slot + 1) * n];
        if hit.is_none() {
            self.clients[slot] = Some(key);
            row.fill(f64::NAN);
        }
        ClientRtts {
            client,
            point: None,
            rtt_ms_per_km,
            rtt_ms: row,
        }
    }
}

impl ClientRtts<'_> {
    /// Round trip to region `r` at `point`, in ms.
    pub(super) fn rtt_ms(&mut self, r: usize, point: &UnitVector) -> f64 {
        let known = self.rtt_ms[r];
        if !known.is_nan() {
            return known;
        }
        self.compute(r, point)
    }

    /// Works out a round trip not remembered yet. Kept out of line: inlined, the compiler
    /// hoists the client's trigonometry out of the loop over regions and pays for it on
    /// every decision, remembered or not.
    #[cold]
    #[inline(never)]
    fn compute(&mut self, r: usize, point: &UnitVector) -> f64 {
        let client = *self
            .point
            .get_or_insert_with(|| UnitVector::from(self.client));
        let rtt = client.distance_km(point) * self.rtt_ms_per_km;
        self.rtt_ms[r] = rtt;
        rtt
    }
}

/// The set for a client's coordinates (a multiplicative hash of their bits).
fn set_of((lat, lon): (u64, u64)) -> usize {
    let mixed = (lat ^ lon.rotate_left(29)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    (mixed >> 58) as usize % SETS
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::CatalogSpec;

    fn catalog() -> Catalog {
        let spec = CatalogSpec::from_toml(
            r#"
            [[jurisdictions]]
            id = "eu"
            name = "European Union"
            [[regions]]
            id = "eu-west"
            jurisdiction = "eu"
            location = { lat = 53.35, lon = -6.26 }
            endpoint = "http://127.0.0.1:9101"
            pools = [{ id = "h100", gpu = "H100", reserved = 4, reserved_price_per_hour = 2.0 }]
            "#,
        )
        .expect("parse");
        spec.validate().expect("valid")
    }

    /// Client locations whose coordinates fall in the same set.
    fn same_set(n: usize) -> Vec<Location> {
        let first = set_of((0f64.to_bits(), 0f64.to_bits()));
        (0..100_000)
            .map(|i| Location::new(f64::from(i % 160) - 80.0, f64::from(i / 160) * 0.25 - 180.0))
            .filter(|l| set_of((l.lat.to_bits(), l.lon.to_bits())) == first)
            .take(n)
            .collect()
    }

    /// Looks `client` up and says whether its round trip was remembered.
    fn remembered(cache: &mut NetworkCache, catalog: &Catalog, client: Location) -> bool {
        let mut scratch = Vec::new();
        let mut rtts = cache.client(catalog, client, &mut scratch);
        let known = !rtts.rtt_ms[0].is_nan();
        rtts.rtt_ms(0, &catalog.regions()[0].point);
        known
    }

    #[test]
    fn a_set_remembers_as_many_clients_as_it_has_ways_and_evicts_the_least_recent() {
        let catalog = catalog();
        let clients = same_set(WAYS + 1);
        assert_eq!(clients.len(), WAYS + 1);
        let mut cache = NetworkCache::enabled();
        for &c in &clients[..WAYS] {
            assert!(!remembered(&mut cache, &catalog, c));
        }
        for _ in 0..3 {
            for &c in clients[..WAYS].iter().rev() {
                assert!(remembered(&mut cache, &catalog, c));
            }
        }
        // The last loop used clients[0] last and clients[WAYS - 1] first: that one goes.
        assert!(!remembered(&mut cache, &catalog, clients[WAYS]));
        assert!(!remembered(&mut cache, &catalog, clients[WAYS - 1]));
        assert!(remembered(&mut cache, &catalog, clients[WAYS]));
        assert!(remembered(&mut cache, &catalog, clients[0]));
    }
}
