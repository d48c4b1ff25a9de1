//! The Silero VAD v5/v6 16 kHz network, as its safetensors file describes it.
//!
//! One step reads a window of [`WINDOW`] new samples preceded by [`CONTEXT`] samples of the
//! previous window, and carries an LSTM state to the next step:
//!
//! 1. a short-time Fourier transform as a fixed convolution (`stft_conv`, 258 filters of 256
//!    samples, hop 128, after reflect-padding 64 samples on the right), whose real and
//!    imaginary halves become a 129-bin magnitude spectrum over 4 frames;
//! 2. four ReLU convolutions of kernel 3 (`conv1`–`conv4`; strides 1, 2, 2, 1), which reduce
//!    the 4 frames to one 128-feature vector;
//! 3. an LSTM cell of 128 units (`lstm_cell`, PyTorch gate order i, f, g, o);
//! 4. ReLU, a 1×1 convolution (`final_conv`) and a sigmoid: the speech probability.
//!
//! Every step works on a batch of independent streams (`[batch, …]`).

use candle_core::{D, DType, Device, Result, Tensor};
use candle_nn::VarBuilder;

/// New samples per step at 16 kHz (32 ms).
pub const WINDOW: usize = 512;
/// Samples of the previous window prepended to each step.
pub const CONTEXT: usize = 64;
const FFT: usize = 256;
const HOP: usize = 128;
const PAD: usize = 64;
const BINS: usize = FFT / 2 + 1;
const FRAMES: usize = (CONTEXT + WINDOW + PAD - FFT) / HOP + 1;
const HIDDEN: usize = 128;

/// A 1-D convolution with padding 1, computed as gathered columns times the weight matrix.
#[derive(Debug, Clone)]
struct Conv1d {
    /// `[out, in × kernel]`.
    weight: Tensor,
    /// `[1, out, 1]`.
    bias: Tensor,
    kernel: usize,
    stride: usize,
}

impl Conv1d {
    fn new(cin: usize, cout: usize, stride: usize, vb: VarBuilder<'_>) -> Result<Self> {
        let kernel = 3;
        let weight = vb
            .get((cout, cin, kernel), "weight")?
            .reshape((cout, cin * kernel))?;
        let bias = vb.get(cout, "bias")?.reshape((1, cout, 1))?;
        Ok(Self {
            weight,
            bias,
            kernel,
            stride,
        })
    }

    /// `[batch, in, len]` → `[batch, out, ⌈len / stride⌉]`.
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (batch, cin, len) = x.dims3()?;
        let padded = x.pad_with_zeros(D::Minus1, 1, 1)?;
        let out_len = (len + 2 - self.kernel) / self.stride + 1;
        let taps = (0..self.kernel)
            .map(|k| {
                let idx: Vec<u32> = (0..out_len).map(|t| (t * self.stride + k) as u32).collect();
                let idx = Tensor::new(idx.as_slice(), x.device())?;
                padded.index_select(&idx, 2)
            })
            .collect::<Result<Vec<_>>>()?;
        // [batch, in, kernel, out_len] → [batch, in × kernel, out_len]
        let cols = Tensor::stack(&taps, 2)?.reshape((batch, cin * self.kernel, out_len))?;
        self.weight
            .broadcast_matmul(&cols)?
            .broadcast_add(&self.bias)
    }
}

/// The recurrent state of a batch of streams: `h` and `c`, each `[batch, 128]`.
#[derive(Debug, Clone)]
pub struct State {
    h: Tensor,
    c: Tensor,
}

impl State {
    /// The zero state every stream starts from.
    pub fn zeros(batch: usize, device: &Device) -> Result<Self> {
        let z = Tensor::zeros((batch, HIDDEN), DType::F32, device)?;
        Ok(Self { h: z.clone(), c: z })
    }
}

/// The Silero VAD network's weights.
#[derive(Debug, Clone)]
pub struct SileroNet {
    /// `[FFT, 2 × BINS]`: the STFT filters, transposed for `frames × filters`.
    stft: Tensor,
    convs: [Conv1d; 4],
    /// `[128, 512]` each, transposed.
    w_ih: Tensor,
    w_hh: Tensor,
    /// `[1, 512]`: both LSTM biases summed.
    b_lstm: Tensor,
    /// `[128, 1]`.
    w_out: Tensor,
    /// `[1, 1]`.
    b_out: Tensor,
    device: Device,
}

