//! What this edge knows about each region by itself, beyond the snapshot: its circuit
//! breaker, the requests it has in flight there (docs/design.md §3 step 5), and the retry budget
//! shared by all regions (docs/design.md §7).
//!
//! Kept by region id, so the state survives snapshot swaps that reorder the catalog.
//!
//! The in-flight count is the number of requests this edge has open to the region right
//! now; the route decision subtracts it from the free slots the region last reported. It
//! over-counts requests the agent has already included in a report, which errs towards
//! spreading load rather than herding it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;

use tokio::time::Instant;

/// A region's circuit, as the route decision and the metrics see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Circuit {
    /// Requests flow.
    Closed,
    /// Requests are kept away until the cool-down ends.
    Open,
    /// The cool-down ended: one trial request may go; its failure opens the circuit at once,
    /// its success closes it. While it is under way (for at most another cool-down) the
    /// region is kept out of decisions as if open.
    HalfOpen,
}

impl Circuit {
    /// Of two instances' circuits, the one that lets more through: closed, then half-open,
    /// then open (a region is as open as its best instance).
    pub fn best(self, other: Circuit) -> Circuit {
        match (self, other) {
            (Circuit::Closed, _) | (_, Circuit::Closed) => Circuit::Closed,
            (Circuit::HalfOpen, _) | (_, Circuit::HalfOpen) => Circuit::HalfOpen,
            _ => Circuit::Open,
        }
    }

    /// The value of the breaker-state gauge: 0 closed, 1 open, 2 half-open.
    pub fn gauge(self) -> i64 {
        match self {
            Circuit::Closed => 0,
            Circuit::Open => 1,
            Circuit::HalfOpen => 2,
        }
    }
}

#[derive(Debug)]
enum Breaker {
    Closed {
        failures: u32,
    },
    Open {
        since: Instant,
    },
    /// With the trial request's start, once one was sent.
    HalfOpen {
        trial: Option<Instant>,
    },
}

/// One region's edge-side state.
#[derive(Debug)]
pub struct RegionState {
    in_flight: AtomicU32,
    breaker: Mutex<Breaker>,
}

