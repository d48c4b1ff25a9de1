//! Meridian's region agent (docs/design.md §6, §10).
//!
//! One agent runs per region (or GPU pool). It serves the edge→agent API (`API.md`), queues
//! and batches jobs per model, runs candle models on dedicated threads on the GPUs it manages
//! (CUDA when built with the `cuda` feature and a GPU is present, CPU otherwise), keeps jobs
//! and results on its own disk in its region, and reports health, capacity and usage to the
//! control plane.
//!
//! - [`config`]: the TOML file and its validation.
//! - [`catalog`]: the catalog copy in force (pools, slots, prices), from the control plane
//!   (kept on disk) or a catalog file.
//! - [`serving`]: the [`serving::Model`] trait the scheduler drives, and the models served.
//! - [`scheduler`]: queues, priorities, batching, slots, timeouts, keep-alive, billing.
//! - [`inputs`]: media inputs given as `http(s)` URLs, fetched under a destination policy
//!   before a job is accepted.
//! - [`jobs`]: job records and their on-disk store; [`usage`]: the usage ledger (per-job
//!   journal, numbered batches of aggregates for the control plane, audit pages).
//! - [`api`]: the HTTP API; [`link`]: registration, heartbeats, catalog updates and usage
//!   batches to the control plane; [`gpu`]: GPU discovery; [`server`]: the agent's lifecycle
//!   ([`run`]).
//! - [`models`]: the plain candle models and their weight converters.

pub mod api;
pub mod catalog;
pub mod config;
pub mod gpu;
pub mod inputs;
pub mod jobs;
pub mod link;
pub mod models;
pub mod scheduler;
pub mod server;
pub mod serving;
pub mod usage;

pub use server::{run, run_with_models};
