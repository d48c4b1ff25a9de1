//! Slots: the agent's GPUs (or CPU workers), each running one batch at a time. Reserved
//! slots are always taken before on-demand ones; an on-demand slot that has been idle past
//! its `idle_stop` (or never ran) must be started first, which takes its `start_delay`.
//!
//! The slots come from the catalog copy in force ([`crate::catalog::RegionCatalog::slots`])
//! and change with it ([`SlotPool::reconfigure`]): new slots are free at once, a slot the new
//! copy no longer has leaves when it is idle — a busy one finishes its batch first.

use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::config::Capacity;
use crate::gpu::Placement;

/// One slot as the catalog gives it.
#[derive(Debug, Clone, PartialEq)]
pub struct SlotConfig {
    /// The pool it belongs to.
    pub pool: String,
    /// Reserved or on-demand.
    pub capacity: Capacity,
    /// Money per hour the slot costs while it runs (on-demand) or always (reserved).
    pub price_per_hour: f64,
    /// Time to start it when stopped (on-demand only; zero for reserved).
    pub start_delay: Duration,
    /// An idle on-demand slot stops after this long.
    pub idle_stop: Duration,
    /// The device its models run on ([`crate::gpu::plan`]).
    pub device: Placement,
}

#[derive(Debug, Clone)]
struct Slot {
    /// Stable while the slot exists (leases name it).
    id: u64,
    config: SlotConfig,
    busy: bool,
    /// On-demand: running until then (None = stopped).
    warm_until: Option<Instant>,
    /// The catalog no longer has it: it leaves when released.
    retired: bool,
}

impl Slot {
    fn warm(&self, now: Instant) -> bool {
        self.warm_until.is_some_and(|until| until > now)
    }
}

#[derive(Debug, Default)]
struct Slots {
    slots: Vec<Slot>,
    next_id: u64,
}

impl Slots {
    /// A new free slot.
    fn new_slot(&mut self, config: SlotConfig) -> Slot {
        self.next_id += 1;
        Slot {
            id: self.next_id,
            config,
            busy: false,
            warm_until: None,
            retired: false,
        }
    }
}

/// A slot taken by a model thread; give it back with [`SlotPool::release`].
#[derive(Debug, Clone)]
pub struct SlotLease {
    /// The slot's id.
    pub id: u64,
    /// Its capacity class.
    pub capacity: Capacity,
    /// Its price per hour.
    pub price_per_hour: f64,
    /// How long the holder must wait for the slot to start (0 when it was running).
    pub start_delay: Duration,
    /// The device the holder runs its batch on.
    pub device: Placement,
}

/// Free slots by class, for heartbeats and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SlotCounts {
    /// Idle reserved slots.
    pub free_reserved: u32,
    /// Idle on-demand slots that are running.
    pub free_on_demand: u32,
    /// On-demand slots that are stopped and can be started.
    pub on_demand_startable: u32,
    /// Busy slots.
    pub busy: u32,
}

/// All slots of the agent.
#[derive(Debug, Default)]
pub struct SlotPool {
    state: Mutex<Slots>,
    freed: Condvar,
}

impl SlotPool {
    /// Slots as given (reserved first).
    pub fn new(configs: Vec<SlotConfig>) -> Self {
        let pool = Self::default();
        pool.reconfigure(configs);
        pool
    }

