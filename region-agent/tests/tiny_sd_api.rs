//! Text-to-image served through the agent's API (`meridian/tiny-sd`) with the pipeline test
//! model (`pipeline_test = true`: toy networks with seeded random weights, whose images are
//! noise — enough to check sizes, determinism and the input checks): a PNG of the requested
//! size, the same bytes for the same input, and requests the model cannot take refused with
//! 4xx, never a 500.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use image::{ImageFormat, RgbImage};
use reqwest::Method;
use serde_json::{Value, json};

use support::{Agent, config};

const MODEL: &str = "meridian/tiny-sd";

async fn start(dir: &std::path::Path) -> Agent {
    let models = format!("[[models]]\nid = \"{MODEL}\"\npipeline_test = true\nmax_batch = 4\n");
    let config = config(dir, &models, "", &[(MODEL, "megapixel_step", 0.001)]);
    let models = region_agent::serving::builtin::build(&config).unwrap();
    Agent::start(config, models).await
}

/// `POST /v1/run/meridian/tiny-sd` with `input`: (status, body).
async fn run(agent: &Agent, input: Value) -> (u16, Value) {
    agent.try_run(MODEL, input).await
}

/// The PNG bytes of a result's `image` file, checked against its file object.
async fn png_bytes(agent: &Agent, result: &Value) -> Vec<u8> {
    let file = &result["output"]["image"];
    assert_eq!(file["content_type"], "image/png", "{result}");
    let response = agent
        .call(Method::GET, file["url"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "image/png");
    let bytes = response.bytes().await.unwrap().to_vec();
    assert_eq!(bytes.len() as u64, file["bytes"].as_u64().unwrap());
    bytes
}

fn decode(png: &[u8]) -> RgbImage {
    image::load_from_memory_with_format(png, ImageFormat::Png)
        .unwrap()
        .to_rgb8()
}

#[tokio::test]
async fn draws_a_png_of_the_requested_size_and_the_same_input_gives_the_same_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let agent = start(dir.path()).await;
    let input =
        json!({"prompt": "a lighthouse at dusk", "steps": 3, "seed": 7, "width": 96, "height": 64});

    let (status, first) = run(&agent, input.clone()).await;
    assert_eq!(status, 200, "{first}");
    assert_eq!(first["status"], "COMPLETED", "{first}");
    let png = png_bytes(&agent, &first).await;
    let image = decode(&png);
    assert_eq!(image.dimensions(), (96, 64));
    let corner = *image.get_pixel(0, 0);
    assert!(image.pixels().any(|p| *p != corner), "a flat image");
    // Billed by its work: 96 × 64 pixels in 3 steps.
    let units = 96.0 * 64.0 / 1e6 * 3.0;
    assert_eq!(first["units"].as_f64(), Some(units), "{first}");
    assert_eq!(
        first["cost_nanos"],
        contract::charge(units, 0.001).0,
        "{first}"
    );

    let (status, again) = run(&agent, input.clone()).await;
    assert_eq!(status, 200, "{again}");
    assert_eq!(png_bytes(&agent, &again).await, png);

    let mut other_seed = input.clone();
    other_seed["seed"] = json!(8);
    let (status, other) = run(&agent, other_seed).await;
    assert_eq!(status, 200, "{other}");
    assert_ne!(png_bytes(&agent, &other).await, png);

    // Defaults: 4 steps, seed 0, the model's 64×64.
    let (status, default) = run(&agent, json!({"prompt": "a lighthouse at dusk"})).await;
    assert_eq!(status, 200, "{default}");
    let default = png_bytes(&agent, &default).await;
    assert_eq!(decode(&default).dimensions(), (64, 64));
    let explicit =
        json!({"prompt": "a lighthouse at dusk", "steps": 4, "seed": 0, "width": 64, "height": 64});
    let (status, explicit) = run(&agent, explicit).await;
    assert_eq!(status, 200, "{explicit}");
    assert_eq!(png_bytes(&agent, &explicit).await, default);
    agent.stop().await;
}

#[tokio::test]
async fn queued_jobs_of_one_size_give_the_images_they_give_alone() {
    let dir = tempfile::tempdir().unwrap();
    let agent = start(dir.path()).await;
    let inputs: Vec<Value> = (1..=3)
        .map(|seed| json!({"prompt": format!("a fox, take {seed}"), "steps": 2, "seed": seed}))
        .collect();
    let mut ids = Vec::new();
    for input in &inputs {
        ids.push(agent.queue(MODEL, json!({ "input": input })).await);
    }
    for (id, input) in ids.iter().zip(&inputs) {
        agent.wait_status(id, "COMPLETED").await;
        let queued: Value = agent
            .call(Method::GET, &format!("/v1/requests/{id}"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let queued = decode(&png_bytes(&agent, &queued).await);
        let (status, alone) = run(&agent, input.clone()).await;
        assert_eq!(status, 200, "{alone}");
        let alone = decode(&png_bytes(&agent, &alone).await);
        assert_eq!(queued.dimensions(), alone.dimensions());
        // Run in a batch, pixels may differ by one level (API.md).
        let max_diff = queued
            .as_raw()
            .iter()
            .zip(alone.as_raw())
            .map(|(a, b)| a.abs_diff(*b))
            .max()
            .unwrap();
        assert!(max_diff <= 1, "{input}: differs by up to {max_diff}");
    }
    agent.stop().await;
}

#[tokio::test]
async fn requests_the_model_cannot_take_are_refused_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let agent = start(dir.path()).await;
    let unprocessable = [
        (json!({"prompt": "x", "steps": 0}), "steps is 0"),
        (json!({"prompt": "x", "steps": 51}), "steps is 51"),
        (json!({"prompt": "x", "width": 100}), "multiple of 16"),
        (json!({"prompt": "x", "height": 2048}), "up to 1024"),
        (json!({"prompt": "x", "guidance": -2.0}), "guidance"),
        (json!({"prompt": "x".repeat(3000)}), "the limit is 2048"),
    ];
    for (input, reason) in unprocessable {
        let (status, body) = run(&agent, input.clone()).await;
        assert_eq!(status, 422, "{input}: {body}");
        assert_eq!(body["error"]["type"], "invalid_input", "{body}");
        let message = body["error"]["message"].as_str().unwrap();
        assert!(message.contains(reason), "{input}: {message}");
    }
    let malformed = [
        json!({"steps": 4}),
        json!({"prompt": ["a", "b"]}),
        json!({"prompt": "x", "steps": "four"}),
        json!({"prompt": "x", "seed": -1}),
        json!({"prompt": "x", "width": 64.5}),
    ];
    for input in malformed {
        let (status, body) = run(&agent, input.clone()).await;
        assert_eq!(status, 400, "{input}: {body}");
        assert_eq!(body["error"]["type"], "bad_request", "{body}");
    }
    agent.stop().await;
}
