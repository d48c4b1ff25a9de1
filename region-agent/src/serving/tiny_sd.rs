//! Text-to-image (`meridian/tiny-sd`) served through [`Model`].
//!
//! Input `{"prompt": "…", "steps": 4, "seed": 0, "width": 64, "height": 64, "guidance": 0}`
//! (only `prompt` is required; `width`/`height` default to the model's training size and
//! must be multiples of its size step; `guidance` above 1 turns on classifier-free
//! guidance), output `{"image": {file}}` (PNG). Units: megapixel-steps, the output's
//! megapixels times the denoising steps (`width × height / 10⁶ × steps`), known before the
//! job runs: a diffusion model's work grows with both.
//!
//! The same input run alone gives the same bytes. Run in a batch with other jobs, its pixels
//! may differ by one level (the batched U-Net sums in another order).
//!
//! The weights are either an operator-supplied diffusers directory (`weights_dir`, loaded
//! with [`TextToImage::load_dir`]) or the **pipeline test model** (`pipeline_test = true`):
//! toy networks with seeded random weights that draw noise, never pictures, for testing
//! the pipeline end to end without a model download.
//!
//! Batching is real: jobs with the same size, steps and guidance (the batch key) run through
//! [`TextToImage::generate_batch`], one U-Net call per step for all of them.

use std::io::Cursor;
use std::path::PathBuf;

use candle_core::Device;
use image::{ImageFormat, RgbImage};
use policy::PricingUnit;
use serde_json::Value;

use super::{
    InputError, JobInput, LoadedModel, Model, ModelError, ModelOutput, OutputFile, StopSignal,
};
use crate::models::tiny_sd::{LoadError, PipelineConfig, Request, RequestLimits, TextToImage};

/// Seed of the pipeline test model's random weights (not of the images: that is the
/// request's `seed`).
pub const PIPELINE_TEST_WEIGHTS_SEED: u64 = 0;
/// Denoising steps when the input gives none.
pub const DEFAULT_STEPS: u64 = 4;

/// Where the text-to-image weights come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TinySdWeights {
    /// A diffusers-layout directory of Stable Diffusion 1.x / 2.x / SD-Turbo weights.
    Dir(PathBuf),
    /// The pipeline test model: random weights, noise for images.
    PipelineTest,
}

/// The text-to-image model with what `prepare` needs to check a request before the weights
/// are loaded: the default size and the size step, read from the configuration.
#[derive(Debug, Clone)]
pub struct TinySdModel {
    id: String,
    weights: TinySdWeights,
    default_size: usize,
    size_step: usize,
    limits: RequestLimits,
}

impl TinySdModel {
    /// The model `id` with `weights`; a directory's configuration files are read (not its
    /// weights) and must describe a pipeline this agent can build.
    pub fn new(id: &str, weights: TinySdWeights) -> Result<Self, LoadError> {
        let config = match &weights {
            TinySdWeights::PipelineTest => PipelineConfig::pipeline_test(),
            TinySdWeights::Dir(dir) if !dir.is_dir() => {
                return Err(LoadError::NoDirectory(dir.clone()));
            }
            TinySdWeights::Dir(dir) => PipelineConfig::from_dir(dir)?,
        };
        Ok(Self {
            id: id.to_owned(),
            weights,
            default_size: config.default_size,
            size_step: size_step(&config),
            limits: RequestLimits::default(),
        })
    }

    /// Where the weights come from.
    pub fn weights(&self) -> &TinySdWeights {
        &self.weights
    }

