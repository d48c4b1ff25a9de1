//! What the audio models share: their `audio` input field — base64 or a `data:` URL of any
//! format [`audio_io::decode_audio`] reads (through ffmpeg where needed) — decoded into mono
//! samples at the model's rate within its length limit, and billed in seconds of that audio.

use serde_json::Value;

use super::{InputError, JobInput, decode_base64, string_field};
use crate::models::audio_io::{self, AudioLimits};
use crate::models::ffmpeg::{self, Ffmpeg};

/// An audio model's input: its limits and how ffmpeg is run for it.
#[derive(Debug, Clone)]
pub struct AudioInput {
    limits: AudioLimits,
    ffmpeg: Ffmpeg,
}

impl AudioInput {
    /// The input of model `id`, within `limits`. Logs a warning when ffmpeg is missing (only
    /// WAV at the model's rate, mono, is then read).
    pub fn new(id: &str, limits: AudioLimits) -> Self {
        ffmpeg::warn_if_missing(id);
        Self {
            limits,
            ffmpeg: Ffmpeg::default(),
        }
    }

    /// Accepts audio of at most `max_seconds`.
    pub fn with_max_seconds(mut self, max_seconds: u32) -> Self {
        self.limits.max_seconds = max_seconds;
        self
    }

    /// Replaces how ffmpeg is run (default: [`Ffmpeg::default`]).
    pub fn with_ffmpeg(mut self, ffmpeg: Ffmpeg) -> Self {
        self.ffmpeg = ffmpeg;
        self
    }

    /// Decodes `input.audio`: the job's payload is its samples (`Vec<f32>`), its units the
    /// seconds they last.
    pub fn prepare(&self, input: &Value) -> Result<JobInput, InputError> {
        let text = string_field(input, "audio")?;
        let bytes = decode_base64("audio", text)?;
        let samples = audio_io::decode_audio_with(&bytes, &self.limits, &self.ffmpeg)
            .map_err(|e| InputError::Unprocessable(format!("input.audio: {e}")))?;
        Ok(JobInput {
            units: samples.len() as f64 / f64::from(self.limits.sample_rate),
            batch_key: String::new(),
            payload: Box::new(samples),
        })
    }
}
