//! Whisper's vocabulary: token ids to text, and the ids of the special tokens decoding needs.
//!
//! `vocabulary.txt` lists one token per line, line *n* (from 0) being token *n*, in GPT-2's
//! byte-level form: each byte of the UTF-8 text is written as one printable character (bytes
//! that are printable Latin-1 stand for themselves, the others are shifted to U+0100 and up).
//! Decoding maps every character back to its byte and reads the bytes as UTF-8.

use std::collections::HashMap;

/// Why the vocabulary could not be used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum VocabularyError {
    /// A special token decoding needs is absent.
    #[error("the vocabulary has no {0} token")]
    Missing(&'static str),
    /// A token holds a character that stands for no byte.
    #[error("token {id} holds {ch:?}, which is not a byte-level character")]
    NotByteLevel {
        /// The token id.
        id: usize,
        /// The character.
        ch: char,
    },
}

/// Ids of the special tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Specials {
    /// `<|endoftext|>`.
    pub end_of_text: u32,
    /// `<|startoftranscript|>`.
    pub start_of_transcript: u32,
    /// `<|nocaptions|>` (no speech).
    pub no_speech: u32,
    /// `<|notimestamps|>`.
    pub no_timestamps: u32,
    /// `<|0.00|>`, the first timestamp; timestamps follow it in steps of 20 ms.
    pub timestamp_begin: u32,
    /// `<|en|>`, present in multilingual vocabularies only.
    pub english: Option<u32>,
    /// `<|transcribe|>`, present in multilingual vocabularies only.
    pub transcribe: Option<u32>,
}

/// The vocabulary, as bytes per token.
#[derive(Debug, Clone)]
pub struct Vocabulary {
    tokens: Vec<Vec<u8>>,
    specials: Specials,
}

/// GPT-2's byte → character table, inverted.
fn char_to_byte() -> HashMap<char, u8> {
    let printable = |b: u8| matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
    let mut shifted = 0u32;
    let mut map = HashMap::with_capacity(256);
    for b in 0..=255u8 {
        let ch = if printable(b) {
            char::from(b)
        } else {
            shifted += 1;
            char::from_u32(255 + shifted).unwrap_or(char::REPLACEMENT_CHARACTER)
        };
        map.insert(ch, b);
    }
    map
}

impl Vocabulary {
    /// Reads `vocabulary.txt`'s text.
    pub fn parse(text: &str) -> Result<Self, VocabularyError> {
        let table = char_to_byte();
        let lines: Vec<&str> = text.lines().collect();
        let id = |token: &str| lines.iter().position(|&l| l == token).map(|i| i as u32);
        let need = |name: &'static str| id(name).ok_or(VocabularyError::Missing(name));
        let specials = Specials {
            end_of_text: need("<|endoftext|>")?,
            start_of_transcript: need("<|startoftranscript|>")?,
            no_speech: need("<|nocaptions|>").or_else(|_| need("<|nospeech|>"))?,
            no_timestamps: need("<|notimestamps|>")?,
            timestamp_begin: need("<|0.00|>")?,
            english: id("<|en|>"),
            transcribe: id("<|transcribe|>"),
        };
        let mut tokens = Vec::with_capacity(lines.len());
        for (i, line) in lines.iter().enumerate() {
            if line.starts_with("<|") && line.ends_with("|>") {
                tokens.push(Vec::new());
                continue;
            }
            let bytes = line
                .chars()
                .map(|ch| {
                    table
                        .get(&ch)
                        .copied()
                        .ok_or(VocabularyError::NotByteLevel { id: i, ch })
                })
                .collect::<Result<Vec<u8>, _>>()?;
            tokens.push(bytes);
        }
        Ok(Self { tokens, specials })
    }

    /// The special tokens' ids.
    pub fn specials(&self) -> Specials {
        self.specials
    }

    /// Tokens in the vocabulary.
    pub fn len(&self) -> usize {
        self.tokens.len()
    }

    /// Whether it is empty (never, once parsed).
    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }

    /// The text of text tokens (special tokens and unknown ids add nothing); invalid UTF-8
    /// (a character split across a cut) becomes U+FFFD.
    pub fn decode(&self, ids: &[u32]) -> String {
        let bytes: Vec<u8> = ids
            .iter()
            .filter_map(|&id| self.tokens.get(id as usize))
            .flatten()
            .copied()
            .collect();
        String::from_utf8_lossy(&bytes).into_owned()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn sample() -> Vocabulary {
        let text = "Hello\nĠworld\nĠcaf\nÃ©\nĊ\n<|endoftext|>\n<|startoftranscript|>\n\
                    <|nocaptions|>\n<|notimestamps|>\n<|0.00|>\n<|0.02|>\nÃ\n";
        Vocabulary::parse(text).unwrap()
    }

    #[test]
    fn byte_level_tokens_decode_to_utf8_text() {
        let v = sample();
        assert_eq!(v.decode(&[0, 1]), "Hello world");
        assert_eq!(v.decode(&[2, 3, 4]), " café\n");
        // Special tokens and ids past the end add nothing.
        assert_eq!(v.decode(&[0, 5, 9, 99]), "Hello");
        // Half a character is replaced, not a panic.
        assert_eq!(v.decode(&[0, 11]), "Hello\u{fffd}");
    }

    #[test]
    fn specials_are_found_and_their_absence_named() {
        let s = sample().specials();
        assert_eq!(
            (s.end_of_text, s.start_of_transcript, s.no_speech),
            (5, 6, 7)
        );
        assert_eq!(
            (s.no_timestamps, s.timestamp_begin, s.english),
            (8, 9, None)
        );
        assert_eq!(
            Vocabulary::parse("a\nb\n").unwrap_err(),
            VocabularyError::Missing("<|endoftext|>")
        );
    }
}
