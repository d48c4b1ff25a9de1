//! Audio input for the audio models: decoding user-supplied audio into mono `f32` samples in
//! `[-1, 1]` at the model's sample rate ([`decode_audio`]), refusing audio longer than the
//! limits allow, with more channels than [`MAX_CHANNELS`], or declaring more samples than it
//! carries — from the header or ffprobe's report, before any sample is decoded.
//!
//! Which path each format takes: WAV at the model's rate and mono is read by `hound`
//! ([`decode_wav_mono`]); WAV at another rate or with more channels has its header checked
//! by `hound` and is resampled and downmixed by ffmpeg; MP3, FLAC, OGG (Vorbis, Opus),
//! M4A/MP4 (AAC, ALAC), ADTS AAC and WebM/Matroska audio are probed and decoded by ffmpeg
//! ([`super::ffmpeg`]), which is bounded by the decoded length the limits allow.

use std::io::Cursor;

use hound::{SampleFormat, WavReader};

use super::ffmpeg::{Ffmpeg, FfmpegError, ScratchDir, input_guard};

/// The most channels accepted (7.1 surround); more are downmixed to mono.
pub const MAX_CHANNELS: u16 = 8;

/// The demuxers audio may be read with, as ffprobe names them.
pub const DEMUXERS: &[&str] = &["wav", "mp3", "flac", "ogg", "mov", "aac", "matroska"];

/// The audio codecs accepted besides PCM (`pcm_*`).
pub const CODECS: &[&str] = &["mp3", "flac", "vorbis", "opus", "aac", "alac"];

/// The formats named when input audio is none of them.
const FORMATS: &str = "WAV, MP3, FLAC, OGG/Opus, M4A/AAC";

/// What an audio model accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AudioLimits {
    /// The only accepted sample rate, in Hz.
    pub sample_rate: u32,
    /// Longest accepted audio, in seconds.
    pub max_seconds: u32,
}

impl AudioLimits {
    /// 16 kHz mono, at most ten minutes: what one CPU worker scans for speech in about four
    /// seconds (the `silero_vad` benchmark: 10 s of audio in about 60 ms).
    pub const VAD_16K: Self = Self {
        sample_rate: 16_000,
        max_seconds: 600,
    };
}

