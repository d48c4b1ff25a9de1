//! The discrete-event loop: arrivals, routing, service, heartbeats and scenario events on a
//! virtual clock in microseconds.
//!
//! Events are kept in order of (time, sequence number) (see [`queue`]), so simultaneous
//! events run in the order they were scheduled and a run is deterministic. Requests are
//! placed at the moment they arrive; the network round trip to the chosen region, and the
//! time lost on failed attempts (a connect timeout for a dead region, a round trip for a
//! refusal), are added to their latency. In checking mode every step is followed by a check
//! of the invariants (see [`InvariantViolation`]).

mod edge;
mod queue;
mod requests;
#[cfg(test)]
mod tests;

use std::ops::Range;

use policy::{Catalog, CatalogSpec, RegionStatus};

use self::edge::EdgeView;
use self::queue::EventQueue;
use crate::demand::{Arrival, Demand};
use crate::host::{HostSim, SlotState, Started};
use crate::metrics::{Histogram, Ledger, Outcomes, Summary};
use crate::scenario::Scenario;
use crate::strategy::{Router, StrategyKind};

/// What to run.
#[derive(Debug, Clone, Copy)]
pub struct RunOptions {
    /// Seed of every random choice.
    pub seed: u64,
    /// Requests over the run (expected; arrivals are random).
    pub requests: u64,
    /// Which strategy routes.
    pub strategy: StrategyKind,
    /// Check the invariants after every step (slow; for tests).
    pub check: bool,
}

/// Everything a run measured.
#[derive(Debug, Clone)]
pub struct RunResult {
    /// The totals.
    pub summary: Summary,
    /// GPU time and spend per region and bucket.
    pub ledger: Ledger,
    /// Latencies of completed requests.
    pub latency: Histogram,
}

/// An invariant broken during a checked run: which seed, strategy and moment, and what.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("invariant broken with seed {seed} ({strategy}) at {time_us} µs: {what}")]
pub struct InvariantViolation {
    /// The seed, to replay the run.
    pub seed: u64,
    /// The strategy.
    pub strategy: &'static str,
    /// Virtual time, µs.
    pub time_us: u64,
    /// What was wrong.
    pub what: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Arrival,
    Done {
        host: u32,
        slot: u32,
        generation: u32,
    },
    Ready {
        host: u32,
        slot: u32,
        generation: u32,
    },
    IdleCheck {
        host: u32,
        slot: u32,
    },
    /// Every host of a region that is up reports.
    Heartbeat {
        region: u32,
    },
    Scenario {
        index: u32,
    },
}

/// A request in the system.
#[derive(Debug, Clone, Copy, Default)]
struct Job {
    arrival_us: u64,
    /// Network round trip plus time lost on failed attempts.
    extra_us: u64,
    goal_us: u64,
    service_us: u64,
    live: bool,
    /// The edge that sent it.
    edge: u16,
    /// Its tenant.
    tenant: u16,
    /// The host it was placed on; `None` until it is.
    host: Option<u32>,
    /// The host's report count when it was placed: while no newer report has arrived,
    /// the edge still counts it in flight there.
    epoch: u32,
}

/// Runs one strategy over a scenario.
pub fn run(scenario: &Scenario, options: RunOptions) -> Result<RunResult, InvariantViolation> {
    let mut sim = Sim::new(scenario, options);
    sim.run()?;
    Ok(sim.finish())
}

struct Sim<'a> {
    scenario: &'a Scenario,
    options: RunOptions,
    catalog: Catalog,
    catalog_spec: CatalogSpec,
    /// Every region's hosts, region by region.
    hosts: Vec<HostSim>,
    /// Per region, its hosts' indices in `hosts`.
    region_hosts: Vec<Range<usize>>,
    edges: Vec<EdgeView>,
    /// Each host's last report, copied to every edge.
    host_reports: Vec<RegionStatus>,
    /// Each region's last status: the sum of its hosts' reports, copied to every edge.
    region_reports: Vec<RegionStatus>,
    /// Reports received from each host so far.
    epochs: Vec<u32>,
    /// The fresh reports of a region with a stale host, reused.
    fresh: Vec<RegionStatus>,
    /// Hosts of one region in the order the edge tries them, reused.
    host_order: Vec<usize>,
    /// Round-trip ms, `[city * regions + region]`.
    rtt_ms: Vec<f64>,
    events: EventQueue<Kind>,
    now: u64,
    jobs: Vec<Job>,
    free_jobs: Vec<u32>,
    live_jobs: u64,
    router: Router,
    order: Vec<(usize, bool)>,
    lost: Vec<u32>,
    demand: Demand<'a>,
    next: Option<Arrival>,
    ledger: Ledger,
    latency: Histogram,
    outcomes: Outcomes,
    violation: Option<String>,
}

