//! The envelope every record is stored in, so records written today survive schema changes.
//!
//! A record is stored as `{"v": <schema version>, "data": <the record>}`. Reading a record
//! of the current version decodes it directly; an older one goes through the type's
//! [`Versioned::upgrade`], which by default refuses with an error that names the type and
//! both versions; a newer one (written by a later Meridian) is always refused, since this
//! build cannot know what it may drop.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// A record type kept in the store, with its current schema version.
pub trait Versioned: Serialize + DeserializeOwned {
    /// What the records are, for error messages (`"region"`, `"api key"`).
    const KIND: &'static str;
    /// The schema version this build writes.
    const VERSION: u32;

    /// Turns the `data` of a record written with an older schema `version` into the current
    /// one. The default refuses every older version.
    fn upgrade(version: u32, data: serde_json::Value) -> Result<Self, VersionError> {
        let _ = data;
        Err(VersionError::Unsupported {
            kind: Self::KIND,
            found: version,
            current: Self::VERSION,
        })
    }
}

/// Why a stored record could not be read (or written).
#[derive(Debug, thiserror::Error)]
pub enum VersionError {
    /// The bytes are not an envelope, or its data does not fit the schema it claims.
    #[error("malformed {kind} record: {source}")]
    Malformed {
        /// The record type.
        kind: &'static str,
        /// What the decoder said.
        source: serde_json::Error,
    },
    /// The record was written with an older schema this build cannot upgrade.
    #[error(
        "{kind} record has schema version {found}, which this build cannot upgrade to {current}"
    )]
    Unsupported {
        /// The record type.
        kind: &'static str,
        /// The version stored.
        found: u32,
        /// The version this build reads.
        current: u32,
    },
    /// The record was written by a newer build; upgrade this one before reading it.
    #[error(
        "{kind} record has schema version {found}, newer than this build's {current}: upgrade Meridian"
    )]
    TooNew {
        /// The record type.
        kind: &'static str,
        /// The version stored.
        found: u32,
        /// The version this build reads.
        current: u32,
    },
}

#[derive(Serialize)]
struct EnvelopeOut<'a, T> {
    v: u32,
    data: &'a T,
}

#[derive(Deserialize)]
struct EnvelopeIn {
    v: u32,
    data: serde_json::Value,
}

/// Encodes `record` in its envelope at the current schema version.
pub fn encode<T: Versioned>(record: &T) -> Result<Vec<u8>, VersionError> {
    serde_json::to_vec(&EnvelopeOut {
        v: T::VERSION,
        data: record,
    })
    .map_err(|source| VersionError::Malformed {
        kind: T::KIND,
        source,
    })
}

/// Decodes a stored record, upgrading it from an older schema when the type knows how.
pub fn decode<T: Versioned>(bytes: &[u8]) -> Result<T, VersionError> {
    let malformed = |source| VersionError::Malformed {
        kind: T::KIND,
        source,
    };
    let envelope: EnvelopeIn = serde_json::from_slice(bytes).map_err(malformed)?;
    match envelope.v {
        v if v == T::VERSION => serde_json::from_value(envelope.data).map_err(malformed),
        v if v > T::VERSION => Err(VersionError::TooNew {
            kind: T::KIND,
            found: v,
            current: T::VERSION,
        }),
        v => T::upgrade(v, envelope.data),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Version 1 of a record: a name only.
    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct RegionV1 {
        name: String,
    }

    impl Versioned for RegionV1 {
        const KIND: &'static str = "region";
        const VERSION: u32 = 1;
    }

    /// Version 2 added a jurisdiction and knows how to read version 1.
    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct RegionV2 {
        name: String,
        jurisdiction: String,
    }

    impl Versioned for RegionV2 {
        const KIND: &'static str = "region";
        const VERSION: u32 = 2;

        fn upgrade(version: u32, data: serde_json::Value) -> Result<Self, VersionError> {
            match version {
                1 => {
                    let old: RegionV1 =
                        serde_json::from_value(data).map_err(|source| VersionError::Malformed {
                            kind: Self::KIND,
                            source,
                        })?;
                    Ok(Self {
                        name: old.name,
                        jurisdiction: "unknown".into(),
                    })
                }
                found => Err(VersionError::Unsupported {
                    kind: Self::KIND,
                    found,
                    current: 2,
                }),
            }
        }
    }

    /// Version 3 dropped support for version 1 records.
    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct RegionV3 {
        id: String,
    }

    impl Versioned for RegionV3 {
        const KIND: &'static str = "region";
        const VERSION: u32 = 3;
    }

    #[test]
    fn a_record_round_trips_in_its_envelope() {
        let region = RegionV2 {
            name: "eu-west".into(),
            jurisdiction: "eu".into(),
        };
        let bytes = encode(&region).unwrap();
        let text = String::from_utf8(bytes.clone()).unwrap();
        assert_eq!(
            text,
            r#"{"v":2,"data":{"name":"eu-west","jurisdiction":"eu"}}"#
        );
        assert_eq!(decode::<RegionV2>(&bytes).unwrap(), region);
    }

    #[test]
    fn an_old_record_is_upgraded() {
        let old = encode(&RegionV1 {
            name: "us-east".into(),
        })
        .unwrap();
        let upgraded = decode::<RegionV2>(&old).unwrap();
        assert_eq!(
            upgraded,
            RegionV2 {
                name: "us-east".into(),
                jurisdiction: "unknown".into()
            }
        );
    }

    #[test]
    fn an_old_record_without_an_upgrade_is_refused_clearly() {
        let old = encode(&RegionV1 {
            name: "us-east".into(),
        })
        .unwrap();
        let error = decode::<RegionV3>(&old).unwrap_err();
        assert!(matches!(
            error,
            VersionError::Unsupported {
                kind: "region",
                found: 1,
                current: 3
            }
        ));
        assert_eq!(
            error.to_string(),
            "region record has schema version 1, which this build cannot upgrade to 3"
        );
    }

    #[test]
    fn a_newer_record_is_refused() {
        let new = encode(&RegionV3 { id: "x".into() }).unwrap();
        let error = decode::<RegionV2>(&new).unwrap_err();
        assert!(
            matches!(
                error,
                VersionError::TooNew {
                    found: 3,
                    current: 2,
                    ..
                }
            ),
            "{error}"
        );
    }

    #[test]
    fn bytes_without_an_envelope_are_malformed() {
        let error = decode::<RegionV2>(br#"{"name":"eu-west"}"#).unwrap_err();
        assert!(
            matches!(error, VersionError::Malformed { kind: "region", .. }),
            "{error}"
        );
        let error = decode::<RegionV2>(br#"{"v":2,"data":{"name":1}}"#).unwrap_err();
        assert!(matches!(error, VersionError::Malformed { .. }), "{error}");
    }
}
