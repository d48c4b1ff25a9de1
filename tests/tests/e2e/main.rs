//! End-to-end scenarios: the whole stack on loopback (see the `tests` crate's harness), the
//! control plane on a real etcd where residency and failover are at stake.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod billing;
mod failover;
mod lifecycle;
mod limits;
mod placement;
mod residency;
mod static_stability;

use policy::Location;
use tests::RegionDef;

/// Client addresses the MaxMind test database knows.
pub const LONDON_IP: &str = "81.2.69.142";
pub const SEATTLE_IP: &str = "216.160.83.56";

pub const NEW_YORK: Location = Location::new(40.71, -74.01);

pub const DUBLIN: RegionDef = RegionDef::reserved("eu-west", "eu", 53.35, -6.26);
pub const FRANKFURT: RegionDef = RegionDef::reserved("eu-central", "eu", 50.11, 8.68);
pub const ASHBURN: RegionDef = RegionDef::reserved("us-east", "us", 39.04, -77.49);

/// `acme` may run anywhere, `euro` only in the EU, `nippon` only in Japan (where no region
/// is), `slow` anywhere but at one request per five seconds.
pub const TENANTS: &str = r#"
[[tenants]]
id = "acme"
residency = "any"
[[tenants]]
id = "euro"
residency = { jurisdictions = ["eu"] }
[[tenants]]
id = "nippon"
residency = { jurisdictions = ["jp"] }
[[tenants]]
id = "slow"
residency = "any"
quotas = { requests_per_second = 0.2, burst = 1 }
"#;
