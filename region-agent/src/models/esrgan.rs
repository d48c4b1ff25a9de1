//! ESRGAN-slim super-resolution (×2, ×3, ×4, ×8) on candle.
//!
//! Weights come from the npm package `@upscalerjs/esrgan-slim` (version pinned in
//! `scripts/fetch-models`, MIT licence, © 2022 Kevin Scott), shipped there in TF.js layers
//! format and converted to safetensors by `convert-tfjs` (see [`crate::models::convert`]).
//! Weights are never committed to this repository; `scripts/fetch-models` writes them to
//! `$MERIDIAN_MODELS_DIR/esrgan-slim/x{2,3,4,8}.safetensors`.
//!
//! [`Esrgan::load`] memory-maps a converted file and reads its hyper-parameters from the
//! safetensors metadata; [`Esrgan::upscale`] runs an RGB image through the network
//! synchronously (callers run it on a model thread, never on the async runtime).

mod conv;
pub mod network;
pub mod topology;

use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Module};
use candle_nn::VarBuilder;
use image::RgbImage;

use self::network::{Rdn, RdnConfig};
use super::image_io::{self, ImageInputError, InputLimits};

/// Metadata key: the model family and file format version.
pub const META_FORMAT: &str = "format";
/// Value of [`META_FORMAT`] in files this crate writes and reads.
pub const FORMAT: &str = "meridian.esrgan-slim.v1";
/// Metadata key: the network's [`RdnConfig`] as JSON.
pub const META_CONFIG: &str = "rdn_config";
/// Metadata key: the upscaling factor.
pub const META_SCALE: &str = "scale";
/// Metadata key: the registry package the weights came from.
pub const META_SOURCE_PACKAGE: &str = "source_package";
/// Metadata key: the version of that package.
pub const META_SOURCE_VERSION: &str = "source_version";
/// Metadata key: the weights' licence.
pub const META_LICENSE: &str = "license";

/// Why a model file could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The file could not be read.
    #[error("read model file {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The file is not a converted ESRGAN-slim safetensors file.
    #[error("model file {path} is not an ESRGAN-slim safetensors file: {reason}")]
    NotEsrgan {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The weights do not fit the network (missing tensor, wrong shape).
    #[error("load weights from {path}: {source}")]
    Weights {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: candle_core::Error,
    },
}

/// Why an image could not be upscaled.
#[derive(Debug, thiserror::Error)]
pub enum UpscaleError {
    /// The input image was refused (undecodable, empty, too large).
    #[error(transparent)]
    Input(#[from] ImageInputError),
    /// The network failed to run.
    #[error("run ESRGAN-slim: {0}")]
    Inference(#[from] candle_core::Error),
}

/// Where a model's weights came from, as recorded in its metadata.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Provenance {
    /// Registry package, e.g. `@upscalerjs/esrgan-slim`.
    pub package: String,
    /// Its version.
    pub version: String,
    /// The weights' licence.
    pub license: String,
}

/// A loaded ESRGAN-slim model on one device.
#[derive(Debug, Clone)]
pub struct Esrgan {
    network: Rdn,
    device: Device,
    provenance: Option<Provenance>,
    limits: InputLimits,
}

impl Esrgan {
    /// Memory-maps a converted safetensors file and builds the network from it.
    pub fn load(path: &Path, device: &Device) -> Result<Self, LoadError> {
        let metadata = read_metadata(path)?;
        let not_esrgan = |reason: String| LoadError::NotEsrgan {
            path: path.to_path_buf(),
            reason,
        };
        if metadata.get(META_FORMAT).map(String::as_str) != Some(FORMAT) {
            return Err(not_esrgan(format!(
                "metadata {META_FORMAT} is not {FORMAT}"
            )));
        }
        let config: RdnConfig = metadata
            .get(META_CONFIG)
            .ok_or_else(|| not_esrgan(format!("metadata {META_CONFIG} is missing")))
            .and_then(|json| {
                serde_json::from_str(json)
                    .map_err(|e| not_esrgan(format!("metadata {META_CONFIG}: {e}")))
            })?;
        let provenance = match (
            metadata.get(META_SOURCE_PACKAGE),
            metadata.get(META_SOURCE_VERSION),
        ) {
            (Some(package), Some(version)) => Some(Provenance {
                package: package.clone(),
                version: version.clone(),
                license: metadata.get(META_LICENSE).cloned().unwrap_or_default(),
            }),
            _ => None,
        };
        let weights_error = |source| LoadError::Weights {
            path: path.to_path_buf(),
            source,
        };
        // SAFETY: the file is memory-mapped read-only. Model files are written once (by
        // `convert-tfjs`, via a temporary file and a rename) and never modified in place, so
        // the mapping is not changed underneath the tensors that borrow from it.
        #[allow(unsafe_code)]
        let vb = unsafe { VarBuilder::from_mmaped_safetensors(&[path], DType::F32, device) }
            .map_err(weights_error)?;
        let network = Rdn::new(config, vb).map_err(weights_error)?;
        Ok(Self {
            network,
            device: device.clone(),
            provenance,
            limits: InputLimits::default(),
        })
    }