impl SileroNet {
    /// Loads the network from tensors named as in `silero_vad_16k.safetensors`.
    pub fn new(vb: VarBuilder<'_>) -> Result<Self> {
        let stft = vb.get((2 * BINS, 1, FFT), "stft_conv.weight")?;
        let stft = stft.reshape((2 * BINS, FFT))?.t()?.contiguous()?;
        let convs = [
            Conv1d::new(BINS, 128, 1, vb.pp("conv1"))?,
            Conv1d::new(128, 64, 2, vb.pp("conv2"))?,
            Conv1d::new(64, 64, 2, vb.pp("conv3"))?,
            Conv1d::new(64, HIDDEN, 1, vb.pp("conv4"))?,
        ];
        let lstm = vb.pp("lstm_cell");
        let w_ih = lstm
            .get((4 * HIDDEN, HIDDEN), "weight_ih")?
            .t()?
            .contiguous()?;
        let w_hh = lstm
            .get((4 * HIDDEN, HIDDEN), "weight_hh")?
            .t()?
            .contiguous()?;
        let b_lstm = (lstm.get(4 * HIDDEN, "bias_ih")? + lstm.get(4 * HIDDEN, "bias_hh")?)?
            .reshape((1, 4 * HIDDEN))?;
        let w_out = vb
            .get((1, HIDDEN, 1), "final_conv.weight")?
            .reshape((1, HIDDEN))?
            .t()?
            .contiguous()?;
        let b_out = vb.get(1, "final_conv.bias")?.reshape((1, 1))?;
        Ok(Self {
            stft,
            convs,
            w_ih,
            w_hh,
            b_lstm,
            w_out,
            b_out,
            device: vb.device().clone(),
        })
    }

    /// The device the weights live on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// One step for a batch of streams. `input` holds, per stream, `CONTEXT + WINDOW`
    /// samples (context first), stream after stream. Returns each stream's speech
    /// probability and the next state.
    pub fn step(&self, input: &[f32], state: &State) -> Result<(Vec<f32>, State)> {
        let width = CONTEXT + WINDOW;
        if input.is_empty() || !input.len().is_multiple_of(width) {
            candle_core::bail!(
                "a step takes whole windows of {width} samples, got {}",
                input.len()
            );
        }
        let batch = input.len() / width;
        let frames = Tensor::from_vec(stft_frames(input), (batch * FRAMES, FFT), &self.device)?;
        let spec = frames
            .matmul(&self.stft)?
            .reshape((batch, FRAMES, 2 * BINS))?;
        let re = spec.narrow(2, 0, BINS)?;
        let im = spec.narrow(2, BINS, BINS)?;
        let mut x = (re.sqr()? + im.sqr()?)?
            .sqrt()?
            .transpose(1, 2)?
            .contiguous()?;
        for conv in &self.convs {
            x = conv.forward(&x)?.relu()?;
        }
        let x = x.reshape((batch, HIDDEN))?;
        let gates =
            (x.matmul(&self.w_ih)? + state.h.matmul(&self.w_hh)?)?.broadcast_add(&self.b_lstm)?;
        let gates = gates.chunk(4, 1)?;
        let (i, f, g, o) = (&gates[0], &gates[1], &gates[2], &gates[3]);
        let sigmoid = candle_nn::ops::sigmoid;
        let c = ((sigmoid(f)? * &state.c)? + (sigmoid(i)? * g.tanh()?)?)?;
        let h = (sigmoid(o)? * c.tanh()?)?;
        let logit = h.relu()?.matmul(&self.w_out)?.broadcast_add(&self.b_out)?;
        let probs = sigmoid(&logit)?.flatten_all()?.to_vec1::<f32>()?;
        Ok((probs, State { h, c }))
    }
}

/// Reflect-pads each stream's window on the right by [`PAD`] samples and cuts it into
/// [`FRAMES`] frames of [`FFT`] samples, hop [`HOP`]: `[batch × FRAMES × FFT]`.
fn stft_frames(input: &[f32]) -> Vec<f32> {
    let width = CONTEXT + WINDOW;
    let mut out = Vec::with_capacity(input.len() / width * FRAMES * FFT);
    let mut padded = vec![0f32; width + PAD];
    for window in input.chunks_exact(width) {
        padded[..width].copy_from_slice(window);
        for j in 0..PAD {
            padded[width + j] = window[width - 2 - j];
        }
        for f in 0..FRAMES {
            out.extend_from_slice(&padded[f * HOP..f * HOP + FFT]);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_reflect_the_window_end() {
        let input: Vec<f32> = (0..CONTEXT + WINDOW).map(|i| i as f32).collect();
        let frames = stft_frames(&input);
        assert_eq!(FRAMES, 4);
        assert_eq!(frames.len(), FRAMES * FFT);
        let last = &frames[3 * FFT..];
        assert_eq!(last[0], 384.0);
        // Samples 384..575, then the reflection 574, 573, … 511.
        assert_eq!(last[191], 575.0);
        assert_eq!(last[192], 574.0);
        assert_eq!(last[255], 511.0);
    }
}
