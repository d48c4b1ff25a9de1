//! Image input and output for the image models: decoding user-supplied PNG/JPEG bytes under
//! size limits, and moving RGB pixels in and out of candle tensors.
//!
//! The limits hold before anything is allocated: a PNG's chunks are walked first
//! ([`media_scan::scan_png`]) and its colour profile, text and other ancillary chunks are
//! dropped unread (never inflated); the canvas is checked against [`InputLimits`]; then the
//! decoder runs under `image`'s own limits (width, height and an allocation budget,
//! [`decoder_limits`]).

use std::io::Cursor;

use candle_core::{DType, Device, Tensor};
use image::codecs::jpeg::JpegDecoder;
use image::codecs::png::PngDecoder;
use image::{DynamicImage, ImageDecoder, ImageFormat, RgbImage};

use super::media_scan::{self, ScanError};

/// Bytes a decoder may hold at once beyond 16 bytes per pixel of the largest accepted
/// image (16-bit RGBA output plus a copy), for its own buffers.
const DECODER_SLACK_BYTES: u64 = 16 << 20;

/// `image`'s limits for a decoder of images up to `max_side` a side and `max_pixels` in
/// all: the same sides, and 16 bytes a pixel plus [`DECODER_SLACK_BYTES`] of allocations.
pub fn decoder_limits(max_side: u32, max_pixels: u64) -> image::Limits {
    let mut limits = image::Limits::default();
    limits.max_image_width = Some(max_side);
    limits.max_image_height = Some(max_side);
    limits.max_alloc = Some(
        max_pixels
            .saturating_mul(16)
            .saturating_add(DECODER_SLACK_BYTES),
    );
    limits
}

/// Size limits on an input image, checked before the pixels are decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InputLimits {
    /// Largest accepted width or height, in pixels.
    pub max_side: u32,
    /// Largest accepted width × height, in pixels.
    pub max_pixels: u64,
}

impl Default for InputLimits {
    /// 1024 pixels a side and 512 × 512 pixels in all, for decoding where no model sets
    /// limits (the ESRGAN models take theirs from their output limit, [`Self::for_output`]).
    fn default() -> Self {
        Self {
            max_side: 1024,
            max_pixels: 512 * 512,
        }
    }
}

/// Why an input image was refused.
#[derive(Debug, thiserror::Error)]
pub enum ImageInputError {
    /// The bytes are neither PNG nor JPEG.
    #[error("input is not a PNG or JPEG image")]
    NotPngOrJpeg,
    /// The bytes look like PNG or JPEG but cannot be decoded.
    #[error("input image cannot be decoded: {0}")]
    Undecodable(#[source] image::ImageError),
    /// A PNG frame region reaches outside the canvas.
    #[error("input image refused: {0}")]
    Structure(#[source] ScanError),
    /// The image has no pixels.
    #[error("input image is empty ({width}x{height})")]
    Empty {
        /// Width in pixels.
        width: u32,
        /// Height in pixels.
        height: u32,
    },
    /// The image is larger than the limits allow.
    #[error(
        "input image is {width}x{height}; the limit is {max_side} pixels a side and {max_pixels} pixels in all"
    )]
    TooLarge {
        /// Width in pixels.
        width: u32,
        /// Height in pixels.
        height: u32,
        /// The side limit.
        max_side: u32,
        /// The area limit.
        max_pixels: u64,
    },
}

impl InputLimits {
    /// The limits of a model that scales by `scale` and may produce at most
    /// `max_output_pixels`: `max_output_pixels / scale²` pixels in all and four times the side
    /// of that square a side (long strips are fine; a decoder's allocations follow the area).
    pub fn for_output(max_output_pixels: u64, scale: u32) -> Self {
        let scale = u64::from(scale.max(1));
        let max_pixels = max_output_pixels / (scale * scale);
        let square_side = max_pixels.isqrt();
        Self {
            max_side: u32::try_from(square_side.saturating_mul(4)).unwrap_or(u32::MAX),
            max_pixels,
        }
    }

    /// Checks `width × height` against the limits.
    pub fn check(&self, width: u32, height: u32) -> Result<(), ImageInputError> {
        if width == 0 || height == 0 {
            return Err(ImageInputError::Empty { width, height });
        }
        if width > self.max_side
            || height > self.max_side
            || u64::from(width) * u64::from(height) > self.max_pixels
        {
            return Err(ImageInputError::TooLarge {
                width,
                height,
                max_side: self.max_side,
                max_pixels: self.max_pixels,
            });
        }
        Ok(())
    }
}

