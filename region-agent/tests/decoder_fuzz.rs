//! Every model's input decoder fed valid PNG, JPEG, GIF, APNG and WAV inputs mutated at
//! random (bytes flipped, cut short, overwritten with huge numbers, spliced; a PNG header or
//! an APNG frame control given huge dimensions with a valid CRC, a GIF frame moved or
//! resized past its canvas, a WAV declaring another length): none panics, whatever decodes
//! is within the limits, and the process's peak memory stays bounded.
//!
//! `MERIDIAN_FUZZ_CASES` sets the cases per decoder (256 by default, a few seconds);
//! README's testing section shows a longer run.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

mod support;

use std::io::Cursor;

use image::codecs::gif::GifEncoder;
use image::{ImageFormat, Rgba, RgbaImage};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use region_agent::models::animation::{
    Animation, AnimationLimits, Frame, FrameDelay, decode_animation, encode_apng,
};
use region_agent::models::audio_io::{AudioLimits, decode_wav_mono, encode_wav_mono_i16};
use region_agent::models::image_io::{InputLimits, decode_rgb};

use support::media::{chunk, peak_rss, small_png};

/// Cases per decoder: `MERIDIAN_FUZZ_CASES`, else 256.
fn cases() -> u32 {
    std::env::var("MERIDIAN_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256)
}

/// One change to an input.
#[derive(Debug, Clone)]
enum Mutation {
    /// XOR a byte (the offset wraps around the input).
    Flip { at: usize, mask: u8 },
    /// Cut the input short.
    Truncate { at: usize },
    /// Overwrite bytes (often a huge number) in place.
    Overwrite { at: usize, bytes: Vec<u8> },
    /// Insert bytes.
    Insert { at: usize, bytes: Vec<u8> },
    /// Copy a stretch of the input to another place.
    Splice { from: usize, len: usize, to: usize },
    /// Give a PNG's header these dimensions, with a valid CRC.
    PngSize { width: u32, height: u32 },
    /// Give an APNG's first frame control these dimensions, with a valid CRC.
    FrameControlSize { width: u32, height: u32 },
    /// Move and resize a GIF's first frame descriptor.
    GifFrame {
        left: u16,
        top: u16,
        width: u16,
        height: u16,
    },
    /// Make a WAV's data chunk declare this many bytes.
    WavDeclared { bytes: u32 },
}

fn big_number() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        Just(vec![0xFF, 0xFF]),
        Just(vec![0xFF, 0xFF, 0xFF, 0xFF]),
        Just(vec![0x7F, 0xFF, 0xFF, 0xFF]),
        Just(vec![0x00, 0x00]),
        Just(vec![0x00, 0x01, 0x00, 0x00]),
        any::<[u8; 4]>().prop_map(Vec::from),
    ]
}

fn dimension() -> impl Strategy<Value = u32> {
    prop_oneof![
        Just(0),
        1..64u32,
        Just(1025),
        Just(65_535),
        Just(0x7FFF_FFFF),
        any::<u32>()
    ]
}

fn gif_side() -> impl Strategy<Value = u16> {
    prop_oneof![Just(0), 1..40u16, Just(2048), Just(65_535), any::<u16>()]
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let at = any::<usize>();
    prop_oneof![
        (dimension(), dimension())
            .prop_map(|(width, height)| Mutation::FrameControlSize { width, height }),
        (gif_side(), gif_side(), gif_side(), gif_side()).prop_map(|(left, top, width, height)| {
            Mutation::GifFrame {
                left,
                top,
                width,
                height,
            }
        }),
        any::<u32>().prop_map(|bytes| Mutation::WavDeclared { bytes }),
        (at, 1..=255u8).prop_map(|(at, mask)| Mutation::Flip { at, mask }),
        at.prop_map(|at| Mutation::Truncate { at }),
        (at, big_number()).prop_map(|(at, bytes)| Mutation::Overwrite { at, bytes }),
        (at, prop::collection::vec(any::<u8>(), 1..64))
            .prop_map(|(at, bytes)| Mutation::Insert { at, bytes }),
        (at, 1..256usize, at).prop_map(|(from, len, to)| Mutation::Splice { from, len, to }),
        (dimension(), dimension()).prop_map(|(width, height)| Mutation::PngSize { width, height }),
    ]
}

