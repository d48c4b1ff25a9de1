//! Silero VAD: where speech is in 16 kHz mono audio, on candle.
//!
//! Weights come from the PyPI package `silero-vad` (version pinned in `scripts/fetch-models`,
//! MIT licence, © Silero Team), whose wheel ships the 16 kHz network as
//! `silero_vad/data/silero_vad_16k.safetensors`; `scripts/fetch-models` copies it to
//! `$MERIDIAN_MODELS_DIR/silero-vad/silero_vad_16k.safetensors` unchanged. Weights are never
//! committed to this repository.
//!
//! [`SileroVad::load`] memory-maps that file; [`SileroVad::speech_probabilities`] scores each
//! 32 ms window (512 samples, with 64 samples of context from the window before and the LSTM
//! state carried across windows); [`SileroVad::detect`] turns the scores into
//! [`SpeechSegment`]s with [`SegmentParams`]; [`SileroVad::detect_wav`] does it all from WAV
//! bytes. Several audios run as one batch with [`SileroVad::speech_probabilities_batch`]:
//! the streams advance window by window in lockstep. Everything runs synchronously (callers
//! run it on a model thread, never on the async runtime).

pub mod network;
pub mod segments;

use std::path::{Path, PathBuf};

use candle_core::{DType, Device};
use candle_nn::VarBuilder;

use self::network::{CONTEXT, SileroNet, State, WINDOW};
pub use self::segments::{SegmentParams, SpeechSegment, speech_segments};
use super::audio_io::{self, AudioInputError, AudioLimits};
use super::stop::{StopSignal, Stopped};

/// The sample rate the network works at, in Hz.
pub const SAMPLE_RATE: u32 = 16_000;
/// The weights file's name in the model directory.
pub const WEIGHTS_FILE: &str = "silero_vad_16k.safetensors";

/// Why the model could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The file is missing or unreadable, or the weights do not fit the network.
    #[error("load Silero VAD weights from {path}: {source}")]
    Weights {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: candle_core::Error,
    },
}

