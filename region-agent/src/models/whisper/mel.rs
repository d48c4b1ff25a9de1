//! The mel filter bank Whisper's front end expects: triangular filters on the Slaney mel
//! scale (linear below 1 kHz, logarithmic above), each normalised to unit area ("Slaney"
//! normalisation), over the `N_FFT / 2 + 1` frequency bins of a 400-point FFT at 16 kHz —
//! the bank Whisper was trained with. Computed here rather than shipped as a file.

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

#[cfg(test)]
mod tests {
    use super::*;

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
