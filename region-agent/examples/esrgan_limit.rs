//! Times ESRGAN-slim on the CPU at its default size limit: one run of the largest input
//! accepted ([`DEFAULT_MAX_INPUT_PIXELS`], a square) ×2 and ×4, or of a square of `SIDE`
//! pixels, the tiles batched as the agent runs them (or as `WINDOW` and `BATCH` say), and
//! prints the wall time and the process's peak resident memory.
//!
//! ```sh
//! cargo run --release -p region-agent --example esrgan_limit [-- SCALE [SIDE [WINDOW BATCH]]]
//! ```
//!
//! Weights come from the test kit (`testkit::weights`, as the benches and tests find them).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

use std::time::Instant;

use candle_core::Device;
use image::{Rgb, RgbImage};
use region_agent::models::esrgan::tiling::Tiling;
use region_agent::models::esrgan::{DEFAULT_MAX_INPUT_PIXELS, Esrgan};
use region_agent::models::image_io::InputLimits;

/// Peak resident memory of this process so far, from `/proc/self/status`, in MiB.
fn peak_rss_mib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024)
}

fn main() {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .map(|a| a.parse().expect("arguments are numbers"))
        .collect();
    let scales = match args.first() {
        Some(scale) => vec![*scale],
        None => vec![2, 4],
    };
    let dir = testkit::weights::esrgan_slim();
    for scale in scales {
        let mut model =
            Esrgan::load(&dir.join(format!("x{scale}.safetensors")), &Device::Cpu).unwrap();
        if let [_, _, window, batch] = args[..] {
            let tiling = Tiling::new(model.config(), window, batch);
            model = model.with_tiling(tiling);
        }
        let side = args
            .get(1)
            .map_or(DEFAULT_MAX_INPUT_PIXELS.isqrt() as u32, |side| *side as u32);
        let square = u64::from(side) * u64::from(side);
        model = model.with_limits(InputLimits::for_output(
            square * (scale * scale) as u64,
            scale as u32,
        ));
        let image = RgbImage::from_fn(side, side, |x, y| {
            Rgb([
                (x % 256) as u8,
                (y % 256) as u8,
                ((x / 7 + y / 5) % 256) as u8,
            ])
        });
        let started = Instant::now();
        let output = model.upscale(&image).unwrap();
        let elapsed = started.elapsed();
        println!(
            "x{scale}: {side}x{side} -> {}x{} in {:.1} s ({:?}); peak RSS {} MiB",
            output.width(),
            output.height(),
            elapsed.as_secs_f64(),
            model.tiling(),
            peak_rss_mib().map_or("?".to_owned(), |m| m.to_string()),
        );
    }
}
