//! Reads the structure of PNG and GIF inputs — chunks, frame descriptors — without decoding
//! or inflating anything, so that sizes can be checked before the decoders allocate.
//!
//! - PNG: every chunk is walked by its length; the ancillary chunks the models do not use
//!   (colour profiles, text, EXIF, …) are dropped unread, so a compressed colour profile or
//!   text chunk is never inflated, and together they may carry at most
//!   [`MAX_METADATA_BYTES`]. What is left (`IHDR`, `PLTE`, `tRNS`, `IDAT`, `acTL`,
//!   `fcTL`, `fdAT`, `IEND` and any critical chunk, which the decoder then refuses) goes to
//!   the decoder. Every APNG frame region (`fcTL`) must lie inside the canvas.
//! - GIF: every block is walked; every frame descriptor must lie inside the logical screen;
//!   comment, plain-text and application extensions (other than the loop count) may carry
//!   at most [`MAX_METADATA_BYTES`] together.
//!
//! Both stop counting at `max_frames` + 1 frames, so the scan itself is bounded by the
//! input's length.

/// Most bytes of metadata an input may carry (PNG ancillary chunks the models do not use,
/// GIF comment and application extensions): 64 KiB, room for a colour profile.
pub const MAX_METADATA_BYTES: usize = 64 * 1024;

/// The structure of an input, as far as the limits care.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shape {
    /// Canvas width in pixels.
    pub width: u32,
    /// Canvas height in pixels.
    pub height: u32,
    /// Frames: `fcTL` chunks of an APNG (1 for a still PNG), image descriptors of a GIF.
    pub frames: usize,
}

/// What the scan refuses.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScanError {
    /// The container itself is broken (a length past the end, a missing header).
    #[error("{0}")]
    Malformed(String),
    /// A frame reaches outside the canvas.
    #[error(
        "frame {frame} is {width}x{height} at ({left}, {top}), outside the {canvas_width}x{canvas_height} canvas"
    )]
    FrameOutsideCanvas {
        /// The frame's index, from 0.
        frame: usize,
        /// Its left offset.
        left: u32,
        /// Its top offset.
        top: u32,
        /// Its width.
        width: u32,
        /// Its height.
        height: u32,
        /// The canvas width.
        canvas_width: u32,
        /// The canvas height.
        canvas_height: u32,
    },
    /// More metadata than [`MAX_METADATA_BYTES`].
    #[error(
        "its metadata (colour profiles, text, comments, EXIF) is over the limit of {max_bytes} bytes"
    )]
    TooMuchMetadata {
        /// The limit.
        max_bytes: usize,
    },
    /// More frames than the limit.
    #[error("more than {max_frames} frames")]
    TooManyFrames {
        /// The limit.
        max_frames: usize,
    },
}

const PNG_SIGNATURE: &[u8; 8] = b"\x89PNG\r\n\x1a\n";

/// The chunks kept for the decoder besides the critical ones.
const PNG_KEPT_ANCILLARY: [&[u8; 4]; 4] = [b"tRNS", b"acTL", b"fcTL", b"fdAT"];

impl ScanError {
    /// As a decoding error of `format` when the container is broken; the limits' errors
    /// as they are.
    pub fn into_decoding_error(
        self,
        format: image::ImageFormat,
    ) -> Result<image::ImageError, Self> {
        match self {
            Self::Malformed(message) => Ok(image::ImageError::Decoding(
                image::error::DecodingError::new(format.into(), message),
            )),
            other => Err(other),
        }
    }
}

fn malformed(message: impl Into<String>) -> ScanError {
    ScanError::Malformed(message.into())
}

