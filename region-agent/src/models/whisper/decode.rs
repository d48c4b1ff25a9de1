//! Greedy decoding with timestamps, as Whisper was trained to decode: which tokens each step
//! may choose ([`Rules::constrain`]) and how a window's tokens become timed segments and how
//! far the next window starts ([`window_segments`]).
//!
//! The rules: special tokens other than `<|endoftext|>` and timestamps are never chosen, nor
//! the model's suppressed tokens; a window starts with a timestamp of at most 1 s (and never
//! with a blank or the end); timestamps come in pairs that close one segment and open the
//! next, never decrease, and are forced when the timestamps together are likelier than any
//! single text token.

use super::vocabulary::Specials;

/// Seconds per timestamp step.
pub const TIMESTAMP_STEP_S: f64 = 0.02;
/// Mel frames per timestamp step (10 ms hop).
pub const FRAMES_PER_TIMESTAMP: usize = 2;
/// Latest timestamp a window may start with, in steps (1 s).
const MAX_INITIAL_TIMESTAMP: u32 = 50;

/// The decoding constraints of one model.
#[derive(Debug, Clone)]
pub struct Rules {
    specials: Specials,
    suppress: Vec<u32>,
    suppress_at_start: Vec<u32>,
}

impl Rules {
    /// Rules for a vocabulary's specials and the model's suppressed token lists.
    pub fn new(specials: Specials, suppress: Vec<u32>, suppress_at_start: Vec<u32>) -> Self {
        Self {
            specials,
            suppress,
            suppress_at_start,
        }
    }

    /// Forbids (sets to −∞) in `logits` what may not follow `sampled`, the tokens chosen so
    /// far in this window.
    pub fn constrain(&self, logits: &mut [f32], sampled: &[u32]) {
        let s = self.specials;
        let ts = s.timestamp_begin as usize;
        let forbid = |logits: &mut [f32], range: std::ops::Range<usize>| {
            let end = range.end.min(logits.len());
            logits[range.start.min(end)..end].fill(f32::NEG_INFINITY);
        };
        for &id in &self.suppress {
            forbid(logits, id as usize..id as usize + 1);
        }
        forbid(logits, s.end_of_text as usize + 1..ts);
        if sampled.is_empty() {
            for &id in &self.suppress_at_start {
                forbid(logits, id as usize..id as usize + 1);
            }
            forbid(logits, 0..ts);
            forbid(
                logits,
                ts + MAX_INITIAL_TIMESTAMP as usize + 1..logits.len(),
            );
        }
        let is_ts = |t: u32| t >= s.timestamp_begin;
        let last_was_ts = sampled.last().is_some_and(|&t| is_ts(t));
        let penultimate_was_ts = sampled.len() < 2 || is_ts(sampled[sampled.len() - 2]);
        if last_was_ts {
            if penultimate_was_ts {
                forbid(logits, ts..logits.len());
            } else {
                forbid(logits, 0..s.end_of_text as usize);
            }
        }
        if let Some(&last_ts) = sampled.iter().rev().find(|&&t| is_ts(t)) {
            // A closing timestamp may repeat the opening one's time; after a pair, time moves on.
            let floor = if last_was_ts && !penultimate_was_ts {
                last_ts
            } else {
                last_ts + 1
            };
            forbid(logits, ts..floor as usize);
        }
        let log_probs = log_softmax(logits);
        let timestamp_mass = log_sum_exp(&log_probs[ts.min(log_probs.len())..]);
        let best_text = log_probs[..ts.min(log_probs.len())]
            .iter()
            .copied()
            .fold(f32::NEG_INFINITY, f32::max);
        if timestamp_mass > best_text {
            forbid(logits, 0..ts);
        }
    }
}

/// `log(softmax(x))`, stable for −∞ entries.
pub fn log_softmax(x: &[f32]) -> Vec<f32> {
    let total = log_sum_exp(x);
    x.iter().map(|&v| v - total).collect()
}

fn log_sum_exp(x: &[f32]) -> f32 {
    let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    if max == f32::NEG_INFINITY {
        return f32::NEG_INFINITY;
    }
    max + x.iter().map(|&v| (v - max).exp()).sum::<f32>().ln()
}

/// A timed run of text tokens in a window, times in seconds from the window's start.
#[derive(Debug, Clone, PartialEq)]
pub struct TimedTokens {
    /// Start, in seconds from the window's start.
    pub start_s: f64,
    /// End, in seconds from the window's start.
    pub end_s: f64,
    /// Its text tokens.
    pub tokens: Vec<u32>,
}

