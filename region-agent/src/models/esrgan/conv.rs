//! Zero-padded ("same") 2-D convolution, stride 1, as every ESRGAN-slim layer uses.
//!
//! Wraps candle's [`Conv2d`] to avoid a defect of candle-core 0.9's CPU kernel for
//! non-1×1 kernels: it takes an NCHW input whose channel count equals its height and width
//! (`C == H == W`, e.g. 64 features on a 64×64 image) for an NHWC one, because the two stride
//! patterns coincide, and returns wrong values (candle issue #3404, fixed in candle 0.11). For
//! that shape the input is widened by one zero column and the extra output column dropped,
//! which is exact: the column is zero, as the padding it replaces would be.

use candle_core::{Module, Result, Tensor};
use candle_nn::{Conv2d, Conv2dConfig, VarBuilder, conv2d};

/// A stride-1 convolution padded to keep the spatial size (odd kernels).
#[derive(Debug, Clone)]
pub struct SameConv {
    inner: Conv2d,
}

impl SameConv {
    /// Loads `weight` `[cout, cin, k, k]` and `bias` `[cout]` from `vb`.
    pub fn new(cin: usize, cout: usize, k: usize, vb: VarBuilder<'_>) -> Result<Self> {
        let cfg = Conv2dConfig {
            padding: k / 2,
            ..Default::default()
        };
        Ok(Self {
            inner: conv2d(cin, cout, k, cfg, vb)?,
        })
    }

    /// Builds a convolution from its weight and bias.
    pub fn from_weights(weight: Tensor, bias: Option<Tensor>) -> Result<Self> {
        let (_, _, kh, kw) = weight.dims4()?;
        if kh != kw || kh % 2 == 0 {
            candle_core::bail!(
                "a same-padded convolution needs an odd square kernel, got {kh}×{kw}"
            );
        }
        let cfg = Conv2dConfig {
            padding: kh / 2,
            ..Default::default()
        };
        Ok(Self {
            inner: Conv2d::new(weight, bias, cfg),
        })
    }

    /// The kernel, OIHW.
    pub fn weight(&self) -> &Tensor {
        self.inner.weight()
    }

    /// The bias, when there is one.
    pub fn bias(&self) -> Option<&Tensor> {
        self.inner.bias()
    }
}

impl Module for SameConv {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (_, c, h, w) = x.dims4()?;
        let (_, _, kh, kw) = self.inner.weight().dims4()?;
        if (kh, kw) != (1, 1) && c == h && h == w {
            let widened = x.pad_with_zeros(3, 0, 1)?;
            return self.inner.forward(&widened)?.narrow(3, 0, w);
        }
        self.inner.forward(x)
    }
}

#[cfg(test)]
mod tests {
    use candle_core::Device;

    use super::*;

    /// Direct zero-padded convolution in f64, the reference.
    fn direct(x: &Tensor, w: &Tensor, b: &Tensor) -> Vec<f64> {
        let (_, c, h, wd) = x.dims4().unwrap();
        let (o, _, k, _) = w.dims4().unwrap();
        let xv: Vec<f32> = x.flatten_all().unwrap().to_vec1().unwrap();
        let wv: Vec<f32> = w.flatten_all().unwrap().to_vec1().unwrap();
        let bv: Vec<f32> = b.to_vec1().unwrap();
        let r = (k / 2) as isize;
        let mut out = Vec::with_capacity(o * h * wd);
        for (co, bias) in bv.iter().enumerate().take(o) {
            for y in 0..h as isize {
                for xx in 0..wd as isize {
                    let mut acc = f64::from(*bias);
                    for ci in 0..c {
                        for ky in 0..k as isize {
                            for kx in 0..k as isize {
                                let (sy, sx) = (y + ky - r, xx + kx - r);
                                if sy < 0 || sx < 0 || sy >= h as isize || sx >= wd as isize {
                                    continue;
                                }
                                let xi = (ci * h + sy as usize) * wd + sx as usize;
                                let wi = ((co * c + ci) * k + ky as usize) * k + kx as usize;
                                acc += f64::from(xv[xi]) * f64::from(wv[wi]);
                            }
                        }
                    }
                    out.push(acc);
                }
            }
        }
        out
    }

    #[test]
    fn matches_a_direct_convolution_also_when_channels_equal_height_and_width() {
        let dev = Device::Cpu;
        // (channels, height, width, outputs, kernel); the first three have C == H == W.
        for (c, h, w, o, k) in [
            (8, 8, 8, 5, 3),
            (6, 6, 6, 4, 5),
            (3, 3, 3, 2, 3),
            (8, 7, 9, 5, 3),
        ] {
            let x = Tensor::randn(0f32, 1f32, (1, c, h, w), &dev).unwrap();
            let weight = Tensor::randn(0f32, 1f32, (o, c, k, k), &dev).unwrap();
            let bias = Tensor::randn(0f32, 1f32, o, &dev).unwrap();
            let conv = SameConv::from_weights(weight.clone(), Some(bias.clone())).unwrap();
            let got: Vec<f32> = conv
                .forward(&x)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap();
            let want = direct(&x, &weight, &bias);
            let max_diff = got
                .iter()
                .zip(&want)
                .map(|(g, w)| (f64::from(*g) - w).abs())
                .fold(0.0, f64::max);
            assert!(max_diff < 1e-3, "C{c} H{h} W{w} k{k}: max diff {max_diff}");
        }
    }
}
