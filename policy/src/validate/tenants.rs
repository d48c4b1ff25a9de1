//! Rules for tenants: residency, quotas, allowed models and latency goals.

use super::regions::region_set;
use super::{Names, Report, known_jurisdiction};
use crate::catalog::{Model, Quotas, Region, Residency, Tenant};
use crate::quota::{MonthlyBudget, RateLimit, RateLimiter};
use crate::sets::IndexSet;
use crate::spec::{QuotaSpec, ResidencySpec, TenantSpec};
use contract::ids::TenantId;

pub(super) fn check_tenant(
    i: usize,
    spec: &TenantSpec,
    names: &Names,
    regions: &[Region],
    report: &mut Report,
) -> Option<Tenant> {
    let path = format!("tenants[{i}]");
    let id = report.id(format!("{path}.id"), TenantId::new(&spec.id));
    let (residency, allowed_regions) = check_residency(
        &format!("{path}.residency"),
        &spec.residency,
        names,
        regions,
        report,
    )?;
    let quotas = check_quotas(&format!("{path}.quotas"), &spec.quotas, report);
    let allowed_models = match &spec.allowed_models {
        None => Some(None),
        Some(list) if list.is_empty() => {
            report.error(
                format!("{path}.allowed_models"),
                "the list is empty, so the tenant may call no model",
                "name the models it may call, or remove the field to allow all",
            );
            None
        }
        Some(list) => {
            let mut set = IndexSet::with_capacity(names.models.len());
            let mut ok = true;
            for (k, name) in list.iter().enumerate() {
                match names.models.get(name) {
                    Some(Some(m)) => set.insert(*m),
                    // The model is defined but invalid: its own error says why.
                    Some(None) => ok = false,
                    None => {
                        report.error(
                            format!("{path}.allowed_models[{k}]"),
                            format!("model {name:?} is not defined"),
                            "use the id of a model in [[models]]",
                        );
                        ok = false;
                    }
                }
            }
            ok.then_some(Some(set))
        }
    };
    let goal = match spec.latency_goal_ms {
        None => Some(None),
        Some(g) => report
            .positive(format!("{path}.latency_goal_ms"), "latency_goal_ms", g)
            .map(Some),
    };
    let lambda = report.non_negative(
        format!("{path}.latency_value_per_second"),
        "latency_value_per_second",
        spec.latency_value_per_second,
    );
    Some(Tenant {
        id: id?,
        name: spec.name.clone(),
        residency,
        allowed_regions,
        quotas: quotas?,
        allowed_models: allowed_models?,
        latency_goal_ms: goal?,
        latency_value_per_second: lambda?,
    })
}

fn check_residency(
    path: &str,
    spec: &ResidencySpec,
    names: &Names,
    regions: &[Region],
    report: &mut Report,
) -> Option<(Residency, IndexSet)> {
    let (jurisdictions, listed) = match spec {
        ResidencySpec::Any => return Some((Residency::Any, IndexSet::full(regions.len()))),
        ResidencySpec::Only {
            jurisdictions,
            regions,
        } => (jurisdictions, regions),
    };
    if jurisdictions.is_empty() && listed.is_empty() {
        report.error(
            path.to_owned(),
            "the residency allows no jurisdiction and no region, so every request would be refused",
            r#"list allowed jurisdictions and/or regions, or write residency = "any""#,
        );
        return None;
    }
    let mut ok = true;
    let mut allowed_j = Vec::new();
    for (k, j) in jurisdictions.iter().enumerate() {
        match known_jurisdiction(names, format!("{path}.jurisdictions[{k}]"), j, report) {
            Some(id) => allowed_j.push(id),
            None => ok = false,
        }
    }
    let listed_set = region_set(
        &format!("{path}.regions"),
        listed,
        names,
        regions.len(),
        report,
    );
    let mut allowed = listed_set.clone().unwrap_or_default();
    for (r, region) in regions.iter().enumerate() {
        if allowed_j.contains(&region.jurisdiction) {
            allowed.insert(r);
        }
    }
    let listed_ids = listed_set?.iter().map(|r| regions[r].id.clone()).collect();
    ok.then_some((
        Residency::Only {
            jurisdictions: allowed_j,
            regions: listed_ids,
        },
        allowed,
    ))
}

fn check_quotas(path: &str, spec: &QuotaSpec, report: &mut Report) -> Option<Quotas> {
    let rate = match (spec.requests_per_second, spec.burst) {
        (None, None) => Some(None),
        (None, Some(_)) => {
            report.error(
                format!("{path}.burst"),
                "burst is set without requests_per_second",
                "set requests_per_second too, or remove burst",
            );
            None
        }
        (Some(rps), burst) => {
            let rps = report.positive(
                format!("{path}.requests_per_second"),
                "requests_per_second",
                rps,
            );
            let burst = match burst {
                Some(b) => report
                    .count(format!("{path}.burst"), "burst", b)
                    .and_then(|b| {
                        if b == 0 {
                            report.error(
                                format!("{path}.burst"),
                                "burst is 0, so no request could ever pass",
                                "set burst to 1 or more",
                            );
                            None
                        } else {
                            Some(b)
                        }
                    }),
                // Default burst: one second's worth, at least one request.
                None => rps.map(|r| r.ceil().clamp(1.0, f64::from(u32::MAX)) as u32),
            };
            let limit = RateLimit {
                per_second: rps?,
                burst: burst?,
            };
            // The limiter has limits of its own (resolution, refill window): check them now.
            match RateLimiter::new(limit) {
                Ok(_) => Some(Some(limit)),
                Err(e) => {
                    report.error(
                        format!("{path}.requests_per_second"),
                        e.to_string(),
                        "choose a rate and burst the limiter accepts, as the message says",
                    );
                    None
                }
            }
        }
    };
    let max_concurrent = match spec.max_concurrent {
        None => Some(None),
        Some(n) => match report.count(format!("{path}.max_concurrent"), "max_concurrent", n) {
            Some(0) => {
                report.error(
                    format!("{path}.max_concurrent"),
                    "max_concurrent is 0, so no job could ever run",
                    "set max_concurrent to 1 or more, or remove it",
                );
                None
            }
            other => other.map(Some),
        },
    };
    let budget = match spec.monthly_budget {
        None => Some(None),
        Some(b) => report
            .non_negative(format!("{path}.monthly_budget"), "monthly_budget", b)
            .map(Some),
    };
    let gpu_seconds = match spec.monthly_gpu_seconds {
        None => Some(None),
        Some(g) => report
            .non_negative(
                format!("{path}.monthly_gpu_seconds"),
                "monthly_gpu_seconds",
                g,
            )
            .map(Some),
    };
    Some(Quotas {
        rate: rate?,
        max_concurrent: max_concurrent?,
        budget: MonthlyBudget {
            money: budget?,
            gpu_seconds: gpu_seconds?,
        },
    })
}

pub(super) fn warn_unreachable_models(
    i: usize,
    tenant: &Tenant,
    models: &[Model],
    report: &mut Report,
) {
    if tenant.allowed_regions.is_empty() {
        report.warn(format!("tenants[{i}].residency"), format!("no region is inside tenant {}'s residency yet, so its requests will be refused with 451", tenant.id));
        return;
    }
    for (m, model) in models.iter().enumerate() {
        if tenant.may_call(m) && !model.served_by.intersects(&tenant.allowed_regions) {
            report.warn(format!("tenants[{i}].residency"), format!("no region inside tenant {}'s residency serves {}, so those requests will be refused with 451", tenant.id, model.id));
        }
    }
}
