//! Video upscaling ×2 with the real ESRGAN-slim ×2 weights (fetched and converted by
//! `scripts/fetch-models`, like `esrgan_real_weights.rs`; never skipped).
//!
//! A small generated animation (a moving disc, a sweeping bar and text-like strokes over
//! gradients) is downscaled frame by frame, encoded as APNG or GIF, upscaled through the
//! public bytes-in, bytes-out call, and decoded again as a viewer would: the frame count, the
//! timing and the loop count must survive, every frame must be twice the size, and every
//! frame must come closer to the original than bilinear upscaling does (PSNR).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::OnceLock;

use candle_core::Device;
use image::codecs::gif::GifEncoder;
use image::imageops::{FilterType, resize};
use image::{Rgb, RgbImage, RgbaImage};
use region_agent::models::animation::{
    Animation, AnimationError, AnimationLimits, Frame, FrameDelay, decode_animation, encode_apng,
};
use region_agent::models::video_upscale::{VideoUpscaleError, VideoUpscaler};

fn upscaler() -> &'static VideoUpscaler {
    static MODEL: OnceLock<VideoUpscaler> = OnceLock::new();
    MODEL.get_or_init(|| {
        let path = testkit::weights::esrgan_slim().join("x2.safetensors");
        VideoUpscaler::load(&path, &Device::Cpu).unwrap_or_else(|e| panic!("{e}"))
    })
}

/// Frame `t` of the scene at `size` × `size`, anti-aliased by 4×4 supersampling.
fn scene(size: u32, t: u32) -> RgbImage {
    const SS: u32 = 4;
    let s = size as f32;
    let shade = |x: f32, y: f32| -> [f32; 3] {
        let mut c = [
            40.0 + 150.0 * x / s,
            60.0 + 120.0 * y / s,
            180.0 - 90.0 * x / s,
        ];
        let (cx, cy) = (0.25 * s + 0.06 * s * t as f32, 0.4 * s);
        if (x - cx).powi(2) + (y - cy).powi(2) < (0.16 * s).powi(2) {
            c = [220.0, 60.0, 40.0];
        }
        let bar = 0.1 * s + 0.05 * s * t as f32;
        if (x - bar - 0.4 * y).abs() < 0.03 * s {
            c = [20.0, 20.0, 30.0];
        }
        // Text-like strokes: a row of 2-pixel-wide "glyphs".
        let (gx, gy) = (x - 0.1 * s, y - 0.7 * s);
        if gx > 0.0 && gx < 0.8 * s && gy > 0.0 && gy < 0.15 * s {
            let cell = 0.08 * s;
            let lx = gx % cell / cell;
            let glyph = (gx / cell) as u32 % 3;
            let ink = match glyph {
                0 => lx < 0.25,
                1 => (lx - 0.5).abs() < 0.12 || gy < 0.03 * s,
                _ => lx > 0.6 && lx < 0.85 || (gy - 0.07 * s).abs() < 0.015 * s,
            };
            if ink {
                c = [250.0, 250.0, 240.0];
            }
        }
        c
    };
    RgbImage::from_fn(size, size, |px, py| {
        let mut acc = [0.0f32; 3];
        for sy in 0..SS {
            for sx in 0..SS {
                let c = shade(
                    px as f32 + (sx as f32 + 0.5) / SS as f32,
                    py as f32 + (sy as f32 + 0.5) / SS as f32,
                );
                for k in 0..3 {
                    acc[k] += c[k];
                }
            }
        }
        Rgb(acc.map(|v| (v / (SS * SS) as f32).round() as u8))
    })
}

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

fn rgba(image: &RgbImage) -> RgbaImage {
    image::DynamicImage::ImageRgb8(image.clone()).to_rgba8()
}

fn rgb(image: &RgbaImage) -> RgbImage {
    image::DynamicImage::ImageRgba8(image.clone()).to_rgb8()
}

const SIZE: u32 = 96;
const FRAMES: u32 = 6;

fn delay(t: u32) -> FrameDelay {
    // 40, 50, 60 … ms: each frame's timing is different, so a shuffle would show.
    FrameDelay::from_ms(40 + 10 * t)
}

