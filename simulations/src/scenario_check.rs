//! The scenario's own rules beyond the catalog: demand and events must name things that
//! exist and hold sensible numbers. Each problem says what is wrong and how to fix it.

use policy::Catalog;

use crate::region::HostShape;
use crate::scenario::{ScenarioEvent, ScenarioSpec, Spike, US_PER_HOUR};

type Cumulative = (Vec<usize>, Vec<f64>);

fn city_index(spec: &ScenarioSpec, name: &str) -> Option<usize> {
    spec.demand.cities.iter().position(|c| c.name == name)
}

/// Per city, the tenants calling from it and their cumulative shares.
pub(crate) fn city_tenants(
    spec: &ScenarioSpec,
    catalog: &Catalog,
    problems: &mut Vec<String>,
) -> Vec<Cumulative> {
    let cities = &spec.demand.cities;
    for (i, c) in cities.iter().enumerate() {
        if !(c.location.is_valid() && c.weight.is_finite() && c.weight > 0.0) {
            problems.push(format!(
                "demand.cities[{i}] ({}): location must be valid and weight above 0",
                c.name
            ));
        }
        if !(-12.0..=14.0).contains(&c.utc_offset_hours) {
            problems.push(format!(
                "demand.cities[{i}].utc_offset_hours is {}; fix: use -12 to 14",
                c.utc_offset_hours
            ));
        }
    }
    let mut out = vec![(Vec::new(), Vec::new()); cities.len()];
    for (i, t) in spec.demand.tenants.iter().enumerate() {
        let Some(tenant) = catalog.tenant_index(&t.tenant) else {
            problems.push(format!(
                "demand.tenants[{i}].tenant {:?} is not in [catalog]; fix: add it to \
                 [[catalog.tenants]] or correct the id",
                t.tenant
            ));
            continue;
        };
        if !(t.share.is_finite() && t.share > 0.0) {
            problems.push(format!("demand.tenants[{i}].share must be above 0"));
            continue;
        }
        let members: Vec<usize> = match &t.cities {
            None => (0..cities.len()).collect(),
            Some(names) => names
                .iter()
                .filter_map(|n| {
                    let found = city_index(spec, n);
                    if found.is_none() {
                        problems.push(format!(
                            "demand.tenants[{i}].cities names {n:?}, which is not in \
                             [[demand.cities]]; fix: add the city or correct its name"
                        ));
                    }
                    found
                })
                .collect(),
        };
        for c in members {
            let (ids, cumulative) = &mut out[c];
            let last = cumulative.last().copied().unwrap_or(0.0);
            ids.push(tenant);
            cumulative.push(last + t.share);
        }
    }
    for (c, (ids, _)) in out.iter().enumerate() {
        if ids.is_empty() {
            problems.push(format!(
                "demand.cities[{c}] ({}) has no tenant calling from it; fix: list it in a \
                 tenant's cities or remove it",
                cities[c].name
            ));
        }
    }
    out
}

/// Per catalog tenant, the demand models it may call with cumulative shares; and per
/// demand model, its catalog index and units range.
pub(crate) fn tenant_models(
    spec: &ScenarioSpec,
    catalog: &Catalog,
    problems: &mut Vec<String>,
) -> (Vec<Cumulative>, Vec<(usize, f64, f64)>) {
    let mut units = Vec::new();
    let mut entries = Vec::new();
    for (i, m) in spec.demand.models.iter().enumerate() {
        let Some(model) = catalog.model_index(&m.model) else {
            problems.push(format!(
                "demand.models[{i}].model {:?} is not in [catalog]; fix: add it to \
                 [[catalog.models]] or correct the id",
                m.model
            ));
            continue;
        };
        let max = m.units_max.unwrap_or(m.units_min);
        let sane = m.units_min.is_finite() && m.units_min > 0.0 && max.is_finite();
        if !(sane && max >= m.units_min && m.share.is_finite() && m.share > 0.0) {
            problems.push(format!(
                "demand.models[{i}]: share and units_min must be above 0 and units_max at \
                 least units_min"
            ));
            continue;
        }
        entries.push((units.len(), m.share));
        units.push((model, m.units_min, max));
    }
    let mut out = Vec::with_capacity(catalog.tenants().len());
    for tenant in catalog.tenants() {
        let mut ids = Vec::new();
        let mut cumulative: Vec<f64> = Vec::new();
        for &(entry, share) in &entries {
            if tenant.may_call(units[entry].0) {
                let last = cumulative.last().copied().unwrap_or(0.0);
                ids.push(entry);
                cumulative.push(last + share);
            }
        }
        out.push((ids, cumulative));
    }
    for (i, t) in spec.demand.tenants.iter().enumerate() {
        let callable = catalog
            .tenant_index(&t.tenant)
            .is_none_or(|ix| !out[ix].0.is_empty());
        if !callable {
            problems.push(format!(
                "demand.tenants[{i}] ({}) may call none of the models in [[demand.models]]; \
                 fix: add one of its allowed models to the demand",
                t.tenant
            ));
        }
    }
    (out, units)
}

