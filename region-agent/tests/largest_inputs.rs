//! How long the largest input each model's limits allow takes on this machine's CPU, run
//! through the same path as a job (`Model::prepare`, `Model::load`, `LoadedModel::run`) with
//! the real weights. Figures, not checks (tests never assert wall-clock times): ignored by
//! default; `cargo test -p region-agent --test largest_inputs -- --ignored --nocapture
//! --test-threads 1` prints them. docs/design.md ("Input limits") keeps the figures the
//! limits were set from, against the default `timeout_s` of 120 s.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

mod support;

use std::io::Cursor;
use std::time::Instant;

use base64::Engine as _;
use candle_core::Device;
use image::{ImageFormat, Rgba, RgbaImage};
use region_agent::models::animation::{Animation, AnimationLimits, Frame, FrameDelay, encode_apng};
use region_agent::serving::esrgan::EsrganModel;
use region_agent::serving::silero_vad::SileroVadModel;
use region_agent::serving::video_upscale::VideoUpscaleModel;
use region_agent::serving::whisper::{DEFAULT_MAX_SECONDS, WhisperModel};
use region_agent::serving::{Model, StopSignal};
use serde_json::{Value, json};

fn base64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn picture(width: u32, height: u32, t: u32) -> RgbaImage {
    RgbaImage::from_fn(width, height, |x, y| {
        let v = ((x * 7 + y * 3 + t * 9) % 256) as u8;
        let check = if (x / 8 + y / 8 + t).is_multiple_of(2) {
            30
        } else {
            220
        };
        Rgba([v, (x % 256) as u8, check, 255])
    })
}

/// CPU time this process has used (user + system), in seconds (Linux: `/proc/self/stat`,
/// in clock ticks of 1/100 s).
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
    let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..].split(' ').collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    ticks as f64 / 100.0
}

/// Prepares, loads and runs one job; prints and returns the run's seconds. The CPU time it
/// took is printed too: on a shared machine it is steadier than the wall-clock time.
fn time(model: &dyn Model, what: &str, input: &Value) -> f64 {
    let job = model.prepare(input).unwrap();
    let units = job.units;
    let mut loaded = model.load(&Device::Cpu).unwrap();
    let (started, cpu) = (Instant::now(), cpu_seconds());
    let out = loaded.run(vec![job], &StopSignal::never());
    let (seconds, cpu) = (started.elapsed().as_secs_f64(), cpu_seconds() - cpu);
    assert!(out[0].is_ok(), "{:?}", out[0]);
    println!(
        "{}: {what}: {seconds:.1} s, {cpu:.1} s of CPU ({units:.3} units)",
        model.id()
    );
    seconds
}

#[test]
#[ignore = "a measurement of minutes; run with --ignored --nocapture"]
fn esrgan_at_its_largest_input() {
    let weights = testkit::weights::esrgan_slim();
    let side = region_agent::models::esrgan::DEFAULT_MAX_INPUT_PIXELS.isqrt() as u32;
    let mut png = Vec::new();
    image::DynamicImage::ImageRgba8(picture(side, side, 0))
        .to_rgb8()
        .write_to(&mut Cursor::new(&mut png), ImageFormat::Png)
        .unwrap();
    let input = json!({ "image": base64(&png) });
    for scale in [2, 4] {
        let model = EsrganModel::new(&format!("meridian/esrgan-x{scale}"), scale, &weights);
        time(&model, &format!("{side}x{side}"), &input);
    }
}

#[test]
#[ignore = "a measurement of minutes; run with --ignored --nocapture"]
fn video_upscale_at_its_largest_input() {
    let limits = AnimationLimits::default();
    let side = (limits.max_frame_pixels as f64).sqrt() as u32;
    let frames = (limits.max_total_pixels / (u64::from(side) * u64::from(side))) as u32;
    let frames = frames.min(limits.max_frames as u32);
    let video = Animation {
        frames: (0..frames)
            .map(|t| Frame {
                image: picture(side, side, t),
                delay: FrameDelay::from_ms(40),
            })
            .collect(),
        plays: 0,
    };
    let input = json!({ "video": base64(&encode_apng(&video).unwrap()) });
    let model = VideoUpscaleModel::new(
        "meridian/video-upscale-x2",
        &testkit::weights::esrgan_slim(),
    );
    time(&model, &format!("{frames} frames of {side}x{side}"), &input);
}

#[test]
#[ignore = "a measurement of minutes; run with --ignored --nocapture"]
fn silero_vad_at_its_largest_input() {
    let seconds = region_agent::models::audio_io::AudioLimits::VAD_16K.max_seconds;
    let samples: Vec<f32> = (0..16_000 * seconds as usize)
        .map(|i| ((i as f32) * 0.03).sin() * if (i / 16_000) % 3 == 0 { 0.5 } else { 0.01 })
        .collect();
    let wav = region_agent::models::audio_io::encode_wav_mono_i16(&samples, 16_000).unwrap();
    let input = json!({ "audio": base64(&wav) });
    let model = SileroVadModel::new("meridian/silero-vad", &testkit::weights::silero_vad());
    time(&model, &format!("{seconds} s"), &input);
}

#[test]
#[ignore = "a measurement of minutes; run with --ignored --nocapture"]
fn whisper_at_its_largest_input() {
    // Speech from end to end (the decoder's worst case: every window full of words).
    let passage = support::speech::speak(
        "The weather is nice today, so we will walk to the park. Please send the report to \
         the finance team before Friday. The children are playing football in the garden.",
        16_000,
    );
    let samples: Vec<f32> = passage
        .iter()
        .copied()
        .cycle()
        .take(16_000 * DEFAULT_MAX_SECONDS as usize)
        .collect();
    let wav = region_agent::models::audio_io::encode_wav_mono_i16(&samples, 16_000).unwrap();
    let input = json!({ "audio": base64(&wav) });
    let model = WhisperModel::new(
        "meridian/whisper-tiny-en",
        &testkit::weights::whisper_tiny_en(),
    );
    time(
        &model,
        &format!("{DEFAULT_MAX_SECONDS} s of speech"),
        &input,
    );
}
