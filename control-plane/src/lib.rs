//! Meridian's control plane (docs/design.md §5).
//!
//! It owns Meridian's state: tenants, API keys, regions, models and settings, stored in
//! etcd (production) or an embedded raft store (one machine, the default). It serves the
//! admin API, registers region agents and takes their heartbeats, and gives edges a
//! versioned snapshot of everything they need to route. Every write it accepts is validated
//! with the `policy` crate.
//!
//! - [`store`]: the key-value layer with etcd's semantics (etcd and embedded backends).
//! - [`records`]: where each record lives in the store; [`registry`]: the catalog read
//!   whole and changed one validated record at a time.
//! - [`api`]: the HTTP/JSON API (admin, edge, agent), with [`changes`] waking long polls;
//!   [`config`] and [`server::run`]: the
//!   `control-plane serve` command; [`InProcess`]: one started in-process on a free
//!   loopback port.
//! - [`reservations`]: GPU reservations and the clock that applies them to the catalog.
//! - [`instances`]: a region's instances remembered beyond their leases (for edges, for
//!   drain orders), and whether their reported shares add up to the region's pools.
//! - [`usage`]: usage totals per day and month, fed by agents' numbered batches and kept
//!   exact under at-least-once delivery; [`history`]: the store's old revisions compacted
//!   as it goes, so its size follows its live keys.
//! - [`metrics`]: the Prometheus metrics served at `/metrics`.
//! - [`offline`]: catalog checks that need no running control plane.

pub mod api;
pub mod changes;
pub mod config;
pub mod history;
pub mod instances;
pub mod metrics;
pub mod offline;
pub mod records;
pub mod registry;
pub mod reservations;
pub mod server;
pub mod store;
pub mod usage;

pub use server::{InProcess, run};