#[test]
fn apng_frames_timing_and_quality_survive_upscaling() {
    let originals: Vec<RgbImage> = (0..FRAMES).map(|t| scene(SIZE, t)).collect();
    let small: Vec<RgbImage> = originals
        .iter()
        .map(|f| resize(f, SIZE / 2, SIZE / 2, FilterType::CatmullRom))
        .collect();
    let input = Animation {
        frames: small
            .iter()
            .enumerate()
            .map(|(t, f)| Frame {
                image: rgba(f),
                delay: delay(t as u32),
            })
            .collect(),
        plays: 0,
    };
    let output_bytes = upscaler()
        .upscale_encoded(&encode_apng(&input).unwrap())
        .unwrap();

    // Decode as a viewer would: with the `image` crate's APNG decoder.
    let output = decode_animation(&output_bytes, &AnimationLimits::default()).unwrap();
    assert_eq!(output.frames.len(), FRAMES as usize);
    assert_eq!(output.plays, 0);
    for (t, frame) in output.frames.iter().enumerate() {
        assert_eq!(frame.image.dimensions(), (SIZE, SIZE), "frame {t}");
        assert_eq!(frame.delay.as_ms(), delay(t as u32).as_ms(), "frame {t}");
        let model = rgb(&frame.image);
        let bilinear = resize(&small[t], SIZE, SIZE, FilterType::Triangle);
        let (p_model, p_bilinear) = (
            psnr(&model, &originals[t], 2),
            psnr(&bilinear, &originals[t], 2),
        );
        eprintln!("frame {t}: PSNR model {p_model:.2} dB, bilinear {p_bilinear:.2} dB");
        assert!(
            p_model > p_bilinear,
            "frame {t}: model PSNR {p_model:.2} dB does not beat bilinear {p_bilinear:.2} dB"
        );
    }
}

#[test]
fn gif_input_becomes_an_apng_with_the_gif_timing() {
    let mut gif = Vec::new();
    {
        let mut encoder = GifEncoder::new(&mut gif);
        for t in 0..3 {
            let frame = rgba(&resize(&scene(64, t), 32, 32, FilterType::CatmullRom));
            let d = delay(t);
            let d = image::Delay::from_numer_denom_ms(d.numer_ms, d.denom);
            encoder
                .encode_frame(image::Frame::from_parts(frame, 0, 0, d))
                .unwrap();
        }
    }
    let output = upscaler().upscale_encoded(&gif).unwrap();
    assert_eq!(
        image::guess_format(&output).unwrap(),
        image::ImageFormat::Png
    );
    let decoded = decode_animation(&output, &AnimationLimits::default()).unwrap();
    assert_eq!(decoded.frames.len(), 3);
    for (t, frame) in decoded.frames.iter().enumerate() {
        assert_eq!(frame.image.dimensions(), (64, 64));
        assert_eq!(frame.delay.as_ms(), delay(t as u32).as_ms());
    }
}

#[test]
fn animations_over_the_limits_are_refused_with_the_limit_in_the_error() {
    let frame = |_| Frame {
        image: rgba(&scene(300, 0)),
        delay: FrameDelay::from_ms(50),
    };
    let big = Animation {
        frames: (0..2).map(frame).collect(),
        plays: 0,
    };
    let err = upscaler()
        .upscale_encoded(&encode_apng(&big).unwrap())
        .unwrap_err();
    assert!(
        matches!(
            err,
            VideoUpscaleError::Animation(AnimationError::FrameTooLarge { width: 300, .. })
        ),
        "{err}"
    );
    assert!(err.to_string().contains("300x300"), "{err}");

    let limits = AnimationLimits::default();
    let long = Animation {
        frames: (0..=limits.max_frames)
            .map(|_| Frame {
                image: RgbaImage::new(4, 4),
                delay: FrameDelay::from_ms(10),
            })
            .collect(),
        plays: 0,
    };
    let err = upscaler()
        .upscale_encoded(&encode_apng(&long).unwrap())
        .unwrap_err();
    assert!(err.to_string().contains("more than 120 frames"), "{err}");
}
