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
//!
//! The tail "nearest ×s, then a 3×3 convolution" is computed as one 3×3 convolution at low
//! resolution with `3·s²` outputs followed by a pixel shuffle: each high-resolution pixel's
//! 3×3 window over the nearest-upsampled map only reads a 3×3 low-resolution window, so the
//! kernel for each of the `s²` sub-pixel phases is the sum of the original taps that land on
//! the same low-resolution pixel. Zero padding maps to zero padding, so the two are equal up to
//! float rounding ([`Rdn::forward_unfused`] computes the literal graph) and the fused form
//! avoids an `s²`-times larger im2col buffer.

use candle_core::{Module, Result, Tensor};
use candle_nn::{Conv2d, VarBuilder};
use serde::{Deserialize, Serialize};

use super::conv;

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

    /// How far an output pixel's inputs reach, in low-resolution pixels: the sum of `k / 2`
    /// over the convolutions on the longest path of the graph in the module doc (`F_m1`,
    /// `F_0`, every dense convolution of every block, `GFF_2`, `UPN1`–`UPN3`, `SR`). The
    /// 1×1 fusions add nothing and the skips (`F_m1` → `FDF`, a block's input → its sum, the
    /// dense concatenations) are shorter paths. `SR` runs at high resolution, where its 3×3
    /// reaches one high-resolution pixel: within one low-resolution pixel, as its fused form
    /// shows. 10 for the shipped models.
    pub fn receptive_radius(&self) -> usize {
        let r = KERNEL / 2;
        let shallow = 2 * r;
        let dense = self.blocks * self.convs_per_block * r;
        let global_fusion = r;
        let upsample = UPSAMPLE_KERNEL / 2 + 2 * r;
        let reconstruct = r;
        shallow + dense + global_fusion + upsample + reconstruct
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
            dense.push(conv::same(channels, cfg.growth, KERNEL, vb.pp(name))?);
            channels += cfg.growth;
        }
        let fusion = conv::same(channels, cfg.features, 1, vb.pp(RdnConfig::fusion_name(d)))?;
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
    /// `SR` as the graph has it: 3×3 over the upsampled map.
    reconstruct: Conv2d,
    /// `SR` fused with the nearest upsampling: 3×3 at low resolution, `3·s²` outputs.
    reconstruct_fused: Conv2d,
}

/// Folds "nearest ×`scale`, then `weight` (3×3, OIHW)" into one low-resolution 3×3 kernel
/// with `out·scale²` outputs ordered `(out, phase_y, phase_x)`, and repeats the bias to match.
fn fuse_upsample_into_conv(layer: &Conv2d, scale: usize) -> Result<Conv2d> {
    let weight = layer.weight();
    let (cout, cin, kh, kw) = weight.dims4()?;
    if (kh, kw) != (KERNEL, KERNEL) {
        candle_core::bail!("fusing needs a {KERNEL}×{KERNEL} kernel, got {kh}×{kw}");
    }
    let src: Vec<f32> = weight
        .to_dtype(candle_core::DType::F32)?
        .flatten_all()?
        .to_vec1()?;
    let phases = scale * scale;
    let mut fused = vec![0.0_f32; cout * phases * cin * 9];
    // A tap at kernel index `k` (HR offset k-1) from sub-pixel phase `p` reads the LR pixel at
    // offset floor((p + k - 1) / s), which is -1, 0 or 1; return it as an index 0..3.
    let lr_index = |p: usize, k: usize| {
        ((p as isize + k as isize - 1).div_euclid(scale as isize) + 1) as usize
    };
    for co in 0..cout {
        for py in 0..scale {
            for px in 0..scale {
                let fo = co * phases + py * scale + px;
                for ci in 0..cin {
                    for ky in 0..3 {
                        for kx in 0..3 {
                            let (ly, lx) = (lr_index(py, ky), lr_index(px, kx));
                            fused[((fo * cin + ci) * 3 + ly) * 3 + lx] +=
                                src[((co * cin + ci) * 3 + ky) * 3 + kx];
                        }
                    }
                }
            }
        }
    }
    let device = weight.device();
    let fused =
        Tensor::from_vec(fused, (cout * phases, cin, 3, 3), device)?.to_dtype(weight.dtype())?;
    let bias = match layer.bias() {
        Some(b) => Some(b.unsqueeze(1)?.repeat((1, phases))?.flatten_all()?),
        None => None,
    };
    conv::same_from_weights(fused, bias)
}

/// `[n, c·s², h, w]` with channels ordered `(c, phase_y, phase_x)` → `[n, c, h·s, w·s]`.
fn pixel_shuffle(x: &Tensor, scale: usize) -> Result<Tensor> {
    let (n, c, h, w) = x.dims4()?;
    let c = c / (scale * scale);
    x.reshape((n, c, scale, scale, h, w))?
        .permute((0, 1, 4, 2, 5, 3))?
        .reshape((n, c, h * scale, w * scale))
}

