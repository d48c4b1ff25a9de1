//! A cap on requests in flight at once.
//!
//! [`ConcurrencyGate::try_acquire`] hands out at most `max` [`ConcurrencyPermit`]s at a time;
//! a permit frees its slot when it is dropped, so a request holds its permit for as long as
//! it is in flight and cannot leak the slot on an early return or a panic. The count is one
//! [`AtomicU32`]: acquiring is a compare-exchange loop that never overshoots `max`, and
//! releasing is a single subtraction.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

/// At most `max` requests in flight; see the [module docs](self).
///
/// Share it behind an [`Arc`], since permits keep a reference to their gate:
///
/// ```
/// # use std::sync::Arc;
/// # use policy::quota::{ConcurrencyGate, ConcurrencyLimited};
/// let gate = Arc::new(ConcurrencyGate::new(1));
/// let permit = gate.try_acquire()?;
/// assert_eq!(gate.try_acquire().unwrap_err(), ConcurrencyLimited { limit: 1 });
/// drop(permit);
/// assert_eq!(gate.in_use(), 0);
/// # Ok::<(), ConcurrencyLimited>(())
/// ```
#[derive(Debug)]
pub struct ConcurrencyGate {
    max: u32,
    in_use: AtomicU32,
}

/// Refusal from a full [`ConcurrencyGate`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("concurrency limit reached: {limit} requests already in flight")]
pub struct ConcurrencyLimited {
    /// The gate's maximum.
    pub limit: u32,
}

impl ConcurrencyGate {
    /// A gate admitting at most `max` requests at once. A gate with `max = 0` refuses every
    /// request (a tenant suspended from sending any).
    pub const fn new(max: u32) -> Self {
        Self {
            max,
            in_use: AtomicU32::new(0),
        }
    }

    /// The maximum number of permits out at once.
    pub fn max(&self) -> u32 {
        self.max
    }

    /// Permits currently held. Under concurrent use this is a snapshot.
    pub fn in_use(&self) -> u32 {
        self.in_use.load(Ordering::Relaxed)
    }

    /// Takes a slot if one is free.
    ///
    /// # Errors
    ///
    /// [`ConcurrencyLimited`] when `max` permits are already held; nothing is taken.
    pub fn try_acquire(self: &Arc<Self>) -> Result<ConcurrencyPermit, ConcurrencyLimited> {
        // Acquire pairs with the Release in `ConcurrencyPermit::drop`, so whatever a request
        // did while holding a slot happens-before the next holder of that slot starts.
        self.in_use
            .fetch_update(Ordering::Acquire, Ordering::Relaxed, |held| {
                (held < self.max).then_some(held + 1)
            })
            .map(|_| ConcurrencyPermit {
                gate: Arc::clone(self),
            })
            .map_err(|_| ConcurrencyLimited { limit: self.max })
    }
}

/// One slot of a [`ConcurrencyGate`], freed when this is dropped.
#[derive(Debug)]
#[must_use = "the slot is freed as soon as the permit is dropped"]
pub struct ConcurrencyPermit {
    gate: Arc<ConcurrencyGate>,
}

impl ConcurrencyPermit {
    /// The gate this permit holds a slot of.
    pub fn gate(&self) -> &Arc<ConcurrencyGate> {
        &self.gate
    }
}

impl Drop for ConcurrencyPermit {
    fn drop(&mut self) {
        // Every permit was counted by exactly one successful increment, so this cannot
        // underflow.
        self.gate.in_use.fetch_sub(1, Ordering::Release);
    }
}
