//! Whisper's encoder–decoder transformer on candle, with the decoder run one token at a time
//! over cached keys and values.
//!
//! The encoder turns a window's log-mel spectrogram (`[batch, mels, 3000]`) into audio
//! features (`[batch, 1500, width]`): two 1-D convolutions (the second halves the frames),
//! each followed by GELU, the stored sinusoidal positions, pre-norm attention blocks and a
//! final layer norm. The decoder reads tokens: at the start of a window the audio features
//! are projected once into every layer's cross-attention keys and values
//! ([`Decoder::start`]), and each step ([`Decoder::step`]) computes only the new tokens'
//! projections, appending their keys and values to the self-attention cache. Without the
//! cache every step would run the whole token sequence again (quadratic in its length).
//! Attention scales queries and keys by `head_width^-¼` each, as Whisper does. Tensor names
//! are candle-transformers' (`model.encoder.layers.0.self_attn.q_proj.weight`, …), which
//! `convert-ct2` writes.

use candle_core::{D, DType, Module, Result, Tensor};
use candle_nn::{
    Conv1d, Conv1dConfig, Embedding, LayerNorm, Linear, VarBuilder, conv1d, embedding, layer_norm,
    linear, linear_no_bias,
};

use super::WhisperConfig;

/// One multi-head attention.
#[derive(Debug, Clone)]
struct Attention {
    query: Linear,
    key: Linear,
    value: Linear,
    out: Linear,
    heads: usize,
}

impl Attention {
    fn load(width: usize, heads: usize, vb: VarBuilder<'_>) -> Result<Self> {
        Ok(Self {
            query: linear(width, width, vb.pp("q_proj"))?,
            key: linear_no_bias(width, width, vb.pp("k_proj"))?,
            value: linear(width, width, vb.pp("v_proj"))?,
            out: linear(width, width, vb.pp("out_proj"))?,
            heads,
        })
    }

    /// `[batch, positions, width]` → `[batch, heads, positions, head_width]`.
    fn split_heads(&self, x: &Tensor) -> Result<Tensor> {
        let (batch, positions, width) = x.dims3()?;
        x.reshape((batch, positions, self.heads, width / self.heads))?
            .transpose(1, 2)?
            .contiguous()
    }

    /// Keys (scaled, transposed for the product with queries: `[batch, heads, head_width,
    /// positions]`) and values (`[batch, heads, positions, head_width]`) of `x`.
    fn keys_values(&self, x: &Tensor) -> Result<(Tensor, Tensor)> {
        let k = self.split_heads(&self.key.forward(x)?)?;
        let v = self.split_heads(&self.value.forward(x)?)?;
        let scale = self.scale(x)?;
        Ok(((k * scale)?.transpose(2, 3)?.contiguous()?, v))
    }

    fn scale(&self, x: &Tensor) -> Result<f64> {
        let width = x.dim(D::Minus1)?;
        Ok(((width / self.heads) as f64).powf(-0.25))
    }

    /// Attention of `x`'s queries over `keys`/`values` (from [`Self::keys_values`]);
    /// `mask` (`[queries, keys]`, 0 or −∞) hides future positions.
    fn attend(
        &self,
        x: &Tensor,
        keys: &Tensor,
        values: &Tensor,
        mask: Option<&Tensor>,
    ) -> Result<Tensor> {
        let q = (self.split_heads(&self.query.forward(x)?)? * self.scale(x)?)?;
        let mut scores = q.matmul(keys)?;
        if let Some(mask) = mask {
            scores = scores.broadcast_add(mask)?;
        }
        let weights = candle_nn::ops::softmax_last_dim(&scores)?;
        let mixed = weights.matmul(values)?.transpose(1, 2)?.flatten_from(2)?;
        self.out.forward(&mixed)
    }
}

/// A pre-norm residual block: self-attention, cross-attention (decoder only), MLP.
#[derive(Debug, Clone)]
struct Block {
    attention: Attention,
    attention_norm: LayerNorm,
    cross: Option<(Attention, LayerNorm)>,
    fc1: Linear,
    fc2: Linear,
    mlp_norm: LayerNorm,
}

impl Block {
    fn load(width: usize, heads: usize, cross: bool, vb: VarBuilder<'_>) -> Result<Self> {
        let cross = if cross {
            Some((
                Attention::load(width, heads, vb.pp("encoder_attn"))?,
                layer_norm(width, 1e-5, vb.pp("encoder_attn_layer_norm"))?,
            ))
        } else {
            None
        };
        Ok(Self {
            attention: Attention::load(width, heads, vb.pp("self_attn"))?,
            attention_norm: layer_norm(width, 1e-5, vb.pp("self_attn_layer_norm"))?,
            cross,
            fc1: linear(width, 4 * width, vb.pp("fc1"))?,
            fc2: linear(4 * width, width, vb.pp("fc2"))?,
            mlp_norm: layer_norm(width, 1e-5, vb.pp("final_layer_norm"))?,
        })
    }

    fn mlp(&self, x: &Tensor) -> Result<Tensor> {
        let hidden = self.fc1.forward(&self.mlp_norm.forward(x)?)?.gelu_erf()?;
        x + self.fc2.forward(&hidden)?
    }
}

/// The audio encoder.
#[derive(Debug, Clone)]
pub struct Encoder {
    conv1: Conv1d,
    conv2: Conv1d,
    positions: Tensor,
    blocks: Vec<Block>,
    norm: LayerNorm,
}

