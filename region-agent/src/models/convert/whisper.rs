//! Whisper: CTranslate2 model directory → the files [`crate::models::whisper::Whisper`] loads.
//!
//! CTranslate2 fuses the attention projections: an encoder or decoder self-attention's
//! `linear_0` holds query, key and value stacked (3 × d rows), and a cross-attention's
//! `linear_1` key and value (2 × d rows). Whisper's key projection has no bias; CTranslate2
//! stores zeros there, which the split drops (and checks are zeros). Every other variable is
//! renamed to the names candle-transformers' Whisper reads (`model.encoder.layers.0.fc1.weight`
//! …), keeping its element type (fp16 in the registry package). The model's shape (layers,
//! heads, widths, vocabulary) is read from the variables, never assumed, and written with the
//! token lists of CTranslate2's `config.json` to [`crate::models::whisper::CONFIG_FILE`].
//! Files are written to temporary names and renamed, so a reader never sees half a file.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use safetensors::tensor::{Dtype, TensorView};
use serde::Deserialize;

use super::ct2::{Ct2Error, Ct2Model, ElementType, Variable};
use super::esrgan::Source;
use crate::models::whisper::{CONFIG_FILE, FORMAT, VOCABULARY_FILE, WEIGHTS_FILE, WhisperConfig};

/// Why a conversion failed.
#[derive(Debug, thiserror::Error)]
pub enum ConvertError {
    /// A file could not be read or written.
    #[error("{path}: {reason}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What failed.
        reason: String,
    },
    /// `model.bin` could not be parsed.
    #[error(transparent)]
    Ct2(#[from] Ct2Error),
    /// The model is not a Whisper model this agent runs.
    #[error("not a Whisper model the agent runs: {0}")]
    Model(String),
}

/// What a conversion produced.
#[derive(Debug, Clone, PartialEq)]
pub struct Converted {
    /// The model's shape and token lists.
    pub config: WhisperConfig,
    /// Tensors written.
    pub tensors: usize,
}

/// The parts of CTranslate2's `config.json` the agent uses.
#[derive(Debug, Deserialize)]
struct Ct2Config {
    suppress_ids: Vec<u32>,
    suppress_ids_begin: Vec<u32>,
    #[serde(default)]
    lang_ids: Vec<u32>,
}

fn io_error(path: &Path, e: impl std::fmt::Display) -> ConvertError {
    ConvertError::Io {
        path: path.to_path_buf(),
        reason: e.to_string(),
    }
}

/// Converts the CTranslate2 Whisper model in `ct2_dir` (`model.bin`, `config.json`,
/// `vocabulary.txt`) into `out_dir`.
pub fn convert(ct2_dir: &Path, out_dir: &Path, source: &Source) -> Result<Converted, ConvertError> {
    let read = |name: &str| {
        let path = ct2_dir.join(name);
        std::fs::read(&path).map_err(|e| io_error(&path, e))
    };
    let bin = read("model.bin")?;
    let model = Ct2Model::parse(&bin)?;
    if model.spec != "WhisperSpec" {
        return Err(ConvertError::Model(format!("its spec is {:?}", model.spec)));
    }
    let ct2_config: Ct2Config = serde_json::from_slice(&read("config.json")?)
        .map_err(|e| io_error(&ct2_dir.join("config.json"), e))?;
    let vocabulary = read(VOCABULARY_FILE)?;
    let config = whisper_config(&model, &ct2_config, source)?;
    let tokens = vocabulary.split(|&b| b == b'\n').filter(|l| !l.is_empty());
    if tokens.count() != config.vocab_size {
        return Err(ConvertError::Model(format!(
            "{VOCABULARY_FILE} does not list {} tokens",
            config.vocab_size
        )));
    }
    let tensors = renamed(&model, &config)?;
    std::fs::create_dir_all(out_dir).map_err(|e| io_error(out_dir, e))?;
    let metadata = BTreeMap::from([
        ("format".to_owned(), FORMAT.to_owned()),
        ("source_package".to_owned(), source.package.clone()),
        ("source_version".to_owned(), source.version.clone()),
        ("license".to_owned(), source.license.clone()),
    ]);
    let views = tensors
        .iter()
        .map(|(name, t)| {
            Ok((
                name.clone(),
                TensorView::new(t.dtype, t.shape.clone(), &t.bytes)?,
            ))
        })
        .collect::<Result<Vec<_>, safetensors::SafeTensorError>>()
        .map_err(|e| io_error(&out_dir.join(WEIGHTS_FILE), e))?;
    let weights = safetensors::serialize(views, Some(metadata.into_iter().collect()))
        .map_err(|e| io_error(&out_dir.join(WEIGHTS_FILE), e))?;
    let config_json = serde_json::to_vec_pretty(&config).map_err(|e| io_error(out_dir, e))?;
    write_atomically(&out_dir.join(WEIGHTS_FILE), &weights)?;
    write_atomically(&out_dir.join(CONFIG_FILE), &config_json)?;
    write_atomically(&out_dir.join(VOCABULARY_FILE), &vocabulary)?;
    Ok(Converted {
        config,
        tensors: tensors.len(),
    })
}

fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), ConvertError> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes).map_err(|e| io_error(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| io_error(path, e))
}

/// The model's shape, read from its variables.
fn whisper_config(
    model: &Ct2Model<'_>,
    ct2: &Ct2Config,
    source: &Source,
) -> Result<WhisperConfig, ConvertError> {
    let shape = |name: &str| -> Result<&[usize], ConvertError> {
        model
            .get(name)
            .map(|v| v.shape.as_slice())
            .ok_or_else(|| ConvertError::Model(format!("it has no variable {name}")))
    };
    let heads = |name: &str| -> Result<usize, ConvertError> {
        let value = model.get(name).and_then(Variable::scalar_int);
        value
            .and_then(|h| usize::try_from(h).ok())
            .filter(|&h| h > 0)
            .ok_or_else(|| ConvertError::Model(format!("{name} is not a head count")))
    };
    let layers = |side: &str| {
        (0..)
            .take_while(|i| {
                model
                    .variables
                    .contains_key(&format!("{side}/layer_{i}/ffn/linear_0/weight"))
            })
            .count()
    };
    let (&[vocab_size, d_model], &[n_mels_out, num_mel_bins, 3]) = (
        shape("decoder/embeddings/weight")?,
        shape("encoder/conv1/weight")?,
    ) else {
        return Err(ConvertError::Model(
            "embeddings or conv1 of an unknown shape".to_owned(),
        ));
    };
    let &[max_source_positions, _] = shape("encoder/position_encodings/encodings")? else {
        return Err(ConvertError::Model(
            "encoder positions of an unknown shape".to_owned(),
        ));
    };
    let &[max_target_positions, _] = shape("decoder/position_encodings/encodings")? else {
        return Err(ConvertError::Model(
            "decoder positions of an unknown shape".to_owned(),
        ));
    };
    if n_mels_out != d_model {
        return Err(ConvertError::Model(
            "conv1 and the embeddings differ in width".to_owned(),
        ));
    }
    Ok(WhisperConfig {
        format: FORMAT.to_owned(),
        num_mel_bins,
        max_source_positions,
        d_model,
        encoder_attention_heads: heads("encoder/num_heads")?,
        encoder_layers: layers("encoder"),
        vocab_size,
        max_target_positions,
        decoder_attention_heads: heads("decoder/num_heads")?,
        decoder_layers: layers("decoder"),
        suppress_ids: ct2.suppress_ids.clone(),
        suppress_ids_begin: ct2.suppress_ids_begin.clone(),
        multilingual: !ct2.lang_ids.is_empty() && vocab_size > 51_864,
        source_package: source.package.clone(),
        source_version: source.version.clone(),
        license: source.license.clone(),
    })
}

/// A tensor to write.
struct Tensor {
    dtype: Dtype,
    shape: Vec<usize>,
    bytes: Vec<u8>,
}

fn dtype(element: ElementType) -> Dtype {
    match element {
        ElementType::F32 => Dtype::F32,
        ElementType::I8 => Dtype::I8,
        ElementType::I16 => Dtype::I16,
        ElementType::I32 => Dtype::I32,
        ElementType::F16 => Dtype::F16,
        ElementType::Bf16 => Dtype::BF16,
    }
}

