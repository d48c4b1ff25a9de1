//! The text-to-image pipeline end to end with the pipeline test model (toy networks, seeded
//! random weights, word-hash tokenizer: its images are noise, which is all these tests need),
//! and the real-weights loader's answers to missing or incomplete model directories.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

use candle_core::Device;
use region_agent::models::tiny_sd::{GenerateError, LoadError, Request, TextToImage};

fn model() -> TextToImage {
    TextToImage::pipeline_test(42, &Device::Cpu).unwrap()
}

fn request(prompt: &str, seed: u64) -> Request {
    Request {
        width: Some(96),
        height: Some(64),
        ..Request::new(prompt, 4, seed)
    }
}

#[test]
fn draws_an_image_of_the_requested_size() {
    let started = std::time::Instant::now();
    let image = model()
        .generate(&request("a lighthouse at dusk", 1))
        .unwrap();
    eprintln!("96×64, 4 steps in {:.2?}", started.elapsed());
    assert_eq!(image.dimensions(), (96, 64));
    // Not a flat image: the pixels vary.
    let first = image.get_pixel(0, 0);
    assert!(
        image.pixels().any(|p| p != first),
        "the image is one flat colour"
    );
}

#[test]
fn the_same_request_gives_the_same_image_and_seeds_and_prompts_change_it() {
    let m = model();
    let a = m.generate(&request("a red fox in the snow", 7)).unwrap();
    assert_eq!(a, m.generate(&request("a red fox in the snow", 7)).unwrap());
    // A separately built pipeline test model with the same seed gives the same image too.
    assert_eq!(
        a,
        model()
            .generate(&request("a red fox in the snow", 7))
            .unwrap()
    );
    assert_ne!(a, m.generate(&request("a red fox in the snow", 8)).unwrap());
    assert_ne!(
        a,
        m.generate(&request("a blue whale in the sea", 7)).unwrap()
    );
}

#[test]
fn a_batch_gives_what_single_requests_give() {
    let m = model();
    let requests = [request("a castle", 1), request("a cat on a mat", 2)];
    let batch = m.generate_batch(&requests).unwrap();
    assert_eq!(batch.len(), 2);
    for (r, batched) in requests.iter().zip(&batch) {
        let single = m.generate(r).unwrap();
        let diffs: Vec<u8> = single
            .as_raw()
            .iter()
            .zip(batched.as_raw())
            .map(|(a, b)| a.abs_diff(*b))
            .collect();
        let max_diff = diffs.iter().copied().max().unwrap();
        let mean_diff = diffs.iter().map(|&d| f64::from(d)).sum::<f64>() / diffs.len() as f64;
        eprintln!("batched vs single: max |diff| {max_diff}, mean {mean_diff:.4}");
        assert!(max_diff <= 1, "batched image differs by up to {max_diff}");
    }
    let mixed = [
        request("a castle", 1),
        Request {
            steps: 2,
            ..request("x", 1)
        },
    ];
    assert!(matches!(
        m.generate_batch(&mixed),
        Err(GenerateError::InvalidRequest(_))
    ));
}

#[test]
fn guidance_changes_the_image() {
    let m = model();
    let plain = m.generate(&request("a tree", 3)).unwrap();
    let guided = m
        .generate(&Request {
            guidance: 7.5,
            ..request("a tree", 3)
        })
        .unwrap();
    assert_eq!(guided.dimensions(), (96, 64));
    assert_ne!(plain, guided);
}

#[test]
fn invalid_requests_are_refused_with_the_reason() {
    let m = model();
    let err = m
        .generate(&Request {
            width: Some(100),
            ..request("x", 1)
        })
        .unwrap_err();
    assert!(err.to_string().contains("width is 100"), "{err}");
    let err = m
        .generate(&Request {
            steps: 0,
            ..request("x", 1)
        })
        .unwrap_err();
    assert!(err.to_string().contains("steps"), "{err}");
    let err = m
        .generate(&Request {
            prompt: "word ".repeat(1000),
            ..request("x", 1)
        })
        .unwrap_err();
    assert!(err.to_string().contains("prompt"), "{err}");
}

fn write(dir: &Path, file: &str, text: &str) {
    let path = dir.join(file);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}

/// An SD 1.5-shaped directory's configuration files (no weights).
fn sd15_configs(dir: &Path) {
    write(
        dir,
        "unet/config.json",
        r#"{"in_channels": 4, "out_channels": 4, "block_out_channels": [320, 640, 1280, 1280],
            "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D",
                                 "CrossAttnDownBlock2D", "DownBlock2D"],
            "layers_per_block": 2, "attention_head_dim": 8, "cross_attention_dim": 768,
            "sample_size": 64}"#,
    );
    write(
        dir,
        "vae/config.json",
        r#"{"block_out_channels": [128, 256, 512, 512], "layers_per_block": 2,
            "latent_channels": 4, "scaling_factor": 0.18215}"#,
    );
    write(
        dir,
        "text_encoder/config.json",
        r#"{"hidden_size": 768, "num_hidden_layers": 12, "hidden_act": "quick_gelu"}"#,
    );
    write(
        dir,
        "scheduler/scheduler_config.json",
        r#"{"_class_name": "PNDMScheduler", "beta_start": 0.00085, "beta_end": 0.012,
            "num_train_timesteps": 1000}"#,
    );
}

#[test]
fn loading_a_missing_or_incomplete_directory_says_what_is_missing() {
    let dir = tempfile::tempdir().unwrap();
    let absent = dir.path().join("nope");
    let err = TextToImage::load_dir(&absent, &Device::Cpu).unwrap_err();
    assert!(matches!(err, LoadError::NoDirectory(_)), "{err}");

    let err = TextToImage::load_dir(dir.path(), &Device::Cpu).unwrap_err();
    assert!(matches!(err, LoadError::MissingFile { .. }), "{err}");
    assert!(err.to_string().contains("unet/config.json"), "{err}");

    sd15_configs(dir.path());
    let err = TextToImage::load_dir(dir.path(), &Device::Cpu).unwrap_err();
    assert!(err.to_string().contains("tokenizer/vocab.json"), "{err}");

    write(
        dir.path(),
        "tokenizer/vocab.json",
        r#"{"<|startoftext|>": 0, "<|endoftext|>": 1}"#,
    );
    write(dir.path(), "tokenizer/merges.txt", "#version: 0.2\n");
    let err = TextToImage::load_dir(dir.path(), &Device::Cpu).unwrap_err();
    assert!(
        err.to_string()
            .contains("diffusion_pytorch_model.safetensors"),
        "{err}"
    );

    // Weights files that lack the tensors: the error names the file.
    let empty = std::collections::HashMap::<String, candle_core::Tensor>::new();
    for file in [
        "unet/diffusion_pytorch_model.safetensors",
        "vae/diffusion_pytorch_model.safetensors",
        "text_encoder/model.safetensors",
    ] {
        candle_core::safetensors::save(&empty, dir.path().join(file)).unwrap();
    }
    let err = TextToImage::load_dir(dir.path(), &Device::Cpu).unwrap_err();
    assert!(matches!(err, LoadError::Weights { .. }), "{err}");
    assert!(
        err.to_string().contains("text_encoder/model.safetensors"),
        "{err}"
    );

    write(
        dir.path(),
        "text_encoder/config.json",
        r#"{"hidden_size": 512, "num_hidden_layers": 6, "hidden_act": "gelu"}"#,
    );
    let err = TextToImage::load_dir(dir.path(), &Device::Cpu).unwrap_err();
    assert!(matches!(err, LoadError::BadConfig { .. }), "{err}");
}
