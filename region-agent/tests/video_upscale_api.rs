//! Video upscaling ×2 served through the agent's API (`meridian/video-upscale-x2`) with the
//! real ESRGAN-slim ×2 weights (fetched and converted by `scripts/fetch-models`; never
//! skipped): GIF in, GIF out and APNG in, APNG out, with the same frames in the same order at
//! twice the size, and animations the model cannot take refused with 4xx, never a 500 (MP4,
//! WebM and MOV: media_formats.rs).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use base64::Engine as _;
use image::codecs::gif::GifEncoder;
use image::{Delay, RgbaImage};
use region_agent::models::animation::{
    Animation, AnimationLimits, Frame, FrameDelay, decode_animation, encode_apng,
};
use reqwest::Method;
use serde_json::{Value, json};

use support::{Agent, config};

const MODEL: &str = "meridian/video-upscale-x2";

async fn start(dir: &std::path::Path) -> Agent {
    let weights = support::fetch_models("esrgan-slim");
    let models = format!(
        "[[models]]\nid = \"{MODEL}\"\nweights_dir = \"{}\"\n",
        weights.display()
    );
    let config = config(dir, &models, "", &[(MODEL, "megapixel", 0.01)]);
    let models = region_agent::serving::builtin::build(&config).unwrap();
    Agent::start(config, models).await
}

fn base64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// `frames` frames of `w`×`h`: a gradient tinted with a colour of its own per frame.
fn clip(w: u32, h: u32, frames: usize) -> Animation {
    const TINTS: [[u8; 3]; 3] = [[200, 40, 40], [40, 200, 40], [40, 40, 200]];
    Animation {
        frames: (0..frames)
            .map(|i| Frame {
                image: RgbaImage::from_fn(w, h, |x, y| {
                    let [r, g, b] = TINTS[i % 3];
                    let shade = ((x + y) * 3) as u8;
                    image::Rgba([r.saturating_add(shade), g, b.saturating_add(shade), 255])
                }),
                delay: FrameDelay::from_ms(40 + 20 * i as u32),
            })
            .collect(),
        plays: 0,
    }
}

fn gif(animation: &Animation) -> Vec<u8> {
    let mut bytes = Vec::new();
    {
        let mut encoder = GifEncoder::new(&mut bytes);
        encoder
            .encode_frames(animation.frames.iter().map(|f| {
                image::Frame::from_parts(
                    f.image.clone(),
                    0,
                    0,
                    Delay::from_numer_denom_ms(f.delay.numer_ms, f.delay.denom),
                )
            }))
            .unwrap();
    }
    bytes
}

fn mean_colour(image: &RgbaImage) -> [f64; 3] {
    let n = f64::from(image.width() * image.height());
    let mut sum = [0.0; 3];
    for p in image.pixels() {
        for c in 0..3 {
            sum[c] += f64::from(p[c]);
        }
    }
    sum.map(|s| s / n)
}

/// Runs `video` (encoded bytes), expecting output of `content_type`, and returns the decoded
/// output and the result.
async fn upscale(agent: &Agent, video: &[u8], content_type: &str) -> (Animation, Value) {
    let response = agent
        .call(Method::POST, &format!("/v1/run/{MODEL}"))
        .json(&json!({"input": {"video": base64(video)}}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let result: Value = response.json().await.unwrap();
    assert_eq!(result["status"], "COMPLETED", "{result}");
    let file = &result["output"]["video"];
    assert_eq!(file["content_type"], content_type, "{result}");
    let response = agent
        .call(Method::GET, file["url"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], content_type);
    let bytes = response.bytes().await.unwrap();
    assert_eq!(bytes.len() as u64, file["bytes"].as_u64().unwrap());
    let limits = AnimationLimits {
        max_side: 4096,
        max_frame_pixels: u64::MAX,
        max_total_pixels: u64::MAX,
        ..AnimationLimits::default()
    };
    (decode_animation(&bytes, &limits).unwrap(), result)
}

#[tokio::test]
async fn gif_and_apng_come_back_in_their_format_with_the_same_frames_at_twice_the_size() {
    let dir = tempfile::tempdir().unwrap();
    let agent = start(dir.path()).await;
    let input = clip(16, 12, 3);
    let inputs = [
        ("APNG", encode_apng(&input).unwrap(), "image/apng"),
        ("GIF", gif(&input), "image/gif"),
    ];
    for (what, bytes, content_type) in inputs {
        assert!(bytes.starts_with(if what == "GIF" { b"GIF8" } else { b"\x89PNG" }));
        let (output, result) = upscale(&agent, &bytes, content_type).await;
        assert_eq!(output.frames.len(), 3, "{what}");
        assert_eq!(output.dimensions(), (32, 24), "{what}");
        for (i, (out, inp)) in output.frames.iter().zip(&input.frames).enumerate() {
            assert_eq!(out.delay.as_ms(), inp.delay.as_ms(), "{what} frame {i}");
            let (a, b) = (mean_colour(&out.image), mean_colour(&inp.image));
            for c in 0..3 {
                assert!(
                    (a[c] - b[c]).abs() < 12.0,
                    "{what} frame {i}: mean colour {a:?}, input {b:?}"
                );
            }
        }
        let units = result["units"].as_f64().unwrap();
        // Output megapixels over all frames.
        assert!((units - 32.0 * 24.0 * 3.0 / 1e6).abs() < 1e-12, "{units}");
        let cost = contract::charge(32.0 * 24.0 * 3.0 / 1e6, 0.01);
        assert_eq!(result["cost_nanos"], cost.0, "{result}");
    }
    agent.stop().await;
}

#[tokio::test]
async fn animations_the_model_cannot_take_are_refused_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let agent = start(dir.path()).await;
    let cases = [
        ("not base64", "%%%".to_owned(), "base64"),
        ("not an image", base64(b"hello world"), "not a GIF"),
        (
            "truncated GIF",
            base64(&gif(&clip(16, 12, 2))[..40]),
            "cannot be decoded",
        ),
        (
            "121 frames",
            base64(&encode_apng(&clip(2, 2, 121)).unwrap()),
            "more than 120 frames",
        ),
        (
            "600 pixels wide",
            base64(&gif(&clip(600, 2, 1))),
            "the limit is 512 pixels a side",
        ),
    ];
    for (what, video, reason) in cases {
        let response = agent
            .call(Method::POST, &format!("/v1/run/{MODEL}"))
            .json(&json!({"input": {"video": video}}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 422, "{what}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["error"]["type"], "invalid_input", "{what}: {body}");
        let message = body["error"]["message"].as_str().unwrap();
        assert!(message.contains(reason), "{what}: {message}");
    }
    let missing = agent
        .call(Method::POST, &format!("/v1/run/{MODEL}"))
        .json(&json!({"input": {"image": base64(&gif(&clip(4, 4, 1)))}}))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 400);
    agent.stop().await;
}
