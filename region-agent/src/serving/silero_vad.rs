//! Silero VAD (`meridian/silero-vad`) served through [`Model`].
//!
//! Input `{"audio": "<base64 audio, or a data: URL>"}` — WAV, MP3, FLAC, OGG/Opus or
//! M4A/AAC at any sample rate with up to 8 channels, resampled to 16 kHz mono
//! ([`audio_io::decode_audio`]) — output `{"segments": [{"start_s", "end_s"}, …]}` (seconds
//! from the start of the audio; `[]` when nobody speaks). Units: seconds of audio. The audio
//! is probed, checked (format, channels, length) and decoded in [`Model::prepare`], so audio
//! the model cannot take is refused with 422 before the job exists.
//!
//! Batching: the model can advance several audios in lockstep
//! ([`SileroVad::speech_probabilities_batch`]), but the `silero_vad` benchmark shows no gain
//! on a CPU over running them one after another, and in a batch a short audio waits for the
//! longest. So jobs run one by one even when `max_batch` is over 1, and `max_batch = 1` (the
//! default) is the setting to use.

use std::path::{Path, PathBuf};

use candle_core::Device;
use policy::PricingUnit;
use serde_json::Value;

use super::audio::AudioInput;
use super::{InputError, JobInput, LoadedModel, Model, ModelError, ModelOutput, StopSignal};
use crate::models::audio_io::AudioLimits;
use crate::models::ffmpeg::Ffmpeg;
use crate::models::silero_vad::{SegmentParams, SileroVad, WEIGHTS_FILE};

/// Silero VAD, its weights in `<weights_dir>/silero_vad_16k.safetensors`.
#[derive(Debug, Clone)]
pub struct SileroVadModel {
    id: String,
    weights: PathBuf,
    audio: AudioInput,
}

impl SileroVadModel {
    /// The model `id`, weights from `weights_dir` (what `scripts/fetch-models` writes as
    /// `silero-vad/`).
    /// Logs a warning when ffmpeg is missing (only 16 kHz mono WAV is then read).
    pub fn new(id: &str, weights_dir: &Path) -> Self {
        Self {
            id: id.to_owned(),
            weights: weights_dir.join(WEIGHTS_FILE),
            audio: AudioInput::new(id, AudioLimits::VAD_16K),
        }
    }

    /// Replaces how ffmpeg is run (default: [`Ffmpeg::default`]).
    pub fn with_ffmpeg(mut self, ffmpeg: Ffmpeg) -> Self {
        self.audio = self.audio.with_ffmpeg(ffmpeg);
        self
    }

    /// Accepts audio of at most `max_seconds` (default 600).
    pub fn with_max_seconds(mut self, max_seconds: u32) -> Self {
        self.audio = self.audio.with_max_seconds(max_seconds);
        self
    }

    /// The weights file this model loads.
    pub fn weights(&self) -> &Path {
        &self.weights
    }
}

impl Model for SileroVadModel {
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
        let model =
            SileroVad::load(&self.weights, device).map_err(|e| ModelError(e.to_string()))?;
        Ok(Box::new(LoadedSileroVad {
            model,
            params: SegmentParams::default(),
        }))
    }
}

struct LoadedSileroVad {
    model: SileroVad,
    params: SegmentParams,
}

impl LoadedSileroVad {
    fn detect(&self, job: JobInput, stop: &StopSignal) -> Result<ModelOutput, ModelError> {
        let samples = job
            .payload
            .downcast::<Vec<f32>>()
            .map_err(|_| ModelError("input of the wrong type for Silero VAD".to_owned()))?;
        let segments = self
            .model
            .detect_until(&samples, &self.params, stop)
            .map_err(|e| ModelError(e.to_string()))?;
        let segments =
            serde_json::to_value(segments).map_err(|e| ModelError(format!("encode: {e}")))?;
        let mut output = ModelOutput::default();
        output.fields.insert("segments".to_owned(), segments);
        Ok(output)
    }
}

impl LoadedModel for LoadedSileroVad {
    fn run(
        &mut self,
        batch: Vec<JobInput>,
        stop: &StopSignal,
    ) -> Vec<Result<ModelOutput, ModelError>> {
        batch
            .into_iter()
            .map(|job| self.detect(job, stop))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use base64::Engine as _;
    use serde_json::json;

    use super::*;

    fn wav_base64(seconds: f32, rate: u32) -> String {
        let n = (seconds * rate as f32) as usize;
        let samples: Vec<f32> = (0..n).map(|i| (i as f32 * 0.05).sin() * 0.1).collect();
        let wav = crate::models::audio_io::encode_wav_mono_i16(&samples, rate).unwrap();
        base64::engine::general_purpose::STANDARD.encode(wav)
    }

    #[test]
    fn prepare_bills_seconds_resamples_other_rates_and_refuses_garbage() {
        let model = SileroVadModel::new("meridian/silero-vad", Path::new("unused"));
        let input = model
            .prepare(&json!({"audio": wav_base64(1.5, 16_000)}))
            .unwrap();
        assert!((input.units - 1.5).abs() < 1e-9, "{}", input.units);
        // 8 kHz is resampled to 16 kHz: the same second of audio.
        let input = model
            .prepare(&json!({"audio": wav_base64(1.0, 8_000)}))
            .unwrap();
        assert!((input.units - 1.0).abs() < 0.01, "{}", input.units);
        assert!(matches!(
            model.prepare(&json!({"audio": "aGVsbG8="})),
            Err(InputError::Unprocessable(_))
        ));
        assert!(matches!(
            model.prepare(&json!({"sound": "aGVsbG8="})),
            Err(InputError::Field { .. })
        ));
    }
}
