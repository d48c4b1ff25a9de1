//! One host of a region: its GPUs and queue, as the agent instance on it runs them.
//!
//! Reserved slots are always up. On-demand slots start when the agent decides it needs
//! them (its queued work per busy slot exceeds `scale_up_wait_ms`, the edge asked for new
//! capacity, or a job waits on a host with no slot up) and come up after the scenario's
//! start delay; one idle for `idle_release_ms` is released. Jobs wait in the host's own FIFO
//! queue, up to `queue_limit`. A host that goes down loses every queued and running job and
//! every on-demand slot. Billing: reserved slots are paid for the whole run; an on-demand
//! slot is paid from the moment it is asked for until it is released, at the region's
//! price at the time.
//!
//! The host reports what a real agent reports ([`HostSim::report`]): its idle and startable
//! slots, and for its queue the agent's wait estimate — batches ahead times the measured
//! mean service time (an exponentially weighted mean of finished jobs, weight
//! [`SERVICE_EWMA`], as the agent weighs its batch times), not the true remaining work.

use std::collections::VecDeque;

use policy::{ModelLoad, RegionStatus};

use crate::metrics::Ledger;
use crate::region::HostShape;
use crate::scenario::SimulationSpec;

/// What a slot is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlotState {
    /// An on-demand slot not running (not paid).
    Off,
    /// An on-demand slot coming up (paid).
    Starting,
    /// Up and idle.
    Idle,
    /// Running a job.
    Busy,
}

/// One GPU.
#[derive(Debug, Clone, Copy)]
pub struct Slot {
    /// What it is doing.
    pub state: SlotState,
    /// The job it runs, when busy.
    pub job: u32,
    /// When it entered its state, µs.
    pub since_us: u64,
    /// When its on-demand billing started, µs.
    pub billed_since_us: u64,
    /// When its job ends, µs (when busy).
    pub until_us: u64,
    /// Whether a release check is scheduled (on-demand slots).
    pub check_pending: bool,
    /// Bumped whenever a scheduled event about the slot becomes void.
    pub generation: u32,
}

/// A job that has just been given a slot: the engine schedules its end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Started {
    /// Slot index.
    pub slot: u32,
    /// The slot's generation, to match the end event.
    pub generation: u32,
    /// The job.
    pub job: u32,
    /// Whether the slot is reserved.
    pub reserved: bool,
}

/// What the host did with a job sent to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Running now.
    Started(Started),
    /// Queued; if an on-demand slot was asked for, its index and generation.
    Queued(Option<(u32, u32)>),
    /// No slot and no queue room.
    Refused,
}

/// Weight of the newest finished job in a host's measured mean service time: the agent's
/// weight for its measured batch times (region-agent's scheduler worker).
pub const SERVICE_EWMA: f64 = 0.3;

/// One host's GPUs and queue.
#[derive(Debug, Clone)]
pub struct HostSim {
    /// Whether the host is up.
    pub up: bool,
    /// Index of its region in the catalog (where its GPU time and spend are booked).
    region: usize,
    reserved: u32,
    /// Slots: reserved first, then on-demand.
    pub slots: Vec<Slot>,
    idle_reserved: Vec<u32>,
    idle_on_demand: Vec<u32>,
    off_on_demand: Vec<u32>,
    starting: u32,
    /// Jobs waiting, with their service time.
    queue: VecDeque<(u32, u64)>,
    queued_work_us: u64,
    queue_limit: u32,
    start_us: u64,
    scale_up_wait_us: u64,
    /// Measured mean service time of the jobs finished here, µs (`None` before the first).
    service_us: Option<f64>,
    /// On-demand price per slot-µs.
    pub price_per_us: f64,
}

impl HostSim {
    /// A host of region `region` with the slots of `shape`, all idle or off.
    pub fn new(region: usize, shape: HostShape, price_per_hour: f64, sim: &SimulationSpec) -> Self {
        let HostShape {
            reserved,
            on_demand,
        } = shape;
        let slot = |state| Slot {
            state,
            job: 0,
            since_us: 0,
            billed_since_us: 0,
            until_us: 0,
            check_pending: false,
            generation: 0,
        };
        let mut slots = vec![slot(SlotState::Idle); reserved as usize];
        slots.extend(std::iter::repeat_n(
            slot(SlotState::Off),
            on_demand as usize,
        ));
        Self {
            up: true,
            region,
            reserved,
            slots,
            idle_reserved: (0..reserved).rev().collect(),
            idle_on_demand: Vec::new(),
            off_on_demand: (reserved..reserved + on_demand).rev().collect(),
            starting: 0,
            queue: VecDeque::new(),
            queued_work_us: 0,
            queue_limit: sim.queue_limit,
            start_us: sim.on_demand_start_ms * 1000,
            scale_up_wait_us: sim.scale_up_wait_ms * 1000,
            service_us: None,
            price_per_us: price_per_hour / 3.6e9,
        }
    }

