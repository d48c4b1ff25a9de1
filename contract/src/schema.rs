//! Schema versions of the messages components send each other, so that regions can be
//! upgraded one at a time while others still run the previous release.
//!
//! Each message kind carries a `schema` field, `"MAJOR.MINOR"`. A minor version only adds
//! fields, which older readers ignore (wire types never reject unknown fields), so a reader
//! accepts every minor version of a major version it knows. A new major version is a change
//! older readers cannot follow; they refuse it with an error naming both versions
//! ([`SchemaError`]). A message without a `schema` field is `1.0`, the shape before
//! versions were written.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A message schema version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Schema {
    /// Changes readers of an older major version cannot follow.
    pub major: u32,
    /// Added fields; readers of the same major version ignore what they do not know.
    pub minor: u32,
}

impl Schema {
    /// A version.
    pub const fn new(major: u32, minor: u32) -> Self {
        Self { major, minor }
    }

    /// The version of messages sent before versions were written.
    pub const UNVERSIONED: Self = Self::new(1, 0);

    /// Checks that a reader of `self` can read a `kind` message of version `received`.
    pub fn accepts(self, kind: &'static str, received: Schema) -> Result<(), SchemaError> {
        if received.major == self.major {
            Ok(())
        } else {
            Err(SchemaError {
                kind,
                received,
                reader: self,
            })
        }
    }
}

impl Default for Schema {
    fn default() -> Self {
        Self::UNVERSIONED
    }
}

impl fmt::Display for Schema {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.major, self.minor)
    }
}

impl std::str::FromStr for Schema {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let parse = |part: &str| part.parse::<u32>().ok();
        match s.split_once('.') {
            Some((major, minor)) => match (parse(major), parse(minor)) {
                (Some(major), Some(minor)) => Ok(Self::new(major, minor)),
                _ => Err(format!("schema {s:?} is not MAJOR.MINOR, e.g. \"1.0\"")),
            },
            None => Err(format!("schema {s:?} is not MAJOR.MINOR, e.g. \"1.0\"")),
        }
    }
}

impl Serialize for Schema {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Schema {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// A message of a major version the reader does not know.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{kind} schema {received} cannot be read here: this build reads {kind} schema {}.x \
     (it writes {reader}); upgrade the older of the two components",
    .reader.major
)]
pub struct SchemaError {
    /// The message kind, e.g. `heartbeat`.
    pub kind: &'static str,
    /// The version received.
    pub received: Schema,
    /// The version the reader writes.
    pub reader: Schema,
}

/// The edge's snapshot (`GET /edge/v1/snapshot`). 1.1 added `schema`, the catalog
/// revision and tolerance of unknown fields; 1.2 the instances that may hold jobs.
pub const SNAPSHOT: Schema = Schema::new(1, 2);
/// An agent's registration and heartbeat report. 1.1 added `schema` and the revision of
/// the catalog the agent holds; 1.2 added each tenant's jobs queued or running; 1.3 the
/// agent's instance id within its region; 1.4 its endpoint, its share of the region's
/// pools and its result retention.
pub const HEARTBEAT: Schema = Schema::new(1, 4);
/// An agent's catalog (`GET /agent/v1/regions/{id}/catalog`).
pub const AGENT_CATALOG: Schema = Schema::new(1, 0);
/// A numbered usage batch of per-hour aggregates (`POST /agent/v1/usage`).
pub const USAGE_BATCH: Schema = Schema::new(1, 0);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minor_versions_are_read_and_other_majors_refused_naming_both() {
        let reader = Schema::new(1, 1);
        assert!(reader.accepts("heartbeat", Schema::new(1, 0)).is_ok());
        assert!(reader.accepts("heartbeat", Schema::new(1, 7)).is_ok());
        let err = reader
            .accepts("heartbeat", Schema::new(2, 0))
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "heartbeat schema 2.0 cannot be read here: this build reads heartbeat schema 1.x \
             (it writes 1.1); upgrade the older of the two components"
        );
    }

    #[test]
    fn versions_travel_as_strings() {
        assert_eq!(
            serde_json::to_string(&Schema::new(1, 2)).unwrap(),
            "\"1.2\""
        );
        let read: Schema = serde_json::from_str("\"3.10\"").unwrap();
        assert_eq!(read, Schema::new(3, 10));
        assert!(serde_json::from_str::<Schema>("\"1\"").is_err());
        assert!(serde_json::from_str::<Schema>("\"1.x\"").is_err());
    }
}
