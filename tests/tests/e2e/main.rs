//! End-to-end scenarios: the whole stack on loopback (see the `tests` crate's harness), the
//! control plane on a real etcd where residency and failover are at stake.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod billing;
mod chaos;
mod dev_script;
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

/// The test kit's tenants: `acme` anywhere, `euro` only in the EU, `brit` only in the UK,
/// `nippon` only in Japan (where no region is), `slow` at one request per five seconds.
pub const TENANTS: &str = testkit::catalog::TENANTS;
