//! Silero VAD with the real weights of the PyPI package `silero-vad`, fetched by
//! `scripts/fetch-models` (into `$MERIDIAN_MODELS_DIR`, else a cache under the target dir)
//! when not present, on speech spoken by Debian's `espeak-ng` (installed by
//! `scripts/bootstrap`). These tests never skip: without pip, PyPI or espeak-ng they fail and
//! say why.
//!
//! espeak-ng speaks at 22 050 Hz; the test resamples to 16 kHz with a windowed-sinc filter,
//! places sentences between stretches of silence at known times and checks that the
//! segments cover the speech and nothing else.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::sync::OnceLock;

use candle_core::Device;
use region_agent::models::audio_io::{AudioInputError, encode_wav_mono_i16};
use region_agent::models::silero_vad::{
    DetectError, SAMPLE_RATE, SegmentParams, SileroVad, SpeechSegment,
};

use support::speech::espeak_wav;

const SR: usize = SAMPLE_RATE as usize;

/// The model, its weights fetched once per test process.
fn model() -> &'static SileroVad {
    static MODEL: OnceLock<SileroVad> = OnceLock::new();
    MODEL.get_or_init(|| {
        SileroVad::load(&support::fetch_models("silero-vad"), &Device::Cpu)
            .unwrap_or_else(|e| panic!("{e}"))
    })
}

/// Speaks `text` and returns 16 kHz samples.
fn speak(text: &str) -> Vec<f32> {
    support::speech::speak(text, SR)
}

/// Where the voiced part of a clip is: from the first to the last 10 ms frame whose RMS is
/// over 1 % of full scale, in samples.
fn voiced_extent(clip: &[f32]) -> (usize, usize) {
    let frame = SR / 100;
    let loud: Vec<usize> = clip
        .chunks(frame)
        .enumerate()
        .filter(|(_, c)| (c.iter().map(|x| x * x).sum::<f32>() / c.len() as f32).sqrt() > 0.01)
        .map(|(i, _)| i)
        .collect();
    let first = *loud.first().expect("espeak-ng produced only silence");
    let last = *loud.last().unwrap();
    (first * frame, ((last + 1) * frame).min(clip.len()))
}

fn seconds(samples: usize) -> f64 {
    samples as f64 / SR as f64
}

fn covered(segments: &[SpeechSegment], from_s: f64, to_s: f64) -> f64 {
    segments
        .iter()
        .map(|s| (s.end_s.min(to_s) - s.start_s.max(from_s)).max(0.0))
        .sum()
}

#[test]
fn spoken_sentences_between_silences_are_found_and_nothing_else() {
    let first = speak("The quick brown fox jumps over the lazy dog.");
    let second = speak("Meridian runs media models in every region.");
    // 1 s of silence, the first sentence, 2 s of silence, the second, 1 s of silence.
    let mut audio = vec![0.0f32; SR];
    let mut spoken = Vec::new();
    for (i, clip) in [&first, &second].into_iter().enumerate() {
        let (a, b) = voiced_extent(clip);
        spoken.push((seconds(audio.len() + a), seconds(audio.len() + b)));
        audio.extend_from_slice(clip);
        audio.extend(std::iter::repeat_n(0.0, if i == 0 { 2 * SR } else { SR }));
    }
    let wav = encode_wav_mono_i16(&audio, SAMPLE_RATE).unwrap();
    let segments = model().detect_wav(&wav, &SegmentParams::default()).unwrap();
    eprintln!("spoken at {spoken:?}; segments {segments:?}");

    assert!(!segments.is_empty(), "no speech found in {spoken:?}");
    for &(from, to) in &spoken {
        let share = covered(&segments, from, to) / (to - from);
        assert!(
            share > 0.9,
            "speech at {from:.2}–{to:.2} s is only {:.0} % covered by {segments:?}",
            share * 100.0
        );
    }
    // Every segment lies on spoken audio, give or take the padding and the model's reaction
    // time: none starts or ends in the middle of a silence.
    for s in &segments {
        let near_speech = spoken
            .iter()
            .any(|&(from, to)| s.start_s >= from - 0.3 && s.end_s <= to + 0.4);
        assert!(
            near_speech,
            "segment {s:?} lies outside the speech {spoken:?}"
        );
    }
    // The two sentences, 2 s apart, are not merged.
    assert!(
        covered(&segments, spoken[0].1 + 0.5, spoken[1].0 - 0.5) == 0.0,
        "the silence between the sentences is marked as speech: {segments:?}"
    );
}

#[test]
fn silence_has_no_speech() {
    let wav = encode_wav_mono_i16(&vec![0.0; 3 * SR], SAMPLE_RATE).unwrap();
    let segments = model().detect_wav(&wav, &SegmentParams::default()).unwrap();
    assert!(segments.is_empty(), "silence gave {segments:?}");
}

#[test]
fn white_noise_has_no_speech() {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let noise: Vec<f32> = (0..3 * SR)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            ((x >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 0.6
        })
        .collect();
    let wav = encode_wav_mono_i16(&noise, SAMPLE_RATE).unwrap();
    let probs = model().speech_probabilities(&noise).unwrap();
    let segments = model().detect_wav(&wav, &SegmentParams::default()).unwrap();
    assert!(
        segments.is_empty(),
        "white noise gave {segments:?} (max probability {:?})",
        probs.iter().copied().fold(0.0f32, f32::max)
    );
}

#[test]
fn espeak_output_at_22050_hz_is_refused_with_the_rate_in_the_error() {
    let wav = espeak_wav("Hello.");
    let err = model()
        .detect_wav(&wav, &SegmentParams::default())
        .unwrap_err();
    assert!(
        matches!(
            err,
            DetectError::Input(AudioInputError::WrongSampleRate {
                found: 22_050,
                expected: 16_000
            })
        ),
        "{err}"
    );
    assert!(err.to_string().contains("22050 Hz"), "{err}");
}
