//! Decompression bombs and lying headers sent to the agent's image, video and audio models
//! through its API: every one is refused with 422 naming the limit it breaks, before the
//! decoders allocate for it, and the process's peak memory (`VmHWM`) stays bounded. The
//! inputs are written by hand here: GIF blocks, PNG chunks with their CRCs, a zlib stream
//! of zeros, WAV headers.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::io::Cursor;

use base64::Engine as _;
use image::{ImageFormat, RgbImage};
use reqwest::Method;
use serde_json::{Value, json};

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

/// The process's peak resident memory, in bytes (`VmHWM`).
fn peak_rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .expect("VmHWM in /proc/self/status");
    let kib: u64 = line
        .split_whitespace()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap();
    kib * 1024
}

// ---- GIF, block by block ----

/// A GIF with a `canvas` logical screen (two-colour global table) and one image
/// descriptor per `(left, top, width, height)`, each with a few bytes of LZW data.
fn gif(canvas: (u16, u16), frames: &[(u16, u16, u16, u16)]) -> Vec<u8> {
    let mut out = b"GIF89a".to_vec();
    out.extend(canvas.0.to_le_bytes());
    out.extend(canvas.1.to_le_bytes());
    out.extend([0x80, 0, 0, 0, 0, 0, 255, 255, 255]);
    for &(left, top, width, height) in frames {
        out.push(0x2C);
        for v in [left, top, width, height] {
            out.extend(v.to_le_bytes());
        }
        // No local table; LZW code size 2; one sub-block: clear, 0, end.
        out.extend([0x00, 0x02, 0x02, 0x44, 0x01, 0x00]);
    }
    out.push(0x3B);
    out
}

// ---- PNG, chunk by chunk ----

fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in bytes {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

fn chunk(kind: &[u8; 4], data: &[u8]) -> Vec<u8> {
    let mut out = u32::try_from(data.len()).unwrap().to_be_bytes().to_vec();
    let mut body = kind.to_vec();
    body.extend_from_slice(data);
    out.extend_from_slice(&body);
    out.extend(crc32(&body).to_be_bytes());
    out
}

/// A valid 8×8 RGB PNG.
fn small_png() -> Vec<u8> {
    let image = RgbImage::from_fn(8, 8, |x, y| {
        image::Rgb([(x * 30) as u8, (y * 30) as u8, 90])
    });
    let mut out = Vec::new();
    image
        .write_to(&mut Cursor::new(&mut out), ImageFormat::Png)
        .unwrap();
    out
}

/// `png` with `extra` chunks inserted right after its header chunk.
fn with_chunks(png: &[u8], extra: &[Vec<u8>]) -> Vec<u8> {
    let after_ihdr = 8 + 8 + 13 + 4;
    let mut out = png[..after_ihdr].to_vec();
    for c in extra {
        out.extend_from_slice(c);
    }
    out.extend_from_slice(&png[after_ihdr..]);
    out
}

/// `png` with its header's width and height replaced (and the CRC fixed).
fn with_size(png: &[u8], width: u32, height: u32) -> Vec<u8> {
    let mut data = png[16..29].to_vec();
    data[..4].copy_from_slice(&width.to_be_bytes());
    data[4..8].copy_from_slice(&height.to_be_bytes());
    let mut out = png[..8].to_vec();
    out.extend(chunk(b"IHDR", &data));
    out.extend_from_slice(&png[33..]);
    out
}

/// Writes bits least significant first, as deflate does.
#[derive(Default)]
struct Bits {
    out: Vec<u8>,
    acc: u64,
    n: u32,
}

impl Bits {
    fn put(&mut self, value: u64, bits: u32) {
        self.acc |= value << self.n;
        self.n += bits;
        while self.n >= 8 {
            self.out.push(self.acc as u8);
            self.acc >>= 8;
            self.n -= 8;
        }
    }

    /// A Huffman code, most significant bit first.
    fn code(&mut self, code: u64, bits: u32) {
        let reversed = (0..bits).fold(0, |r, i| r | (((code >> i) & 1) << (bits - 1 - i)));
        self.put(reversed, bits);
    }

    fn finish(mut self) -> Vec<u8> {
        if self.n > 0 {
            self.out.push(self.acc as u8);
        }
        self.out
    }
}

/// A zlib stream that inflates to `1 + 258·k` zero bytes (at least `n`): one fixed-Huffman
/// block of a literal zero and then copies of 258 bytes at distance 1, 13 bits each.
fn zlib_zeros(n: usize) -> Vec<u8> {
    let copies = n.div_ceil(258);
    let mut bits = Bits::default();
    bits.put(1, 1); // the final block
    bits.put(1, 2); // fixed Huffman codes
    bits.code(0x30, 8); // literal 0
    for _ in 0..copies {
        bits.code(0xC5, 8); // length 258 (symbol 285)
        bits.code(0, 5); // distance 1
    }
    bits.code(0, 7); // end of block
    let mut out = vec![0x78, 0x01];
    out.extend(bits.finish());
    // Adler-32 of the zeros: a stays 1, b grows by 1 a byte.
    let total = 1 + 258 * copies as u64;
    let adler = ((total % 65_521) << 16) | 1;
    out.extend((adler as u32).to_be_bytes());
    out
}

/// An `iCCP` chunk whose compressed profile inflates to at least `inflated` bytes.
fn iccp(inflated: usize) -> Vec<u8> {
    let mut data = b"bomb\0\0".to_vec();
    data.extend(zlib_zeros(inflated));
    chunk(b"iCCP", &data)
}

/// An APNG of `frames` frames of 8×8 whose `fcTL` chunks declare `frame` (w, h, x, y).
fn apng(frames: u32, frame: (u32, u32, u32, u32)) -> Vec<u8> {
    let png = small_png();
    let mut actl = frames.to_be_bytes().to_vec();
    actl.extend(0u32.to_be_bytes());
    let mut extra = vec![chunk(b"acTL", &actl)];
    for i in 0..frames {
        let mut fctl = i.to_be_bytes().to_vec();
        for v in [frame.0, frame.1, frame.2, frame.3] {
            fctl.extend(v.to_be_bytes());
        }
        fctl.extend([0, 1, 0, 10, 0, 0]);
        extra.push(chunk(b"fcTL", &fctl));
    }
    with_chunks(&png, &extra)
}

// ---- WAV headers ----

/// A 16 kHz PCM WAV header with `channels` and a data chunk declaring `declared` bytes,
/// followed by `carried` bytes of silence.
fn wav(channels: u16, declared: u32, carried: usize) -> Vec<u8> {
    let mut out = b"RIFF".to_vec();
    out.extend(36u32.saturating_add(declared).to_le_bytes());
    out.extend(b"WAVEfmt ");
    out.extend(16u32.to_le_bytes());
    out.extend(1u16.to_le_bytes());
    out.extend(channels.to_le_bytes());
    out.extend(16_000u32.to_le_bytes());
    out.extend((16_000 * 2 * u32::from(channels)).to_le_bytes());
    // The block (2 bytes a channel) does not fit 16 bits past 32767 channels.
    out.extend(channels.saturating_mul(2).to_le_bytes());
    out.extend(16u16.to_le_bytes());
    out.extend(b"data");
    out.extend(declared.to_le_bytes());
    out.extend(vec![0u8; carried]);
    out
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
            "the limit is 1024 pixels a side",
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
            "a WAV of 8 channels",
            VAD,
            "audio",
            wav(8, 1024, 1024),
            "needs mono",
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
