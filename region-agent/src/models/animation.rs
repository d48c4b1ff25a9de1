//! Short animations in and out of the video models: decoding user-supplied GIF or APNG bytes
//! into composited RGBA frames with their delays, under frame-count and size limits checked
//! before decoding, and encoding frames as APNG or GIF with the same timing. (MP4, WebM and
//! MOV go through ffmpeg: [`super::ffmpeg::video`].)
//!
//! A PNG that is not animated is a one-frame animation.

use std::io::Cursor;

use image::codecs::gif::GifDecoder;
use image::codecs::png::PngDecoder;
use image::{AnimationDecoder, ImageDecoder, RgbaImage};

use super::image_io;
use super::media_scan::{self, ScanError, Shape};

/// Limits on an input animation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AnimationLimits {
    /// Most frames accepted.
    pub max_frames: usize,
    /// Largest accepted width or height, in pixels.
    pub max_side: u32,
    /// Largest accepted width × height of one frame, in pixels.
    pub max_frame_pixels: u64,
    /// Largest accepted width × height × frames, in pixels.
    pub max_total_pixels: u64,
}

impl Default for AnimationLimits {
    /// 120 frames of at most 256 × 256 pixels (512 a side), 1 M pixels in all: at about
    /// 56 µs per input pixel for ×2 on two CPU cores (`tests/largest_inputs.rs`), the
    /// largest input takes one CPU worker about a minute, half the default timeout of a job
    /// (docs/design.md §10 keeps the figures).
    fn default() -> Self {
        Self {
            max_frames: 120,
            max_side: 512,
            max_frame_pixels: 256 * 256,
            max_total_pixels: 1024 * 1024,
        }
    }
}

