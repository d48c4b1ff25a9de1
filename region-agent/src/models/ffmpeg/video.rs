//! MP4, WebM and MOV video in and out of the video models: decoded by ffmpeg into the same
//! RGBA frames as an animation after ffprobe's report is checked against the limits, and
//! frames encoded as MP4 (H.264, yuv420p) at a given frame rate.

use std::path::Path;

use image::RgbaImage;

use super::{Ffmpeg, FfmpegError, ScratchDir, Stream, input_guard};
use crate::models::animation::{Animation, AnimationError, AnimationLimits, Frame, FrameDelay};

/// The demuxers video may be read with: `mov` (MP4, MOV, M4V) and `matroska` (WebM, MKV).
pub const DEMUXERS: &[&str] = &["mov", "matroska"];

/// The video codecs accepted.
pub const CODECS: &[&str] = &["h264", "hevc", "vp8", "vp9", "av1", "mpeg4"];

/// The frame rate used when the input's is unknown or implausible, as a fraction.
const DEFAULT_FRAME_RATE: (u32, u32) = (25, 1);

/// The highest frame rate taken from an input, in frames per second.
const MAX_FRAME_RATE: f64 = 240.0;

/// Bytes an encoded MP4 may take beyond its raw frames (container and headers).
const MP4_OVERHEAD: u64 = 1 << 20;

/// A decoded video: its frames (every delay one frame period) and frame rate.
#[derive(Debug, Clone, PartialEq)]
pub struct Video {
    /// The frames, of one size, as an animation that plays once.
    pub animation: Animation,
    /// Frames per second, `numerator / denominator`.
    pub frame_rate: (u32, u32),
}

/// Decodes MP4, WebM or MOV bytes. ffprobe's report is checked first: the container, the
/// codec of the first video stream, its frame size and its frame count against `limits`.
/// The frames are then decoded with a cap on the bytes read of what `limits` allow, so a
/// file that holds more frames than it declares is refused as it decodes.
pub fn decode_video(
    ffmpeg: &Ffmpeg,
    bytes: &[u8],
    limits: &AnimationLimits,
) -> Result<Video, AnimationError> {
    ffmpeg.check_installed("MP4, WebM and MOV input")?;
    let dir = ScratchDir::new().map_err(io("create a scratch directory"))?;
    let input = dir
        .write("input", &[bytes])
        .map_err(io("write the input"))?;
    let (demuxer, stream) = probe_video(ffmpeg, &input, limits)?;
    let (width, height) = stream.size.unwrap_or_default();
    let allowed = limits.frames_allowed(width, height);
    let frame_bytes = width as usize * height as usize * 4;
    let mut args = input_guard(DEMUXERS);
    args.extend(["-noautorotate", "-f", &demuxer, "-i"].map(String::from));
    args.push(input.display().to_string());
    args.extend(
        ["-map", "0:v:0", "-frames:v", &(allowed + 1).to_string()]
            .into_iter()
            .chain([
                "-fps_mode",
                "passthrough",
                "-f",
                "rawvideo",
                "-pix_fmt",
                "rgba",
            ])
            .chain(["pipe:1"])
            .map(String::from),
    );
    let raw = match ffmpeg.ffmpeg(&args, allowed * frame_bytes) {
        Err(FfmpegError::OutputTooLarge { .. }) => {
            limits.check_size(width, height, allowed + 1)?;
            return Err(refused(
                "input video decodes to more frames than allowed".to_owned(),
            ));
        }
        other => other?,
    };
    let frame_rate = plausible(stream.frame_rate);
    let animation = frames(&raw, width, height, frame_rate)?;
    Ok(Video {
        animation,
        frame_rate,
    })
}

/// Probes `input` and checks its first video stream: codec, frame size, and frame count
/// (the index's against the packets present, and both against `limits`). Returns the
/// demuxer to decode it with and the stream.
fn probe_video(
    ffmpeg: &Ffmpeg,
    input: &Path,
    limits: &AnimationLimits,
) -> Result<(String, Stream), AnimationError> {
    let probe = ffmpeg.probe(input, DEMUXERS).map_err(|e| match e {
        FfmpegError::Failed { .. } | FfmpegError::Refused(_) => refused(format!(
            "input is not a GIF, APNG, MP4, WebM or MOV video ({e})"
        )),
        other => AnimationError::Ffmpeg(other),
    })?;
    let stream = probe
        .first("video")
        .ok_or_else(|| refused("input video has no video stream".to_owned()))?;
    if !CODECS.contains(&stream.codec.as_str()) {
        return Err(refused(format!(
            "input video is coded as {}; accepted: {}",
            stream.codec,
            CODECS.join(", ")
        )));
    }
    let (width, height) = stream
        .size
        .ok_or_else(|| refused("input video has no frame size".to_owned()))?;
    let (indexed, carried) = (stream.frames.unwrap_or(0), stream.packets.unwrap_or(0));
    if indexed > carried {
        return Err(refused(format!(
            "input video is truncated: its index lists {indexed} frames but it carries {carried}"
        )));
    }
    let declared = usize::try_from(indexed.max(carried)).unwrap_or(usize::MAX);
    limits.check_size(width, height, declared.max(1))?;
    Ok((probe.demuxer.clone(), stream.clone()))
}