    /// Checks the input and makes the request (its size resolved to the default when absent).
    fn request(&self, input: &Value) -> Result<Request, InputError> {
        let prompt = match input.get("prompt") {
            Some(Value::String(s)) => s.clone(),
            Some(_) => return Err(field("prompt", "must be a string")),
            None => return Err(field("prompt", "is missing")),
        };
        let steps = uint_field(input, "steps")?.unwrap_or(DEFAULT_STEPS);
        let seed = uint_field(input, "seed")?.unwrap_or(0);
        let guidance = match input.get("guidance") {
            None | Some(Value::Null) => 0.0,
            Some(v) => v
                .as_f64()
                .ok_or_else(|| field("guidance", "must be a number"))?,
        };
        let l = &self.limits;
        let unprocessable = |m: String| Err(InputError::Unprocessable(m));
        if prompt.len() > l.max_prompt_bytes {
            return unprocessable(format!(
                "input.prompt is {} bytes; the limit is {}",
                prompt.len(),
                l.max_prompt_bytes
            ));
        }
        if steps == 0 || steps > l.max_steps as u64 {
            return unprocessable(format!(
                "input.steps is {steps}; it must be 1–{}",
                l.max_steps
            ));
        }
        if !(guidance.is_finite() && guidance >= 0.0) {
            return unprocessable(format!(
                "input.guidance is {guidance}; it must be 0 or more"
            ));
        }
        let mut sides = [0usize; 2];
        for (side, name) in sides.iter_mut().zip(["width", "height"]) {
            let value = uint_field(input, name)?.unwrap_or(self.default_size as u64);
            if value == 0 || value > l.max_side as u64 || value % self.size_step as u64 != 0 {
                return unprocessable(format!(
                    "input.{name} is {value}; it must be a multiple of {} up to {}",
                    self.size_step, l.max_side
                ));
            }
            *side = value as usize;
        }
        Ok(Request {
            prompt,
            steps: steps as usize,
            seed,
            width: Some(sides[0]),
            height: Some(sides[1]),
            guidance,
        })
    }
}

/// Widths and heights must be multiples of this (what [`TextToImage::size_step`] gives once
/// the networks are built).
fn size_step(config: &PipelineConfig) -> usize {
    config.latent_factor() << config.unet.blocks.len().saturating_sub(1)
}

/// The work of one picture: its megapixels times its denoising steps.
pub fn megapixel_steps(width: usize, height: usize, steps: usize) -> f64 {
    (width * height) as f64 / 1e6 * steps as f64
}

fn field(name: &str, message: &str) -> InputError {
    InputError::Field {
        field: name.to_owned(),
        message: message.to_owned(),
    }
}

/// An optional non-negative integer field (`null` counts as absent).
fn uint_field(input: &Value, name: &str) -> Result<Option<u64>, InputError> {
    match input.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_u64()
            .map(Some)
            .ok_or_else(|| field(name, "must be a whole number, 0 or more")),
    }
}

impl Model for TinySdModel {
    fn id(&self) -> &str {
        &self.id
    }

    fn unit(&self) -> PricingUnit {
        PricingUnit::MegapixelStep
    }

    fn prepare(&self, input: &Value) -> Result<JobInput, InputError> {
        let request = self.request(input)?;
        let (w, h) = (
            request.width.unwrap_or_default(),
            request.height.unwrap_or_default(),
        );
        Ok(JobInput {
            units: megapixel_steps(w, h, request.steps),
            batch_key: format!("{w}x{h}/{}/{}", request.steps, request.guidance),
            payload: Box::new(request),
        })
    }

    fn load(&self, device: &Device) -> Result<Box<dyn LoadedModel>, ModelError> {
        let model = match &self.weights {
            TinySdWeights::PipelineTest => {
                TextToImage::pipeline_test(PIPELINE_TEST_WEIGHTS_SEED, device)
                    .map_err(|e| ModelError(format!("build the pipeline test model: {e}")))?
            }
            TinySdWeights::Dir(dir) => {
                TextToImage::load_dir(dir, device).map_err(|e| ModelError(e.to_string()))?
            }
        };
        let model = model.with_limits(self.limits);
        if (model.size_step(), model.config().default_size) != (self.size_step, self.default_size) {
            return Err(ModelError(
                "the model directory changed since the agent started; restart the agent".to_owned(),
            ));
        }
        Ok(Box::new(LoadedTinySd { model }))
    }
}

struct LoadedTinySd {
    model: TextToImage,
}

impl LoadedModel for LoadedTinySd {
    fn run(
        &mut self,
        batch: Vec<JobInput>,
        stop: &StopSignal,
    ) -> Vec<Result<ModelOutput, ModelError>> {
        let count = batch.len();
        let requests: Vec<Request> = batch
            .into_iter()
            .filter_map(|job| job.payload.downcast::<Request>().ok().map(|r| *r))
            .collect();
        if requests.len() != count {
            let error = ModelError("input of the wrong type for text-to-image".to_owned());
            return vec![Err(error); count];
        }
        match self.model.generate_batch_until(&requests, stop) {
            Ok(images) if images.len() == count => images.iter().map(encode).collect(),
            Ok(images) => {
                let error = ModelError(format!("{} images for {count} requests", images.len()));
                vec![Err(error); count]
            }
            Err(e) => vec![Err(ModelError(e.to_string())); count],
        }
    }
}

