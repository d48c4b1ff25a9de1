//! The text-to-image pipeline on CPU with the pipeline test model (toy networks, seeded
//! random weights: this measures the pipeline's overhead and scaling, not a real model's
//! speed): one 64×64 image in 4 steps, four of them one after another and as one batch, and
//! the cold start (build the networks and their weights).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;
use std::time::Duration;

use candle_core::Device;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use region_agent::models::tiny_sd::{Request, TextToImage};

fn bench_tiny_sd(c: &mut Criterion) {
    let model = TextToImage::pipeline_test(1, &Device::Cpu).unwrap();
    let requests: Vec<Request> = (0..4)
        .map(|i| Request::new(format!("a test prompt number {i}"), 4, i))
        .collect();
    let mut group = c.benchmark_group("tiny_sd_pipeline_test_model_cpu");
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(10));
    group.throughput(Throughput::Elements(1));
    group.bench_function("64x64_4_steps", |b| {
        b.iter(|| model.generate(black_box(&requests[0])).unwrap())
    });
    group.throughput(Throughput::Elements(4));
    group.bench_function("4x64x64_unbatched", |b| {
        b.iter(|| {
            for r in &requests {
                black_box(model.generate(r).unwrap());
            }
        })
    });
    group.bench_function("4x64x64_batched", |b| {
        b.iter(|| model.generate_batch(black_box(&requests)).unwrap())
    });
    group.throughput(Throughput::Elements(1));
    group.bench_function("cold_start", |b| {
        b.iter(|| TextToImage::pipeline_test(black_box(1), &Device::Cpu).unwrap())
    });
    group.finish();
}

criterion_group!(benches, bench_tiny_sd);
criterion_main!(benches);
