//! Zero-padded ("same") 2-D convolutions, stride 1, as every ESRGAN-slim layer uses: candle's
//! [`Conv2d`] with a padding of half the (odd) kernel size.

use candle_core::{Result, Tensor};
use candle_nn::{Conv2d, Conv2dConfig, VarBuilder, conv2d};

/// The configuration that keeps the spatial size for a `k`×`k` kernel (odd `k`).
fn same_padding(k: usize) -> Conv2dConfig {
    Conv2dConfig {
        padding: k / 2,
        ..Default::default()
    }
}

/// Loads a same-padded convolution: `weight` `[cout, cin, k, k]` and `bias` `[cout]` from
/// `vb`.
pub fn same(cin: usize, cout: usize, k: usize, vb: VarBuilder<'_>) -> Result<Conv2d> {
    conv2d(cin, cout, k, same_padding(k), vb)
}

/// Builds a same-padded convolution from its weight (OIHW, odd square kernel) and bias.
pub fn same_from_weights(weight: Tensor, bias: Option<Tensor>) -> Result<Conv2d> {
    let (_, _, kh, kw) = weight.dims4()?;
    if kh != kw || kh % 2 == 0 {
        candle_core::bail!("a same-padded convolution needs an odd square kernel, got {kh}×{kw}");
    }
    Ok(Conv2d::new(weight, bias, same_padding(kh)))
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Module};

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

    /// candle-core 0.9's CPU kernel took an NCHW input with `C == H == W` for an NHWC one and
    /// returned wrong values (candle issue #3404, fixed in 0.11); those shapes stay checked.
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
            let conv = same_from_weights(weight.clone(), Some(bias.clone())).unwrap();
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
