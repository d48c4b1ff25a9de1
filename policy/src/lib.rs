//! Meridian's domain model and route decision.
//!
//! Pure and synchronous: no I/O, no clocks, no global state. The control plane validates
//! every write with it, the edge routes every request with it, and the simulator replays
//! global traffic through it, so what is simulated is what runs (DESIGN.md §1–§3).

pub mod geoip;
pub mod location;
pub mod quota;

pub use geoip::{ClientPlace, DatabaseKind, GeoIp, GeoIpError};
pub use location::{Location, NetworkModel};
pub mod catalog;
pub mod decision;
pub mod error;
pub mod ids;
pub mod key;
pub mod sets;
pub mod spec;
mod validate;

pub use catalog::{Catalog, Model, ModelKind, Pool, PricingUnit, Region, Residency, Tenant};
pub use decision::{
    Candidate, CapacityClass, Exclusion, LiveStatus, ModelLoad, Refusal, RegionStatus,
    RouteDecision, RouteError, RouteRequest, SlotPath,
};
pub use error::{ConfigError, ConfigErrors, ConfigWarning};
pub use ids::{IdError, JurisdictionId, ModelId, PoolId, RegionId, TenantId};
pub use spec::{CatalogSpec, ModelSpec, PoolSpec, RegionSpec, ResidencySpec, TenantSpec};