impl Rdn {
    /// Builds the network, taking every weight from `vb` (shapes are checked there).
    pub fn new(cfg: RdnConfig, vb: VarBuilder<'_>) -> Result<Self> {
        let g0 = cfg.features;
        let [u1, u2, u3] = cfg.upsample_features;
        let reconstruct = conv::same(u3, CHANNELS, KERNEL, vb.pp("SR"))?;
        let blocks = (1..=cfg.blocks)
            .map(|d| ResidualDenseBlock::new(&cfg, d, &vb))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            shallow_1: conv::same(CHANNELS, g0, KERNEL, vb.pp("F_m1"))?,
            shallow_2: conv::same(g0, g0, KERNEL, vb.pp("F_0"))?,
            blocks,
            global_fusion_1: conv::same(g0 * cfg.blocks, g0, 1, vb.pp("GFF_1"))?,
            global_fusion_2: conv::same(g0, g0, KERNEL, vb.pp("GFF_2"))?,
            upsample: [
                conv::same(g0, u1, UPSAMPLE_KERNEL, vb.pp("UPN1"))?,
                conv::same(u1, u2, KERNEL, vb.pp("UPN2"))?,
                conv::same(u2, u3, KERNEL, vb.pp("UPN3"))?,
            ],
            reconstruct_fused: fuse_upsample_into_conv(&reconstruct, cfg.scale)?,
            reconstruct,
            cfg,
        })
    }

    /// The network's hyper-parameters.
    pub fn config(&self) -> &RdnConfig {
        &self.cfg
    }

    /// Everything up to and including `UPN3`, at low resolution.
    fn features(&self, lr: &Tensor) -> Result<Tensor> {
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
        up3.forward(&x)
    }

    /// The literal graph: nearest upsampling, then `SR` at high resolution. Same result as
    /// [`Module::forward`] up to float rounding, with `scale²` times more work in the tail.
    pub fn forward_unfused(&self, lr: &Tensor) -> Result<Tensor> {
        let (_, _, h, w) = lr.dims4()?;
        let s = self.cfg.scale;
        let x = self.features(lr)?.upsample_nearest2d(h * s, w * s)?;
        self.reconstruct.forward(&x)
    }
}

impl Module for Rdn {
    /// `[n, 3, h, w]` in `[0, 255]` → `[n, 3, h·scale, w·scale]`.
    fn forward(&self, lr: &Tensor) -> Result<Tensor> {
        let x = self.reconstruct_fused.forward(&self.features(lr)?)?;
        pixel_shuffle(&x, self.cfg.scale)
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{DType, Device};
    use candle_nn::VarMap;

    use super::*;

    /// How far (in low-resolution pixels, the larger of the two axes) the output of a network
    /// with fresh random weights changes when one input pixel of a random image does.
    fn reach_of_one_pixel(cfg: RdnConfig, scale: usize) -> usize {
        let varmap = VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
        let net = Rdn::new(cfg, vb).unwrap();
        let n = 2 * cfg.receptive_radius() + 9;
        let centre = n / 2;
        let x = Tensor::rand(0f32, 255f32, (1, 3, n, n), &Device::Cpu).unwrap();
        let mut bump = vec![0f32; 3 * n * n];
        bump[centre * n + centre] = 50.0;
        let bumped = (&x + Tensor::from_vec(bump, (1, 3, n, n), &Device::Cpu).unwrap()).unwrap();
        let diff = (net.forward(&bumped).unwrap() - net.forward(&x).unwrap())
            .unwrap()
            .abs()
            .unwrap()
            .sum((0, 1))
            .unwrap()
            .to_vec2::<f32>()
            .unwrap();
        diff.iter()
            .enumerate()
            .flat_map(|(y, row)| row.iter().enumerate().map(move |(x, d)| (y, x, *d)))
            .filter(|(_, _, d)| *d > 0.0)
            .map(|(y, x, _)| {
                (y / scale)
                    .abs_diff(centre)
                    .max((x / scale).abs_diff(centre))
            })
            .max()
            .unwrap()
    }

    /// Changes one input pixel: the output changes up to exactly the receptive radius, never
    /// further. One draw of random weights may stop short (a ReLU can zero the change at the
    /// edge, about one draw in seven), so the furthest reach over several draws is taken.
    #[test]
    fn an_input_pixel_reaches_exactly_the_receptive_radius() {
        for (scale, blocks, convs_per_block) in [(2, 2, 1), (3, 1, 3)] {
            let cfg = RdnConfig {
                features: 6,
                growth: 2,
                blocks,
                convs_per_block,
                upsample_features: [6, 5, CHANNELS * scale * scale],
                ..RdnConfig::slim(scale)
            };
            let radius = cfg.receptive_radius();
            let reaches: Vec<usize> = (0..8).map(|_| reach_of_one_pixel(cfg, scale)).collect();
            assert!(reaches.iter().all(|&r| r <= radius), "{cfg:?}: {reaches:?}");
            assert_eq!(reaches.iter().max(), Some(&radius), "{cfg:?}: {reaches:?}");
        }
    }

    #[test]
    fn fused_tail_equals_the_literal_graph() {
        for scale in [1, 2, 3, 4] {
            let cfg = RdnConfig {
                features: 6,
                growth: 2,
                upsample_features: [6, 5, 7],
                ..RdnConfig::slim(scale)
            };
            let varmap = VarMap::new();
            let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
            let net = Rdn::new(cfg, vb).unwrap();
            let x = Tensor::rand(0f32, 255f32, (2, 3, 5, 7), &Device::Cpu).unwrap();
            let fused = net.forward(&x).unwrap();
            let literal = net.forward_unfused(&x).unwrap();
            assert_eq!(fused.dims(), &[2, 3, 5 * scale, 7 * scale]);
            let scale_of: f32 = literal
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar()
                .unwrap();
            let diff: f32 = (fused - literal)
                .unwrap()
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar()
                .unwrap();
            assert!(
                diff <= 1e-4 * scale_of.max(1.0),
                "×{scale}: max diff {diff}"
            );
        }
    }
}
