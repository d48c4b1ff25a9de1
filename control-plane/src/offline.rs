//! Checks of a catalog file that need no running Meridian: what an operator runs while
//! writing a configuration by hand.
//!
//! - [`validate_catalog`]: every problem in the file, each with its path and fix, and the
//!   warnings of a valid one.
//! - [`explain_route`]: where a request would go if every region were healthy and idle, and
//!   why each other region would not be used — to check residency, latency goals and prices
//!   before anything runs.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::{Context, bail};
use policy::{
    Catalog, CatalogSpec, GeoIp, LiveStatus, Location, RegionStatus, RouteRequest, SlotPath,
};

/// Reads and parses a catalog file (TOML, or JSON when the name ends in `.json`).
pub fn read_catalog(path: &Path) -> anyhow::Result<CatalogSpec> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("read catalog {}", path.display()))?;
    let spec = if path.extension().is_some_and(|e| e == "json") {
        CatalogSpec::from_json(&text).map_err(anyhow::Error::from)
    } else {
        CatalogSpec::from_toml(&text).map_err(anyhow::Error::from)
    };
    spec.with_context(|| format!("parse catalog {}", path.display()))
}

/// Validates the catalog at `path`: a summary with any warnings, or every problem found.
pub fn validate_catalog(path: &Path) -> anyhow::Result<String> {
    let catalog = read_catalog(path)?
        .validate()
        .with_context(|| format!("validate catalog {}", path.display()))?;
    let mut out = format!(
        "{}: valid — {} jurisdictions, {} regions, {} models, {} tenants",
        path.display(),
        catalog.jurisdictions().len(),
        catalog.regions().len(),
        catalog.models().len(),
        catalog.tenants().len()
    );
    for warning in catalog.warnings() {
        let _ = write!(out, "\nwarning: {warning}");
    }
    Ok(out)
}

/// Where the client of [`explain_route`] is.
#[derive(Debug, Clone)]
pub enum Client {
    /// Coordinates.
    At(Location),
    /// An address, resolved with a MaxMind database file.
    Address {
        /// The client's IP address.
        ip: std::net::IpAddr,
        /// A GeoIP2/GeoLite2 City database.
        database: std::path::PathBuf,
    },
}

/// Every region healthy, idle and reporting now: the best case the catalog allows.
fn all_idle(catalog: &Catalog, now_ms: u64) -> LiveStatus {
    let mut live = LiveStatus::new(catalog);
    for (i, region) in catalog.regions().iter().enumerate() {
        if let Some(st) = live.region_mut(i) {
            *st = RegionStatus {
                last_heartbeat_ms: Some(now_ms),
                healthy: true,
                free_reserved: region.reserved_slots(),
                on_demand_startable: region.on_demand_slots(),
                ..RegionStatus::default()
            };
        }
    }
    live
}

fn resolve(client: &Client) -> anyhow::Result<(Location, String)> {
    match client {
        Client::At(loc) => {
            if !loc.is_valid() {
                bail!(
                    "--from {},{} is not on the Earth: use LAT,LON in decimal degrees",
                    loc.lat,
                    loc.lon
                );
            }
            Ok((*loc, format!("{:.2},{:.2}", loc.lat, loc.lon)))
        }
        Client::Address { ip, database } => {
            let bytes = std::fs::read(database)
                .with_context(|| format!("read geo-IP database {}", database.display()))?;
            let geoip = GeoIp::from_bytes(bytes)
                .with_context(|| format!("open geo-IP database {}", database.display()))?;
            let place = geoip
                .lookup(*ip)
                .with_context(|| format!("look up {ip}"))?
                .with_context(|| format!("{ip} is not in {}", database.display()))?;
            let location = place
                .location
                .with_context(|| format!("{ip} has no coordinates in {}", database.display()))?;
            let name = [place.city, place.country]
                .into_iter()
                .flatten()
                .collect::<Vec<_>>()
                .join(", ");
            Ok((location, format!("{ip} ({name})")))
        }
    }
}

/// Explains where `model` for `tenant` from `client` would run, `units` units of work, if
/// every region were healthy and idle.
pub fn explain_route(
    path: &Path,
    tenant: &str,
    model: &str,
    client: &Client,
    units: f64,
) -> anyhow::Result<String> {
    let catalog = read_catalog(path)?
        .validate()
        .with_context(|| format!("validate catalog {}", path.display()))?;
    let (location, from) = resolve(client)?;
    let now_ms = 0;
    let live = all_idle(&catalog, now_ms);
    let request = RouteRequest {
        tenant,
        model,
        client: location,
        narrowing: None,
        units,
        now_ms,
    };
    let decision = catalog
        .route(&live, &request)
        .map_err(|e| anyhow::anyhow!("HTTP {}: {e}", e.http_status()))?;
    let mut out = format!(
        "{model} for tenant {tenant} from {from}, {units} unit(s), every region healthy and idle:"
    );
    if let Some(refusal) = decision.refusal() {
        let _ = write!(
            out,
            "\nrefused with HTTP {}: {}",
            refusal.http_status(),
            decision.explain(&catalog)
        );
        return Ok(out);
    }
    for (rank, c) in decision.candidates.iter().enumerate() {
        let region = &catalog.regions()[c.region];
        let path = match c.path {
            SlotPath::ReservedIdle => "idle reserved GPU",
            SlotPath::OnDemandWarm => "running on-demand GPU",
            SlotPath::OnDemandStart => "new on-demand GPU",
            SlotPath::Queued => "queue",
        };
        let _ = write!(
            out,
            "\n{:>2}. {} ({}) — {}, ~{:.0} ms (network {:.0} + wait {:.0} + service {:.0}), marginal cost {:.6} {}{}",
            rank + 1,
            region.id,
            region.jurisdiction,
            path,
            c.latency.total_ms(),
            c.latency.network_ms,
            c.latency.wait_ms,
            c.latency.service_ms,
            c.marginal_cost,
            catalog.currency(),
            if c.meets_goal {
                ""
            } else {
                ", misses the latency goal"
            }
        );
    }
    for (r, why) in &decision.excluded {
        let region = &catalog.regions()[*r];
        let _ = write!(
            out,
            "\n    not {} ({}): {why}",
            region.id, region.jurisdiction
        );
    }
    Ok(out)
}
