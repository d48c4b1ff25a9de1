//! Silero VAD on CPU with the real weights: 10 s of audio alone, four 10 s audios one after
//! another and as one batch (every 32 ms window step runs the four streams together), and
//! the cold start (memory-map the safetensors file and build the network).
//!
//! Weights are fetched once with `scripts/fetch-models` by the test kit
//! (`testkit::weights`: into `$MERIDIAN_MODELS_DIR`, else a cache under the target dir).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;
use std::path::PathBuf;
use std::time::Duration;

use candle_core::Device;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use region_agent::models::silero_vad::{SegmentParams, SileroVad};

fn model_dir() -> PathBuf {
    testkit::weights::silero_vad()
}

/// 10 s of a tone that comes and goes, with a little noise: something to score.
fn audio(seed: u32) -> Vec<f32> {
    let mut x = seed.max(1);
    (0..160_000)
        .map(|i| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            let t = i as f32 / 16_000.0;
            let on = if (t as u32 + seed).is_multiple_of(2) {
                0.3
            } else {
                0.0
            };
            on * (t * 220.0 * std::f32::consts::TAU).sin()
                + (x as f32 / u32::MAX as f32 - 0.5) * 0.02
        })
        .collect()
}

fn bench_silero(c: &mut Criterion) {
    let dir = model_dir();
    let model = SileroVad::load(&dir, &Device::Cpu).unwrap();
    let audios: Vec<Vec<f32>> = (1..=4).map(audio).collect();
    let refs: Vec<&[f32]> = audios.iter().map(Vec::as_slice).collect();

    let mut group = c.benchmark_group("silero_vad_cpu");
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(10));
    group.throughput(Throughput::Elements(1));
    group.bench_function("detect_10s", |b| {
        b.iter(|| {
            model
                .detect(black_box(&audios[0]), &SegmentParams::default())
                .unwrap()
        })
    });
    group.throughput(Throughput::Elements(4));
    group.bench_function("4x10s_unbatched", |b| {
        b.iter(|| {
            for a in &refs {
                black_box(model.speech_probabilities(a).unwrap());
            }
        })
    });
    group.bench_function("4x10s_batched", |b| {
        b.iter(|| black_box(model.speech_probabilities_batch(&refs).unwrap()))
    });
    group.throughput(Throughput::Elements(1));
    group.bench_function("cold_start", |b| {
        b.iter(|| SileroVad::load(black_box(&dir), &Device::Cpu).unwrap())
    });
    group.finish();
}

criterion_group!(benches, bench_silero);
criterion_main!(benches);
