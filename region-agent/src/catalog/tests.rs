//! Catalog copies: from the example catalog file, checks of what the control plane sends,
//! quotes, slots and an instance's share of the pools.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use super::share::ShareProblem;
use super::*;

const EXAMPLE: &str = include_str!("../../../examples/catalog.toml");

fn region(id: &str) -> RegionId {
    RegionId::new(id).unwrap()
}

fn on_demand() -> OnDemandConfig {
    OnDemandConfig {
        start_delay: Duration::from_millis(250),
        idle_stop: Duration::from_secs(60),
    }
}

#[test]
fn a_catalog_file_gives_its_region_and_the_models_placed_there() {
    let eu = source::from_toml(EXAMPLE, &region("eu-west")).unwrap();
    assert_eq!((eu.revision, eu.region.id.as_str()), (0, "eu-west"));
    let ids: Vec<_> = eu.models.iter().map(|m| m.id.as_str()).collect();
    assert!(ids.contains(&"meridian/tiny-sd"), "{ids:?}");
    // tiny-sd is placed in us-east and eu-west only.
    let ap = source::from_toml(EXAMPLE, &region("ap-south")).unwrap();
    assert!(ap.models.iter().all(|m| m.id != "meridian/tiny-sd"));
    assert_eq!(ap.models.len(), eu.models.len() - 1);

    let missing = source::from_toml(EXAMPLE, &region("mars")).unwrap_err();
    assert!(missing.has_place("regions"), "{missing}");
    let broken = EXAMPLE.replace("unit = \"megapixel_step\"", "unit = \"frame\"");
    let problems = source::from_toml(&broken, &region("eu-west")).unwrap_err();
    assert!(
        problems.iter().any(|p| p.place.ends_with(".unit")),
        "{problems}"
    );
}

#[test]
fn quotes_need_the_model_placed_and_billed_in_its_unit() {
    let wire = source::from_toml(EXAMPLE, &region("eu-west")).unwrap();
    let copy = RegionCatalog::from_wire(&wire, &region("eu-west")).unwrap();
    let quote = copy
        .quote("meridian/esrgan-x4", PricingUnit::Megapixel)
        .unwrap();
    assert_eq!(
        quote,
        Quote {
            catalog_revision: 0,
            unit: "megapixel".into(),
            price_per_unit: 0.002
        }
    );
    let mismatch = copy
        .quote("meridian/tiny-sd", PricingUnit::Image)
        .unwrap_err();
    assert!(
        matches!(mismatch, NotServed::UnitMismatch { .. }),
        "{mismatch}"
    );
    assert!(
        mismatch.to_string().contains("megapixel_step"),
        "{mismatch}"
    );
    let absent = copy
        .quote("meridian/whisper", PricingUnit::AudioSecond)
        .unwrap_err();
    assert_eq!(absent, NotServed::NotPlaced { revision: 0 });
}

#[test]
fn slots_are_the_pools_gpus_reserved_first() {
    let wire = source::from_toml(EXAMPLE, &region("eu-west")).unwrap();
    let copy = RegionCatalog::from_wire(&wire, &region("eu-west")).unwrap();
    let slots = copy.slots(on_demand());
    let classes: Vec<_> = slots.iter().map(|s| s.capacity).collect();
    // eu-west: 2 reserved H100s at 2.20 and up to 4 on-demand at 4.30.
    assert_eq!(classes.len(), 6);
    assert_eq!(classes[..2], [Capacity::Reserved; 2]);
    assert_eq!(classes[2..], [Capacity::OnDemand; 4]);
    assert_eq!(slots[0].price_per_hour, 2.2);
    assert_eq!(slots[0].start_delay, Duration::ZERO);
    assert_eq!(slots[5].price_per_hour, 4.3);
    assert_eq!(slots[5].start_delay, Duration::from_millis(250));
}