impl<'a> Sim<'a> {
    fn new(scenario: &'a Scenario, options: RunOptions) -> Self {
        let sim = &scenario.spec.simulation;
        let catalog = scenario.catalog.clone();
        let (hosts, region_hosts) = build_hosts(scenario);
        let network = catalog.routing().network;
        let rtt_ms = scenario
            .spec
            .demand
            .cities
            .iter()
            .flat_map(|c| {
                catalog
                    .regions()
                    .iter()
                    .map(move |r| network.rtt_ms(c.location.distance_km(&r.location)))
            })
            .collect();
        let bucket_us = sim.bucket_minutes * 60_000_000;
        let mut demand = Demand::new(scenario, options.seed, options.requests);
        let next = demand.next_arrival();
        Self {
            scenario,
            options,
            catalog_spec: scenario.spec.catalog.clone(),
            edges: vec![EdgeView::new(&catalog, hosts.len()); sim.edges as usize],
            host_reports: vec![RegionStatus::default(); hosts.len()],
            region_reports: vec![RegionStatus::default(); catalog.regions().len()],
            epochs: vec![0; hosts.len()],
            fresh: Vec::new(),
            host_order: Vec::new(),
            hosts,
            region_hosts,
            rtt_ms,
            events: EventQueue::new(|k| matches!(k, Kind::Arrival)),
            now: 0,
            jobs: Vec::new(),
            free_jobs: Vec::new(),
            live_jobs: 0,
            router: Router::new(options.strategy),
            order: Vec::new(),
            lost: Vec::new(),
            demand,
            next,
            ledger: Ledger::new(catalog.regions().len(), scenario.duration_us(), bucket_us),
            latency: Histogram::default(),
            outcomes: Outcomes {
                tenants: vec![(0, 0, 0); catalog.tenants().len()],
                ..Outcomes::default()
            },
            violation: None,
            catalog,
        }
    }

    fn schedule(&mut self, time: u64, kind: Kind) {
        self.events.push(time, kind);
    }

    fn run(&mut self) -> Result<(), InvariantViolation> {
        let interval = self.scenario.spec.simulation.heartbeat_interval_ms * 1000;
        let n = self.region_hosts.len() as u64;
        for r in 0..self.region_hosts.len() {
            self.heartbeat(r);
            self.schedule(
                interval * (r as u64 + 1) / n.max(1),
                Kind::Heartbeat { region: r as u32 },
            );
        }
        for (index, (t, _)) in self.scenario.events.iter().enumerate() {
            self.schedule(
                *t,
                Kind::Scenario {
                    index: index as u32,
                },
            );
        }
        if let Some(a) = self.next {
            self.schedule(a.time_us, Kind::Arrival);
        }
        while let Some(event) = self.events.pop() {
            self.now = event.time;
            self.step(event.kind, interval);
            if self.options.check {
                self.check(event.kind)?;
            }
            if let Some(what) = self.violation.take() {
                return Err(self.broken(what));
            }
        }
        if self.live_jobs != 0 {
            return Err(self.broken(format!("{} requests never ended", self.live_jobs)));
        }
        Ok(())
    }

    fn broken(&self, what: String) -> InvariantViolation {
        InvariantViolation {
            seed: self.options.seed,
            strategy: self.options.strategy.name(),
            time_us: self.now,
            what,
        }
    }

