//! Identifiers of the domain: regions, jurisdictions, pools, tenants and models.
//!
//! Each id is a small validated string. Region, pool, tenant and jurisdiction ids are
//! lowercase slugs (`eu-west`, `acme`); model ids are `owner/name` (`meridian/esrgan-x4`).
//! Region ids never contain a `.`, because request ids carry their region as
//! `<region>.<random>` (DESIGN.md §4).

use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Why a string is not a valid id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{value:?} is not a valid {kind} id: {rule}")]
pub struct IdError {
    /// What kind of id was expected.
    pub kind: &'static str,
    /// The rejected value.
    pub value: String,
    /// The rule it broke, phrased as what a valid id looks like.
    pub rule: &'static str,
}

const SLUG_RULE: &str = "use 1–63 characters of a–z, 0–9 and '-', starting with a letter \
                         and not ending with '-' (for example `eu-west`)";
const MODEL_RULE: &str = "use `owner/name`, each part 1–63 characters of a–z, 0–9, '-', '_' \
                          and '.', starting with a letter or digit (for example `meridian/esrgan-x4`)";

fn is_slug(s: &str) -> bool {
    let bytes = s.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 63
        && bytes[0].is_ascii_lowercase()
        && bytes[bytes.len() - 1] != b'-'
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
}

fn is_model_part(s: &str) -> bool {
    let bytes = s.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 63
        && (bytes[0].is_ascii_lowercase() || bytes[0].is_ascii_digit())
        && bytes.iter().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'-' | b'_' | b'.')
        })
}

fn is_model_id(s: &str) -> bool {
    match s.split_once('/') {
        Some((owner, name)) => is_model_part(owner) && is_model_part(name),
        None => false,
    }
}

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident, $kind:literal, $check:path, $rule:expr) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(Arc<str>);

        impl $name {
            /// Checks `value` and wraps it.
            pub fn new(value: &str) -> Result<Self, IdError> {
                if $check(value) {
                    Ok(Self(Arc::from(value)))
                } else {
                    Err(IdError { kind: $kind, value: value.to_owned(), rule: $rule })
                }
            }

            /// The id as a string.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Debug::fmt(&*self.0, f)
            }
        }

        impl std::str::FromStr for $name {
            type Err = IdError;
            fn from_str(s: &str) -> Result<Self, IdError> {
                Self::new(s)
            }
        }

        impl std::borrow::Borrow<str> for $name {
            fn borrow(&self) -> &str {
                &self.0
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.0)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
                Self::new(&s).map_err(serde::de::Error::custom)
            }
        }
    };
}

id_type!(
    /// A region, e.g. `eu-west`.
    RegionId, "region", is_slug, SLUG_RULE
);
id_type!(
    /// A jurisdiction whose law governs data at rest, e.g. `eu`, `us`, `in`.
    JurisdictionId, "jurisdiction", is_slug, SLUG_RULE
);
id_type!(
    /// A GPU pool inside a region, e.g. `h100`.
    PoolId, "pool", is_slug, SLUG_RULE
);
id_type!(
    /// A tenant, e.g. `acme`.
    TenantId, "tenant", is_slug, SLUG_RULE
);
id_type!(
    /// A model, `owner/name`, e.g. `meridian/esrgan-x4`.
    ModelId, "model", is_model_id, MODEL_RULE
);

impl ModelId {
    /// The owner part (`meridian` in `meridian/esrgan-x4`).
    pub fn owner(&self) -> &str {
        self.0.split_once('/').map_or("", |(owner, _)| owner)
    }

    /// The name part (`esrgan-x4` in `meridian/esrgan-x4`).
    pub fn name(&self) -> &str {
        self.0.split_once('/').map_or("", |(_, name)| name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slugs() {
        for ok in ["eu-west", "us", "a1", "ap-south-1"] {
            assert!(RegionId::new(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "EU",
            "eu_west",
            "eu.west",
            "-eu",
            "eu-",
            "1eu",
            &"a".repeat(64),
        ] {
            let err = RegionId::new(bad).unwrap_err();
            assert_eq!(err.kind, "region");
            assert!(
                err.to_string().contains("eu-west"),
                "the error shows an example"
            );
        }
    }

    #[test]
    fn model_ids() {
        let id = ModelId::new("meridian/esrgan-x4").unwrap();
        assert_eq!((id.owner(), id.name()), ("meridian", "esrgan-x4"));
        assert!(ModelId::new("stabilityai/sd-turbo.v1_0").is_ok());
        for bad in ["esrgan", "a/b/c", "/x", "x/", "Meridian/x", "a/-b"] {
            assert!(ModelId::new(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn serde_checks_ids() {
        let id: RegionId = serde_json::from_str("\"eu-west\"").unwrap();
        assert_eq!(serde_json::to_string(&id).unwrap(), "\"eu-west\"");
        let err = serde_json::from_str::<RegionId>("\"EU West\"").unwrap_err();
        assert!(err.to_string().contains("not a valid region id"), "{err}");
    }
}