#[test]
fn copies_of_another_region_or_schema_are_refused() {
    let mut wire = source::from_toml(EXAMPLE, &region("eu-west")).unwrap();
    let other = RegionCatalog::from_wire(&wire, &region("us-east")).unwrap_err();
    assert!(matches!(other, CatalogError::OtherRegion { .. }), "{other}");
    wire.schema = contract::Schema::new(2, 0);
    let newer = RegionCatalog::from_wire(&wire, &region("eu-west")).unwrap_err();
    assert!(newer.to_string().contains("2.0"), "{newer}");
    wire.schema = contract::Schema::new(1, 7);
    wire.region.pools[0].reserved = -1;
    let bad = RegionCatalog::from_wire(&wire, &region("eu-west")).unwrap_err();
    assert!(bad.to_string().contains("reserved is -1"), "{bad}");
}

#[test]
fn the_cached_copy_round_trips() {
    let dir = tempfile::tempdir().unwrap();
    assert!(source::load_cache(dir.path()).is_none());
    let wire = source::from_toml(EXAMPLE, &region("eu-west")).unwrap();
    source::save_cache(dir.path(), &wire).unwrap();
    assert_eq!(source::load_cache(dir.path()).unwrap(), wire);
    std::fs::write(source::cache_path(dir.path()), b"{torn").unwrap();
    assert!(source::load_cache(dir.path()).is_none());
}

/// An instance's share, `pools` as (pool id, reserved, on-demand).
fn shares(pools: &[(&str, u32, u32)]) -> crate::config::PoolShares {
    pools
        .iter()
        .map(|&(id, reserved, on_demand)| {
            let share = control_plane_client::wire::PoolShare {
                reserved,
                on_demand,
            };
            (contract::ids::PoolId::new(id).unwrap(), share)
        })
        .collect()
}

#[test]
fn a_share_of_the_pools_bounds_the_slots_and_keeps_the_prices() {
    let wire = source::from_toml(EXAMPLE, &region("eu-west")).unwrap();
    let mut copy = RegionCatalog::from_wire(&wire, &region("eu-west")).unwrap();
    assert_eq!(copy.served()["h100"].reserved, 2, "the whole pool");
    // eu-west's h100: 2 reserved and up to 4 on demand; this instance serves 1 and 1.
    assert_eq!(copy.share(&shares(&[("h100", 1, 1)])), []);
    let slots = copy.slots(on_demand());
    let classes: Vec<_> = slots.iter().map(|s| s.capacity).collect();
    assert_eq!(classes, [Capacity::Reserved, Capacity::OnDemand]);
    assert_eq!(
        (slots[0].price_per_hour, slots[1].price_per_hour),
        (2.2, 4.3)
    );
    let served = copy.served();
    assert_eq!((served["h100"].reserved, served["h100"].on_demand), (1, 1));
}

#[test]
fn a_share_the_catalog_does_not_cover_is_said_and_bounded_by_the_catalog() {
    let wire = source::from_toml(EXAMPLE, &region("eu-west")).unwrap();
    let mut copy = RegionCatalog::from_wire(&wire, &region("eu-west")).unwrap();
    let problems = copy.share(&shares(&[("h100", 3, 4), ("a100", 1, 0)]));
    assert_eq!(
        problems,
        [
            ShareProblem::UnknownPool {
                pool: "a100".into()
            },
            ShareProblem::MoreThanPool {
                pool: "h100".into(),
                kind: "reserved",
                share: 3,
                catalog: 2
            },
        ]
    );
    let said = problems[1].to_string();
    assert!(
        said.contains("it serves 2") && said.contains("pools.h100.reserved"),
        "{said}"
    );
    assert!(problems[0].to_string().contains("a100"));
    let served = copy.served();
    assert_eq!((served["h100"].reserved, served["h100"].on_demand), (2, 4));
    assert_eq!(copy.slots(on_demand()).len(), 6);

    // A pool the share does not name gives this instance no slot.
    let mut copy = RegionCatalog::from_wire(&wire, &region("eu-west")).unwrap();
    copy.share(&shares(&[("a100", 1, 0)]));
    assert!(copy.slots(on_demand()).is_empty());
    assert_eq!(copy.served()["h100"].reserved, 0);
}