/// Every tensor under its candle name.
fn renamed(
    model: &Ct2Model<'_>,
    config: &WhisperConfig,
) -> Result<BTreeMap<String, Tensor>, ConvertError> {
    let mut out = Renamer {
        model,
        tensors: BTreeMap::new(),
    };
    for name in ["conv1.weight", "conv1.bias", "conv2.weight", "conv2.bias"] {
        let (layer, part) = name.split_once('.').unwrap_or((name, ""));
        out.copy(
            &format!("encoder/{layer}/{part}"),
            &format!("model.encoder.{name}"),
        )?;
    }
    out.copy(
        "encoder/position_encodings/encodings",
        "model.encoder.embed_positions.weight",
    )?;
    out.copy(
        "decoder/embeddings/weight",
        "model.decoder.embed_tokens.weight",
    )?;
    out.copy(
        "decoder/position_encodings/encodings",
        "model.decoder.embed_positions.weight",
    )?;
    for side in ["encoder", "decoder"] {
        out.layer_norm(
            &format!("{side}/layer_norm"),
            &format!("model.{side}.layer_norm"),
        )?;
        let layers = if side == "encoder" {
            config.encoder_layers
        } else {
            config.decoder_layers
        };
        for i in 0..layers {
            let (from, to) = (
                format!("{side}/layer_{i}"),
                format!("model.{side}.layers.{i}"),
            );
            out.layer_norm(
                &format!("{from}/self_attention/layer_norm"),
                &format!("{to}.self_attn_layer_norm"),
            )?;
            out.split(
                &format!("{from}/self_attention/linear_0"),
                &format!("{to}.self_attn"),
                &["q_proj", "k_proj", "v_proj"],
            )?;
            out.linear(
                &format!("{from}/self_attention/linear_1"),
                &format!("{to}.self_attn.out_proj"),
            )?;
            if side == "decoder" {
                out.layer_norm(
                    &format!("{from}/attention/layer_norm"),
                    &format!("{to}.encoder_attn_layer_norm"),
                )?;
                out.linear(
                    &format!("{from}/attention/linear_0"),
                    &format!("{to}.encoder_attn.q_proj"),
                )?;
                out.split(
                    &format!("{from}/attention/linear_1"),
                    &format!("{to}.encoder_attn"),
                    &["k_proj", "v_proj"],
                )?;
                out.linear(
                    &format!("{from}/attention/linear_2"),
                    &format!("{to}.encoder_attn.out_proj"),
                )?;
            }
            out.layer_norm(
                &format!("{from}/ffn/layer_norm"),
                &format!("{to}.final_layer_norm"),
            )?;
            out.linear(&format!("{from}/ffn/linear_0"), &format!("{to}.fc1"))?;
            out.linear(&format!("{from}/ffn/linear_1"), &format!("{to}.fc2"))?;
        }
    }
    Ok(out.tensors)
}

struct Renamer<'m, 'a> {
    model: &'m Ct2Model<'a>,
    tensors: BTreeMap<String, Tensor>,
}

impl<'m, 'a> Renamer<'m, 'a> {
    fn get(&self, name: &str) -> Result<&'m Variable<'a>, ConvertError> {
        let model: &'m Ct2Model<'a> = self.model;
        model
            .get(name)
            .ok_or_else(|| ConvertError::Model(format!("it has no variable {name}")))
    }

    fn copy(&mut self, from: &str, to: &str) -> Result<(), ConvertError> {
        let v = self.get(from)?;
        let tensor = Tensor {
            dtype: dtype(v.element),
            shape: v.shape.clone(),
            bytes: v.bytes.to_vec(),
        };
        self.tensors.insert(to.to_owned(), tensor);
        Ok(())
    }

    fn layer_norm(&mut self, from: &str, to: &str) -> Result<(), ConvertError> {
        self.copy(&format!("{from}/gamma"), &format!("{to}.weight"))?;
        self.copy(&format!("{from}/beta"), &format!("{to}.bias"))
    }

    fn linear(&mut self, from: &str, to: &str) -> Result<(), ConvertError> {
        self.copy(&format!("{from}/weight"), &format!("{to}.weight"))?;
        self.copy(&format!("{from}/bias"), &format!("{to}.bias"))
    }

    /// Splits a fused projection into equal row blocks named `parts`; `k_proj` gets no bias.
    fn split(&mut self, from: &str, to: &str, parts: &[&str]) -> Result<(), ConvertError> {
        let weight = self.get(&format!("{from}/weight"))?;
        let bias = self.get(&format!("{from}/bias"))?;
        let &[rows, cols] = weight.shape.as_slice() else {
            return Err(ConvertError::Model(format!(
                "{from}/weight is not a matrix"
            )));
        };
        if rows % parts.len() != 0 || bias.shape != [rows] || bias.element != weight.element {
            return Err(ConvertError::Model(format!(
                "{from} cannot be split in {}",
                parts.len()
            )));
        }
        let (n, size) = (rows / parts.len(), weight.element.size());
        for (i, part) in parts.iter().enumerate() {
            let rows_bytes = &weight.bytes[i * n * cols * size..(i + 1) * n * cols * size];
            let bias_bytes = &bias.bytes[i * n * size..(i + 1) * n * size];
            self.tensors.insert(
                format!("{to}.{part}.weight"),
                Tensor {
                    dtype: dtype(weight.element),
                    shape: vec![n, cols],
                    bytes: rows_bytes.to_vec(),
                },
            );
            if *part == "k_proj" {
                if bias_bytes.iter().any(|&b| b != 0) {
                    return Err(ConvertError::Model(format!(
                        "{from} has a key bias that is not zero"
                    )));
                }
                continue;
            }
            self.tensors.insert(
                format!("{to}.{part}.bias"),
                Tensor {
                    dtype: dtype(bias.element),
                    shape: vec![n],
                    bytes: bias_bytes.to_vec(),
                },
            );
        }
        Ok(())
    }
}
