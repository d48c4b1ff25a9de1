//! The route decision (DESIGN.md §3): for one request, the ordered regions to try and, for
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

mod status;

use std::fmt;

pub use status::{LiveStatus, ModelLoad, RegionStatus};

use crate::catalog::{Catalog, Model, Region, Tenant};
use crate::location::{Location, UnitVector};
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
    /// The HTTP status the edge answers with (DESIGN.md §4).
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
        (self.rank >> 112) as u8
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
#[derive(Debug, Clone, Default)]
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

impl Catalog {
    /// The regions a request may narrow its residency to: those in `jurisdictions` plus
    /// those listed in `regions`. Unknown names are an error (HTTP 422), never ignored.
    pub fn narrowing(
        &self,
        jurisdictions: &[&str],
        regions: &[&str],
    ) -> Result<IndexSet, RouteError> {
        let mut set = IndexSet::with_capacity(self.regions().len());
        for j in jurisdictions {
            if !self.jurisdictions().iter().any(|k| k.id.as_str() == *j) {
                return Err(RouteError::UnknownNarrowing {
                    kind: "jurisdiction",
                    name: (*j).to_owned(),
                });
            }
            for (i, r) in self.regions().iter().enumerate() {
                if r.jurisdiction.as_str() == *j {
                    set.insert(i);
                }
            }
        }
        for r in regions {
            let i = self
                .region_index(r)
                .ok_or_else(|| RouteError::UnknownNarrowing {
                    kind: "region",
                    name: (*r).to_owned(),
                })?;
            set.insert(i);
        }
        Ok(set)
    }

    /// Decides where `request` should run. See the module docs for the rules.
    pub fn route(
        &self,
        status: &LiveStatus,
        request: &RouteRequest<'_>,
    ) -> Result<RouteDecision, RouteError> {
        let mut decision = RouteDecision::default();
        self.route_into(status, request, &mut decision)?;
        Ok(decision)
    }

    /// Like [`Catalog::route`], reusing `out`'s allocations (for callers that route in a loop).
    pub fn route_into(
        &self,
        status: &LiveStatus,
        request: &RouteRequest<'_>,
        out: &mut RouteDecision,
    ) -> Result<(), RouteError> {
        let tenant_ix = self
            .tenant_index(request.tenant)
            .ok_or_else(|| RouteError::UnknownTenant(request.tenant.to_owned()))?;
        let model_ix = self
            .model_index(request.model)
            .ok_or_else(|| RouteError::UnknownModel(request.model.to_owned()))?;
        let tenant = &self.tenants[tenant_ix];
        if !tenant.may_call(model_ix) {
            return Err(RouteError::ModelNotAllowed {
                tenant: request.tenant.to_owned(),
                model: request.model.to_owned(),
            });
        }
        if !(request.units.is_finite() && request.units > 0.0) {
            return Err(RouteError::BadUnits(request.units.to_string()));
        }
        let ctx = Context {
            catalog: self,
            tenant,
            model: &self.models[model_ix],
            model_ix,
            client: UnitVector::from(request.client),
            units: request.units,
            lambda_per_ms: tenant.latency_value_per_second / 1000.0,
            goal_ms: tenant.latency_goal_ms.unwrap_or(f64::INFINITY),
        };
        out.tenant = tenant_ix;
        out.model = model_ix;
        out.candidates.clear();
        out.excluded.clear();
        out.unsorted.clear();
        let unknown = RegionStatus::default();
        for (r, region) in self.regions.iter().enumerate() {
            let st = status.region(r).unwrap_or(&unknown);
            match ctx.filter(r, st, request) {
                Err(why) => out.excluded.push((r, why)),
                Ok(()) => match ctx.best_path(r, region, st) {
                    Some(c) => out.unsorted.push(c),
                    None => out.excluded.push((
                        r,
                        Exclusion::Full {
                            queue_depth: st.model_load(model_ix).map_or(0, |l| l.queue_depth),
                        },
                    )),
                },
            }
        }
        // Sort small integer keys, not whole candidates. The low 16 bits of a rank hold the
        // region index; here they hold the position in `unsorted` instead, which is in region
        // order, so the order is the same.
        out.keys.clear();
        out.keys.extend(
            out.unsorted
                .iter()
                .enumerate()
                .map(|(i, c)| (c.rank & !0xFFFF) | i as u128),
        );
        out.keys.sort_unstable();
        let RouteDecision {
            candidates,
            unsorted,
            keys,
            ..
        } = out;
        candidates.extend(
            keys.iter()
                .map(|k| unsorted[(*k & 0xFFFF) as usize].clone()),
        );
        Ok(())
    }
}

/// What stays the same across the regions of one decision.
struct Context<'a> {
    catalog: &'a Catalog,
    tenant: &'a Tenant,
    model: &'a Model,
    model_ix: usize,
    client: UnitVector,
    units: f64,
    /// λ per millisecond of latency.
    lambda_per_ms: f64,
    /// The latency goal in ms; infinite when the tenant has none.
    goal_ms: f64,
}

