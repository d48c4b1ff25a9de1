//! ESRGAN-slim (`meridian/esrgan-x2`, `meridian/esrgan-x4`) served through [`Model`].
//!
//! Input `{"image": "<base64 PNG/JPEG or data: URL>"}`, output `{"image": {file}}` (PNG).
//! Units: output megapixels. Images up to `max_output_pixels` of output are accepted (default
//! [`default_max_output_pixels`]); larger ones are refused with 422 naming the limit. Every
//! image runs in overlapping tiles; the tiles of a batch's images (the batch key is `WxH`, so
//! they share one tile size) are stacked into `[N, 3, h, w]` tensors of up to
//! [`Tiling::batch`](crate::models::esrgan::tiling::Tiling::batch) tiles, and the job's stop
//! signal is checked before each.

use std::io::Cursor;
use std::path::PathBuf;

use candle_core::Device;
use image::{ImageFormat, RgbImage};
use policy::PricingUnit;
use serde_json::Value;

use super::{
    InputError, JobInput, LoadedModel, Model, ModelError, ModelOutput, OutputFile, StopSignal,
    decode_base64, string_field,
};
use crate::models::esrgan::{Esrgan, UpscaleError, default_max_output_pixels};
use crate::models::image_io::{self, ImageInputError, InputLimits};

/// An ESRGAN-slim model of one scale, its weights in `<weights_dir>/x<scale>.safetensors`.
#[derive(Debug, Clone)]
pub struct EsrganModel {
    id: String,
    scale: u32,
    weights: PathBuf,
    max_output_pixels: u64,
    limits: InputLimits,
}

impl EsrganModel {
    /// The model `id` upscaling by `scale`, weights from `weights_dir`.
    pub fn new(id: &str, scale: u32, weights_dir: &std::path::Path) -> Self {
        Self {
            id: id.to_owned(),
            scale,
            weights: weights_dir.join(format!("x{scale}.safetensors")),
            max_output_pixels: default_max_output_pixels(scale),
            limits: InputLimits::for_output(default_max_output_pixels(scale), scale),
        }
    }

    /// Accepts inputs whose output has at most `max_output_pixels` pixels.
    pub fn with_max_output_pixels(mut self, max_output_pixels: u64) -> Self {
        self.max_output_pixels = max_output_pixels;
        self.limits = InputLimits::for_output(max_output_pixels, self.scale);
        self
    }

    /// The weights file this model loads.
    pub fn weights(&self) -> &std::path::Path {
        &self.weights
    }
}

impl Model for EsrganModel {
    fn id(&self) -> &str {
        &self.id
    }

    fn unit(&self) -> PricingUnit {
        PricingUnit::Megapixel
    }

    fn prepare(&self, input: &Value) -> Result<JobInput, InputError> {
        let text = string_field(input, "image")?;
        let bytes = decode_base64("image", text)?;
        let image = image_io::decode_rgb(&bytes, &self.limits).map_err(|e| match e {
            ImageInputError::TooLarge { .. } => InputError::Unprocessable(format!(
                "input.image: {e} (an output of at most {} pixels at ×{})",
                self.max_output_pixels, self.scale
            )),
            other => InputError::Unprocessable(format!("input.image: {other}")),
        })?;
        let (w, h) = image.dimensions();
        let out_pixels = f64::from(w * self.scale) * f64::from(h * self.scale);
        Ok(JobInput {
            units: out_pixels / 1e6,
            batch_key: format!("{w}x{h}"),
            payload: Box::new(image),
        })
    }

    fn load(&self, device: &Device) -> Result<Box<dyn LoadedModel>, ModelError> {
        let model = Esrgan::load(&self.weights, device).map_err(|e| ModelError(e.to_string()))?;
        if model.scale() != self.scale as usize {
            return Err(ModelError(format!(
                "{} upscales ×{}, expected ×{}",
                self.weights.display(),
                model.scale(),
                self.scale
            )));
        }
        Ok(Box::new(LoadedEsrgan {
            model: model.with_limits(self.limits),
        }))
    }
}

struct LoadedEsrgan {
    model: Esrgan,
}