    fn lock(&self) -> MutexGuard<'_, Slots> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Makes the slots those of `configs`: per pool, class and device, existing slots are kept (busy
    /// ones first) up to the new count and take the new prices and delays; the rest leave
    /// (at once when idle, after their batch when busy); missing ones are added, free.
    pub fn reconfigure(&self, configs: Vec<SlotConfig>) {
        let mut state = self.lock();
        let mut kept: Vec<Slot> = Vec::new();
        let mut old = std::mem::take(&mut state.slots);
        // Busy slots first, so that shrinking retires idle ones before busy ones.
        old.sort_by_key(|s| (s.retired, !s.busy));
        for config in configs {
            let same = |s: &Slot| {
                !s.retired
                    && s.config.pool == config.pool
                    && s.config.capacity == config.capacity
                    && s.config.device == config.device
            };
            match old.iter().position(same) {
                Some(i) => {
                    let mut slot = old.remove(i);
                    slot.config = config;
                    kept.push(slot);
                }
                None => kept.push(state.new_slot(config)),
            }
        }
        for mut slot in old.into_iter().filter(|s| s.busy) {
            slot.retired = true;
            kept.push(slot);
        }
        state.slots = kept;
        drop(state);
        self.freed.notify_all();
    }

    /// Takes a free slot without waiting: a reserved one if any, else a running on-demand
    /// one, else a stopped on-demand one (to be started).
    pub fn try_acquire(&self) -> Option<SlotLease> {
        Self::pick(&mut self.lock(), Instant::now())
    }

