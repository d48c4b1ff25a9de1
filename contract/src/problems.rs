//! Configuration problems: each names the place of the offending value, what is wrong with
//! it and how to fix it. Every component checks its configuration (and the control plane
//! every catalog write) by collecting all problems into [`ConfigProblems`], so a user sees
//! every mistake at once, not one per try.
//!
//! Configuration files reject fields they do not know ([`from_toml_strict`],
//! [`from_json_strict`]), naming the field and its line, while wire messages between
//! components read with plain serde and tolerate fields a newer sender added.

use std::fmt;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// One problem in a configuration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigProblem {
    /// Where the value is, e.g. `regions[2].pools[0].reserved` or `control_plane.url`.
    pub place: String,
    /// What is wrong with it.
    pub problem: String,
    /// How to fix it.
    pub fix: String,
}

impl ConfigProblem {
    /// A problem at `place`.
    pub fn new(
        place: impl Into<String>,
        problem: impl Into<String>,
        fix: impl Into<String>,
    ) -> Self {
        Self {
            place: place.into(),
            problem: problem.into(),
            fix: fix.into(),
        }
    }
}

impl fmt::Display for ConfigProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}; fix: {}", self.place, self.problem, self.fix)
    }
}

/// Every problem found in a configuration: the collector while checking, the error after.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConfigProblems(Vec<ConfigProblem>);

impl ConfigProblems {
    /// No problems yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records a problem at `place`.
    pub fn add(
        &mut self,
        place: impl Into<String>,
        problem: impl Into<String>,
        fix: impl Into<String>,
    ) {
        self.0.push(ConfigProblem::new(place, problem, fix));
    }

    /// Records a problem already built.
    pub fn push(&mut self, problem: ConfigProblem) {
        self.0.push(problem);
    }

    /// Records every problem of `other`.
    pub fn extend(&mut self, other: impl IntoIterator<Item = ConfigProblem>) {
        self.0.extend(other);
    }

    /// Whether nothing was found.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// How many problems were found.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// The problems, in the order they were found.
    pub fn iter(&self) -> impl Iterator<Item = &ConfigProblem> {
        self.0.iter()
    }

    /// Whether a problem was reported at exactly `place`.
    pub fn has_place(&self, place: &str) -> bool {
        self.0.iter().any(|p| p.place == place)
    }

    /// `Ok(value)` when nothing was found, else every problem.
    pub fn into_result<T>(self, value: T) -> Result<T, Self> {
        if self.0.is_empty() {
            Ok(value)
        } else {
            Err(self)
        }
    }

    /// The problems as a list.
    pub fn into_vec(self) -> Vec<ConfigProblem> {
        self.0
    }
}

impl From<Vec<ConfigProblem>> for ConfigProblems {
    fn from(problems: Vec<ConfigProblem>) -> Self {
        Self(problems)
    }
}

impl IntoIterator for ConfigProblems {
    type Item = ConfigProblem;
    type IntoIter = std::vec::IntoIter<ConfigProblem>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.into_iter()
    }
}