/// Why audio could not be scanned for speech.
#[derive(Debug, thiserror::Error)]
pub enum DetectError {
    /// The input audio was refused (undecodable, wrong rate or channels, too long).
    #[error(transparent)]
    Input(#[from] AudioInputError),
    /// The network failed to run.
    #[error("run Silero VAD: {0}")]
    Inference(#[from] candle_core::Error),
    /// The job was stopped (timeout or cancellation) between two audio windows.
    #[error(transparent)]
    Stopped(#[from] Stopped),
}

/// A loaded Silero VAD model.
#[derive(Debug, Clone)]
pub struct SileroVad {
    network: SileroNet,
    limits: AudioLimits,
}

impl SileroVad {
    /// Memory-maps `silero_vad_16k.safetensors` (the file, or a directory holding it).
    pub fn load(path: &Path, device: &Device) -> Result<Self, LoadError> {
        let file = if path.is_dir() {
            path.join(WEIGHTS_FILE)
        } else {
            path.to_path_buf()
        };
        let weights_error = |source| LoadError::Weights {
            path: file.clone(),
            source,
        };
        // SAFETY: the file is memory-mapped read-only. Model files are written once (by
        // `scripts/fetch-models`, via a temporary file and a rename) and never modified in
        // place, so the mapping is not changed underneath the tensors that borrow from it.
        #[allow(unsafe_code)]
        let vb = unsafe { VarBuilder::from_mmaped_safetensors(&[&file], DType::F32, device) }
            .map_err(weights_error)?;
        let network = SileroNet::new(vb).map_err(weights_error)?;
        Ok(Self {
            network,
            limits: AudioLimits::VAD_16K,
        })
    }

    /// Builds a model from weights already in a `VarBuilder` (tests, benchmarks).
    pub fn from_var_builder(vb: VarBuilder<'_>) -> candle_core::Result<Self> {
        Ok(Self {
            network: SileroNet::new(vb)?,
            limits: AudioLimits::VAD_16K,
        })
    }

    /// Replaces the longest accepted audio, in seconds (default 600, see
    /// [`AudioLimits::VAD_16K`]).
    pub fn with_max_seconds(mut self, max_seconds: u32) -> Self {
        self.limits.max_seconds = max_seconds;
        self
    }

    /// One speech probability per 512-sample window of 16 kHz audio (the last window is
    /// zero-padded).
    pub fn speech_probabilities(&self, samples: &[f32]) -> candle_core::Result<Vec<f32>> {
        let mut all = self.speech_probabilities_batch(&[samples])?;
        Ok(all.pop().unwrap_or_default())
    }

    /// [`Self::speech_probabilities`] for several audios at once: each window step runs the
    /// whole batch through the network together.
    pub fn speech_probabilities_batch(
        &self,
        audios: &[&[f32]],
    ) -> candle_core::Result<Vec<Vec<f32>>> {
        self.speech_probabilities_until(audios, &StopSignal::never())
            .map_err(|e| match e {
                DetectError::Inference(e) => e,
                other => candle_core::Error::Msg(other.to_string()),
            })
    }

    /// [`Self::speech_probabilities_batch`], checking `stop` before every window step: a
    /// stopped job returns [`DetectError::Stopped`] having run at most one more window.
    pub fn speech_probabilities_until(
        &self,
        audios: &[&[f32]],
        stop: &StopSignal,
    ) -> Result<Vec<Vec<f32>>, DetectError> {
        let batch = audios.len();
        let windows: Vec<usize> = audios.iter().map(|a| a.len().div_ceil(WINDOW)).collect();
        let steps = windows.iter().copied().max().unwrap_or(0);
        let mut probs: Vec<Vec<f32>> = windows.iter().map(|&n| Vec::with_capacity(n)).collect();
        if batch == 0 || steps == 0 {
            return Ok(probs);
        }
        let width = CONTEXT + WINDOW;
        let mut state = State::zeros(batch, self.network.device())?;
        // Per stream: the context (the last CONTEXT samples of its previous window), then the
        // new window.
        let mut input = vec![0f32; batch * width];
        for step in 0..steps {
            stop.check()?;
            for (b, audio) in audios.iter().enumerate() {
                let row = &mut input[b * width..(b + 1) * width];
                row.copy_within(WINDOW.., 0);
                let start = (step * WINDOW).min(audio.len());
                let end = (start + WINDOW).min(audio.len());
                row[CONTEXT..CONTEXT + end - start].copy_from_slice(&audio[start..end]);
                row[CONTEXT + end - start..].fill(0.0);
            }
            let (p, next) = self.network.step(&input, &state)?;
            state = next;
            for (b, p) in p.into_iter().enumerate() {
                if step < windows[b] {
                    probs[b].push(p);
                }
            }
        }
        Ok(probs)
    }

    /// The speech segments of 16 kHz mono samples in `[-1, 1]`.
    pub fn detect(
        &self,
        samples: &[f32],
        params: &SegmentParams,
    ) -> Result<Vec<SpeechSegment>, DetectError> {
        self.detect_until(samples, params, &StopSignal::never())
    }

    /// [`Self::detect`], stopping between audio windows when `stop` is raised.
    pub fn detect_until(
        &self,
        samples: &[f32],
        params: &SegmentParams,
        stop: &StopSignal,
    ) -> Result<Vec<SpeechSegment>, DetectError> {
        let mut probs = self.speech_probabilities_until(&[samples], stop)?;
        let probs = probs.pop().unwrap_or_default();
        Ok(speech_segments(
            &probs,
            WINDOW,
            samples.len(),
            SAMPLE_RATE,
            params,
        ))
    }

    /// Decodes WAV bytes (16 kHz, mono) and returns their speech segments.
    pub fn detect_wav(
        &self,
        wav: &[u8],
        params: &SegmentParams,
    ) -> Result<Vec<SpeechSegment>, DetectError> {
        let samples = audio_io::decode_wav_mono(wav, &self.limits)?;
        self.detect(&samples, params)
    }
}

#[cfg(test)]
mod tests {
    use candle_nn::VarMap;

    use super::*;

    #[test]
    fn a_cancelled_or_late_job_stops_before_its_next_window() {
        let model = random_model();
        let audio = noise(16_000 * 10, 7); // 313 windows
        let stop = StopSignal::never().with_hook(std::sync::Arc::new(|stop, n| {
            if n == 5 {
                stop.cancel();
            }
        }));
        let result = model.detect_until(&audio, &SegmentParams::default(), &stop);
        assert!(
            matches!(result, Err(DetectError::Stopped(Stopped::Cancelled))),
            "{result:?}"
        );
        assert_eq!(stop.safe_points(), 5);
        let late = StopSignal::until(std::time::Instant::now());
        let result = model.detect_until(&audio, &SegmentParams::default(), &late);
        assert!(
            matches!(result, Err(DetectError::Stopped(Stopped::TimedOut))),
            "{result:?}"
        );
        assert_eq!(late.safe_points(), 1);
    }

    fn random_model() -> SileroVad {
        let varmap = VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
        SileroVad::from_var_builder(vb).unwrap()
    }

    fn noise(n: usize, seed: u32) -> Vec<f32> {
        let mut x = seed.wrapping_mul(2_654_435_761).max(1);
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                (x as f32 / u32::MAX as f32) * 2.0 - 1.0
            })
            .collect()
    }

    #[test]
    fn one_probability_per_window_and_batching_changes_nothing() {
        let model = random_model();
        let a = noise(16_000, 1);
        let b = noise(5_000, 2);
        let pa = model.speech_probabilities(&a).unwrap();
        let pb = model.speech_probabilities(&b).unwrap();
        assert_eq!(pa.len(), 32);
        assert_eq!(pb.len(), 10);
        assert!(pa.iter().all(|p| (0.0..=1.0).contains(p)));
        let both = model.speech_probabilities_batch(&[&a, &b]).unwrap();
        for (single, batched) in [(&pa, &both[0]), (&pb, &both[1])] {
            assert_eq!(single.len(), batched.len());
            for (x, y) in single.iter().zip(batched) {
                assert!((x - y).abs() < 1e-5, "{x} vs {y}");
            }
        }
        assert!(model.speech_probabilities(&[]).unwrap().is_empty());
    }

    #[test]
    fn load_says_which_file_is_missing_or_wrong() {
        let dir = tempfile::tempdir().unwrap();
        let err = SileroVad::load(dir.path(), &Device::Cpu).unwrap_err();
        assert!(err.to_string().contains(WEIGHTS_FILE), "{err}");
        let other = dir.path().join("other.safetensors");
        candle_core::safetensors::save(
            &std::collections::HashMap::from([(
                "x".to_owned(),
                candle_core::Tensor::zeros(2, DType::F32, &Device::Cpu).unwrap(),
            )]),
            &other,
        )
        .unwrap();
        let err = SileroVad::load(&other, &Device::Cpu).unwrap_err();
        assert!(err.to_string().contains("stft_conv.weight"), "{err}");
    }

    #[test]
    fn detect_wav_refuses_other_sample_rates() {
        let model = random_model();
        let wav = audio_io::encode_wav_mono_i16(&noise(8_000, 3), 8_000).unwrap();
        let err = model
            .detect_wav(&wav, &SegmentParams::default())
            .unwrap_err();
        assert!(
            matches!(
                err,
                DetectError::Input(AudioInputError::WrongSampleRate { found: 8_000, .. })
            ),
            "{err}"
        );
    }
}