fn apply(mut bytes: Vec<u8>, mutations: &[Mutation]) -> Vec<u8> {
    for m in mutations {
        let len = bytes.len().max(1);
        match m {
            Mutation::Flip { at, mask } => {
                if let Some(b) = bytes.get_mut(at % len) {
                    *b ^= mask;
                }
            }
            Mutation::Truncate { at } => bytes.truncate(at % len),
            Mutation::Overwrite { at, bytes: new } => {
                for (i, b) in new.iter().enumerate() {
                    if let Some(old) = bytes.get_mut((at + i) % len) {
                        *old = *b;
                    }
                }
            }
            Mutation::Insert { at, bytes: new } => {
                let at = at % (bytes.len() + 1);
                bytes.splice(at..at, new.iter().copied());
            }
            Mutation::Splice { from, len: n, to } => {
                let from = from % len;
                let piece: Vec<u8> = bytes.iter().skip(from).take(*n).copied().collect();
                let to = to % (bytes.len() + 1);
                bytes.splice(to..to, piece);
            }
            Mutation::FrameControlSize { width, height } => {
                if let Some(at) = find(&bytes, b"fcTL").filter(|&at| at >= 4) {
                    let start = at - 4;
                    if let Some(data) = bytes.get(at + 4..at + 30) {
                        let mut data = data.to_vec();
                        data[4..8].copy_from_slice(&width.to_be_bytes());
                        data[8..12].copy_from_slice(&height.to_be_bytes());
                        bytes.splice(start..at + 34, chunk(b"fcTL", &data));
                    }
                }
            }
            Mutation::GifFrame {
                left,
                top,
                width,
                height,
            } => {
                if let Some(at) = gif_frame(&bytes) {
                    for (i, v) in [left, top, width, height].into_iter().enumerate() {
                        bytes[at + 1 + 2 * i..at + 3 + 2 * i].copy_from_slice(&v.to_le_bytes());
                    }
                }
            }
            Mutation::WavDeclared { bytes: declared } => {
                if let Some(at) = find(&bytes, b"data").filter(|&at| at + 8 <= bytes.len()) {
                    bytes[at + 4..at + 8].copy_from_slice(&declared.to_le_bytes());
                }
            }
            Mutation::PngSize { width, height } => {
                if bytes.len() >= 33 && &bytes[12..16] == b"IHDR" {
                    let mut data = bytes[16..29].to_vec();
                    data[..4].copy_from_slice(&width.to_be_bytes());
                    data[4..8].copy_from_slice(&height.to_be_bytes());
                    bytes.splice(8..33, chunk(b"IHDR", &data));
                }
            }
        }
    }
    bytes
}

fn find(bytes: &[u8], tag: &[u8; 4]) -> Option<usize> {
    bytes.windows(4).position(|w| w == tag)
}

/// The offset of a GIF's first image descriptor when all ten of its bytes are there.
fn gif_frame(bytes: &[u8]) -> Option<usize> {
    if !bytes.starts_with(b"GIF8") {
        return None;
    }
    let table = |packed: u8| {
        if packed & 0x80 == 0 {
            0
        } else {
            3 << ((packed & 7) + 1)
        }
    };
    let mut at = 13 + table(*bytes.get(10)?);
    loop {
        match *bytes.get(at)? {
            0x2C if at + 10 <= bytes.len() => return Some(at),
            0x21 => {
                at += 2;
                while let Some(&len) = bytes.get(at) {
                    at += 1 + usize::from(len);
                    if len == 0 {
                        break;
                    }
                }
            }
            _ => return None,
        }
    }
}

fn picture(width: u32, height: u32, t: u32) -> RgbaImage {
    RgbaImage::from_fn(width, height, |x, y| {
        Rgba([(x * 17 + t) as u8, (y * 29) as u8, (x ^ y) as u8, 200])
    })
}

