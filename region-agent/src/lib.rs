//! Meridian's region agent (DESIGN.md §6, §10).
//!
//! One agent runs per region (or GPU pool). It queues and batches jobs per model, runs candle
//! models on the GPUs it manages (CUDA when present, CPU otherwise), keeps results on its own
//! disk in its region, and reports health, capacity and usage to the control plane.
//!
//! This crate is a skeleton: the job API, the scheduler, the models and the `region-agent`
//! binary land here next.