    /// Takes a free slot, waiting up to `patience` for one.
    pub fn acquire(&self, patience: Duration) -> Option<SlotLease> {
        let deadline = Instant::now() + patience;
        let mut state = self.lock();
        loop {
            let now = Instant::now();
            if let Some(lease) = Self::pick(&mut state, now) {
                return Some(lease);
            }
            if now >= deadline {
                return None;
            }
            state = self
                .freed
                .wait_timeout(state, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    fn pick(state: &mut Slots, now: Instant) -> Option<SlotLease> {
        let free = |class: Capacity, want_warm: bool| {
            state.slots.iter().position(|s| {
                !s.busy
                    && !s.retired
                    && s.config.capacity == class
                    && (class == Capacity::Reserved || s.warm(now) == want_warm)
            })
        };
        let index = free(Capacity::Reserved, true)
            .or_else(|| free(Capacity::OnDemand, true))
            .or_else(|| free(Capacity::OnDemand, false))?;
        let slot = &mut state.slots[index];
        let start_delay = match slot.config.capacity {
            Capacity::OnDemand if !slot.warm(now) => slot.config.start_delay,
            _ => Duration::ZERO,
        };
        slot.busy = true;
        Some(SlotLease {
            id: slot.id,
            capacity: slot.config.capacity,
            price_per_hour: slot.config.price_per_hour,
            start_delay,
            device: slot.config.device,
        })
    }

    /// Gives a slot back; an on-demand one keeps running for its `idle_stop`, a retired one
    /// leaves.
    pub fn release(&self, lease: &SlotLease) {
        let mut state = self.lock();
        if let Some(i) = state.slots.iter().position(|s| s.id == lease.id) {
            let slot = &mut state.slots[i];
            slot.busy = false;
            if slot.retired {
                state.slots.remove(i);
            } else if slot.config.capacity == Capacity::OnDemand {
                slot.warm_until = Some(Instant::now() + slot.config.idle_stop);
            }
        }
        drop(state);
        self.freed.notify_all();
    }

    /// Free and busy slots now (a retired slot counts while it is busy).
    pub fn counts(&self) -> SlotCounts {
        let now = Instant::now();
        let state = self.lock();
        let mut counts = SlotCounts::default();
        for slot in &state.slots {
            match (slot.busy, slot.config.capacity, slot.warm(now)) {
                (true, ..) => counts.busy += 1,
                (false, Capacity::Reserved, _) => counts.free_reserved += 1,
                (false, Capacity::OnDemand, true) => counts.free_on_demand += 1,
                (false, Capacity::OnDemand, false) => counts.on_demand_startable += 1,
            }
        }
        counts
    }

    /// The longest on-demand start delay, when there are on-demand slots.
    pub fn on_demand_start(&self) -> Option<Duration> {
        self.lock()
            .slots
            .iter()
            .filter(|s| s.config.capacity == Capacity::OnDemand && !s.retired)
            .map(|s| s.config.start_delay)
            .max()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slot(capacity: Capacity, start_ms: u64) -> SlotConfig {
        SlotConfig {
            pool: "p".into(),
            capacity,
            price_per_hour: 1.0,
            start_delay: Duration::from_millis(start_ms),
            idle_stop: Duration::from_secs(60),
            device: Placement::Cpu,
        }
    }

    #[test]
    fn reserved_slots_are_used_before_on_demand_ones() {
        let pool = SlotPool::new(vec![
            slot(Capacity::Reserved, 0),
            slot(Capacity::Reserved, 0),
            slot(Capacity::OnDemand, 500),
        ]);
        let a = pool.try_acquire().unwrap();
        let b = pool.try_acquire().unwrap();
        assert_eq!(
            (a.capacity, b.capacity),
            (Capacity::Reserved, Capacity::Reserved)
        );
        let c = pool.try_acquire().unwrap();
        assert_eq!(c.capacity, Capacity::OnDemand);
        assert_eq!(
            c.start_delay,
            Duration::from_millis(500),
            "a stopped slot must start"
        );
        assert!(pool.try_acquire().is_none());
        assert_eq!(pool.counts().busy, 3);

        // Once released, the on-demand slot stays running for a while: no start delay, and
        // a freed reserved slot is still preferred to it.
        pool.release(&c);
        pool.release(&a);
        assert_eq!(pool.counts().free_on_demand, 1);
        assert_eq!(pool.try_acquire().unwrap().capacity, Capacity::Reserved);
        let again = pool.try_acquire().unwrap();
        assert_eq!(again.capacity, Capacity::OnDemand);
        assert_eq!(again.start_delay, Duration::ZERO);
    }

    #[test]
    fn a_new_catalog_reshapes_the_slots_and_busy_ones_finish_first() {
        let pool = SlotPool::new(vec![
            slot(Capacity::Reserved, 0),
            slot(Capacity::Reserved, 0),
        ]);
        let busy = pool.try_acquire().unwrap();
        // The reservation ends: one on-demand slot is left; the busy one finishes its batch.
        pool.reconfigure(vec![slot(Capacity::OnDemand, 0)]);
        let counts = pool.counts();
        assert_eq!(
            (
                counts.busy,
                counts.free_reserved,
                counts.on_demand_startable
            ),
            (1, 0, 1)
        );
        let on_demand = pool.try_acquire().unwrap();
        assert_eq!(on_demand.capacity, Capacity::OnDemand);
        assert!(
            pool.try_acquire().is_none(),
            "the retiring slot takes no new work"
        );
        pool.release(&busy);
        assert_eq!(
            pool.counts(),
            SlotCounts {
                busy: 1,
                ..SlotCounts::default()
            }
        );

        // A new reservation at another price: the running slot keeps running.
        let mut reserved = slot(Capacity::Reserved, 0);
        reserved.price_per_hour = 5.0;
        pool.reconfigure(vec![reserved, slot(Capacity::OnDemand, 0)]);
        let lease = pool.try_acquire().unwrap();
        assert_eq!(
            (lease.capacity, lease.price_per_hour),
            (Capacity::Reserved, 5.0)
        );
        pool.release(&on_demand);
        assert_eq!(
            pool.counts().free_on_demand,
            1,
            "still warm after the change"
        );
    }

    #[test]
    fn acquire_waits_for_a_release() {
        let pool = std::sync::Arc::new(SlotPool::new(vec![slot(Capacity::Reserved, 0)]));
        let lease = pool.try_acquire().unwrap();
        assert!(pool.acquire(Duration::from_millis(10)).is_none());
        let releaser = {
            let pool = pool.clone();
            std::thread::spawn(move || pool.release(&lease))
        };
        assert!(pool.acquire(Duration::from_secs(30)).is_some());
        releaser.join().unwrap();
    }
}
