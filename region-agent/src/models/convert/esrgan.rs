//! ESRGAN-slim: TF.js layers model → safetensors for [`crate::models::esrgan::Esrgan`].
//!
//! The topology is checked against the candle network first
//! ([`crate::models::esrgan::topology`]); then every Keras weight `LAYER/kernel` (HWIO) becomes
//! `LAYER.weight` (OIHW) and `LAYER/bias` becomes `LAYER.bias`. The file's metadata records the
//! format, the network's configuration, the scale and where the weights came from. The file is
//! written to a temporary name and renamed, so a reader never sees half a file.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use safetensors::tensor::{Dtype, TensorView};

use super::tfjs::{TfjsError, TfjsModel, TfjsTensor};
use crate::models::esrgan::network::RdnConfig;
use crate::models::esrgan::topology::{TopologyError, rdn_config_from_topology};
use crate::models::esrgan::{
    FORMAT, META_CONFIG, META_FORMAT, META_LICENSE, META_SCALE, META_SOURCE_PACKAGE,
    META_SOURCE_VERSION,
};

/// Where the weights being converted came from; recorded in the output's metadata.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source {
    /// Registry package, e.g. `@upscalerjs/esrgan-slim`.
    pub package: String,
    /// Its version.
    pub version: String,
    /// The weights' licence, e.g. `MIT`.
    pub license: String,
}

