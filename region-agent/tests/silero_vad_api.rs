//! Silero VAD served through the agent's API (`meridian/silero-vad`) with the real weights
//! (fetched by `scripts/fetch-models` as in `silero_vad_real_weights.rs`; never skipped), on a
//! sentence spoken by `espeak-ng`: speech gives segments in seconds, silence gives none, and
//! audio the model cannot take is refused with 4xx and the reason, never a 500.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use base64::Engine as _;
use region_agent::models::audio_io::encode_wav_mono_i16;
use reqwest::Method;
use serde_json::{Value, json};

use support::speech::speak;
use support::{Agent, config, segments};

const SR: usize = 16_000;
const MAX_BODY: usize = 1 << 20;

async fn start(dir: &std::path::Path) -> Agent {
    let weights = support::fetch_models("silero-vad");
    let models = format!(
        "[[models]]\nid = \"meridian/silero-vad\"\nweights_dir = \"{}\"\n",
        weights.display()
    );
    let prices = [("meridian/silero-vad", "audio_second", 0.001)];
    let config = config(
        dir,
        &models,
        &format!("max_body_bytes = {MAX_BODY}"),
        &prices,
    );
    let models = region_agent::serving::builtin::build(&config).unwrap();
    Agent::start(config, models).await
}

fn base64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// `POST /v1/run/meridian/silero-vad` with `input`: (status, body).
async fn run(agent: &Agent, input: Value) -> (u16, Value) {
    agent.try_run("meridian/silero-vad", input).await
}

#[tokio::test]
async fn a_spoken_sentence_gives_segments_and_silence_gives_none() {
    let dir = tempfile::tempdir().unwrap();
    let agent = start(dir.path()).await;

    // 1 s of silence, the sentence, 1 s of silence.
    let sentence = speak("The quick brown fox jumps over the lazy dog.", SR);
    let mut audio = vec![0.0f32; SR];
    audio.extend_from_slice(&sentence);
    audio.extend(std::iter::repeat_n(0.0, SR));
    let duration = audio.len() as f64 / SR as f64;
    let wav = encode_wav_mono_i16(&audio, SR as u32).unwrap();
    let (status, result) = run(&agent, json!({"audio": base64(&wav)})).await;
    assert_eq!(status, 200, "{result}");
    assert_eq!(result["status"], "COMPLETED", "{result}");
    let found = segments(&result);
    assert!(!found.is_empty(), "no speech found: {result}");
    for &(start, end) in &found {
        assert!(0.0 <= start && start < end && end <= duration, "{found:?}");
    }
    // The speech lies between 1 s and 1 s + the sentence; the segments cover most of it and
    // stay out of the silences (give or take the padding).
    let (from, to) = (1.0, 1.0 + sentence.len() as f64 / SR as f64);
    let covered: f64 = found
        .iter()
        .map(|&(s, e)| (e.min(to) - s.max(from)).max(0.0))
        .sum();
    assert!(covered > 0.5 * (to - from), "{found:?} vs {from}–{to}");
    assert!(
        found.iter().all(|&(s, e)| s > from - 0.3 && e < to + 0.3),
        "{found:?} vs {from}–{to}"
    );
    let units = result["units"].as_f64().unwrap();
    assert!((units - duration).abs() < 1e-9, "{units} vs {duration}");
    let cost = contract::charge(duration, 0.001);
    assert_eq!(result["cost_nanos"], cost.0, "{result}");

    let silence = encode_wav_mono_i16(&vec![0.0; 2 * SR], SR as u32).unwrap();
    let id = agent
        .queue(
            "meridian/silero-vad",
            json!({"input": {"audio": format!("data:audio/wav;base64,{}", base64(&silence))}}),
        )
        .await;
    agent.wait_status(&id, "COMPLETED").await;
    let result: Value = agent
        .call(Method::GET, &format!("/v1/requests/{id}"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(result["output"]["segments"], json!([]), "{result}");
    agent.stop().await;
}

/// A 16-bit mono 16 kHz WAV header that claims `seconds` of audio, followed by a few samples.
fn wav_claiming(seconds: u32) -> Vec<u8> {
    let data_len = seconds * 16_000 * 2;
    let mut wav = Vec::new();
    wav.extend_from_slice(b"RIFF");
    wav.extend_from_slice(&(36 + data_len).to_le_bytes());
    wav.extend_from_slice(b"WAVEfmt ");
    wav.extend_from_slice(&16u32.to_le_bytes());
    wav.extend_from_slice(&1u16.to_le_bytes()); // PCM
    wav.extend_from_slice(&1u16.to_le_bytes()); // mono
    wav.extend_from_slice(&16_000u32.to_le_bytes());
    wav.extend_from_slice(&32_000u32.to_le_bytes()); // bytes per second
    wav.extend_from_slice(&2u16.to_le_bytes()); // bytes per frame
    wav.extend_from_slice(&16u16.to_le_bytes());
    wav.extend_from_slice(b"data");
    wav.extend_from_slice(&data_len.to_le_bytes());
    wav.extend_from_slice(&[0; 64]);
    wav
}

#[tokio::test]
async fn audio_the_model_cannot_take_is_refused_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let agent = start(dir.path()).await;
    // Other rates and channel counts are resampled and downmixed (media_formats.rs); more
    // than 8 channels are refused.
    let nine_channels = {
        let spec = hound::WavSpec {
            channels: 9,
            sample_rate: 16_000,
            bits_per_sample: 16,
            sample_format: hound::SampleFormat::Int,
        };
        let mut out = std::io::Cursor::new(Vec::new());
        let mut writer = hound::WavWriter::new(&mut out, spec).unwrap();
        for _ in 0..9 * SR {
            writer.write_sample(0i16).unwrap();
        }
        writer.finalize().unwrap();
        out.into_inner()
    };
    let cases = [
        (
            "9 channels",
            base64(&nine_channels),
            "the limit is 8 channels",
        ),
        ("not base64", "%%%".to_owned(), "base64"),
        ("not a WAV", base64(b"hello world, not a wave file"), "WAV"),
        (
            "over 10 minutes",
            base64(&wav_claiming(601)),
            "the limit is 600 s",
        ),
    ];
    for (what, audio, reason) in cases {
        let (status, body) = run(&agent, json!({"audio": audio})).await;
        assert_eq!(status, 422, "{what}: {body}");
        assert_eq!(body["error"]["type"], "invalid_input", "{what}: {body}");
        let message = body["error"]["message"].as_str().unwrap();
        assert!(message.contains(reason), "{what}: {message}");
    }
    for input in [json!({"wav": "UklGRg=="}), json!({"audio": 16000})] {
        let (status, body) = run(&agent, input).await;
        assert_eq!(status, 400, "{body}");
        assert_eq!(body["error"]["type"], "bad_request", "{body}");
    }
    let too_big = encode_wav_mono_i16(&vec![0.1; MAX_BODY / 2], SR as u32).unwrap();
    let (status, body) = run(&agent, json!({"audio": base64(&too_big)})).await;
    assert_eq!(status, 413, "{body}");
    assert_eq!(body["error"]["type"], "too_large", "{body}");
    agent.stop().await;
}
