//! Text-to-image with latent diffusion (`meridian/tiny-sd`), on `candle-transformers`'
//! Stable Diffusion networks: a CLIP text encoder, a conditional U-Net and a KL autoencoder,
//! driven by a deterministic Euler sampler ([`scheduler`]) so that a seed fixes the image.
//!
//! Two ways to get a [`TextToImage`], one code path after that:
//!
//! - [`TextToImage::pipeline_test`]: the **pipeline test model**, built in code at a toy size
//!   ([`PipelineConfig::pipeline_test`]) with seeded random weights ([`seeded`]) and a
//!   word-hash tokenizer. It draws structured noise, not pictures: it proves that prompts,
//!   seeds, sizes and steps flow through the pipeline, in well under a second on a CPU.
//! - [`TextToImage::load_dir`]: real Stable Diffusion 1.x / 2.x / SD-Turbo weights from an
//!   operator-supplied diffusers-layout directory: `unet/`, `vae/` and `text_encoder/` (each
//!   a `config.json` and a `*.safetensors`), `tokenizer/vocab.json` + `merges.txt` (CLIP's
//!   BPE, see [`tokenizer`]) and `scheduler/scheduler_config.json`. Nothing is downloaded.
//!
//! Requests with the same size, steps and guidance run as one batch
//! ([`TextToImage::generate_batch`]): every denoising step is one U-Net call for all of them
//! (images are decoded one by one; see [`TextToImage::generate_batch`]).

pub mod config;
pub mod scheduler;
pub mod seeded;
pub mod tokenizer;

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::clip::text_model::ClipTextTransformer as ClipText;
use candle_transformers::models::stable_diffusion::clip::ClipTextTransformer as SdClipText;
use candle_transformers::models::stable_diffusion::unet_2d::UNet2DConditionModel;
use candle_transformers::models::stable_diffusion::vae::AutoEncoderKL;
use image::RgbImage;

pub use self::config::{LoadError, PipelineConfig, TextEncoderConfig};
use self::scheduler::EulerSampler;
use self::tokenizer::{ClipBpe, PromptTokenizer};
use super::image_io;
use super::stop::{StopSignal, Stopped};

/// One image to draw.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    /// What to draw.
    pub prompt: String,
    /// Denoising steps (1–50; SD-Turbo needs 1–4, SD 1.5 about 25).
    pub steps: usize,
    /// Seed of the initial noise: the same request gives the same image.
    pub seed: u64,
    /// Image width in pixels, a multiple of [`TextToImage::size_step`]; `None`: the model's
    /// default.
    pub width: Option<usize>,
    /// Image height in pixels, likewise.
    pub height: Option<usize>,
    /// Classifier-free guidance scale; at or below 1 no guidance (SD-Turbo), 7.5 for SD 1.5.
    pub guidance: f64,
}

impl Request {
    /// A request at the model's default size, without guidance.
    pub fn new(prompt: impl Into<String>, steps: usize, seed: u64) -> Self {
        Self {
            prompt: prompt.into(),
            steps,
            seed,
            width: None,
            height: None,
            guidance: 0.0,
        }
    }
}

/// Limits on requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestLimits {
    /// Most denoising steps.
    pub max_steps: usize,
    /// Largest width or height, in pixels.
    pub max_side: usize,
    /// Largest prompt, in bytes.
    pub max_prompt_bytes: usize,
}

impl Default for RequestLimits {
    /// 50 steps, 1024 pixels a side, 2 KiB of prompt.
    fn default() -> Self {
        Self {
            max_steps: 50,
            max_side: 1024,
            max_prompt_bytes: 2048,
        }
    }
}

