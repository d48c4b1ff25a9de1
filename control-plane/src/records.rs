//! Where Meridian's records live in the store and how each is encoded.
//!
//! Everything an edge needs sits under [`ROOT`], one key per record, so one prefix read is a
//! consistent snapshot and one watch sees every change:
//!
//! ```text
//! /meridian/v1/settings                   currency and routing settings
//! /meridian/v1/jurisdictions/<id>         JurisdictionSpec
//! /meridian/v1/regions/<id>               RegionSpec
//! /meridian/v1/models/<owner>/<name>      ModelSpec
//! /meridian/v1/tenants/<id>               TenantSpec
//! /meridian/v1/keys/<key id>              ApiKeyRecord (hash only)
//! /meridian/v1/live/<region id>[/<instance>] RegionLive, attached to the agent's lease
//! /meridian/v1/instances/<region>/<instance>  InstanceEntry (see crate::instances), no lease
//! /meridian/v1/spend/<YYYY-MM>/<tenant>   MonthlySpend (see crate::usage)
//! ```
//!
//! Bookkeeping that edges do not need lives outside [`ROOT`]: `/meridian/meta/`, daily usage
//! totals (`/meridian/usage-daily/v1/`) and the last usage batch applied from each agent's
//! ledger (`/meridian/usage-ledgers/v1/`); see [`crate::usage`]. Per-job usage records are
//! not in the store: they stay in their region, on the agent's disk. Every value is wrapped
//! in the [`versioned`](crate::store::versioned) envelope.

use control_plane_client::wire::{RegionLive, Settings};
use policy::spec::JurisdictionSpec;
use policy::{ApiKeyRecord, CatalogSpec, ModelSpec, RegionSpec, TenantSpec};

use crate::store::versioned::Versioned;

/// The prefix of everything an edge's snapshot holds.
pub const ROOT: &str = "/meridian/v1/";
/// The settings record.
pub const SETTINGS_KEY: &str = "/meridian/v1/settings";
/// The prefix of API-key records.
pub const KEYS: &str = "/meridian/v1/keys/";
/// The prefix of live region status.
pub const LIVE: &str = "/meridian/v1/live/";
/// Written once a seed catalog has been applied, so it is applied only on the first start.
pub const SEEDED_KEY: &str = "/meridian/meta/seeded";

/// The store key of API key `id`.
pub fn key_key(id: &str) -> String {
    format!("{KEYS}{id}")
}

/// The store key of the live status of `region`'s agent `instance` (empty: the region's only one).
pub fn live_key(region: &str, instance: &str) -> String {
    if instance.is_empty() {
        format!("{LIVE}{region}")
    } else {
        format!("{LIVE}{region}/{instance}")
    }
}

/// A record kind of the catalog, kept one record per key.
pub trait CatalogRecord: Versioned + Clone + Send + Sync + 'static {
    /// The collection's name in URLs, store keys and validation paths (`regions`).
    const COLLECTION: &'static str;

    /// The record's id.
    fn id(&self) -> &str;

    /// The collection inside a whole catalog.
    fn collection(spec: &CatalogSpec) -> &Vec<Self>;

    /// The collection inside a whole catalog, to change it.
    fn collection_mut(spec: &mut CatalogSpec) -> &mut Vec<Self>;

    /// The prefix of the collection's keys.
    fn prefix() -> String {
        format!("{ROOT}{}/", Self::COLLECTION)
    }

    /// The store key of the record with id `id`.
    fn key(id: &str) -> String {
        format!("{}{id}", Self::prefix())
    }
}

macro_rules! catalog_record {
    ($ty:ty, $kind:literal, $collection:literal, $field:ident) => {
        impl Versioned for $ty {
            const KIND: &'static str = $kind;
            const VERSION: u32 = 1;
        }

        impl CatalogRecord for $ty {
            const COLLECTION: &'static str = $collection;

            fn id(&self) -> &str {
                &self.id
            }
            fn collection(spec: &CatalogSpec) -> &Vec<Self> {
                &spec.$field
            }
            fn collection_mut(spec: &mut CatalogSpec) -> &mut Vec<Self> {
                &mut spec.$field
            }
        }
    };
}

catalog_record!(
    JurisdictionSpec,
    "jurisdiction",
    "jurisdictions",
    jurisdictions
);
catalog_record!(RegionSpec, "region", "regions", regions);
catalog_record!(ModelSpec, "model", "models", models);
catalog_record!(TenantSpec, "tenant", "tenants", tenants);

impl Versioned for Settings {
    const KIND: &'static str = "settings";
    const VERSION: u32 = 1;
}

impl Versioned for ApiKeyRecord {
    const KIND: &'static str = "api key";
    const VERSION: u32 = 1;
}

impl Versioned for RegionLive {
    const KIND: &'static str = "region status";
    const VERSION: u32 = 1;
}

/// A catalog's settings part.
pub fn settings_of(spec: &CatalogSpec) -> Settings {
    Settings {
        currency: spec.currency.clone(),
        routing: spec.routing.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_follow_the_documented_layout() {
        assert_eq!(RegionSpec::key("eu-west"), "/meridian/v1/regions/eu-west");
        assert_eq!(
            ModelSpec::key("meridian/esrgan-x4"),
            "/meridian/v1/models/meridian/esrgan-x4"
        );
        assert_eq!(key_key("abc"), "/meridian/v1/keys/abc");
        assert_eq!(live_key("eu-west", ""), "/meridian/v1/live/eu-west");
        assert_eq!(
            live_key("eu-west", "host-2"),
            "/meridian/v1/live/eu-west/host-2"
        );
        for prefix in [
            JurisdictionSpec::prefix(),
            TenantSpec::prefix(),
            KEYS.to_owned(),
            LIVE.to_owned(),
        ] {
            assert!(prefix.starts_with(ROOT), "{prefix}");
        }
        assert!(!SEEDED_KEY.starts_with(ROOT));
    }
}
