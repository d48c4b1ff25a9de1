//! Prompt tokenizers for the text encoder.
//!
//! - [`ClipBpe`]: CLIP's byte-level BPE, read from a model directory's `tokenizer/vocab.json`
//!   and `tokenizer/merges.txt` (the files every Stable Diffusion 1.x/2.x directory ships).
//!   Real weights need it: it gives the token ids the text encoder was trained on. Text is
//!   lower-cased and its whitespace collapsed; CLIP's `ftfy` and HTML unescaping are not
//!   applied.
//! - [`PromptTokenizer::WordHash`]: a deterministic word-hash tokenizer for the pipeline test
//!   model, whose random text encoder has no vocabulary to match. Each lower-cased word maps
//!   to a token id by hashing; different prompts give different ids. Never use it with real
//!   weights.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// Why a tokenizer could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    /// A file could not be read.
    #[error("read tokenizer file {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A file is not what CLIP's tokenizer needs.
    #[error("tokenizer file {path} is invalid: {reason}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
}

const BOS: &str = "<|startoftext|>";
const EOS: &str = "<|endoftext|>";

/// CLIP's byte-level BPE tokenizer.
#[derive(Debug, Clone)]
pub struct ClipBpe {
    vocab: HashMap<String, u32>,
    ranks: HashMap<(String, String), usize>,
    byte_chars: [char; 256],
    bos: u32,
    eos: u32,
}

/// CLIP's (and GPT-2's) reversible map from bytes to printable characters.
fn byte_chars() -> [char; 256] {
    let printable = |b: u32| (33..=126).contains(&b) || (161..=172).contains(&b) || b >= 174;
    let mut out = ['\0'; 256];
    let mut next = 256;
    for b in 0u32..256 {
        let c = if printable(b) {
            b
        } else {
            next += 1;
            next - 1
        };
        out[b as usize] = char::from_u32(c).unwrap_or('\u{fffd}');
    }
    out
}

/// Splits lower-cased text as CLIP's pattern does: contractions, letter runs, single digits,
/// and runs of other non-space characters.
fn pre_tokenize(text: &str) -> Vec<String> {
    const CONTRACTIONS: [&str; 7] = ["'s", "'t", "'re", "'ve", "'m", "'ll", "'d"];
    let chars: Vec<char> = text.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let rest: String = chars[i..chars.len().min(i + 3)].iter().collect();
        if let Some(k) = CONTRACTIONS.iter().find(|k| rest.starts_with(**k)) {
            out.push((*k).to_owned());
            i += k.chars().count();
        } else if c.is_alphabetic() {
            let start = i;
            while i < chars.len() && chars[i].is_alphabetic() {
                i += 1;
            }
            out.push(chars[start..i].iter().collect());
        } else if c.is_numeric() {
            out.push(c.to_string());
            i += 1;
        } else if c.is_whitespace() {
            i += 1;
        } else {
            let start = i;
            while i < chars.len()
                && !(chars[i].is_whitespace() || chars[i].is_alphabetic() || chars[i].is_numeric())
            {
                i += 1;
            }
            out.push(chars[start..i].iter().collect());
        }
    }
    out
}

impl ClipBpe {
    /// Reads `vocab.json` and `merges.txt` from `dir`.
    pub fn load(dir: &Path) -> Result<Self, TokenizerError> {
        let read = |name: &str| {
            let path = dir.join(name);
            std::fs::read_to_string(&path).map_err(|source| TokenizerError::Io { path, source })
        };
        let invalid = |name: &str, reason: String| TokenizerError::Invalid {
            path: dir.join(name),
            reason,
        };
        let vocab: HashMap<String, u32> = serde_json::from_str(&read("vocab.json")?)
            .map_err(|e| invalid("vocab.json", format!("not a JSON map of token → id: {e}")))?;
        let mut ranks = HashMap::new();
        for line in read("merges.txt")?.lines() {
            if line.starts_with("#version") || line.trim().is_empty() {
                continue;
            }
            let Some((a, b)) = line.split_once(' ') else {
                return Err(invalid(
                    "merges.txt",
                    format!("line {line:?} is not a pair"),
                ));
            };
            let rank = ranks.len();
            ranks.entry((a.to_owned(), b.to_owned())).or_insert(rank);
        }
        let special = |t: &str| {
            vocab
                .get(t)
                .copied()
                .ok_or_else(|| invalid("vocab.json", format!("it has no {t} token")))
        };
        Ok(Self {
            bos: special(BOS)?,
            eos: special(EOS)?,
            vocab,
            ranks,
            byte_chars: byte_chars(),
        })
    }

    /// The id of a token, if the vocabulary has it.
    pub fn token_id(&self, token: &str) -> Option<u32> {
        self.vocab.get(token).copied()
    }

    /// The end-of-text id (also the default padding).
    pub fn eos(&self) -> u32 {
        self.eos
    }

    /// BPE of one pre-token (already mapped to byte characters).
    fn bpe(&self, word: &str) -> Vec<String> {
        let mut parts: Vec<String> = word.chars().map(String::from).collect();
        if let Some(last) = parts.last_mut() {
            last.push_str("</w>");
        }
        while parts.len() > 1 {
            let best = parts
                .windows(2)
                .enumerate()
                .filter_map(|(i, w)| {
                    self.ranks
                        .get(&(w[0].clone(), w[1].clone()))
                        .map(|&r| (r, i))
                })
                .min();
            let Some((_, i)) = best else { break };
            let (a, b) = (parts[i].clone(), parts[i + 1].clone());
            // Merge every occurrence of the pair, left to right.
            let mut merged = Vec::with_capacity(parts.len());
            let mut j = 0;
            while j < parts.len() {
                if j + 1 < parts.len() && parts[j] == a && parts[j + 1] == b {
                    merged.push(format!("{a}{b}"));
                    j += 2;
                } else {
                    merged.push(parts[j].clone());
                    j += 1;
                }
            }
            parts = merged;
        }
        parts
    }