/// Timed events in time order, and demand spikes.
pub(crate) fn events(
    spec: &ScenarioSpec,
    catalog: &Catalog,
    hosts: &[Vec<HostShape>],
    problems: &mut Vec<String>,
) -> (Vec<(u64, ScenarioEvent)>, Vec<Spike>) {
    // An event may reach past the run (a shortened scenario); what lies after it is cut.
    let at = |h: f64| (h * US_PER_HOUR) as u64;
    let mut timed = Vec::new();
    let mut spikes = Vec::new();
    for (i, e) in spec.events.iter().enumerate() {
        let start = e.start_hour;
        let end = e.end_hour.unwrap_or(f64::INFINITY);
        if !(start.is_finite() && 0.0 <= start && start < end) {
            problems.push(format!(
                "events[{i}]: start_hour must be ≥ 0 and before end_hour"
            ));
            continue;
        }
        let region = e.region.as_deref().map(|r| (r, catalog.region_index(r)));
        let factor = e.factor.filter(|f| f.is_finite() && *f >= 0.0);
        match (e.kind.as_str(), region, factor) {
            ("outage", Some((name, Some(r))), _) => {
                let host = e.host.map(|h| h as usize);
                let count = hosts.get(r).map_or(0, Vec::len);
                if host.is_some_and(|h| h >= count) {
                    problems.push(format!(
                        "events[{i}].host is {}, but {name} has {count} host(s); fix: use 0 to {}",
                        host.unwrap_or(0),
                        count.saturating_sub(1)
                    ));
                    continue;
                }
                for (t, down) in [(at(start), true), (at(end), false)] {
                    timed.push((
                        t,
                        ScenarioEvent::Outage {
                            region: r,
                            host,
                            down,
                        },
                    ));
                }
            }
            ("price", Some((_, Some(r))), Some(f)) if f > 0.0 => {
                timed.push((
                    at(start),
                    ScenarioEvent::Price {
                        region: r,
                        factor: f,
                    },
                ));
            }
            ("spike", None, Some(f)) => {
                let names = e.cities.clone().unwrap_or_default();
                let cities = names
                    .iter()
                    .filter_map(|n| city_index(spec, n))
                    .collect::<Vec<_>>();
                if cities.len() != names.len() {
                    problems.push(format!("events[{i}].cities names an unknown city"));
                }
                spikes.push(Spike {
                    start_us: at(start),
                    end_us: at(end),
                    factor: f,
                    cities,
                });
            }
            (_, Some((name, None)), _) => problems.push(format!(
                "events[{i}].region {name:?} is not in [catalog]; fix: correct the id"
            )),
            (kind, ..) => problems.push(format!(
                "events[{i}] of kind {kind:?} is incomplete; fix: use kind \"outage\" with \
                 region (and optional host), \"price\" with region and factor > 0, or \"spike\" with factor ≥ 0 \
                 (and optional cities)"
            )),
        }
    }
    timed.sort_by_key(|(t, _)| *t);
    (timed, spikes)
}
