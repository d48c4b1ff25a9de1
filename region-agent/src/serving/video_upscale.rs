//! Video upscaling ×2 (`meridian/video-upscale-x2`) served through [`Model`]: ESRGAN-slim ×2
//! frame by frame over a short video or animation.
//!
//! Input `{"video": "<base64 video, or a data: URL>"}`: MP4 or MOV (H.264, HEVC, MPEG-4,
//! AV1), WebM or MKV (VP8, VP9, AV1) through ffmpeg ([`ffmpeg::video`]), or a GIF or APNG
//! through the pure-Rust decoders ([`animation`]). Output `{"video": {file}}` at twice the
//! width and height with the same frame count: MP4 (H.264, yuv420p, `video/mp4`) at the
//! input's frame rate for a video; a GIF (`image/gif`) for a GIF and an APNG (`image/apng`)
//! for an APNG, with the same delays. Units: output megapixels over all frames, 2·width ×
//! 2·height × frames / 10⁶ (the work grows with the pixels, not the frame count alone;
//! megapixels are output megapixels, as for ESRGAN). The input is probed, checked against
//! [`AnimationLimits`] and decoded in [`Model::prepare`], so input over the limits is
//! refused with 422.
//!
//! Batching happens inside a job: the frames of one animation go through the network
//! [`VideoUpscaler::frames_per_batch`] at a time. Jobs are not stacked together (their frame
//! sizes and counts differ), so `max_batch = 1` (the default) is the setting to use; with
//! more, jobs in a batch run one after another.

use std::path::{Path, PathBuf};

use candle_core::Device;
use policy::PricingUnit;
use serde_json::Value;

use super::{
    InputError, JobInput, LoadedModel, Model, ModelError, ModelOutput, OutputFile, StopSignal,
    decode_base64, string_field,
};
use crate::models::animation::{self, Animation, AnimationError, AnimationLimits};
use crate::models::ffmpeg::{self, Ffmpeg, video};
use crate::models::video_upscale::VideoUpscaler;

/// The upscaling factor.
const SCALE: usize = 2;

/// Video upscaling ×2, its weights ESRGAN-slim's `<weights_dir>/x2.safetensors`.
#[derive(Debug, Clone)]
pub struct VideoUpscaleModel {
    id: String,
    weights: PathBuf,
    limits: AnimationLimits,
    ffmpeg: Ffmpeg,
}

/// The container a job's output is written in: the input's kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Container {
    Apng,
    Gif,
    /// MP4 at this frame rate, `numerator / denominator`.
    Mp4((u32, u32)),
}

/// A decoded job: the frames and the container to write them in.
struct VideoJob {
    frames: Animation,
    container: Container,
}

impl VideoUpscaleModel {
    /// The model `id`, weights from `weights_dir` (the `esrgan-slim` directory that
    /// `scripts/fetch-models` writes). Logs a warning when ffmpeg is missing (only GIF and
    /// APNG are then read).
    pub fn new(id: &str, weights_dir: &Path) -> Self {
        ffmpeg::warn_if_missing(id);
        Self {
            id: id.to_owned(),
            weights: weights_dir.join(format!("x{SCALE}.safetensors")),
            limits: AnimationLimits::default(),
            ffmpeg: Ffmpeg::default(),
        }
    }

    /// Replaces how ffmpeg is run (default: [`Ffmpeg::default`]).
    pub fn with_ffmpeg(mut self, ffmpeg: Ffmpeg) -> Self {
        self.ffmpeg = ffmpeg;
        self
    }

    /// Decodes GIF and APNG in Rust and everything else through ffmpeg, checking the limits.
    fn decode(&self, bytes: &[u8]) -> Result<VideoJob, AnimationError> {
        let container = match image::guess_format(bytes) {
            Ok(image::ImageFormat::Gif) => Container::Gif,
            Ok(image::ImageFormat::Png) => Container::Apng,
            _ => {
                let video = video::decode_video(&self.ffmpeg, bytes, &self.limits)?;
                self.limits.check(&video.animation)?;
                return Ok(VideoJob {
                    frames: video.animation,
                    container: Container::Mp4(video.frame_rate),
                });
            }
        };
        let frames = animation::decode_animation(bytes, &self.limits)?;
        self.limits.check(&frames)?;
        Ok(VideoJob { frames, container })
    }

    /// The weights file this model loads.
    pub fn weights(&self) -> &Path {
        &self.weights
    }
}

impl Model for VideoUpscaleModel {
    fn id(&self) -> &str {
        &self.id
    }

    fn unit(&self) -> PricingUnit {
        PricingUnit::Megapixel
    }

