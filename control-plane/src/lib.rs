//! Meridian's control plane (DESIGN.md §5).
//!
//! It owns Meridian's state: tenants, API keys, regions, models, reservations and policies,
//! stored in etcd (production) or an embedded raft store (one machine, the default). It serves
//! the admin API, registers region agents and takes their heartbeats and usage, and gives
//! edges a versioned snapshot of everything they need to route. Every write it accepts is
//! validated with the `policy` crate.
//!
//! Today the crate holds the [`store`] layer (etcd and the embedded raft store, one set of
//! semantics) and the offline catalog checks behind the `control-plane` binary
//! ([`offline`]); the APIs and `control-plane serve` land here next.

pub mod offline;
pub mod store;
