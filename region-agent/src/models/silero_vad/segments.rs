//! From per-window speech probabilities to speech segments: hysteresis on two thresholds,
//! minimum speech and silence durations, and padding, as the Silero VAD package does it
//! (its `get_speech_timestamps`, without the maximum-segment-length split).

use serde::Serialize;

/// How probabilities become segments. The defaults are the Silero VAD package's.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SegmentParams {
    /// A window whose probability is at or above this starts (or continues) speech.
    pub threshold: f32,
    /// While in speech, a window below this counts as silence (default: `threshold − 0.15`,
    /// at least 0.01).
    pub neg_threshold: Option<f32>,
    /// Segments shorter than this are dropped, in milliseconds (default 250).
    pub min_speech_ms: u32,
    /// Silence shorter than this does not end a segment, in milliseconds (default 100).
    pub min_silence_ms: u32,
    /// Each segment is widened by this much on both sides (never past the audio, and never
    /// over a neighbour: short gaps are split between them), in milliseconds (default 30).
    pub speech_pad_ms: u32,
}

impl Default for SegmentParams {
    fn default() -> Self {
        Self {
            threshold: 0.5,
            neg_threshold: None,
            min_speech_ms: 250,
            min_silence_ms: 100,
            speech_pad_ms: 30,
        }
    }
}

/// A stretch of speech, in seconds from the start of the audio (millisecond resolution).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct SpeechSegment {
    /// Where speech starts, in seconds.
    pub start_s: f64,
    /// Where speech ends, in seconds.
    pub end_s: f64,
}

/// A segment in samples, before conversion to seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Span {
    start: usize,
    end: usize,
}

/// Turns one probability per `window` samples into speech segments of audio that is
/// `audio_len` samples long at `sample_rate` Hz.
pub fn speech_segments(
    probs: &[f32],
    window: usize,
    audio_len: usize,
    sample_rate: u32,
    params: &SegmentParams,
) -> Vec<SpeechSegment> {
    let per_ms = f64::from(sample_rate) / 1000.0;
    let samples = |ms: u32| (f64::from(ms) * per_ms) as usize;
    let (min_speech, min_silence, pad) = (
        samples(params.min_speech_ms),
        samples(params.min_silence_ms),
        samples(params.speech_pad_ms),
    );
    let neg_threshold = params
        .neg_threshold
        .unwrap_or((params.threshold - 0.15).max(0.01));

    let mut spans = Vec::new();
    let mut start: Option<usize> = None;
    let mut silence_from: Option<usize> = None;
    for (i, &p) in probs.iter().enumerate() {
        let at = i * window;
        if p >= params.threshold {
            silence_from = None;
            if start.is_none() {
                start = Some(at);
            }
            continue;
        }
        let Some(s) = start else { continue };
        if p < neg_threshold {
            let quiet_from = *silence_from.get_or_insert(at);
            if at - quiet_from >= min_silence {
                if quiet_from - s > min_speech {
                    spans.push(Span {
                        start: s,
                        end: quiet_from,
                    });
                }
                start = None;
                silence_from = None;
            }
        }
    }
    if let Some(s) = start
        && audio_len.saturating_sub(s) > min_speech
    {
        spans.push(Span {
            start: s,
            end: audio_len,
        });
    }
    pad_spans(&mut spans, pad, audio_len);
    spans
        .iter()
        .map(|s| SpeechSegment {
            start_s: to_seconds(s.start, sample_rate),
            end_s: to_seconds(s.end, sample_rate),
        })
        .collect()
}

/// Widens each span by `pad` samples, splitting gaps shorter than two pads between
/// neighbours.
fn pad_spans(spans: &mut [Span], pad: usize, audio_len: usize) {
    let n = spans.len();
    for i in 0..n {
        if i == 0 {
            spans[i].start = spans[i].start.saturating_sub(pad);
        }
        if i + 1 < n {
            let gap = spans[i + 1].start - spans[i].end;
            if gap < 2 * pad {
                spans[i].end += gap / 2;
                spans[i + 1].start -= gap / 2;
            } else {
                spans[i].end = (spans[i].end + pad).min(audio_len);
                spans[i + 1].start -= pad;
            }
        } else {
            spans[i].end = (spans[i].end + pad).min(audio_len);
        }
    }
}