impl Encoder {
    /// Loads `model.encoder.*`.
    pub fn load(config: &WhisperConfig, vb: VarBuilder<'_>) -> Result<Self> {
        let width = config.d_model;
        let same = Conv1dConfig {
            padding: 1,
            ..Default::default()
        };
        let halving = Conv1dConfig {
            padding: 1,
            stride: 2,
            ..Default::default()
        };
        let blocks = (0..config.encoder_layers)
            .map(|i| {
                let vb = vb.pp(format!("layers.{i}"));
                Block::load(width, config.encoder_attention_heads, false, vb)
            })
            .collect::<Result<_>>()?;
        Ok(Self {
            conv1: conv1d(config.num_mel_bins, width, 3, same, vb.pp("conv1"))?,
            conv2: conv1d(width, width, 3, halving, vb.pp("conv2"))?,
            positions: vb.get(
                (config.max_source_positions, width),
                "embed_positions.weight",
            )?,
            blocks,
            norm: layer_norm(width, 1e-5, vb.pp("layer_norm"))?,
        })
    }

    /// `[batch, mels, 3000]` log-mel → `[batch, 1500, width]` audio features.
    pub fn forward(&self, mel: &Tensor) -> Result<Tensor> {
        let x = self.conv1.forward(mel)?.gelu_erf()?;
        let x = self.conv2.forward(&x)?.gelu_erf()?.transpose(1, 2)?;
        let positions = self.positions.narrow(0, 0, x.dim(1)?)?;
        let mut x = x.broadcast_add(&positions)?;
        for block in &self.blocks {
            let normed = block.attention_norm.forward(&x)?;
            let (k, v) = block.attention.keys_values(&normed)?;
            x = (&x + block.attention.attend(&normed, &k, &v, None)?)?;
            x = block.mlp(&x)?;
        }
        self.norm.forward(&x)
    }
}

/// The text decoder.
#[derive(Debug, Clone)]
pub struct Decoder {
    embedding: Embedding,
    positions: Tensor,
    blocks: Vec<Block>,
    norm: LayerNorm,
}

/// One window's decoding state: every layer's cross-attention keys and values (from the
/// audio) and self-attention keys and values (from the tokens so far).
#[derive(Debug)]
pub struct DecoderState {
    cross: Vec<(Tensor, Tensor)>,
    past: Vec<Option<(Tensor, Tensor)>>,
    length: usize,
}

impl Decoder {
    /// Loads `model.decoder.*`.
    pub fn load(config: &WhisperConfig, vb: VarBuilder<'_>) -> Result<Self> {
        let width = config.d_model;
        let blocks = (0..config.decoder_layers)
            .map(|i| {
                let vb = vb.pp(format!("layers.{i}"));
                Block::load(width, config.decoder_attention_heads, true, vb)
            })
            .collect::<Result<_>>()?;
        Ok(Self {
            embedding: embedding(config.vocab_size, width, vb.pp("embed_tokens"))?,
            positions: vb.get(
                (config.max_target_positions, width),
                "embed_positions.weight",
            )?,
            blocks,
            norm: layer_norm(width, 1e-5, vb.pp("layer_norm"))?,
        })
    }

    /// Projects a window's audio features into every layer's cross-attention keys and values.
    pub fn start(&self, features: &Tensor) -> Result<DecoderState> {
        let cross = self
            .blocks
            .iter()
            .filter_map(|b| b.cross.as_ref())
            .map(|(attention, _)| attention.keys_values(features))
            .collect::<Result<_>>()?;
        Ok(DecoderState {
            cross,
            past: vec![None; self.blocks.len()],
            length: 0,
        })
    }

    /// Feeds `tokens` (`[batch, new]`) after those already fed and returns the logits of the
    /// last one (`[batch, vocabulary]`).
    pub fn step(&self, state: &mut DecoderState, tokens: &Tensor) -> Result<Tensor> {
        let new = tokens.dim(1)?;
        let positions = self.positions.narrow(0, state.length, new)?;
        let mut x = self.embedding.forward(tokens)?.broadcast_add(&positions)?;
        let mask = causal_mask(state.length, new, x.device())?;
        for ((block, past), (cross_k, cross_v)) in
            self.blocks.iter().zip(&mut state.past).zip(&state.cross)
        {
            let normed = block.attention_norm.forward(&x)?;
            let (k, v) = block.attention.keys_values(&normed)?;
            let (k, v) = match past.take() {
                Some((pk, pv)) => (Tensor::cat(&[&pk, &k], 3)?, Tensor::cat(&[&pv, &v], 2)?),
                None => (k, v),
            };
            x = (&x + block.attention.attend(&normed, &k, &v, mask.as_ref())?)?;
            *past = Some((k, v));
            if let Some((attention, norm)) = &block.cross {
                let normed = norm.forward(&x)?;
                x = (&x + attention.attend(&normed, cross_k, cross_v, None)?)?;
            }
            x = block.mlp(&x)?;
        }
        state.length += new;
        let last = self.norm.forward(&x.narrow(1, new - 1, 1)?)?.squeeze(1)?;
        // `embeddings × lastᵀ` reads the embedding matrix as it is stored; `last ×
        // embeddingsᵀ` would first copy all of it (vocabulary × width) into the transposed
        // layout, at every step.
        self.embedding
            .embeddings()
            .matmul(&last.t()?.contiguous()?)?
            .t()?
            .contiguous()
    }
}

/// The mask that keeps `new` tokens after `past` ones from seeing later tokens (`None` when
/// one token is fed: it may see everything before it).
fn causal_mask(past: usize, new: usize, device: &candle_core::Device) -> Result<Option<Tensor>> {
    if new == 1 {
        return Ok(None);
    }
    let values: Vec<f32> = (0..new)
        .flat_map(|i| {
            (0..past + new).map(move |j| if j > past + i { f32::NEG_INFINITY } else { 0.0 })
        })
        .collect();
    Tensor::from_vec(values, (new, past + new), device)?
        .to_dtype(DType::F32)
        .map(Some)
}