    /// Reserved slots.
    pub fn reserved(&self) -> u32 {
        self.reserved
    }

    /// Index of its region.
    pub fn region(&self) -> usize {
        self.region
    }

    /// Jobs waiting.
    pub fn queue_len(&self) -> usize {
        self.queue.len()
    }

    /// Takes a job needing `service_us`; `wants_new_slot` is the edge asking for on-demand
    /// capacity (its route decision chose to start a slot).
    pub fn admit(
        &mut self,
        job: u32,
        service_us: u64,
        wants_new_slot: bool,
        now: u64,
    ) -> Admission {
        if let Some(slot) = self
            .idle_reserved
            .pop()
            .or_else(|| self.idle_on_demand.pop())
        {
            return Admission::Started(self.run(slot, job, service_us, now));
        }
        if self.queue.len() >= self.queue_limit as usize {
            return Admission::Refused;
        }
        self.queue.push_back((job, service_us));
        self.queued_work_us += service_us;
        let active = (self.slots.len() as u64 - self.off_on_demand.len() as u64).max(1);
        let slow = self.queued_work_us / active > self.scale_up_wait_us;
        let short = (self.starting as usize) < self.queue.len();
        if (slow || wants_new_slot || self.slots_up() == 0)
            && short
            && let Some(slot) = self.off_on_demand.pop()
        {
            let s = &mut self.slots[slot as usize];
            s.state = SlotState::Starting;
            s.since_us = now;
            s.billed_since_us = now;
            s.generation += 1;
            self.starting += 1;
            return Admission::Queued(Some((slot, s.generation)));
        }
        Admission::Queued(None)
    }

    /// Slots up (idle or busy), not off or starting.
    fn slots_up(&self) -> u64 {
        self.slots.len() as u64 - self.off_on_demand.len() as u64 - u64::from(self.starting)
    }

    fn run(&mut self, slot: u32, job: u32, service_us: u64, now: u64) -> Started {
        let s = &mut self.slots[slot as usize];
        s.state = SlotState::Busy;
        s.job = job;
        s.until_us = now + service_us;
        s.since_us = now;
        s.generation += 1;
        Started {
            slot,
            generation: s.generation,
            job,
            reserved: slot < self.reserved,
        }
    }

    /// A slot became free (job done or slot up): runs the next queued job, or goes idle.
    /// Returns the started job, or `None` and the slot is idle (the engine schedules its
    /// release check when it is on-demand).
    pub fn slot_free(&mut self, slot: u32, now: u64, ledger: &mut Ledger) -> Option<Started> {
        let s = self.slots[slot as usize];
        match s.state {
            SlotState::Busy => self.finished(slot, s.since_us, now, ledger),
            SlotState::Starting => self.starting -= 1,
            SlotState::Idle | SlotState::Off => {}
        }
        if let Some((job, work)) = self.queue.pop_front() {
            self.queued_work_us -= work;
            return Some(self.run(slot, job, work, now));
        }
        let s = &mut self.slots[slot as usize];
        s.state = SlotState::Idle;
        s.since_us = now;
        s.generation += 1;
        if slot < self.reserved {
            self.idle_reserved.push(slot);
        } else {
            self.idle_on_demand.push(slot);
        }
        None
    }

    /// Books a finished job's GPU time and folds its service time into the measured mean.
    fn finished(&mut self, slot: u32, since_us: u64, now: u64, ledger: &mut Ledger) {
        if slot < self.reserved {
            ledger.reserved_busy(self.region, since_us, now);
        } else {
            ledger.on_demand_busy(self.region, since_us, now);
        }
        let took = (now - since_us) as f64;
        self.service_us = Some(self.service_us.map_or(took, |mean| {
            mean * (1.0 - SERVICE_EWMA) + took * SERVICE_EWMA
        }));
    }

