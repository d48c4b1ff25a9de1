//! Meridian's domain model and route decision.
//!
//! Pure and synchronous: no I/O, no clocks, no global state. The control plane validates
//! every write with it, the edge routes every request with it, and the simulator replays
//! global traffic through it, so what is simulated is what runs (DESIGN.md §1–§3).

pub mod location;
pub mod quota;

pub use location::{Location, NetworkModel};
