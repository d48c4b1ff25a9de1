//! Rules for regions, their pools, and models (which name the regions that serve them).

use std::collections::HashSet;

use super::{Names, Report, known_jurisdiction};
use crate::catalog::{Model, ModelKind, Pool, PoolTotals, PricingUnit, Region};
use crate::location::UnitVector;
use crate::sets::IndexSet;
use crate::spec::{ModelSpec, PoolSpec, RegionSpec};
use contract::ids::{ModelId, PoolId, RegionId};

pub(super) fn check_region(
    i: usize,
    spec: &RegionSpec,
    names: &Names,
    report: &mut Report,
) -> Option<Region> {
    let path = format!("regions[{i}]");
    let id = report.id(format!("{path}.id"), RegionId::new(&spec.id));
    let jurisdiction = known_jurisdiction(
        names,
        format!("{path}.jurisdiction"),
        &spec.jurisdiction,
        report,
    );
    if !spec.location.is_valid() {
        report.error(
            format!("{path}.location"),
            format!(
                "lat {} / lon {} is not on the Earth",
                spec.location.lat, spec.location.lon
            ),
            "use decimal degrees: lat from -90 to 90, lon from -180 to 180",
        );
    }
    let endpoint_ok = spec.endpoint.is_empty()
        || ["http://", "https://"]
            .iter()
            .any(|scheme| spec.endpoint.len() > scheme.len() && spec.endpoint.starts_with(scheme));
    if !endpoint_ok {
        report.error(
            format!("{path}.endpoint"),
            format!("{:?} is not an http(s) URL", spec.endpoint),
            "give the agent's base URL, e.g. https://eu-west.agents.example.com:9443, or \
             leave it out so that the region's instances report their own",
        );
    }
    if spec.pools.is_empty() {
        report.error(
            format!("{path}.pools"),
            "the region has no GPU pools, so it can run nothing",
            "add a [[regions.pools]] entry with reserved and/or on_demand_max slots",
        );
    }
    let mut pool_ids = HashSet::new();
    let pools: Vec<Pool> = spec
        .pools
        .iter()
        .enumerate()
        .filter_map(|(p, pool)| {
            let checked = check_pool(&format!("{path}.pools[{p}]"), pool, report)?;
            if !pool_ids.insert(checked.id.clone()) {
                report.error(
                    format!("{path}.pools[{p}].id"),
                    format!("pool {} appears twice in the region", checked.id),
                    "give each pool in a region a unique id",
                );
                return None;
            }
            Some(checked)
        })
        .collect();
    if pools.len() != spec.pools.len() || !endpoint_ok || !spec.location.is_valid() {
        return None;
    }
    Some(Region {
        id: id?,
        jurisdiction: jurisdiction?,
        location: spec.location,
        point: UnitVector::from(spec.location),
        endpoint: spec.endpoint.trim_end_matches('/').to_owned(),
        totals: PoolTotals::of(&pools),
        pools,
    })
}

fn check_pool(path: &str, spec: &PoolSpec, report: &mut Report) -> Option<Pool> {
    let id = report.id(format!("{path}.id"), PoolId::new(&spec.id));
    if spec.gpu.trim().is_empty() {
        report.error(
            format!("{path}.gpu"),
            "the GPU type is empty",
            "name the GPU type, e.g. \"H100-80GB\", or \"cpu\"",
        );
    }
    let reserved = report.count(format!("{path}.reserved"), "reserved", spec.reserved);
    let on_demand_max = report.count(
        format!("{path}.on_demand_max"),
        "on_demand_max",
        spec.on_demand_max,
    );
    let reserved_price = price_for_slots(
        report,
        path,
        "reserved_price_per_hour",
        spec.reserved_price_per_hour,
        reserved,
        "reserved",
    );
    let on_demand_price = price_for_slots(
        report,
        path,
        "on_demand_price_per_hour",
        spec.on_demand_price_per_hour,
        on_demand_max,
        "on_demand_max",
    );
    if reserved == Some(0) && on_demand_max == Some(0) {
        report.error(
            path.to_owned(),
            "the pool has no slots (reserved = 0 and on_demand_max = 0)",
            "set reserved and/or on_demand_max above 0, or remove the pool",
        );
        return None;
    }
    Some(Pool {
        id: id?,
        gpu: spec.gpu.trim().to_owned(),
        reserved: reserved?,
        reserved_price_per_hour: reserved_price?.unwrap_or(0.0),
        on_demand_max: on_demand_max?,
        on_demand_price_per_hour: on_demand_price?,
    })
}

