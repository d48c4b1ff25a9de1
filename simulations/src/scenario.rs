//! Scenarios: a policy catalog, the demand on it and the events of the day, read from TOML.
//!
//! A scenario file has five parts (see `simulations/scenarios/*.toml` for commented ones):
//!
//! - `name`, `description`;
//! - `[simulation]`: how the world runs ([`SimulationSpec`], every field with unit and default);
//! - `[catalog]`: a `policy::CatalogSpec` (regions, pools, models, tenants, routing), checked
//!   by `CatalogSpec::validate` exactly as the control plane checks it;
//! - `[demand]`: client cities with their time zones, which tenants call from where, and the
//!   model mix ([`DemandSpec`]);
//! - `[[events]]`: region outages, price changes and demand spikes ([`EventSpec`]).
//!
//! [`Scenario::from_toml`] checks the cross references and reports every problem at once.

use std::collections::BTreeMap;
use std::path::Path;

use policy::{Catalog, CatalogSpec, ConfigProblems, Location};
use serde::Deserialize;

use crate::region::{HostShape, layout};

/// A scenario as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScenarioSpec {
    /// Short name, used in reports.
    pub name: String,
    /// What the scenario shows.
    #[serde(default)]
    pub description: String,
    /// How the world runs.
    #[serde(default)]
    pub simulation: SimulationSpec,
    /// Regions, pools, models, tenants and routing settings.
    pub catalog: CatalogSpec,
    /// Who calls from where.
    pub demand: DemandSpec,
    /// What happens during the run.
    #[serde(default)]
    pub events: Vec<EventSpec>,
}

/// How the simulated world runs.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SimulationSpec {
    /// Requests over the whole run (the load the scenario's capacity is sized for);
    /// `--requests` overrides it. Default 1 000 000.
    pub requests: u64,
    /// Length of the run in hours of virtual time, starting at 00:00 UTC. Default 24.
    pub duration_hours: f64,
    /// Each host's agent reports its status this often, in ms (a region's hosts report on
    /// the same tick). Default 1000.
    pub heartbeat_interval_ms: u64,
    /// Edges; each keeps its own in-flight counts and circuit breakers. Cities are spread
    /// over them in turn. Default 8.
    pub edges: u32,
    /// Jobs that may wait in one host's queue (each agent instance has its own). Default 500.
    pub queue_limit: u32,
    /// GPUs on a host (one agent instance each), for the hosts `host_gpus` does not list.
    /// Default 8, as on an H100 machine. See [`crate::region`] for how a region's reserved
    /// and on-demand GPUs are laid out on its hosts.
    pub gpus_per_host: u32,
    /// Per region id, the GPUs of its first hosts in order, e.g. `"us-east" = [8, 4]`; the
    /// rest of its GPUs go on hosts of `gpus_per_host`. Default: none listed.
    pub host_gpus: BTreeMap<String, Vec<u32>>,
    /// Time to bring up an on-demand GPU, in ms. Default 60 000.
    pub on_demand_start_ms: u64,
    /// An on-demand GPU idle this long is released, in ms. Default 120 000.
    pub idle_release_ms: u64,
    /// A host's agent starts an on-demand GPU when its queued work per running or starting
    /// slot exceeds this, in ms (whatever the edge asked for). Default 10 000.
    pub scale_up_wait_ms: u64,
    /// Time lost on a connection to a dead host before failing over, in ms. Default 250.
    pub connect_timeout_ms: u64,
    /// Service times vary uniformly by ± this fraction around the model's GPU-seconds.
    /// Default 0.2.
    pub service_jitter: f64,
    /// Width of the buckets of the time series (cost and utilisation over the day), in
    /// minutes. Default 15.
    pub bucket_minutes: u64,
}

impl Default for SimulationSpec {
    fn default() -> Self {
        Self {
            requests: 1_000_000,
            duration_hours: 24.0,
            heartbeat_interval_ms: 1000,
            edges: 8,
            queue_limit: 500,
            gpus_per_host: 8,
            host_gpus: BTreeMap::new(),
            on_demand_start_ms: 60_000,
            idle_release_ms: 120_000,
            scale_up_wait_ms: 10_000,
            connect_timeout_ms: 250,
            service_jitter: 0.2,
            bucket_minutes: 15,
        }
    }
}

/// Who calls from where.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DemandSpec {
    /// Population centres clients call from.
    pub cities: Vec<CitySpec>,
    /// Tenants and where their clients are.
    pub tenants: Vec<TenantDemandSpec>,
    /// Which models are called, how often and how big the requests are.
    pub models: Vec<ModelDemandSpec>,
    /// Traffic at the daily low as a fraction of the daily peak (0–1). Default 0.25.
    #[serde(default = "default_trough")]
    pub trough: f64,
    /// Local hour of the daily peak. Default 15.
    #[serde(default = "default_peak_hour")]
    pub peak_hour: f64,
}

