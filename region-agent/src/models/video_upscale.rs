//! Video upscaling ×2: ESRGAN-slim ×2 frame by frame over a short animation (GIF or APNG in,
//! APNG out with the same frame timing and loop count).
//!
//! The colour of each frame goes through the network; its alpha channel, which the network
//! does not model, is scaled with bilinear filtering. Frames share one size, so they run
//! through the network in batches of [`VideoUpscaler::frames_per_batch`].

use std::path::Path;

use candle_core::{Device, Module, Tensor};
use image::imageops::{FilterType, resize};
use image::{GrayImage, RgbImage, RgbaImage};

use super::animation::{self, Animation, AnimationError, AnimationLimits, Frame};
use super::esrgan::{self, Esrgan};
use super::image_io;
use super::stop::{StopSignal, Stopped};

/// Why an animation could not be upscaled.
#[derive(Debug, thiserror::Error)]
pub enum VideoUpscaleError {
    /// The input was refused (undecodable, over the limits) or the output not encoded.
    #[error(transparent)]
    Animation(#[from] AnimationError),
    /// The network failed to run.
    #[error("run ESRGAN-slim on a frame: {0}")]
    Inference(#[from] candle_core::Error),
    /// The job was stopped (timeout or cancellation) between two batches of frames.
    #[error(transparent)]
    Stopped(#[from] Stopped),
}

/// ESRGAN-slim ×2 applied to every frame of an animation.
#[derive(Debug, Clone)]
pub struct VideoUpscaler {
    model: Esrgan,
    limits: AnimationLimits,
    frames_per_batch: usize,
}

impl VideoUpscaler {
    /// Loads the ×2 ESRGAN-slim weights (`esrgan-slim/x2.safetensors`).
    pub fn load(path: &Path, device: &Device) -> Result<Self, esrgan::LoadError> {
        Ok(Self::new(Esrgan::load(path, device)?))
    }

    /// Wraps an ESRGAN-slim model (any scale; the output is that many times larger).
    pub fn new(model: Esrgan) -> Self {
        Self {
            model,
            limits: AnimationLimits::default(),
            frames_per_batch: 4,
        }
    }

    /// Replaces the input limits (default: [`AnimationLimits::default`]).
    pub fn with_limits(mut self, limits: AnimationLimits) -> Self {
        self.limits = limits;
        self
    }

    /// Sets how many frames run through the network at once (at least 1; default 4).
    pub fn with_frames_per_batch(mut self, frames: usize) -> Self {
        self.frames_per_batch = frames.max(1);
        self
    }

    /// Frames per network call.
    pub fn frames_per_batch(&self) -> usize {
        self.frames_per_batch
    }

    /// The upscaling factor.
    pub fn scale(&self) -> usize {
        self.model.scale()
    }

    /// Upscales every frame; delays and loop count are kept. The animation is checked
    /// against the limits first (frames of one size, within the frame and pixel limits).
    pub fn upscale(&self, input: &Animation) -> Result<Animation, VideoUpscaleError> {
        self.upscale_until(input, &StopSignal::never())
    }

    /// [`Self::upscale`], checking `stop` before every batch of
    /// [`Self::frames_per_batch`] frames: a stopped job returns
    /// [`VideoUpscaleError::Stopped`] having run at most one more batch.
    pub fn upscale_until(
        &self,
        input: &Animation,
        stop: &StopSignal,
    ) -> Result<Animation, VideoUpscaleError> {
        self.limits.check(input)?;
        let (w, h) = input.dimensions();
        let scale = self.scale() as u32;
        let mut frames = Vec::with_capacity(input.frames.len());
        for chunk in input.frames.chunks(self.frames_per_batch) {
            stop.check()?;
            let rgb: Vec<RgbImage> = chunk
                .iter()
                .map(|f| image::DynamicImage::ImageRgba8(f.image.clone()).to_rgb8())
                .collect();
            for (frame, colour) in chunk.iter().zip(self.upscale_rgb_batch(&rgb)?) {
                let alpha = alpha_channel(&frame.image);
                let alpha = resize(&alpha, w * scale, h * scale, FilterType::Triangle);
                frames.push(Frame {
                    image: with_alpha(&colour, &alpha),
                    delay: frame.delay,
                });
            }
        }
        Ok(Animation {
            frames,
            plays: input.plays,
        })
    }

    /// Decodes GIF or APNG bytes, upscales them and encodes the result as APNG.
    pub fn upscale_encoded(&self, bytes: &[u8]) -> Result<Vec<u8>, VideoUpscaleError> {
        let input = animation::decode_animation(bytes, &self.limits)?;
        let output = self.upscale(&input)?;
        Ok(animation::encode_apng(&output)?)
    }

    /// Runs same-sized RGB frames through the network as one batch.
    fn upscale_rgb_batch(&self, frames: &[RgbImage]) -> candle_core::Result<Vec<RgbImage>> {
        let device = self.model.device();
        let tensors = frames
            .iter()
            .map(|f| image_io::rgb_to_tensor(f, device))
            .collect::<candle_core::Result<Vec<_>>>()?;
        let output = self.model.network().forward(&Tensor::cat(&tensors, 0)?)?;
        (0..frames.len())
            .map(|i| image_io::tensor_to_rgb(&output.narrow(0, i, 1)?))
            .collect()
    }
}

fn alpha_channel(image: &RgbaImage) -> GrayImage {
    GrayImage::from_fn(image.width(), image.height(), |x, y| {
        image::Luma([image.get_pixel(x, y)[3]])
    })
}

fn with_alpha(colour: &RgbImage, alpha: &GrayImage) -> RgbaImage {
    RgbaImage::from_fn(colour.width(), colour.height(), |x, y| {
        let [r, g, b] = colour.get_pixel(x, y).0;
        image::Rgba([r, g, b, alpha.get_pixel(x, y)[0]])
    })
}

#[cfg(test)]
mod tests {
    use candle_core::DType;
    use candle_nn::{VarBuilder, VarMap};

    use super::*;
    use crate::models::animation::FrameDelay;
    use crate::models::esrgan::network::RdnConfig;

    /// ESRGAN's topology at a tiny width with random weights: a pipeline test model only.
    fn random_upscaler() -> VideoUpscaler {
        let cfg = RdnConfig {
            features: 8,
            growth: 2,
            upsample_features: [8, 4, 12],
            ..RdnConfig::slim(2)
        };
        let varmap = VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
        VideoUpscaler::new(Esrgan::from_var_builder(cfg, vb).unwrap())
    }

    fn animation(n: usize) -> Animation {
        Animation {
            frames: (0..n)
                .map(|i| Frame {
                    image: RgbaImage::from_fn(6, 5, |x, y| {
                        image::Rgba([(x * 30) as u8, (y * 40) as u8, (i * 50) as u8, 200])
                    }),
                    delay: FrameDelay::from_ms(30 * (i as u32 + 1)),
                })
                .collect(),
            plays: 3,
        }
    }

    #[test]
    fn a_cancelled_or_late_job_stops_before_its_next_batch_of_frames() {
        let up = random_upscaler().with_frames_per_batch(1);
        // Cancelled at the third safe point: two frames were upscaled, not the other 38.
        let stop = StopSignal::never().with_hook(std::sync::Arc::new(|stop, n| {
            if n == 3 {
                stop.cancel();
            }
        }));
        let result = up.upscale_until(&animation(40), &stop);
        assert!(
            matches!(result, Err(VideoUpscaleError::Stopped(Stopped::Cancelled))),
            "{result:?}"
        );
        assert_eq!(stop.safe_points(), 3);
        let late = StopSignal::until(std::time::Instant::now());
        let result = up.upscale_until(&animation(40), &late);
        assert!(
            matches!(result, Err(VideoUpscaleError::Stopped(Stopped::TimedOut))),
            "{result:?}"
        );
        assert_eq!(late.safe_points(), 1);
    }

    #[test]
    fn keeps_frames_timing_and_alpha_and_doubles_the_size() {
        let up = random_upscaler().with_frames_per_batch(2);
        let out = up.upscale(&animation(5)).unwrap();
        assert_eq!(out.frames.len(), 5);
        assert_eq!(out.plays, 3);
        assert_eq!(out.dimensions(), (12, 10));
        for (i, f) in out.frames.iter().enumerate() {
            assert_eq!(f.delay, FrameDelay::from_ms(30 * (i as u32 + 1)));
            assert!(f.image.pixels().all(|p| p[3] == 200));
        }
    }

    #[test]
    fn batch_size_does_not_change_the_frames() {
        let input = animation(3);
        let one = random_upscaler().with_frames_per_batch(1);
        let three = one.clone().with_frames_per_batch(3);
        assert_eq!(one.upscale(&input).unwrap(), three.upscale(&input).unwrap());
    }

    #[test]
    fn encoded_input_over_the_limits_is_refused() {
        let bytes = animation::encode_apng(&animation(4)).unwrap();
        let up = random_upscaler().with_limits(AnimationLimits {
            max_frames: 2,
            ..AnimationLimits::default()
        });
        let err = up.upscale_encoded(&bytes).unwrap_err();
        assert!(
            matches!(
                err,
                VideoUpscaleError::Animation(AnimationError::TooManyFrames { max_frames: 2 })
            ),
            "{err}"
        );
        assert!(matches!(
            up.upscale_encoded(b"GIF89a garbage"),
            Err(VideoUpscaleError::Animation(AnimationError::Undecodable(_)))
        ));
        let mut mixed = animation(2);
        mixed.frames[1].image = RgbaImage::new(3, 3);
        assert!(matches!(
            random_upscaler().upscale(&mixed),
            Err(VideoUpscaleError::Animation(
                AnimationError::MixedFrameSizes { .. }
            ))
        ));
    }
}
