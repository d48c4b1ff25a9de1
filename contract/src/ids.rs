//! Identifiers: regions, jurisdictions, pools, tenants, models and requests.
//!
//! Each id is a small validated string with one grammar, used by every component. Region,
//! pool, tenant and jurisdiction ids are lowercase slugs (`eu-west`, `acme`); model ids are
//! `owner/name` (`meridian/esrgan-x4`). Region ids never contain a `.`, so a request id can
//! carry its region as `<region>.<32 lowercase hex digits>` ([`RequestId`],
//! `docs/design.md` §4).

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
    /// One of a region's agents (a host, or a process on one), e.g. `gpu-host-3`: unique
    /// within its region.
    InstanceId, "instance", is_slug, SLUG_RULE
);
id_type!(
    /// A tenant, e.g. `acme`.
    TenantId, "tenant", is_slug, SLUG_RULE
);
id_type!(
    /// A model, `owner/name`, e.g. `meridian/esrgan-x4`.
    ModelId, "model", is_model_id, MODEL_RULE
);

id_type!(
    /// A reservation of GPUs, e.g. `h100-2026`.
    ReservationId, "reservation", is_slug, SLUG_RULE
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

const REQUEST_RULE: &str = "use `<region>.<32 lowercase hex digits>`, the id a request was \
                            given when it was accepted (for example \
                            `eu-west.0123456789abcdef0123456789abcdef`)";

/// Hex digits of a request id's random part (128 bits).
const REQUEST_RANDOM_HEX: usize = 32;

/// A request (job) id: the region that holds the job, a dot and 128 random bits in lowercase
/// hex, e.g. `eu-west.0123456789abcdef0123456789abcdef`. The edge sends every call about a
/// request to the region its id names; the id is also safe as a file name.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RequestId(Arc<str>);

impl RequestId {
    /// A new random id for a job accepted in `region`.
    pub fn random(region: &RegionId) -> Self {
        let text = format!("{region}.{:032x}", rand::random::<u128>());
        Self(Arc::from(text))
    }

    /// Checks `value` and wraps it.
    pub fn new(value: &str) -> Result<Self, IdError> {
        if Self::split(value).is_some() {
            Ok(Self(Arc::from(value)))
        } else {
            Err(IdError {
                kind: "request",
                value: value.chars().take(200).collect(),
                rule: REQUEST_RULE,
            })
        }
    }

    fn split(value: &str) -> Option<(&str, &str)> {
        let (region, random) = value.rsplit_once('.')?;
        let hex = random.len() == REQUEST_RANDOM_HEX
            && random
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        (hex && is_slug(region)).then_some((region, random))
    }

    /// The id of the region that holds the request.
    pub fn region(&self) -> &str {
        Self::split(&self.0).map_or("", |(region, _)| region)
    }

    /// The id as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl std::str::FromStr for RequestId {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, IdError> {
        Self::new(s)
    }
}

impl Serialize for RequestId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for RequestId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        Self::new(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_carry_their_region_and_128_random_bits() {
        let region = RegionId::new("eu-west").unwrap();
        let a = RequestId::random(&region);
        let b = RequestId::random(&region);
        assert_ne!(a, b);
        assert_eq!(a.region(), "eu-west");
        assert_eq!(a.as_str().len(), "eu-west.".len() + 32);
        assert_eq!(RequestId::new(a.as_str()).unwrap(), a);
        for bad in [
            "eu-west",
            "eu-west.xyz",
            "../etc.0123456789abcdef0123456789abcdef",
            "a.0123456789abcdef0123456789ABCDEF",
            // The region part follows the region grammar: a letter first, no trailing '-'.
            "1eu.0123456789abcdef0123456789abcdef",
            "eu-.0123456789abcdef0123456789abcdef",
            "EU.0123456789abcdef0123456789abcdef",
            ".0123456789abcdef0123456789abcdef",
        ] {
            let err = RequestId::new(bad).unwrap_err();
            assert_eq!(err.kind, "request", "{bad}");
        }
    }

    #[test]
    fn every_region_id_makes_valid_request_ids() {
        for region in ["a", "eu-west", "ap-south-1", &"a".repeat(63)] {
            let region = RegionId::new(region).unwrap();
            let id = RequestId::random(&region);
            assert_eq!(
                RequestId::new(id.as_str()).unwrap().region(),
                region.as_str()
            );
        }
    }

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
