//! The media formats users send, through the agent's API with the real Silero VAD and
//! ESRGAN-slim weights: speech as MP3, FLAC, OGG/Opus, M4A/AAC and WAV at 44.1 or 48 kHz in
//! stereo (or 8 kHz mono) gives the segments that the 16 kHz mono WAV gives; MP4, WebM and
//! MOV come back as MP4 (H.264, yuv420p) at twice the size with the same frame count and
//! rate, and a GIF as a GIF; broken, disguised and oversized media are refused with 422
//! naming why, and an ffmpeg run past its time limit is stopped; without ffmpeg the reason
//! names the missing program; mutated media never panics the decoders nor passes a limit.
//!
//! Every fixture is made at test time by Debian's `ffmpeg` (from its `sine`, `anullsrc` and
//! `testsrc` sources) or spoken by `espeak-ng`; `scripts/bootstrap` installs both.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use region_agent::models::animation::{AnimationLimits, decode_animation};
use region_agent::models::audio_io::{AudioLimits, decode_audio, encode_wav_mono_i16};
use region_agent::models::ffmpeg::{Ffmpeg, video};
use region_agent::serving::Model;
use region_agent::serving::silero_vad::SileroVadModel;
use reqwest::Method;
use serde_json::{Value, json};

use support::media::ffmpeg;
use support::speech::speak;
use support::{Agent, config, segments};

const VAD: &str = "meridian/silero-vad";
const VIDEO: &str = "meridian/video-upscale-x2";
const SR: usize = 16_000;
/// How far a segment's start or end may move when the audio went through a lossy codec,
/// another sample rate and a downmix: a few of the model's 32 ms windows.
const TOLERANCE_S: f64 = 0.15;

/// An agent serving the VAD and, with `video`, the video model (as the configuration
/// builds them, or `models`).
async fn start(dir: &Path, video: bool, models: Option<Vec<Arc<dyn Model>>>) -> Agent {
    let vad = support::fetch_models("silero-vad");
    let mut listed = format!(
        "[[models]]\nid = \"{VAD}\"\nweights_dir = \"{}\"\n",
        vad.display()
    );
    if video {
        let esrgan = support::fetch_models("esrgan-slim");
        listed += &format!(
            "[[models]]\nid = \"{VIDEO}\"\nweights_dir = \"{}\"\n",
            esrgan.display()
        );
    }
    let prices = [(VAD, "audio_second", 0.001), (VIDEO, "megapixel", 0.01)];
    let config = config(dir, &listed, "max_body_bytes = 8388608", &prices);
    let models = match models {
        Some(models) => models,
        None => region_agent::serving::builtin::build(&config).unwrap(),
    };
    Agent::start(config, models).await
}

