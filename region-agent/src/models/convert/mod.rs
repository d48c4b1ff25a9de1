//! Converters from the formats registry packages ship to the safetensors files the agent's
//! candle models load.
//!
//! - [`tfjs`]: reads TF.js layers models (`model.json` + binary shards).
//! - [`esrgan`]: turns the ESRGAN-slim TF.js model into an ESRGAN safetensors file (OIHW
//!   kernels, candle tensor names, provenance metadata); used by the `convert-tfjs` binary
//!   that `scripts/fetch-models` runs.

pub mod esrgan;
pub mod tfjs;
