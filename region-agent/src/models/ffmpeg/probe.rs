//! ffprobe's JSON report of a media file: its demuxer and, for each stream, the codec,
//! sizes, rates and duration that the limits are checked against before decoding.

use serde::Deserialize;

use super::FfmpegError;

/// The fields ffprobe is asked for (`-show_entries`): the format and stream sections of
/// `-show_format -show_streams`, without tags and side data, so the report stays small.
pub const ENTRIES: &str = "format=format_name,duration:stream=index,codec_type,codec_name,\
width,height,sample_rate,channels,r_frame_rate,avg_frame_rate,nb_frames,nb_read_packets,duration";

/// What ffprobe found in a file.
#[derive(Debug, Clone, PartialEq)]
pub struct Probe {
    /// The demuxer that opened it, one of those allowed (what `-f` takes), e.g. `mov`.
    pub demuxer: String,
    /// The container's duration, in seconds, when known.
    pub duration: Option<f64>,
    /// Its streams, in order.
    pub streams: Vec<Stream>,
}

/// One stream of a file.
#[derive(Debug, Clone, PartialEq)]
pub struct Stream {
    /// `audio`, `video`, `subtitle`, `data`, …
    pub kind: String,
    /// The codec, e.g. `h264`, `opus` (empty when ffprobe does not know it).
    pub codec: String,
    /// Width and height in pixels (video).
    pub size: Option<(u32, u32)>,
    /// Samples per second (audio).
    pub sample_rate: Option<u32>,
    /// Channels (audio).
    pub channels: Option<u32>,
    /// Frames per second as a fraction (video), when ffprobe could tell.
    pub frame_rate: Option<(u32, u32)>,
    /// Frames, as the container's index counts them (video).
    pub frames: Option<u64>,
    /// Packets ffprobe read from the file (for video, one a frame).
    pub packets: Option<u64>,
    /// The stream's duration, in seconds, when known.
    pub duration: Option<f64>,
}

impl Probe {
    /// The first stream of `kind`.
    pub fn first(&self, kind: &str) -> Option<&Stream> {
        self.streams.iter().find(|s| s.kind == kind)
    }
}

#[derive(Deserialize)]
struct Report {
    #[serde(default)]
    streams: Vec<StreamEntry>,
    format: Option<FormatEntry>,
}

#[derive(Deserialize)]
struct FormatEntry {
    format_name: String,
    duration: Option<String>,
}

#[derive(Deserialize)]
struct StreamEntry {
    codec_type: Option<String>,
    codec_name: Option<String>,
    width: Option<u32>,
    height: Option<u32>,
    sample_rate: Option<String>,
    channels: Option<u32>,
    r_frame_rate: Option<String>,
    avg_frame_rate: Option<String>,
    nb_frames: Option<String>,
    nb_read_packets: Option<String>,
    duration: Option<String>,
}

/// Parses ffprobe's JSON, refusing a file whose demuxer is not one of `demuxers`.
pub fn parse(json: &[u8], demuxers: &[&str]) -> Result<Probe, FfmpegError> {
    let report: Report = serde_json::from_slice(json)
        .map_err(|e| FfmpegError::Refused(format!("ffprobe's report is unreadable: {e}")))?;
    let format = report
        .format
        .ok_or_else(|| FfmpegError::Refused("ffprobe found no container".to_owned()))?;
    let demuxer = format
        .format_name
        .split(',')
        .find(|name| demuxers.contains(name))
        .ok_or_else(|| {
            FfmpegError::Refused(format!(
                "the container {} is not accepted (accepted: {})",
                format.format_name,
                demuxers.join(", ")
            ))
        })?
        .to_owned();
    Ok(Probe {
        demuxer,
        duration: seconds(format.duration.as_deref()),
        streams: report.streams.into_iter().map(Stream::from).collect(),
    })
}

impl From<StreamEntry> for Stream {
    fn from(s: StreamEntry) -> Self {
        let count = |text: Option<&str>| text.and_then(|t| t.parse::<u64>().ok());
        Self {
            kind: s.codec_type.unwrap_or_default(),
            codec: s.codec_name.unwrap_or_default(),
            size: s.width.zip(s.height),
            sample_rate: s.sample_rate.and_then(|r| r.parse().ok()),
            channels: s.channels,
            frame_rate: fraction(s.r_frame_rate.as_deref())
                .or_else(|| fraction(s.avg_frame_rate.as_deref())),
            frames: count(s.nb_frames.as_deref()),
            packets: count(s.nb_read_packets.as_deref()),
            duration: seconds(s.duration.as_deref()),
        }
    }
}

/// A positive `num/den`.
fn fraction(text: Option<&str>) -> Option<(u32, u32)> {
    let (num, den) = text?.split_once('/')?;
    let (num, den) = (num.parse().ok()?, den.parse().ok()?);
    (num > 0 && den > 0).then_some((num, den))
}

/// A finite, non-negative number of seconds.
fn seconds(text: Option<&str>) -> Option<f64> {
    text?
        .parse::<f64>()
        .ok()
        .filter(|s| s.is_finite() && *s >= 0.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_report_and_refuses_other_demuxers() {
        let json = br#"{"programs": [], "streams": [
            {"index": 0, "codec_name": "h264", "codec_type": "video", "width": 32, "height": 24,
             "r_frame_rate": "10/1", "avg_frame_rate": "10/1", "nb_frames": "10",
             "nb_read_packets": "10", "duration": "1.000000"},
            {"index": 1, "codec_name": "aac", "codec_type": "audio", "sample_rate": "44100",
             "channels": 2, "r_frame_rate": "0/0", "nb_read_packets": "44"}],
            "format": {"format_name": "mov,mp4,m4a,3gp,3g2,mj2", "duration": "1.02"}}"#;
        let probe = parse(json, &["matroska", "mov"]).unwrap();
        assert_eq!(probe.demuxer, "mov");
        assert_eq!(probe.duration, Some(1.02));
        let video = probe.first("video").unwrap();
        assert_eq!(
            (
                video.codec.as_str(),
                video.size,
                video.frame_rate,
                video.frames,
                video.packets
            ),
            ("h264", Some((32, 24)), Some((10, 1)), Some(10), Some(10))
        );
        let audio = probe.first("audio").unwrap();
        assert_eq!(
            (audio.sample_rate, audio.channels, audio.frame_rate),
            (Some(44_100), Some(2), None)
        );
        let err = parse(json, &["wav"]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "the container mov,mp4,m4a,3gp,3g2,mj2 is not accepted (accepted: wav)"
        );
        assert!(parse(b"{}", &["wav"]).is_err());
        assert!(parse(b"[1, 2", &["wav"]).is_err());
    }
}