/// A price that must be given, and be non-negative, when its slot count is above 0.
/// `Some(None)`: no price and no slots, fine; `None`: reported.
fn price_for_slots(
    report: &mut Report,
    path: &str,
    field: &str,
    price: Option<f64>,
    slots: Option<u32>,
    slot_field: &str,
) -> Option<Option<f64>> {
    match (price, slots) {
        (Some(p), _) => report
            .non_negative(format!("{path}.{field}"), field, p)
            .map(Some),
        (None, Some(n)) if n > 0 => {
            report.error(
                format!("{path}.{field}"),
                format!("{slot_field} is {n} but {field} is missing"),
                format!("set {field} to the hourly price of one GPU"),
            );
            None
        }
        (None, _) => Some(None),
    }
}

pub(super) fn check_model(
    i: usize,
    spec: &ModelSpec,
    names: &Names,
    region_count: usize,
    report: &mut Report,
) -> Option<Model> {
    let path = format!("models[{i}]");
    let id = report.id(format!("{path}.id"), ModelId::new(&spec.id));
    let kind = ModelKind::parse(&spec.kind);
    if kind.is_none() {
        let all: Vec<&str> = ModelKind::ALL.iter().map(|(_, n)| *n).collect();
        report.error(
            format!("{path}.kind"),
            format!("{:?} is not a model kind", spec.kind),
            format!("use one of {}", all.join(", ")),
        );
    }
    let unit = PricingUnit::parse(&spec.unit);
    if unit.is_none() {
        let all: Vec<&str> = PricingUnit::ALL.iter().map(|(_, n)| *n).collect();
        report.error(
            format!("{path}.unit"),
            format!("{:?} is not a pricing unit", spec.unit),
            format!("use one of {}", all.join(", ")),
        );
    }
    let price = report.non_negative(
        format!("{path}.price_per_unit"),
        "price_per_unit",
        spec.price_per_unit,
    );
    let gpu_seconds = report.positive(
        format!("{path}.gpu_seconds_per_unit"),
        "gpu_seconds_per_unit",
        spec.gpu_seconds_per_unit,
    );
    let served_by = match &spec.regions {
        None => Some(IndexSet::full(region_count)),
        Some(list) if list.is_empty() => {
            report.error(
                format!("{path}.regions"),
                "the list of regions is empty, so no region serves the model",
                "name at least one region, or remove the field to serve it everywhere",
            );
            None
        }
        Some(list) => region_set(
            &format!("{path}.regions"),
            list,
            names,
            region_count,
            report,
        ),
    };
    Some(Model {
        id: id?,
        kind: kind?,
        unit: unit?,
        price_per_unit: price?,
        gpu_seconds_per_unit: gpu_seconds?,
        served_by: served_by?,
        weights: spec.weights.clone(),
    })
}

/// Resolves a list of region ids, reporting unknown and repeated ones.
pub(super) fn region_set(
    path: &str,
    list: &[String],
    names: &Names,
    region_count: usize,
    report: &mut Report,
) -> Option<IndexSet> {
    let mut set = IndexSet::with_capacity(region_count);
    let mut ok = true;
    for (k, name) in list.iter().enumerate() {
        match names.regions.get(name) {
            Some(Some(r)) if set.contains(*r) => {
                report.error(
                    format!("{path}[{k}]"),
                    format!("region {name} is listed twice"),
                    "remove the repeated entry",
                );
                ok = false;
            }
            Some(Some(r)) => set.insert(*r),
            // The region is defined but invalid: its own error says why.
            Some(None) => ok = false,
            None => {
                let mut known: Vec<&str> = names.regions.keys().map(String::as_str).collect();
                known.sort_unstable();
                report.error(
                    format!("{path}[{k}]"),
                    format!("region {name:?} is not defined"),
                    format!("use one of: {}", known.join(", ")),
                );
                ok = false;
            }
        }
    }
    ok.then_some(set)
}
