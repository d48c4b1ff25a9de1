//! ESRGAN-slim served through the agent's API with the real weights (fetched and converted by
//! `scripts/fetch-models` as in `esrgan_real_weights.rs`; never skipped): synchronous and
//! queued runs, PNG and JPEG (also as data: URLs), the output file, images larger than one
//! pass of the network takes (run in tiles), and 422 for images the model cannot take, the
//! size limit (default and configured) named.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::io::Cursor;

use base64::Engine as _;
use image::{ImageFormat, Rgb, RgbImage};
use reqwest::Method;
use serde_json::{Value, json};

use region_agent::config::AgentConfig;
use support::{Agent, config, models_dir};

fn encoded(width: u32, height: u32, format: ImageFormat) -> String {
    let image = RgbImage::from_fn(width, height, |x, y| {
        Rgb([(x * 20) as u8, (y * 25) as u8, ((x + y) * 9) as u8])
    });
    let mut bytes = Vec::new();
    image
        .write_to(&mut Cursor::new(&mut bytes), format)
        .unwrap();
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

async fn start(dir: &std::path::Path) -> Agent {
    start_with(dir, "", "").await
}

/// The agent, `extra` added to its settings and `x4_settings` to the ×4 model's table.
async fn start_with(dir: &std::path::Path, extra: &str, x4_settings: &str) -> Agent {
    let weights = models_dir().display().to_string();
    let models = format!(
        "[[models]]\nid = \"meridian/esrgan-x2\"\nweights_dir = \"{weights}\"\nmax_batch = 4\n\n\
         [[models]]\nid = \"meridian/esrgan-x4\"\nweights_dir = \"{weights}\"\n{x4_settings}\n"
    );
    let prices = [
        ("meridian/esrgan-x2", "megapixel", 0.002),
        ("meridian/esrgan-x4", "megapixel", 0.002),
    ];
    let config = config(dir, &models, extra, &prices);
    let models = region_agent::serving::builtin::build(&config).unwrap();
    Agent::start(config, models).await
}

async fn output_image(agent: &Agent, result: &Value) -> RgbImage {
    let file = &result["output"]["image"];
    assert_eq!(file["content_type"], "image/png");
    let response = agent
        .call(Method::GET, file["url"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "image/png");
    let bytes = response.bytes().await.unwrap();
    assert_eq!(bytes.len() as u64, file["bytes"].as_u64().unwrap());
    image::load_from_memory_with_format(&bytes, ImageFormat::Png)
        .unwrap()
        .to_rgb8()
}

#[tokio::test]
async fn upscales_png_and_jpeg_and_bills_output_megapixels() {
    let dir = tempfile::tempdir().unwrap();
    let agent = start(dir.path()).await;

    let response = agent
        .call(Method::POST, "/v1/run/meridian/esrgan-x2")
        .json(&json!({"input": {"image": encoded(12, 10, ImageFormat::Png)}}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let result: Value = response.json().await.unwrap();
    assert_eq!(result["status"], "COMPLETED", "{result}");
    assert_eq!(output_image(&agent, &result).await.dimensions(), (24, 20));
    let units = result["units"].as_f64().unwrap();
    assert!((units - 24.0 * 20.0 / 1e6).abs() < 1e-12, "{units}");
    let cost = contract::charge(24.0 * 20.0 / 1e6, 0.002);
    assert_eq!(result["cost_nanos"], cost.0, "{result}");

    let data_url = format!(
        "data:image/jpeg;base64,{}",
        encoded(9, 7, ImageFormat::Jpeg)
    );
    let id = agent
        .queue("meridian/esrgan-x4", json!({"input": {"image": data_url}}))
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
    assert_eq!(output_image(&agent, &result).await.dimensions(), (36, 28));
    agent.stop().await;
}

#[tokio::test]
async fn images_the_model_cannot_take_are_422() {
    let dir = tempfile::tempdir().unwrap();
    let agent = start(dir.path()).await;
    let png = encoded(8, 8, ImageFormat::Png);
    let truncated = {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(&png)
            .unwrap();
        base64::engine::general_purpose::STANDARD.encode(&bytes[..bytes.len() - 20])
    };
    let cases = [
        ("not base64", "%%%".to_owned()),
        (
            "not an image",
            base64::engine::general_purpose::STANDARD.encode(b"hello world"),
        ),
        ("truncated PNG", truncated),
        ("too wide", encoded(4097, 1, ImageFormat::Png)),
        ("data URL without base64", "data:image/png,abc".to_owned()),
    ];
    for (what, image) in cases {
        let response = agent
            .call(Method::POST, "/v1/run/meridian/esrgan-x2")
            .json(&json!({"input": {"image": image}}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 422, "{what}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["error"]["type"], "invalid_input", "{what}");
    }
    let missing = agent
        .call(Method::POST, "/v1/run/meridian/esrgan-x2")
        .json(&json!({"input": {"img": png}}))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 400);
    agent.stop().await;
}

/// A smooth PNG (gradients), base64.
fn smooth(width: u32, height: u32) -> (RgbImage, String) {
    let image = RgbImage::from_fn(width, height, |x, y| {
        Rgb([
            (x / 3 % 256) as u8,
            (y / 3 % 256) as u8,
            ((x + y) / 5 % 256) as u8,
        ])
    });
    let mut bytes = Vec::new();
    image
        .write_to(&mut Cursor::new(&mut bytes), ImageFormat::Png)
        .unwrap();
    (
        image,
        base64::engine::general_purpose::STANDARD.encode(bytes),
    )
}

/// PSNR in dB between two images of one size, over all channels.
fn psnr(a: &RgbImage, b: &RgbImage) -> f64 {
    let pairs = a.as_raw().iter().zip(b.as_raw());
    let sum: f64 = pairs
        .map(|(a, b)| (f64::from(*a) - f64::from(*b)).powi(2))
        .sum();
    10.0 * (255.0f64 * 255.0 / (sum / a.as_raw().len() as f64)).log10()
}

/// 515×513 is more than the 512×512 one pass used to take: it runs in tiles, comes back at
/// exactly four times the size, billed by its output, and shrunk back it is the input again
/// (a misplaced or missing tile would not be). On a CPU in the test profile the run takes
/// tens of seconds, so the synchronous call waits up to the job's own timeout.
#[tokio::test]
async fn an_image_over_512_by_512_is_upscaled_in_tiles() {
    let dir = tempfile::tempdir().unwrap();
    let agent = start_with(dir.path(), "sync_timeout_ms = 600000", "timeout_s = 600").await;
    let (input, png) = smooth(515, 513);
    let response = agent
        .call(Method::POST, "/v1/run/meridian/esrgan-x4")
        .timeout(std::time::Duration::from_secs(600))
        .json(&json!({"input": {"image": png}}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let result: Value = response.json().await.unwrap();
    assert_eq!(result["status"], "COMPLETED", "{result}");
    let output = output_image(&agent, &result).await;
    assert_eq!(output.dimensions(), (2060, 2052));
    let units = result["units"].as_f64().unwrap();
    assert!((units - 2060.0 * 2052.0 / 1e6).abs() < 1e-9, "{units}");
    let shrunk = image::imageops::resize(&output, 515, 513, image::imageops::FilterType::Triangle);
    let p = psnr(&shrunk, &input);
    assert!(
        p > 30.0,
        "the output shrunk back is {p:.1} dB from the input"
    );
    agent.stop().await;
}

async fn refusal(agent: &Agent, model: &str, image: String) -> (u16, String) {
    let response = agent
        .call(Method::POST, &format!("/v1/run/{model}"))
        .json(&json!({"input": {"image": image}}))
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    let body: Value = response.json().await.unwrap();
    (
        status,
        body["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
    )
}

#[tokio::test]
async fn an_image_over_the_output_limit_is_422_naming_the_limit() {
    let dir = tempfile::tempdir().unwrap();
    // ×4 takes at most 200 × 200 output pixels here; ×2 keeps the default (2048 × 2048).
    let agent = start_with(dir.path(), "", "max_output_pixels = 40000").await;

    let (status, message) = refusal(&agent, "meridian/esrgan-x4", smooth(51, 50).1).await;
    assert_eq!(status, 422, "{message}");
    assert!(
        message.contains("51x50") && message.contains("40000"),
        "{message}"
    );
    let response = agent
        .call(Method::POST, "/v1/run/meridian/esrgan-x4")
        .json(&json!({"input": {"image": smooth(50, 50).1}}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let result: Value = response.json().await.unwrap();
    assert_eq!(output_image(&agent, &result).await.dimensions(), (200, 200));

    // One row more than 1024 × 1024 in: refused before its pixels are decoded.
    let (status, message) = refusal(&agent, "meridian/esrgan-x2", smooth(1024, 1025).1).await;
    assert_eq!(status, 422, "{message}");
    assert!(
        message.contains("1024x1025") && message.contains("4194304"),
        "{message}"
    );
    agent.stop().await;
}

/// `max_output_pixels` is ESRGAN's: 0 is refused by the configuration, and another model given
/// it is refused when the agent builds its models, both naming the field.
#[test]
fn max_output_pixels_is_checked_and_taken_only_by_esrgan() {
    let dir = tempfile::tempdir().unwrap();
    let catalog = dir.path().join("catalog.toml");
    let prices = [
        ("meridian/esrgan-x4", "megapixel", 0.002),
        ("meridian/silero-vad", "audio_second", 0.001),
    ];
    std::fs::write(&catalog, support::catalog_toml(&prices)).unwrap();
    let weights = models_dir().display().to_string();
    let file = |id: &str, max: u64| {
        format!(
            "region = \"eu-west\"\nedge_token = \"{}\"\ndata_dir = \"{}\"\ncatalog_file = \"{}\"\n\n\
             [[models]]\nid = \"{id}\"\nweights_dir = \"{weights}\"\nmax_output_pixels = {max}\n",
            support::EDGE_TOKEN,
            dir.path().display(),
            catalog.display(),
        )
    };
    let zero = AgentConfig::from_toml(&file("meridian/esrgan-x4", 0)).unwrap_err();
    assert!(
        zero.to_string().contains("models[0].max_output_pixels"),
        "{zero}"
    );
    let vad = AgentConfig::from_toml(&file("meridian/silero-vad", 100)).unwrap();
    let refused = region_agent::serving::builtin::build(&vad).err().unwrap();
    assert!(
        refused.to_string().contains("max_output_pixels"),
        "{refused}"
    );
}
