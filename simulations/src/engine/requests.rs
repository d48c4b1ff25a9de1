//! A request's life in the loop: routing and placement at arrival, completion, loss in an
//! outage; scenario events; the invariant checks and the final summary.

use super::{Job, Kind, Sim};
use crate::demand::Arrival;
use crate::engine::RunResult;
use crate::metrics::Summary;
use crate::region::Admission;
use crate::scenario::{ScenarioEvent, US_PER_HOUR};
use crate::strategy::Ask;

impl Sim<'_> {
    pub(super) fn arrival(&mut self) {
        let Some(a) = self.next else { return };
        self.next = self.demand.next_arrival();
        if let Some(n) = self.next {
            self.schedule(n.time_us, Kind::Arrival);
        }
        self.outcomes.arrived += 1;
        let nr = self.regions.len();
        let city = usize::from(a.city);
        let edge = city % self.edges.len();
        let tenant = usize::from(a.tenant);
        self.outcomes.tenants[tenant].0 += 1;
        let ask = Ask {
            tenant,
            model: usize::from(a.model),
            client: self.scenario.spec.demand.cities[city].location,
            rtt_ms: &self.rtt_ms[city * nr..(city + 1) * nr],
            units: a.units,
            now_ms: self.now / 1000,
        };
        self.router
            .choose(&self.catalog, &self.edges[edge], &ask, &mut self.order);
        if self.order.is_empty() {
            self.outcomes.refused += 1;
            return;
        }
        let goal_ms = self.catalog.tenants()[tenant]
            .latency_goal_ms
            .unwrap_or(f64::INFINITY);
        let job = self.new_job(Job {
            arrival_us: self.now,
            extra_us: 0,
            goal_us: (goal_ms * 1000.0).min(u64::MAX as f64) as u64,
            service_us: a.service_us,
            live: true,
            edge: edge as u16,
            tenant: a.tenant,
            region: None,
            epoch: 0,
        });
        if !self.place(job, &a, edge) {
            self.outcomes.dropped += 1;
            self.end_job(job);
        }
    }

    /// Tries the strategy's regions in order; `false` when none took the job. A dead region
    /// costs a connect timeout and opens this edge's circuit to it; a full one refuses
    /// after a round trip.
    fn place(&mut self, job: u32, a: &Arrival, edge: usize) -> bool {
        let nr = self.regions.len();
        let (city, tenant) = (usize::from(a.city), usize::from(a.tenant));
        let timeout_us = self.scenario.spec.simulation.connect_timeout_ms * 1000;
        for i in 0..self.order.len() {
            let (r, wants_slot) = self.order[i];
            let rtt_us = (self.rtt_ms[city * nr + r] * 1000.0) as u64;
            if !self.catalog.tenants()[tenant].allowed_regions.contains(r) {
                self.outcomes.residency_violations += 1;
                if self.options.check {
                    let name = self.options.strategy.name();
                    self.violation = Some(format!(
                        "{name} placed a request outside its tenant's residency"
                    ));
                }
            }
            if !self.regions[r].up {
                self.jobs[job as usize].extra_us += timeout_us;
                self.outcomes.failovers += 1;
                if let Some(st) = self.edges[edge].region_mut(r) {
                    st.circuit_open = true;
                }
                continue;
            }
            match self.regions[r].admit(job, a.service_us, wants_slot, self.now) {
                Admission::Refused => {
                    self.jobs[job as usize].extra_us += rtt_us;
                    self.outcomes.failovers += 1;
                    continue;
                }
                Admission::Started(s) => self.started(r, s),
                Admission::Queued(Some((slot, generation))) => {
                    let at = self.now + self.scenario.spec.simulation.on_demand_start_ms * 1000;
                    self.schedule(
                        at,
                        Kind::Ready {
                            region: r as u32,
                            slot,
                            generation,
                        },
                    );
                }
                Admission::Queued(None) => {}
            }
            let placed = &mut self.jobs[job as usize];
            placed.extra_us += rtt_us;
            placed.region = Some(r as u16);
            placed.epoch = self.epochs[r];
            if let Some(st) = self.edges[edge].region_mut(r) {
                st.in_flight += 1;
            }
            return true;
        }
        false
    }

    fn new_job(&mut self, job: Job) -> u32 {
        self.live_jobs += 1;
        match self.free_jobs.pop() {
            Some(id) => {
                self.jobs[id as usize] = job;
                id
            }
            None => {
                self.jobs.push(job);
                (self.jobs.len() - 1) as u32
            }
        }
    }

    /// Ends a request; ending one twice is an invariant violation.
    fn end_job(&mut self, id: u32) {
        let job = &mut self.jobs[id as usize];
        if !job.live {
            self.violation = Some(format!("request {id} ended twice"));
            return;
        }
        job.live = false;
        self.live_jobs -= 1;
        // The edge sees the answer (or the error): a request it still counted in flight
        // since the region's last report no longer is.
        if let Some(r) = job.region.map(usize::from)
            && self.epochs[r] == job.epoch
            && let Some(st) = self.edges[usize::from(job.edge)].region_mut(r)
        {
            st.in_flight = st.in_flight.saturating_sub(1);
        }
        self.free_jobs.push(id);
    }

    pub(super) fn complete(&mut self, id: u32, _region: usize) {
        let job = self.jobs[id as usize];
        let latency_us = self.now - job.arrival_us + job.extra_us;
        self.latency.record(latency_us as f64 / 1000.0);
        self.outcomes.completed += 1;
        let per_tenant = &mut self.outcomes.tenants[usize::from(job.tenant)];
        per_tenant.1 += 1;
        if latency_us <= job.goal_us {
            self.outcomes.met_goal += 1;
            per_tenant.2 += 1;
        }
        let b = self.ledger.bucket(self.now);
        self.ledger.completed[b] += 1;
        self.end_job(id);
    }

    pub(super) fn scenario_event(&mut self, index: usize) {
        let Some(&(_, event)) = self.scenario.events.get(index) else {
            return;
        };
        match event {
            ScenarioEvent::Outage { region, down: true } => {
                let mut lost = std::mem::take(&mut self.lost);
                self.regions[region].go_down(self.now, &mut self.ledger, region, &mut lost);
                for id in lost.drain(..) {
                    self.outcomes.failed += 1;
                    self.end_job(id);
                }
                self.lost = lost;
            }
            ScenarioEvent::Outage {
                region,
                down: false,
            } => self.regions[region].up = true,
            ScenarioEvent::Price { region, factor } => self.change_price(region, factor),
        }
    }

    /// Multiplies a region's on-demand prices: bills what ran at the old price, then every
    /// strategy (and Meridian's catalog) sees the new one.
    fn change_price(&mut self, region: usize, factor: f64) {
        self.regions[region].settle_billing(self.now, &mut self.ledger, region);
        for pool in &mut self.catalog_spec.regions[region].pools {
            pool.on_demand_price_per_hour = pool.on_demand_price_per_hour.map(|p| p * factor);
        }
        // The edited spec differs from a valid one only by a positive factor on prices.
        if let Ok(catalog) = self.catalog_spec.validate() {
            let price = catalog.regions()[region]
                .on_demand_price_per_hour()
                .unwrap_or(0.0);
            self.regions[region].price_per_us = price / 3.6e9;
            self.catalog = catalog;
        }
    }

    /// Checks the regions an event may have changed (every region after an arrival or a
    /// scenario event) and that every request that arrived has ended or is in the system.
    pub(super) fn check(&mut self, kind: Kind) -> Result<(), super::InvariantViolation> {
        let touched = match kind {
            Kind::Heartbeat { .. } => 0..0,
            Kind::Done { region, .. }
            | Kind::Ready { region, .. }
            | Kind::IdleCheck { region, .. } => region as usize..region as usize + 1,
            Kind::Arrival | Kind::Scenario { .. } => 0..self.regions.len(),
        };
        for r in touched {
            if let Err(what) = self.regions[r].check() {
                return Err(self.broken(format!("{what} in {}", self.catalog.regions()[r].id)));
            }
        }
        if matches!(kind, Kind::Arrival) {
            self.check_in_flight()?;
        }
        let o = &self.outcomes;
        let ended = o.completed + o.refused + o.dropped + o.failed;
        if o.arrived != ended + self.live_jobs {
            let what = format!(
                "{} arrived but {ended} ended and {} are live",
                o.arrived, self.live_jobs
            );
            return Err(self.broken(what));
        }
        Ok(())
    }

    /// Each edge's in-flight count for a region is the number of its requests there that
    /// are still running or waiting and were placed since the region's last report.
    fn check_in_flight(&self) -> Result<(), super::InvariantViolation> {
        let nr = self.regions.len();
        let mut counted = vec![0u32; self.edges.len() * nr];
        for job in self.jobs.iter().filter(|j| j.live) {
            if let Some(r) = job.region.map(usize::from)
                && self.epochs[r] == job.epoch
            {
                counted[usize::from(job.edge) * nr + r] += 1;
            }
        }
        for (e, edge) in self.edges.iter().enumerate() {
            for (r, st) in edge.regions().iter().enumerate() {
                if st.in_flight != counted[e * nr + r] {
                    let what = format!(
                        "edge {e} counts {} in flight to region {r}, but {} are",
                        st.in_flight,
                        counted[e * nr + r]
                    );
                    return Err(self.broken(what));
                }
            }
        }
        Ok(())
    }

    pub(super) fn finish(self) -> RunResult {
        let hours = self.scenario.duration_us() as f64 / US_PER_HOUR;
        let regions = self.scenario.catalog.regions();
        let reserved_cost = regions
            .iter()
            .map(|r| r.reserved_cost_per_hour() * hours)
            .sum();
        let slots: u32 = regions.iter().map(|r| r.reserved_slots()).sum();
        let busy: f64 = self.ledger.reserved_busy_us.iter().sum();
        let capacity = f64::from(slots) * self.scenario.duration_us() as f64;
        let summary = Summary {
            strategy: self.options.strategy.name().to_owned(),
            outcomes: self.outcomes,
            reserved_cost,
            on_demand_cost: self.ledger.on_demand_cost.iter().sum(),
            reserved_utilisation: if capacity > 0.0 { busy / capacity } else { 0.0 },
            p50_ms: self.latency.quantile(0.50),
            p95_ms: self.latency.quantile(0.95),
            p99_ms: self.latency.quantile(0.99),
        };
        RunResult {
            summary,
            ledger: self.ledger,
            latency: self.latency,
        }
    }
}
