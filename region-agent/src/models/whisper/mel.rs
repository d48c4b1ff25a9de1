//! Whisper's front end: the log-mel spectrogram it was trained on, and the mel filter bank
//! behind it.
//!
//! The filters are triangles on the Slaney mel scale (linear below 1 kHz, logarithmic above),
//! each normalised to unit area, over the `N_FFT / 2 + 1` frequency bins of a 400-point FFT
//! at 16 kHz — computed here rather than shipped as a file. The spectrogram
//! ([`LogMel::compute`]) is Whisper's: 400-sample Hann windows every 160 samples (10 ms),
//! centred on their frame (the audio reflected at both ends), power spectrum, mel filters,
//! `log10` floored at 10⁻¹⁰ and at 8 below the loudest value, then `(x + 4) / 4`. The Fourier
//! transform is a product with a precomputed cosine/sine basis, so it runs as matrix products
//! in candle, a few thousand frames at a time.

use candle_core::{Device, Result, Tensor};

/// Samples per FFT window.
pub const N_FFT: usize = 400;
/// Samples between frames (10 ms at 16 kHz).
pub const HOP: usize = 160;
/// Frames transformed in one matrix product (bounds the memory a long audio takes).
const FRAMES_PER_CHUNK: usize = 3000;

/// Hz per mel below 1 kHz on the Slaney scale.
const F_SP: f64 = 200.0 / 3.0;
/// Where the scale turns logarithmic, in Hz.
const MIN_LOG_HZ: f64 = 1000.0;

fn log_step() -> f64 {
    6.4f64.ln() / 27.0
}

fn hz_to_mel(hz: f64) -> f64 {
    if hz < MIN_LOG_HZ {
        hz / F_SP
    } else {
        MIN_LOG_HZ / F_SP + (hz / MIN_LOG_HZ).ln() / log_step()
    }
}

fn mel_to_hz(mel: f64) -> f64 {
    let min_log_mel = MIN_LOG_HZ / F_SP;
    if mel < min_log_mel {
        mel * F_SP
    } else {
        MIN_LOG_HZ * ((mel - min_log_mel) * log_step()).exp()
    }
}

/// `n_mels` filters over the bins of an `n_fft`-point FFT at `sample_rate`, row-major
/// (`n_mels × (n_fft / 2 + 1)`), the layout candle's `pcm_to_mel` reads.
pub fn filters(sample_rate: u32, n_fft: usize, n_mels: usize) -> Vec<f32> {
    let bins = n_fft / 2 + 1;
    let nyquist = f64::from(sample_rate) / 2.0;
    let bin_hz: Vec<f64> = (0..bins)
        .map(|k| k as f64 * nyquist / (bins - 1) as f64)
        .collect();
    let top = hz_to_mel(nyquist);
    let edges: Vec<f64> = (0..n_mels + 2)
        .map(|i| mel_to_hz(top * i as f64 / (n_mels + 1) as f64))
        .collect();
    let mut out = vec![0f32; n_mels * bins];
    for m in 0..n_mels {
        let (low, centre, high) = (edges[m], edges[m + 1], edges[m + 2]);
        let area = 2.0 / (high - low);
        for (k, &f) in bin_hz.iter().enumerate() {
            let rising = (f - low) / (centre - low);
            let falling = (high - f) / (high - centre);
            let weight = rising.min(falling).max(0.0);
            out[m * bins + k] = (weight * area) as f32;
        }
    }
    out
}

/// The spectrogram's transform: the windowed Fourier basis and the filters, on a device.
#[derive(Debug, Clone)]
pub struct LogMel {
    /// `[N_FFT, 2 × bins]`: Hann-windowed cosines, then sines.
    basis: Tensor,
    /// `[bins, n_mels]`.
    filters: Tensor,
    n_mels: usize,
}

impl LogMel {
    /// The transform for `n_mels` bands of 16 kHz audio.
    pub fn new(sample_rate: u32, n_mels: usize, device: &Device) -> Result<Self> {
        let bins = N_FFT / 2 + 1;
        let mut basis = vec![0f32; N_FFT * 2 * bins];
        for n in 0..N_FFT {
            let phase = 2.0 * std::f64::consts::PI * n as f64 / N_FFT as f64;
            let window = 0.5 - 0.5 * phase.cos();
            for k in 0..bins {
                let angle = phase * k as f64;
                basis[n * 2 * bins + k] = (window * angle.cos()) as f32;
                basis[n * 2 * bins + bins + k] = (window * angle.sin()) as f32;
            }
        }
        let filters =
            Tensor::from_vec(filters(sample_rate, N_FFT, n_mels), (n_mels, bins), device)?;
        Ok(Self {
            basis: Tensor::from_vec(basis, (N_FFT, 2 * bins), device)?,
            filters: filters.t()?.contiguous()?,
            n_mels,
        })
    }