impl Context<'_> {
    /// Step 1 without capacity: the first rule region `r` breaks, if any.
    fn filter(
        &self,
        r: usize,
        st: &RegionStatus,
        request: &RouteRequest<'_>,
    ) -> Result<(), Exclusion> {
        if !self.model.served_by.contains(r) {
            return Err(Exclusion::ModelNotServed);
        }
        if !self.tenant.allowed_regions.contains(r) {
            return Err(Exclusion::OutsideTenantResidency);
        }
        if request.narrowing.is_some_and(|n| !n.contains(r)) {
            return Err(Exclusion::OutsideRequestResidency);
        }
        let last = st.last_heartbeat_ms.ok_or(Exclusion::NoHeartbeat)?;
        let age_ms = request.now_ms.saturating_sub(last);
        let limit_ms = self.catalog.routing.heartbeat_timeout_ms;
        if age_ms > limit_ms {
            return Err(Exclusion::StaleHeartbeat { age_ms, limit_ms });
        }
        if !st.healthy {
            return Err(Exclusion::Unhealthy);
        }
        if st.draining {
            return Err(Exclusion::Draining);
        }
        if st.circuit_open {
            return Err(Exclusion::CircuitOpen);
        }
        Ok(())
    }

    /// Steps 2–4 inside one region: the best way to run the job there, or `None` when the
    /// region has neither a slot nor queue room.
    fn best_path(&self, r: usize, region: &Region, st: &RegionStatus) -> Option<Candidate> {
        let routing = &self.catalog.routing;
        let default_load = ModelLoad::default();
        let reported = st.model_load(self.model_ix);
        let load = reported.unwrap_or(&default_load);

        // This edge's own requests since the last report use free slots first, then queue room.
        let mut excess = st.in_flight;
        let free_reserved = take(&mut excess, st.free_reserved);
        let free_warm = take(&mut excess, st.free_on_demand);
        let startable = take(&mut excess, st.on_demand_startable);
        let queue_room = load.queue_room.saturating_sub(excess);

        // Reported times are clamped to ≥ 0 (`max` also turns NaN into 0), so a faulty report
        // cannot make a region look better than free or break the ranking.
        let service_per_unit = load
            .service_ms_per_unit
            .map_or(self.model.gpu_seconds_per_unit * 1000.0, |ms| ms.max(0.0));
        let cold_start = if load.loaded {
            0.0
        } else {
            load.cold_start_ms.max(0.0)
        };
        let service_ms = service_per_unit * self.units + cold_start;
        let network_ms = routing
            .network
            .rtt_ms(self.client.distance_km(&region.point));
        let gpu_seconds = self.model.gpu_seconds_per_unit * self.units;
        let on_demand_price = region.totals.on_demand_per_gpu_second;
        let start_ms = st
            .on_demand_start_ms
            .map_or(routing.on_demand_start_ms as f64, |ms| ms.max(0.0));
        // Without a report for the model, assume one job's service time ahead in the queue.
        let reported_wait = reported.map_or(service_ms, |l| l.expected_wait_ms.max(0.0));
        let queue_wait = reported_wait
            + f64::from(excess) * service_per_unit / f64::from(region.reserved_slots().max(1));
        let queued_class = if region.reserved_slots() > 0 {
            CapacityClass::Reserved
        } else {
            CapacityClass::OnDemand
        };

        let paths = [
            (
                free_reserved > 0,
                SlotPath::ReservedIdle,
                0.0,
                CapacityClass::Reserved,
            ),
            (
                free_warm > 0,
                SlotPath::OnDemandWarm,
                0.0,
                CapacityClass::OnDemand,
            ),
            (
                startable > 0,
                SlotPath::OnDemandStart,
                start_ms,
                CapacityClass::OnDemand,
            ),
            (queue_room > 0, SlotPath::Queued, queue_wait, queued_class),
        ];
        // Rank the ways in by (tier, score, latency); build a candidate only for the best.
        let mut best: Option<(u8, f64, f64, usize)> = None;
        for (k, &(open, _, wait_ms, capacity)) in paths.iter().enumerate() {
            let price = match capacity {
                _ if !open => continue,
                CapacityClass::Reserved => routing.reserved_cost_per_gpu_second,
                // A region without on-demand pools cannot buy capacity.
                CapacityClass::OnDemand => match on_demand_price {
                    Some(p) => p,
                    None => continue,
                },
            };
            let total = network_ms + wait_ms + service_ms;
            let score = gpu_seconds * price + self.lambda_per_ms * total;
            let tier = match (total <= self.goal_ms, capacity) {
                (true, CapacityClass::Reserved) => 0,
                (true, CapacityClass::OnDemand) => 1,
                (false, _) => 2,
            };
            let better = best.is_none_or(|(t, s, l, _)| {
                tier < t || (tier == t && (score < s || (score == s && total < l)))
            });
            if better {
                best = Some((tier, score, total, k));
            }
        }
        let (tier, score, total, k) = best?;
        let (_, path, wait_ms, capacity) = paths[k];
        Some(Candidate {
            region: r,
            path,
            capacity,
            latency: LatencyEstimate {
                network_ms,
                wait_ms,
                service_ms,
            },
            marginal_cost: score - self.lambda_per_ms * total,
            score,
            meets_goal: tier < 2,
            rank: Candidate::rank_key(tier, score, total, r),
        })
    }
}

/// Takes up to `*demand` from `available`, returning what is left of `available`.
fn take(demand: &mut u32, available: u32) -> u32 {
    let used = (*demand).min(available);
    *demand -= used;
    available - used
}
