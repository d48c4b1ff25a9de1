//! Network round trips from recently seen client locations to each region, kept in a reused
//! [`RouteDecision`](super::RouteDecision): a client location seen again (edges resolve
//! clients to cities, the simulator draws them from cities) costs no trigonometry.

use crate::catalog::Catalog;
use crate::location::{Location, UnitVector};

/// Sets of remembered client locations, chosen by a hash of the coordinates…
const SETS: usize = 64;
/// …and client locations per set; the one used less recently is replaced.
const WAYS: usize = 2;
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
    /// Per set, the way used last.
    recent: Vec<u8>,
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
            self.recent.clear();
            self.recent.resize(SETS, 0);
            self.rtt_ms.clear();
            self.rtt_ms.resize(SLOTS * n, f64::NAN);
        }
        let key = (client.lat.to_bits(), client.lon.to_bits());
        let set = set_of(key);
        let hit = (0..WAYS).find(|w| self.clients[set * WAYS + w] == Some(key));
        let way = hit.unwrap_or((usize::from(self.recent[set]) + 1) % WAYS);
        self.recent[set] = way as u8;
        let slot = set * WAYS + way;
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