/// ffprobe's report of `bytes`' first video stream, frames counted by decoding.
fn probe_video(dir: &Path, bytes: &[u8]) -> Value {
    let path = dir.join("probed");
    std::fs::write(&path, bytes).unwrap();
    let output = Command::new("ffprobe")
        .args(["-v", "error", "-count_frames", "-select_streams", "v:0"])
        .args(["-print_format", "json", "-show_streams", "-show_format"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap()
}

fn base64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// `POST /v1/run/{model}` with `{field: base64(bytes)}`: (status, body).
async fn run(agent: &Agent, model: &str, field: &str, bytes: &[u8]) -> (u16, Value) {
    agent.try_run(model, json!({ field: base64(bytes) })).await
}

/// One second of silence, a spoken sentence, one second of silence: 16 kHz mono WAV.
fn speech_wav() -> Vec<u8> {
    let mut audio = vec![0.0f32; SR];
    audio.extend(speak("The quick brown fox jumps over the lazy dog.", SR));
    audio.extend(std::iter::repeat_n(0.0, SR));
    encode_wav_mono_i16(&audio, SR as u32).unwrap()
}

#[tokio::test]
async fn every_audio_format_gives_the_segments_of_the_16_khz_wav() {
    let dir = tempfile::tempdir().unwrap();
    let agent = start(dir.path(), true, None).await;
    let reference = speech_wav();
    std::fs::write(dir.path().join("speech.wav"), &reference).unwrap();
    let (status, result) = run(&agent, VAD, "audio", &reference).await;
    assert_eq!(status, 200, "{result}");
    let expected = segments(&result);
    assert!(!expected.is_empty(), "no speech in the reference: {result}");
    let stereo_44k = ["-ar", "44100", "-ac", "2"];
    let stereo_48k = ["-ar", "48000", "-ac", "2"];
    let variants: [(&str, &[&str], &str); 7] = [
        ("MP3 44.1 kHz stereo", &stereo_44k, "out.mp3"),
        ("FLAC 48 kHz stereo", &stereo_48k, "out.flac"),
        (
            "OGG/Opus 48 kHz stereo",
            &[&stereo_48k[..], &["-c:a", "libopus"]].concat(),
            "out.ogg",
        ),
        (
            "M4A/AAC 44.1 kHz stereo",
            &[&stereo_44k[..], &["-c:a", "aac"]].concat(),
            "out.m4a",
        ),
        ("WAV 44.1 kHz stereo", &stereo_44k, "out.wav"),
        ("WAV 8 kHz mono", &["-ar", "8000"], "out8k.wav"),
        (
            "OGG/Vorbis 22.05 kHz mono",
            &["-ar", "22050", "-c:a", "libvorbis"],
            "vorbis.ogg",
        ),
    ];
    for (what, options, output) in variants {
        let args = [&["-i", "speech.wav"][..], options].concat();
        let bytes = ffmpeg(dir.path(), &args, output);
        let (status, result) = run(&agent, VAD, "audio", &bytes).await;
        assert_eq!(status, 200, "{what}: {result}");
        assert_eq!(result["status"], "COMPLETED", "{what}: {result}");
        let found = segments(&result);
        assert_eq!(
            found.len(),
            expected.len(),
            "{what}: {found:?} vs {expected:?}"
        );
        let moved = found
            .iter()
            .zip(&expected)
            .map(|(&(s, e), &(xs, xe))| (s - xs).abs().max((e - xe).abs()))
            .fold(0.0, f64::max);
        println!("{what}: segments within {moved:.3} s of the 16 kHz WAV's");
        for (&(s, e), &(xs, xe)) in found.iter().zip(&expected) {
            assert!(
                (s - xs).abs() <= TOLERANCE_S && (e - xe).abs() <= TOLERANCE_S,
                "{what}: {found:?} vs {expected:?}"
            );
        }
        let units = result["units"].as_f64().unwrap();
        let seconds = (reference.len() - 44) as f64 / (2 * SR) as f64;
        // Codecs pad the end by up to a frame or two (AAC: 1024 samples, MP3: 1152).
        assert!(
            (units - seconds).abs() < 0.1,
            "{what}: {units} s billed for {seconds} s"
        );
    }
    agent.stop().await;
}

/// A `testsrc` clip of `size`, `frames` frames at 10 fps, encoded with `codec` into `output`.
fn clip(dir: &Path, size: &str, frames: usize, codec: &[&str], output: &str) -> Vec<u8> {
    let source = format!("testsrc=size={size}:rate=10");
    let frames = frames.to_string();
    let args = [
        &["-f", "lavfi", "-i", &source, "-frames:v", &frames][..],
        codec,
    ]
    .concat();
    ffmpeg(dir, &args, output)
}

#[tokio::test]
async fn mp4_webm_and_mov_come_back_as_h264_mp4_at_twice_the_size() {
    let dir = tempfile::tempdir().unwrap();
    let agent = start(dir.path(), true, None).await;
    let h264 = ["-c:v", "libx264", "-pix_fmt", "yuv420p"];
    let inputs = [
        ("MP4 (H.264)", clip(dir.path(), "32x24", 8, &h264, "in.mp4")),
        (
            "WebM (VP9)",
            clip(dir.path(), "32x24", 8, &["-c:v", "libvpx-vp9"], "in9.webm"),
        ),
        (
            "WebM (VP8)",
            clip(dir.path(), "32x24", 8, &["-c:v", "libvpx"], "in8.webm"),
        ),
        ("MOV (H.264)", clip(dir.path(), "32x24", 8, &h264, "in.mov")),
    ];
    for (what, bytes) in inputs {
        let (status, result) = run(&agent, VIDEO, "video", &bytes).await;
        assert_eq!(status, 200, "{what}: {result}");
        assert_eq!(result["status"], "COMPLETED", "{what}: {result}");
        let file = &result["output"]["video"];
        assert_eq!(file["content_type"], "video/mp4", "{what}: {result}");
        let response = agent
            .call(Method::GET, file["url"].as_str().unwrap())
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(response.headers()["content-type"], "video/mp4");
        let output = response.bytes().await.unwrap();
        let report = probe_video(dir.path(), &output);
        let stream = &report["streams"][0];
        assert_eq!(stream["codec_name"], "h264", "{what}: {report}");
        assert_eq!(stream["pix_fmt"], "yuv420p", "{what}: {report}");
        assert_eq!(
            (&stream["width"], &stream["height"]),
            (&json!(64), &json!(48)),
            "{what}"
        );
        assert_eq!(stream["nb_read_frames"], "8", "{what}: {report}");
        assert_eq!(stream["r_frame_rate"], "10/1", "{what}: {report}");
        assert!(
            report["format"]["format_name"]
                .as_str()
                .unwrap()
                .contains("mp4")
        );
        let units = result["units"].as_f64().unwrap();
        assert!(
            (units - 64.0 * 48.0 * 8.0 / 1e6).abs() < 1e-12,
            "{what}: {units}"
        );
    }
    agent.stop().await;
}

#[tokio::test]
async fn a_gif_comes_back_as_a_gif_at_twice_the_size() {
    let dir = tempfile::tempdir().unwrap();
    let agent = start(dir.path(), true, None).await;
    let gif = clip(dir.path(), "20x16", 4, &[], "in.gif");
    let (status, result) = run(&agent, VIDEO, "video", &gif).await;
    assert_eq!(status, 200, "{result}");
    let file = &result["output"]["video"];
    assert_eq!(file["content_type"], "image/gif", "{result}");
    let response = agent
        .call(Method::GET, file["url"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    let bytes = response.bytes().await.unwrap();
    assert!(bytes.starts_with(b"GIF8"));
    let output = decode_animation(&bytes, &AnimationLimits::default()).unwrap();
    assert_eq!(output.frames.len(), 4);
    assert_eq!(output.dimensions(), (40, 32));
    assert!(output.frames.iter().all(|f| f.delay.as_ms() == 100.0));
    agent.stop().await;
}

/// Media the models cannot take, with what the refusal must say.
fn refused_media(
    dir: &Path,
) -> Vec<(
    &'static str,
    &'static str,
    &'static str,
    Vec<u8>,
    &'static str,
)> {
    let h264 = [
        "-c:v",
        "libx264",
        "-pix_fmt",
        "yuv420p",
        "-movflags",
        "+faststart",
    ];
    let mp4 = clip(dir, "32x24", 20, &h264, "whole.mp4");
    let truncated = mp4[..mp4.len() * 2 / 3].to_vec();
    let mp3 = ffmpeg(dir, &["-f", "lavfi", "-i", "sine=duration=1"], "tone.mp3");
    let playlist =
        b"#EXTM3U\n#EXT-X-TARGETDURATION:1\n#EXTINF:1,\nfile:///etc/passwd\n#EXT-X-ENDLIST\n";
    let concat = b"ffconcat version 1.0\nfile /etc/passwd\n";
    let long = ffmpeg(
        dir,
        &[
            "-f",
            "lavfi",
            "-i",
            "anullsrc=r=8000:cl=mono",
            "-t",
            "601",
            "-c:a",
            "flac",
        ],
        "long.flac",
    );
    let wide = clip(dir, "600x32", 1, &h264, "wide.mp4");
    let many = clip(dir, "16x16", 121, &h264, "many.mp4");
    vec![
        ("a truncated MP4", VIDEO, "video", truncated, "truncated"),
        (
            "an MP3 sent as video",
            VIDEO,
            "video",
            mp3,
            "not a GIF, APNG, MP4, WebM or MOV",
        ),
        ("an MP4 sent as audio", VAD, "audio", mp4, "no audio stream"),
        (
            "an HLS playlist as video",
            VIDEO,
            "video",
            playlist.to_vec(),
            "not a GIF, APNG, MP4, WebM or MOV",
        ),
        (
            "an HLS playlist as audio",
            VAD,
            "audio",
            playlist.to_vec(),
            "not in a format this model reads",
        ),
        (
            "a concat list as audio",
            VAD,
            "audio",
            concat.to_vec(),
            "not in a format this model reads",
        ),
        ("601 s of FLAC", VAD, "audio", long, "the limit is 600 s"),
        (
            "an MP4 600 pixels wide",
            VIDEO,
            "video",
            wide,
            "the limit is 512 pixels a side",
        ),
        (
            "an MP4 of 121 frames",
            VIDEO,
            "video",
            many,
            "more than 120 frames",
        ),
    ]
}

#[tokio::test]
async fn broken_disguised_and_oversized_media_are_refused_with_422_naming_why() {
    let dir = tempfile::tempdir().unwrap();
    let agent = start(dir.path(), true, None).await;
    let mut wrong = Vec::new();
    for (what, model, field, bytes, says) in refused_media(dir.path()) {
        let (status, body) = run(&agent, model, field, &bytes).await;
        let message = body["error"]["message"].as_str().unwrap_or_default();
        if status != 422 || body["error"]["type"] != "invalid_input" || !message.contains(says) {
            wrong.push(format!(
                "{what}: {status} {body} (expected 422 saying {says:?})"
            ));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    agent.stop().await;
}

#[tokio::test]
async fn an_ffmpeg_run_past_its_time_limit_is_stopped_and_the_audio_refused() {
    let dir = tempfile::tempdir().unwrap();
    let weights = support::fetch_models("silero-vad");
    // No ffprobe starts, reads a file and answers within a millisecond.
    let quick = Ffmpeg {
        timeout: Duration::from_millis(1),
        ..Ffmpeg::default()
    };
    let model: Arc<dyn Model> = Arc::new(SileroVadModel::new(VAD, &weights).with_ffmpeg(quick));
    let agent = start(dir.path(), false, Some(vec![model])).await;
    let mp3 = ffmpeg(
        dir.path(),
        &["-f", "lavfi", "-i", "sine=duration=5"],
        "tone.mp3",
    );
    let (status, body) = run(&agent, VAD, "audio", &mp3).await;
    assert_eq!(status, 422, "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("took longer than the 1 ms limit and was stopped"),
        "{message}"
    );
    // WAV at the model's rate does not need ffmpeg and is still served.
    let wav = speech_wav();
    let (status, body) = run(&agent, VAD, "audio", &wav).await;
    assert_eq!(status, 200, "{body}");
    agent.stop().await;
}

#[tokio::test]
async fn without_ffprobe_the_refusal_names_it_and_16_khz_wav_is_still_served() {
    let dir = tempfile::tempdir().unwrap();
    let weights = support::fetch_models("silero-vad");
    let missing = Ffmpeg {
        ffprobe: "/nonexistent/ffprobe".into(),
        ..Ffmpeg::default()
    };
    let model: Arc<dyn Model> = Arc::new(SileroVadModel::new(VAD, &weights).with_ffmpeg(missing));
    let agent = start(dir.path(), false, Some(vec![model])).await;
    let mp3 = ffmpeg(
        dir.path(),
        &["-f", "lavfi", "-i", "sine=duration=1"],
        "tone.mp3",
    );
    let (status, body) = run(&agent, VAD, "audio", &mp3).await;
    assert_eq!(status, 422, "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("ffprobe is not installed on this agent (Debian package ffmpeg)"),
        "{message}"
    );
    let (status, body) = run(&agent, VAD, "audio", &speech_wav()).await;
    assert_eq!(status, 200, "{body}");
    agent.stop().await;
}

/// `bytes` cut short or with a few bytes overwritten, chosen by `seed`.
fn mutate(bytes: &[u8], seed: u64) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut next = |below: usize| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state % below as u64) as usize
    };
    let mut out = bytes.to_vec();
    if seed.is_multiple_of(3) {
        out.truncate(next(bytes.len()));
    } else {
        for _ in 0..1 + next(8) {
            let at = next(out.len());
            out[at] = next(256) as u8;
        }
    }
    out
}

#[test]
fn mutated_media_never_panics_the_decoders_nor_passes_a_limit() {
    let dir = tempfile::tempdir().unwrap();
    let tone = [
        "-f",
        "lavfi",
        "-i",
        "sine=duration=2:sample_rate=44100",
        "-ac",
        "2",
    ];
    let audio = [
        ffmpeg(dir.path(), &tone, "seed.mp3"),
        ffmpeg(
            dir.path(),
            &[&tone[..], &["-c:a", "aac"]].concat(),
            "seed.m4a",
        ),
        ffmpeg(
            dir.path(),
            &[&tone[..], &["-c:a", "libopus"]].concat(),
            "seed.ogg",
        ),
    ];
    let h264 = ["-c:v", "libx264", "-pix_fmt", "yuv420p"];
    let videos = [
        clip(dir.path(), "32x24", 6, &h264, "seed.mp4"),
        clip(dir.path(), "32x24", 6, &["-c:v", "libvpx-vp9"], "seed.webm"),
    ];
    let short = AudioLimits {
        sample_rate: 16_000,
        max_seconds: 3,
    };
    let limits = AnimationLimits {
        max_frames: 8,
        ..AnimationLimits::default()
    };
    let (mut decoded, mut refused) = (0, 0);
    for seed in 0..12 {
        for seed_bytes in &audio {
            match decode_audio(&mutate(seed_bytes, seed), &short) {
                Ok(samples) => {
                    decoded += 1;
                    assert!(
                        samples.len() <= (3.1 * 16_000.0) as usize,
                        "{}",
                        samples.len()
                    );
                    assert!(samples.iter().all(|s| (-1.0..=1.0).contains(s)));
                }
                Err(_) => refused += 1,
            }
        }
        for seed_bytes in &videos {
            match video::decode_video(&Ffmpeg::default(), &mutate(seed_bytes, seed), &limits) {
                Ok(video) => {
                    decoded += 1;
                    limits.check(&video.animation).unwrap();
                }
                Err(_) => refused += 1,
            }
        }
    }
    println!("{decoded} mutated inputs decoded within the limits, {refused} refused");
}