/// Why input audio was refused.
#[derive(Debug, thiserror::Error)]
pub enum AudioInputError {
    /// The bytes are not a WAV file this decoder reads (RIFF/WAVE, PCM 8–32 bit or float 32).
    #[error("input audio cannot be decoded as WAV: {0}")]
    Undecodable(#[source] hound::Error),
    /// The audio is at another sample rate.
    #[error("input audio is sampled at {found} Hz; this model needs {expected} Hz")]
    WrongSampleRate {
        /// The file's rate, in Hz.
        found: u32,
        /// The model's rate, in Hz.
        expected: u32,
    },
    /// The audio has more than one channel.
    #[error("input audio has {channels} channels; this model needs mono (1 channel)")]
    NotMono {
        /// The file's channel count.
        channels: u16,
    },
    /// The audio has more channels than [`MAX_CHANNELS`].
    #[error("input audio has {channels} channels; the limit is {MAX_CHANNELS} channels")]
    TooManyChannels {
        /// The file's channel count.
        channels: u32,
    },
    /// The bytes are in none of the formats read, or ffmpeg cannot decode them.
    #[error("input audio is not in a format this model reads ({FORMATS}): {0}")]
    Unreadable(#[source] FfmpegError),
    /// The container holds no audio stream, or one in a codec not accepted.
    #[error("input audio refused: {0}")]
    Refused(String),
    /// ffmpeg is missing, ran past its time, or could not run.
    #[error("input audio: {0}")]
    Ffmpeg(#[source] FfmpegError),
    /// The audio has no samples.
    #[error("input audio is empty")]
    Empty,
    /// A floating-point sample is NaN or infinite.
    #[error("input audio has a sample that is not a finite number, at {seconds:.3} s")]
    NotFinite {
        /// Where, in seconds from the start.
        seconds: f64,
    },
    /// The header declares more sample bytes than the input carries.
    #[error("input audio declares {declared} bytes of samples but carries {carried}")]
    Truncated {
        /// Bytes of samples the header declares.
        declared: u64,
        /// Bytes after the header.
        carried: u64,
    },
    /// The audio is longer than the limit.
    #[error("input audio lasts {seconds:.1} s; the limit is {max_seconds} s")]
    TooLong {
        /// Its duration, in seconds.
        seconds: f64,
        /// The limit, in seconds.
        max_seconds: u32,
    },
    /// The audio decodes to more than the limit (its container understated its length).
    #[error("input audio decodes to more than {max_seconds} s; the limit is {max_seconds} s")]
    DecodesTooLong {
        /// The limit, in seconds.
        max_seconds: u32,
    },
}

/// Decodes audio in any of the accepted formats, at any sample rate and with up to
/// [`MAX_CHANNELS`] channels, into mono samples in `[-1, 1]` at `limits.sample_rate`
/// (ffmpeg with its default bounds; see the module doc for which path a format takes).
pub fn decode_audio(bytes: &[u8], limits: &AudioLimits) -> Result<Vec<f32>, AudioInputError> {
    decode_audio_with(bytes, limits, &Ffmpeg::default())
}

/// [`decode_audio`] with ffmpeg run as `ffmpeg` says (programs, timeout, memory).
pub fn decode_audio_with(
    bytes: &[u8],
    limits: &AudioLimits,
    ffmpeg: &Ffmpeg,
) -> Result<Vec<f32>, AudioInputError> {
    let is_wav = bytes.len() >= 12 && &bytes[..4] == b"RIFF" && &bytes[8..12] == b"WAVE";
    if is_wav {
        let spec = check_wav_header(bytes, limits)?;
        if spec.sample_rate == limits.sample_rate && spec.channels == 1 {
            return decode_wav_mono(bytes, limits);
        }
    }
    decode_with_ffmpeg(bytes, limits, ffmpeg)
}

/// Checks a WAV header: channels, length and the bytes it declares against those it carries.
fn check_wav_header(bytes: &[u8], limits: &AudioLimits) -> Result<hound::WavSpec, AudioInputError> {
    let reader = WavReader::new(Cursor::new(bytes)).map_err(AudioInputError::Undecodable)?;
    let spec = reader.spec();
    if spec.channels > MAX_CHANNELS {
        return Err(AudioInputError::TooManyChannels {
            channels: u32::from(spec.channels),
        });
    }
    let frames = reader.duration();
    if frames == 0 {
        return Err(AudioInputError::Empty);
    }
    let seconds = f64::from(frames) / f64::from(spec.sample_rate.max(1));
    if seconds > f64::from(limits.max_seconds) {
        return Err(AudioInputError::TooLong {
            seconds,
            max_seconds: limits.max_seconds,
        });
    }
    // The data chunk's declared length against the bytes that follow the header.
    let declared = u64::from(reader.len()) * u64::from(spec.bits_per_sample.div_ceil(8));
    let start = reader.into_inner().position();
    let carried = (bytes.len() as u64).saturating_sub(start);
    if declared > carried {
        return Err(AudioInputError::Truncated { declared, carried });
    }
    Ok(spec)
}

/// Probes `bytes` with ffprobe, checks the first audio stream, and decodes it with ffmpeg
/// into mono `f32` at the model's rate, reading at most a second more than the limit.
fn decode_with_ffmpeg(
    bytes: &[u8],
    limits: &AudioLimits,
    ffmpeg: &Ffmpeg,
) -> Result<Vec<f32>, AudioInputError> {
    ffmpeg
        .check_installed("MP3, FLAC, OGG/Opus and M4A/AAC input, and resampling")
        .map_err(AudioInputError::Ffmpeg)?;
    let scratch = |source| {
        AudioInputError::Ffmpeg(FfmpegError::Io {
            what: "write the input to a scratch file".to_owned(),
            source,
        })
    };
    let dir = ScratchDir::new().map_err(scratch)?;
    let input = dir.write("input", &[bytes]).map_err(scratch)?;
    let demuxer = probe_audio(ffmpeg, &input, limits)?;
    let rate = limits.sample_rate.to_string();
    let mut args = input_guard(DEMUXERS);
    args.extend(["-f", &demuxer, "-i"].map(String::from));
    args.push(input.display().to_string());
    args.extend(
        [
            "-map", "0:a:0", "-ac", "1", "-ar", &rate, "-f", "f32le", "pipe:1",
        ]
        .map(String::from),
    );
    let most = (limits.max_seconds as usize + 1) * limits.sample_rate as usize;
    let raw = match ffmpeg.ffmpeg(&args, most * 4) {
        Err(FfmpegError::OutputTooLarge { .. }) => {
            return Err(AudioInputError::DecodesTooLong {
                max_seconds: limits.max_seconds,
            });
        }
        other => other.map_err(unreadable)?,
    };
    let samples: Vec<f32> = raw
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    finish(samples, limits)
}

/// Probes `input` and checks its first audio stream (codec, channels, duration), returning
/// the demuxer to decode it with.
fn probe_audio(
    ffmpeg: &Ffmpeg,
    input: &std::path::Path,
    limits: &AudioLimits,
) -> Result<String, AudioInputError> {
    let probe = ffmpeg.probe(input, DEMUXERS).map_err(unreadable)?;
    let stream = probe
        .first("audio")
        .ok_or_else(|| AudioInputError::Refused("the file has no audio stream".to_owned()))?;
    if !(stream.codec.starts_with("pcm_") || CODECS.contains(&stream.codec.as_str())) {
        return Err(AudioInputError::Refused(format!(
            "audio coded as {} is not accepted (accepted: PCM, {})",
            stream.codec,
            CODECS.join(", ")
        )));
    }
    let channels = stream.channels.unwrap_or(0);
    if channels > u32::from(MAX_CHANNELS) {
        return Err(AudioInputError::TooManyChannels { channels });
    }
    match stream.duration.or(probe.duration) {
        Some(seconds) if seconds > f64::from(limits.max_seconds) => Err(AudioInputError::TooLong {
            seconds,
            max_seconds: limits.max_seconds,
        }),
        _ => Ok(probe.demuxer),
    }
}

/// Checks decoded samples (not empty, finite, within the limit) and clamps them to `[-1, 1]`.
fn finish(mut samples: Vec<f32>, limits: &AudioLimits) -> Result<Vec<f32>, AudioInputError> {
    let rate = f64::from(limits.sample_rate);
    if samples.is_empty() {
        return Err(AudioInputError::Empty);
    }
    if let Some(i) = samples.iter().position(|s| !s.is_finite()) {
        return Err(AudioInputError::NotFinite {
            seconds: i as f64 / rate,
        });
    }
    // A resampler's last block may run a few milliseconds past the input's end.
    let seconds = samples.len() as f64 / rate;
    if seconds > f64::from(limits.max_seconds) + 0.1 {
        return Err(AudioInputError::TooLong {
            seconds,
            max_seconds: limits.max_seconds,
        });
    }
    for s in &mut samples {
        *s = s.clamp(-1.0, 1.0);
    }
    Ok(samples)
}

/// A failure to read the input: its format, unless ffmpeg is missing or was stopped.
fn unreadable(error: FfmpegError) -> AudioInputError {
    match error {
        FfmpegError::Failed { .. } | FfmpegError::Refused(_) => AudioInputError::Unreadable(error),
        other => AudioInputError::Ffmpeg(other),
    }
}

/// Decodes WAV bytes at exactly `limits.sample_rate`, mono, into samples in `[-1, 1]`,
/// checking rate, channels and duration from the header before decoding (the pure-Rust
/// path of [`decode_audio`]; other rates and channel counts are refused here).
pub fn decode_wav_mono(bytes: &[u8], limits: &AudioLimits) -> Result<Vec<f32>, AudioInputError> {
    let reader = WavReader::new(Cursor::new(bytes)).map_err(AudioInputError::Undecodable)?;
    let spec = reader.spec();
    if spec.sample_rate != limits.sample_rate {
        return Err(AudioInputError::WrongSampleRate {
            found: spec.sample_rate,
            expected: limits.sample_rate,
        });
    }
    if spec.channels != 1 {
        return Err(AudioInputError::NotMono {
            channels: spec.channels,
        });
    }
    check_wav_header(bytes, limits)?;
    let samples: Result<Vec<f32>, hound::Error> = match spec.sample_format {
        SampleFormat::Float => reader.into_samples::<f32>().collect(),
        SampleFormat::Int => {
            let bits = spec.bits_per_sample;
            if !(1..=32).contains(&bits) {
                return Err(AudioInputError::Undecodable(hound::Error::Unsupported));
            }
            let scale = 1.0 / (1u64 << (bits - 1)) as f32;
            reader
                .into_samples::<i32>()
                .map(|s| s.map(|s| s as f32 * scale))
                .collect()
        }
    };
    let samples = samples.map_err(AudioInputError::Undecodable)?;
    if samples.is_empty() {
        return Err(AudioInputError::Empty);
    }
    if let Some(i) = samples.iter().position(|s| !s.is_finite()) {
        return Err(AudioInputError::NotFinite {
            seconds: i as f64 / f64::from(spec.sample_rate),
        });
    }
    Ok(samples)
}

/// Encodes mono samples as 16-bit PCM WAV (tests, examples).
pub fn encode_wav_mono_i16(samples: &[f32], sample_rate: u32) -> Result<Vec<u8>, hound::Error> {
    let spec = hound::WavSpec {
        channels: 1,
        sample_rate,
        bits_per_sample: 16,
        sample_format: SampleFormat::Int,
    };
    let mut out = Cursor::new(Vec::new());
    let mut writer = hound::WavWriter::new(&mut out, spec)?;
    for &s in samples {
        writer.write_sample((s.clamp(-1.0, 1.0) * 32767.0).round() as i16)?;
    }
    writer.finalize()?;
    Ok(out.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wav(spec: hound::WavSpec, n: usize) -> Vec<u8> {
        let mut out = Cursor::new(Vec::new());
        let mut w = hound::WavWriter::new(&mut out, spec).unwrap();
        for i in 0..n * usize::from(spec.channels) {
            w.write_sample((i % 100) as i16 * 100).unwrap();
        }
        w.finalize().unwrap();
        out.into_inner()
    }

    fn spec(rate: u32, channels: u16) -> hound::WavSpec {
        hound::WavSpec {
            channels,
            sample_rate: rate,
            bits_per_sample: 16,
            sample_format: SampleFormat::Int,
        }
    }

    #[test]
    fn decodes_16_bit_pcm_to_unit_range() {
        let samples = [0.0, 0.5, -0.5, 1.0, -1.0];
        let bytes = encode_wav_mono_i16(&samples, 16_000).unwrap();
        let decoded = decode_wav_mono(&bytes, &AudioLimits::VAD_16K).unwrap();
        assert_eq!(decoded.len(), samples.len());
        for (a, b) in decoded.iter().zip(samples) {
            assert!((a - b).abs() < 1e-4, "{a} vs {b}");
        }
    }

    #[test]
    fn refuses_wrong_rate_channels_length_and_garbage() {
        let limits = AudioLimits::VAD_16K;
        let err = decode_wav_mono(&wav(spec(22_050, 1), 100), &limits).unwrap_err();
        assert!(
            matches!(
                err,
                AudioInputError::WrongSampleRate {
                    found: 22_050,
                    expected: 16_000
                }
            ),
            "{err}"
        );
        let err = decode_wav_mono(&wav(spec(16_000, 2), 100), &limits).unwrap_err();
        assert!(
            matches!(err, AudioInputError::NotMono { channels: 2 }),
            "{err}"
        );
        let err = decode_wav_mono(&wav(spec(16_000, 1), 0), &limits).unwrap_err();
        assert!(matches!(err, AudioInputError::Empty), "{err}");
        let short = AudioLimits {
            max_seconds: 1,
            ..limits
        };
        let err = decode_wav_mono(&wav(spec(16_000, 1), 20_000), &short).unwrap_err();
        assert!(matches!(err, AudioInputError::TooLong { .. }), "{err}");
        let err = decode_wav_mono(b"RIFF\x10\0\0\0WAVEjunk", &limits).unwrap_err();
        assert!(matches!(err, AudioInputError::Undecodable(_)), "{err}");
        let err = decode_wav_mono(b"", &limits).unwrap_err();
        assert!(matches!(err, AudioInputError::Undecodable(_)), "{err}");
    }

    #[test]
    fn refuses_a_header_that_declares_more_samples_than_it_carries() {
        let bytes = wav(spec(16_000, 1), 1_000);
        let err = decode_wav_mono(&bytes[..bytes.len() - 10], &AudioLimits::VAD_16K).unwrap_err();
        assert!(
            matches!(
                err,
                AudioInputError::Truncated {
                    declared: 2_000,
                    carried: 1_990
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn refuses_float_samples_that_are_not_finite() {
        let spec = hound::WavSpec {
            channels: 1,
            sample_rate: 16_000,
            bits_per_sample: 32,
            sample_format: SampleFormat::Float,
        };
        let mut out = Cursor::new(Vec::new());
        let mut w = hound::WavWriter::new(&mut out, spec).unwrap();
        for s in [0.1f32, -0.2, f32::NAN, 0.0] {
            w.write_sample(s).unwrap();
        }
        w.finalize().unwrap();
        let err = decode_wav_mono(&out.into_inner(), &AudioLimits::VAD_16K).unwrap_err();
        assert!(matches!(err, AudioInputError::NotFinite { .. }), "{err}");
    }
}
