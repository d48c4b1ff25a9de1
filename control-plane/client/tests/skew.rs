//! A snapshot written by this build stays readable by an edge of the previous release: the
//! reader below holds the snapshot's fields as schema 1.0 had them (what an edge one release
//! behind reads), ignoring the rest. It fails when a field an older edge needs is removed,
//! renamed or retyped, which a minor version must never do.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;

use control_plane_client::wire::{AgentReport, ModelReport, RegionLive, Snapshot, TenantSpend};
use rand::SeedableRng;
use serde::Deserialize;
use testkit::catalog::{Catalog, Model, Region};

/// The snapshot as an edge of schema 1.0 reads it.
mod v1_0 {
    use super::{BTreeMap, Deserialize};

    #[derive(Debug, Deserialize)]
    pub struct Snapshot {
        pub revision: i64,
        pub catalog: Catalog,
        pub keys: Vec<Key>,
        pub regions: Vec<RegionLive>,
        #[serde(default)]
        pub spend: Vec<TenantSpend>,
    }

    #[derive(Debug, Deserialize)]
    pub struct Catalog {
        pub currency: String,
        pub jurisdictions: Vec<Named>,
        pub regions: Vec<Region>,
        pub models: Vec<Model>,
        pub tenants: Vec<Named>,
    }

    #[derive(Debug, Deserialize)]
    pub struct Named {
        pub id: String,
    }

    #[derive(Debug, Deserialize)]
    pub struct Region {
        pub id: String,
        pub jurisdiction: String,
        pub location: Location,
        pub endpoint: String,
        pub pools: Vec<Pool>,
    }

    #[derive(Debug, Deserialize)]
    pub struct Location {
        pub lat: f64,
        pub lon: f64,
    }

    #[derive(Debug, Deserialize)]
    pub struct Pool {
        pub id: String,
        pub gpu: String,
        pub reserved: i64,
        pub reserved_price_per_hour: Option<f64>,
    }

    #[derive(Debug, Deserialize)]
    pub struct Model {
        pub id: String,
        pub unit: String,
        pub price_per_unit: f64,
        pub gpu_seconds_per_unit: f64,
    }

    #[derive(Debug, Deserialize)]
    pub struct Key {
        pub id: String,
        pub tenant: String,
        pub hash: String,
        pub created_at: i64,
    }

    #[derive(Debug, Deserialize)]
    pub struct RegionLive {
        pub region: String,
        pub reported_at_ms: u64,
        pub report: Report,
    }

    #[derive(Debug, Deserialize)]
    pub struct Report {
        pub healthy: bool,
        pub draining: bool,
        pub free_reserved: u32,
        pub free_on_demand: u32,
        pub on_demand_startable: u32,
        pub models: BTreeMap<String, ModelReport>,
    }

    #[derive(Debug, Deserialize)]
    pub struct ModelReport {
        pub queue_depth: u32,
        pub queue_room: u32,
        pub expected_wait_ms: f64,
        pub loaded: bool,
    }

    #[derive(Debug, Deserialize)]
    pub struct TenantSpend {
        pub tenant: String,
        pub month: String,
        pub cost: f64,
    }
}

fn snapshot_of_this_build() -> Snapshot {
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let key = policy::key::generate(&mut rng, "acme".parse().unwrap(), Some("ci".into()), 1);
    let report = AgentReport {
        healthy: true,
        free_reserved: 2,
        models: BTreeMap::from([(
            "meridian/tiny-sd".to_owned(),
            ModelReport {
                queue_depth: 1,
                queue_room: 63,
                expected_wait_ms: 80.0,
                service_ms_per_unit: Some(12.0),
                loaded: true,
                cold_start_ms: 5.0,
            },
        )]),
        catalog_revision: Some(41),
        ..AgentReport::default()
    };
    Snapshot {
        schema: contract::schema::SNAPSHOT,
        revision: 42,
        catalog: Catalog::new()
            .region(Region::new(
                "eu-west",
                "eu",
                (53.35, -6.26),
                "http://127.0.0.1:9102",
            ))
            .model(
                Model::new(
                    "meridian/tiny-sd",
                    "text-to-image",
                    "megapixel_step",
                    0.0038,
                )
                .gpu_seconds(0.12),
            )
            .tenants("[[tenants]]\nid = \"acme\"\nresidency = { jurisdictions = [\"eu\"] }")
            .build(),
        keys: vec![key.record],
        regions: vec![RegionLive {
            region: "eu-west".into(),
            reported_at_ms: 1_000,
            report,
        }],
        spend: vec![TenantSpend {
            tenant: "acme".into(),
            month: "2026-12".into(),
            cost: 1.5,
            gpu_seconds: 30.0,
        }],
        instances: Vec::new(),
    }
}

