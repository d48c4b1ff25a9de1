//! The route decision (docs/design.md §3): for one request, the ordered regions to try and, for
//! every other region, why not.
//!
//! 1. **Filter**: the region serves the model; lies inside the tenant's residency and the
//!    request's narrowing; has a fresh heartbeat, reports healthy, is not draining, its
//!    circuit is closed; and has a free slot or queue room.
//! 2. **Latency**: network round trip from great-circle distance, plus queue wait (or the
//!    start of an on-demand slot), plus service time (plus the model's cold start if it is
//!    not loaded).
//! 3. **Marginal cost**: GPU-seconds × the reserved opportunity cost when the job runs on
//!    reserved capacity, else × the on-demand price.
//! 4. **Rank**: candidates that meet the tenant's latency goal on reserved capacity first,
//!    then those that meet it only by buying on-demand capacity, then those that miss it;
//!    within each tier by score = marginal cost + λ × latency, then latency, then
//!    configuration order. So paid capacity is bought only when reserved capacity is full
//!    or too slow for the goal, and the answer is the same for the same inputs.
//!
//! Within a region the best of its ways to run the job (idle reserved slot, warm on-demand
//! slot, new on-demand slot, queue) is chosen by the same ranking.

mod instances;
mod network;
mod route;
mod status;

use std::fmt;

pub use instances::{EdgeSide, rank_instances, rank_instances_with, serves};
pub use status::{LiveStatus, ModelLoad, RegionStatus};

use crate::catalog::Catalog;
use crate::location::Location;
use crate::sets::IndexSet;

/// What is being routed.
#[derive(Debug, Clone)]
pub struct RouteRequest<'a> {
    /// Tenant id (from the authenticated key).
    pub tenant: &'a str,
    /// Model id.
    pub model: &'a str,
    /// Where the client is (from geo-IP, or the edge's own location when unknown).
    pub client: Location,
    /// Regions the request narrows residency to, from [`Catalog::narrowing`]; `None`: no
    /// narrowing.
    pub narrowing: Option<&'a IndexSet>,
    /// Expected units of work (images, megapixels, seconds, …); > 0.
    pub units: f64,
    /// Now, Unix ms, to judge heartbeat freshness.
    pub now_ms: u64,
}

/// A [`RouteRequest`] whose tenant and model are catalog indices, from [`Catalog::resolve`].
#[derive(Debug, Clone, Copy)]
pub struct ResolvedRequest<'a> {
    /// Tenant index in the catalog.
    pub tenant: usize,
    /// Model index in the catalog.
    pub model: usize,
    /// Where the client is.
    pub client: Location,
    /// Regions the request narrows residency to; `None`: no narrowing.
    pub narrowing: Option<&'a IndexSet>,
    /// Expected units of work; > 0.
    pub units: f64,
    /// Now, Unix ms.
    pub now_ms: u64,
}

/// Why a request cannot be routed at all, before any region is considered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    /// The tenant is not in the catalog.
    #[error("unknown tenant {0:?}")]
    UnknownTenant(String),
    /// The model is not in the catalog.
    #[error("unknown model {0:?}: GET /v1/models lists the models this key may call")]
    UnknownModel(String),
    /// The tenant may not call the model.
    #[error("model {model} is not allowed for tenant {tenant}")]
    ModelNotAllowed {
        /// The tenant.
        tenant: String,
        /// The model.
        model: String,
    },
    /// The request's residency narrowing names something unknown.
    #[error("residency narrowing names unknown {kind} {name:?}")]
    UnknownNarrowing {
        /// `jurisdiction` or `region`.
        kind: &'static str,
        /// The unknown name.
        name: String,
    },
    /// The request's unit estimate is not a positive number.
    #[error("units must be a positive number, not {0}")]
    BadUnits(String),
}

impl RouteError {
    /// The HTTP status the edge answers with (docs/design.md §4).
    pub fn http_status(&self) -> u16 {
        match self {
            RouteError::UnknownTenant(_) => 401,
            RouteError::UnknownModel(_) => 404,
            RouteError::ModelNotAllowed { .. } => 403,
            RouteError::UnknownNarrowing { .. } | RouteError::BadUnits(_) => 422,
        }
    }
}

/// How a job would get a GPU in a region.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SlotPath {
    /// An idle reserved slot, now.
    ReservedIdle,
    /// An idle on-demand slot that is already running, now.
    OnDemandWarm,
    /// A new on-demand slot, after it starts.
    OnDemandStart,
    /// The queue, behind the jobs already waiting.
    Queued,
}

