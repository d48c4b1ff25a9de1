//! The algorithm of the route decision: filter, estimate, rank (see the module above).

use super::{
    Candidate, CapacityClass, Exclusion, LatencyEstimate, LiveStatus, ModelLoad, RegionStatus,
    RouteDecision, RouteError, RouteRequest, SlotPath,
};
use crate::catalog::{Catalog, Model, Region, Tenant};
use crate::location::UnitVector;
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
        // Cleared first, so a reused decision never shows a previous request's answer.
        out.candidates.clear();
        out.excluded.clear();
        out.unsorted.clear();
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
        let mut best: Option<(u8, f64, f64, f64, usize)> = None;
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
            let cost = gpu_seconds * price;
            let score = cost + self.lambda_per_ms * total;
            let tier = match (total <= self.goal_ms, capacity) {
                (true, CapacityClass::Reserved) => 0,
                (true, CapacityClass::OnDemand) => 1,
                (false, _) => 2,
            };
            let better = best.is_none_or(|(t, s, l, ..)| {
                tier < t || (tier == t && (score < s || (score == s && total < l)))
            });
            if better {
                best = Some((tier, score, total, cost, k));
            }
        }
        let (tier, score, total, marginal_cost, k) = best?;
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
            marginal_cost,
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