/// Why an input animation was refused or an output could not be written.
#[derive(Debug, thiserror::Error)]
pub enum AnimationError {
    /// The bytes are neither GIF nor PNG/APNG.
    #[error("input is not a GIF or (A)PNG animation")]
    NotGifOrPng,
    /// The bytes look like GIF or PNG but cannot be decoded.
    #[error("input animation cannot be decoded: {0}")]
    Undecodable(#[source] image::ImageError),
    /// The animation has no pixels or no frames.
    #[error("input animation is empty ({width}x{height}, {frames} frames)")]
    Empty {
        /// Width in pixels.
        width: u32,
        /// Height in pixels.
        height: u32,
        /// Frames decoded.
        frames: usize,
    },
    /// A frame is larger than the limits allow.
    #[error(
        "input animation is {width}x{height}; the limit is {max_side} pixels a side and {max_pixels} pixels a frame"
    )]
    FrameTooLarge {
        /// Width in pixels.
        width: u32,
        /// Height in pixels.
        height: u32,
        /// The side limit.
        max_side: u32,
        /// The per-frame area limit.
        max_pixels: u64,
    },
    /// The animation has more frames than the limit.
    #[error("input animation has more than {max_frames} frames")]
    TooManyFrames {
        /// The limit.
        max_frames: usize,
    },
    /// Frames × pixels is over the limit.
    #[error(
        "input animation has {frames} frames of {width}x{height}; the limit is {max_total_pixels} pixels in all"
    )]
    TooManyPixels {
        /// Frames.
        frames: usize,
        /// Width in pixels.
        width: u32,
        /// Height in pixels.
        height: u32,
        /// The limit.
        max_total_pixels: u64,
    },
    /// Frames of one animation differ in size.
    #[error("animation frames differ in size: {first:?} and {other:?}")]
    MixedFrameSizes {
        /// The first frame's width and height.
        first: (u32, u32),
        /// Another frame's.
        other: (u32, u32),
    },
    /// The container is broken, or a frame reaches outside the canvas.
    #[error("input animation refused: {0}")]
    Structure(#[source] ScanError),
    /// The output could not be encoded.
    #[error("encode APNG: {0}")]
    Encode(#[from] png::EncodingError),
    /// The output could not be encoded as GIF.
    #[error("encode GIF: {0}")]
    EncodeGif(#[source] image::ImageError),
    /// ffmpeg or ffprobe refused the video, failed, or is missing.
    #[error("input video refused: {0}")]
    Ffmpeg(#[from] super::ffmpeg::FfmpegError),
}

/// How long a frame shows: `numer / denom` milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameDelay {
    /// Numerator, in milliseconds.
    pub numer_ms: u32,
    /// Denominator (at least 1).
    pub denom: u32,
}

impl FrameDelay {
    /// A whole number of milliseconds.
    pub fn from_ms(ms: u32) -> Self {
        Self {
            numer_ms: ms,
            denom: 1,
        }
    }

    /// The delay in milliseconds.
    pub fn as_ms(&self) -> f64 {
        f64::from(self.numer_ms) / f64::from(self.denom.max(1))
    }

    /// The delay as APNG's `delay_num / delay_den` seconds, exact when it fits in 16 bits,
    /// else to the nearest millisecond (or centisecond past 65 s).
    fn apng(&self) -> (u16, u16) {
        let (n, d) = (
            u64::from(self.numer_ms),
            u64::from(self.denom.max(1)) * 1000,
        );
        let g = gcd(n, d);
        let (n, d) = (n / g.max(1), d / g.max(1));
        if let (Ok(n), Ok(d)) = (u16::try_from(n), u16::try_from(d)) {
            return (n, d);
        }
        let ms = self.as_ms().round();
        if ms <= f64::from(u16::MAX) {
            (ms as u16, 1000)
        } else {
            ((ms / 10.0).round().min(f64::from(u16::MAX)) as u16, 100)
        }
    }
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 { a } else { gcd(b, a % b) }
}

/// One composited frame.
#[derive(Debug, Clone, PartialEq)]
pub struct Frame {
    /// The whole canvas at this frame.
    pub image: RgbaImage,
    /// How long it shows.
    pub delay: FrameDelay,
}

/// A decoded animation: frames of one size, and how often it plays (0 = forever).
#[derive(Debug, Clone, PartialEq)]
pub struct Animation {
    /// The frames, in order.
    pub frames: Vec<Frame>,
    /// Times to play; 0 loops forever.
    pub plays: u32,
}

impl Animation {
    /// Width and height of the frames.
    pub fn dimensions(&self) -> (u32, u32) {
        self.frames.first().map_or((0, 0), |f| f.image.dimensions())
    }
}

impl AnimationLimits {
    /// Checks a decoded animation: frame size, frame count and total pixels, and that all
    /// frames share one size.
    pub fn check(&self, animation: &Animation) -> Result<(), AnimationError> {
        let (width, height) = animation.dimensions();
        self.check_frame(width, height)?;
        if animation.frames.is_empty() {
            return Err(AnimationError::Empty {
                width,
                height,
                frames: 0,
            });
        }
        if let Some(odd) = animation
            .frames
            .iter()
            .find(|f| f.image.dimensions() != (width, height))
        {
            let (w, h) = odd.image.dimensions();
            return Err(AnimationError::MixedFrameSizes {
                first: (width, height),
                other: (w, h),
            });
        }
        self.check_count(animation.frames.len(), width, height)
    }

    fn check_frame(&self, width: u32, height: u32) -> Result<(), AnimationError> {
        if width == 0 || height == 0 {
            return Err(AnimationError::Empty {
                width,
                height,
                frames: 0,
            });
        }
        if width > self.max_side
            || height > self.max_side
            || u64::from(width) * u64::from(height) > self.max_frame_pixels
        {
            return Err(AnimationError::FrameTooLarge {
                width,
                height,
                max_side: self.max_side,
                max_pixels: self.max_frame_pixels,
            });
        }
        Ok(())
    }

    /// Checks a scanned container: canvas size, frame count and total pixels.
    fn check_shape(&self, shape: &Shape) -> Result<(), AnimationError> {
        self.check_size(shape.width, shape.height, shape.frames)
    }

    /// Checks `frames` frames of `width`×`height` against every limit.
    pub fn check_size(&self, width: u32, height: u32, frames: usize) -> Result<(), AnimationError> {
        self.check_frame(width, height)?;
        self.check_count(frames, width, height)
    }

    /// The most frames of `width`×`height` (both at least 1) the limits allow.
    pub fn frames_allowed(&self, width: u32, height: u32) -> usize {
        let frame = (u64::from(width) * u64::from(height)).max(1);
        let by_pixels = usize::try_from(self.max_total_pixels / frame).unwrap_or(usize::MAX);
        self.max_frames.min(by_pixels)
    }

    fn check_count(&self, frames: usize, width: u32, height: u32) -> Result<(), AnimationError> {
        if frames > self.max_frames {
            return Err(AnimationError::TooManyFrames {
                max_frames: self.max_frames,
            });
        }
        let pixels = (frames as u64)
            .saturating_mul(u64::from(width))
            .saturating_mul(u64::from(height));
        if pixels > self.max_total_pixels {
            return Err(AnimationError::TooManyPixels {
                frames,
                width,
                height,
                max_total_pixels: self.max_total_pixels,
            });
        }
        Ok(())
    }
}

/// Decodes GIF or (A)PNG bytes. Before any pixel is decoded, the container is walked
/// ([`media_scan`]): the canvas, every frame's region (inside the canvas), the frame count
/// and the total pixels are checked against `limits`, and a PNG's unused ancillary chunks
/// (colour profiles, text) are dropped unread. The decoder then runs under `image`'s limits
/// ([`image_io::decoder_limits`]) and the count is checked again as frames are decoded.
pub fn decode_animation(
    bytes: &[u8],
    limits: &AnimationLimits,
) -> Result<Animation, AnimationError> {
    let undecodable = AnimationError::Undecodable;
    let decoder_limits = image_io::decoder_limits(limits.max_side, limits.max_frame_pixels);
    match image::guess_format(bytes) {
        Ok(image::ImageFormat::Gif) => {
            let shape = media_scan::scan_gif(bytes, limits.max_frames)
                .map_err(|e| refused(e, image::ImageFormat::Gif))?;
            limits.check_shape(&shape)?;
            let mut decoder = GifDecoder::new(Cursor::new(bytes)).map_err(undecodable)?;
            decoder.set_limits(decoder_limits).map_err(undecodable)?;
            let frames = collect(decoder.into_frames(), limits, shape.width, shape.height)?;
            // The `image` crate does not expose a GIF's loop count; GIF animations loop.
            Ok(Animation { frames, plays: 0 })
        }
        Ok(image::ImageFormat::Png) => {
            let (shape, kept) = media_scan::scan_png(bytes, limits.max_frames)
                .map_err(|e| refused(e, image::ImageFormat::Png))?;
            limits.check_shape(&shape)?;
            let (w, h) = (shape.width, shape.height);
            let decoder =
                PngDecoder::with_limits(Cursor::new(&kept), decoder_limits).map_err(undecodable)?;
            if decoder.is_apng().map_err(undecodable)? {
                let plays = apng_plays(&kept);
                let frames = collect(
                    decoder.apng().map_err(undecodable)?.into_frames(),
                    limits,
                    w,
                    h,
                )?;
                Ok(Animation { frames, plays })
            } else {
                let image = image::DynamicImage::from_decoder(decoder)
                    .map_err(undecodable)?
                    .to_rgba8();
                Ok(Animation {
                    frames: vec![Frame {
                        image,
                        delay: FrameDelay::from_ms(100),
                    }],
                    plays: 0,
                })
            }
        }
        _ => Err(AnimationError::NotGifOrPng),
    }
}

fn refused(error: ScanError, format: image::ImageFormat) -> AnimationError {
    match error.into_decoding_error(format) {
        Ok(broken) => AnimationError::Undecodable(broken),
        Err(ScanError::TooManyFrames { max_frames }) => {
            AnimationError::TooManyFrames { max_frames }
        }
        Err(other) => AnimationError::Structure(other),
    }
}

fn collect(
    frames: image::Frames<'_>,
    limits: &AnimationLimits,
    width: u32,
    height: u32,
) -> Result<Vec<Frame>, AnimationError> {
    let mut out = Vec::new();
    for frame in frames {
        let frame = frame.map_err(AnimationError::Undecodable)?;
        limits.check_count(out.len() + 1, width, height)?;
        let (numer_ms, denom) = frame.delay().numer_denom_ms();
        out.push(Frame {
            image: frame.into_buffer(),
            delay: FrameDelay { numer_ms, denom },
        });
    }
    if out.is_empty() {
        return Err(AnimationError::Empty {
            width,
            height,
            frames: 0,
        });
    }
    Ok(out)
}

/// The `num_plays` of an APNG's `acTL` chunk (0 when absent or unreadable).
fn apng_plays(bytes: &[u8]) -> u32 {
    let decoder = png::Decoder::new(Cursor::new(bytes));
    decoder
        .read_info()
        .ok()
        .and_then(|r| r.info().animation_control.map(|a| a.num_plays))
        .unwrap_or(0)
}

/// Encodes frames (all of one size) as an 8-bit RGBA APNG with their delays.
pub fn encode_apng(animation: &Animation) -> Result<Vec<u8>, AnimationError> {
    let (width, height) = animation.dimensions();
    let count = animation.frames.len();
    if count == 0 || width == 0 || height == 0 {
        return Err(AnimationError::Empty {
            width,
            height,
            frames: count,
        });
    }
    let mut out = Vec::new();
    {
        let mut encoder = png::Encoder::new(&mut out, width, height);
        encoder.set_color(png::ColorType::Rgba);
        encoder.set_depth(png::BitDepth::Eight);
        let frames = u32::try_from(count).map_err(|_| png::EncodingError::LimitsExceeded)?;
        encoder.set_animated(frames, animation.plays)?;
        let mut writer = encoder.write_header()?;
        for frame in &animation.frames {
            let (num, den) = frame.delay.apng();
            writer.set_frame_delay(num, den)?;
            writer.write_image_data(frame.image.as_raw())?;
        }
        writer.finish()?;
    }
    Ok(out)
}

/// Encodes frames (all of one size) as a GIF with their delays (in GIF's centiseconds),
/// looping as `plays` says; colours are reduced to a palette of 256 per frame and alpha to
/// on or off.
pub fn encode_gif(animation: &Animation) -> Result<Vec<u8>, AnimationError> {
    use image::codecs::gif::{GifEncoder, Repeat};
    let (width, height) = animation.dimensions();
    if animation.frames.is_empty() || width == 0 || height == 0 {
        return Err(AnimationError::Empty {
            width,
            height,
            frames: animation.frames.len(),
        });
    }
    let mut out = Vec::new();
    {
        // Speed 10 of 30: the palette search's default quality at a tenth of its cost.
        let mut encoder = GifEncoder::new_with_speed(&mut out, 10);
        let repeat = match u16::try_from(animation.plays) {
            Ok(0) | Err(_) => Repeat::Infinite,
            Ok(plays) => Repeat::Finite(plays.saturating_sub(1)),
        };
        encoder
            .set_repeat(repeat)
            .map_err(AnimationError::EncodeGif)?;
        for frame in &animation.frames {
            let delay = image::Delay::from_numer_denom_ms(frame.delay.numer_ms, frame.delay.denom);
            encoder
                .encode_frame(image::Frame::from_parts(frame.image.clone(), 0, 0, delay))
                .map_err(AnimationError::EncodeGif)?;
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use image::codecs::gif::GifEncoder;

    use super::*;

    fn frames(n: usize, w: u32, h: u32) -> Vec<Frame> {
        (0..n)
            .map(|i| Frame {
                image: RgbaImage::from_fn(w, h, |x, y| {
                    image::Rgba([(x * 20) as u8, (y * 20) as u8, (i * 40) as u8, 255])
                }),
                delay: FrameDelay::from_ms(40 + 10 * i as u32),
            })
            .collect()
    }

    #[test]
    fn apng_round_trips_frames_delays_and_plays() {
        let animation = Animation {
            frames: frames(3, 6, 4),
            plays: 2,
        };
        let bytes = encode_apng(&animation).unwrap();
        let decoded = decode_animation(&bytes, &AnimationLimits::default()).unwrap();
        assert_eq!(decoded.plays, 2);
        assert_eq!(decoded.frames.len(), 3);
        for (a, b) in animation.frames.iter().zip(&decoded.frames) {
            assert_eq!(a.image, b.image);
            assert_eq!(a.delay.as_ms(), b.delay.as_ms());
        }
    }

    #[test]
    fn gif_decodes_with_its_delays() {
        let mut bytes = Vec::new();
        {
            let mut enc = GifEncoder::new(&mut bytes);
            for f in frames(2, 5, 5) {
                let delay = image::Delay::from_numer_denom_ms(f.delay.numer_ms, f.delay.denom);
                enc.encode_frame(image::Frame::from_parts(f.image, 0, 0, delay))
                    .unwrap();
            }
        }
        let decoded = decode_animation(&bytes, &AnimationLimits::default()).unwrap();
        assert_eq!(decoded.frames.len(), 2);
        assert_eq!(decoded.dimensions(), (5, 5));
        assert_eq!(decoded.frames[0].delay.as_ms(), 40.0);
        assert_eq!(decoded.frames[1].delay.as_ms(), 50.0);
    }

    #[test]
    fn limits_and_garbage_are_refused() {
        let bytes = encode_apng(&Animation {
            frames: frames(4, 8, 8),
            plays: 0,
        })
        .unwrap();
        let limits = AnimationLimits::default();
        let few = AnimationLimits {
            max_frames: 3,
            ..limits
        };
        assert!(matches!(
            decode_animation(&bytes, &few),
            Err(AnimationError::TooManyFrames { max_frames: 3 })
        ));
        let small = AnimationLimits {
            max_side: 7,
            ..limits
        };
        assert!(matches!(
            decode_animation(&bytes, &small),
            Err(AnimationError::FrameTooLarge { width: 8, .. })
        ));
        let total = AnimationLimits {
            max_total_pixels: 200,
            ..limits
        };
        assert!(matches!(
            decode_animation(&bytes, &total),
            Err(AnimationError::TooManyPixels { frames: 4, .. })
        ));
        assert!(matches!(
            decode_animation(b"hello", &limits),
            Err(AnimationError::NotGifOrPng)
        ));
        assert!(matches!(
            decode_animation(&bytes[..bytes.len() / 2], &limits),
            Err(AnimationError::Undecodable(_))
        ));
    }

    #[test]
    fn gif_round_trips_frames_and_delays() {
        let animation = Animation {
            frames: frames(3, 6, 4),
            plays: 0,
        };
        let bytes = encode_gif(&animation).unwrap();
        assert_eq!(
            image::guess_format(&bytes).unwrap(),
            image::ImageFormat::Gif
        );
        let decoded = decode_animation(&bytes, &AnimationLimits::default()).unwrap();
        assert_eq!(decoded.frames.len(), 3);
        assert_eq!(decoded.dimensions(), (6, 4));
        for (a, b) in animation.frames.iter().zip(&decoded.frames) {
            assert_eq!(a.delay.as_ms(), b.delay.as_ms());
        }
    }

    #[test]
    fn frames_allowed_is_the_tighter_of_the_frame_and_pixel_limits() {
        let limits = AnimationLimits::default();
        assert_eq!(limits.frames_allowed(16, 16), 120);
        assert_eq!(limits.frames_allowed(256, 256), 16);
        assert!(limits.check_size(256, 256, 16).is_ok());
        assert!(matches!(
            limits.check_size(256, 256, 17),
            Err(AnimationError::TooManyPixels { frames: 17, .. })
        ));
    }

    #[test]
    fn delays_that_do_not_fit_16_bits_are_rounded() {
        assert_eq!(FrameDelay::from_ms(40).apng(), (1, 25));
        assert_eq!(
            FrameDelay {
                numer_ms: 100,
                denom: 3
            }
            .apng(),
            (1, 30)
        );
        assert_eq!(
            FrameDelay {
                numer_ms: 70_001,
                denom: 70_000
            }
            .apng(),
            (1, 1000)
        );
    }
}
