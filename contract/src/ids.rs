//! Identifiers: regions, jurisdictions, pools, tenants, models and requests.
//!
//! Each id is a small validated string with one grammar, used by every component. Region,
//! pool, tenant and jurisdiction ids are lowercase slugs (`eu-west`, `acme`); model ids are
//! `owner/name` (`meridian/esrgan-x4`). Region and instance ids never contain a `.`, so a
//! request id can carry the region and the instance that hold it as
//! `<region>.<instance>.<32 lowercase hex digits>` ([`RequestId`], `docs/design.md` §4).

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

const REQUEST_RULE: &str = "use `<region>.<instance>.<32 lowercase hex digits>`, the id a \
                            request was given when it was accepted (for example \
                            `eu-west.gpu-1.0123456789abcdef0123456789abcdef`)";

/// Hex digits of a request id's random part (128 bits).
const REQUEST_RANDOM_HEX: usize = 32;

/// A request (job) id: the region and the instance (one of the region's agents) that hold
/// the job, and 128 random bits in lowercase hex, dot-separated, e.g.
/// `eu-west.gpu-1.0123456789abcdef0123456789abcdef`. The edge sends every call about a
/// request to the instance its id names; the id is also safe as a file name.
///
/// Ids made before regions had instances, `<region>.<32 hex>`, are still read: they name
/// no instance ([`instance`](Self::instance) is `None`).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RequestId(Arc<str>);

/// A request id's parts: region, instance (if named) and the random part.
struct Parts<'a> {
    region: &'a str,
    instance: Option<&'a str>,
}

impl RequestId {
    /// A new random id for a job accepted by `instance` of `region`.
    pub fn random(region: &RegionId, instance: &InstanceId) -> Self {
        let text = format!("{region}.{instance}.{:032x}", rand::random::<u128>());
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

    fn split(value: &str) -> Option<Parts<'_>> {
        let (rest, random) = value.rsplit_once('.')?;
        let hex = random.len() == REQUEST_RANDOM_HEX
            && random
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        if !hex {
            return None;
        }
        let parts = match rest.split_once('.') {
            Some((region, instance)) => Parts {
                region,
                instance: Some(instance),
            },
            None => Parts {
                region: rest,
                instance: None,
            },
        };
        (is_slug(parts.region) && parts.instance.is_none_or(is_slug)).then_some(parts)
    }

    /// The id of the region that holds the request.
    pub fn region(&self) -> &str {
        Self::split(&self.0).map_or("", |parts| parts.region)
    }

    /// The id of the region's instance that holds the request; `None` in an id made before
    /// regions had instances (the region's only agent holds it).
    pub fn instance(&self) -> Option<&str> {
        Self::split(&self.0).and_then(|parts| parts.instance)
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
    fn request_ids_carry_their_region_instance_and_128_random_bits() {
        let region = RegionId::new("eu-west").unwrap();
        let instance = InstanceId::new("gpu-1").unwrap();
        let a = RequestId::random(&region, &instance);
        let b = RequestId::random(&region, &instance);
        assert_ne!(a, b);
        assert_eq!(a.region(), "eu-west");
        assert_eq!(a.instance(), Some("gpu-1"));
        assert_eq!(a.as_str().len(), "eu-west.gpu-1.".len() + 32);
        assert_eq!(RequestId::new(a.as_str()).unwrap(), a);
        // An id from before regions had instances names its region only.
        let old = RequestId::new("eu-west.0123456789abcdef0123456789abcdef").unwrap();
        assert_eq!((old.region(), old.instance()), ("eu-west", None));
        for bad in [
            "eu-west.gpu-1",
            "eu-west.gpu_1.0123456789abcdef0123456789abcdef",
            "eu-west.gpu-1.x.0123456789abcdef0123456789abcdef",
            "eu-west..0123456789abcdef0123456789abcdef",
            "eu-west.-a.0123456789abcdef0123456789abcdef",
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
    fn every_region_and_instance_id_makes_valid_request_ids() {
        for region in ["a", "eu-west", "ap-south-1", &"a".repeat(63)] {
            for instance in ["b", "i-0123456789ab", &"z".repeat(63)] {
                let region = RegionId::new(region).unwrap();
                let instance = InstanceId::new(instance).unwrap();
                let id = RequestId::new(RequestId::random(&region, &instance).as_str()).unwrap();
                assert_eq!(id.region(), region.as_str());
                assert_eq!(id.instance(), Some(instance.as_str()));
            }
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