/// Decodes PNG or JPEG bytes to RGB, checking the dimensions against `limits` before the
/// pixels are decoded. Alpha is dropped.
pub fn decode_rgb(bytes: &[u8], limits: &InputLimits) -> Result<RgbImage, ImageInputError> {
    let format = image::guess_format(bytes).ok();
    let decoder_limits = decoder_limits(limits.max_side, limits.max_pixels);
    let undecodable = ImageInputError::Undecodable;
    let image = match format {
        Some(ImageFormat::Png) => {
            let (shape, kept) = media_scan::scan_png(bytes, usize::MAX).map_err(|e| {
                match e.into_decoding_error(ImageFormat::Png) {
                    Ok(broken) => ImageInputError::Undecodable(broken),
                    Err(refused) => ImageInputError::Structure(refused),
                }
            })?;
            limits.check(shape.width, shape.height)?;
            let decoder =
                PngDecoder::with_limits(Cursor::new(kept), decoder_limits).map_err(undecodable)?;
            DynamicImage::from_decoder(decoder).map_err(undecodable)?
        }
        Some(ImageFormat::Jpeg) => {
            let mut decoder = JpegDecoder::new(Cursor::new(bytes)).map_err(undecodable)?;
            let (width, height) = decoder.dimensions();
            limits.check(width, height)?;
            decoder.set_limits(decoder_limits).map_err(undecodable)?;
            DynamicImage::from_decoder(decoder).map_err(undecodable)?
        }
        _ => return Err(ImageInputError::NotPngOrJpeg),
    };
    Ok(image.to_rgb8())
}

/// RGB pixels → `[1, 3, h, w]` `f32` tensor with values in `[0, 255]`.
pub fn rgb_to_tensor(image: &RgbImage, device: &Device) -> candle_core::Result<Tensor> {
    let (w, h) = (image.width() as usize, image.height() as usize);
    let hwc = Tensor::from_vec(image.as_raw().clone(), (h, w, 3), device)?;
    hwc.permute((2, 0, 1))?
        .to_dtype(DType::F32)?
        .unsqueeze(0)?
        .contiguous()
}

/// `[1, 3, h, w]` tensor with values in about `[0, 255]` → RGB pixels (clamped and rounded).
pub fn tensor_to_rgb(tensor: &Tensor) -> candle_core::Result<RgbImage> {
    let (_, c, h, w) = tensor.dims4()?;
    if c != 3 {
        candle_core::bail!("expected 3 channels, got {c}");
    }
    let pixels: Vec<u8> = tensor
        .squeeze(0)?
        .clamp(0.0_f32, 255.0_f32)?
        .round()?
        .permute((1, 2, 0))?
        .to_dtype(DType::U8)?
        .flatten_all()?
        .to_vec1()?;
    RgbImage::from_raw(w as u32, h as u32, pixels)
        .ok_or_else(|| candle_core::Error::Msg("pixel buffer does not match the image size".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn png(width: u32, height: u32) -> Vec<u8> {
        let img = RgbImage::from_fn(width, height, |x, y| image::Rgb([x as u8, y as u8, 7]));
        let mut out = Vec::new();
        img.write_to(&mut Cursor::new(&mut out), ImageFormat::Png)
            .unwrap();
        out
    }

    #[test]
    fn decoder_limits_saturate_for_unbounded_inputs() {
        let limits = decoder_limits(u32::MAX, u64::MAX);
        assert_eq!(limits.max_alloc, Some(u64::MAX));
        assert_eq!(
            decoder_limits(512, 512 * 512).max_alloc,
            Some(16 * 512 * 512 + DECODER_SLACK_BYTES)
        );
    }

    #[test]
    fn limits_for_an_output_size_divide_it_by_the_scale_squared() {
        let x4 = InputLimits::for_output(4096 * 4096, 4);
        assert_eq!((x4.max_pixels, x4.max_side), (1024 * 1024, 4096));
        assert!(x4.check(1024, 1024).is_ok());
        assert!(x4.check(4096, 256).is_ok());
        assert!(x4.check(1025, 1024).is_err());
        assert!(x4.check(4097, 1).is_err());
        let x2 = InputLimits::for_output(4096 * 4096, 2);
        assert_eq!(x2.max_pixels, 2048 * 2048);
        assert_eq!(InputLimits::for_output(u64::MAX, 1).max_side, u32::MAX);
    }

    #[test]
    fn decodes_png_and_round_trips_through_a_tensor() {
        let img = decode_rgb(&png(5, 3), &InputLimits::default()).unwrap();
        assert_eq!(img.dimensions(), (5, 3));
        let t = rgb_to_tensor(&img, &Device::Cpu).unwrap();
        assert_eq!(t.dims(), &[1, 3, 3, 5]);
        assert_eq!(tensor_to_rgb(&t).unwrap(), img);
    }

    #[test]
    fn refuses_garbage_oversize_and_other_formats() {
        let limits = InputLimits {
            max_side: 8,
            max_pixels: 40,
        };
        assert!(matches!(
            decode_rgb(b"not an image at all", &limits),
            Err(ImageInputError::NotPngOrJpeg)
        ));
        assert!(matches!(
            decode_rgb(&png(9, 2), &limits),
            Err(ImageInputError::TooLarge { width: 9, .. })
        ));
        assert!(matches!(
            decode_rgb(&png(7, 7), &limits),
            Err(ImageInputError::TooLarge { height: 7, .. })
        ));
        // A truncated PNG has valid dimensions but undecodable pixels.
        let bytes = png(4, 4);
        assert!(matches!(
            decode_rgb(&bytes[..bytes.len() - 20], &limits),
            Err(ImageInputError::Undecodable(_))
        ));
    }
}
