//! ESRGAN-slim served through the agent's API with the real weights (fetched and converted by
//! `scripts/fetch-models` as in `esrgan_real_weights.rs`; never skipped): synchronous and
//! queued runs, PNG and JPEG (also as data: URLs), the output file, and 422 for images the
//! model cannot take.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::io::Cursor;

use base64::Engine as _;
use image::{ImageFormat, Rgb, RgbImage};
use reqwest::Method;
use serde_json::{Value, json};

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
    let weights = models_dir().display().to_string();
    let models = format!(
        "[[models]]\nid = \"meridian/esrgan-x2\"\nweights_dir = \"{weights}\"\nmax_batch = 4\n\n\
         [[models]]\nid = \"meridian/esrgan-x4\"\nweights_dir = \"{weights}\"\n"
    );
    let prices = [
        ("meridian/esrgan-x2", "megapixel", 0.002),
        ("meridian/esrgan-x4", "megapixel", 0.002),
    ];
    let config = config(dir, &models, "", &prices);
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
        ("too wide", encoded(1100, 2, ImageFormat::Png)),
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
