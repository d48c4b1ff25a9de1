//! Turns a [`CatalogSpec`] into a [`Catalog`], reporting every problem at once.
//!
//! Each rule yields one [`ConfigError`] naming the path of the value (`regions[2].pools[0].reserved`)
//! and the fix. Checks run in configuration order, so the report reads top to bottom.

use std::collections::{HashMap, HashSet};

use crate::catalog::{
    Catalog, Jurisdiction, Model, ModelKind, Pool, PoolTotals, PricingUnit, Quotas, Region,
    Residency, Routing, Tenant,
};
use crate::error::{ConfigError, ConfigErrors, ConfigWarning};
use crate::ids::{IdError, JurisdictionId, ModelId, PoolId, RegionId, TenantId};
use crate::location::{NetworkModel, UnitVector};
use crate::quota::{MonthlyBudget, RateLimit, RateLimiter};
use crate::sets::IndexSet;
use crate::spec::{
    CatalogSpec, ModelSpec, PoolSpec, QuotaSpec, RegionSpec, ResidencySpec, RoutingSpec, TenantSpec,
};

/// Most regions one catalog may hold (the route decision ranks by a 16-bit region index).
pub const MAX_REGIONS: usize = 1 << 16;

/// Collects problems while a spec is checked.
#[derive(Default)]
struct Report {
    errors: Vec<ConfigError>,
    warnings: Vec<ConfigWarning>,
}

impl Report {
    fn error(
        &mut self,
        path: impl Into<String>,
        problem: impl Into<String>,
        fix: impl Into<String>,
    ) {
        self.errors.push(ConfigError {
            path: path.into(),
            problem: problem.into(),
            fix: fix.into(),
        });
    }

    fn warn(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.warnings.push(ConfigWarning {
            path: path.into(),
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
struct Names {
    jurisdictions: HashMap<String, JurisdictionId>,
    /// Region id → position among the valid regions; `None` when the region itself was
    /// invalid (already reported), so references to it add no second error.
    regions: HashMap<String, Option<usize>>,
    /// Model id → position among the valid models, `None` when invalid (as for regions).
    models: HashMap<String, Option<usize>>,
}

impl CatalogSpec {
    /// Checks every rule and builds the [`Catalog`], or returns every problem found.
    pub fn validate(&self) -> Result<Catalog, ConfigErrors> {
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
            return Err(ConfigErrors(report.errors));
        };
        if !report.errors.is_empty() {
            return Err(ConfigErrors(report.errors));
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

fn known_jurisdiction(
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

fn check_region(i: usize, spec: &RegionSpec, names: &Names, report: &mut Report) -> Option<Region> {
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
    let endpoint_ok = ["http://", "https://"]
        .iter()
        .any(|scheme| spec.endpoint.len() > scheme.len() && spec.endpoint.starts_with(scheme));
    if !endpoint_ok {
        report.error(
            format!("{path}.endpoint"),
            format!("{:?} is not an http(s) URL", spec.endpoint),
            "give the agent's base URL, e.g. https://eu-west.agents.example.com:9443",
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

fn check_model(
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
fn region_set(
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

fn check_tenant(
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

fn warn_unreachable_models(i: usize, tenant: &Tenant, models: &[Model], report: &mut Report) {
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