    /// A release check for an on-demand slot: releases it if it has been idle for
    /// `release_us`; if it is idle for less, returns when to check again.
    pub fn idle_check(
        &mut self,
        slot: u32,
        now: u64,
        release_us: u64,
        ledger: &mut Ledger,
    ) -> Option<u64> {
        let s = &mut self.slots[slot as usize];
        s.check_pending = false;
        if s.state != SlotState::Idle || slot < self.reserved {
            return None;
        }
        if now < s.since_us + release_us {
            s.check_pending = true;
            return Some(s.since_us + release_us);
        }
        self.idle_on_demand.retain(|&i| i != slot);
        self.switch_off(slot, now, ledger);
        None
    }

    fn switch_off(&mut self, slot: u32, now: u64, ledger: &mut Ledger) {
        let s = &mut self.slots[slot as usize];
        ledger.on_demand_billed(self.region, s.billed_since_us, now, self.price_per_us);
        s.state = SlotState::Off;
        s.since_us = now;
        s.generation += 1;
        self.off_on_demand.push(slot);
    }

    /// Bills running on-demand slots up to `now` at the current price (before it changes).
    pub fn settle_billing(&mut self, now: u64, ledger: &mut Ledger) {
        for s in self.slots.iter_mut().skip(self.reserved as usize) {
            if s.state != SlotState::Off {
                ledger.on_demand_billed(self.region, s.billed_since_us, now, self.price_per_us);
                s.billed_since_us = now;
            }
        }
    }

    /// The host goes down: returns every job it held (queued or running), which fail.
    pub fn go_down(&mut self, now: u64, ledger: &mut Ledger, lost: &mut Vec<u32>) {
        self.up = false;
        lost.extend(self.queue.drain(..).map(|(job, _)| job));
        self.queued_work_us = 0;
        for slot in 0..self.slots.len() as u32 {
            let s = self.slots[slot as usize];
            if s.state == SlotState::Busy {
                lost.push(s.job);
                if slot < self.reserved {
                    ledger.reserved_busy(self.region, s.since_us, now);
                } else {
                    ledger.on_demand_busy(self.region, s.since_us, now);
                }
            }
            if slot < self.reserved {
                let s = &mut self.slots[slot as usize];
                s.state = SlotState::Idle;
                s.generation += 1;
            } else if s.state != SlotState::Off {
                self.switch_off(slot, now, ledger);
            }
        }
        self.idle_reserved = (0..self.reserved).rev().collect();
        self.idle_on_demand.clear();
        self.starting = 0;
    }

    /// What the host's agent reports in a heartbeat, written over its previous report
    /// `st`; `true` when the per-model loads changed (the other fields are rewritten every
    /// time). Every slot runs every model, so each model gets the same load.
    pub fn report(&self, now: u64, start_ms: f64, st: &mut RegionStatus, models: usize) -> bool {
        st.last_heartbeat_ms = Some(now / 1000);
        st.healthy = true;
        st.free_reserved = self.idle_reserved.len() as u32;
        st.free_on_demand = self.idle_on_demand.len() as u32;
        st.on_demand_startable = self.off_on_demand.len() as u32;
        st.on_demand_start_ms = Some(start_ms);
        let load = ModelLoad {
            queue_depth: self.queue.len() as u32,
            queue_room: self.queue_limit.saturating_sub(self.queue.len() as u32),
            expected_wait_ms: self.expected_wait_us() / 1000.0,
            ..ModelLoad::default()
        };
        let mut changed = st.models.len() != models;
        if changed {
            st.models.resize(models, None);
        }
        // The wait is computed the same way from the same numbers each time (never NaN or
        // -0), so equal here means bit for bit the same.
        for slot in &mut st.models {
            if slot.as_ref() != Some(&load) {
                *slot = Some(load.clone());
                changed = true;
            }
        }
        changed
    }

    /// Expected wait of a job queued now, by the agent's rule: the batches ahead of it (its
    /// queue over the slots that run at once, plus one while a job runs) times the measured
    /// mean service time, nothing before any job has finished; a host with no slot up adds
    /// the slot start time, as the agent adds a model's cold start. The slots that run at
    /// once are the slots up, here where a batch is one job.
    pub fn expected_wait_us(&self) -> f64 {
        let up = self.slots_up();
        let running = self.slots.iter().any(|s| s.state == SlotState::Busy);
        let batches = (self.queue.len() as u64).div_ceil(up.max(1)) + u64::from(running);
        let mut wait = batches as f64 * self.service_us.unwrap_or(0.0);
        if up == 0 {
            wait += self.start_us as f64;
        }
        wait
    }

