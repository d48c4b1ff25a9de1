//! Meridian's domain model and route decision.
//!
//! Pure and synchronous: no I/O, no clocks, no global state. The control plane validates
//! every write with it, the edge routes every request with it, and the simulator replays
//! global traffic through it, so what is simulated is what runs (docs/design.md §1–§3).
//!
//! - [`spec`]: the configuration as written (TOML) and carried (JSON);
//!   [`CatalogSpec::validate`] checks it, reporting every problem with its path and fix,
//!   and builds a [`Catalog`].
//! - [`decision`]: the route decision, [`Catalog::route`], over a [`LiveStatus`].
//! - [`key`]: API keys; [`quota`]: rate, concurrency and budget limits with injected time;
//!   [`geoip`]: client location from a MaxMind database.
//! - [`location`]: great-circle distance and network latency.

pub mod catalog;
pub mod decision;
pub mod error;
pub mod geoip;
pub mod key;
pub mod location;
pub mod quota;
pub mod sets;
pub mod spec;
mod validate;

pub use catalog::{
    Catalog, Model, ModelKind, Pool, PricingUnit, Quotas, Region, Residency, Tenant,
};
pub use contract::ids;
pub use contract::{ConfigProblem, ConfigProblems, ParseError};
pub use decision::{
    Candidate, CapacityClass, Exclusion, LatencyEstimate, LiveStatus, ModelLoad, Refusal,
    RegionStatus, ResolvedRequest, RouteDecision, RouteError, RouteRequest, SlotPath,
    rank_instances,
};
pub use error::ConfigWarning;
pub use geoip::{ClientPlace, DatabaseKind, GeoIp, GeoIpError};
pub use ids::{IdError, JurisdictionId, ModelId, PoolId, RegionId, RequestId, TenantId};
pub use key::{ApiKeyRecord, KeyError, KeyRing};
pub use location::{Location, NetworkModel};
pub use spec::{CatalogSpec, ModelSpec, PoolSpec, RegionSpec, ResidencySpec, TenantSpec};
pub use validate::MAX_REGIONS;