impl fmt::Display for ConfigProblems {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.0.len();
        write!(
            f,
            "{n} problem{} in the configuration:",
            if n == 1 { "" } else { "s" }
        )?;
        for p in &self.0 {
            write!(f, "\n  - {p}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigProblems {}

/// Why a component's configuration cannot be used: every component's configuration loader
/// answers with this.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file cannot be read.
    #[error("cannot read {}: {source}", .path.display())]
    Read {
        /// The file.
        path: std::path::PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid TOML for the configuration's schema (the message names the
    /// line).
    #[error("cannot parse {}: {source}", .path.as_deref().map_or("the configuration".into(), |p| p.display().to_string()))]
    Parse {
        /// The file, when the configuration came from one.
        path: Option<std::path::PathBuf>,
        /// What the parser said.
        #[source]
        source: ParseError,
    },
    /// Values break the rules (or name fields the configuration does not have).
    #[error("{0}")]
    Invalid(ConfigProblems),
}

impl ConfigError {
    /// Reads the text of the configuration file at `path`.
    pub fn read(path: &std::path::Path) -> Result<String, Self> {
        std::fs::read_to_string(path).map_err(|source| Self::Read {
            path: path.to_path_buf(),
            source,
        })
    }

    /// Parses TOML `text` (from the file at `path`, if any) strictly into `T`.
    pub fn parse<T: DeserializeOwned>(
        text: &str,
        path: Option<&std::path::Path>,
    ) -> Result<T, Self> {
        from_toml_strict(text).map_err(|source| Self::Parse {
            path: path.map(std::path::Path::to_path_buf),
            source,
        })
    }
}

/// Why a configuration file could not be read into its type.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// Not valid TOML or JSON, or a value of the wrong type (the parser's message names
    /// the line).
    #[error("{0}")]
    Syntax(String),
    /// Fields the configuration does not have (a misspelling, or a setting of another
    /// version).
    #[error("{}", unknown_list(.0))]
    UnknownFields(Vec<UnknownField>),
}

/// A field a configuration file names that its type does not have.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownField {
    /// Where, e.g. `tenants[0].latency_goal`.
    pub place: String,
    /// Its line in a TOML file (1-based), when known.
    pub line: Option<usize>,
}

fn unknown_list(fields: &[UnknownField]) -> String {
    fields
        .iter()
        .map(|f| {
            let line = f.line.map(|l| format!(" (line {l})")).unwrap_or_default();
            let name = f.place.rsplit('.').next().unwrap_or(&f.place);
            format!(
                "unknown field `{name}` at {}{line}: remove it or check its spelling",
                f.place
            )
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// A path inside a document, as serde_ignored reports it, in Meridian's `a[0].b` notation.
fn place_of(path: &serde_ignored::Path<'_>) -> (String, Vec<Step>) {
    fn walk(path: &serde_ignored::Path<'_>, steps: &mut Vec<Step>) {
        use serde_ignored::Path;
        match path {
            Path::Root => {}
            Path::Seq { parent, index } => {
                walk(parent, steps);
                steps.push(Step::Index(*index));
            }
            Path::Map { parent, key } => {
                walk(parent, steps);
                steps.push(Step::Key(key.clone()));
            }
            Path::Some { parent }
            | Path::NewtypeStruct { parent }
            | Path::NewtypeVariant { parent } => walk(parent, steps),
        }
    }
    let mut steps = Vec::new();
    walk(path, &mut steps);
    let mut place = String::new();
    for step in &steps {
        match step {
            Step::Index(i) => place.push_str(&format!("[{i}]")),
            Step::Key(k) if place.is_empty() => place.push_str(k),
            Step::Key(k) => {
                place.push('.');
                place.push_str(k);
            }
        }
    }
    (place, steps)
}

#[derive(Debug, Clone)]
enum Step {
    Key(String),
    Index(usize),
}

/// The 1-based line where the key at `steps` is written in TOML `text`.
fn toml_line(text: &str, steps: &[Step]) -> Option<usize> {
    use toml::de::{DeTable, DeValue};
    let table = DeTable::parse(text).ok()?;
    let mut span = None;
    let mut current: Option<&DeValue<'_>> = None;
    let root = table.get_ref();
    for step in steps {
        let map = match (current, step) {
            (None, Step::Key(_)) => Some(root),
            (Some(DeValue::Table(t)), Step::Key(_)) => Some(t),
            _ => None,
        };
        match step {
            Step::Key(key) => {
                let (k, v) = map?.iter().find(|(k, _)| k.get_ref().as_ref() == key)?;
                span = Some(k.span());
                current = Some(v.get_ref());
            }
            Step::Index(i) => match current {
                Some(DeValue::Array(items)) => current = Some(items.get(*i)?.get_ref()),
                _ => return None,
            },
        }
    }
    let start = span?.start;
    Some(text.get(..start)?.bytes().filter(|b| *b == b'\n').count() + 1)
}

/// Reads a TOML configuration, refusing fields its type does not have (each named with
/// its place and line).
pub fn from_toml_strict<T: DeserializeOwned>(text: &str) -> Result<T, ParseError> {
    let deserializer =
        toml::Deserializer::parse(text).map_err(|e| ParseError::Syntax(e.to_string()))?;
    let mut unknown = Vec::new();
    let value: T = serde_ignored::deserialize(deserializer, |path| {
        let (place, steps) = place_of(&path);
        unknown.push(UnknownField {
            line: toml_line(text, &steps),
            place,
        });
    })
    .map_err(|e| ParseError::Syntax(e.to_string()))?;
    if unknown.is_empty() {
        Ok(value)
    } else {
        Err(ParseError::UnknownFields(unknown))
    }
}

/// Reads a JSON configuration record (an admin API write), refusing fields its type does
/// not have.
pub fn from_json_strict<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ParseError> {
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    let mut unknown = Vec::new();
    let value: T = serde_ignored::deserialize(&mut deserializer, |path| {
        unknown.push(UnknownField {
            place: place_of(&path).0,
            line: None,
        });
    })
    .map_err(|e| ParseError::Syntax(e.to_string()))?;
    deserializer
        .end()
        .map_err(|e| ParseError::Syntax(e.to_string()))?;
    if unknown.is_empty() {
        Ok(value)
    } else {
        Err(ParseError::UnknownFields(unknown))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Deserialize)]
    struct File {
        name: String,
        #[serde(default)]
        pools: Vec<Pool>,
    }

    #[derive(Debug, Deserialize)]
    struct Pool {
        #[allow(dead_code)]
        id: String,
    }

    #[test]
    fn problems_are_listed_with_place_and_fix() {
        let mut problems = ConfigProblems::new();
        assert!(problems.clone().into_result(1).is_ok());
        problems.add("pools[0].reserved", "reserved is -2", "set 0 or more");
        problems.add("listen", "\"x\" is not an address", "write IP:PORT");
        assert!(problems.has_place("listen"));
        let text = problems.clone().into_result(()).unwrap_err().to_string();
        assert_eq!(
            text,
            "2 problems in the configuration:\n  - pools[0].reserved: reserved is -2; fix: set 0 \
             or more\n  - listen: \"x\" is not an address; fix: write IP:PORT"
        );
    }

    #[test]
    fn unknown_toml_fields_are_named_with_their_line() {
        let text =
            "name = \"a\"\n\n[[pools]]\nid = \"h100\"\n\n[[pools]]\nid = \"a100\"\nreserverd = 2\n";
        let err = from_toml_strict::<File>(text).unwrap_err();
        let ParseError::UnknownFields(fields) = &err else {
            panic!("{err}")
        };
        assert_eq!(fields[0].place, "pools[1].reserverd");
        assert_eq!(fields[0].line, Some(8));
        assert_eq!(
            err.to_string(),
            "unknown field `reserverd` at pools[1].reserverd (line 8): remove it or check its spelling"
        );
        let file: File = from_toml_strict("name = \"b\"\n[[pools]]\nid = \"x\"").unwrap();
        assert_eq!((file.name.as_str(), file.pools.len()), ("b", 1));
        let syntax = from_toml_strict::<File>("name = ").unwrap_err();
        assert!(syntax.to_string().contains("line 1"), "{syntax}");
    }

    #[test]
    fn unknown_json_fields_are_named() {
        let err =
            from_json_strict::<File>(br#"{"name":"a","pools":[{"id":"x","gpus":1}]}"#).unwrap_err();
        assert_eq!(
            err.to_string(),
            "unknown field `gpus` at pools[0].gpus: remove it or check its spelling"
        );
        assert!(from_json_strict::<File>(br#"{"name":"a"} x"#).is_err());
    }
}
