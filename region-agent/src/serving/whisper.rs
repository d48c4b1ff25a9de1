//! Whisper tiny.en (`meridian/whisper-tiny-en`) served through [`Model`].
//!
//! Input `{"audio": "<base64 audio or a data: URL>"}` (any format and rate
//! [`audio_io::decode_audio`] reads, resampled to 16 kHz mono); output `{"text", "segments":
//! [{"start_s", "end_s", "text"}, …], "language": "en"}` (`text` is empty and `segments` `[]`
//! when nobody speaks). Units: seconds of audio. The audio is decoded and checked (format,
//! length) in [`Model::prepare`], so audio the agent cannot use is refused with 422 before the
//! job exists.
//!
//! Batching: jobs run one by one (a window's decoder steps depend on each other, and audios of
//! different lengths would wait for the longest); `max_batch = 1` is the setting to use.

use std::path::{Path, PathBuf};

use candle_core::Device;
use policy::PricingUnit;
use serde_json::Value;

use super::audio::AudioInput;
use super::{InputError, JobInput, LoadedModel, Model, ModelError, ModelOutput, StopSignal};
use crate::models::audio_io::AudioLimits;
use crate::models::whisper::{SAMPLE_RATE, TranscribeError, WEIGHTS_FILE, Whisper};

/// Longest audio accepted by default, in seconds: 600 s of speech took 107 s of CPU on two
/// cores (`tests/largest_inputs.rs`), so half of it fits well within the default 120 s job
/// timeout. Operators set `max_audio_seconds` (and `timeout_s`) for longer audio.
pub const DEFAULT_MAX_SECONDS: u32 = 300;

/// Whisper, its files in one directory (what `scripts/fetch-models` writes as
/// `whisper-tiny-en/`).
#[derive(Debug, Clone)]
pub struct WhisperModel {
    id: String,
    dir: PathBuf,
    audio: AudioInput,
}

impl WhisperModel {
    /// The model `id`, its files in `dir`. Logs a warning when ffmpeg is missing (only
    /// 16 kHz mono WAV is then read).
    pub fn new(id: &str, dir: &Path) -> Self {
        let limits = AudioLimits {
            sample_rate: SAMPLE_RATE,
            max_seconds: DEFAULT_MAX_SECONDS,
        };
        Self {
            id: id.to_owned(),
            dir: dir.to_path_buf(),
            audio: AudioInput::new(id, limits),
        }
    }

    /// Accepts audio of at most `max_seconds` (default [`DEFAULT_MAX_SECONDS`]).
    pub fn with_max_seconds(mut self, max_seconds: u32) -> Self {
        self.audio = self.audio.with_max_seconds(max_seconds);
        self
    }

    /// The weights file this model loads.
    pub fn weights(&self) -> PathBuf {
        self.dir.join(WEIGHTS_FILE)
    }
}

impl Model for WhisperModel {
    fn id(&self) -> &str {
        &self.id
    }

    fn unit(&self) -> PricingUnit {
        PricingUnit::AudioSecond
    }

    fn prepare(&self, input: &Value) -> Result<JobInput, InputError> {
        self.audio.prepare(input)
    }

    fn load(&self, device: &Device) -> Result<Box<dyn LoadedModel>, ModelError> {
        let model = Whisper::load(&self.dir, device).map_err(|e| ModelError(e.to_string()))?;
        Ok(Box::new(LoadedWhisper { model }))
    }
}

struct LoadedWhisper {
    model: Whisper,
}

impl LoadedWhisper {
    fn transcribe(&mut self, job: JobInput, stop: &StopSignal) -> Result<ModelOutput, ModelError> {
        let samples = job
            .payload
            .downcast::<Vec<f32>>()
            .map_err(|_| ModelError("input of the wrong type for Whisper".to_owned()))?;
        let transcript = self
            .model
            .transcribe(&samples, stop)
            .map_err(|e: TranscribeError| ModelError(e.to_string()))?;
        let Value::Object(fields) =
            serde_json::to_value(transcript).map_err(|e| ModelError(format!("encode: {e}")))?
        else {
            return Err(ModelError("a transcript is not a JSON object".to_owned()));
        };
        Ok(ModelOutput {
            fields,
            files: Vec::new(),
        })
    }
}

impl LoadedModel for LoadedWhisper {
    fn run(
        &mut self,
        batch: Vec<JobInput>,
        stop: &StopSignal,
    ) -> Vec<Result<ModelOutput, ModelError>> {
        batch
            .into_iter()
            .map(|job| self.transcribe(job, stop))
            .collect()
    }
}
