//! ESRGAN-slim ×2 through the scheduler with the real weights: eight same-size 48×48 images
//! queued at once and waited for, with `max_batch = 1` (one forward pass per image) and
//! `max_batch = 8` (stacked into one `[8, 3, 48, 48]` pass). Includes queueing, persistence
//! (fsync) and PNG encoding, as a client of the agent sees it. One CPU slot.
//!
//! Weights are fetched once with `scripts/fetch-models` by the test kit
//! (`testkit::weights`: into `$MERIDIAN_MODELS_DIR`, else a cache under the target dir).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Cursor;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use contract::TenantId;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use image::{ImageFormat, Rgb, RgbImage};
use region_agent::catalog::source;
use region_agent::config::AgentConfig;
use region_agent::gpu::Hardware;
use region_agent::jobs::{JobState, Priority};
use region_agent::scheduler::Scheduler;
use region_agent::serving::Model;
use region_agent::serving::esrgan::EsrganModel;
use serde_json::{Value, json};
use testkit::catalog::{self, Catalog, Region};

const JOBS: usize = 8;

fn models_dir() -> PathBuf {
    testkit::weights::esrgan_slim()
}

fn input() -> Value {
    let image = RgbImage::from_fn(48, 48, |x, y| {
        Rgb([
            (x * 5) as u8,
            (y * 5) as u8,
            if (x / 6 + y / 6) % 2 == 0 { 40 } else { 210 },
        ])
    });
    let mut bytes = Vec::new();
    image
        .write_to(&mut Cursor::new(&mut bytes), ImageFormat::Png)
        .unwrap();
    json!({"image": base64::engine::general_purpose::STANDARD.encode(bytes)})
}

/// The catalog the bench runs under: one reserved CPU slot.
fn catalog() -> String {
    Catalog::new()
        .region(
            Region::new("bench", "eu", (53.35, -6.26), "http://127.0.0.1:9102")
                .pool("cpu", "cpu")
                .reserved(1, 1.0),
        )
        .model(
            catalog::Model::new("meridian/esrgan-x2", "image-to-image", "megapixel", 0.001)
                .gpu_seconds(0.05),
        )
        .toml()
}

fn scheduler(data: &std::path::Path, weights: &std::path::Path, max_batch: usize) -> Scheduler {
    let config = AgentConfig::from_toml(&format!(
        "region = \"bench\"\nedge_token = \"bench-token-0123456789\"\ndata_dir = \"{}\"\n\
         result_retention_s = 3600\ncatalog_file = \"installed-below\"\n\
         [[models]]\nid = \"meridian/esrgan-x2\"\nweights_dir = \"{}\"\nmax_batch = {max_batch}\nqueue_bound = 1000\n",
        data.display(),
        weights.display()
    ))
    .unwrap();
    let model: Arc<dyn Model> = Arc::new(EsrganModel::new("meridian/esrgan-x2", 2, weights));
    let scheduler = Scheduler::start(&config, vec![model], Hardware::cpu()).unwrap();
    let catalog = source::from_toml(&catalog(), &config.region).unwrap();
    scheduler.install_catalog(&catalog).unwrap();
    scheduler
}

/// Queues `JOBS` images and waits until all have completed.
async fn round(scheduler: &Scheduler, input: &Value) {
    let mut ids = Vec::with_capacity(JOBS);
    let tenant = TenantId::new("bench").unwrap();
    for _ in 0..JOBS {
        let record = scheduler
            .submit(
                &tenant,
                "meridian/esrgan-x2",
                Priority::Normal,
                input.clone(),
            )
            .await
            .unwrap();
        ids.push(record.id);
    }
    for id in ids {
        let mut rx = scheduler.watch("bench", &id).unwrap();
        let record = rx.wait_for(|r| r.state.is_final()).await.unwrap().clone();
        assert_eq!(record.state, JobState::Completed);
    }
}

fn bench_batching(c: &mut Criterion) {
    let weights = models_dir();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let input = input();
    let mut group = c.benchmark_group("scheduler_esrgan_x2_48px");
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(20));
    group.throughput(Throughput::Elements(JOBS as u64));
    for max_batch in [1, JOBS] {
        let data = tempfile::tempdir().unwrap();
        let scheduler = scheduler(data.path(), &weights, max_batch);
        runtime.block_on(round(&scheduler, &input)); // load the model once (cold start)
        group.bench_function(format!("{JOBS}_jobs_max_batch_{max_batch}"), |b| {
            b.iter(|| runtime.block_on(round(&scheduler, &input)))
        });
        runtime.block_on(scheduler.stop());
    }
    group.finish();
}

criterion_group!(benches, bench_batching);
criterion_main!(benches);