#[test]
fn an_edge_one_release_behind_reads_this_builds_snapshot() {
    let current = snapshot_of_this_build();
    let text = serde_json::to_string(&current).unwrap();
    let old: v1_0::Snapshot = serde_json::from_str(&text).unwrap();
    assert_eq!(old.revision, 42);
    assert_eq!(old.catalog.currency, "USD");
    assert_eq!(old.catalog.jurisdictions[0].id, "eu");
    assert_eq!(old.catalog.tenants[0].id, "acme");
    let region = &old.catalog.regions[0];
    assert_eq!(
        (region.id.as_str(), region.jurisdiction.as_str()),
        ("eu-west", "eu")
    );
    assert_eq!((region.location.lat, region.location.lon), (53.35, -6.26));
    assert_eq!(region.endpoint, "http://127.0.0.1:9102");
    let pool = &region.pools[0];
    assert_eq!(
        (pool.id.as_str(), pool.gpu.as_str(), pool.reserved),
        ("h100", "H100", 2)
    );
    assert_eq!(pool.reserved_price_per_hour, Some(2.2));
    let model = &old.catalog.models[0];
    assert_eq!(
        (model.id.as_str(), model.unit.as_str()),
        ("meridian/tiny-sd", "megapixel_step")
    );
    assert_eq!(
        (model.price_per_unit, model.gpu_seconds_per_unit),
        (0.0038, 0.12)
    );
    assert_eq!(old.keys[0].id, current.keys[0].id.to_string());
    assert_eq!(old.keys[0].tenant, "acme");
    assert!(!old.keys[0].hash.is_empty() && old.keys[0].created_at == 1);
    let live = &old.regions[0];
    assert_eq!(
        (live.region.as_str(), live.reported_at_ms),
        ("eu-west", 1_000)
    );
    assert!(live.report.healthy && !live.report.draining);
    assert_eq!(
        (
            live.report.free_reserved,
            live.report.free_on_demand,
            live.report.on_demand_startable
        ),
        (2, 0, 0)
    );
    let load = &live.report.models["meridian/tiny-sd"];
    assert_eq!(
        (load.queue_depth, load.queue_room, load.loaded),
        (1, 63, true)
    );
    assert_eq!(load.expected_wait_ms, 80.0);
    assert_eq!(old.spend[0].tenant, "acme");
    assert_eq!(
        (old.spend[0].month.as_str(), old.spend[0].cost),
        ("2026-12", 1.5)
    );
}

#[test]
fn this_build_reads_a_snapshot_one_minor_version_ahead() {
    let mut value = serde_json::to_value(snapshot_of_this_build()).unwrap();
    value["schema"] = "1.9".into();
    value["shards"] = serde_json::json!([1, 2]);
    value["catalog"]["regions"][0]["carbon_g_per_kwh"] = 120.into();
    value["catalog"]["regions"][0]["pools"][0]["spot_max"] = 4.into();
    value["catalog"]["models"][0]["licence"] = "MIT".into();
    value["catalog"]["tenants"][0]["webhook_secret_id"] = "w1".into();
    value["keys"][0]["scopes"] = serde_json::json!(["run"]);
    value["regions"][0]["instance"] = "gpu-7".into();
    value["regions"][0]["report"]["gpu_temperature_c"] = 61.into();
    value["spend"][0]["forecast"] = 3.0.into();
    let read: Snapshot = serde_json::from_value(value).unwrap();
    assert_eq!(read.schema, contract::Schema::new(1, 9));
    assert_eq!(read.catalog, snapshot_of_this_build().catalog);
    assert_eq!(read.regions, snapshot_of_this_build().regions);
    let catalog = read.catalog.validate().unwrap();
    let live = read.live_status(&catalog);
    let west = catalog.region_index("eu-west").unwrap();
    assert_eq!(live.region(west).unwrap().free_reserved, 2);
}