/// Why a conversion failed.
#[derive(Debug, thiserror::Error)]
pub enum ConvertError {
    /// The TF.js model could not be read.
    #[error(transparent)]
    Tfjs(#[from] TfjsError),
    /// The topology is not the network the agent implements.
    #[error(transparent)]
    Topology(#[from] TopologyError),
    /// The model's scale is not the one the caller expected.
    #[error("model upscales ×{actual}, expected ×{expected}")]
    Scale {
        /// Scale the caller asked for.
        expected: usize,
        /// Scale the topology describes.
        actual: usize,
    },
    /// A weight is not a convolution kernel or bias of the network.
    #[error("weight {0:?} is not a kernel or bias of a Conv2D layer")]
    UnexpectedWeight(String),
    /// The safetensors file could not be written.
    #[error("write {path}: {reason}")]
    Write {
        /// The output file.
        path: PathBuf,
        /// What failed.
        reason: String,
    },
}

/// What a conversion produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Converted {
    /// The network's configuration (scale included).
    pub config: RdnConfig,
    /// Tensors written.
    pub tensors: usize,
    /// Parameters written.
    pub parameters: usize,
}

/// Maps one Keras weight to its candle name and layout.
fn to_candle(name: &str, tensor: &TfjsTensor) -> Result<(String, TfjsTensor), ConvertError> {
    match name.rsplit_once('/') {
        Some((layer, "kernel")) if tensor.shape.len() == 4 => {
            Ok((format!("{layer}.weight"), tensor.hwio_to_oihw()?))
        }
        Some((layer, "bias")) if tensor.shape.len() == 1 => {
            Ok((format!("{layer}.bias"), tensor.clone()))
        }
        _ => Err(ConvertError::UnexpectedWeight(name.to_owned())),
    }
}

/// Converts the TF.js model at `model_json` into `out`, checking the topology and (when
/// given) the scale.
pub fn convert(
    model_json: &Path,
    out: &Path,
    source: &Source,
    expected_scale: Option<usize>,
) -> Result<Converted, ConvertError> {
    let model = TfjsModel::read(model_json)?;
    let config = rdn_config_from_topology(&model.topology)?;
    if let Some(expected) = expected_scale
        && expected != config.scale
    {
        return Err(ConvertError::Scale {
            expected,
            actual: config.scale,
        });
    }
    let mut tensors = BTreeMap::new();
    for (name, tensor) in &model.weights {
        let (name, tensor) = to_candle(name, tensor)?;
        tensors.insert(name, tensor);
    }
    let parameters = tensors.values().map(|t| t.data.len()).sum();
    let metadata = metadata(&config, source)?;
    write_safetensors(out, &tensors, metadata)?;
    Ok(Converted {
        config,
        tensors: tensors.len(),
        parameters,
    })
}

fn metadata(config: &RdnConfig, source: &Source) -> Result<HashMap<String, String>, ConvertError> {
    let config_json = serde_json::to_string(config).map_err(|e| ConvertError::Write {
        path: PathBuf::new(),
        reason: format!("serialise config: {e}"),
    })?;
    Ok(HashMap::from([
        (META_FORMAT.to_owned(), FORMAT.to_owned()),
        (META_CONFIG.to_owned(), config_json),
        (META_SCALE.to_owned(), config.scale.to_string()),
        (META_SOURCE_PACKAGE.to_owned(), source.package.clone()),
        (META_SOURCE_VERSION.to_owned(), source.version.clone()),
        (META_LICENSE.to_owned(), source.license.clone()),
    ]))
}

/// Writes `f32` tensors with metadata to `out` via a temporary file and a rename.
pub fn write_safetensors(
    out: &Path,
    tensors: &BTreeMap<String, TfjsTensor>,
    metadata: HashMap<String, String>,
) -> Result<(), ConvertError> {
    let failed = |reason: String| ConvertError::Write {
        path: out.to_path_buf(),
        reason,
    };
    let bytes: Vec<(&String, Vec<u8>, &TfjsTensor)> = tensors
        .iter()
        .map(|(name, t)| {
            (
                name,
                t.data.iter().flat_map(|v| v.to_le_bytes()).collect(),
                t,
            )
        })
        .collect();
    let views = bytes
        .iter()
        .map(|(name, data, t)| {
            TensorView::new(Dtype::F32, t.shape.clone(), data)
                .map(|view| (name.as_str(), view))
                .map_err(|e| failed(format!("tensor {name}: {e}")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let mut tmp_name = out.as_os_str().to_owned();
    tmp_name.push(format!(".tmp{}", std::process::id()));
    let tmp = PathBuf::from(tmp_name);
    safetensors::serialize_to_file(views, Some(metadata), &tmp)
        .map_err(|e| failed(e.to_string()))?;
    std::fs::rename(&tmp, out).map_err(|e| failed(format!("rename from {}: {e}", tmp.display())))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::models::esrgan::Esrgan;
    use crate::models::esrgan::topology::tests::keras_topology;
    use candle_core::{Device, Module, Tensor};

    /// A tiny ESRGAN-slim in TF.js format: known weights (HWIO) written to a shard.
    fn write_tiny_tfjs(dir: &Path, cfg: &RdnConfig) -> BTreeMap<String, TfjsTensor> {
        let mut shapes: Vec<(String, Vec<usize>)> = Vec::new();
        let conv = |shapes: &mut Vec<(String, Vec<usize>)>, name: &str, k, i, o| {
            shapes.push((format!("{name}/kernel"), vec![k, k, i, o]));
            shapes.push((format!("{name}/bias"), vec![o]));
        };
        let (g0, g) = (cfg.features, cfg.growth);
        conv(&mut shapes, "F_m1", 3, 3, g0);
        conv(&mut shapes, "F_0", 3, g0, g0);
        for d in 1..=cfg.blocks {
            for c in 1..=cfg.convs_per_block {
                conv(&mut shapes, &format!("F_{d}_{c}"), 3, g0 + (c - 1) * g, g);
            }
            conv(
                &mut shapes,
                &format!("LFF_{d}"),
                1,
                g0 + cfg.convs_per_block * g,
                g0,
            );
        }
        conv(&mut shapes, "GFF_1", 1, g0 * cfg.blocks, g0);
        conv(&mut shapes, "GFF_2", 3, g0, g0);
        let [u1, u2, u3] = cfg.upsample_features;
        conv(&mut shapes, "UPN1", 5, g0, u1);
        conv(&mut shapes, "UPN2", 3, u1, u2);
        conv(&mut shapes, "UPN3", 3, u2, u3);
        conv(&mut shapes, "SR", 3, u3, 3);

        let mut weights = BTreeMap::new();
        let mut shard = Vec::new();
        let mut manifest = Vec::new();
        let mut state = 12345_u32;
        for (name, shape) in shapes {
            let data: Vec<f32> = (0..shape.iter().product::<usize>())
                .map(|_| {
                    state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                    (state >> 8) as f32 / (1u32 << 24) as f32 * 0.4 - 0.2
                })
                .collect();
            shard.extend(data.iter().flat_map(|v| v.to_le_bytes()));
            manifest.push(serde_json::json!({"name": name, "shape": shape, "dtype": "float32"}));
            weights.insert(name, TfjsTensor { shape, data });
        }
        let json = serde_json::json!({
            "format": "layers-model",
            "modelTopology": keras_topology(cfg),
            "weightsManifest": [{"paths": ["group1-shard1of1.bin"], "weights": manifest}],
        });
        std::fs::write(dir.join("model.json"), json.to_string()).unwrap();
        std::fs::write(dir.join("group1-shard1of1.bin"), shard).unwrap();
        weights
    }

    fn source() -> Source {
        Source {
            package: "tiny".into(),
            version: "0.0.1".into(),
            license: "MIT".into(),
        }
    }

    #[test]
    fn converts_a_tiny_model_that_loads_and_matches_the_keras_weights() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = RdnConfig {
            features: 4,
            growth: 2,
            upsample_features: [4, 3, 12],
            ..RdnConfig::slim(2)
        };
        let keras = write_tiny_tfjs(dir.path(), &cfg);
        let out = dir.path().join("x2.safetensors");
        let converted = convert(&dir.path().join("model.json"), &out, &source(), Some(2)).unwrap();
        assert_eq!(converted.config, cfg);
        assert_eq!(converted.tensors, keras.len());

        let model = Esrgan::load(&out, &Device::Cpu).unwrap();
        assert_eq!(model.scale(), 2);
        assert_eq!(model.provenance().unwrap().package, "tiny");

        // A 1-pixel input through the loaded network must equal the same network built
        // directly from the Keras weights, transposed here independently of the converter.
        let mut direct = HashMap::new();
        for (name, t) in &keras {
            let tensor = Tensor::from_vec(t.data.clone(), t.shape.clone(), &Device::Cpu).unwrap();
            let (layer, kind) = name.rsplit_once('/').unwrap();
            let (key, tensor) = if kind == "kernel" {
                let oihw = tensor.permute((3, 2, 0, 1)).unwrap().contiguous().unwrap();
                (format!("{layer}.weight"), oihw)
            } else {
                (format!("{layer}.bias"), tensor)
            };
            direct.insert(key, tensor);
        }
        let vb = candle_nn::VarBuilder::from_tensors(direct, candle_core::DType::F32, &Device::Cpu);
        let reference = Esrgan::from_var_builder(cfg, vb).unwrap();
        let input = Tensor::rand(0f32, 255f32, (1, 3, 5, 6), &Device::Cpu).unwrap();
        let a = model.network().forward(&input).unwrap();
        let b = reference.network().forward(&input).unwrap();
        assert_eq!(a.dims(), &[1, 3, 10, 12]);
        let diff: f32 = (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar()
            .unwrap();
        assert_eq!(diff, 0.0);
    }

    #[test]
    fn refuses_a_scale_other_than_expected() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = RdnConfig {
            features: 2,
            growth: 1,
            upsample_features: [2, 2, 2],
            ..RdnConfig::slim(3)
        };
        write_tiny_tfjs(dir.path(), &cfg);
        let out = dir.path().join("x.safetensors");
        let err = convert(&dir.path().join("model.json"), &out, &source(), Some(4)).unwrap_err();
        assert!(matches!(
            err,
            ConvertError::Scale {
                expected: 4,
                actual: 3
            }
        ));
        assert!(!out.exists());
    }
}