fn encoded(image: &RgbaImage, format: ImageFormat) -> Vec<u8> {
    let mut out = Vec::new();
    let image = image::DynamicImage::ImageRgba8(image.clone());
    let image = if format == ImageFormat::Jpeg {
        image::DynamicImage::ImageRgb8(image.to_rgb8())
    } else {
        image
    };
    image.write_to(&mut Cursor::new(&mut out), format).unwrap();
    out
}

fn clip(frames: u32) -> Animation {
    Animation {
        frames: (0..frames)
            .map(|t| Frame {
                image: picture(12, 10, t),
                delay: FrameDelay::from_ms(40),
            })
            .collect(),
        plays: 2,
    }
}

fn gif_clip() -> Vec<u8> {
    let mut out = Vec::new();
    {
        let mut encoder = GifEncoder::new(&mut out);
        for f in clip(3).frames {
            let delay = image::Delay::from_numer_denom_ms(40, 1);
            encoder
                .encode_frame(image::Frame::from_parts(f.image, 0, 0, delay))
                .unwrap();
        }
    }
    out
}

fn wav_seed() -> Vec<u8> {
    let samples: Vec<f32> = (0..1600).map(|i| (i as f32 * 0.1).sin() * 0.3).collect();
    encode_wav_mono_i16(&samples, 16_000).unwrap()
}

fn seed_and_mutations(seeds: Vec<Vec<u8>>) -> impl Strategy<Value = Vec<u8>> {
    (
        prop::sample::select(seeds),
        prop::collection::vec(mutation(), 1..4),
    )
        .prop_map(|(seed, mutations)| apply(seed, &mutations))
}

fn run(seeds: Vec<Vec<u8>>, check: impl Fn(&[u8]) -> Result<(), TestCaseError>) {
    let config = Config {
        cases: cases(),
        failure_persistence: None,
        ..Config::default()
    };
    let mut runner = TestRunner::new(config);
    runner
        .run(&seed_and_mutations(seeds), |bytes| check(&bytes))
        .unwrap();
}

#[test]
fn mutated_inputs_never_panic_stay_within_the_limits_and_memory_stays_bounded() {
    let before = peak_rss();

    let image_limits = InputLimits::default();
    run(
        vec![
            small_png(),
            encoded(&picture(16, 16, 0), ImageFormat::Png),
            encoded(&picture(16, 16, 1), ImageFormat::Jpeg),
        ],
        |bytes| {
            if let Ok(image) = decode_rgb(bytes, &image_limits) {
                let (w, h) = image.dimensions();
                prop_assert!(image_limits.check(w, h).is_ok(), "{w}x{h} decoded");
            }
            Ok(())
        },
    );

    let animation_limits = AnimationLimits::default();
    run(
        vec![
            gif_clip(),
            encode_apng(&clip(3)).unwrap(),
            encoded(&picture(8, 8, 2), ImageFormat::Png),
        ],
        |bytes| {
            if let Ok(animation) = decode_animation(bytes, &animation_limits) {
                prop_assert!(
                    animation_limits.check(&animation).is_ok(),
                    "{:?} x {} decoded",
                    animation.dimensions(),
                    animation.frames.len()
                );
            }
            Ok(())
        },
    );

    let audio_limits = AudioLimits::VAD_16K;
    let most = audio_limits.max_seconds as usize * audio_limits.sample_rate as usize;
    run(vec![wav_seed()], |bytes| {
        if let Ok(samples) = decode_wav_mono(bytes, &audio_limits) {
            prop_assert!(samples.len() <= most, "{} samples", samples.len());
            prop_assert!(samples.iter().all(|s| s.is_finite()));
        }
        Ok(())
    });

    let grown = peak_rss().saturating_sub(before);
    println!(
        "{} mutated inputs per decoder; peak RSS grew by {:.1} MiB",
        cases(),
        grown as f64 / f64::from(1 << 20)
    );
    // The largest input the limits allow decodes to a few tens of MiB.
    assert!(grown < 128 << 20, "peak RSS grew by {grown} bytes");
}
