//! The configuration of a text-to-image pipeline: read from a diffusers-layout model
//! directory (`unet/config.json`, `vae/config.json`, `text_encoder/config.json`,
//! `scheduler/scheduler_config.json`), or built in code for the pipeline test model.

use std::path::{Path, PathBuf};

use candle_transformers::models::clip::text_model::{Activation, ClipTextConfig};
use candle_transformers::models::stable_diffusion::clip;
use candle_transformers::models::stable_diffusion::unet_2d::{
    BlockConfig, UNet2DConditionModelConfig,
};
use candle_transformers::models::stable_diffusion::vae::AutoEncoderKLConfig;
use serde::Deserialize;

use super::scheduler::NoiseSchedule;

/// Why a model directory could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The directory does not exist.
    #[error("model directory {0} does not exist")]
    NoDirectory(PathBuf),
    /// A file the pipeline needs is missing.
    #[error("model directory is incomplete: {path} is missing ({what})")]
    MissingFile {
        /// The file (or the first of the names tried).
        path: PathBuf,
        /// What it holds.
        what: &'static str,
    },
    /// A configuration file cannot be used.
    #[error("model configuration {path} cannot be used: {reason}")]
    BadConfig {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The tokenizer files cannot be used.
    #[error(transparent)]
    Tokenizer(#[from] super::tokenizer::TokenizerError),
    /// The weights do not fit the configuration (missing tensor, wrong shape).
    #[error("load weights from {path}: {source}")]
    Weights {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: candle_core::Error,
    },
}

/// Which text encoder implementation a configuration uses.
#[derive(Debug, Clone)]
pub enum TextEncoderConfig {
    /// The SD 1.x (CLIP ViT-L/14) or SD 2.x / SD-Turbo (OpenCLIP ViT-H/14) encoder.
    StableDiffusion(clip::Config),
    /// A CLIP text transformer of any size (QuickGELU); the pipeline test model's.
    Clip(ClipTextConfig),
}

/// Everything needed to build the pipeline's networks.
#[derive(Debug, Clone)]
pub struct PipelineConfig {
    /// The text encoder.
    pub text: TextEncoderConfig,
    /// Token ids per prompt (77 for the real encoders).
    pub max_tokens: usize,
    /// The denoising U-Net.
    pub unet: UNet2DConditionModelConfig,
    /// The U-Net's latent channels in and out.
    pub latent_channels: usize,
    /// The autoencoder.
    pub vae: AutoEncoderKLConfig,
    /// Latents are divided by this before decoding (0.18215 for SD).
    pub vae_scaling: f64,
    /// The training noise schedule.
    pub schedule: NoiseSchedule,
    /// Default image side in pixels (the training resolution).
    pub default_size: usize,
}

impl PipelineConfig {
    /// Pixels per latent cell (8 for SD's four-level autoencoder).
    pub fn latent_factor(&self) -> usize {
        1 << self.vae.block_out_channels.len().saturating_sub(1)
    }

    /// The pipeline test model: every network at a toy width (a 2-layer, 32-wide text
    /// encoder over a 1000-token hashed vocabulary; a 2-level, 32/64-channel U-Net; a 4-level
    /// 8/16-channel autoencoder, so the latent factor is SD's 8). With random weights it
    /// draws noise; it exists to prove the pipeline, never to make pictures.
    pub fn pipeline_test() -> Self {
        let text = ClipTextConfig {
            vocab_size: 1000,
            embed_dim: 32,
            activation: Activation::QuickGelu,
            intermediate_size: 64,
            max_position_embeddings: 16,
            pad_with: None,
            num_hidden_layers: 2,
            num_attention_heads: 4,
            projection_dim: 32,
        };
        let block = |out_channels, use_cross_attn| BlockConfig {
            out_channels,
            use_cross_attn,
            attention_head_dim: 2,
        };
        let unet = UNet2DConditionModelConfig {
            blocks: vec![block(32, Some(1)), block(64, None)],
            layers_per_block: 1,
            norm_num_groups: 8,
            cross_attention_dim: 32,
            ..UNet2DConditionModelConfig::default()
        };
        let vae = AutoEncoderKLConfig {
            block_out_channels: vec![8, 16, 16, 16],
            layers_per_block: 1,
            latent_channels: 4,
            norm_num_groups: 8,
            use_quant_conv: true,
            use_post_quant_conv: true,
        };
        Self {
            max_tokens: text.max_position_embeddings,
            text: TextEncoderConfig::Clip(text),
            unet,
            latent_channels: 4,
            vae,
            vae_scaling: 0.18215,
            schedule: NoiseSchedule::default(),
            default_size: 64,
        }
    }

    /// Reads the configuration of a diffusers-layout Stable Diffusion 1.x/2.x (SD-Turbo)
    /// directory.
    pub fn from_dir(dir: &Path) -> Result<Self, LoadError> {
        let unet: UnetJson = read_json(dir, "unet/config.json", "the U-Net's configuration")?;
        let vae: VaeJson = read_json(dir, "vae/config.json", "the autoencoder's configuration")?;
        let text: TextJson = read_json(
            dir,
            "text_encoder/config.json",
            "the text encoder's configuration",
        )?;
        let schedule: NoiseSchedule =
            read_json(dir, "scheduler/scheduler_config.json", "the noise schedule")?;
        let bad = |file: &str, reason: String| LoadError::BadConfig {
            path: dir.join(file),
            reason,
        };
        let text = text
            .preset()
            .ok_or_else(|| bad("text_encoder/config.json", format!("{text:?} is neither the SD 1.x (768 wide, 12 layers, quick_gelu) nor the SD 2.x (1024 wide, 23 layers, gelu) CLIP text encoder")))?;
        let n = unet.block_out_channels.len();
        if unet.down_block_types.len() != n || n == 0 {
            return Err(bad(
                "unet/config.json",
                "down_block_types and block_out_channels differ in length".into(),
            ));
        }
        let heads = unet.attention_head_dim.per_block(n);
        let blocks = (0..n)
            .map(|i| BlockConfig {
                out_channels: unet.block_out_channels[i],
                use_cross_attn: unet.down_block_types[i]
                    .starts_with("CrossAttn")
                    .then_some(1),
                attention_head_dim: heads[i],
            })
            .collect();
        if unet.in_channels != vae.latent_channels || unet.out_channels != vae.latent_channels {
            return Err(bad(
                "unet/config.json",
                format!(
                    "in/out channels {}/{} do not match the autoencoder's {} latent channels",
                    unet.in_channels, unet.out_channels, vae.latent_channels
                ),
            ));
        }
        let latent_factor = 1usize << vae.block_out_channels.len().saturating_sub(1);
        Ok(Self {
            max_tokens: 77,
            text: TextEncoderConfig::StableDiffusion(text),
            unet: UNet2DConditionModelConfig {
                blocks,
                center_input_sample: unet.center_input_sample,
                flip_sin_to_cos: unet.flip_sin_to_cos,
                freq_shift: unet.freq_shift,
                layers_per_block: unet.layers_per_block,
                downsample_padding: unet.downsample_padding,
                mid_block_scale_factor: unet.mid_block_scale_factor,
                norm_num_groups: unet.norm_num_groups,
                norm_eps: unet.norm_eps,
                cross_attention_dim: unet.cross_attention_dim,
                sliced_attention_size: None,
                use_linear_projection: unet.use_linear_projection,
            },
            latent_channels: vae.latent_channels,
            vae: AutoEncoderKLConfig {
                block_out_channels: vae.block_out_channels,
                layers_per_block: vae.layers_per_block,
                latent_channels: vae.latent_channels,
                norm_num_groups: vae.norm_num_groups,
                use_quant_conv: true,
                use_post_quant_conv: true,
            },
            vae_scaling: vae.scaling_factor,
            schedule,
            default_size: unet.sample_size * latent_factor,
        })
    }
}

fn read_json<T: for<'de> Deserialize<'de>>(
    dir: &Path,
    file: &str,
    what: &'static str,
) -> Result<T, LoadError> {
    let path = dir.join(file);
    let text = std::fs::read_to_string(&path).map_err(|_| LoadError::MissingFile {
        path: path.clone(),
        what,
    })?;
    serde_json::from_str(&text).map_err(|e| LoadError::BadConfig {
        path,
        reason: e.to_string(),
    })
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum HeadDims {
    One(usize),
    PerBlock(Vec<usize>),
}

impl HeadDims {
    fn per_block(&self, n: usize) -> Vec<usize> {
        match self {
            Self::One(d) => vec![*d; n],
            Self::PerBlock(v) => (0..n)
                .map(|i| v.get(i).or(v.last()).copied().unwrap_or(8))
                .collect(),
        }
    }
}

#[derive(Debug, Deserialize)]
struct UnetJson {
    in_channels: usize,
    out_channels: usize,
    block_out_channels: Vec<usize>,
    down_block_types: Vec<String>,
    layers_per_block: usize,
    attention_head_dim: HeadDims,
    cross_attention_dim: usize,
    #[serde(default = "default_groups")]
    norm_num_groups: usize,
    #[serde(default = "default_eps")]
    norm_eps: f64,
    #[serde(default)]
    use_linear_projection: bool,
    #[serde(default = "default_true")]
    flip_sin_to_cos: bool,
    #[serde(default)]
    freq_shift: f64,
    #[serde(default = "default_one")]
    downsample_padding: usize,
    #[serde(default = "default_one_f")]
    mid_block_scale_factor: f64,
    #[serde(default)]
    center_input_sample: bool,
    #[serde(default = "default_sample_size")]
    sample_size: usize,
}

#[derive(Debug, Deserialize)]
struct VaeJson {
    block_out_channels: Vec<usize>,
    layers_per_block: usize,
    latent_channels: usize,
    #[serde(default = "default_groups")]
    norm_num_groups: usize,
    #[serde(default = "default_scaling")]
    scaling_factor: f64,
}

#[derive(Debug, Deserialize)]
struct TextJson {
    hidden_size: usize,
    num_hidden_layers: usize,
    hidden_act: String,
}

impl TextJson {
    fn preset(&self) -> Option<clip::Config> {
        match (
            self.hidden_size,
            self.num_hidden_layers,
            self.hidden_act.as_str(),
        ) {
            (768, 12, "quick_gelu") => Some(clip::Config::v1_5()),
            (1024, 23, "gelu") => Some(clip::Config::v2_1()),
            _ => None,
        }
    }
}

fn default_groups() -> usize {
    32
}
fn default_eps() -> f64 {
    1e-5
}
fn default_true() -> bool {
    true
}
fn default_one() -> usize {
    1
}
fn default_one_f() -> f64 {
    1.0
}
fn default_sample_size() -> usize {
    64
}
fn default_scaling() -> f64 {
    0.18215
}