fn to_seconds(sample: usize, sample_rate: u32) -> f64 {
    (sample as f64 / f64::from(sample_rate) * 1000.0).round() / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    const W: usize = 512;
    const SR: u32 = 16_000;

    /// Probabilities for windows: `1.0` inside the given window ranges, `0.0` elsewhere.
    fn probs(n: usize, speech: &[(usize, usize)]) -> Vec<f32> {
        (0..n)
            .map(|i| {
                if speech.iter().any(|&(a, b)| i >= a && i < b) {
                    1.0
                } else {
                    0.0
                }
            })
            .collect()
    }

    fn no_pad() -> SegmentParams {
        SegmentParams {
            speech_pad_ms: 0,
            ..SegmentParams::default()
        }
    }

    #[test]
    fn one_burst_gives_one_segment_at_its_windows() {
        let p = probs(100, &[(20, 50)]);
        let segs = speech_segments(&p, W, 100 * W, SR, &no_pad());
        assert_eq!(
            segs,
            vec![SpeechSegment {
                start_s: to_seconds(20 * W, SR),
                end_s: to_seconds(50 * W, SR),
            }]
        );
    }

    #[test]
    fn silence_and_bursts_shorter_than_min_speech_give_nothing() {
        assert!(speech_segments(&probs(100, &[]), W, 100 * W, SR, &no_pad()).is_empty());
        // 5 windows = 160 ms < 250 ms.
        assert!(speech_segments(&probs(100, &[(10, 15)]), W, 100 * W, SR, &no_pad()).is_empty());
    }

    #[test]
    fn short_pauses_do_not_split_long_ones_do() {
        // 2 windows (64 ms) of silence < 100 ms: one segment.
        let p = probs(100, &[(10, 30), (32, 60)]);
        assert_eq!(speech_segments(&p, W, 100 * W, SR, &no_pad()).len(), 1);
        // 10 windows (320 ms): two segments.
        let p = probs(100, &[(10, 30), (40, 60)]);
        assert_eq!(speech_segments(&p, W, 100 * W, SR, &no_pad()).len(), 2);
    }

    #[test]
    fn probabilities_between_the_thresholds_keep_speech_going() {
        let mut p = probs(100, &[(10, 60)]);
        for v in &mut p[30..50] {
            *v = 0.4; // below 0.5, above 0.35
        }
        let segs = speech_segments(&p, W, 100 * W, SR, &no_pad());
        assert_eq!(segs.len(), 1);
        assert_eq!(segs[0].end_s, to_seconds(60 * W, SR));
    }

    #[test]
    fn speech_running_to_the_end_ends_at_the_audio_end() {
        let p = probs(40, &[(20, 40)]);
        let len = 40 * W - 100;
        let segs = speech_segments(&p, W, len, SR, &no_pad());
        assert_eq!(segs[0].end_s, to_seconds(len, SR));
    }

    #[test]
    fn padding_widens_segments_within_the_audio_and_splits_short_gaps() {
        let params = SegmentParams::default(); // 30 ms = 480 samples
        let p = probs(100, &[(0, 20), (40, 60)]);
        let segs = speech_segments(&p, W, 100 * W, SR, &params);
        assert_eq!(segs[0].start_s, 0.0);
        assert_eq!(segs[0].end_s, to_seconds(20 * W + 480, SR));
        assert_eq!(segs[1].start_s, to_seconds(40 * W - 480, SR));

        let mut spans = vec![
            Span {
                start: 0,
                end: 1000,
            },
            Span {
                start: 1100,
                end: 2000,
            },
        ];
        pad_spans(&mut spans, 480, 2100);
        assert_eq!(spans[0].end, 1050);
        assert_eq!(spans[1].start, 1050);
        assert_eq!(spans[1].end, 2100);
    }
}