    /// The log-mel spectrogram of `samples`, `[n_mels, samples.len() / HOP]`.
    pub fn compute(&self, samples: &[f32]) -> Result<Tensor> {
        let frames = samples.len() / HOP;
        let device = self.basis.device();
        if frames == 0 {
            return Tensor::zeros((self.n_mels, 0), candle_core::DType::F32, device);
        }
        let bins = N_FFT / 2 + 1;
        let mut chunks = Vec::new();
        for first in (0..frames).step_by(FRAMES_PER_CHUNK) {
            let count = FRAMES_PER_CHUNK.min(frames - first);
            let mut windows = Vec::with_capacity(count * N_FFT);
            for t in first..first + count {
                let start = (t * HOP) as isize - (N_FFT / 2) as isize;
                windows.extend(
                    (0..N_FFT as isize).map(|i| samples[reflect(start + i, samples.len())]),
                );
            }
            let windows = Tensor::from_vec(windows, (count, N_FFT), device)?;
            let spectrum = windows.matmul(&self.basis)?;
            let power =
                (spectrum.narrow(1, 0, bins)?.sqr()? + spectrum.narrow(1, bins, bins)?.sqr()?)?;
            let mel = power.matmul(&self.filters)?.clamp(1e-10f32, f32::MAX)?;
            chunks.push((mel.log()? / std::f64::consts::LN_10)?);
        }
        let log_mel = Tensor::cat(&chunks, 0)?.t()?.contiguous()?;
        let floor = log_mel.max_all()?.to_scalar::<f32>()? - 8.0;
        (log_mel.clamp(floor, f32::MAX)? + 4.0)? / 4.0
    }
}

/// The index of sample `i` of an audio of `len` samples reflected at both ends (numpy's
/// "reflect": the edge sample is not repeated).
fn reflect(i: isize, len: usize) -> usize {
    let last = len as isize - 1;
    if last <= 0 {
        return 0;
    }
    let period = 2 * last;
    let i = i.rem_euclid(period);
    (if i > last { period - i } else { i }) as usize
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn reflection_does_not_repeat_the_edge() {
        let got: Vec<usize> = (-3..8).map(|i| reflect(i, 5)).collect();
        assert_eq!(got, [3, 2, 1, 0, 1, 2, 3, 4, 3, 2, 1]);
        assert_eq!(reflect(7, 1), 0);
    }

    #[test]
    fn a_tone_lights_its_band_and_frames_match_a_direct_transform() {
        let sr = 16_000;
        let tone: Vec<f32> = (0..sr)
            .map(|i| (2.0 * std::f32::consts::PI * 1000.0 * i as f32 / sr as f32).sin() * 0.5)
            .collect();
        let front = LogMel::new(sr as u32, 80, &Device::Cpu).unwrap();
        let mel = front.compute(&tone).unwrap();
        assert_eq!(mel.dims(), [80, 100]);
        let frame: Vec<f32> = mel
            .narrow(1, 50, 1)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let loudest = (0..80)
            .max_by(|&a, &b| frame[a].total_cmp(&frame[b]))
            .unwrap();
        // 1 kHz is mel 15; the bands are 45.2 / 81 mel wide, so band ≈ 15 / 0.559 − 1 ≈ 26.
        assert!(
            (25..=27).contains(&loudest),
            "the loudest band is {loudest}"
        );
        // Frame 50's power spectrum, by a direct DFT of the same window.
        let bins = N_FFT / 2 + 1;
        let filters = filters(sr as u32, N_FFT, 80);
        let start = 50 * HOP - N_FFT / 2;
        let power: Vec<f64> = (0..bins)
            .map(|k| {
                let (mut re, mut im) = (0f64, 0f64);
                for n in 0..N_FFT {
                    let phase = 2.0 * std::f64::consts::PI * n as f64 / N_FFT as f64;
                    let x = f64::from(tone[start + n]) * (0.5 - 0.5 * phase.cos());
                    re += x * (phase * k as f64).cos();
                    im -= x * (phase * k as f64).sin();
                }
                re * re + im * im
            })
            .collect();
        let all: Vec<f32> = mel.flatten_all().unwrap().to_vec1().unwrap();
        let floor = all.iter().copied().fold(f32::MIN, f32::max) * 4.0 - 4.0 - 8.0;
        for m in 0..80 {
            let energy: f64 = (0..bins)
                .map(|k| f64::from(filters[m * bins + k]) * power[k])
                .sum();
            let expected = ((energy.max(1e-10).log10() as f32).max(floor) + 4.0) / 4.0;
            assert!(
                (frame[m] - expected).abs() < 1e-3,
                "band {m}: {} vs {expected}",
                frame[m]
            );
        }
    }

    #[test]
    fn the_scale_round_trips_and_bends_at_one_kilohertz() {
        for hz in [0.0, 300.0, 999.0, 1000.0, 4000.0, 8000.0] {
            assert!((mel_to_hz(hz_to_mel(hz)) - hz).abs() < 1e-6, "{hz}");
        }
        assert!((hz_to_mel(1000.0) - 15.0).abs() < 1e-9);
    }

    #[test]
    fn filters_are_triangles_of_unit_area_covering_the_band() {
        let (n_fft, n_mels) = (400, 80);
        let f = filters(16_000, n_fft, n_mels);
        let bins = n_fft / 2 + 1;
        assert_eq!(f.len(), n_mels * bins);
        // The first filter peaks in the lowest bins; the last one near 8 kHz.
        let peak = |m: usize| {
            (0..bins)
                .max_by(|&a, &b| f[m * bins + a].total_cmp(&f[m * bins + b]))
                .unwrap_or(0)
        };
        assert!(peak(0) <= 2, "{}", peak(0));
        assert!(peak(n_mels - 1) >= bins - 10, "{}", peak(n_mels - 1));
        // Slaney normalisation: every triangle has unit area (height 2 / its width in Hz).
        // Sampled at the 40 Hz bins, the sum is within 10 % of it once a filter spans a few bins.
        let spacing = 8000.0 / (bins - 1) as f32;
        for m in 10..n_mels {
            let area: f32 = f[m * bins..(m + 1) * bins].iter().sum::<f32>() * spacing;
            assert!((area - 1.0).abs() < 0.1, "filter {m} has area {area}");
        }
        assert!(f.iter().all(|&w| w >= 0.0));
    }
}