/// Whether a job runs on paid-for-anyway or bought-by-the-hour capacity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CapacityClass {
    /// Reserved GPUs (already paid).
    Reserved,
    /// On-demand GPUs (paid per use).
    OnDemand,
}

/// Estimated latency of a request in one region, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LatencyEstimate {
    /// Network round trip.
    pub network_ms: f64,
    /// Queue wait or on-demand slot start.
    pub wait_ms: f64,
    /// Service time, including the model's cold start if it is not loaded.
    pub service_ms: f64,
}

impl LatencyEstimate {
    /// The whole estimate.
    pub fn total_ms(&self) -> f64 {
        self.network_ms + self.wait_ms + self.service_ms
    }
}

/// A region the request may go to, with the estimates behind its rank.
#[derive(Debug, Clone, PartialEq)]
pub struct Candidate {
    /// Region index in the catalog.
    pub region: usize,
    /// How the job would get a GPU.
    pub path: SlotPath,
    /// On which capacity it would run.
    pub capacity: CapacityClass,
    /// Estimated latency.
    pub latency: LatencyEstimate,
    /// Marginal cost to the operator, in money.
    pub marginal_cost: f64,
    /// Marginal cost + λ × latency in seconds.
    pub score: f64,
    /// Whether the latency meets the tenant's goal (true when it has none).
    pub meets_goal: bool,
    /// Tier, score and latency packed so that one integer comparison ranks candidates.
    rank: u128,
}

impl Candidate {
    /// Rank tier: 0 meets the goal on reserved capacity, 1 meets it on on-demand capacity,
    /// 2 misses it.
    pub fn tier(&self) -> u8 {
        Self::rank_tier(self.rank)
    }

    fn rank_tier(rank: u128) -> u8 {
        (rank >> 112) as u8
    }

    fn rank_score(rank: u128) -> f64 {
        f64::from_bits((rank >> 48) as u64)
    }

    /// The sort key: tier, then score, then latency, then configuration order, ascending.
    /// Scores and latencies are non-negative, so their IEEE bits order like the numbers;
    /// latency only breaks ties, so single precision is enough. The region index makes every
    /// key unique, so any sort gives the same order. Layout: tier (2 bits) | score (64) |
    /// latency as f32 (32) | region (16; validation allows at most 65 536 regions).
    fn rank_key(tier: u8, score: f64, latency_ms: f64, region: usize) -> u128 {
        (u128::from(tier) << 112)
            | (u128::from(score.to_bits()) << 48)
            | (u128::from((latency_ms as f32).to_bits()) << 16)
            | (region as u128 & 0xFFFF)
    }
}

/// Why a region is not a candidate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exclusion {
    /// The region does not serve the model.
    ModelNotServed,
    /// The region is outside the tenant's residency.
    OutsideTenantResidency,
    /// The region is outside the residency the request asked for.
    OutsideRequestResidency,
    /// The region's agent never reported.
    NoHeartbeat,
    /// The region's last heartbeat is too old.
    StaleHeartbeat {
        /// Age of the last heartbeat, ms.
        age_ms: u64,
        /// The limit, ms.
        limit_ms: u64,
    },
    /// The agent reports itself unhealthy.
    Unhealthy,
    /// The agent is draining.
    Draining,
    /// This edge's circuit breaker for the region is open.
    CircuitOpen,
    /// No free slot, no on-demand slot to start, and no queue room.
    Full {
        /// Jobs waiting for the model there.
        queue_depth: u32,
    },
}

impl Exclusion {
    /// Whether the region is excluded by residency (a 451 when nothing else is left).
    pub fn is_residency(&self) -> bool {
        matches!(
            self,
            Exclusion::OutsideTenantResidency | Exclusion::OutsideRequestResidency
        )
    }
}

impl fmt::Display for Exclusion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Exclusion::ModelNotServed => f.write_str("does not serve the model"),
            Exclusion::OutsideTenantResidency => f.write_str("is outside the tenant's residency"),
            Exclusion::OutsideRequestResidency => {
                f.write_str("is outside the residency the request asked for")
            }
            Exclusion::NoHeartbeat => f.write_str("has not reported (no heartbeat)"),
            Exclusion::StaleHeartbeat { age_ms, limit_ms } => write!(
                f,
                "last heartbeat {:.1} s ago (limit {:.1} s)",
                *age_ms as f64 / 1000.0,
                *limit_ms as f64 / 1000.0
            ),
            Exclusion::Unhealthy => f.write_str("reports itself unhealthy"),
            Exclusion::Draining => f.write_str("is draining"),
            Exclusion::CircuitOpen => f.write_str("circuit breaker is open"),
            Exclusion::Full { queue_depth } => {
                write!(f, "is full ({queue_depth} waiting, no queue room)")
            }
        }
    }
}

