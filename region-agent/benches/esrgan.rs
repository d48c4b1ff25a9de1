//! ESRGAN-slim on CPU with the real weights: ×2 and ×4 on a 128×128 input, the cold start
//! (memory-map the safetensors file and build the network), and ×2 on a 256×256 input cut
//! into tiles of several sizes, run one at a time or batched (`esrgan_tiles`).
//!
//! The largest images (the default limit) take minutes a run on a CPU, too long for
//! criterion's samples: `cargo run --release -p region-agent --example esrgan_limit` times them.
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
use region_agent::models::esrgan::tiling::Tiling;

fn models_dir() -> PathBuf {
    testkit::weights::esrgan_slim()
}

fn input(size: u32) -> RgbImage {
    RgbImage::from_fn(size, size, |x, y| {
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
    let image = input(128);
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

/// One 256×256 image ×2: windows of 64, 128 and 256 pixels (one window: no tiling), one
/// tile per forward pass or four.
fn bench_tiles(c: &mut Criterion) {
    let model = Esrgan::load(&models_dir().join("x2.safetensors"), &Device::Cpu).unwrap();
    let image = input(256);
    let mut group = c.benchmark_group("esrgan_tiles");
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(30));
    for window in [64, 128, 256] {
        for batch in [1, 4] {
            let model = model
                .clone()
                .with_tiling(Tiling::new(model.config(), window, batch));
            group.bench_function(format!("x2_256x256_window{window}_batch{batch}"), |b| {
                b.iter(|| model.upscale(black_box(&image)).unwrap())
            });
        }
    }
    group.finish();
}

criterion_group!(benches, bench_esrgan, bench_tiles);
criterion_main!(benches);