    /// Checks the slot bookkeeping; returns what is wrong.
    pub fn check(&self) -> Result<(), String> {
        let count = |state| self.slots.iter().filter(|s| s.state == state).count();
        let on_demand = self.slots.len() - self.reserved as usize;
        let idle_od = self.slots[self.reserved as usize..]
            .iter()
            .filter(|s| s.state == SlotState::Idle)
            .count();
        let checks = [
            (
                self.idle_reserved.len() + self.idle_on_demand.len() == count(SlotState::Idle),
                "idle lists",
            ),
            (self.idle_on_demand.len() == idle_od, "idle on-demand list"),
            (
                self.off_on_demand.len() == count(SlotState::Off),
                "off list",
            ),
            (
                self.starting as usize == count(SlotState::Starting),
                "starting count",
            ),
            (
                self.off_on_demand.len() <= on_demand,
                "more slots off than exist",
            ),
            (
                self.queue.len() <= self.queue_limit as usize,
                "queue over its limit",
            ),
            (
                self.queue.iter().map(|(_, w)| w).sum::<u64>() == self.queued_work_us,
                "queued work",
            ),
            (
                self.up || self.queue.is_empty() && count(SlotState::Busy) == 0,
                "work on a host that is down",
            ),
        ];
        match checks.iter().find(|(ok, _)| !ok) {
            Some((_, what)) => Err(format!("host bookkeeping broken: {what}")),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(reserved: u32, on_demand: u32) -> HostSim {
        let sim = SimulationSpec {
            on_demand_start_ms: 5_000,
            ..SimulationSpec::default()
        };
        let shape = HostShape {
            reserved,
            on_demand,
        };
        HostSim::new(0, shape, 4.0, &sim)
    }

    /// Starts `job` needing `service_us`; returns the slot it got.
    fn start(h: &mut HostSim, job: u32, service_us: u64, now: u64) -> u32 {
        match h.admit(job, service_us, false, now) {
            Admission::Started(s) => s.slot,
            other => panic!("job {job} not started: {other:?}"),
        }
    }

    #[test]
    fn the_reported_wait_is_batches_ahead_times_the_measured_service_time() {
        let mut ledger = Ledger::new(1, 3_600_000_000, 60_000_000);
        let mut h = host(2, 0);
        let (a, b) = (
            start(&mut h, 1, 1_000_000, 0),
            start(&mut h, 2, 3_000_000, 0),
        );
        // Nothing finished yet: like the agent, no measured time, no wait.
        assert_eq!(h.expected_wait_us(), 0.0);
        assert_eq!(h.admit(3, 2_000_000, false, 0), Admission::Queued(None));
        assert_eq!(h.expected_wait_us(), 0.0);
        // The first job took 1 s: that is the measured mean; the queued job starts on its
        // slot, and one batch (the running jobs) is ahead of a new one.
        let next = h.slot_free(a, 1_000_000, &mut ledger).unwrap();
        assert_eq!(next.job, 3);
        assert_eq!(h.expected_wait_us(), 1_000_000.0);
        // Three more queued on two slots: two batches of them, plus the running one.
        for job in 4..7 {
            assert_eq!(
                h.admit(job, 500_000, false, 1_000_000),
                Admission::Queued(None)
            );
        }
        assert_eq!(h.expected_wait_us(), 3.0 * 1_000_000.0);
        // The second job took 3 s: the mean moves by the agent's weight.
        h.slot_free(b, 3_000_000, &mut ledger).unwrap();
        let mean = 1_000_000.0 * (1.0 - SERVICE_EWMA) + 3_000_000.0 * SERVICE_EWMA;
        assert_eq!(h.expected_wait_us(), 2.0 * mean);
    }

    #[test]
    fn a_host_with_no_slot_up_starts_one_for_a_waiting_job_and_reports_its_start() {
        let mut h = host(0, 2);
        assert_eq!(h.expected_wait_us(), 5_000_000.0);
        match h.admit(1, 1_000_000, false, 0) {
            Admission::Queued(Some((slot, _))) => {
                assert_eq!(h.slots[slot as usize].state, SlotState::Starting);
            }
            other => panic!("no slot started: {other:?}"),
        }
        // Each waiting job gets a slot started while any is left; then jobs only wait.
        assert!(matches!(
            h.admit(2, 1_000_000, false, 0),
            Admission::Queued(Some(_))
        ));
        assert_eq!(h.admit(3, 1_000_000, false, 0), Admission::Queued(None));
        assert!(h.check().is_ok());
    }
}
