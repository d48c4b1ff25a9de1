//! The ESRGAN-slim network in candle.
//!
//! Despite its package name, the "slim" model is a residual dense network (RDN) as described
//! by the Keras topology in the package's `model.json`:
//!
//! ```text
//! LR ─ F_m1 (3×3) ─ F_0 (3×3) ─ D × RDB ─ concat(RDB outputs) ─ GFF_1 (1×1) ─ GFF_2 (3×3) ─ + F_m1
//!    ─ UPN1 (5×5, relu) ─ UPN2 (3×3, relu) ─ UPN3 (3×3) ─ nearest ×scale ─ SR (3×3) ─ HR
//!
//! RDB d:  x ─ C × [F_d_c (3×3, relu), concat with its input] ─ LFF_d (1×1) ─ + x
//! ```
//!
//! Tensors are NCHW `f32`; inputs and outputs are pixel values in `[0, 255]` (the model's
//! trained range; the output is not clamped here). Weight names are the Keras layer names with
//! candle's `.weight` / `.bias` suffixes, e.g. `F_1_1.weight` (OIHW).

use candle_core::{Module, Result, Tensor};
use candle_nn::{Conv2d, Conv2dConfig, VarBuilder, conv2d};
use serde::{Deserialize, Serialize};

/// Kernel size of every 3×3 convolution.
pub const KERNEL: usize = 3;
/// Kernel size of the first upsampling convolution (`UPN1`).
pub const UPSAMPLE_KERNEL: usize = 5;
/// Colour channels in and out.
pub const CHANNELS: usize = 3;

/// The hyper-parameters of one ESRGAN-slim (RDN) network.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RdnConfig {
    /// Upscaling factor (2, 3, 4 or 8 in the shipped models).
    pub scale: usize,
    /// Feature channels between blocks (`G0`; 64).
    pub features: usize,
    /// Channels each dense convolution adds (`G`; 4).
    pub growth: usize,
    /// Residual dense blocks (`D`; 2).
    pub blocks: usize,
    /// Dense convolutions per block (`C`; 1).
    pub convs_per_block: usize,
    /// Output channels of `UPN1`, `UPN2`, `UPN3` (64, 32, 3·scale² in the shipped models).
    pub upsample_features: [usize; 3],
}

impl RdnConfig {
    /// The configuration of the shipped ESRGAN-slim models for `scale`.
    pub fn slim(scale: usize) -> Self {
        Self {
            scale,
            features: 64,
            growth: 4,
            blocks: 2,
            convs_per_block: 1,
            upsample_features: [64, 32, CHANNELS * scale * scale],
        }
    }

    /// Layer name of dense convolution `c` of block `d` (both 1-based).
    pub fn dense_conv_name(d: usize, c: usize) -> String {
        format!("F_{d}_{c}")
    }

    /// Layer name of the local feature fusion of block `d` (1-based).
    pub fn fusion_name(d: usize) -> String {
        format!("LFF_{d}")
    }
}

fn same_conv(cin: usize, cout: usize, k: usize, vb: VarBuilder<'_>) -> Result<Conv2d> {
    let cfg = Conv2dConfig {
        padding: k / 2,
        ..Default::default()
    };
    conv2d(cin, cout, k, cfg, vb)
}

/// One residual dense block.
#[derive(Debug, Clone)]
struct ResidualDenseBlock {
    dense: Vec<Conv2d>,
    fusion: Conv2d,
}

impl ResidualDenseBlock {
    fn new(cfg: &RdnConfig, d: usize, vb: &VarBuilder<'_>) -> Result<Self> {
        let mut dense = Vec::with_capacity(cfg.convs_per_block);
        let mut channels = cfg.features;
        for c in 1..=cfg.convs_per_block {
            let name = RdnConfig::dense_conv_name(d, c);
            dense.push(same_conv(channels, cfg.growth, KERNEL, vb.pp(name))?);
            channels += cfg.growth;
        }
        let fusion = same_conv(channels, cfg.features, 1, vb.pp(RdnConfig::fusion_name(d)))?;
        Ok(Self { dense, fusion })
    }

    fn forward(&self, input: &Tensor) -> Result<Tensor> {
        let mut x = input.clone();
        for conv in &self.dense {
            let grown = conv.forward(&x)?.relu()?;
            x = Tensor::cat(&[&x, &grown], 1)?;
        }
        self.fusion.forward(&x)? + input
    }
}

/// The ESRGAN-slim network with its weights.
#[derive(Debug, Clone)]
pub struct Rdn {
    cfg: RdnConfig,
    shallow_1: Conv2d,
    shallow_2: Conv2d,
    blocks: Vec<ResidualDenseBlock>,
    global_fusion_1: Conv2d,
    global_fusion_2: Conv2d,
    upsample: [Conv2d; 3],
    reconstruct: Conv2d,
}

impl Rdn {
    /// Builds the network, taking every weight from `vb` (shapes are checked there).
    pub fn new(cfg: RdnConfig, vb: VarBuilder<'_>) -> Result<Self> {
        let g0 = cfg.features;
        let [u1, u2, u3] = cfg.upsample_features;
        let blocks = (1..=cfg.blocks)
            .map(|d| ResidualDenseBlock::new(&cfg, d, &vb))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            shallow_1: same_conv(CHANNELS, g0, KERNEL, vb.pp("F_m1"))?,
            shallow_2: same_conv(g0, g0, KERNEL, vb.pp("F_0"))?,
            blocks,
            global_fusion_1: same_conv(g0 * cfg.blocks, g0, 1, vb.pp("GFF_1"))?,
            global_fusion_2: same_conv(g0, g0, KERNEL, vb.pp("GFF_2"))?,
            upsample: [
                same_conv(g0, u1, UPSAMPLE_KERNEL, vb.pp("UPN1"))?,
                same_conv(u1, u2, KERNEL, vb.pp("UPN2"))?,
                same_conv(u2, u3, KERNEL, vb.pp("UPN3"))?,
            ],
            reconstruct: same_conv(u3, CHANNELS, KERNEL, vb.pp("SR"))?,
            cfg,
        })
    }

    /// The network's hyper-parameters.
    pub fn config(&self) -> &RdnConfig {
        &self.cfg
    }
}

impl Module for Rdn {
    /// `[n, 3, h, w]` in `[0, 255]` → `[n, 3, h·scale, w·scale]`.
    fn forward(&self, lr: &Tensor) -> Result<Tensor> {
        let (_, _, h, w) = lr.dims4()?;
        let shallow = self.shallow_1.forward(lr)?;
        let mut x = self.shallow_2.forward(&shallow)?;
        let mut block_outputs = Vec::with_capacity(self.blocks.len());
        for block in &self.blocks {
            x = block.forward(&x)?;
            block_outputs.push(x.clone());
        }
        let fused = Tensor::cat(&block_outputs, 1)?;
        let fused = self.global_fusion_1.forward(&fused)?;
        let features = (self.global_fusion_2.forward(&fused)? + shallow)?;
        let [up1, up2, up3] = &self.upsample;
        let x = up1.forward(&features)?.relu()?;
        let x = up2.forward(&x)?.relu()?;
        let x = up3.forward(&x)?;
        let s = self.cfg.scale;
        let x = x.upsample_nearest2d(h * s, w * s)?;
        self.reconstruct.forward(&x)
    }
}