    fn prepare(&self, input: &Value) -> Result<JobInput, InputError> {
        let text = string_field(input, "video")?;
        let bytes = decode_base64("video", text)?;
        let job = self
            .decode(&bytes)
            .map_err(|e| InputError::Unprocessable(format!("input.video: {e}")))?;
        let (w, h) = job.frames.dimensions();
        let scale = SCALE as f64;
        let frames = job.frames.frames.len() as f64;
        let out_pixels = f64::from(w) * f64::from(h) * scale * scale * frames;
        Ok(JobInput {
            units: out_pixels / 1e6,
            batch_key: format!("{w}x{h}"),
            payload: Box::new(job),
        })
    }

    fn load(&self, device: &Device) -> Result<Box<dyn LoadedModel>, ModelError> {
        let upscaler = VideoUpscaler::load(&self.weights, device)
            .map_err(|e| ModelError(e.to_string()))?
            .with_limits(self.limits);
        if upscaler.scale() != SCALE {
            return Err(ModelError(format!(
                "{} upscales ×{}, expected ×{SCALE}",
                self.weights.display(),
                upscaler.scale()
            )));
        }
        Ok(Box::new(LoadedVideoUpscale {
            upscaler,
            ffmpeg: self.ffmpeg.clone(),
        }))
    }
}

struct LoadedVideoUpscale {
    upscaler: VideoUpscaler,
    ffmpeg: Ffmpeg,
}

impl LoadedVideoUpscale {
    fn upscale(&self, job: JobInput, stop: &StopSignal) -> Result<ModelOutput, ModelError> {
        let job = job
            .payload
            .downcast::<VideoJob>()
            .map_err(|_| ModelError("input of the wrong type for video upscaling".to_owned()))?;
        let output = self
            .upscaler
            .upscale_until(&job.frames, stop)
            .map_err(|e| ModelError(e.to_string()))?;
        let failed = |e: &dyn std::fmt::Display| ModelError(e.to_string());
        let (name, content_type, bytes) = match job.container {
            Container::Apng => (
                "video.apng",
                "image/apng",
                animation::encode_apng(&output).map_err(|e| failed(&e))?,
            ),
            Container::Gif => (
                "video.gif",
                "image/gif",
                animation::encode_gif(&output).map_err(|e| failed(&e))?,
            ),
            Container::Mp4(rate) => (
                "video.mp4",
                "video/mp4",
                video::encode_mp4(&self.ffmpeg, &output, rate).map_err(|e| failed(&e))?,
            ),
        };
        Ok(ModelOutput {
            fields: serde_json::Map::new(),
            files: vec![OutputFile {
                field: "video".to_owned(),
                name: name.to_owned(),
                content_type: content_type.to_owned(),
                bytes,
            }],
        })
    }
}

impl LoadedModel for LoadedVideoUpscale {
    fn run(
        &mut self,
        batch: Vec<JobInput>,
        stop: &StopSignal,
    ) -> Vec<Result<ModelOutput, ModelError>> {
        batch
            .into_iter()
            .map(|job| self.upscale(job, stop))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use base64::Engine as _;
    use image::RgbaImage;
    use serde_json::json;

    use super::*;
    use crate::models::animation::{Frame, FrameDelay};

    fn apng_base64(width: u32, height: u32, frames: usize) -> String {
        let video = Animation {
            frames: (0..frames)
                .map(|i| Frame {
                    image: RgbaImage::from_fn(width, height, |x, y| {
                        image::Rgba([x as u8, y as u8, i as u8, 255])
                    }),
                    delay: FrameDelay::from_ms(40),
                })
                .collect(),
            plays: 0,
        };
        base64::engine::general_purpose::STANDARD.encode(animation::encode_apng(&video).unwrap())
    }

    #[test]
    fn prepare_bills_output_megapixels_and_refuses_what_is_over_the_limits() {
        let model = VideoUpscaleModel::new("meridian/video-upscale-x2", Path::new("unused"));
        let input = model
            .prepare(&json!({"video": apng_base64(10, 8, 3)}))
            .unwrap();
        assert!((input.units - 20.0 * 16.0 * 3.0 / 1e6).abs() < 1e-12);
        assert_eq!(input.batch_key, "10x8");
        let Err(InputError::Unprocessable(message)) =
            model.prepare(&json!({"video": apng_base64(2, 2, 121)}))
        else {
            panic!("121 frames were accepted");
        };
        assert!(message.contains("120 frames"), "{message}");
        assert!(matches!(
            model.prepare(&json!({"video": "aGVsbG8="})),
            Err(InputError::Unprocessable(_))
        ));
        assert!(matches!(
            model.prepare(&json!({"video": 3})),
            Err(InputError::Field { .. })
        ));
    }
}