    /// The token ids of `text`, without start/end tokens (unknown pieces are dropped).
    pub fn encode(&self, text: &str) -> Vec<u32> {
        let text = text
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
            .to_lowercase();
        pre_tokenize(&text)
            .iter()
            .flat_map(|word| {
                let mapped: String = word.bytes().map(|b| self.byte_chars[b as usize]).collect();
                self.bpe(&mapped)
            })
            .filter_map(|piece| self.vocab.get(&piece).copied())
            .collect()
    }
}

/// How a prompt becomes token ids.
#[derive(Debug, Clone)]
pub enum PromptTokenizer {
    /// CLIP's BPE (real weights).
    Clip {
        /// The tokenizer.
        bpe: Box<ClipBpe>,
        /// The padding id (end-of-text, or `!` for the SD 2.x encoders).
        pad: u32,
    },
    /// Word hashing for the pipeline test model only (see the module docs).
    WordHash {
        /// Ids are in `0..vocab_size`; the last two are start and end.
        vocab_size: u32,
    },
}

impl PromptTokenizer {
    /// `[start, tokens…, end, pad…]`, exactly `len` ids (tokens past `len − 2` are dropped).
    pub fn encode_padded(&self, prompt: &str, len: usize) -> Vec<u32> {
        let (bos, eos, pad, ids) = match self {
            Self::Clip { bpe, pad } => (bpe.bos, bpe.eos, *pad, bpe.encode(prompt)),
            Self::WordHash { vocab_size } => {
                let (bos, eos) = (vocab_size - 2, vocab_size - 1);
                let ids = prompt
                    .split(|c: char| !c.is_alphanumeric())
                    .filter(|w| !w.is_empty())
                    .map(|w| {
                        let h = w.to_lowercase().bytes().fold(0x811c_9dc5u32, |h, b| {
                            (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
                        });
                        h % (vocab_size - 2)
                    })
                    .collect();
                (bos, eos, eos, ids)
            }
        };
        let mut out = Vec::with_capacity(len);
        out.push(bos);
        out.extend(ids.into_iter().take(len.saturating_sub(2)));
        out.push(eos);
        out.resize(len, pad);
        out.truncate(len);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A miniature CLIP vocabulary: bytes, a few merges, the special tokens.
    fn tiny_clip(dir: &Path) -> ClipBpe {
        let chars = byte_chars();
        let mut vocab: HashMap<String, u32> = HashMap::new();
        for c in chars {
            let n = vocab.len() as u32;
            vocab.insert(c.to_string(), n);
        }
        for c in chars {
            let n = vocab.len() as u32;
            vocab.insert(format!("{c}</w>"), n);
        }
        let merges = ["c a", "ca t</w>", "d o", "do g</w>", "' s</w>"];
        for m in merges {
            let n = vocab.len() as u32;
            vocab.insert(m.replace(' ', ""), n);
        }
        for t in [BOS, EOS] {
            let n = vocab.len() as u32;
            vocab.insert(t.to_owned(), n);
        }
        std::fs::write(
            dir.join("vocab.json"),
            serde_json::to_string(&vocab).unwrap(),
        )
        .unwrap();
        std::fs::write(
            dir.join("merges.txt"),
            format!("#version: 0.2\n{}\n", merges.join("\n")),
        )
        .unwrap();
        ClipBpe::load(dir).unwrap()
    }

    #[test]
    fn clip_bpe_merges_words_and_pads() {
        let dir = tempfile::tempdir().unwrap();
        let bpe = tiny_clip(dir.path());
        let id = |t: &str| bpe.token_id(t).unwrap();
        assert_eq!(bpe.encode("A  CAT"), vec![id("a</w>"), id("cat</w>")]);
        assert_eq!(bpe.encode("dog's"), vec![id("dog</w>"), id("'s</w>")]);
        assert_eq!(bpe.encode("cats"), vec![id("ca"), id("t"), id("s</w>")]);
        assert_eq!(bpe.encode("7!?"), vec![id("7</w>"), id("!"), id("?</w>")]);
        let tok = PromptTokenizer::Clip {
            pad: bpe.eos(),
            bpe: Box::new(bpe.clone()),
        };
        let ids = tok.encode_padded("cat", 5);
        assert_eq!(ids, vec![bpe.bos, id("cat</w>"), bpe.eos, bpe.eos, bpe.eos]);
    }

    #[test]
    fn clip_bpe_load_names_the_missing_file() {
        let dir = tempfile::tempdir().unwrap();
        let err = ClipBpe::load(dir.path()).unwrap_err();
        assert!(err.to_string().contains("vocab.json"), "{err}");
    }

    #[test]
    fn word_hash_is_deterministic_and_tells_prompts_apart() {
        let tok = PromptTokenizer::WordHash { vocab_size: 100 };
        let a = tok.encode_padded("A red fox", 8);
        assert_eq!(a, tok.encode_padded("a  RED fox!", 8));
        assert_ne!(a, tok.encode_padded("a blue fox", 8));
        assert_eq!(a.len(), 8);
        assert_eq!((a[0], a[4], a[7]), (98, 99, 99));
        assert!(a[1..4].iter().all(|&t| t < 98));
        assert_eq!(tok.encode_padded("one two three four five", 4).len(), 4);
    }
}