impl LoadedModel for LoadedEsrgan {
    fn run(
        &mut self,
        batch: Vec<JobInput>,
        stop: &StopSignal,
    ) -> Vec<Result<ModelOutput, ModelError>> {
        let count = batch.len();
        let images: Vec<RgbImage> = batch
            .into_iter()
            .filter_map(|job| job.payload.downcast::<RgbImage>().ok().map(|b| *b))
            .collect();
        if images.len() != count {
            let error = ModelError("input of the wrong type for ESRGAN".to_owned());
            return vec![Err(error); count];
        }
        match self.model.upscale_all(&images, stop) {
            Ok(outputs) => outputs.iter().map(encode).collect(),
            Err(UpscaleError::Stopped(stopped)) => vec![Err(stopped.into()); count],
            Err(e) => vec![Err(ModelError(e.to_string())); count],
        }
    }
}

fn encode(image: &RgbImage) -> Result<ModelOutput, ModelError> {
    let mut bytes = Vec::new();
    image
        .write_to(&mut Cursor::new(&mut bytes), ImageFormat::Png)
        .map_err(|e| ModelError(format!("encode PNG: {e}")))?;
    Ok(ModelOutput {
        fields: serde_json::Map::new(),
        files: vec![OutputFile {
            field: "image".to_owned(),
            name: "image.png".to_owned(),
            content_type: "image/png".to_owned(),
            bytes,
        }],
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use candle_core::DType;
    use candle_nn::{VarBuilder, VarMap};
    use serde_json::json;

    use super::*;
    use crate::models::esrgan::network::RdnConfig;

    /// A small randomly initialised ESRGAN network (not the real weights).
    fn random_loaded(scale: usize) -> LoadedEsrgan {
        let config = RdnConfig {
            features: 8,
            growth: 2,
            upsample_features: [8, 4, 3 * scale * scale],
            ..RdnConfig::slim(scale)
        };
        let varmap = VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
        LoadedEsrgan {
            model: Esrgan::from_var_builder(config, vb).unwrap(),
        }
    }

    fn png_base64(width: u32, height: u32, seed: u8) -> String {
        use base64::Engine as _;
        let image = RgbImage::from_fn(width, height, |x, y| {
            image::Rgb([
                (x as u8).wrapping_mul(seed),
                (y as u8).wrapping_mul(31),
                seed,
            ])
        });
        let mut bytes = Vec::new();
        image
            .write_to(&mut Cursor::new(&mut bytes), ImageFormat::Png)
            .unwrap();
        base64::engine::general_purpose::STANDARD.encode(bytes)
    }

    #[test]
    fn a_stacked_batch_gives_the_same_images_as_one_by_one() {
        let model = EsrganModel::new("meridian/esrgan-x2", 2, std::path::Path::new("unused"));
        let mut loaded = random_loaded(2);
        let inputs = || {
            [3u8, 7, 11].map(|seed| {
                model
                    .prepare(&json!({"image": png_base64(6, 5, seed)}))
                    .unwrap()
            })
        };
        let keys: Vec<String> = inputs().iter().map(|i| i.batch_key.clone()).collect();
        assert_eq!(keys, ["6x5", "6x5", "6x5"]);
        let batched: Vec<Vec<u8>> = loaded
            .run(inputs().into(), &StopSignal::never())
            .into_iter()
            .map(|r| r.unwrap().files[0].bytes.clone())
            .collect();
        let single: Vec<Vec<u8>> = inputs()
            .into_iter()
            .map(|input| {
                loaded
                    .run(vec![input], &StopSignal::never())
                    .remove(0)
                    .unwrap()
                    .files[0]
                    .bytes
                    .clone()
            })
            .collect();
        assert_eq!(batched, single);
        let out = image::load_from_memory(&batched[0]).unwrap();
        assert_eq!((out.width(), out.height()), (12, 10));
    }

    #[test]
    fn prepare_bills_output_megapixels_and_refuses_bad_images() {
        let model = EsrganModel::new("meridian/esrgan-x4", 4, std::path::Path::new("unused"));
        let input = model
            .prepare(&json!({"image": png_base64(10, 5, 1)}))
            .unwrap();
        assert!((input.units - 40.0 * 20.0 / 1e6).abs() < 1e-12);
        assert!(matches!(
            model.prepare(&json!({"image": 5})),
            Err(InputError::Field { .. })
        ));
        assert!(matches!(
            model.prepare(&json!({"image": "aGVsbG8="})),
            Err(InputError::Unprocessable(_))
        ));
    }
}