fn default_trough() -> f64 {
    0.25
}
fn default_peak_hour() -> f64 {
    15.0
}

/// A population centre.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CitySpec {
    /// Its name, e.g. `Tokyo`.
    pub name: String,
    /// Where it is.
    pub location: Location,
    /// Its time zone's offset from UTC in hours, e.g. 9 for Tokyo.
    pub utc_offset_hours: f64,
    /// Relative share of traffic at equal local time (e.g. metro population in millions).
    pub weight: f64,
}

/// One tenant's share of traffic.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantDemandSpec {
    /// Tenant id in the catalog.
    pub tenant: String,
    /// Relative share of the traffic of the cities it calls from.
    pub share: f64,
    /// Cities its clients are in; absent means every city.
    #[serde(default)]
    pub cities: Option<Vec<String>>,
}

/// One model's share of traffic.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelDemandSpec {
    /// Model id in the catalog.
    pub model: String,
    /// Relative share of requests (among the models a tenant may call).
    pub share: f64,
    /// Fewest units of work per request (images, megapixels, seconds). Default 1.
    #[serde(default = "one")]
    pub units_min: f64,
    /// Most units of work per request. Default `units_min`.
    #[serde(default)]
    pub units_max: Option<f64>,
}

fn one() -> f64 {
    1.0
}

/// Something that happens during the run.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventSpec {
    /// `outage` (a region, or one of its hosts, is down from `start_hour` to `end_hour`), `price` (a region's
    /// on-demand price is multiplied by `factor` from `start_hour`) or `spike` (demand from
    /// `cities`, or everywhere, is multiplied by `factor` from `start_hour` to `end_hour`).
    pub kind: String,
    /// Hour of the run (from 00:00 UTC) it starts.
    pub start_hour: f64,
    /// Hour it ends (outage, spike); absent: never (within the run).
    #[serde(default)]
    pub end_hour: Option<f64>,
    /// The region (outage, price).
    #[serde(default)]
    pub region: Option<String>,
    /// One host of the region (outage): its index among the region's hosts, from 0, in the
    /// order of [`crate::region`]'s layout; absent: the whole region.
    #[serde(default)]
    pub host: Option<u32>,
    /// The multiplier (price, spike).
    #[serde(default)]
    pub factor: Option<f64>,
    /// The cities (spike); absent means all.
    #[serde(default)]
    pub cities: Option<Vec<String>>,
}

/// Why a scenario cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    /// The file could not be read.
    #[error("read scenario {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// Syntax or type error, or an unknown field, with its line.
    #[error("scenario is not valid: {0}")]
    Parse(#[from] policy::ParseError),
    /// The catalog breaks policy's rules.
    #[error("[catalog] {0}")]
    Catalog(#[from] ConfigProblems),
    /// The demand or events break the scenario's rules; every problem, each with its fix.
    #[error("{} problem(s) in the scenario:\n  - {}", .0.len(), .0.join("\n  - "))]
    Invalid(Vec<String>),
}

/// What happens at a moment of the run.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ScenarioEvent {
    /// The region, or one of its hosts, goes down (`true`) or comes back (`false`).
    Outage {
        /// Region index.
        region: usize,
        /// Host index within the region; `None`: every host.
        host: Option<usize>,
        /// Down from now on (`true`) or up again.
        down: bool,
    },
    /// The region's on-demand prices are multiplied by `factor`.
    Price {
        /// Region index.
        region: usize,
        /// Multiplier.
        factor: f64,
    },
}

/// A demand spike: cities' traffic multiplied by `factor` during `[start_us, end_us)`.
#[derive(Debug, Clone, PartialEq)]
pub struct Spike {
    /// Start, µs of virtual time.
    pub start_us: u64,
    /// End, µs.
    pub end_us: u64,
    /// Multiplier.
    pub factor: f64,
    /// City indices; empty means all.
    pub cities: Vec<usize>,
}

