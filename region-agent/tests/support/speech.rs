//! Speech for the voice-activity tests: sentences spoken by Debian's `espeak-ng` (installed
//! by `scripts/bootstrap`) at its 22 050 Hz, resampled to 16 kHz with a windowed-sinc filter.

use std::process::Command;

/// Speaks `text` with espeak-ng and returns its WAV bytes (22 050 Hz mono).
pub fn espeak_wav(text: &str) -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("speech.wav");
    let output = Command::new("espeak-ng")
        .args(["-v", "en", "-s", "150", "-w"])
        .arg(&path)
        .arg(text)
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run espeak-ng ({e}); scripts/bootstrap installs it (apt espeak-ng)")
        });
    assert!(
        output.status.success(),
        "espeak-ng failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    std::fs::read(&path).unwrap()
}

/// Speaks `text` and returns its samples at `rate` Hz.
pub fn speak(text: &str, rate: usize) -> Vec<f32> {
    let wav = espeak_wav(text);
    let mut reader = hound::WavReader::new(std::io::Cursor::new(wav)).unwrap();
    let spec = reader.spec();
    assert_eq!(spec.channels, 1);
    let samples: Vec<f32> = reader
        .samples::<i16>()
        .map(|s| f32::from(s.unwrap()) / 32768.0)
        .collect();
    resample(&samples, spec.sample_rate as usize, rate)
}

/// Windowed-sinc (Hann, 16 zero crossings) resampling, low-passed at the lower Nyquist.
pub fn resample(input: &[f32], from: usize, to: usize) -> Vec<f32> {
    const HALF: f64 = 16.0;
    let ratio = to as f64 / from as f64;
    let cutoff = ratio.min(1.0);
    let out_len = (input.len() as f64 * ratio).floor() as usize;
    (0..out_len)
        .map(|n| {
            let t = n as f64 / ratio; // position in input samples
            let lo = (t - HALF / cutoff).ceil().max(0.0) as usize;
            let hi = ((t + HALF / cutoff).floor() as usize).min(input.len() - 1);
            let mut acc = 0.0;
            for (k, &x) in input.iter().enumerate().take(hi + 1).skip(lo) {
                let d = (t - k as f64) * cutoff;
                let sinc = if d.abs() < 1e-9 {
                    1.0
                } else {
                    (std::f64::consts::PI * d).sin() / (std::f64::consts::PI * d)
                };
                let hann = 0.5 + 0.5 * (std::f64::consts::PI * d / HALF).cos();
                acc += f64::from(x) * sinc * hann * cutoff;
            }
            acc as f32
        })
        .collect()
}
