//! The configuration as an operator writes it (TOML) and the control plane's API carries it
//! (JSON): jurisdictions, regions with their GPU pools, models, tenants and routing settings.
//!
//! These are plain serde records. Numbers that must not be negative are still read as signed
//! or floating-point values, so that [`CatalogSpec::validate`](crate::CatalogSpec::validate)
//! can report *every* problem at once, each with its path and fix, instead of stopping at the
//! first. Validation turns a spec into a [`Catalog`](crate::Catalog), whose types cannot hold
//! invalid values. A configuration file read with [`CatalogSpec::from_toml`] (or an admin
//! write read strictly) rejects unknown fields, naming each with its line, so that a
//! misspelt setting is never silently ignored; the same records carried inside a snapshot
//! between components ignore fields a newer control plane added. Money is in the
//! deployment's currency (`currency`, default `USD`).

use serde::de::{self, MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use contract::ParseError;

use crate::location::Location;

/// A whole Meridian configuration: everything the route decision needs except live status.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CatalogSpec {
    /// ISO 4217 code of the currency all prices are in. Default `USD`.
    #[serde(default = "default_currency")]
    pub currency: String,
    /// How routes are estimated and scored.
    #[serde(default)]
    pub routing: RoutingSpec,
    /// The jurisdictions regions may be in and tenants may be restricted to.
    #[serde(default)]
    pub jurisdictions: Vec<JurisdictionSpec>,
    /// The regions where Meridian holds GPUs.
    #[serde(default)]
    pub regions: Vec<RegionSpec>,
    /// The models Meridian serves.
    #[serde(default)]
    pub models: Vec<ModelSpec>,
    /// The tenants that call Meridian.
    #[serde(default)]
    pub tenants: Vec<TenantSpec>,
}

fn default_currency() -> String {
    "USD".to_owned()
}

impl Default for CatalogSpec {
    /// An empty configuration with the same defaults as an empty file.
    fn default() -> Self {
        Self {
            currency: default_currency(),
            routing: RoutingSpec::default(),
            jurisdictions: Vec::new(),
            regions: Vec::new(),
            models: Vec::new(),
            tenants: Vec::new(),
        }
    }
}

/// Settings of the route decision (docs/design.md §3).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RoutingSpec {
    /// Kilometres light travels in fibre per millisecond. Default 200.
    #[serde(default = "default_fibre_km_per_ms")]
    pub fibre_km_per_ms: f64,
    /// How much longer real network routes are than the great circle (≥ 1). Default 1.5.
    #[serde(default = "default_route_inflation")]
    pub route_inflation: f64,
    /// Marginal cost of one hour of an idle reserved GPU, in money per GPU-hour. The
    /// reservation is already paid, so this is small; it only keeps idle reserved capacity
    /// from looking free when comparing regions. Default 0.05.
    #[serde(default = "default_reserved_opportunity_cost")]
    pub reserved_opportunity_cost_per_gpu_hour: f64,
    /// A region whose last heartbeat is older than this many milliseconds is unhealthy.
    /// Default 3000.
    #[serde(default = "default_heartbeat_timeout_ms")]
    pub heartbeat_timeout_ms: i64,
    /// Milliseconds to bring up an on-demand GPU slot when none is warm, used when the
    /// region does not report its own figure. Default 60000.
    #[serde(default = "default_on_demand_start_ms")]
    pub on_demand_start_ms: i64,
}

fn default_fibre_km_per_ms() -> f64 {
    200.0
}
fn default_route_inflation() -> f64 {
    1.5
}
fn default_reserved_opportunity_cost() -> f64 {
    0.05
}
fn default_heartbeat_timeout_ms() -> i64 {
    3000
}
fn default_on_demand_start_ms() -> i64 {
    60_000
}

impl Default for RoutingSpec {
    fn default() -> Self {
        Self {
            fibre_km_per_ms: default_fibre_km_per_ms(),
            route_inflation: default_route_inflation(),
            reserved_opportunity_cost_per_gpu_hour: default_reserved_opportunity_cost(),
            heartbeat_timeout_ms: default_heartbeat_timeout_ms(),
            on_demand_start_ms: default_on_demand_start_ms(),
        }
    }
}

/// A jurisdiction: a legal area data may be restricted to (`eu`, `us`, `uk`, `in`, `jp`, …).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JurisdictionSpec {
    /// Short id, e.g. `eu`.
    pub id: String,
    /// Human name, e.g. `European Union`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

/// A region where Meridian holds GPUs, served by one region agent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RegionSpec {
    /// Region id, e.g. `eu-west`.
    pub id: String,
    /// Id of the jurisdiction the region's data centre is in.
    pub jurisdiction: String,
    /// Where the data centre is, for latency estimates.
    pub location: Location,
    /// Base URL of the region's agent, e.g. `https://eu-west.agents.example.com:9443`, for
    /// agents that do not report their own (a region of one agent, or a load balancer in
    /// front of several). Empty: each of the region's instances reports where it listens.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub endpoint: String,
    /// The region's GPU pools; at least one.
    #[serde(default)]
    pub pools: Vec<PoolSpec>,
}

