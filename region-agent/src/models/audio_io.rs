//! Audio input for the audio models: decoding user-supplied WAV bytes into mono `f32` samples
//! in `[-1, 1]`, refusing audio at the wrong sample rate, with the wrong channel count,
//! longer than the limits allow, or declaring more samples than it carries — all from the
//! header, before any sample is decoded.

use std::io::Cursor;

use hound::{SampleFormat, WavReader};

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
}

/// Decodes WAV bytes into mono samples in `[-1, 1]`, checking rate, channels and duration
/// from the header before decoding.
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
    let frames = reader.duration();
    if frames == 0 {
        return Err(AudioInputError::Empty);
    }
    let seconds = f64::from(frames) / f64::from(spec.sample_rate);
    if seconds > f64::from(limits.max_seconds) {
        return Err(AudioInputError::TooLong {
            seconds,
            max_seconds: limits.max_seconds,
        });
    }
    // The data chunk's declared length against the bytes that follow the header.
    let declared = u64::from(reader.len()) * u64::from(spec.bits_per_sample.div_ceil(8));
    let start = WavReader::new(Cursor::new(bytes))
        .map_err(AudioInputError::Undecodable)?
        .into_inner()
        .position();
    let carried = (bytes.len() as u64).saturating_sub(start);
    if declared > carried {
        return Err(AudioInputError::Truncated { declared, carried });
    }
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
