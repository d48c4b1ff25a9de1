//! Live status of regions: what their agents last reported, plus what the edge knows itself
//! (its circuit breakers and its own in-flight requests).
//!
//! The route decision reads this; the edge fills it from heartbeats and the simulator from
//! its simulated world. Entries are indexed like the [`Catalog`]'s regions and models.

use crate::catalog::Catalog;

/// A model's queue and timing in one region, as its agent reports it.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelLoad {
    /// Jobs waiting.
    pub queue_depth: u32,
    /// More jobs the queue can take.
    pub queue_room: u32,
    /// Expected wait, in ms, for a job queued now.
    pub expected_wait_ms: f64,
    /// Measured service time per unit, in ms; `None` uses the model's configured GPU-seconds.
    pub service_ms_per_unit: Option<f64>,
    /// Whether the model is loaded (else a job pays its cold start).
    pub loaded: bool,
    /// Measured time to load the model, in ms.
    pub cold_start_ms: f64,
}

impl Default for ModelLoad {
    /// What is assumed for a model its agent has not reported: loaded, configured service
    /// time, queue room; the route decision then assumes one job's service time of queue
    /// wait when no slot is free.
    fn default() -> Self {
        Self {
            queue_depth: 0,
            queue_room: u32::MAX,
            expected_wait_ms: 0.0,
            service_ms_per_unit: None,
            loaded: true,
            cold_start_ms: 0.0,
        }
    }
}

/// One region's status.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct RegionStatus {
    /// When the last heartbeat arrived, Unix ms; `None` if never.
    pub last_heartbeat_ms: Option<u64>,
    /// Whether the agent reports itself healthy.
    pub healthy: bool,
    /// Whether the agent is draining (finishing work, taking none).
    pub draining: bool,
    /// Whether this edge's circuit breaker for the region is open.
    pub circuit_open: bool,
    /// Idle reserved slots.
    pub free_reserved: u32,
    /// Idle on-demand slots already running.
    pub free_on_demand: u32,
    /// On-demand slots that can still be started (each takes `on_demand_start_ms`).
    pub on_demand_startable: u32,
    /// Time to start an on-demand slot, ms; `None` uses the routing default.
    pub on_demand_start_ms: Option<f64>,
    /// Requests this edge sent to the region since its last report (docs/design.md §3 step 5).
    pub in_flight: u32,
    /// Per model, by catalog model index; `None` where the agent reported nothing.
    pub models: Vec<Option<ModelLoad>>,
}

impl RegionStatus {
    /// The reported load for model `model`, or the defaults when none was reported.
    pub fn model_load(&self, model: usize) -> Option<&ModelLoad> {
        self.models.get(model).and_then(Option::as_ref)
    }

    /// Records a model's load.
    pub fn set_model_load(&mut self, model: usize, load: ModelLoad) {
        if self.models.len() <= model {
            self.models.resize(model + 1, None);
        }
        self.models[model] = Some(load);
    }
}

/// The status of every region in a catalog.
#[derive(Debug, Clone, PartialEq)]
pub struct LiveStatus {
    regions: Vec<RegionStatus>,
}

impl LiveStatus {
    /// Status for `catalog`'s regions, none of which has reported yet.
    pub fn new(catalog: &Catalog) -> Self {
        Self {
            regions: vec![RegionStatus::default(); catalog.regions().len()],
        }
    }

    /// Status of the region at `index`.
    pub fn region(&self, index: usize) -> Option<&RegionStatus> {
        self.regions.get(index)
    }

    /// Mutable status of the region at `index`.
    pub fn region_mut(&mut self, index: usize) -> Option<&mut RegionStatus> {
        self.regions.get_mut(index)
    }

    /// All regions' status, by index.
    pub fn regions(&self) -> &[RegionStatus] {
        &self.regions
    }
}