/// A pool of GPUs of one type in a region: reserved slots (a paid commitment) and on-demand
/// slots (bought by the hour when needed).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PoolSpec {
    /// Pool id, unique within its region, e.g. `h100`.
    pub id: String,
    /// GPU type, e.g. `H100-80GB`, or `cpu` for a CPU-only pool.
    pub gpu: String,
    /// Number of reserved GPUs. Default 0.
    #[serde(default)]
    pub reserved: i64,
    /// Committed price of one reserved GPU per hour (paid whether used or not). Required
    /// when `reserved` > 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reserved_price_per_hour: Option<f64>,
    /// Most on-demand GPUs that may run at once. Default 0.
    #[serde(default)]
    pub on_demand_max: i64,
    /// Price of one on-demand GPU per hour. Required when `on_demand_max` > 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_demand_price_per_hour: Option<f64>,
}

/// A model Meridian serves.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelSpec {
    /// Model id, `owner/name`.
    pub id: String,
    /// What it does: `text-to-image`, `image-to-image`, `video-to-video`, `audio-to-text`,
    /// `audio-analysis` or `text-to-audio`.
    pub kind: String,
    /// What a tenant pays for: `image`, `megapixel`, `audio_second`, `video_second`,
    /// `gpu_second` or `megapixel_step` (output megapixels × denoising steps).
    pub unit: String,
    /// Price a tenant pays per unit.
    pub price_per_unit: f64,
    /// GPU-seconds one unit is expected to take; > 0.
    pub gpu_seconds_per_unit: f64,
    /// Regions that serve the model; absent means every region.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub regions: Option<Vec<String>>,
    /// Where the region agents find the weights (a directory name under their model root).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weights: Option<String>,
}

/// A tenant: an organisation calling Meridian under one set of policies.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TenantSpec {
    /// Tenant id, e.g. `acme`.
    pub id: String,
    /// Human name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Where the tenant's requests, queue entries and results may be.
    pub residency: ResidencySpec,
    /// Limits on the tenant's use; each absent limit is unlimited.
    #[serde(default)]
    pub quotas: QuotaSpec,
    /// Models the tenant may call; absent means all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowed_models: Option<Vec<String>>,
    /// End-to-end latency the tenant wants, in milliseconds; absent means no goal.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency_goal_ms: Option<f64>,
    /// λ: what one second of latency is worth to the tenant, in money per second. Trades
    /// cost against latency among regions that meet the goal. Default 0.01.
    #[serde(default = "default_latency_value")]
    pub latency_value_per_second: f64,
}

fn default_latency_value() -> f64 {
    0.01
}

/// Limits on a tenant's use. Every absent limit is unlimited.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct QuotaSpec {
    /// Sustained request rate per second.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requests_per_second: Option<f64>,
    /// Requests allowed at once above the sustained rate; default: the rate rounded up
    /// (at least 1). Only with `requests_per_second`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<i64>,
    /// Jobs that may run or wait at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_concurrent: Option<i64>,
    /// Spend per calendar month (UTC), in money.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub monthly_budget: Option<f64>,
    /// GPU-seconds per calendar month (UTC).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub monthly_gpu_seconds: Option<f64>,
}

/// Where a tenant's data may be: `"any"`, or a table naming allowed jurisdictions and/or
/// regions (the allowed regions are those in a listed jurisdiction plus those listed).
///
/// ```toml
/// residency = "any"
/// residency = { jurisdictions = ["eu"] }
/// residency = { jurisdictions = ["eu"], regions = ["uk-south"] }
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResidencySpec {
    /// No restriction.
    Any,
    /// Only these jurisdictions and regions.
    Only {
        /// Allowed jurisdictions.
        jurisdictions: Vec<String>,
        /// Allowed regions (in addition to those of the jurisdictions).
        regions: Vec<String>,
    },
}

#[derive(Deserialize)]
struct ResidencyTable {
    #[serde(default)]
    jurisdictions: Vec<String>,
    #[serde(default)]
    regions: Vec<String>,
}

impl Serialize for ResidencySpec {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        match self {
            ResidencySpec::Any => s.serialize_str("any"),
            ResidencySpec::Only {
                jurisdictions,
                regions,
            } => {
                let mut st = s.serialize_struct("Residency", 2)?;
                st.serialize_field("jurisdictions", jurisdictions)?;
                st.serialize_field("regions", regions)?;
                st.end()
            }
        }
    }
}

impl<'de> Deserialize<'de> for ResidencySpec {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct ResidencyVisitor;