    fn step(&mut self, kind: Kind, interval: u64) {
        match kind {
            Kind::Arrival => self.arrival(),
            Kind::Done {
                host,
                slot,
                generation,
            }
            | Kind::Ready {
                host,
                slot,
                generation,
            } => {
                let s = self.hosts[host as usize].slots[slot as usize];
                let expected = if matches!(kind, Kind::Done { .. }) {
                    SlotState::Busy
                } else {
                    SlotState::Starting
                };
                if s.generation == generation && s.state == expected {
                    if expected == SlotState::Busy {
                        self.complete(s.job);
                    }
                    self.free_slot(host as usize, slot);
                }
            }
            Kind::IdleCheck { host, slot } => {
                let release_us = self.scenario.spec.simulation.idle_release_ms * 1000;
                let again = self.hosts[host as usize].idle_check(
                    slot,
                    self.now,
                    release_us,
                    &mut self.ledger,
                );
                if let Some(at) = again {
                    self.schedule(at, kind);
                }
            }
            Kind::Heartbeat { region } => {
                self.heartbeat(region as usize);
                if self.now < self.scenario.duration_us() || self.live_jobs > 0 {
                    self.schedule(self.now + interval, kind);
                }
            }
            Kind::Scenario { index } => self.scenario_event(index as usize),
        }
    }

    fn free_slot(&mut self, h: usize, slot: u32) {
        match self.hosts[h].slot_free(slot, self.now, &mut self.ledger) {
            Some(started) => self.started(h, started),
            // One release check per slot at a time keeps the event heap small: a check that
            // finds the slot idle for less than the release time comes back later.
            None if slot >= self.hosts[h].reserved()
                && !self.hosts[h].slots[slot as usize].check_pending =>
            {
                self.hosts[h].slots[slot as usize].check_pending = true;
                let at = self.now + self.scenario.spec.simulation.idle_release_ms * 1000;
                self.schedule(
                    at,
                    Kind::IdleCheck {
                        host: h as u32,
                        slot,
                    },
                );
            }
            None => {}
        }
    }

    fn started(&mut self, h: usize, s: Started) {
        let service = self.jobs[s.job as usize].service_us;
        self.schedule(
            self.now + service,
            Kind::Done {
                host: h as u32,
                slot: s.slot,
                generation: s.generation,
            },
        );
    }
}

/// Every region's hosts by the scenario's layout, region by region, and each region's range
/// of them.
fn build_hosts(scenario: &Scenario) -> (Vec<HostSim>, Vec<Range<usize>>) {
    let sim = &scenario.spec.simulation;
    let mut hosts = Vec::new();
    let mut ranges = Vec::new();
    for (r, (region, shapes)) in scenario
        .catalog
        .regions()
        .iter()
        .zip(&scenario.hosts)
        .enumerate()
    {
        let price = region.on_demand_price_per_hour().unwrap_or(0.0);
        let start = hosts.len();
        hosts.extend(
            shapes
                .iter()
                .map(|&shape| HostSim::new(r, shape, price, sim)),
        );
        ranges.push(start..hosts.len());
    }
    (hosts, ranges)
}

/// Runs several strategies on the same arrivals (`base` gives seed, requests and checking;
/// its strategy is ignored), on up to `threads` threads; the results are in the order of
/// `strategies` and do not depend on `threads`.
pub fn compare(
    scenario: &Scenario,
    base: RunOptions,
    strategies: &[StrategyKind],
    threads: usize,
) -> Result<Vec<RunResult>, InvariantViolation> {
    let seed = base.seed;
    let threads = threads.max(1);
    let mut results: Vec<Option<Result<RunResult, InvariantViolation>>> =
        vec![None; strategies.len()];
    for (chunk, out) in strategies.chunks(threads).zip(results.chunks_mut(threads)) {
        std::thread::scope(|s| {
            let handles: Vec<_> = chunk
                .iter()
                .map(|&strategy| {
                    let options = RunOptions { strategy, ..base };
                    s.spawn(move || run(scenario, options))
                })
                .collect();
            for (slot, h) in out.iter_mut().zip(handles) {
                *slot = h.join().ok();
            }
        });
    }
    results
        .into_iter()
        .zip(strategies)
        .map(|(r, s)| {
            r.unwrap_or_else(|| {
                Err(InvariantViolation {
                    seed,
                    strategy: s.name(),
                    time_us: 0,
                    what: "the run panicked".to_owned(),
                })
            })
        })
        .collect()
}