/// Encodes frames (all of one size, even sides) as MP4: H.264, yuv420p, `frame_rate`.
pub fn encode_mp4(
    ffmpeg: &Ffmpeg,
    animation: &Animation,
    frame_rate: (u32, u32),
) -> Result<Vec<u8>, FfmpegError> {
    ffmpeg.check_installed("MP4 output")?;
    let (width, height) = animation.dimensions();
    let dir = ScratchDir::new().map_err(io_error("create a scratch directory"))?;
    let parts: Vec<&[u8]> = animation
        .frames
        .iter()
        .map(|f| f.image.as_raw().as_slice())
        .collect();
    let raw_bytes: u64 = parts.iter().map(|p| p.len() as u64).sum();
    let frames = dir
        .write("frames.rgba", &parts)
        .map_err(io_error("write the frames"))?;
    let output = dir.join("output.mp4");
    let max_bytes = raw_bytes + MP4_OVERHEAD;
    let (num, den) = frame_rate;
    let mut args = ["-f", "rawvideo", "-pix_fmt", "rgba", "-video_size"]
        .map(String::from)
        .to_vec();
    args.extend([
        format!("{width}x{height}"),
        "-framerate".to_owned(),
        format!("{num}/{den}"),
    ]);
    args.extend(input_guard(&["rawvideo"]));
    args.extend(["-i".to_owned(), frames.display().to_string()]);
    args.extend(
        [
            "-c:v", "libx264", "-preset", "veryfast", "-pix_fmt", "yuv420p",
        ]
        .into_iter()
        .chain(["-threads", &ffmpeg.threads.to_string()])
        .chain([
            "-movflags",
            "+faststart",
            "-fs",
            &max_bytes.to_string(),
            "-f",
            "mp4",
        ])
        .map(String::from),
    );
    args.push(output.display().to_string());
    ffmpeg.ffmpeg(&args, 0)?;
    let size = std::fs::metadata(&output)
        .map_err(io_error("read the encoded video"))?
        .len();
    if size >= max_bytes {
        return Err(FfmpegError::OutputTooLarge {
            tool: "ffmpeg".to_owned(),
            max_bytes: usize::try_from(max_bytes).unwrap_or(usize::MAX),
        });
    }
    std::fs::read(&output).map_err(io_error("read the encoded video"))
}

/// Splits raw RGBA bytes into frames of `width`×`height`, each one frame period long.
fn frames(
    raw: &[u8],
    width: u32,
    height: u32,
    (num, den): (u32, u32),
) -> Result<Animation, AnimationError> {
    let frame_bytes = width as usize * height as usize * 4;
    if raw.is_empty() {
        return Err(AnimationError::Empty {
            width,
            height,
            frames: 0,
        });
    }
    let delay = FrameDelay {
        numer_ms: den.saturating_mul(1000),
        denom: num,
    };
    let frames = raw
        .chunks_exact(frame_bytes)
        .filter_map(|pixels| RgbaImage::from_raw(width, height, pixels.to_vec()))
        .map(|image| Frame { image, delay })
        .collect();
    Ok(Animation { frames, plays: 1 })
}

/// `rate` when it is a plausible frame rate, else [`DEFAULT_FRAME_RATE`].
fn plausible(rate: Option<(u32, u32)>) -> (u32, u32) {
    rate.filter(|&(num, den)| {
        let fps = f64::from(num) / f64::from(den);
        (0.1..=MAX_FRAME_RATE).contains(&fps) && den <= 1_000_000
    })
    .unwrap_or(DEFAULT_FRAME_RATE)
}

fn refused(message: String) -> AnimationError {
    AnimationError::Ffmpeg(FfmpegError::Refused(message))
}

fn io(what: &'static str) -> impl Fn(std::io::Error) -> AnimationError {
    move |source| AnimationError::Ffmpeg(io_error(what)(source))
}

fn io_error(what: &'static str) -> impl Fn(std::io::Error) -> FfmpegError {
    move |source| FfmpegError::Io {
        what: what.to_owned(),
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn implausible_frame_rates_fall_back_to_the_default() {
        assert_eq!(plausible(Some((30_000, 1001))), (30_000, 1001));
        assert_eq!(plausible(Some((1000, 1))), DEFAULT_FRAME_RATE);
        assert_eq!(plausible(Some((1, 1000))), DEFAULT_FRAME_RATE);
        assert_eq!(plausible(None), DEFAULT_FRAME_RATE);
    }

    #[test]
    fn raw_frames_become_an_animation_of_frame_periods() {
        let raw = vec![7u8; 2 * 3 * 4 * 2];
        let video = frames(&raw, 2, 3, (25, 1)).unwrap();
        assert_eq!(video.frames.len(), 2);
        assert_eq!(video.dimensions(), (2, 3));
        assert_eq!(video.frames[0].delay.as_ms(), 40.0);
        assert!(matches!(
            frames(&[], 2, 3, (25, 1)),
            Err(AnimationError::Empty { .. })
        ));
    }
}
