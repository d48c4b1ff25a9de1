//! ESRGAN-slim on CPU with the real weights: ×2 and ×4 on a 128×128 input, and the cold start
//! (memory-map the safetensors file and build the network).
//!
//! Weights are fetched once with `scripts/fetch-models` by the test kit
//! (`testkit::weights`: into `$MERIDIAN_MODELS_DIR`, else a cache under the target dir).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;
use std::path::PathBuf;
use std::time::Duration;

use candle_core::Device;
use criterion::{Criterion, criterion_group, criterion_main};
use image::{Rgb, RgbImage};
use region_agent::models::esrgan::Esrgan;

fn models_dir() -> PathBuf {
    testkit::weights::esrgan_slim()
}

fn input_128() -> RgbImage {
    RgbImage::from_fn(128, 128, |x, y| {
        let v = ((x * 7 + y * 3) % 256) as u8;
        Rgb([
            v,
            (x * 2) as u8,
            if (x / 8 + y / 8) % 2 == 0 { 30 } else { 220 },
        ])
    })
}

fn bench_esrgan(c: &mut Criterion) {
    let dir = models_dir();
    let image = input_128();
    let mut group = c.benchmark_group("esrgan_cpu");
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(15));
    for scale in [2, 4] {
        let path = dir.join(format!("x{scale}.safetensors"));
        let model = Esrgan::load(&path, &Device::Cpu).unwrap();
        group.bench_function(format!("upscale_128x128_x{scale}"), |b| {
            b.iter(|| model.upscale(black_box(&image)).unwrap())
        });
        group.bench_function(format!("cold_start_x{scale}"), |b| {
            b.iter(|| Esrgan::load(black_box(&path), &Device::Cpu).unwrap())
        });
    }
    group.finish();
}

criterion_group!(benches, bench_esrgan);
criterion_main!(benches);
