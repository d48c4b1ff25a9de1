//! Slots: the agent's GPUs (or CPU workers), each running one batch at a time. Reserved
//! slots are always taken before on-demand ones; an on-demand slot that has been idle past
//! its `idle_stop` (or never ran) must be started first, which takes its `start_delay`.

use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use crate::config::{Capacity, SlotConfig};

#[derive(Debug, Clone, Copy)]
struct SlotState {
    busy: bool,
    /// On-demand: running until then (None = stopped).
    warm_until: Option<Instant>,
}

/// A slot taken by a model thread; give it back with [`SlotPool::release`].
#[derive(Debug, Clone)]
pub struct SlotLease {
    /// Index into the configured slots.
    pub index: usize,
    /// Its capacity class.
    pub capacity: Capacity,
    /// Its price per hour.
    pub price_per_hour: f64,
    /// How long the holder must wait for the slot to start (0 when it was running).
    pub start_delay: Duration,
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
#[derive(Debug)]
pub struct SlotPool {
    configs: Vec<SlotConfig>,
    state: Mutex<Vec<SlotState>>,
    freed: Condvar,
}

impl SlotPool {
    /// Slots as configured (reserved first).
    pub fn new(configs: Vec<SlotConfig>) -> Self {
        let state = vec![
            SlotState {
                busy: false,
                warm_until: None
            };
            configs.len()
        ];
        Self {
            configs,
            state: Mutex::new(state),
            freed: Condvar::new(),
        }
    }

    /// Takes a free slot without waiting: a reserved one if any, else a running on-demand
    /// one, else a stopped on-demand one (to be started).
    pub fn try_acquire(&self) -> Option<SlotLease> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        self.pick(&mut state, Instant::now())
    }

    /// Takes a free slot, waiting up to `patience` for one.
    pub fn acquire(&self, patience: Duration) -> Option<SlotLease> {
        let deadline = Instant::now() + patience;
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            let now = Instant::now();
            if let Some(lease) = self.pick(&mut state, now) {
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

    fn pick(&self, state: &mut [SlotState], now: Instant) -> Option<SlotLease> {
        let warm = |s: &SlotState| s.warm_until.is_some_and(|until| until > now);
        let free = |class: Capacity, want_warm: bool| {
            (0..state.len()).find(|&i| {
                !state[i].busy
                    && self.configs[i].capacity == class
                    && (class == Capacity::Reserved || warm(&state[i]) == want_warm)
            })
        };
        let index = free(Capacity::Reserved, true)
            .or_else(|| free(Capacity::OnDemand, true))
            .or_else(|| free(Capacity::OnDemand, false))?;
        let config = &self.configs[index];
        let start_delay = match config.capacity {
            Capacity::OnDemand if !warm(&state[index]) => config.start_delay,
            _ => Duration::ZERO,
        };
        state[index].busy = true;
        Some(SlotLease {
            index,
            capacity: config.capacity,
            price_per_hour: config.price_per_hour,
            start_delay,
        })
    }

    /// Gives a slot back; an on-demand one keeps running for its `idle_stop`.
    pub fn release(&self, lease: &SlotLease) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(slot) = state.get_mut(lease.index) {
            slot.busy = false;
            if lease.capacity == Capacity::OnDemand {
                slot.warm_until = Some(Instant::now() + self.configs[lease.index].idle_stop);
            }
        }
        drop(state);
        self.freed.notify_all();
    }

    /// Free and busy slots now.
    pub fn counts(&self) -> SlotCounts {
        let now = Instant::now();
        let state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let mut counts = SlotCounts::default();
        for (slot, config) in state.iter().zip(&self.configs) {
            let warm = slot.warm_until.is_some_and(|until| until > now);
            match (slot.busy, config.capacity, warm) {
                (true, ..) => counts.busy += 1,
                (false, Capacity::Reserved, _) => counts.free_reserved += 1,
                (false, Capacity::OnDemand, true) => counts.free_on_demand += 1,
                (false, Capacity::OnDemand, false) => counts.on_demand_startable += 1,
            }
        }
        counts
    }

    /// The longest on-demand start delay configured, when there are on-demand slots.
    pub fn on_demand_start(&self) -> Option<Duration> {
        self.configs
            .iter()
            .filter(|c| c.capacity == Capacity::OnDemand)
            .map(|c| c.start_delay)
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