fn encode(image: &RgbImage) -> Result<ModelOutput, ModelError> {
    let mut bytes = Vec::new();
    image
        .write_to(&mut Cursor::new(&mut bytes), ImageFormat::Png)
        .map_err(|e| ModelError(format!("encode PNG: {e}")))?;
    Ok(ModelOutput {
        fields: serde_json::Map::new(),
        files: vec![OutputFile {
            field: "image".to_owned(),
            name: "image.png".to_owned(),
            content_type: "image/png".to_owned(),
            bytes,
        }],
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use serde_json::json;

    use super::*;

    fn model() -> TinySdModel {
        TinySdModel::new("meridian/tiny-sd", TinySdWeights::PipelineTest).unwrap()
    }

    #[test]
    fn prepare_fills_defaults_bills_megapixel_steps_and_keys_by_size_steps_and_guidance() {
        let m = model();
        assert_eq!(m.unit(), PricingUnit::MegapixelStep);
        let input = m.prepare(&json!({"prompt": "a fox"})).unwrap();
        // 64 × 64 pixels in the default 4 steps.
        assert_eq!(input.units, 64.0 * 64.0 / 1e6 * 4.0);
        assert_eq!(input.batch_key, "64x64/4/0");
        let request = input.payload.downcast::<Request>().unwrap();
        assert_eq!(
            *request,
            Request {
                width: Some(64),
                height: Some(64),
                ..Request::new("a fox", 4, 0)
            }
        );
        let input = m
            .prepare(&json!({"prompt": "x", "steps": 2, "seed": 9, "width": 96, "height": 32}))
            .unwrap();
        assert_eq!(input.batch_key, "96x32/2/0");
        assert_eq!(input.units, 96.0 * 32.0 / 1e6 * 2.0);
        assert_eq!(megapixel_steps(512, 512, 4), 1.048_576);
    }

    #[test]
    fn prepare_refuses_wrong_types_with_400_and_limits_with_422() {
        let m = model();
        for input in [
            json!({}),
            json!({"prompt": 1}),
            json!({"prompt": "x", "steps": "four"}),
            json!({"prompt": "x", "seed": -1}),
            json!({"prompt": "x", "width": 6.5}),
        ] {
            assert!(
                matches!(m.prepare(&input), Err(InputError::Field { .. })),
                "{input}"
            );
        }
        for input in [
            json!({"prompt": "x", "steps": 0}),
            json!({"prompt": "x", "steps": 51}),
            json!({"prompt": "x", "width": 100}),
            json!({"prompt": "x", "height": 2048}),
            json!({"prompt": "x", "guidance": -1.0}),
            json!({"prompt": "x".repeat(2049)}),
        ] {
            assert!(
                matches!(m.prepare(&input), Err(InputError::Unprocessable(_))),
                "{input}"
            );
        }
    }

    #[test]
    fn a_batch_gives_the_images_one_by_one_gives_within_one_level() {
        let m = model();
        let mut loaded = m.load(&Device::Cpu).unwrap();
        let inputs = || {
            [1u64, 2, 3].map(|seed| {
                m.prepare(&json!({"prompt": format!("prompt {seed}"), "seed": seed, "steps": 2}))
                    .unwrap()
            })
        };
        let decode = |r: Result<ModelOutput, ModelError>| {
            image::load_from_memory_with_format(&r.unwrap().files[0].bytes, ImageFormat::Png)
                .unwrap()
                .to_rgb8()
        };
        let batched: Vec<RgbImage> = loaded
            .run(inputs().into(), &StopSignal::never())
            .into_iter()
            .map(decode)
            .collect();
        let single: Vec<RgbImage> = inputs()
            .into_iter()
            .map(|input| decode(loaded.run(vec![input], &StopSignal::never()).remove(0)))
            .collect();
        for (b, s) in batched.iter().zip(&single) {
            assert_eq!(b.dimensions(), (64, 64));
            let max_diff = b
                .as_raw()
                .iter()
                .zip(s.as_raw())
                .map(|(x, y)| x.abs_diff(*y))
                .max()
                .unwrap();
            assert!(max_diff <= 1, "batched image differs by up to {max_diff}");
        }
        assert_ne!(batched[0], batched[1]);
    }
}
