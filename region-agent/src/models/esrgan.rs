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
//! synchronously (callers run it on a model thread, never on the async runtime), in
//! overlapping tiles ([`tiling`]) batched through the network, so the memory it takes is
//! bounded by a batch of tiles whatever the image's size, and [`Esrgan::upscale_until`] stops
//! between two batches when the job's [`StopSignal`] says so.

mod conv;
pub mod network;
pub mod tiling;
pub mod topology;

use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Module, Tensor};
use candle_nn::VarBuilder;
use image::RgbImage;

use self::network::{Rdn, RdnConfig};
use self::tiling::{Tile, Tiling};
use super::image_io::{self, ImageInputError, InputLimits};
use super::stop::{StopSignal, Stopped};

/// Largest input accepted by default, in pixels: 1024 × 1024, which two CPU cores shared with
/// other work upscale in about a minute at ×2 or ×4 (the work follows the input's pixels, the
/// network running at low resolution), half the default job timeout of 120 s. See
/// [`default_max_output_pixels`]; operators change the limit per model with
/// `max_output_pixels`.
pub const DEFAULT_MAX_INPUT_PIXELS: u64 = 1024 * 1024;

/// Largest output accepted by default at `scale`, in pixels (width × height after
/// upscaling): [`DEFAULT_MAX_INPUT_PIXELS`] · scale² (2048 × 2048 at ×2, 4096 × 4096 at ×4).
pub fn default_max_output_pixels(scale: u32) -> u64 {
    DEFAULT_MAX_INPUT_PIXELS * u64::from(scale) * u64::from(scale)
}

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
    /// The job was stopped (timeout or cancellation) between two batches of tiles.
    #[error(transparent)]
    Stopped(#[from] Stopped),
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
    tiling: Tiling,
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
        Ok(Self::new(network, device.clone(), provenance))
    }

    /// Builds a model from weights already in a `VarBuilder` (tests, benchmarks).
    pub fn from_var_builder(config: RdnConfig, vb: VarBuilder<'_>) -> candle_core::Result<Self> {
        let device = vb.device().clone();
        Ok(Self::new(Rdn::new(config, vb)?, device, None))
    }

    fn new(network: Rdn, device: Device, provenance: Option<Provenance>) -> Self {
        let cfg = *network.config();
        Self {
            limits: InputLimits::for_output(
                default_max_output_pixels(cfg.scale as u32),
                cfg.scale as u32,
            ),
            tiling: Tiling::for_network(&cfg),
            network,
            device,
            provenance,
        }
    }

    /// Replaces the input size limits (default: those of an output of
    /// [`default_max_output_pixels`]).
    pub fn with_limits(mut self, limits: InputLimits) -> Self {
        self.limits = limits;
        self
    }

    /// Replaces how images are cut into tiles (default: [`Tiling::for_network`]).
    pub fn with_tiling(mut self, tiling: Tiling) -> Self {
        self.tiling = tiling;
        self
    }

    /// How images are cut into tiles.
    pub fn tiling(&self) -> &Tiling {
        &self.tiling
    }

    /// The input size limits.
    pub fn limits(&self) -> &InputLimits {
        &self.limits
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
        self.upscale_until(image, &StopSignal::never())
    }

    /// [`Self::upscale`], checking `stop` before every batch of tiles.
    pub fn upscale_until(
        &self,
        image: &RgbImage,
        stop: &StopSignal,
    ) -> Result<RgbImage, UpscaleError> {
        let mut outputs = self.upscale_all(std::slice::from_ref(image), stop)?;
        Ok(outputs.remove(0))
    }

    /// Upscales several images, their tiles batched together (tiles of one size share a
    /// forward pass, up to [`Tiling::batch`] of them), checking `stop` before every batch.
    pub fn upscale_all(
        &self,
        images: &[RgbImage],
        stop: &StopSignal,
    ) -> Result<Vec<RgbImage>, UpscaleError> {
        let s = self.scale() as u32;
        let mut outputs = Vec::with_capacity(images.len());
        let mut work = Vec::new();
        for (i, image) in images.iter().enumerate() {
            let (w, h) = image.dimensions();
            self.limits.check(w, h)?;
            outputs.push(RgbImage::new(w * s, h * s));
            let tiles = self.tiling.tiles(w as usize, h as usize);
            work.extend(tiles.into_iter().map(|tile| (i, tile)));
        }
        let mut batch: Vec<(usize, Tile)> = Vec::with_capacity(self.tiling.batch);
        for (i, tile) in work {
            let same_size = |(_, first): &(usize, Tile)| {
                first.x.window.len() == tile.x.window.len()
                    && first.y.window.len() == tile.y.window.len()
            };
            if batch.len() == self.tiling.batch || !batch.first().is_none_or(same_size) {
                self.run_tiles(images, &batch, &mut outputs, stop)?;
                batch.clear();
            }
            batch.push((i, tile));
        }
        self.run_tiles(images, &batch, &mut outputs, stop)?;
        Ok(outputs)
    }

    /// A safe point, then one forward pass over same-sized tile windows, writing each
    /// tile's core into its image's output.
    fn run_tiles(
        &self,
        images: &[RgbImage],
        batch: &[(usize, Tile)],
        outputs: &mut [RgbImage],
        stop: &StopSignal,
    ) -> Result<(), UpscaleError> {
        if batch.is_empty() {
            return Ok(());
        }
        stop.check()?;
        let windows = batch
            .iter()
            .map(|(i, tile)| {
                let (x, y) = (&tile.x.window, &tile.y.window);
                let crop = image::imageops::crop_imm(
                    &images[*i],
                    x.start as u32,
                    y.start as u32,
                    x.len() as u32,
                    y.len() as u32,
                );
                image_io::rgb_to_tensor(&crop.to_image(), &self.device)
            })
            .collect::<candle_core::Result<Vec<Tensor>>>()?;
        let upscaled = self.network.forward(&Tensor::cat(&windows, 0)?)?;
        let s = self.scale();
        for (n, (i, tile)) in batch.iter().enumerate() {
            let core = upscaled
                .narrow(0, n, 1)?
                .narrow(2, tile.y.core_offset() * s, tile.y.core.len() * s)?
                .narrow(3, tile.x.core_offset() * s, tile.x.core.len() * s)?;
            let pixels = image_io::tensor_to_rgb(&core)?;
            let (x, y) = (tile.x.core.start * s, tile.y.core.start * s);
            image::imageops::replace(&mut outputs[*i], &pixels, x as i64, y as i64);
        }
        Ok(())
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

    fn scene(width: u32, height: u32) -> RgbImage {
        RgbImage::from_fn(width, height, |x, y| {
            let v = ((x * 13 + y * 7) % 256) as u8;
            image::Rgb([
                v,
                (x * 3) as u8,
                if (x / 5 + y / 3) % 2 == 0 { 40 } else { 210 },
            ])
        })
    }

    /// Largest difference of one 8-bit channel between two images of one size.
    fn max_diff(a: &RgbImage, b: &RgbImage) -> u8 {
        assert_eq!(a.dimensions(), b.dimensions());
        let pairs = a.as_raw().iter().zip(b.as_raw());
        pairs.map(|(a, b)| a.abs_diff(*b)).max().unwrap()
    }

    #[test]
    fn tiles_of_any_size_give_the_untiled_image() {
        let (model, _) = random_model(tiny(2));
        let cfg = *model.config();
        for (width, height) in [(45, 37), (1, 50), (50, 1), (33, 32)] {
            let image = scene(width, height);
            let whole = Tiling::new(&cfg, 64, 1);
            let untiled = model.clone().with_tiling(whole).upscale(&image).unwrap();
            for (window, batch) in [(21, 1), (32, 3), (32, 64)] {
                let tiling = Tiling::new(&cfg, window, batch);
                let tiled = model.clone().with_tiling(tiling).upscale(&image).unwrap();
                let diff = max_diff(&tiled, &untiled);
                assert!(diff <= 1, "{width}×{height} {tiling:?}: max diff {diff}");
            }
        }
    }

    /// The margin matters: with less than the receptive radius, seams show.
    #[test]
    fn a_margin_under_the_receptive_radius_changes_the_image() {
        let (model, _) = random_model(tiny(2));
        let image = scene(45, 37);
        let untiled = model.upscale(&image).unwrap();
        let short = Tiling {
            window: 21,
            margin: model.config().receptive_radius() / 2,
            batch: 2,
        };
        let tiled = model.with_tiling(short).upscale(&image).unwrap();
        assert!(max_diff(&tiled, &untiled) > 1);
    }

    #[test]
    fn a_stopped_job_ends_at_the_next_batch_of_tiles() {
        let (model, _) = random_model(tiny(2));
        let tiling = Tiling::new(model.config(), 21, 2);
        let model = model.with_tiling(tiling);
        let image = scene(60, 60);
        let tiles = model.tiling().tiles(60, 60).len();
        assert!(tiles > 4, "{tiles} tiles");
        let stop = StopSignal::never().with_hook(std::sync::Arc::new(|signal, n| {
            if n == 2 {
                signal.cancel();
            }
        }));
        let result = model.upscale_until(&image, &stop);
        assert!(matches!(
            result,
            Err(UpscaleError::Stopped(Stopped::Cancelled))
        ));
        assert_eq!(stop.safe_points(), 2);
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