/// A checked scenario, ready to run.
#[derive(Debug, Clone)]
pub struct Scenario {
    /// The spec it came from (the planner edits its catalog).
    pub spec: ScenarioSpec,
    /// The validated catalog.
    pub catalog: Catalog,
    /// Timed events, in time order: (µs, event).
    pub events: Vec<(u64, ScenarioEvent)>,
    /// Demand spikes.
    pub spikes: Vec<Spike>,
    /// Per city: cumulative tenant shares, over tenant indices in `city_tenants`.
    pub city_tenants: Vec<(Vec<usize>, Vec<f64>)>,
    /// Per tenant (catalog index): cumulative model shares, over demand model entries.
    pub tenant_models: Vec<(Vec<usize>, Vec<f64>)>,
    /// Per demand model entry: catalog model index and the units range.
    pub model_units: Vec<(usize, f64, f64)>,
    /// Per region (catalog index): its hosts' shares of its slots.
    pub hosts: Vec<Vec<HostShape>>,
}

/// Microseconds in an hour.
pub const US_PER_HOUR: f64 = 3_600_000_000.0;

impl Scenario {
    /// Reads and checks a scenario file.
    pub fn load(path: &Path) -> Result<Self, ScenarioError> {
        let text = std::fs::read_to_string(path).map_err(|source| ScenarioError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::from_toml(&text)
    }

    /// Reads and checks a scenario from TOML text.
    pub fn from_toml(text: &str) -> Result<Self, ScenarioError> {
        Self::from_spec(contract::problems::from_toml_strict(text)?)
    }

    /// Checks a spec: the catalog by policy's rules, then demand and events.
    pub fn from_spec(spec: ScenarioSpec) -> Result<Self, ScenarioError> {
        let catalog = spec.catalog.validate()?;
        let mut problems = Vec::new();
        check_simulation(&spec.simulation, &mut problems);
        let hosts = hosts(&spec.simulation, &catalog, &mut problems);
        let city_tenants = crate::scenario_check::city_tenants(&spec, &catalog, &mut problems);
        let (tenant_models, model_units) =
            crate::scenario_check::tenant_models(&spec, &catalog, &mut problems);
        let (events, spikes) =
            crate::scenario_check::events(&spec, &catalog, &hosts, &mut problems);
        if !problems.is_empty() {
            return Err(ScenarioError::Invalid(problems));
        }
        Ok(Self {
            spec,
            catalog,
            events,
            spikes,
            city_tenants,
            tenant_models,
            model_units,
            hosts,
        })
    }

    /// Run length in µs of virtual time.
    pub fn duration_us(&self) -> u64 {
        (self.spec.simulation.duration_hours * US_PER_HOUR) as u64
    }

    /// Same scenario with a new catalog spec (the planner's reservations); re-validated.
    pub fn with_catalog(&self, catalog: CatalogSpec) -> Result<Self, ScenarioError> {
        let mut spec = self.spec.clone();
        spec.catalog = catalog;
        Self::from_spec(spec)
    }
}

fn check_simulation(sim: &SimulationSpec, problems: &mut Vec<String>) {
    if !(sim.duration_hours.is_finite()
        && sim.duration_hours > 0.0
        && sim.duration_hours <= 24.0 * 31.0)
    {
        problems.push(format!(
            "simulation.duration_hours is {}; fix: set it between 0 and 744 (a month)",
            sim.duration_hours
        ));
    }
    if sim.heartbeat_interval_ms == 0
        || sim.edges == 0
        || sim.bucket_minutes == 0
        || sim.gpus_per_host == 0
    {
        problems.push(
            "simulation.heartbeat_interval_ms, edges, bucket_minutes and gpus_per_host must be \
             above 0; fix: remove them for the defaults"
                .to_owned(),
        );
    }
    if !(0.0..1.0).contains(&sim.service_jitter) {
        problems.push(format!(
            "simulation.service_jitter is {}; fix: set it in [0, 1)",
            sim.service_jitter
        ));
    }
}

/// Each region's hosts by [`layout`]; `host_gpus` must name catalog regions and list sizes
/// above 0.
fn hosts(
    sim: &SimulationSpec,
    catalog: &Catalog,
    problems: &mut Vec<String>,
) -> Vec<Vec<HostShape>> {
    for (region, sizes) in &sim.host_gpus {
        if catalog.region_index(region).is_none() {
            problems.push(format!(
                "simulation.host_gpus names region {region:?}, which is not in [catalog]; fix: \
                 correct the id"
            ));
        }
        if sizes.contains(&0) {
            problems.push(format!(
                "simulation.host_gpus.{region} lists a host of 0 GPUs; fix: give every host 1 \
                 or more"
            ));
        }
    }
    catalog
        .regions()
        .iter()
        .map(|r| {
            let listed = sim
                .host_gpus
                .get(r.id.as_str())
                .map_or(&[][..], Vec::as_slice);
            layout(
                r.reserved_slots(),
                r.on_demand_slots(),
                listed,
                sim.gpus_per_host,
            )
        })
        .collect()
}