        impl<'de> Visitor<'de> for ResidencyVisitor {
            type Value = ResidencySpec;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(r#""any" or a table like { jurisdictions = ["eu"], regions = [] }"#)
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<ResidencySpec, E> {
                if v == "any" {
                    Ok(ResidencySpec::Any)
                } else {
                    Err(E::custom(format!(
                        r#"residency {v:?} is not understood: write "any", or a table like {{ jurisdictions = ["eu"] }}"#
                    )))
                }
            }

            fn visit_map<M: MapAccess<'de>>(self, map: M) -> Result<ResidencySpec, M::Error> {
                let table =
                    ResidencyTable::deserialize(de::value::MapAccessDeserializer::new(map))?;
                Ok(ResidencySpec::Only {
                    jurisdictions: table.jurisdictions,
                    regions: table.regions,
                })
            }
        }

        d.deserialize_any(ResidencyVisitor)
    }
}

impl CatalogSpec {
    /// Reads a configuration file's TOML text. Syntax and type errors and unknown fields
    /// name the line; rule errors come from [`CatalogSpec::validate`].
    pub fn from_toml(text: &str) -> Result<Self, ParseError> {
        contract::problems::from_toml_strict(text)
    }

    /// Reads a configuration written as JSON, refusing unknown fields.
    pub fn from_json(text: &str) -> Result<Self, ParseError> {
        contract::problems::from_json_strict(text.as_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = r#"
        [[jurisdictions]]
        id = "eu"
        name = "European Union"

        [[regions]]
        id = "eu-west"
        jurisdiction = "eu"
        location = { lat = 53.35, lon = -6.26 }
        endpoint = "http://127.0.0.1:9101"
        pools = [{ id = "h100", gpu = "H100", reserved = 4, reserved_price_per_hour = 2.0, on_demand_max = 8, on_demand_price_per_hour = 4.5 }]

        [[models]]
        id = "meridian/esrgan-x4"
        kind = "image-to-image"
        unit = "megapixel"
        price_per_unit = 0.002
        gpu_seconds_per_unit = 0.4

        [[tenants]]
        id = "acme"
        residency = { jurisdictions = ["eu"] }
        quotas = { requests_per_second = 10.0, max_concurrent = 4 }
        latency_goal_ms = 800
    "#;

    #[test]
    fn toml_and_json_round_trip() {
        let spec = CatalogSpec::from_toml(EXAMPLE).unwrap();
        assert_eq!(spec.currency, "USD");
        assert_eq!(spec.routing, RoutingSpec::default());
        assert_eq!(spec.regions[0].pools[0].reserved, 4);
        assert_eq!(spec.tenants[0].latency_value_per_second, 0.01);
        let json = serde_json::to_string(&spec).unwrap();
        assert_eq!(CatalogSpec::from_json(&json).unwrap(), spec);
        let toml_text = toml::to_string(&spec).unwrap();
        assert_eq!(CatalogSpec::from_toml(&toml_text).unwrap(), spec);
    }

    #[test]
    fn default_matches_an_empty_file() {
        assert_eq!(CatalogSpec::default(), CatalogSpec::from_toml("").unwrap());
    }

    #[test]
    fn residency_forms() {
        let any: ResidencySpec = serde_json::from_str(r#""any""#).unwrap();
        assert_eq!(any, ResidencySpec::Any);
        let only: ResidencySpec = serde_json::from_str(r#"{"regions":["uk-south"]}"#).unwrap();
        assert_eq!(
            only,
            ResidencySpec::Only {
                jurisdictions: vec![],
                regions: vec!["uk-south".into()]
            }
        );
        let err = serde_json::from_str::<ResidencySpec>(r#""everywhere""#).unwrap_err();
        assert!(err.to_string().contains(r#"write "any""#), "{err}");
        let err =
            contract::problems::from_json_strict::<ResidencySpec>(br#"{"jurisdiction":["eu"]}"#)
                .unwrap_err();
        assert!(err.to_string().contains("jurisdiction"), "{err}");
    }

    #[test]
    fn misspelt_settings_are_rejected_with_their_line() {
        let text = EXAMPLE.replace("latency_goal_ms", "latency_goal");
        let err = CatalogSpec::from_toml(&text).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("unknown field `latency_goal`"), "{msg}");
        assert!(
            msg.contains("at tenants[0].latency_goal (line 24)"),
            "{msg}"
        );
        // Carried between components, the same record ignores what a newer sender added.
        let json = serde_json::to_string(&CatalogSpec::from_toml(EXAMPLE).unwrap())
            .unwrap()
            .replace(
                r#""latency_goal_ms""#,
                r#""region_hint":"eu","latency_goal_ms""#,
            );
        let carried: CatalogSpec = serde_json::from_str(&json).unwrap();
        assert_eq!(carried.tenants[0].latency_goal_ms, Some(800.0));
        assert!(CatalogSpec::from_json(&json).is_err());
    }
}
