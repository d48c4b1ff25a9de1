//! Video upscaling ×2 on CPU with the real ESRGAN-slim ×2 weights: an 8-frame 64×64
//! animation with one frame per network call and with four, and the cold start.
//!
//! Weights are fetched once with `scripts/fetch-models` by the test kit
//! (`testkit::weights`: into `$MERIDIAN_MODELS_DIR`, else a cache under the target dir).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;
use std::path::PathBuf;
use std::time::Duration;

use candle_core::Device;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use image::{Rgba, RgbaImage};
use region_agent::models::animation::{Animation, Frame, FrameDelay, encode_apng};
use region_agent::models::video_upscale::VideoUpscaler;

fn weights() -> PathBuf {
    testkit::weights::esrgan_slim().join("x2.safetensors")
}

fn animation() -> Animation {
    Animation {
        frames: (0..8u32)
            .map(|t| Frame {
                image: RgbaImage::from_fn(64, 64, |x, y| {
                    let v = ((x * 7 + y * 3 + t * 9) % 256) as u8;
                    Rgba([
                        v,
                        (x * 4) as u8,
                        if (x / 8 + y / 8 + t).is_multiple_of(2) {
                            30
                        } else {
                            220
                        },
                        255,
                    ])
                }),
                delay: FrameDelay::from_ms(40),
            })
            .collect(),
        plays: 0,
    }
}

fn bench_video(c: &mut Criterion) {
    let path = weights();
    let input = animation();
    let encoded = encode_apng(&input).unwrap();
    let model = VideoUpscaler::load(&path, &Device::Cpu).unwrap();
    let mut group = c.benchmark_group("video_upscale_x2_cpu");
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(20));
    group.throughput(Throughput::Elements(input.frames.len() as u64));
    for frames_per_batch in [1, 4] {
        let model = model.clone().with_frames_per_batch(frames_per_batch);
        group.bench_function(
            format!("8x64x64_frames_per_batch_{frames_per_batch}"),
            |b| b.iter(|| model.upscale(black_box(&input)).unwrap()),
        );
    }
    group.bench_function("8x64x64_apng_in_out", |b| {
        b.iter(|| model.upscale_encoded(black_box(&encoded)).unwrap())
    });
    group.throughput(Throughput::Elements(1));
    group.bench_function("cold_start", |b| {
        b.iter(|| VideoUpscaler::load(black_box(&path), &Device::Cpu).unwrap())
    });
    group.finish();
}

criterion_group!(benches, bench_video);
criterion_main!(benches);