fn be32(bytes: &[u8], at: usize) -> Option<u32> {
    let b = bytes.get(at..at + 4)?;
    Some(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
}

fn le16(bytes: &[u8], at: usize) -> Option<u32> {
    let b = bytes.get(at..at + 2)?;
    Some(u32::from(u16::from_le_bytes([b[0], b[1]])))
}

fn inside(
    frame: usize,
    (left, top, width, height): (u32, u32, u32, u32),
    shape: &Shape,
) -> Result<(), ScanError> {
    let fits = |offset: u32, size: u32, canvas: u32| {
        u64::from(offset) + u64::from(size) <= u64::from(canvas)
    };
    if fits(left, width, shape.width) && fits(top, height, shape.height) {
        return Ok(());
    }
    Err(ScanError::FrameOutsideCanvas {
        frame,
        left,
        top,
        width,
        height,
        canvas_width: shape.width,
        canvas_height: shape.height,
    })
}

/// Walks a PNG's chunks: its canvas and frames, and the PNG again without the ancillary
/// chunks the models do not use.
pub fn scan_png(bytes: &[u8], max_frames: usize) -> Result<(Shape, Vec<u8>), ScanError> {
    if bytes.get(..8) != Some(PNG_SIGNATURE.as_slice()) {
        return Err(malformed("not a PNG"));
    }
    let mut kept = PNG_SIGNATURE.to_vec();
    let mut shape: Option<Shape> = None;
    let mut fctl = 0usize;
    let mut metadata = 0usize;
    let mut at = 8;
    while at < bytes.len() {
        let length = be32(bytes, at).ok_or_else(|| malformed("PNG chunk header cut short"))?;
        let kind = bytes
            .get(at + 4..at + 8)
            .ok_or_else(|| malformed("PNG chunk header cut short"))?;
        let end = usize::try_from(length)
            .ok()
            .and_then(|n| (at + 12).checked_add(n))
            .filter(|&end| end <= bytes.len())
            .ok_or_else(|| {
                malformed(format!(
                    "PNG chunk {} declares {length} bytes past the end of the input",
                    String::from_utf8_lossy(kind)
                ))
            })?;
        let data = &bytes[at + 8..end - 4];
        match kind {
            b"IHDR" => {
                let (Some(width), Some(height)) = (be32(data, 0), be32(data, 4)) else {
                    return Err(malformed("PNG header chunk cut short"));
                };
                shape = Some(Shape {
                    width,
                    height,
                    frames: 0,
                });
            }
            b"fcTL" => {
                let shape = shape
                    .as_ref()
                    .ok_or_else(|| malformed("PNG frame before the header"))?;
                let field = |i: usize| be32(data, 4 + 4 * i);
                let (Some(width), Some(height), Some(left), Some(top)) =
                    (field(0), field(1), field(2), field(3))
                else {
                    return Err(malformed("PNG frame control chunk cut short"));
                };
                inside(fctl, (left, top, width, height), shape)?;
                fctl += 1;
                if fctl > max_frames {
                    return Err(ScanError::TooManyFrames { max_frames });
                }
            }
            _ => {}
        }
        let critical = kind[0].is_ascii_uppercase();
        if critical || PNG_KEPT_ANCILLARY.iter().any(|k| k.as_slice() == kind) {
            kept.extend_from_slice(&bytes[at..end]);
        } else {
            metadata = count_metadata(metadata, data.len())?;
        }
        at = end;
        if kind == b"IEND" {
            break;
        }
    }
    let mut shape = shape.ok_or_else(|| malformed("PNG without a header chunk"))?;
    shape.frames = fctl.max(1);
    Ok((shape, kept))
}

/// Walks a GIF's blocks: its logical screen and its frames.
pub fn scan_gif(bytes: &[u8], max_frames: usize) -> Result<Shape, ScanError> {
    let cut = || malformed("GIF cut short");
    if !matches!(bytes.get(..6), Some(b"GIF87a" | b"GIF89a")) {
        return Err(malformed("not a GIF"));
    }
    let (width, height) = (
        le16(bytes, 6).ok_or_else(cut)?,
        le16(bytes, 8).ok_or_else(cut)?,
    );
    let mut shape = Shape {
        width,
        height,
        frames: 0,
    };
    let packed = *bytes.get(10).ok_or_else(cut)?;
    let mut at = 13 + colour_table_len(packed);
    let mut metadata = 0usize;
    // A stream that ends without its trailer ends there: the decoder says whether the
    // frames before are whole.
    while let Some(&block) = bytes.get(at) {
        match block {
            0x3B => break,
            0x21 => {
                let label = bytes.get(at + 1).copied();
                let end = skip_sub_blocks(bytes, at + 2);
                // The graphic control extension (delays, disposal) and the loop count are
                // used; the rest is metadata.
                let loop_count = bytes
                    .get(at + 3..at + 14)
                    .is_some_and(|id| id == b"NETSCAPE2.0");
                if label != Some(0xF9) && !(label == Some(0xFF) && loop_count) {
                    metadata = count_metadata(metadata, end - at)?;
                }
                at = end;
            }
            0x2C => {
                let field = |i: usize| le16(bytes, at + 1 + 2 * i);
                let (Some(left), Some(top), Some(w), Some(h), Some(&packed)) =
                    (field(0), field(1), field(2), field(3), bytes.get(at + 9))
                else {
                    return Err(cut());
                };
                inside(shape.frames, (left, top, w, h), &shape)?;
                shape.frames += 1;
                if shape.frames > max_frames {
                    return Err(ScanError::TooManyFrames { max_frames });
                }
                // Descriptor, local colour table, LZW code size, then the data.
                at = skip_sub_blocks(bytes, at + 10 + colour_table_len(packed) + 1);
            }
            other => return Err(malformed(format!("GIF block 0x{other:02x} is unknown"))),
        }
    }
    Ok(shape)
}

fn count_metadata(so_far: usize, more: usize) -> Result<usize, ScanError> {
    let total = so_far.saturating_add(more);
    if total > MAX_METADATA_BYTES {
        return Err(ScanError::TooMuchMetadata {
            max_bytes: MAX_METADATA_BYTES,
        });
    }
    Ok(total)
}

/// Bytes of the colour table a packed field announces.
fn colour_table_len(packed: u8) -> usize {
    if packed & 0x80 == 0 {
        0
    } else {
        3 << ((packed & 0x07) + 1)
    }
}

/// The offset after the sub-blocks starting at `at` (past the end when they run out).
fn skip_sub_blocks(bytes: &[u8], mut at: usize) -> usize {
    while let Some(&len) = bytes.get(at) {
        at += 1 + usize::from(len);
        if len == 0 {
            return at;
        }
    }
    bytes.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gif(canvas: (u16, u16), frames: &[(u16, u16, u16, u16)]) -> Vec<u8> {
        let mut out = b"GIF89a".to_vec();
        out.extend(canvas.0.to_le_bytes());
        out.extend(canvas.1.to_le_bytes());
        out.extend([0x80, 0, 0]); // a global table of 2 colours
        out.extend([0, 0, 0, 255, 255, 255]);
        for &(l, t, w, h) in frames {
            out.push(0x2C);
            for v in [l, t, w, h] {
                out.extend(v.to_le_bytes());
            }
            out.extend([0, 2, 2, 0x44, 0x01, 0]); // packed, code size, a tiny LZW block
        }
        out.push(0x3B);
        out
    }

    #[test]
    fn gif_frames_are_counted_and_must_lie_inside_the_screen() {
        let shape = scan_gif(&gif((16, 16), &[(0, 0, 16, 16), (8, 8, 8, 8)]), 10).unwrap();
        assert_eq!((shape.width, shape.height, shape.frames), (16, 16, 2));
        assert!(matches!(
            scan_gif(&gif((16, 16), &[(0, 0, 65535, 65535)]), 10),
            Err(ScanError::FrameOutsideCanvas { width: 65535, .. })
        ));
        assert!(matches!(
            scan_gif(&gif((16, 16), &[(9, 0, 8, 8)]), 10),
            Err(ScanError::FrameOutsideCanvas { left: 9, .. })
        ));
        assert_eq!(
            scan_gif(&gif((4, 4), &[(0, 0, 1, 1); 4]), 3),
            Err(ScanError::TooManyFrames { max_frames: 3 })
        );
        assert!(matches!(
            scan_gif(b"GIF89a\x01", 3),
            Err(ScanError::Malformed(_))
        ));
    }

    #[test]
    fn gif_comments_count_as_metadata_and_the_loop_count_does_not() {
        let with = |extension: &[u8]| {
            let mut bytes = gif((4, 4), &[(0, 0, 4, 4)]);
            bytes.splice(19..19, extension.iter().copied());
            bytes
        };
        let mut comment = vec![0x21, 0xFE];
        for _ in 0..300 {
            comment.push(255);
            comment.extend([b'x'; 255]);
        }
        comment.push(0);
        assert_eq!(
            scan_gif(&with(&comment), 10),
            Err(ScanError::TooMuchMetadata {
                max_bytes: MAX_METADATA_BYTES
            })
        );
        let mut looping = vec![0x21, 0xFF, 11];
        looping.extend(b"NETSCAPE2.0");
        looping.extend([3, 1, 0, 0, 0]);
        assert_eq!(scan_gif(&with(&looping), 10).map(|s| s.frames), Ok(1));
    }

    #[test]
    fn png_chunks_past_the_end_are_refused() {
        let mut png = PNG_SIGNATURE.to_vec();
        png.extend(13u32.to_be_bytes());
        png.extend(b"IHDR");
        png.extend([0, 0, 0, 4, 0, 0, 0, 4, 8, 2, 0, 0, 0, 0, 0, 0, 0]);
        png.extend(u32::MAX.to_be_bytes());
        png.extend(b"iCCP");
        assert!(matches!(scan_png(&png, 1), Err(ScanError::Malformed(_))));
    }
}
