//! ESRGAN-slim with the real weights of `@upscalerjs/esrgan-slim`: fetched and converted by
//! `scripts/fetch-models` through the test kit (into `$MERIDIAN_MODELS_DIR`, else a cache
//! under the target dir) when not present. These tests never skip: without npm they fail and say why.
//!
//! Tiling check: images cut into small tiles (odd sizes, one-pixel strips) give the same
//! output as one untiled pass.
//!
//! Quality check: a synthetic scene (gradients, hard and soft edges, thin strokes like text)
//! is downscaled with bicubic filtering, upscaled with the model and with bilinear
//! interpolation, and the model must come closer to the original (higher PSNR).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;

use candle_core::Device;
use image::imageops::{FilterType, resize};
use image::{Rgb, RgbImage};
use region_agent::models::esrgan::Esrgan;
use region_agent::models::esrgan::tiling::Tiling;

/// The ESRGAN-slim directory, fetched once per test process by the test kit.
fn models_dir() -> PathBuf {
    testkit::weights::esrgan_slim()
}

fn load(scale: usize) -> Esrgan {
    let path = models_dir().join(format!("x{scale}.safetensors"));
    Esrgan::load(&path, &Device::Cpu).unwrap_or_else(|e| panic!("{e}"))
}

/// Deterministic test scene, anti-aliased by 4×4 supersampling.
fn synthetic_scene(size: u32) -> RgbImage {
    const SS: u32 = 4;
    let scene = |x: f32, y: f32| -> [f32; 3] {
        let s = size as f32;
        // Background: two crossing gradients.
        let mut c = [
            40.0 + 150.0 * x / s,
            60.0 + 120.0 * y / s,
            200.0 - 120.0 * (x + y) / (2.0 * s),
        ];
        // A hard-edged disc and a soft one.
        let d = ((x - 0.3 * s).powi(2) + (y - 0.35 * s).powi(2)).sqrt();
        if d < 0.18 * s {
            c = [220.0, 60.0, 40.0];
        }
        let d2 = ((x - 0.72 * s).powi(2) + (y - 0.7 * s).powi(2)).sqrt();
        let w = (-(d2 / (0.12 * s)).powi(2)).exp();
        c = [
            c[0] * (1.0 - w) + 250.0 * w,
            c[1] * (1.0 - w) + 230.0 * w,
            c[2] * (1.0 - w),
        ];
        // A dark bar at an angle.
        if ((x - y * 0.6) - 0.55 * s).abs() < 0.025 * s && y > 0.1 * s && y < 0.5 * s {
            c = [20.0, 20.0, 30.0];
        }
        // Text-like strokes: rows of block "glyphs" 2–3 pixels wide.
        let (gx, gy) = (x - 0.08 * s, y - 0.62 * s);
        if gx > 0.0 && gy > 0.0 && gx < 0.5 * s && gy < 0.26 * s {
            let cell = 0.0625 * s;
            let (cx, cy) = ((gx / cell) as u32, (gy / (1.6 * cell)) as u32);
            let (lx, ly) = (gx % cell / cell, gy % (1.6 * cell) / (1.6 * cell));
            let glyph = (cx * 7 + cy * 13) % 5;
            let stroke = 0.2;
            let ink = match glyph {
                0 => lx < stroke || ly < stroke * 0.7,
                1 => (lx - 0.45).abs() < stroke / 2.0 || ly > 1.0 - stroke * 0.7,
                2 => lx < stroke || lx > 0.8 - stroke && lx < 0.8 || (ly - 0.5).abs() < 0.08,
                3 => (lx - ly * 0.8).abs() < stroke / 1.5,
                _ => ly < stroke * 0.7 || (ly - 0.5).abs() < 0.07 || ly > 0.86 && ly < 0.95,
            };
            if ink && lx < 0.8 && ly < 0.95 {
                c = [15.0, 15.0, 15.0];
            }
        }
        c
    };
    RgbImage::from_fn(size, size, |px, py| {
        let mut acc = [0.0f32; 3];
        for sy in 0..SS {
            for sx in 0..SS {
                let x = px as f32 + (sx as f32 + 0.5) / SS as f32;
                let y = py as f32 + (sy as f32 + 0.5) / SS as f32;
                let c = scene(x, y);
                for k in 0..3 {
                    acc[k] += c[k];
                }
            }
        }
        let n = (SS * SS) as f32;
        Rgb(acc.map(|v| (v / n).round().clamp(0.0, 255.0) as u8))
    })
}

