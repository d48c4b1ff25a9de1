//! Reads CTranslate2 model files (`model.bin`, binary format versions 4 to 6): the variables
//! (name, shape, element type, raw little-endian bytes) and the aliases between them.
//!
//! The layout, all little-endian: `u32` format version; `string` model spec and `u32` spec
//! revision; `u32` variable count; per variable `string` name, `u8` rank, `rank × u32`
//! dimensions, `u8` element type, `u32` byte count, the bytes; then `u32` alias count and per
//! alias `string` alias, `string` target. A `string` is a `u16` length (the terminating NUL
//! included) and its bytes. Every count and length is checked against the bytes left before
//! anything is allocated, so a damaged file is an error, never a huge allocation.

use std::collections::BTreeMap;

/// Oldest and newest format versions read (version 4 introduced the element-type byte).
const VERSIONS: std::ops::RangeInclusive<u32> = 4..=6;

/// Why a model file could not be read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Ct2Error {
    /// The file ends before a field it announces.
    #[error("model.bin ends early, at byte {offset}, reading {what}")]
    Truncated {
        /// Where the read started.
        offset: usize,
        /// What was being read.
        what: &'static str,
    },
    /// A format version this reader does not know.
    #[error("model.bin is format version {0}; this reader knows versions 4 to 6")]
    Version(u32),
    /// An element-type code this reader does not know.
    #[error("variable {name:?} has element type {code}, which is not a known type")]
    ElementType {
        /// The variable.
        name: String,
        /// The type code.
        code: u8,
    },
    /// A variable's byte count does not match its shape and type.
    #[error("variable {name:?} has {bytes} bytes; its shape {shape:?} needs {expected}")]
    Size {
        /// The variable.
        name: String,
        /// Its dimensions.
        shape: Vec<usize>,
        /// Bytes in the file.
        bytes: usize,
        /// Bytes its shape and type need.
        expected: usize,
    },
    /// A name is not UTF-8.
    #[error("a name in model.bin is not UTF-8 (at byte {0})")]
    Name(usize),
    /// Bytes follow the aliases.
    #[error("model.bin has {0} bytes after its last alias")]
    Trailing(usize),
}

/// Element types of CTranslate2 variables.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ElementType {
    /// 32-bit float.
    F32,
    /// 8-bit integer.
    I8,
    /// 16-bit integer.
    I16,
    /// 32-bit integer.
    I32,
    /// 16-bit float (IEEE half).
    F16,
    /// bfloat16.
    Bf16,
}

impl ElementType {
    fn from_code(code: u8) -> Option<Self> {
        Some(match code {
            0 => Self::F32,
            1 => Self::I8,
            2 => Self::I16,
            3 => Self::I32,
            4 => Self::F16,
            5 => Self::Bf16,
            _ => return None,
        })
    }

    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            Self::I8 => 1,
            Self::I16 | Self::F16 | Self::Bf16 => 2,
            Self::F32 | Self::I32 => 4,
        }
    }
}

/// One variable of the model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Variable<'a> {
    /// Dimensions (empty for a scalar).
    pub shape: Vec<usize>,
    /// Element type.
    pub element: ElementType,
    /// The raw little-endian bytes.
    pub bytes: &'a [u8],
}

impl Variable<'_> {
    /// The value of an integer scalar (`i8`, `i16` or `i32`), e.g. a head count.
    pub fn scalar_int(&self) -> Option<i64> {
        let b = self.bytes;
        match (self.element, b.len()) {
            (ElementType::I8, 1) => Some(i64::from(b[0] as i8)),
            (ElementType::I16, 2) => Some(i64::from(i16::from_le_bytes([b[0], b[1]]))),
            (ElementType::I32, 4) => Some(i64::from(i32::from_le_bytes([b[0], b[1], b[2], b[3]]))),
            _ => None,
        }
    }
}

/// A model file's contents, borrowing the file's bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ct2Model<'a> {
    /// The model specification, e.g. `WhisperSpec`.
    pub spec: String,
    /// Its revision.
    pub spec_revision: u32,
    /// Variables by name.
    pub variables: BTreeMap<String, Variable<'a>>,
    /// Aliases: alias name → the variable it names.
    pub aliases: BTreeMap<String, String>,
}

impl<'a> Ct2Model<'a> {
    /// Parses a whole `model.bin`.
    pub fn parse(bytes: &'a [u8]) -> Result<Self, Ct2Error> {
        let mut r = Reader { bytes, at: 0 };
        let version = r.u32("format version")?;
        if !VERSIONS.contains(&version) {
            return Err(Ct2Error::Version(version));
        }
        let spec = r.string("model spec")?;
        let spec_revision = r.u32("spec revision")?;
        let count = r.u32("variable count")?;
        let mut variables = BTreeMap::new();
        for _ in 0..count {
            let (name, variable) = r.variable()?;
            variables.insert(name, variable);
        }
        let mut aliases = BTreeMap::new();
        let count = r.u32("alias count")?;
        for _ in 0..count {
            let alias = r.string("alias")?;
            let target = r.string("alias target")?;
            aliases.insert(alias, target);
        }
        if r.at != bytes.len() {
            return Err(Ct2Error::Trailing(bytes.len() - r.at));
        }
        Ok(Self {
            spec,
            spec_revision,
            variables,
            aliases,
        })
    }

