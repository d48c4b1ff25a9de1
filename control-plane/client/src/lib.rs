//! The typed client that edges and region agents use to talk to the control plane.
//!
//! Edges and agents never talk to the store directly; they call the control plane's HTTP
//! API through [`ControlPlane`]. [`wire`] holds the JSON bodies of that API, shared with
//! the server; [`Snapshot::live_status`](wire::Snapshot::live_status) turns a snapshot's
//! region reports into what the route decision reads.

mod client;
mod live;
pub mod wire;

pub use client::{ClientError, ControlPlane, RecordQuery, Result, Revisioned, UsageQuery};
pub use live::region_of;
