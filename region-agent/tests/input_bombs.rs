//! Decompression bombs and lying headers sent to the agent's image, video and audio models
//! through its API: every one is refused with 422 naming the limit it breaks, before the
//! decoders allocate for it, and the process's peak memory (`VmHWM`) stays bounded. The
//! inputs are written by hand (`support::media`): GIF blocks, PNG chunks with their CRCs, a
//! zlib stream of zeros, WAV headers.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

mod support;

use base64::Engine as _;
use image::ImageFormat;
use reqwest::Method;
use serde_json::{Value, json};

use support::media::{
    apng, chunk, gif, iccp, peak_rss, small_png, wav, with_chunks, with_size, zlib_zeros,
};
use support::{Agent, config};

const ESRGAN: &str = "meridian/esrgan-x2";
const VIDEO: &str = "meridian/video-upscale-x2";
const VAD: &str = "meridian/silero-vad";

async fn start(dir: &std::path::Path) -> Agent {
    let esrgan = support::fetch_models("esrgan-slim");
    let vad = support::fetch_models("silero-vad");
    let models = format!(
        "[[models]]\nid = \"{ESRGAN}\"\nweights_dir = \"{e}\"\n\
         [[models]]\nid = \"{VIDEO}\"\nweights_dir = \"{e}\"\n\
         [[models]]\nid = \"{VAD}\"\nweights_dir = \"{v}\"\n",
        e = esrgan.display(),
        v = vad.display()
    );
    let prices = [
        (ESRGAN, "megapixel", 0.01),
        (VIDEO, "megapixel", 0.01),
        (VAD, "audio_second", 0.001),
    ];
    let config = config(dir, &models, "", &prices);
    let models = region_agent::serving::builtin::build(&config).unwrap();
    Agent::start(config, models).await
}

/// `POST /v1/queue/{model}` with `{field: base64(bytes)}`: (status, body).
async fn queue(agent: &Agent, model: &str, field: &str, bytes: &[u8]) -> (u16, Value) {
    let data = base64::engine::general_purpose::STANDARD.encode(bytes);
    let response = agent
        .call(Method::POST, &format!("/v1/queue/{model}"))
        .json(&json!({ "input": { field: data } }))
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// Each bomb: the model, its input field, the bytes, and what the refusal must say.
fn bombs() -> Vec<(
    &'static str,
    &'static str,
    &'static str,
    Vec<u8>,
    &'static str,
)> {
    let png = small_png();
    let ztxt = {
        let mut data = b"Comment\0\0".to_vec();
        data.extend(zlib_zeros(64 << 20));
        chunk(b"zTXt", &data)
    };
    vec![
        (
            "a 65535x65535 GIF frame in a 16x16 canvas",
            VIDEO,
            "video",
            gif((16, 16), &[(0, 0, 65_535, 65_535)]),
            "outside the 16x16 canvas",
        ),
        (
            "a 2048x2048 GIF frame in a 16x16 canvas",
            VIDEO,
            "video",
            gif((16, 16), &[(0, 0, 16, 16), (0, 0, 2048, 2048)]),
            "frame 1 is 2048x2048",
        ),
        (
            "a GIF frame offset past its canvas",
            VIDEO,
            "video",
            gif((16, 16), &[(15, 15, 2, 2)]),
            "outside the 16x16 canvas",
        ),
        (
            "a GIF of 100000 frames of 1x1",
            VIDEO,
            "video",
            gif((1, 1), &vec![(0, 0, 1, 1); 100_000]),
            "more than 120 frames",
        ),
        (
            "a 65535x65535 GIF canvas",
            VIDEO,
            "video",
            gif((65_535, 65_535), &[(0, 0, 1, 1)]),
            "the limit is 512 pixels a side",
        ),
        (
            "a PNG whose colour profile inflates to 256 MiB",
            ESRGAN,
            "image",
            with_chunks(&png, &[iccp(256 << 20)]),
            "over the limit of 65536 bytes",
        ),
        (
            "the same PNG as a video",
            VIDEO,
            "video",
            with_chunks(&png, &[iccp(256 << 20)]),
            "over the limit of 65536 bytes",
        ),
        (
            "a PNG whose text inflates to 64 MiB",
            ESRGAN,
            "image",
            with_chunks(&png, &[ztxt]),
            "over the limit of 65536 bytes",
        ),
        (
            "a PNG header of 65535x65535",
            ESRGAN,
            "image",
            with_size(&png, 65_535, 65_535),
            "the limit is 4096 pixels a side",
        ),
        (
            "an APNG frame larger than its canvas",
            VIDEO,
            "video",
            apng(2, (4096, 4096, 0, 0)),
            "outside the 8x8 canvas",
        ),
        (
            "an APNG of 100000 frames",
            VIDEO,
            "video",
            apng(100_000, (8, 8, 0, 0)),
            "more than 120 frames",
        ),
        (
            "a WAV that declares ten minutes and carries one second",
            VAD,
            "audio",
            wav(1, 16_000 * 2 * 600, 16_000 * 2),
            "declares 19200000 bytes of samples but carries 32000",
        ),
        (
            "a WAV that declares 4 GiB",
            VAD,
            "audio",
            wav(1, 0xFFFF_FF00, 1024),
            "the limit is 600 s",
        ),
        (
            "a WAV of 9 channels",
            VAD,
            "audio",
            wav(9, 1152, 1152),
            "the limit is 8 channels",
        ),
        (
            "a WAV of 65535 channels",
            VAD,
            "audio",
            wav(65_535, 1024, 1024),
            "cannot be decoded as WAV",
        ),
    ]
}

#[tokio::test]
async fn bombs_are_refused_with_422_naming_the_limit_and_memory_stays_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let agent = start(dir.path()).await;
    let bombs = bombs();
    let before = peak_rss();
    let mut wrong = Vec::new();
    for (what, model, field, bytes, says) in &bombs {
        let (status, body) = queue(&agent, model, field, bytes).await;
        let message = body["error"]["message"].as_str().unwrap_or_default();
        if status != 422 || body["error"]["type"] != "invalid_input" || !message.contains(says) {
            wrong.push(format!(
                "{what}: {status} {body} (expected 422 saying {says:?})"
            ));
        }
    }
    let grown = peak_rss().saturating_sub(before);
    println!(
        "{} bad inputs sent; peak RSS grew by {:.1} MiB",
        bombs.len(),
        grown as f64 / f64::from(1 << 20)
    );
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    // The largest bomb inflates to 256 MiB; the JSON bodies, their base64 and the decoded
    // bytes are a few MiB.
    assert!(grown < 64 << 20, "peak RSS grew by {grown} bytes");
    agent.stop().await;
}