/// Why no region can take the request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Regions serve the model, but none inside the allowed residency: HTTP 451.
    Residency,
    /// Regions inside the residency serve it, but none can take it now: HTTP 503.
    Unavailable,
}

impl Refusal {
    /// The HTTP status the edge answers with.
    pub fn http_status(&self) -> u16 {
        match self {
            Refusal::Residency => 451,
            Refusal::Unavailable => 503,
        }
    }
}

/// The answer for one request.
///
/// A decision reused through [`Catalog::route_into`] also remembers the network round trips
/// of the last client locations it saw, per catalog.
#[derive(Debug, Clone)]
pub struct RouteDecision {
    /// Tenant index.
    pub tenant: usize,
    /// Model index.
    pub model: usize,
    /// Regions to try, best first; the rest are the failover order.
    pub candidates: Vec<Candidate>,
    /// Every other region with the first reason it failed, in configuration order.
    pub excluded: Vec<(usize, Exclusion)>,
    /// Reused between decisions: candidates before sorting, and their sort keys.
    unsorted: Vec<Candidate>,
    keys: Vec<u128>,
    network: network::NetworkCache,
    rtt_scratch: Vec<f64>,
}

impl Default for RouteDecision {
    fn default() -> Self {
        Self::with_cache(network::NetworkCache::enabled())
    }
}

impl PartialEq for RouteDecision {
    fn eq(&self, other: &Self) -> bool {
        (self.tenant, self.model, &self.candidates, &self.excluded)
            == (
                other.tenant,
                other.model,
                &other.candidates,
                &other.excluded,
            )
    }
}

impl RouteDecision {
    /// A decision for one request only: it does not remember round trips.
    pub(crate) fn one_off() -> Self {
        Self::with_cache(network::NetworkCache::default())
    }

    fn with_cache(network: network::NetworkCache) -> Self {
        Self {
            tenant: 0,
            model: 0,
            candidates: Vec::new(),
            excluded: Vec::new(),
            unsorted: Vec::new(),
            keys: Vec::new(),
            network,
            rtt_scratch: Vec::new(),
        }
    }

    fn clear(&mut self) {
        self.candidates.clear();
        self.excluded.clear();
        self.unsorted.clear();
    }

    /// The region to try first.
    pub fn target(&self) -> Option<&Candidate> {
        self.candidates.first()
    }

    /// Why there is no candidate, if there is none.
    pub fn refusal(&self) -> Option<Refusal> {
        if !self.candidates.is_empty() {
            return None;
        }
        let served_somewhere = self
            .excluded
            .iter()
            .any(|(_, why)| *why != Exclusion::ModelNotServed);
        let allowed_somewhere = self
            .excluded
            .iter()
            .any(|(_, why)| *why != Exclusion::ModelNotServed && !why.is_residency());
        Some(if served_somewhere && !allowed_somewhere {
            Refusal::Residency
        } else {
            Refusal::Unavailable
        })
    }

    /// Why region `region` is not a candidate; `None` if it is one.
    pub fn why_not(&self, region: usize) -> Option<Exclusion> {
        self.excluded
            .iter()
            .find(|(r, _)| *r == region)
            .map(|(_, why)| *why)
    }

    /// A message for a refused request: what was asked, and why each relevant region was
    /// left out. Regions that do not serve the model are not listed.
    pub fn explain(&self, catalog: &Catalog) -> String {
        let model = &catalog.models()[self.model].id;
        let tenant = &catalog.tenants()[self.tenant].id;
        let reasons: Vec<String> = self
            .excluded
            .iter()
            .filter(|(_, why)| *why != Exclusion::ModelNotServed)
            .map(|(r, why)| {
                let region = &catalog.regions()[*r];
                format!("{} ({}) {why}", region.id, region.jurisdiction)
            })
            .collect();
        match self.refusal() {
            None => format!(
                "{model} for {tenant}: {} candidate region(s)",
                self.candidates.len()
            ),
            Some(Refusal::Residency) => format!(
                "no region allowed by the residency of tenant {tenant} serves {model}: {}",
                reasons.join("; ")
            ),
            Some(Refusal::Unavailable) if reasons.is_empty() => {
                format!("no region serves {model}")
            }
            Some(Refusal::Unavailable) => format!(
                "no allowed region can take {model} now: {}",
                reasons.join("; ")
            ),
        }
    }
}