/// The segments of one decoded window (`tokens` without the end token) of `window_frames`
/// mel frames, and how many frames the next window starts after this one's start: at the
/// last closed timestamp when the window ends mid-segment (so that segment is decoded again,
/// whole, in the next window), else after the whole window.
pub fn window_segments(
    tokens: &[u32],
    specials: &Specials,
    window_frames: usize,
) -> (Vec<TimedTokens>, usize) {
    let ts = specials.timestamp_begin;
    let is_ts = |t: u32| t >= ts;
    let time = |t: u32| f64::from(t - ts) * TIMESTAMP_STEP_S;
    let text = |run: &[u32]| -> Vec<u32> {
        run.iter()
            .copied()
            .filter(|&t| t < specials.end_of_text)
            .collect()
    };
    let n = tokens.len();
    let single_ending = n >= 2 && !is_ts(tokens[n - 2]) && is_ts(tokens[n - 1]);
    let mut cuts: Vec<usize> = (1..n)
        .filter(|&i| is_ts(tokens[i]) && is_ts(tokens[i - 1]))
        .collect();
    let window_s = window_frames as f64 / (FRAMES_PER_TIMESTAMP as f64 / TIMESTAMP_STEP_S);
    if cuts.is_empty() {
        let end_s = match tokens.iter().rev().find(|&&t| is_ts(t)) {
            Some(&t) if t != ts => time(t),
            _ => window_s,
        };
        let tokens = text(tokens);
        let segments = if tokens.is_empty() {
            Vec::new()
        } else {
            vec![TimedTokens {
                start_s: 0.0,
                end_s,
                tokens,
            }]
        };
        return (segments, window_frames);
    }
    if single_ending {
        cuts.push(n);
    }
    let mut segments = Vec::new();
    let mut from = 0;
    for &cut in &cuts {
        let run = &tokens[from..cut];
        if let (Some(&first), Some(&last)) = (run.first(), run.last()) {
            let tokens = text(run);
            if is_ts(first) && is_ts(last) && !tokens.is_empty() {
                segments.push(TimedTokens {
                    start_s: time(first),
                    end_s: time(last),
                    tokens,
                });
            }
        }
        from = cut;
    }
    let advance = if single_ending {
        window_frames
    } else {
        let last = tokens[from - 1];
        (last.saturating_sub(ts) as usize * FRAMES_PER_TIMESTAMP).min(window_frames)
    };
    // A window that closed nothing after its start would be decoded again forever.
    (segments, if advance == 0 { window_frames } else { advance })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    /// Text 0..10, end 10, specials 11..13, timestamps from 14 (0.00 s) to 1514 (30.00 s).
    fn specials() -> Specials {
        Specials {
            end_of_text: 10,
            start_of_transcript: 11,
            no_speech: 12,
            no_timestamps: 13,
            timestamp_begin: 14,
            english: None,
            transcribe: None,
        }
    }

    fn rules() -> Rules {
        Rules::new(specials(), vec![3], vec![0, 10])
    }

    fn allowed(sampled: &[u32], logits: &[f32]) -> Vec<usize> {
        let mut logits = logits.to_vec();
        rules().constrain(&mut logits, sampled);
        (0..logits.len())
            .filter(|&i| logits[i].is_finite())
            .collect()
    }

    const VOCAB: usize = 1515;

    #[test]
    fn a_window_starts_with_an_early_timestamp() {
        let got = allowed(&[], &vec![0.0; VOCAB]);
        assert_eq!(got, (14..=64).collect::<Vec<_>>());
    }

    #[test]
    fn timestamps_pair_up_and_never_go_back() {
        // Text likely, timestamps not: after "<|0.40|> word" any text but 3 (suppressed), the
        // end, or a timestamp from 0.40 s on.
        let mut logits = vec![-5.0; VOCAB];
        logits[..=10].fill(5.0);
        let got = allowed(&[34, 5], &logits);
        let mut expected: Vec<usize> = (0..10).filter(|&i| i != 3).collect();
        expected.push(10);
        expected.extend(35..VOCAB);
        assert_eq!(got, expected);
        // After a closing timestamp (text, ts): another timestamp (not earlier) or the end.
        let got = allowed(&[34, 5, 40], &logits);
        let mut expected = vec![10];
        expected.extend(40..VOCAB);
        assert_eq!(got, expected);
        // After a pair: text only (and the end).
        let got = allowed(&[34, 5, 40, 40], &logits);
        assert_eq!(got, [0, 1, 2, 4, 5, 6, 7, 8, 9, 10]);
    }

    #[test]
    fn likely_timestamps_are_forced() {
        let mut logits = vec![0.0; VOCAB];
        logits[5] = 3.0; // the best text token, but 1 501 timestamps outweigh it together
        let got = allowed(&[14, 5], &logits);
        assert!(got.iter().all(|&i| i >= 14), "{got:?}");
    }

    #[test]
    fn pairs_become_segments_and_the_next_window_starts_at_the_last_closed_time() {
        let s = specials();
        // <|0.00|> a b <|1.00|><|1.00|> c <|2.00|><|2.00|> d (cut off)
        let tokens = [14, 1, 2, 64, 64, 3, 114, 114, 4];
        let (segments, advance) = window_segments(&tokens, &s, 3000);
        assert_eq!(segments.len(), 2);
        assert_eq!((segments[0].start_s, segments[0].end_s), (0.0, 1.0));
        assert_eq!(segments[0].tokens, [1, 2]);
        assert_eq!((segments[1].start_s, segments[1].end_s), (1.0, 2.0));
        assert_eq!(segments[1].tokens, [3]);
        assert_eq!(
            advance, 200,
            "the cut-off segment is decoded again from 2.00 s"
        );
        // Ending on a single timestamp closes the last segment and the whole window is done.
        let (segments, advance) = window_segments(&[14, 1, 64, 64, 2, 90], &s, 3000);
        assert_eq!(segments.len(), 2);
        assert_eq!((segments[1].start_s, segments[1].end_s), (1.0, 1.52));
        assert_eq!(advance, 3000);
    }

    #[test]
    fn unpaired_tokens_are_one_segment_and_empty_windows_none() {
        let s = specials();
        let (segments, advance) = window_segments(&[14, 1, 2, 64], &s, 1000);
        assert_eq!(segments.len(), 1);
        assert_eq!((segments[0].start_s, segments[0].end_s), (0.0, 1.0));
        assert_eq!(advance, 1000);
        let (segments, advance) = window_segments(&[], &s, 1000);
        assert!(segments.is_empty());
        assert_eq!(advance, 1000);
        // A window whose only pair is at 0.00 s moves on instead of looping.
        let (_, advance) = window_segments(&[14, 14, 1], &s, 3000);
        assert_eq!(advance, 3000);
    }
}
