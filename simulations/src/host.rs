//! One region's GPUs and queue, as its agent runs them.
//!
//! Reserved slots are always up. On-demand slots start when the agent decides it needs
//! them (the expected queue wait exceeds their start time, or the edge asked for new
//! capacity) and come up after the scenario's start delay; one idle for `idle_release_ms`
//! is released. Jobs wait in one FIFO queue per region, up to `queue_limit`. An outage
//! loses every queued and running job and every on-demand slot. Billing: reserved slots are
//! paid for the whole run; an on-demand slot is paid from the moment it is asked for until
//! it is released, at the region's price at the time.

use std::collections::VecDeque;

use policy::{ModelLoad, RegionStatus};

use crate::metrics::Ledger;
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

/// What the region did with a job sent to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Running now.
    Started(Started),
    /// Queued; if an on-demand slot was asked for, its index and generation.
    Queued(Option<(u32, u32)>),
    /// No slot and no queue room.
    Refused,
}

/// A region's GPUs and queue.
#[derive(Debug, Clone)]
pub struct RegionSim {
    /// Whether the region is up.
    pub up: bool,
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
    /// On-demand price per slot-µs.
    pub price_per_us: f64,
}

impl RegionSim {
    /// A region with `reserved` and `on_demand` slots, all idle or off.
    pub fn new(reserved: u32, on_demand: u32, price_per_hour: f64, sim: &SimulationSpec) -> Self {
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
            price_per_us: price_per_hour / 3.6e9,
        }
    }

    /// Reserved slots.
    pub fn reserved(&self) -> u32 {
        self.reserved
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
        let busy = (self.slots.len() as u64 - self.off_on_demand.len() as u64).max(1);
        let slow = self.queued_work_us / busy > self.scale_up_wait_us;
        let short = (self.starting as usize) < self.queue.len();
        if (slow || wants_new_slot)
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
    pub fn slot_free(
        &mut self,
        slot: u32,
        now: u64,
        ledger: &mut Ledger,
        region: usize,
    ) -> Option<Started> {
        let s = self.slots[slot as usize];
        match s.state {
            SlotState::Busy if slot < self.reserved => {
                ledger.reserved_busy(region, s.since_us, now)
            }
            SlotState::Busy => ledger.on_demand_busy(region, s.since_us, now),
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

    /// A release check for an on-demand slot: releases it if it has been idle for
    /// `release_us`; if it is idle for less, returns when to check again.
    pub fn idle_check(
        &mut self,
        slot: u32,
        now: u64,
        release_us: u64,
        ledger: &mut Ledger,
        region: usize,
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
        self.switch_off(slot, now, ledger, region);
        None
    }

    fn switch_off(&mut self, slot: u32, now: u64, ledger: &mut Ledger, region: usize) {
        let s = &mut self.slots[slot as usize];
        ledger.on_demand_billed(region, s.billed_since_us, now, self.price_per_us);
        s.state = SlotState::Off;
        s.since_us = now;
        s.generation += 1;
        self.off_on_demand.push(slot);
    }

    /// Bills running on-demand slots up to `now` at the current price (before it changes).
    pub fn settle_billing(&mut self, now: u64, ledger: &mut Ledger, region: usize) {
        for s in self.slots.iter_mut().skip(self.reserved as usize) {
            if s.state != SlotState::Off {
                ledger.on_demand_billed(region, s.billed_since_us, now, self.price_per_us);
                s.billed_since_us = now;
            }
        }
    }

    /// The region goes down: returns every job it held (queued or running), which fail.
    pub fn go_down(&mut self, now: u64, ledger: &mut Ledger, region: usize, lost: &mut Vec<u32>) {
        self.up = false;
        lost.extend(self.queue.drain(..).map(|(job, _)| job));
        self.queued_work_us = 0;
        for slot in 0..self.slots.len() as u32 {
            let s = self.slots[slot as usize];
            if s.state == SlotState::Busy {
                lost.push(s.job);
                if slot < self.reserved {
                    ledger.reserved_busy(region, s.since_us, now);
                } else {
                    ledger.on_demand_busy(region, s.since_us, now);
                }
            }
            if slot < self.reserved {
                let s = &mut self.slots[slot as usize];
                s.state = SlotState::Idle;
                s.generation += 1;
            } else if s.state != SlotState::Off {
                self.switch_off(slot, now, ledger, region);
            }
        }
        self.idle_reserved = (0..self.reserved).rev().collect();
        self.idle_on_demand.clear();
        self.starting = 0;
    }

    /// What the agent reports in a heartbeat, written over its previous report `st`; `true`
    /// when the per-model loads changed (the other fields are rewritten every time).
    pub fn report(&self, now: u64, start_ms: f64, st: &mut RegionStatus, models: usize) -> bool {
        st.last_heartbeat_ms = Some(now / 1000);
        st.healthy = true;
        st.free_reserved = self.idle_reserved.len() as u32;
        st.free_on_demand = self.idle_on_demand.len() as u32;
        st.on_demand_startable = self.off_on_demand.len() as u32;
        st.on_demand_start_ms = Some(start_ms);
        let wait_ms = self.expected_wait_us(now) as f64 / 1000.0;
        let load = ModelLoad {
            queue_depth: self.queue.len() as u32,
            queue_room: self.queue_limit.saturating_sub(self.queue.len() as u32),
            expected_wait_ms: wait_ms,
            ..ModelLoad::default()
        };
        let mut changed = st.models.len() != models;
        if changed {
            st.models.resize(models, None);
        }
        // The wait is a whole number of µs over 1000 (never NaN or -0), so equal here means
        // bit for bit the same.
        for slot in &mut st.models {
            if slot.as_ref() != Some(&load) {
                *slot = Some(load.clone());
                changed = true;
            }
        }
        changed
    }

    /// Expected wait of a job queued now: none if a slot is idle, else the remaining work
    /// of the running jobs and the queued work shared over the busy slots (a fluid estimate,
    /// as an agent that knows its jobs' sizes would report).
    pub fn expected_wait_us(&self, now: u64) -> u64 {
        if !self.idle_reserved.is_empty() || !self.idle_on_demand.is_empty() {
            return 0;
        }
        let (busy, remaining) = self
            .slots
            .iter()
            .filter(|s| s.state == SlotState::Busy)
            .fold((0u64, 0u64), |(n, rem), s| {
                (n + 1, rem + s.until_us.saturating_sub(now))
            });
        if busy == 0 {
            return self.start_us;
        }
        (remaining + self.queued_work_us) / busy
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
                "work in a region that is down",
            ),
        ];
        match checks.iter().find(|(ok, _)| !ok) {
            Some((_, what)) => Err(format!("region bookkeeping broken: {what}")),
            None => Ok(()),
        }
    }
}
