//! Meridian's control plane (DESIGN.md §5).
//!
//! It owns Meridian's state: tenants, API keys, regions, models, reservations and policies,
//! stored in etcd (production) or an embedded raft store (one machine, the default). It serves
//! the admin API, registers region agents and takes their heartbeats and usage, and gives
//! edges a versioned snapshot of everything they need to route.
//!
//! The [`store`] layer is in place; the APIs and the `control-plane` binary land here
//! next. Every write it accepts will be validated with the `policy` crate.

pub mod store;