    /// Builds a model from weights already in a `VarBuilder` (tests, benchmarks).
    pub fn from_var_builder(config: RdnConfig, vb: VarBuilder<'_>) -> candle_core::Result<Self> {
        let device = vb.device().clone();
        Ok(Self {
            network: Rdn::new(config, vb)?,
            device,
            provenance: None,
            limits: InputLimits::default(),
        })
    }

    /// Replaces the input size limits (default: [`InputLimits::default`]).
    pub fn with_limits(mut self, limits: InputLimits) -> Self {
        self.limits = limits;
        self
    }

    /// The upscaling factor.
    pub fn scale(&self) -> usize {
        self.network.config().scale
    }

    /// The network's hyper-parameters.
    pub fn config(&self) -> &RdnConfig {
        self.network.config()
    }

    /// Where the weights came from, when the file says so.
    pub fn provenance(&self) -> Option<&Provenance> {
        self.provenance.as_ref()
    }

    /// The device the weights live on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// The network itself, for callers that work on tensors.
    pub fn network(&self) -> &Rdn {
        &self.network
    }

    /// Upscales an RGB image by [`Self::scale`], refusing images over the input limits.
    pub fn upscale(&self, image: &RgbImage) -> Result<RgbImage, UpscaleError> {
        self.limits.check(image.width(), image.height())?;
        let input = image_io::rgb_to_tensor(image, &self.device)?;
        let output = self.network.forward(&input)?;
        Ok(image_io::tensor_to_rgb(&output)?)
    }

