//! Reader for TensorFlow.js "layers-model" artefacts: a `model.json` (Keras topology plus a
//! weights manifest) and the binary shard files it names.
//!
//! The manifest lists weight groups; each group's shards are concatenated in order and its
//! weights lie back to back in that buffer, little-endian. Weights are either stored as they
//! are (`float32`, `int32`) or quantised: affine `uint8` / `uint16` (`value = q * scale + min`)
//! or `float16`. Everything is decoded to `f32` here.
//!
//! Keras stores convolution kernels as HWIO (`[kh, kw, in, out]`); [`TfjsTensor::hwio_to_oihw`]
//! turns them into the OIHW layout that candle's `conv2d` expects.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// Why a TF.js model could not be read.
#[derive(Debug, thiserror::Error)]
pub enum TfjsError {
    /// A file could not be read.
    #[error("read {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// `model.json` is not valid JSON of the expected shape.
    #[error("parse {path}: {source}")]
    Json {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: serde_json::Error,
    },
    /// The file is valid JSON but not a layers model this reader understands.
    #[error("unsupported model.json: {0}")]
    Unsupported(String),
    /// The shards hold fewer or more bytes than the manifest describes.
    #[error(
        "weight group {group} ({paths}) holds {actual} bytes but its manifest describes {expected}"
    )]
    ShardSize {
        /// Index of the weight group in the manifest.
        group: usize,
        /// The group's shard files, comma-separated.
        paths: String,
        /// Bytes the manifest describes.
        expected: usize,
        /// Bytes found in the shards.
        actual: usize,
    },
}

/// `model.json` as written by the TF.js converter (only the fields used here).
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ModelJson {
    /// `"layers-model"` for Keras models.
    #[serde(default)]
    pub format: Option<String>,
    /// The Keras model topology, kept as JSON for the model-specific checks.
    pub model_topology: serde_json::Value,
    /// Weight groups and the shard files that hold them.
    pub weights_manifest: Vec<WeightGroup>,
}

/// One group of weights stored in one or more shard files.
#[derive(Debug, Deserialize)]
pub struct WeightGroup {
    /// Shard file names, relative to `model.json`, in order.
    pub paths: Vec<String>,
    /// The weights, in the order they lie in the concatenated shards.
    pub weights: Vec<WeightEntry>,
}

/// One weight of a group.
#[derive(Debug, Deserialize)]
pub struct WeightEntry {
    /// Keras name, e.g. `conv/kernel`.
    pub name: String,
    /// Shape (Keras layout).
    pub shape: Vec<usize>,
    /// Logical dtype (`float32`, `int32`).
    pub dtype: String,
    /// Present when the stored bytes are quantised.
    #[serde(default)]
    pub quantization: Option<Quantization>,
}

/// How a quantised weight is stored.
#[derive(Debug, Deserialize)]
pub struct Quantization {
    /// Stored dtype: `uint8`, `uint16` or `float16`.
    pub dtype: String,
    /// Affine scale (integer quantisation only).
    #[serde(default)]
    pub scale: Option<f32>,
    /// Affine offset (integer quantisation only).
    #[serde(default)]
    pub min: Option<f32>,
}

/// A decoded weight: `f32` values in row-major order with their shape.
#[derive(Debug, Clone, PartialEq)]
pub struct TfjsTensor {
    /// Shape of `data`.
    pub shape: Vec<usize>,
    /// Values, row-major.
    pub data: Vec<f32>,
}

impl TfjsTensor {
    /// Reorders a 4-D Keras convolution kernel from HWIO to OIHW.
    pub fn hwio_to_oihw(&self) -> Result<TfjsTensor, TfjsError> {
        let &[h, w, i, o] = self.shape.as_slice() else {
            return Err(TfjsError::Unsupported(format!(
                "a convolution kernel must be 4-D (HWIO), got shape {:?}",
                self.shape
            )));
        };
        if self.data.len() != h * w * i * o {
            return Err(TfjsError::Unsupported(format!(
                "kernel of shape {:?} holds {} values",
                self.shape,
                self.data.len()
            )));
        }
        let mut data = vec![0.0_f32; self.data.len()];
        for (src, value) in self.data.iter().enumerate() {
            // src = ((y * w + x) * i + ci) * o + co
            let co = src % o;
            let ci = (src / o) % i;
            let x = (src / (o * i)) % w;
            let y = src / (o * i * w);
            data[((co * i + ci) * h + y) * w + x] = *value;
        }
        Ok(TfjsTensor {
            shape: vec![o, i, h, w],
            data,
        })
    }
}

