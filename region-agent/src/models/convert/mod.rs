//! Converters from the formats registry packages ship to the safetensors files the agent's
//! candle models load.
//!
//! - [`tfjs`]: reads TF.js layers models (`model.json` + binary shards).
//! - [`esrgan`]: turns the ESRGAN-slim TF.js model into an ESRGAN safetensors file (OIHW
//!   kernels, candle tensor names, provenance metadata); used by the `convert-tfjs` binary
//!   that `scripts/fetch-models` runs.
//! - [`ct2`]: reads CTranslate2 model files (`model.bin`).
//! - [`whisper`]: turns a CTranslate2 Whisper model into the files
//!   [`crate::models::whisper::Whisper`] loads; used by the `convert-ct2` binary.

pub mod ct2;
pub mod esrgan;
pub mod tfjs;
pub mod whisper;