/// Why an image could not be drawn.
#[derive(Debug, thiserror::Error)]
pub enum GenerateError {
    /// The request is outside what the model accepts.
    #[error("invalid text-to-image request: {0}")]
    InvalidRequest(String),
    /// The networks failed to run.
    #[error("run text-to-image: {0}")]
    Inference(#[from] candle_core::Error),
    /// The job was stopped (timeout or cancellation) between two denoising steps.
    #[error(transparent)]
    Stopped(#[from] Stopped),
}

enum TextEncoder {
    StableDiffusion(SdClipText),
    Clip(ClipText),
}

impl TextEncoder {
    fn forward(&self, ids: &Tensor) -> candle_core::Result<Tensor> {
        match self {
            Self::StableDiffusion(m) => m.forward_with_mask(ids, usize::MAX),
            Self::Clip(m) => m.forward_with_mask(ids, usize::MAX),
        }
    }
}

/// A loaded text-to-image pipeline.
pub struct TextToImage {
    config: PipelineConfig,
    tokenizer: PromptTokenizer,
    text: TextEncoder,
    unet: UNet2DConditionModel,
    vae: AutoEncoderKL,
    device: Device,
    limits: RequestLimits,
}

impl std::fmt::Debug for TextToImage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TextToImage")
            .field("default_size", &self.config.default_size)
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

impl TextToImage {
    /// The pipeline test model (see the module docs): toy networks with weights made from
    /// `seed`. Its images are noise; it exists to test the pipeline.
    pub fn pipeline_test(seed: u64, device: &Device) -> candle_core::Result<Self> {
        let config = PipelineConfig::pipeline_test();
        let TextEncoderConfig::Clip(text_cfg) = &config.text else {
            candle_core::bail!("the pipeline test model uses the generic CLIP text encoder");
        };
        let vocab_size = text_cfg.vocab_size as u32;
        let vb = seeded::seeded_var_builder(seed, device);
        let text = TextEncoder::Clip(ClipText::new(vb.pp("text_model"), text_cfg)?);
        let unet = UNet2DConditionModel::new(
            vb.pp("unet"),
            config.latent_channels,
            config.latent_channels,
            false,
            config.unet.clone(),
        )?;
        let vae = AutoEncoderKL::new(vb.pp("vae"), 3, 3, config.vae.clone())?;
        Ok(Self {
            tokenizer: PromptTokenizer::WordHash { vocab_size },
            config,
            text,
            unet,
            vae,
            device: device.clone(),
            limits: RequestLimits::default(),
        })
    }

    /// Loads real weights from a diffusers-layout directory (see the module docs).
    pub fn load_dir(dir: &Path, device: &Device) -> Result<Self, LoadError> {
        if !dir.is_dir() {
            return Err(LoadError::NoDirectory(dir.to_path_buf()));
        }
        let config = PipelineConfig::from_dir(dir)?;
        let TextEncoderConfig::StableDiffusion(text_cfg) = &config.text else {
            return Err(LoadError::BadConfig {
                path: dir.join("text_encoder/config.json"),
                reason: "not a Stable Diffusion text encoder".into(),
            });
        };
        let tok_dir = dir.join("tokenizer");
        for file in ["vocab.json", "merges.txt"] {
            if !tok_dir.join(file).is_file() {
                return Err(LoadError::MissingFile {
                    path: tok_dir.join(file),
                    what: "CLIP's tokenizer",
                });
            }
        }
        let bpe = ClipBpe::load(&tok_dir)?;
        let pad = match &text_cfg.pad_with {
            Some(p) => bpe.token_id(p).unwrap_or(bpe.eos()),
            None => bpe.eos(),
        };
        let unet_file = weights_file(dir, "unet", "diffusion_pytorch_model", "U-Net weights")?;
        let vae_file = weights_file(dir, "vae", "diffusion_pytorch_model", "autoencoder weights")?;
        let text_file = weights_file(dir, "text_encoder", "model", "text encoder weights")?;
        let text = TextEncoder::StableDiffusion(
            SdClipText::new(mmap(&text_file, device)?, text_cfg)
                .map_err(weights_error(&text_file))?,
        );
        let unet = UNet2DConditionModel::new(
            mmap(&unet_file, device)?,
            config.latent_channels,
            config.latent_channels,
            false,
            config.unet.clone(),
        )
        .map_err(weights_error(&unet_file))?;
        let vae = AutoEncoderKL::new(mmap(&vae_file, device)?, 3, 3, config.vae.clone())
            .map_err(weights_error(&vae_file))?;
        Ok(Self {
            tokenizer: PromptTokenizer::Clip {
                bpe: Box::new(bpe),
                pad,
            },
            config,
            text,
            unet,
            vae,
            device: device.clone(),
            limits: RequestLimits::default(),
        })
    }

    /// Replaces the request limits (default: [`RequestLimits::default`]).
    pub fn with_limits(mut self, limits: RequestLimits) -> Self {
        self.limits = limits;
        self
    }

    /// The configuration the networks were built from.
    pub fn config(&self) -> &PipelineConfig {
        &self.config
    }

    /// Widths and heights must be multiples of this: the autoencoder's factor times the
    /// U-Net's downsampling (64 for SD, 16 for the pipeline test model).
    pub fn size_step(&self) -> usize {
        self.config.latent_factor() << self.config.unet.blocks.len().saturating_sub(1)
    }

    /// Draws one image.
    pub fn generate(&self, request: &Request) -> Result<RgbImage, GenerateError> {
        let mut images = self.generate_batch(std::slice::from_ref(request))?;
        images
            .pop()
            .ok_or_else(|| GenerateError::InvalidRequest("no image was produced".into()))
    }

    /// Draws several images with one U-Net call per step. All requests must share size,
    /// steps and guidance.
    pub fn generate_batch(&self, requests: &[Request]) -> Result<Vec<RgbImage>, GenerateError> {
        self.generate_batch_until(requests, &StopSignal::never())
    }

    /// [`Self::generate_batch`], checking `stop` before every denoising step and before the
    /// images are decoded: a stopped batch returns [`GenerateError::Stopped`] at the first
    /// of these safe points after the signal, having run at most one more step.
    pub fn generate_batch_until(
        &self,
        requests: &[Request],
        stop: &StopSignal,
    ) -> Result<Vec<RgbImage>, GenerateError> {
        let Some(first) = requests.first() else {
            return Ok(Vec::new());
        };
        let (width, height) = self.check(first)?;
        for r in requests {
            self.check(r)?;
            if (r.width, r.height, r.steps, r.guidance)
                != (first.width, first.height, first.steps, first.guidance)
            {
                return Err(GenerateError::InvalidRequest(
                    "requests in one batch must share size, steps and guidance".into(),
                ));
            }
        }
        let n = requests.len();
        let guided = first.guidance > 1.0;
        let prompts: Vec<&str> = requests.iter().map(|r| r.prompt.as_str()).collect();
        let mut embeddings = self.embed(&prompts)?;
        if guided {
            let empty = self.embed(&vec![""; n])?;
            embeddings = Tensor::cat(&[empty, embeddings], 0)?;
        }
        let sampler = EulerSampler::new(&self.config.schedule, first.steps);
        let factor = self.config.latent_factor();
        let shape = (
            1,
            self.config.latent_channels,
            height / factor,
            width / factor,
        );
        let noise = requests
            .iter()
            .map(|r| {
                let count = shape.1 * shape.2 * shape.3;
                Tensor::from_vec(seeded::normal_f32(r.seed, count), shape, &self.device)
            })
            .collect::<candle_core::Result<Vec<_>>>()?;
        let mut latents = (Tensor::cat(&noise, 0)? * sampler.init_noise_sigma())?;
        for (i, &t) in sampler.timesteps.iter().enumerate() {
            stop.check()?;
            let input = (&latents * sampler.input_scale(i))?;
            let input = if guided {
                Tensor::cat(&[&input, &input], 0)?
            } else {
                input
            };
            let mut output = self.unet.forward(&input, t as f64, &embeddings)?;
            if guided {
                let parts = output.chunk(2, 0)?;
                output = (&parts[0] + ((&parts[1] - &parts[0])? * first.guidance)?)?;
            }
            let (a, b) = sampler.step_coefficients(i);
            latents = ((latents * a)? + (output * b)?)?;
        }
        stop.check()?;
        let latents = (latents / self.config.vae_scaling)?;
        // One image at a time: the autoencoder's attention block feeds a transposed
        // [n, pixels, channels] input to candle-nn's `Linear`, and candle-core's CPU matmul
        // (still in 0.11.1) folds such a batch into one gemm as if its rows were contiguous,
        // so every image after the first comes out wrong (candle PR #3758 proposes the fix).
        (0..n)
            .map(|i| {
                let pixels = self.vae.decode(&latents.narrow(0, i, 1)?)?;
                // [-1, 1] → [0, 255]
                Ok(image_io::tensor_to_rgb(&((pixels + 1.0)? * 127.5)?)?)
            })
            .collect()
    }

    /// Checks a request and returns its width and height.
    fn check(&self, r: &Request) -> Result<(usize, usize), GenerateError> {
        let invalid = |m: String| Err(GenerateError::InvalidRequest(m));
        let l = &self.limits;
        if r.steps == 0 || r.steps > l.max_steps {
            return invalid(format!(
                "steps is {}; it must be 1–{}",
                r.steps, l.max_steps
            ));
        }
        if r.prompt.len() > l.max_prompt_bytes {
            return invalid(format!(
                "the prompt is {} bytes; the limit is {}",
                r.prompt.len(),
                l.max_prompt_bytes
            ));
        }
        if !r.guidance.is_finite() || r.guidance < 0.0 {
            return invalid(format!("guidance is {}; it must be 0 or more", r.guidance));
        }
        let factor = self.size_step();
        let width = r.width.unwrap_or(self.config.default_size);
        let height = r.height.unwrap_or(self.config.default_size);
        for (name, v) in [("width", width), ("height", height)] {
            if v == 0 || v > l.max_side || !v.is_multiple_of(factor) {
                return invalid(format!(
                    "{name} is {v}; it must be a multiple of {factor} up to {}",
                    l.max_side
                ));
            }
        }
        Ok((width, height))
    }

    /// Text embeddings `[n, tokens, dim]` of prompts.
    fn embed(&self, prompts: &[&str]) -> candle_core::Result<Tensor> {
        let len = self.config.max_tokens;
        let ids: Vec<u32> = prompts
            .iter()
            .flat_map(|p| self.tokenizer.encode_padded(p, len))
            .collect();
        let ids = Tensor::from_vec(ids, (prompts.len(), len), &self.device)?;
        self.text.forward(&ids)
    }
}

/// The first of `<name>.safetensors` and `<name>.fp16.safetensors` in `dir/sub`.
fn weights_file(
    dir: &Path,
    sub: &str,
    name: &str,
    what: &'static str,
) -> Result<PathBuf, LoadError> {
    let candidates = [
        dir.join(sub).join(format!("{name}.safetensors")),
        dir.join(sub).join(format!("{name}.fp16.safetensors")),
    ];
    candidates
        .iter()
        .find(|p| p.is_file())
        .cloned()
        .ok_or_else(|| LoadError::MissingFile {
            path: candidates[0].clone(),
            what,
        })
}

fn weights_error(path: &Path) -> impl Fn(candle_core::Error) -> LoadError + '_ {
    move |source| LoadError::Weights {
        path: path.to_path_buf(),
        source,
    }
}

fn mmap(path: &Path, device: &Device) -> Result<VarBuilder<'static>, LoadError> {
    // SAFETY: the file is memory-mapped read-only. Operator-supplied model directories are
    // installed before the agent loads them and are not modified in place while it runs.
    #[allow(unsafe_code)]
    let vb = unsafe { VarBuilder::from_mmaped_safetensors(&[path], DType::F32, device) };
    vb.map_err(weights_error(path))
}
