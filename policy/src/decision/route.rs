//! The algorithm of the route decision: filter, estimate, rank (see the module above).

use super::{
    Candidate, CapacityClass, Exclusion, LatencyEstimate, LiveStatus, ModelLoad, RegionStatus,
    ResolvedRequest, RouteDecision, RouteError, RouteRequest, SlotPath,
};
use crate::catalog::{Catalog, Model, Region, Tenant};
use crate::sets::IndexSet;

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
        let mut decision = RouteDecision::one_off();
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
        match self.resolve(request) {
            Ok(resolved) => self.route_resolved_into(status, &resolved, out),
            Err(e) => {
                // Never leave a reused decision showing a previous request's answer.
                out.clear();
                Err(e)
            }
        }
    }

    /// Resolves a request's tenant and model to catalog indices and checks what can be
    /// checked before any region is considered: the tenant may call the model, the units
    /// are a positive number.
    pub fn resolve<'a>(
        &self,
        request: &RouteRequest<'a>,
    ) -> Result<ResolvedRequest<'a>, RouteError> {
        let tenant = self
            .tenant_index(request.tenant)
            .ok_or_else(|| RouteError::UnknownTenant(request.tenant.to_owned()))?;
        let model = self
            .model_index(request.model)
            .ok_or_else(|| RouteError::UnknownModel(request.model.to_owned()))?;
        let resolved = ResolvedRequest {
            tenant,
            model,
            client: request.client,
            narrowing: request.narrowing,
            units: request.units,
            now_ms: request.now_ms,
        };
        self.check(&resolved)?;
        Ok(resolved)
    }

    /// Like [`Catalog::route_into`] for a request already resolved to indices (edges keep
    /// them per key, the simulator has them), which saves looking up two names per request.
    pub fn route_resolved_into(
        &self,
        status: &LiveStatus,
        request: &ResolvedRequest<'_>,
        out: &mut RouteDecision,
    ) -> Result<(), RouteError> {
        // Cleared first, so a reused decision never shows a previous request's answer.
        out.clear();
        self.check(request)?;
        let (tenant_ix, model_ix) = (request.tenant, request.model);
        let tenant = &self.tenants[tenant_ix];
        let ctx = Context {
            catalog: self,
            tenant,
            model: &self.models[model_ix],
            model_ix,
            units: request.units,
            lambda_per_ms: tenant.latency_value_per_second / 1000.0,
            goal_ms: tenant.latency_goal_ms.unwrap_or(f64::INFINITY),
        };
        out.tenant = tenant_ix;
        out.model = model_ix;
        let unknown = RegionStatus::default();
        let RouteDecision {
            excluded,
            unsorted,
            network,
            rtt_scratch,
            ..
        } = &mut *out;
        let mut rtts = network.client(self, request.client, rtt_scratch);
        for (r, region) in self.regions.iter().enumerate() {
            let st = status.region(r).unwrap_or(&unknown);
            if let Err(why) = ctx.filter(r, st, request) {
                excluded.push((r, why));
                continue;
            }
            let network_ms = rtts.rtt_ms(r, &region.point);
            match ctx.best_path(r, region, st, network_ms) {
                Some(c) => unsorted.push(c),
                None => excluded.push((
                    r,
                    Exclusion::Full {
                        queue_depth: st.model_load(model_ix).map_or(0, |l| l.queue_depth),
                    },
                )),
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

    /// The checks of a resolved request that need no region.
    fn check(&self, request: &ResolvedRequest<'_>) -> Result<(), RouteError> {
        let tenant = self
            .tenants
            .get(request.tenant)
            .ok_or_else(|| RouteError::UnknownTenant(format!("#{}", request.tenant)))?;
        let model = self
            .models
            .get(request.model)
            .ok_or_else(|| RouteError::UnknownModel(format!("#{}", request.model)))?;
        if !tenant.may_call(request.model) {
            return Err(RouteError::ModelNotAllowed {
                tenant: tenant.id.to_string(),
                model: model.id.to_string(),
            });
        }
        if !(request.units.is_finite() && request.units > 0.0) {
            return Err(RouteError::BadUnits(request.units.to_string()));
        }
        Ok(())
    }
}

/// What stays the same across the regions of one decision.
struct Context<'a> {
    catalog: &'a Catalog,
    tenant: &'a Tenant,
    model: &'a Model,
    model_ix: usize,
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
        request: &ResolvedRequest<'_>,
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
    /// region has neither a slot nor queue room. Inlined into the loop over regions, so the
    /// candidate is built where it is pushed rather than copied there.
    #[inline(always)]
    fn best_path(
        &self,
        r: usize,
        region: &Region,
        st: &RegionStatus,
        network_ms: f64,
    ) -> Option<Candidate> {
        let routing = &self.catalog.routing;
        let reported = st.model_load(self.model_ix);
        let load = reported.unwrap_or(&UNREPORTED);

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
        let gpu_seconds = self.model.gpu_seconds_per_unit * self.units;
        let reserved_price = routing.reserved_cost_per_gpu_second;
        let job = Job {
            network_ms,
            service_ms,
            gpu_seconds,
        };

        // Rank the ways in by their keys (tier, score, latency) and build a candidate only
        // for the best. A way's index sits in the key's low bits, so the first of equals
        // wins.
        let mut best = Way::NONE;
        if free_reserved > 0 {
            best = best.min(self.way(&job, SlotPath::ReservedIdle, true, 0.0, reserved_price));
        }
        // An idle reserved slot that meets the goal is the best way in when queued jobs also
        // run on reserved capacity: every on-demand way is in a later tier, and the queue
        // adds a wait ≥ 0 (or NaN, which misses the goal) at the same price, so it cannot
        // have a lower score or latency, and ties go to the idle slot's lower way index. The
        // other ways are then not worked out (debug builds still do, to check that claim).
        let settled =
            free_reserved > 0 && Candidate::rank_tier(best.key) == 0 && region.reserved_slots() > 0;
        if !settled || cfg!(debug_assertions) {
            let idle = best;
            let room = Room {
                free_warm,
                startable,
                queue_room,
                excess,
            };
            best = best.min(self.other_ways(st, region, &job, &room, service_per_unit));
            debug_assert!(
                !settled || best.key == idle.key,
                "an idle reserved slot lost"
            );
        }
        if best.key == u128::MAX {
            return None;
        }
        let (path, wait_ms) = (best.path, best.wait_ms);
        Some(Candidate {
            region: r,
            path,
            capacity: if best.reserved {
                CapacityClass::Reserved
            } else {
                CapacityClass::OnDemand
            },
            latency: LatencyEstimate {
                network_ms,
                wait_ms,
                service_ms,
            },
            marginal_cost: best.cost,
            score: Candidate::rank_score(best.key),
            meets_goal: Candidate::rank_tier(best.key) < 2,
            rank: (best.key & !0xFFFF) | r as u128,
        })
    }

    /// The best of the ways in other than an idle reserved slot: a warm or a new on-demand
    /// slot, or the queue; [`Way::NONE`] if there is none. A region without on-demand pools
    /// cannot buy capacity.
    #[inline(always)]
    fn other_ways(
        &self,
        st: &RegionStatus,
        region: &Region,
        job: &Job,
        room: &Room,
        service_per_unit: f64,
    ) -> Way {
        let routing = &self.catalog.routing;
        let reserved_price = routing.reserved_cost_per_gpu_second;
        let on_demand_price = region.totals.on_demand_per_gpu_second;
        let mut best = Way::NONE;
        if let Some(price) = on_demand_price {
            if room.free_warm > 0 {
                best = best.min(self.way(job, SlotPath::OnDemandWarm, false, 0.0, price));
            }
            if room.startable > 0 {
                let start_ms = st
                    .on_demand_start_ms
                    .map_or(routing.on_demand_start_ms as f64, |ms| ms.max(0.0));
                best = best.min(self.way(job, SlotPath::OnDemandStart, false, start_ms, price));
            }
        }
        // Queued jobs run on reserved slots where the region has any.
        let queued_on_reserved = region.reserved_slots() > 0;
        let queued_price = if queued_on_reserved {
            Some(reserved_price)
        } else {
            on_demand_price
        };
        if let (true, Some(price)) = (room.queue_room > 0, queued_price) {
            // Without a report for the model, assume one job's service time ahead in the queue.
            let reported_wait = st
                .model_load(self.model_ix)
                .map_or(job.service_ms, |l| l.expected_wait_ms.max(0.0));
            let queue_wait = reported_wait
                + f64::from(room.excess) * service_per_unit
                    / f64::from(region.reserved_slots().max(1));
            best = best.min(self.way(job, SlotPath::Queued, queued_on_reserved, queue_wait, price));
        }
        best
    }

    /// One way into a region, scored.
    fn way(&self, job: &Job, path: SlotPath, reserved: bool, wait_ms: f64, price: f64) -> Way {
        let total = job.network_ms + wait_ms + job.service_ms;
        let cost = job.gpu_seconds * price;
        let score = cost + self.lambda_per_ms * total;
        let tier = match (total <= self.goal_ms, reserved) {
            (true, true) => 0,
            (true, false) => 1,
            (false, _) => 2,
        };
        Way {
            key: Candidate::rank_key(tier, score, total, path as usize),
            cost,
            wait_ms,
            path,
            reserved,
        }
    }
}

/// What a way into a region adds its wait and price to.
struct Job {
    network_ms: f64,
    service_ms: f64,
    gpu_seconds: f64,
}

/// What is left of a region's capacity for this edge's next request.
struct Room {
    free_warm: u32,
    startable: u32,
    queue_room: u32,
    /// This edge's requests since the last report beyond the free and startable slots.
    excess: u32,
}

/// A way into a region with its rank key; the smaller key is the better way.
#[derive(Clone, Copy)]
struct Way {
    key: u128,
    cost: f64,
    wait_ms: f64,
    path: SlotPath,
    reserved: bool,
}

impl Way {
    const NONE: Way = Way {
        key: u128::MAX,
        cost: 0.0,
        wait_ms: 0.0,
        path: SlotPath::Queued,
        reserved: false,
    };

    fn min(self, other: Way) -> Way {
        if other.key < self.key { other } else { self }
    }
}

/// What is assumed for a model its agent has not reported (see [`ModelLoad::default`]).
static UNREPORTED: ModelLoad = ModelLoad {
    queue_depth: 0,
    queue_room: u32::MAX,
    expected_wait_ms: 0.0,
    service_ms_per_unit: None,
    loaded: true,
    cold_start_ms: 0.0,
};

/// Takes up to `*demand` from `available`, returning what is left of `available`.
fn take(demand: &mut u32, available: u32) -> u32 {
    let used = (*demand).min(available);
    *demand -= used;
    available - used
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unreported_model_gets_the_default_load() {
        assert_eq!(UNREPORTED, ModelLoad::default());
    }
}