/// PSNR in dB over all channels, ignoring a `border`-pixel frame (as super-resolution
/// evaluations usually do, since neither method sees beyond the edge).
fn psnr(a: &RgbImage, b: &RgbImage, border: u32) -> f64 {
    assert_eq!(a.dimensions(), b.dimensions());
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

fn model_beats_bilinear(scale: usize, size: u32) {
    let model = load(scale);
    assert_eq!(model.scale(), scale);
    let provenance = model.provenance().expect("provenance metadata");
    assert_eq!(provenance.package, "@upscalerjs/esrgan-slim");
    assert_eq!(provenance.license, "MIT");

    let original = synthetic_scene(size);
    let s = scale as u32;
    let small = resize(&original, size / s, size / s, FilterType::CatmullRom);
    let started = std::time::Instant::now();
    let upscaled = model.upscale(&small).unwrap();
    let elapsed = started.elapsed();
    let bilinear = resize(&small, size, size, FilterType::Triangle);
    let bicubic = resize(&small, size, size, FilterType::CatmullRom);
    assert_eq!(upscaled.dimensions(), original.dimensions());

    let border = s;
    let p_model = psnr(&upscaled, &original, border);
    let p_bilinear = psnr(&bilinear, &original, border);
    let p_bicubic = psnr(&bicubic, &original, border);
    eprintln!(
        "ESRGAN-slim ×{scale} ({}@{}): PSNR model {p_model:.2} dB, bilinear {p_bilinear:.2} dB \
         (gain {:+.2} dB), bicubic {p_bicubic:.2} dB; {}×{} → {size}×{size} in {elapsed:.2?}",
        provenance.package,
        provenance.version,
        p_model - p_bilinear,
        size / s,
        size / s,
    );
    assert!(
        p_model > p_bilinear,
        "×{scale}: model PSNR {p_model:.2} dB does not beat bilinear {p_bilinear:.2} dB"
    );
}

#[test]
fn x2_beats_bilinear_on_psnr() {
    model_beats_bilinear(2, 192);
}

#[test]
fn x4_beats_bilinear_on_psnr() {
    model_beats_bilinear(4, 192);
}

/// A 64×64 input has as many pixels a side as the network has feature channels, the shape
/// candle-core 0.9's CPU convolution got wrong (candle issue #3404, fixed in candle 0.11).
#[test]
fn x4_on_a_64x64_input_beats_bilinear_on_psnr() {
    model_beats_bilinear(4, 256);
}

#[test]
fn x3_upscales_to_three_times_the_size() {
    let model = load(3);
    let out = model.upscale(&synthetic_scene(30)).unwrap();
    assert_eq!(out.dimensions(), (90, 90));
}

/// The package ships its fixture image and what its own TF.js model produces for it; the
/// candle network must reproduce those outputs up to 8-bit rounding.
#[test]
fn matches_the_packages_own_outputs_on_its_fixture() {
    let reference = models_dir().join("reference");
    let fixture = image::open(reference.join("fixture.png"))
        .unwrap()
        .to_rgb8();
    for scale in [2, 3, 4] {
        let expected = image::open(reference.join(format!("x{scale}.png")))
            .unwrap()
            .to_rgb8();
        let actual = load(scale).upscale(&fixture).unwrap();
        assert_eq!(actual.dimensions(), expected.dimensions());
        let max_diff = actual
            .as_raw()
            .iter()
            .zip(expected.as_raw())
            .map(|(a, b)| a.abs_diff(*b))
            .max()
            .unwrap();
        let p = psnr(&actual, &expected, 0);
        eprintln!(
            "ESRGAN-slim ×{scale} vs the package's TF.js output: PSNR {p:.1} dB, max |diff| {max_diff}"
        );
        assert!(
            max_diff <= 2,
            "×{scale}: max pixel difference {max_diff} from the TF.js output"
        );
    }
}

/// Upscales `image` in one pass (a window larger than the image) and in tiles of `window`
/// pixels, `batch` per pass, and returns the PSNR between the two and their largest
/// difference.
fn tiled_against_untiled(
    model: &Esrgan,
    image: &RgbImage,
    window: usize,
    batch: usize,
) -> (f64, u8) {
    let (w, h) = image.dimensions();
    let whole = Tiling::new(model.config(), w.max(h) as usize, 1);
    assert_eq!(whole.tiles(w as usize, h as usize).len(), 1);
    let untiled = model.clone().with_tiling(whole).upscale(image).unwrap();
    let tiling = Tiling::new(model.config(), window, batch);
    assert!(tiling.tiles(w as usize, h as usize).len() > 1);
    let tiled = model.clone().with_tiling(tiling).upscale(image).unwrap();
    assert_eq!(tiled.dimensions(), untiled.dimensions());
    let max_diff = tiled
        .as_raw()
        .iter()
        .zip(untiled.as_raw())
        .map(|(a, b)| a.abs_diff(*b))
        .max()
        .unwrap();
    // Identical images have no PSNR; report them as 99 dB.
    let p = if max_diff == 0 {
        99.0
    } else {
        psnr(&tiled, &untiled, 0)
    };
    (p, max_diff)
}

#[test]
fn tiled_and_untiled_runs_agree_within_45_db() {
    let scene = synthetic_scene(192);
    for scale in [2, 4] {
        let model = load(scale);
        // Odd sizes that no window divides, and strips one pixel wide and high.
        for (x, y, w, h) in [(3, 5, 97, 61), (40, 0, 1, 150), (0, 77, 150, 1)] {
            let image = image::imageops::crop_imm(&scene, x, y, w, h).to_image();
            let (p, max_diff) = tiled_against_untiled(&model, &image, 32, 4);
            eprintln!(
                "×{scale} {w}×{h}, 32-pixel tiles: PSNR {p:.1} dB against untiled, max diff {max_diff}"
            );
            assert!(
                p >= 45.0,
                "×{scale} {w}×{h}: PSNR {p:.1} dB, max diff {max_diff}"
            );
        }
    }
}