/// A TF.js layers model read from disk: its topology and its decoded weights by Keras name.
#[derive(Debug)]
pub struct TfjsModel {
    /// The Keras topology (`modelTopology` of `model.json`).
    pub topology: serde_json::Value,
    /// Decoded weights by Keras name (`layer/kernel`, `layer/bias`).
    pub weights: BTreeMap<String, TfjsTensor>,
}

impl TfjsModel {
    /// Reads `model.json` and the shards next to it.
    pub fn read(model_json: &Path) -> Result<Self, TfjsError> {
        let text = std::fs::read_to_string(model_json).map_err(|source| TfjsError::Io {
            path: model_json.to_path_buf(),
            source,
        })?;
        let parsed: ModelJson = serde_json::from_str(&text).map_err(|source| TfjsError::Json {
            path: model_json.to_path_buf(),
            source,
        })?;
        if let Some(format) = &parsed.format
            && format != "layers-model"
        {
            return Err(TfjsError::Unsupported(format!(
                "format is {format:?}; only \"layers-model\" is supported"
            )));
        }
        let dir = model_json.parent().unwrap_or_else(|| Path::new("."));
        let mut weights = BTreeMap::new();
        for (index, group) in parsed.weights_manifest.iter().enumerate() {
            let bytes = read_group(dir, group)?;
            decode_group(index, group, &bytes, &mut weights)?;
        }
        Ok(Self {
            topology: parsed.model_topology,
            weights,
        })
    }
}

fn read_group(dir: &Path, group: &WeightGroup) -> Result<Vec<u8>, TfjsError> {
    let mut bytes = Vec::new();
    for name in &group.paths {
        if name.contains("..") || Path::new(name).is_absolute() {
            return Err(TfjsError::Unsupported(format!(
                "shard path {name:?} leaves the model directory"
            )));
        }
        let path = dir.join(name);
        let mut shard = std::fs::read(&path).map_err(|source| TfjsError::Io { path, source })?;
        bytes.append(&mut shard);
    }
    Ok(bytes)
}

/// Bytes per stored element of a weight.
fn stored_width(entry: &WeightEntry) -> Result<usize, TfjsError> {
    let stored = entry
        .quantization
        .as_ref()
        .map_or(entry.dtype.as_str(), |q| q.dtype.as_str());
    match stored {
        "float32" | "int32" => Ok(4),
        "uint16" | "float16" => Ok(2),
        "uint8" => Ok(1),
        other => Err(TfjsError::Unsupported(format!(
            "weight {:?} is stored as {other:?}; supported: float32, int32, uint16, uint8, float16",
            entry.name
        ))),
    }
}

fn decode_group(
    index: usize,
    group: &WeightGroup,
    bytes: &[u8],
    out: &mut BTreeMap<String, TfjsTensor>,
) -> Result<(), TfjsError> {
    let mut expected = 0usize;
    for entry in &group.weights {
        let count: usize = entry.shape.iter().product();
        expected += count * stored_width(entry)?;
    }
    if expected != bytes.len() {
        return Err(TfjsError::ShardSize {
            group: index,
            paths: group.paths.join(", "),
            expected,
            actual: bytes.len(),
        });
    }
    let mut offset = 0usize;
    for entry in &group.weights {
        let count: usize = entry.shape.iter().product();
        let len = count * stored_width(entry)?;
        let data = decode_weight(entry, &bytes[offset..offset + len])?;
        offset += len;
        let tensor = TfjsTensor {
            shape: entry.shape.clone(),
            data,
        };
        if out.insert(entry.name.clone(), tensor).is_some() {
            return Err(TfjsError::Unsupported(format!(
                "weight {:?} appears twice in the manifest",
                entry.name
            )));
        }
    }
    Ok(())
}

fn decode_weight(entry: &WeightEntry, bytes: &[u8]) -> Result<Vec<f32>, TfjsError> {
    let Some(q) = &entry.quantization else {
        return Ok(match entry.dtype.as_str() {
            "int32" => bytes
                .chunks_exact(4)
                .map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]) as f32)
                .collect(),
            _ => bytes
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
        });
    };
    if q.dtype == "float16" {
        return Ok(bytes
            .chunks_exact(2)
            .map(|c| f16_to_f32(u16::from_le_bytes([c[0], c[1]])))
            .collect());
    }
    let (Some(scale), Some(min)) = (q.scale, q.min) else {
        return Err(TfjsError::Unsupported(format!(
            "weight {:?} is quantised to {} without scale and min",
            entry.name, q.dtype
        )));
    };
    Ok(match q.dtype.as_str() {
        "uint8" => bytes.iter().map(|&b| f32::from(b) * scale + min).collect(),
        _ => bytes
            .chunks_exact(2)
            .map(|c| f32::from(u16::from_le_bytes([c[0], c[1]])) * scale + min)
            .collect(),
    })
}

