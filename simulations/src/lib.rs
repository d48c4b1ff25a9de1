//! A deterministic discrete-event simulator of global traffic over Meridian's regions.
//!
//! It runs the `policy` crate's route decision unchanged (`Catalog::route_resolved_into` over a
//! `LiveStatus` built from simulated heartbeats and the edge's own in-flight counts), and
//! places each job on a host of the chosen region as the edge does (`policy::rank_instances`
//! over the hosts' reports, the region being their sum by
//! `control_plane_client::region_of`), so what it shows is what the edge does, at a
//! scale no test machine can run:
//!
//! - [`scenario`]: a catalog, demand and events read from TOML and checked;
//! - [`demand`]: arrivals from cities with a daily cycle in their time zones;
//! - [`region`]: how a region's GPUs are laid out on its hosts; [`host`]: one host's
//!   reserved and on-demand GPUs and its queue, and what its agent reports;
//! - [`strategy`]: Meridian's decision and the baselines (nearest, round robin, least
//!   loaded, cheapest);
//! - [`engine`]: the event loop on a virtual clock, with an invariant-checking mode;
//! - [`metrics`]: cost, utilisation, latency and the fate of every request;
//! - [`plan`]: the reservation planner; [`trace`]: usage trace files for it;
//! - [`report`]: the comparison table, CSV files and SVG charts ([`svg`]).
//!
//! The same scenario, seed and request count give the same results bit for bit.

pub mod demand;
pub mod engine;
pub mod host;
pub mod metrics;
pub mod plan;
pub mod region;
pub mod report;
pub mod rng;
pub mod scenario;
mod scenario_check;
pub mod strategy;
pub mod svg;
pub mod trace;

pub use engine::{InvariantViolation, RunOptions, RunResult, run};
pub use scenario::{Scenario, ScenarioError};
pub use strategy::StrategyKind;
