//! Turns a [`CatalogSpec`] into a [`Catalog`], reporting every problem at once.
//!
//! Each rule yields one [`ConfigProblem`](contract::ConfigProblem) naming the place of the value
//! (`regions[2].pools[0].reserved`) and the fix. Checks run in configuration order, so the
//! report reads top to bottom. Regions, pools and models are checked in `regions`, tenants
//! and their quotas in `tenants`.

mod regions;
mod tenants;

use std::collections::{HashMap, HashSet};

use crate::catalog::{Catalog, Jurisdiction, Region, Routing, Tenant};
use contract::ConfigProblems;

use crate::error::ConfigWarning;
use crate::ids::{IdError, JurisdictionId};
use crate::location::NetworkModel;
use crate::spec::{CatalogSpec, RoutingSpec};

use regions::{check_model, check_region};
use tenants::{check_tenant, warn_unreachable_models};

/// Most regions one catalog may hold (the route decision ranks by a 16-bit region index).
pub const MAX_REGIONS: usize = 1 << 16;

/// Collects problems while a spec is checked.
#[derive(Default)]
pub(super) struct Report {
    errors: ConfigProblems,
    warnings: Vec<ConfigWarning>,
}

impl Report {
    fn error(
        &mut self,
        path: impl Into<String>,
        problem: impl Into<String>,
        fix: impl Into<String>,
    ) {
        self.errors.add(path, problem, fix);
    }

    fn warn(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.warnings.push(ConfigWarning {
            place: path.into(),
            message: message.into(),
        });
    }

    fn id<T>(&mut self, path: String, parsed: Result<T, IdError>) -> Option<T> {
        parsed
            .map_err(|e| {
                self.error(
                    path,
                    format!("{:?} is not a valid {} id", e.value, e.kind),
                    e.rule,
                )
            })
            .ok()
    }

    /// A finite, non-negative amount of money or time.
    fn non_negative(&mut self, path: String, what: &str, value: f64) -> Option<f64> {
        if value.is_finite() && value >= 0.0 {
            Some(value)
        } else {
            self.error(
                path,
                format!("{what} is {value}, which is not a non-negative number"),
                format!("set {what} to 0 or more"),
            );
            None
        }
    }

    /// A finite, strictly positive number.
    fn positive(&mut self, path: String, what: &str, value: f64) -> Option<f64> {
        if value.is_finite() && value > 0.0 {
            Some(value)
        } else {
            self.error(
                path,
                format!("{what} is {value}, which is not a positive number"),
                format!("set {what} to a number above 0"),
            );
            None
        }
    }

    /// A count that fits a `u32`.
    fn count(&mut self, path: String, what: &str, value: i64) -> Option<u32> {
        match u32::try_from(value) {
            Ok(n) => Some(n),
            Err(_) if value < 0 => {
                self.error(
                    path,
                    format!("{what} is {value}, which is negative"),
                    format!("set {what} to 0 or more"),
                );
                None
            }
            Err(_) => {
                self.error(
                    path,
                    format!("{what} is {value}, which is too large"),
                    format!("set {what} to at most {}", u32::MAX),
                );
                None
            }
        }
    }
}

/// Resolves references to ids declared elsewhere in the spec.
pub(super) struct Names {
    jurisdictions: HashMap<String, JurisdictionId>,
    /// Region id → position among the valid regions; `None` when the region itself was
    /// invalid (already reported), so references to it add no second error.
    regions: HashMap<String, Option<usize>>,
    /// Model id → position among the valid models, `None` when invalid (as for regions).
    models: HashMap<String, Option<usize>>,
}

