//! The discrete-event loop: arrivals, routing, service, heartbeats and scenario events on a
//! virtual clock in microseconds.
//!
//! Events are kept in order of (time, sequence number) (see [`queue`]), so simultaneous
//! events run in the order they were scheduled and a run is deterministic. Requests are
//! placed at the moment they arrive; the network round trip to the chosen region, and the
//! time lost on failed attempts (a connect timeout for a dead region, a round trip for a
//! refusal), are added to their latency. In checking mode every step is followed by a check
//! of the invariants (see [`InvariantViolation`]).

mod queue;
mod requests;

use policy::{Catalog, CatalogSpec, LiveStatus, RegionStatus};

use self::queue::EventQueue;
use crate::demand::{Arrival, Demand};
use crate::metrics::{Histogram, Ledger, Outcomes, Summary};
use crate::region::{RegionSim, SlotState, Started};
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
        region: u32,
        slot: u32,
        generation: u32,
    },
    Ready {
        region: u32,
        slot: u32,
        generation: u32,
    },
    IdleCheck {
        region: u32,
        slot: u32,
    },
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
    /// Where it was placed; `None` until it is.
    region: Option<u16>,
    /// The region's report count when it was placed: while no newer report has arrived,
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
    regions: Vec<RegionSim>,
    edges: Vec<LiveStatus>,
    /// Each region's last report, copied to every edge.
    reports: Vec<RegionStatus>,
    /// Reports received from each region so far.
    epochs: Vec<u32>,
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
        let regions = catalog
            .regions()
            .iter()
            .map(|r| {
                let price = r.on_demand_price_per_hour().unwrap_or(0.0);
                RegionSim::new(r.reserved_slots(), r.on_demand_slots(), price, sim)
            })
            .collect();
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
            edges: vec![LiveStatus::new(&catalog); sim.edges as usize],
            reports: vec![RegionStatus::default(); catalog.regions().len()],
            epochs: vec![0; catalog.regions().len()],
            regions,
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
        let n = self.regions.len() as u64;
        for r in 0..self.regions.len() {
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
                region,
                slot,
                generation,
            }
            | Kind::Ready {
                region,
                slot,
                generation,
            } => {
                let s = self.regions[region as usize].slots[slot as usize];
                let expected = if matches!(kind, Kind::Done { .. }) {
                    SlotState::Busy
                } else {
                    SlotState::Starting
                };
                if s.generation == generation && s.state == expected {
                    if expected == SlotState::Busy {
                        self.complete(s.job, region as usize);
                    }
                    self.free_slot(region as usize, slot);
                }
            }
            Kind::IdleCheck { region, slot } => {
                let r = region as usize;
                let release_us = self.scenario.spec.simulation.idle_release_ms * 1000;
                let again =
                    self.regions[r].idle_check(slot, self.now, release_us, &mut self.ledger, r);
                if let Some(at) = again {
                    self.schedule(at, kind);
                }
            }
            Kind::Heartbeat { region } => {
                let r = region as usize;
                if self.regions[r].up {
                    self.heartbeat(r);
                }
                if self.now < self.scenario.duration_us() || self.live_jobs > 0 {
                    self.schedule(self.now + interval, kind);
                }
            }
            Kind::Scenario { index } => self.scenario_event(index as usize),
        }
    }

    /// A region's agent reports: every edge learns its status and forgets its in-flight
    /// count there (the report includes those requests); a report also closes the edge's
    /// circuit to it.
    ///
    /// Every edge's per-model loads for a region are a copy of the region's last report
    /// (nothing else writes them), so they are copied only when the report changed them,
    /// which an idle region's report does not.
    fn heartbeat(&mut self, r: usize) {
        let start_ms = self.scenario.spec.simulation.on_demand_start_ms as f64;
        let models = self.catalog.models().len();
        self.epochs[r] += 1;
        let report = &mut self.reports[r];
        let models_changed = self.regions[r].report(self.now, start_ms, report, models);
        for edge in &mut self.edges {
            if let Some(st) = edge.region_mut(r) {
                // Field by field, so the per-model list keeps its allocation.
                st.last_heartbeat_ms = report.last_heartbeat_ms;
                st.healthy = report.healthy;
                st.draining = report.draining;
                st.free_reserved = report.free_reserved;
                st.free_on_demand = report.free_on_demand;
                st.on_demand_startable = report.on_demand_startable;
                st.on_demand_start_ms = report.on_demand_start_ms;
                if models_changed {
                    st.models.clone_from(&report.models);
                }
                st.in_flight = 0;
                st.circuit_open = false;
            }
        }
    }

    fn free_slot(&mut self, r: usize, slot: u32) {
        match self.regions[r].slot_free(slot, self.now, &mut self.ledger, r) {
            Some(started) => self.started(r, started),
            // One release check per slot at a time keeps the event heap small: a check that
            // finds the slot idle for less than the release time comes back later.
            None if slot >= self.regions[r].reserved()
                && !self.regions[r].slots[slot as usize].check_pending =>
            {
                self.regions[r].slots[slot as usize].check_pending = true;
                let at = self.now + self.scenario.spec.simulation.idle_release_ms * 1000;
                self.schedule(
                    at,
                    Kind::IdleCheck {
                        region: r as u32,
                        slot,
                    },
                );
            }
            None => {}
        }
    }

    fn started(&mut self, r: usize, s: Started) {
        let service = self.jobs[s.job as usize].service_us;
        self.schedule(
            self.now + service,
            Kind::Done {
                region: r as u32,
                slot: s.slot,
                generation: s.generation,
            },
        );
    }
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