    /// Decodes PNG or JPEG bytes and upscales the image.
    pub fn upscale_encoded(&self, bytes: &[u8]) -> Result<RgbImage, UpscaleError> {
        let image = image_io::decode_rgb(bytes, &self.limits)?;
        self.upscale(&image)
    }
}

/// Largest safetensors header accepted (the real ones are a few kilobytes).
const MAX_HEADER_BYTES: u64 = 1 << 20;

/// Reads the `__metadata__` map of a safetensors file without mapping it.
pub fn read_metadata(path: &Path) -> Result<HashMap<String, String>, LoadError> {
    let io = |source| LoadError::Io {
        path: path.to_path_buf(),
        source,
    };
    let not_safetensors = |reason: &str| LoadError::NotEsrgan {
        path: path.to_path_buf(),
        reason: reason.to_owned(),
    };
    let mut file = std::fs::File::open(path).map_err(io)?;
    let mut len = [0u8; 8];
    file.read_exact(&mut len).map_err(io)?;
    let len = u64::from_le_bytes(len);
    if len > MAX_HEADER_BYTES {
        return Err(not_safetensors("safetensors header is implausibly large"));
    }
    let mut header = vec![0u8; len as usize];
    file.read_exact(&mut header).map_err(io)?;
    let header: serde_json::Value = serde_json::from_slice(&header)
        .map_err(|_| not_safetensors("safetensors header is not JSON"))?;
    let Some(meta) = header.get("__metadata__").and_then(|m| m.as_object()) else {
        return Ok(HashMap::new());
    };
    Ok(meta
        .iter()
        .filter_map(|(k, v)| v.as_str().map(|v| (k.clone(), v.to_owned())))
        .collect())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use candle_core::Tensor;
    use candle_nn::VarMap;

    use super::*;
    use crate::models::convert::esrgan::write_safetensors;
    use crate::models::convert::tfjs::TfjsTensor;

    fn tiny(scale: usize) -> RdnConfig {
        RdnConfig {
            features: 8,
            growth: 2,
            upsample_features: [8, 4, 3 * scale * scale],
            ..RdnConfig::slim(scale)
        }
    }

    /// A randomly initialised model and its weights as plain tensors.
    fn random_model(cfg: RdnConfig) -> (Esrgan, BTreeMap<String, TfjsTensor>) {
        let varmap = VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
        let model = Esrgan::from_var_builder(cfg, vb).unwrap();
        let weights = varmap
            .data()
            .lock()
            .unwrap()
            .iter()
            .map(|(name, var)| {
                let t = var.as_tensor();
                let data = t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
                (
                    name.clone(),
                    TfjsTensor {
                        shape: t.dims().to_vec(),
                        data,
                    },
                )
            })
            .collect();
        (model, weights)
    }

    fn write(path: &Path, cfg: &RdnConfig, weights: &BTreeMap<String, TfjsTensor>) {
        let meta = HashMap::from([
            (META_FORMAT.to_owned(), FORMAT.to_owned()),
            (META_CONFIG.to_owned(), serde_json::to_string(cfg).unwrap()),
            (META_SOURCE_PACKAGE.to_owned(), "test".to_owned()),
            (META_SOURCE_VERSION.to_owned(), "1".to_owned()),
        ]);
        write_safetensors(path, weights, meta).unwrap();
    }

    #[test]
    fn output_shape_is_input_times_scale() {
        for scale in [2, 3, 4] {
            let (model, _) = random_model(tiny(scale));
            let x = Tensor::rand(0f32, 255f32, (2, 3, 7, 5), &Device::Cpu).unwrap();
            let y = model.network().forward(&x).unwrap();
            assert_eq!(y.dims(), &[2, 3, 7 * scale, 5 * scale]);
            let img = RgbImage::from_pixel(6, 4, image::Rgb([10, 200, 30]));
            assert_eq!(
                model.upscale(&img).unwrap().dimensions(),
                (6 * scale as u32, 4 * scale as u32)
            );
        }
    }

    #[test]
    fn safetensors_round_trip_gives_the_same_network() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.safetensors");
        let cfg = tiny(2);
        let (model, weights) = random_model(cfg);
        write(&path, &cfg, &weights);
        let loaded = Esrgan::load(&path, &Device::Cpu).unwrap();
        assert_eq!(loaded.config(), &cfg);
        assert_eq!(loaded.provenance().unwrap().version, "1");
        let x = Tensor::rand(0f32, 255f32, (1, 3, 9, 8), &Device::Cpu).unwrap();
        let a = model.network().forward(&x).unwrap();
        let b = loaded.network().forward(&x).unwrap();
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
    fn load_refuses_files_that_are_not_esrgan_or_miss_weights() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = tiny(2);
        let (_, mut weights) = random_model(cfg);

        let no_meta = dir.path().join("plain.safetensors");
        write_safetensors(&no_meta, &weights, HashMap::new()).unwrap();
        let err = Esrgan::load(&no_meta, &Device::Cpu).unwrap_err();
        assert!(matches!(err, LoadError::NotEsrgan { .. }), "{err}");

        weights.remove("SR.weight");
        let missing = dir.path().join("missing.safetensors");
        write(&missing, &cfg, &weights);
        let err = Esrgan::load(&missing, &Device::Cpu).unwrap_err();
        assert!(matches!(err, LoadError::Weights { .. }), "{err}");

        let err = Esrgan::load(&dir.path().join("absent"), &Device::Cpu).unwrap_err();
        assert!(matches!(err, LoadError::Io { .. }), "{err}");
    }

    #[test]
    fn upscale_refuses_oversize_and_undecodable_input() {
        let (model, _) = random_model(tiny(2));
        let model = model.with_limits(InputLimits {
            max_side: 16,
            max_pixels: 200,
        });
        let big = RgbImage::new(20, 4);
        assert!(matches!(
            model.upscale(&big),
            Err(UpscaleError::Input(ImageInputError::TooLarge { .. }))
        ));
        assert!(matches!(
            model.upscale_encoded(b"\x89PNG\r\n\x1a\nbroken"),
            Err(UpscaleError::Input(ImageInputError::Undecodable(_)))
        ));
    }
}