/// IEEE 754 half precision to single precision.
fn f16_to_f32(bits: u16) -> f32 {
    let sign = u32::from(bits >> 15) << 31;
    let exponent = u32::from((bits >> 10) & 0x1f);
    let mantissa = u32::from(bits & 0x3ff);
    let value = match (exponent, mantissa) {
        (0, 0) => sign,
        (0, m) => {
            // Subnormal: m * 2^-24.
            let magnitude = m as f32 * f32::powi(2.0, -24);
            return if sign != 0 { -magnitude } else { magnitude };
        }
        (0x1f, m) => sign | 0x7f80_0000 | (m << 13),
        (e, m) => sign | ((e + 112) << 23) | (m << 13),
    };
    f32::from_bits(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_model(dir: &Path, manifest: serde_json::Value, shard: &[u8]) -> PathBuf {
        let json = serde_json::json!({
            "format": "layers-model",
            "modelTopology": {"model_config": {"class_name": "Functional", "config": {"layers": []}}},
            "weightsManifest": [manifest],
        });
        let path = dir.join("model.json");
        std::fs::write(&path, json.to_string()).unwrap();
        std::fs::write(dir.join("group1-shard1of1.bin"), shard).unwrap();
        path
    }

    #[test]
    fn reads_float32_and_quantised_weights_in_manifest_order() {
        let dir = tempfile::tempdir().unwrap();
        // kernel: 1x1x2x3 float32 = 6 values, bias: 3 values as uint8 with scale 0.5 min -1,
        // extra: 2 values as float16.
        let kernel: Vec<f32> = vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0];
        let mut shard: Vec<u8> = kernel.iter().flat_map(|v| v.to_le_bytes()).collect();
        shard.extend_from_slice(&[0, 2, 4]);
        shard.extend_from_slice(&0x3c00_u16.to_le_bytes()); // 1.0
        shard.extend_from_slice(&0xc000_u16.to_le_bytes()); // -2.0
        let manifest = serde_json::json!({
            "paths": ["group1-shard1of1.bin"],
            "weights": [
                {"name": "c/kernel", "shape": [1, 1, 2, 3], "dtype": "float32"},
                {"name": "c/bias", "shape": [3], "dtype": "float32",
                 "quantization": {"dtype": "uint8", "scale": 0.5, "min": -1.0}},
                {"name": "h", "shape": [2], "dtype": "float32",
                 "quantization": {"dtype": "float16"}},
            ],
        });
        let model = TfjsModel::read(&write_model(dir.path(), manifest, &shard)).unwrap();
        assert_eq!(model.weights["c/kernel"].data, kernel);
        assert_eq!(model.weights["c/bias"].data, vec![-1.0, 0.0, 1.0]);
        assert_eq!(model.weights["h"].data, vec![1.0, -2.0]);
    }

    #[test]
    fn shard_size_mismatch_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let manifest = serde_json::json!({
            "paths": ["group1-shard1of1.bin"],
            "weights": [{"name": "b", "shape": [4], "dtype": "float32"}],
        });
        let err = TfjsModel::read(&write_model(dir.path(), manifest, &[0u8; 12])).unwrap_err();
        assert!(matches!(
            err,
            TfjsError::ShardSize {
                expected: 16,
                actual: 12,
                ..
            }
        ));
    }

    #[test]
    fn hwio_to_oihw_moves_every_element() {
        // Element value encodes its HWIO index: y*1000 + x*100 + i*10 + o.
        let (h, w, i, o) = (3, 2, 4, 5);
        let mut data = Vec::new();
        for y in 0..h {
            for x in 0..w {
                for ci in 0..i {
                    for co in 0..o {
                        data.push((y * 1000 + x * 100 + ci * 10 + co) as f32);
                    }
                }
            }
        }
        let t = TfjsTensor {
            shape: vec![h, w, i, o],
            data,
        };
        let r = t.hwio_to_oihw().unwrap();
        assert_eq!(r.shape, vec![o, i, h, w]);
        let at = |co: usize, ci: usize, y: usize, x: usize| r.data[((co * i + ci) * h + y) * w + x];
        assert_eq!(at(4, 3, 2, 1), 2134.0);
        assert_eq!(at(0, 1, 1, 0), 1010.0);
        assert_eq!(at(2, 0, 0, 1), 102.0);
    }

    #[test]
    fn f16_decoding_covers_normal_subnormal_and_special_values() {
        assert_eq!(f16_to_f32(0x3c00), 1.0);
        assert_eq!(f16_to_f32(0x3555), 0.333_251_95);
        assert_eq!(f16_to_f32(0x0001), 2f32.powi(-24));
        assert_eq!(f16_to_f32(0x8000), -0.0);
        assert!(f16_to_f32(0x7c00).is_infinite());
        assert!(f16_to_f32(0x7e00).is_nan());
    }
}
