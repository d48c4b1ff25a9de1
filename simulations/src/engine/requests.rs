//! A request's life in the loop: routing and placement at arrival (the strategy picks the
//! region, the edge's instance ranking the host), completion, loss in an outage; scenario
//! events; the invariant checks and the final summary.

use super::edge::is_fresh;
use super::{Job, Kind, Sim};
use crate::demand::Arrival;
use crate::engine::RunResult;
use crate::host::Admission;
use crate::metrics::Summary;
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
        let nr = self.region_hosts.len();
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
        self.router.choose(
            &self.catalog,
            &self.edges[edge].regions,
            &ask,
            &mut self.order,
        );
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
            host: None,
            epoch: 0,
        });
        if !self.place(job, &a, edge) {
            self.outcomes.dropped += 1;
            self.end_job(job);
        }
    }

    /// Tries the strategy's regions in order, and in each its hosts in the order the edge
    /// ranks them (`policy::rank_instances`, leaving out hosts the control plane no longer
    /// lists); `false` when none took the job. A dead host costs a connect timeout and opens
    /// this edge's circuit to it; a full one refuses after a round trip.
    pub(super) fn place(&mut self, job: u32, a: &Arrival, edge: usize) -> bool {
        let nr = self.region_hosts.len();
        let (city, tenant) = (usize::from(a.city), usize::from(a.tenant));
        for i in 0..self.order.len() {
            let (r, wants_slot) = self.order[i];
            if !self.catalog.tenants()[tenant].allowed_regions.contains(r) {
                self.outcomes.residency_violations += 1;
                if self.options.check {
                    let name = self.options.strategy.name();
                    self.violation = Some(format!(
                        "{name} placed a request outside its tenant's residency"
                    ));
                }
            }
            let rtt_us = (self.rtt_ms[city * nr + r] * 1000.0) as u64;
            self.rank_hosts(r, edge, a, wants_slot);
            for k in 0..self.host_order.len() {
                let h = self.region_hosts[r].start + self.host_order[k];
                if self.try_host(job, h, edge, a.service_us, wants_slot, rtt_us) {
                    return true;
                }
            }
        }
        false
    }

    /// Fills `host_order` with region `r`'s hosts (indices within the region) in the order
    /// edge `edge` tries them for arrival `a` (`wants_slot`: the decision chose to start an
    /// on-demand slot there).
    fn rank_hosts(&mut self, r: usize, edge: usize, a: &Arrival, wants_slot: bool) {
        let model = usize::from(a.model);
        let service_ms = self.catalog.models()[model].gpu_seconds_per_unit * a.units * 1000.0;
        let (now_ms, timeout) = self.freshness();
        let seen = &self.edges[edge].hosts[self.region_hosts[r].clone()];
        let path = if wants_slot {
            policy::SlotPath::OnDemandStart
        } else {
            policy::SlotPath::Queued
        };
        // Equal hosts take turns by arrival, as the edge's by request.
        let turn = a.time_us as usize;
        policy::rank_instances(seen, model, path, service_ms, turn, &mut self.host_order);
        self.host_order
            .retain(|&k| is_fresh(&seen[k], now_ms, timeout));
    }

    /// Sends the job to host `h`; `true` when it took it (running or queued).
    fn try_host(
        &mut self,
        job: u32,
        h: usize,
        edge: usize,
        service_us: u64,
        wants_slot: bool,
        rtt_us: u64,
    ) -> bool {
        if !self.hosts[h].up {
            let timeout_us = self.scenario.spec.simulation.connect_timeout_ms * 1000;
            self.jobs[job as usize].extra_us += timeout_us;
            self.outcomes.failovers += 1;
            self.open_circuit(edge, h);
            return false;
        }
        match self.hosts[h].admit(job, service_us, wants_slot, self.now) {
            Admission::Refused => {
                self.jobs[job as usize].extra_us += rtt_us;
                self.outcomes.failovers += 1;
                return false;
            }
            Admission::Started(s) => self.started(h, s),
            Admission::Queued(Some((slot, generation))) => {
                let at = self.now + self.scenario.spec.simulation.on_demand_start_ms * 1000;
                let host = h as u32;
                self.schedule(
                    at,
                    Kind::Ready {
                        host,
                        slot,
                        generation,
                    },
                );
            }
            Admission::Queued(None) => {}
        }
        let placed = &mut self.jobs[job as usize];
        placed.extra_us += rtt_us;
        placed.host = Some(h as u32);
        placed.epoch = self.epochs[h];
        self.count_in_flight(edge, h);
        true
    }

    pub(super) fn new_job(&mut self, job: Job) -> u32 {
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
        let (edge, host, epoch) = (usize::from(job.edge), job.host, job.epoch);
        self.free_jobs.push(id);
        // The edge sees the answer (or the error): a request it still counted in flight
        // since the host's last report no longer is.
        if let Some(h) = host.map(|h| h as usize)
            && self.epochs[h] == epoch
        {
            self.uncount_in_flight(edge, h);
        }
    }

    pub(super) fn complete(&mut self, id: u32) {
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
            ScenarioEvent::Outage { region, host, down } => {
                let range = self.region_hosts[region].clone();
                let hosts = match host {
                    Some(h) => range.start + h..range.start + h + 1,
                    None => range,
                };
                let known = self.hosts.len();
                for h in hosts.filter(|&h| h < known) {
                    self.host_outage(h, down);
                }
            }
            ScenarioEvent::Price { region, factor } => self.change_price(region, factor),
        }
    }

    /// Host `h` goes down (losing every job it held) or comes back.
    fn host_outage(&mut self, h: usize, down: bool) {
        if !down {
            self.hosts[h].up = true;
            return;
        }
        let mut lost = std::mem::take(&mut self.lost);
        self.hosts[h].go_down(self.now, &mut self.ledger, &mut lost);
        for id in lost.drain(..) {
            self.outcomes.failed += 1;
            self.end_job(id);
        }
        self.lost = lost;
    }

    /// Multiplies a region's on-demand prices: bills what ran at the old price, then every
    /// strategy (and Meridian's catalog) sees the new one.
    fn change_price(&mut self, region: usize, factor: f64) {
        for h in self.region_hosts[region].clone() {
            self.hosts[h].settle_billing(self.now, &mut self.ledger);
        }
        for pool in &mut self.catalog_spec.regions[region].pools {
            pool.on_demand_price_per_hour = pool.on_demand_price_per_hour.map(|p| p * factor);
        }
        // The edited spec differs from a valid one only by a positive factor on prices.
        if let Ok(catalog) = self.catalog_spec.validate() {
            let price = catalog.regions()[region]
                .on_demand_price_per_hour()
                .unwrap_or(0.0);
            for h in self.region_hosts[region].clone() {
                self.hosts[h].price_per_us = price / 3.6e9;
            }
            self.catalog = catalog;
        }
    }

    /// Checks the hosts an event may have changed (every host after an arrival or a
    /// scenario event) and that every request that arrived has ended or is in the system.
    pub(super) fn check(&mut self, kind: Kind) -> Result<(), super::InvariantViolation> {
        let touched = match kind {
            Kind::Heartbeat { .. } => 0..0,
            Kind::Done { host, .. } | Kind::Ready { host, .. } | Kind::IdleCheck { host, .. } => {
                host as usize..host as usize + 1
            }
            Kind::Arrival | Kind::Scenario { .. } => 0..self.hosts.len(),
        };
        for h in touched {
            if let Err(what) = self.hosts[h].check() {
                let r = self.hosts[h].region();
                let at = h - self.region_hosts[r].start;
                let region = &self.catalog.regions()[r].id;
                return Err(self.broken(format!("{what} on host {at} of {region}")));
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

    /// Each edge's in-flight count for a host is the number of its requests there that are
    /// still running or waiting and were placed since the host's last report; its count for
    /// a region is the sum over the region's hosts.
    fn check_in_flight(&self) -> Result<(), super::InvariantViolation> {
        let nh = self.hosts.len();
        let mut counted = vec![0u32; self.edges.len() * nh];
        for job in self.jobs.iter().filter(|j| j.live) {
            if let Some(h) = job.host.map(|h| h as usize)
                && self.epochs[h] == job.epoch
            {
                counted[usize::from(job.edge) * nh + h] += 1;
            }
        }
        for (e, edge) in self.edges.iter().enumerate() {
            let counted = &counted[e * nh..(e + 1) * nh];
            for (h, st) in edge.hosts.iter().enumerate() {
                if st.in_flight != counted[h] {
                    let what = format!(
                        "edge {e} counts {} in flight to host {h}, but {} are",
                        st.in_flight, counted[h]
                    );
                    return Err(self.broken(what));
                }
            }
            for (r, st) in edge.regions.regions().iter().enumerate() {
                let sum: u32 = counted[self.region_hosts[r].clone()].iter().sum();
                if st.in_flight != sum {
                    let what = format!(
                        "edge {e} counts {} in flight to region {r}, but {sum} are",
                        st.in_flight
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