impl CatalogSpec {
    /// Checks every rule and builds the [`Catalog`], or returns every problem found.
    pub fn validate(&self) -> Result<Catalog, ConfigProblems> {
        let mut report = Report::default();
        let routing = check_routing(&self.routing, &mut report);
        if self.currency.len() != 3 || !self.currency.bytes().all(|b| b.is_ascii_uppercase()) {
            report.error(
                "currency",
                format!("{:?} is not an ISO 4217 currency code", self.currency),
                "use three capital letters, e.g. USD or EUR",
            );
        }

        let mut names = Names {
            jurisdictions: HashMap::new(),
            regions: HashMap::new(),
            models: HashMap::new(),
        };
        let jurisdictions = check_jurisdictions(self, &mut names, &mut report);
        if self.regions.len() > MAX_REGIONS {
            report.error(
                "regions",
                format!(
                    "{} regions are configured; at most {MAX_REGIONS} are supported",
                    self.regions.len()
                ),
                "split the deployment into several Meridian installations",
            );
        }
        let mut regions: Vec<Region> = Vec::new();
        for (i, spec) in self.regions.iter().enumerate() {
            if names.regions.contains_key(&spec.id) {
                report.error(
                    format!("regions[{i}].id"),
                    format!("region {} is defined twice", spec.id),
                    "give each region a unique id, or merge the two entries",
                );
                continue;
            }
            let checked = check_region(i, spec, &names, &mut report);
            names
                .regions
                .insert(spec.id.clone(), checked.as_ref().map(|_| regions.len()));
            regions.extend(checked);
        }

        let mut models = Vec::new();
        for (i, spec) in self.models.iter().enumerate() {
            if names.models.contains_key(&spec.id) {
                report.error(
                    format!("models[{i}].id"),
                    format!("model {} is defined twice", spec.id),
                    "give each model a unique id, or merge the two entries",
                );
                continue;
            }
            let checked = check_model(i, spec, &names, regions.len(), &mut report);
            names
                .models
                .insert(spec.id.clone(), checked.as_ref().map(|_| models.len()));
            models.extend(checked);
        }

        let mut tenants: Vec<Tenant> = Vec::new();
        let mut seen_tenants = HashSet::new();
        for (i, spec) in self.tenants.iter().enumerate() {
            if let Some(tenant) = check_tenant(i, spec, &names, &regions, &mut report) {
                if !seen_tenants.insert(tenant.id.clone()) {
                    report.error(
                        format!("tenants[{i}].id"),
                        format!("tenant {} is defined twice", tenant.id),
                        "give each tenant a unique id, or merge the two entries",
                    );
                } else {
                    warn_unreachable_models(i, &tenant, &models, &mut report);
                    tenants.push(tenant);
                }
            }
        }

        let Some(routing) = routing else {
            return Err(report.errors);
        };
        if !report.errors.is_empty() {
            return Err(report.errors);
        }
        let catalog = Catalog {
            currency: self.currency.clone(),
            routing,
            jurisdictions,
            region_index: regions
                .iter()
                .enumerate()
                .map(|(i, r)| (r.id.clone(), i))
                .collect(),
            model_index: models
                .iter()
                .enumerate()
                .map(|(i, m)| (m.id.clone(), i))
                .collect(),
            tenant_index: tenants
                .iter()
                .enumerate()
                .map(|(i, t)| (t.id.clone(), i))
                .collect(),
            regions,
            models,
            tenants,
            warnings: report.warnings,
            generation: Catalog::next_generation(),
        };
        tracing::debug!(
            regions = catalog.regions.len(),
            models = catalog.models.len(),
            tenants = catalog.tenants.len(),
            warnings = catalog.warnings.len(),
            "catalog validated"
        );
        Ok(catalog)
    }
}

fn check_routing(spec: &RoutingSpec, report: &mut Report) -> Option<Routing> {
    let fibre = report.positive(
        "routing.fibre_km_per_ms".into(),
        "fibre_km_per_ms",
        spec.fibre_km_per_ms,
    );
    let inflation = if spec.route_inflation.is_finite() && spec.route_inflation >= 1.0 {
        Some(spec.route_inflation)
    } else {
        report.error(
            "routing.route_inflation",
            format!(
                "route_inflation is {}, below 1: routes cannot be shorter than the great circle",
                spec.route_inflation
            ),
            "set route_inflation to 1 or more (1.5 is typical)",
        );
        None
    };
    let opportunity = report.non_negative(
        "routing.reserved_opportunity_cost_per_gpu_hour".into(),
        "reserved_opportunity_cost_per_gpu_hour",
        spec.reserved_opportunity_cost_per_gpu_hour,
    );
    let heartbeat = report.count(
        "routing.heartbeat_timeout_ms".into(),
        "heartbeat_timeout_ms",
        spec.heartbeat_timeout_ms,
    );
    if heartbeat == Some(0) {
        report.error(
            "routing.heartbeat_timeout_ms",
            "heartbeat_timeout_ms is 0, so every region would be unhealthy",
            "set heartbeat_timeout_ms above the agents' heartbeat interval (3000 is typical)",
        );
    }
    let start = report.count(
        "routing.on_demand_start_ms".into(),
        "on_demand_start_ms",
        spec.on_demand_start_ms,
    );
    Some(Routing {
        network: NetworkModel {
            fibre_km_per_ms: fibre?,
            route_inflation: inflation?,
        },
        reserved_cost_per_gpu_second: opportunity? / 3600.0,
        heartbeat_timeout_ms: u64::from(heartbeat.filter(|h| *h > 0)?),
        on_demand_start_ms: u64::from(start?),
    })
}

fn check_jurisdictions(
    spec: &CatalogSpec,
    names: &mut Names,
    report: &mut Report,
) -> Vec<Jurisdiction> {
    let mut out = Vec::new();
    for (i, j) in spec.jurisdictions.iter().enumerate() {
        let Some(id) = report.id(format!("jurisdictions[{i}].id"), JurisdictionId::new(&j.id))
        else {
            continue;
        };
        if names
            .jurisdictions
            .insert(j.id.clone(), id.clone())
            .is_some()
        {
            report.error(
                format!("jurisdictions[{i}].id"),
                format!("jurisdiction {id} is declared twice"),
                "remove the second declaration",
            );
            continue;
        }
        out.push(Jurisdiction {
            id,
            name: j.name.clone(),
        });
    }
    out
}

pub(super) fn known_jurisdiction(
    names: &Names,
    path: String,
    value: &str,
    report: &mut Report,
) -> Option<JurisdictionId> {
    let found = names.jurisdictions.get(value).cloned();
    if found.is_none() {
        let mut known: Vec<&str> = names.jurisdictions.keys().map(String::as_str).collect();
        known.sort_unstable();
        report.error(
            path,
            format!("jurisdiction {value:?} is not declared"),
            if known.is_empty() {
                format!("declare it in [[jurisdictions]] (id = {value:?})")
            } else {
                format!(
                    "use one of {} or declare it in [[jurisdictions]]",
                    known.join(", ")
                )
            },
        );
    }
    found
}