    /// The variable `name`, following an alias.
    pub fn get(&self, name: &str) -> Option<&Variable<'a>> {
        let name = self.aliases.get(name).map_or(name, String::as_str);
        self.variables.get(name)
    }
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], Ct2Error> {
        let end = self
            .at
            .checked_add(n)
            .filter(|&end| end <= self.bytes.len());
        let end = end.ok_or(Ct2Error::Truncated {
            offset: self.at,
            what,
        })?;
        let slice = &self.bytes[self.at..end];
        self.at = end;
        Ok(slice)
    }

    fn u8(&mut self, what: &'static str) -> Result<u8, Ct2Error> {
        Ok(self.take(1, what)?[0])
    }

    fn u32(&mut self, what: &'static str) -> Result<u32, Ct2Error> {
        let b = self.take(4, what)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn string(&mut self, what: &'static str) -> Result<String, Ct2Error> {
        let at = self.at;
        let b = self.take(2, what)?;
        let len = usize::from(u16::from_le_bytes([b[0], b[1]]));
        let raw = self.take(len, what)?;
        let raw = raw.strip_suffix(&[0]).unwrap_or(raw);
        String::from_utf8(raw.to_vec()).map_err(|_| Ct2Error::Name(at))
    }

    fn variable(&mut self) -> Result<(String, Variable<'a>), Ct2Error> {
        let name = self.string("variable name")?;
        let rank = usize::from(self.u8("rank")?);
        let mut shape = Vec::with_capacity(rank);
        for _ in 0..rank {
            shape.push(self.u32("dimension")? as usize);
        }
        let code = self.u8("element type")?;
        let element = ElementType::from_code(code).ok_or_else(|| Ct2Error::ElementType {
            name: name.clone(),
            code,
        })?;
        let size = self.u32("byte count")? as usize;
        let expected = shape
            .iter()
            .try_fold(element.size(), |n, &d| n.checked_mul(d))
            .unwrap_or(usize::MAX);
        if size != expected {
            return Err(Ct2Error::Size {
                name,
                shape,
                bytes: size,
                expected,
            });
        }
        let bytes = self.take(size, "variable bytes")?;
        Ok((
            name,
            Variable {
                shape,
                element,
                bytes,
            },
        ))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn string(out: &mut Vec<u8>, s: &str) {
        out.extend_from_slice(&(s.len() as u16 + 1).to_le_bytes());
        out.extend_from_slice(s.as_bytes());
        out.push(0);
    }

    /// A version-6 file with a 2×2 f16 matrix, an i16 scalar and one alias.
    fn sample() -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&6u32.to_le_bytes());
        string(&mut out, "WhisperSpec");
        out.extend_from_slice(&3u32.to_le_bytes());
        out.extend_from_slice(&2u32.to_le_bytes());
        string(&mut out, "a/weight");
        out.push(2);
        out.extend_from_slice(&2u32.to_le_bytes());
        out.extend_from_slice(&2u32.to_le_bytes());
        out.push(4);
        out.extend_from_slice(&8u32.to_le_bytes());
        out.extend_from_slice(&[1, 2, 3, 4, 5, 6, 7, 8]);
        string(&mut out, "a/num_heads");
        out.push(0);
        out.push(2);
        out.extend_from_slice(&2u32.to_le_bytes());
        out.extend_from_slice(&6i16.to_le_bytes());
        out.extend_from_slice(&1u32.to_le_bytes());
        string(&mut out, "b/weight");
        string(&mut out, "a/weight");
        out
    }

    #[test]
    fn reads_variables_scalars_and_aliases() {
        let bytes = sample();
        let model = Ct2Model::parse(&bytes).unwrap();
        assert_eq!(model.spec, "WhisperSpec");
        assert_eq!(model.spec_revision, 3);
        let w = model.get("b/weight").unwrap();
        assert_eq!(w.shape, [2, 2]);
        assert_eq!(w.element, ElementType::F16);
        assert_eq!(w.bytes, [1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(model.get("a/num_heads").unwrap().scalar_int(), Some(6));
    }

    #[test]
    fn every_truncation_and_a_lying_size_is_an_error() {
        let bytes = sample();
        for len in 0..bytes.len() {
            assert!(
                Ct2Model::parse(&bytes[..len]).is_err(),
                "parsed {len} bytes"
            );
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert_eq!(Ct2Model::parse(&longer), Err(Ct2Error::Trailing(1)));
        let mut lying = bytes;
        // The first variable's byte count (8) claims 4 GiB - 1 instead.
        let at = 4 + 2 + 12 + 4 + 4 + 2 + 9 + 1 + 8 + 1;
        lying[at..at + 4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(
            Ct2Model::parse(&lying),
            Err(Ct2Error::Size { expected: 8, .. })
        ));
    }
}
