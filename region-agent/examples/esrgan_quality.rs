//! How close ESRGAN-slim's ×2 and ×4 come to an original image, against bicubic and bilinear
//! upscaling of the same input: each image given is cropped to a multiple of the scale,
//! downscaled with bicubic filtering (Catmull-Rom), upscaled again by the model (tiled, as the
//! agent runs it), by bicubic and by bilinear interpolation, and each result's PSNR against
//! the original is printed (RGB, ignoring a frame of `scale` pixels, as the real-weights tests
//! do) as a Markdown table row.
//!
//! ```sh
//! cargo run --release -p region-agent --example esrgan_quality -- IMAGE...
//! ```
//!
//! Standard test images (e.g. `astronaut.png`, `coffee.png`, `chelsea.png`) ship in the
//! `skimage/data` folder of scikit-image's wheel (`pip download scikit-image --no-deps`, then
//! unzip); they are read from where they are, never copied into this repository.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

use std::path::Path;

use candle_core::Device;
use image::RgbImage;
use image::imageops::{FilterType, crop_imm, resize};
use region_agent::models::esrgan::Esrgan;

/// PSNR in dB over all channels, ignoring a `border`-pixel frame.
fn psnr(a: &RgbImage, b: &RgbImage, border: u32) -> f64 {
    let (w, h) = a.dimensions();
    let (mut sum, mut n) = (0.0f64, 0u64);
    for y in border..h - border {
        for x in border..w - border {
            for k in 0..3 {
                let d = f64::from(a.get_pixel(x, y)[k]) - f64::from(b.get_pixel(x, y)[k]);
                sum += d * d;
                n += 1;
            }
        }
    }
    10.0 * (255.0f64 * 255.0 / (sum / n as f64)).log10()
}

fn main() {
    let dir = testkit::weights::esrgan_slim();
    let models: Vec<(u32, Esrgan)> = [2u32, 4]
        .into_iter()
        .map(|s| {
            let path = dir.join(format!("x{s}.safetensors"));
            (s, Esrgan::load(&path, &Device::Cpu).unwrap())
        })
        .collect();
    println!("| image | scale | ESRGAN-slim | bicubic | bilinear |");
    println!("| --- | --- | --- | --- | --- |");
    for path in std::env::args().skip(1) {
        let original = image::open(&path).unwrap().to_rgb8();
        let name = Path::new(&path).file_name().unwrap().to_string_lossy();
        for (s, model) in &models {
            let (w, h) = (original.width() / s * s, original.height() / s * s);
            let original = crop_imm(&original, 0, 0, w, h).to_image();
            let small = resize(&original, w / s, h / s, FilterType::CatmullRom);
            let upscaled = model.upscale(&small).unwrap();
            let bicubic = resize(&small, w, h, FilterType::CatmullRom);
            let bilinear = resize(&small, w, h, FilterType::Triangle);
            println!(
                "| {name} {w}×{h} | ×{s} | {:.2} dB | {:.2} dB | {:.2} dB |",
                psnr(&upscaled, &original, *s),
                psnr(&bicubic, &original, *s),
                psnr(&bilinear, &original, *s),
            );
        }
    }
}
