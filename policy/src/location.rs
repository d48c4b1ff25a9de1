//! Points on the Earth and the network latency between them.
//!
//! The route decision estimates network round-trip time from great-circle distance: light in
//! fibre covers about 200 km per millisecond, and real routes are longer than the great
//! circle by a route-inflation factor (about 1.5). See docs/design.md §3.

use serde::{Deserialize, Serialize};

/// Mean Earth radius in kilometres (IUGG).
pub const EARTH_RADIUS_KM: f64 = 6371.0088;

/// A point on the Earth in decimal degrees (WGS 84).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Location {
    /// Latitude in degrees, −90 (south) to 90 (north).
    pub lat: f64,
    /// Longitude in degrees, −180 (west) to 180 (east).
    pub lon: f64,
}

impl Location {
    /// A location from latitude and longitude in degrees.
    pub const fn new(lat: f64, lon: f64) -> Self {
        Self { lat, lon }
    }

    /// Whether both coordinates are finite and in range.
    pub fn is_valid(&self) -> bool {
        self.lat.is_finite()
            && self.lon.is_finite()
            && (-90.0..=90.0).contains(&self.lat)
            && (-180.0..=180.0).contains(&self.lon)
    }

    /// Great-circle distance to `other` in kilometres (haversine).
    pub fn distance_km(&self, other: &Location) -> f64 {
        UnitVector::from(*self).distance_km(&UnitVector::from(*other))
    }
}

/// A location as a point on the unit sphere: computing distances from these needs one
/// `asin` and no other trigonometry, which keeps the route decision fast.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct UnitVector {
    x: f64,
    y: f64,
    z: f64,
}

impl From<Location> for UnitVector {
    fn from(loc: Location) -> Self {
        let (lat, lon) = (loc.lat.to_radians(), loc.lon.to_radians());
        Self {
            x: lat.cos() * lon.cos(),
            y: lat.cos() * lon.sin(),
            z: lat.sin(),
        }
    }
}

impl UnitVector {
    /// Great-circle distance in kilometres: the chord length `c` between the two points
    /// gives the central angle as `2·asin(c/2)`, which is exact and well conditioned for
    /// small distances.
    pub fn distance_km(&self, other: &UnitVector) -> f64 {
        let (dx, dy, dz) = (self.x - other.x, self.y - other.y, self.z - other.z);
        let chord = (dx * dx + dy * dy + dz * dz).sqrt();
        2.0 * EARTH_RADIUS_KM * (chord / 2.0).min(1.0).asin()
    }
}

/// How network round-trip time is estimated from distance.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkModel {
    /// Kilometres light travels in fibre per millisecond. Default 200.
    #[serde(default = "NetworkModel::default_fibre_km_per_ms")]
    pub fibre_km_per_ms: f64,
    /// How much longer real routes are than the great circle. Default 1.5.
    #[serde(default = "NetworkModel::default_route_inflation")]
    pub route_inflation: f64,
}

impl Default for NetworkModel {
    fn default() -> Self {
        Self {
            fibre_km_per_ms: Self::default_fibre_km_per_ms(),
            route_inflation: Self::default_route_inflation(),
        }
    }
}

impl NetworkModel {
    fn default_fibre_km_per_ms() -> f64 {
        200.0
    }

    fn default_route_inflation() -> f64 {
        1.5
    }

    /// Estimated round-trip time in milliseconds over `distance_km` of great circle.
    pub fn rtt_ms(&self, distance_km: f64) -> f64 {
        distance_km * self.rtt_ms_per_km()
    }

    /// Round-trip milliseconds per kilometre of great circle: there and back, inflated.
    pub fn rtt_ms_per_km(&self) -> f64 {
        2.0 * self.route_inflation / self.fibre_km_per_ms
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LONDON: Location = Location::new(51.5074, -0.1278);
    const NEW_YORK: Location = Location::new(40.7128, -74.0060);
    const SYDNEY: Location = Location::new(-33.8688, 151.2093);

    #[test]
    fn known_distances() {
        // Published great-circle distances: London–New York ≈ 5570 km, London–Sydney ≈ 16990 km.
        assert!((LONDON.distance_km(&NEW_YORK) - 5570.0).abs() < 15.0);
        assert!((LONDON.distance_km(&SYDNEY) - 16990.0).abs() < 30.0);
        assert_eq!(LONDON.distance_km(&LONDON), 0.0);
    }

    #[test]
    fn antipodes_are_half_the_circumference() {
        let a = Location::new(0.0, 0.0);
        let b = Location::new(0.0, 180.0);
        let half = std::f64::consts::PI * EARTH_RADIUS_KM;
        assert!((a.distance_km(&b) - half).abs() < 1e-6);
    }

    #[test]
    fn rtt_follows_the_design_rule() {
        // 1000 km × 1.5 inflation × 2 ways / 200 km/ms = 15 ms.
        assert!((NetworkModel::default().rtt_ms(1000.0) - 15.0).abs() < 1e-9);
    }

    #[test]
    fn validity() {
        assert!(LONDON.is_valid());
        assert!(!Location::new(91.0, 0.0).is_valid());
        assert!(!Location::new(0.0, f64::NAN).is_valid());
    }
}