impl RegionState {
    /// Requests this edge has in flight to the region now.
    pub fn in_flight(&self) -> u32 {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Counts one request in flight until the guard is dropped.
    pub fn start(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(Arc::clone(self))
    }
}

/// A request in flight to a region; dropping it ends the count.
#[derive(Debug)]
pub struct InFlight(Arc<RegionState>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Every region's edge-side state, and the breaker's settings.
#[derive(Debug)]
pub struct Regions {
    regions: RwLock<HashMap<String, Arc<RegionState>>>,
    failures_to_open: u32,
    cool_down: Duration,
}

impl Regions {
    /// Breakers that open after `failures_to_open` consecutive failures and half-open after
    /// `cool_down`.
    pub fn new(failures_to_open: u32, cool_down: Duration) -> Self {
        Self {
            regions: RwLock::new(HashMap::new()),
            failures_to_open: failures_to_open.max(1),
            cool_down,
        }
    }

    /// The state of region `id`, created on first use.
    pub fn get(&self, id: &str) -> Arc<RegionState> {
        if let Some(state) = self
            .regions
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(id)
        {
            return Arc::clone(state);
        }
        let mut regions = self.regions.write().unwrap_or_else(PoisonError::into_inner);
        Arc::clone(regions.entry(id.to_owned()).or_insert_with(|| {
            Arc::new(RegionState {
                in_flight: AtomicU32::new(0),
                breaker: Mutex::new(Breaker::Closed { failures: 0 }),
            })
        }))
    }

    /// The circuit of region `id` at `now`; an open circuit whose cool-down has passed
    /// becomes half-open.
    pub fn circuit(&self, id: &str, now: Instant) -> Circuit {
        let state = self.get(id);
        let mut breaker = state.breaker.lock().unwrap_or_else(PoisonError::into_inner);
        match *breaker {
            Breaker::Closed { .. } => Circuit::Closed,
            Breaker::HalfOpen { .. } => Circuit::HalfOpen,
            Breaker::Open { since } if now.duration_since(since) >= self.cool_down => {
                *breaker = Breaker::HalfOpen { trial: None };
                Circuit::HalfOpen
            }
            Breaker::Open { .. } => Circuit::Open,
        }
    }

    /// Whether the route decision may send a request to region `id` at `now`: its circuit is
    /// closed, or half-open with no trial request under way (a trial older than the
    /// cool-down no longer counts).
    pub fn admits(&self, id: &str, now: Instant) -> bool {
        match self.circuit(id, now) {
            Circuit::Closed => true,
            Circuit::Open => false,
            Circuit::HalfOpen => {
                let state = self.get(id);
                let breaker = state.breaker.lock().unwrap_or_else(PoisonError::into_inner);
                match *breaker {
                    Breaker::HalfOpen { trial: Some(sent) } => {
                        now.duration_since(sent) >= self.cool_down
                    }
                    _ => true,
                }
            }
        }
    }

    /// Records that a request is being sent to region `id` at `now`: with a half-open
    /// circuit, it is the trial.
    pub fn sending(&self, id: &str, now: Instant) {
        let state = self.get(id);
        let mut breaker = state.breaker.lock().unwrap_or_else(PoisonError::into_inner);
        if let Breaker::HalfOpen { trial } = &mut *breaker
            && trial.is_none_or(|sent| now.duration_since(sent) >= self.cool_down)
        {
            *trial = Some(now);
        }
    }

    /// Records that the region answered.
    pub fn success(&self, id: &str) {
        let state = self.get(id);
        let mut breaker = state.breaker.lock().unwrap_or_else(PoisonError::into_inner);
        *breaker = Breaker::Closed { failures: 0 };
    }

    /// Records a failure to reach the region (connect failure or timeout); returns whether
    /// this failure opened the circuit.
    pub fn failure(&self, id: &str, now: Instant) -> bool {
        let state = self.get(id);
        let mut breaker = state.breaker.lock().unwrap_or_else(PoisonError::into_inner);
        let failures = match *breaker {
            Breaker::Closed { failures } => failures + 1,
            Breaker::HalfOpen { .. } => self.failures_to_open,
            Breaker::Open { .. } => return false,
        };
        if failures >= self.failures_to_open {
            *breaker = Breaker::Open { since: now };
            true
        } else {
            *breaker = Breaker::Closed { failures };
            false
        }
    }

    /// Every known region's circuit, for the metrics.
    pub fn circuits(&self, now: Instant) -> Vec<(String, Circuit)> {
        let ids: Vec<String> = self
            .regions
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .keys()
            .cloned()
            .collect();
        ids.into_iter()
            .map(|id| {
                let circuit = self.circuit(&id, now);
                (id, circuit)
            })
            .collect()
    }
}

/// A token bucket of retries: every request earns `ratio` of a retry, up to `capacity`
/// saved; a retry spends one. So retries stay below `ratio` of the traffic plus a small
/// floor, and a failing region cannot multiply the load on the others.
#[derive(Debug)]
pub struct RetryBudget {
    tokens: Mutex<f64>,
    ratio: f64,
    capacity: f64,
}

impl RetryBudget {
    /// A full bucket of `capacity` retries earning `ratio` per request.
    pub fn new(ratio: f64, capacity: u32) -> Self {
        Self {
            tokens: Mutex::new(f64::from(capacity)),
            ratio,
            capacity: f64::from(capacity),
        }
    }

    /// Credits one request.
    pub fn deposit(&self) {
        let mut tokens = self.tokens.lock().unwrap_or_else(PoisonError::into_inner);
        *tokens = (*tokens + self.ratio).min(self.capacity);
    }

    /// Takes one retry if the budget has one.
    pub fn try_withdraw(&self) -> bool {
        let mut tokens = self.tokens.lock().unwrap_or_else(PoisonError::into_inner);
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_breaker_opens_after_consecutive_failures_and_half_opens_after_the_cool_down() {
        let regions = Regions::new(3, Duration::from_secs(5));
        let t0 = Instant::now();
        assert!(!regions.failure("eu-west", t0));
        assert!(!regions.failure("eu-west", t0));
        regions.success("eu-west");
        assert!(!regions.failure("eu-west", t0));
        assert!(!regions.failure("eu-west", t0));
        assert_eq!(regions.circuit("eu-west", t0), Circuit::Closed);
        assert!(regions.failure("eu-west", t0));
        assert_eq!(regions.circuit("eu-west", t0), Circuit::Open);
        assert_eq!(regions.circuit("us-east", t0), Circuit::Closed);
        let later = t0 + Duration::from_secs(5);
        assert_eq!(regions.circuit("eu-west", later), Circuit::HalfOpen);
        // A failed trial opens it again at once.
        assert!(regions.failure("eu-west", later));
        assert_eq!(regions.circuit("eu-west", later), Circuit::Open);
        let again = later + Duration::from_secs(5);
        assert_eq!(regions.circuit("eu-west", again), Circuit::HalfOpen);
        regions.success("eu-west");
        assert_eq!(regions.circuit("eu-west", again), Circuit::Closed);
    }

    #[tokio::test(start_paused = true)]
    async fn a_half_open_circuit_lets_one_trial_through_per_cool_down() {
        let regions = Regions::new(1, Duration::from_secs(5));
        let t0 = Instant::now();
        assert!(regions.admits("eu-west", t0));
        assert!(regions.failure("eu-west", t0));
        assert!(!regions.admits("eu-west", t0));
        let cooled = t0 + Duration::from_secs(5);
        assert!(regions.admits("eu-west", cooled));
        regions.sending("eu-west", cooled);
        // The trial is under way (an agent that never answers holds it until its timeout):
        // nothing else goes there meanwhile.
        let during = cooled + Duration::from_secs(2);
        assert!(!regions.admits("eu-west", during));
        regions.sending("eu-west", during);
        assert!(!regions.admits("eu-west", during + Duration::from_secs(2)));
        // A trial that neither failed nor succeeded within a cool-down lets another go.
        let stale = cooled + Duration::from_secs(5);
        assert!(regions.admits("eu-west", stale));
        regions.sending("eu-west", stale);
        assert!(!regions.admits("eu-west", stale));
        regions.success("eu-west");
        assert!(regions.admits("eu-west", stale));
        assert_eq!(regions.circuit("eu-west", stale), Circuit::Closed);
    }

    #[test]
    fn in_flight_counts_until_the_guard_drops() {
        let regions = Regions::new(1, Duration::from_secs(1));
        let region = regions.get("eu-west");
        let a = region.start();
        let b = regions.get("eu-west").start();
        assert_eq!(region.in_flight(), 2);
        drop(a);
        drop(b);
        assert_eq!(region.in_flight(), 0);
    }

    #[test]
    fn retries_are_a_share_of_requests_plus_a_floor() {
        let budget = RetryBudget::new(0.2, 2);
        assert!(budget.try_withdraw());
        assert!(budget.try_withdraw());
        assert!(!budget.try_withdraw());
        for _ in 0..4 {
            budget.deposit();
        }
        assert!(!budget.try_withdraw(), "4 requests earn 0.8 of a retry");
        budget.deposit();
        assert!(budget.try_withdraw());
        for _ in 0..100 {
            budget.deposit();
        }
        assert!(budget.try_withdraw() && budget.try_withdraw());
        assert!(!budget.try_withdraw(), "savings are capped");
    }
}