#[tokio::test]
async fn a_small_colour_profile_is_dropped_unread_and_the_image_is_accepted() {
    let dir = tempfile::tempdir().unwrap();
    let agent = start(dir.path()).await;
    // 4 MiB of profile in about 25 KiB: under the metadata limit, never inflated.
    let png = with_chunks(&small_png(), &[iccp(4 << 20)]);
    let (status, body) = queue(&agent, ESRGAN, "image", &png).await;
    assert_eq!(status, 202, "{body}");
    let id = body["request_id"].as_str().unwrap().to_owned();
    agent.wait_status(&id, "COMPLETED").await;
    let response = agent
        .call(Method::GET, &format!("/v1/requests/{id}"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let result: Value = response.json().await.unwrap();
    assert_eq!(result["output"]["image"]["content_type"], "image/png");
    agent.stop().await;
}

#[test]
fn the_hand_written_bombs_are_valid_where_they_must_be() {
    // The zlib stream really inflates to zeros (checked with the png crate's own decoder:
    // a PNG of 16 rows of 3 zero bytes each, filter 0, is all black).
    let rows = zlib_zeros(16 * 3);
    let mut ihdr = 16u32.to_be_bytes().to_vec();
    ihdr.extend(1u32.to_be_bytes());
    ihdr.extend([8, 0, 0, 0, 0]); // 8-bit greyscale
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    png.extend(chunk(b"IHDR", &ihdr));
    png.extend(chunk(b"IDAT", &rows));
    png.extend(chunk(b"IEND", &[]));
    // 16×1 greyscale needs 17 bytes; the stream has more, which the decoder ignores.
    let decoded = image::load_from_memory_with_format(&png, ImageFormat::Png).unwrap();
    assert_eq!(decoded.width(), 16);
    assert!(decoded.to_luma8().pixels().all(|p| p[0] == 0));
    // The APNG and GIF builders' valid forms decode (each GIF frame carries one pixel).
    let frames = region_agent::models::animation::decode_animation(
        &apng(1, (8, 8, 0, 0)),
        &Default::default(),
    );
    assert!(frames.is_ok(), "{frames:?}");
    let frames = region_agent::models::animation::decode_animation(
        &gif((16, 16), &[(0, 0, 1, 1), (4, 4, 1, 1)]),
        &Default::default(),
    );
    assert!(frames.is_ok(), "{frames:?}");
}
