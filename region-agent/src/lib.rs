//! Meridian's region agent (DESIGN.md §6, §10).
//!
//! One agent runs per region (or GPU pool). It queues and batches jobs per model, runs candle
//! models on the GPUs it manages (CUDA when present, CPU otherwise), keeps results on its own
//! disk in its region, and reports health, capacity and usage to the control plane.
//!
//! What is here so far: [`models`] — ESRGAN-slim super-resolution on candle and the converter
//! that prepares its weights from the `@upscalerjs/esrgan-slim` npm package. The job API, the
//! scheduler and the `region-agent` binary land here next.

pub mod models;
