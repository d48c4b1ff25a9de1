//! When a running job should stop: its deadline (the model's timeout) passed or it was
//! cancelled. Models check a [`StopSignal`] at their safe points — between denoising steps,
//! between batches of frames, between audio windows — and return at the first one after
//! the signal is raised, so a stopped job costs at most one more step of work.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Instant;

/// Why a job stopped early.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Stopped {
    /// It was cancelled while running.
    #[error("the job was cancelled while running")]
    Cancelled,
    /// It ran past its deadline.
    #[error("the job ran past its deadline")]
    TimedOut,
}

/// Called at every safe point with the signal and the number of safe points passed so far
/// (1 at the first): progress for whoever watches a run, who may also cancel it there.
pub type SafePointHook = Arc<dyn Fn(&StopSignal, usize) + Send + Sync>;

/// A job's stop signal: a deadline and a cancellation flag, shared by the thread that
/// runs the model and whoever may cancel it (cheap to clone).
#[derive(Clone, Default)]
pub struct StopSignal {
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Inner {
    deadline: Option<Instant>,
    cancelled: AtomicBool,
    safe_points: AtomicUsize,
    hook: Option<SafePointHook>,
}

impl std::fmt::Debug for StopSignal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StopSignal")
            .field("deadline", &self.inner.deadline)
            .field("cancelled", &self.inner.cancelled.load(Ordering::SeqCst))
            .field("safe_points", &self.safe_points())
            .finish_non_exhaustive()
    }
}

impl StopSignal {
    /// A signal with no deadline that stops only when cancelled.
    pub fn never() -> Self {
        Self::default()
    }

    /// A signal that stops at `deadline` (or when cancelled).
    pub fn until(deadline: Instant) -> Self {
        Self::build(Some(deadline), None)
    }

    /// The same deadline, calling `hook` at every safe point (a new signal: clones of the
    /// old one do not reach it).
    #[must_use]
    pub fn with_hook(self, hook: SafePointHook) -> Self {
        Self::build(self.inner.deadline, Some(hook))
    }

    fn build(deadline: Option<Instant>, hook: Option<SafePointHook>) -> Self {
        Self {
            inner: Arc::new(Inner {
                deadline,
                hook,
                ..Inner::default()
            }),
        }
    }

    /// Asks the model to stop at its next safe point.
    pub fn cancel(&self) {
        self.inner.cancelled.store(true, Ordering::SeqCst);
    }

    /// Why the job should stop now, if it should: cancellation wins over the deadline.
    pub fn reason(&self) -> Option<Stopped> {
        if self.inner.cancelled.load(Ordering::SeqCst) {
            return Some(Stopped::Cancelled);
        }
        match self.inner.deadline {
            Some(deadline) if Instant::now() >= deadline => Some(Stopped::TimedOut),
            _ => None,
        }
    }

    /// A safe point: counts it, calls the hook, then says whether to stop here.
    pub fn check(&self) -> Result<(), Stopped> {
        let passed = self.inner.safe_points.fetch_add(1, Ordering::SeqCst) + 1;
        if let Some(hook) = &self.inner.hook {
            hook(self, passed);
        }
        self.reason().map_or(Ok(()), Err)
    }

    /// Safe points passed so far.
    pub fn safe_points(&self) -> usize {
        self.inner.safe_points.load(Ordering::SeqCst)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn stops_when_cancelled_or_past_the_deadline_and_counts_safe_points() {
        let never = StopSignal::never();
        assert_eq!(never.check(), Ok(()));
        let other = never.clone();
        other.cancel();
        assert_eq!(never.check(), Err(Stopped::Cancelled));
        assert_eq!(never.safe_points(), 2);

        let past = StopSignal::until(Instant::now());
        assert_eq!(past.check(), Err(Stopped::TimedOut));
        let later = StopSignal::until(Instant::now() + Duration::from_secs(3600));
        assert_eq!(later.check(), Ok(()));
        later.cancel();
        assert_eq!(later.reason(), Some(Stopped::Cancelled));
    }

    #[test]
    fn the_hook_sees_every_safe_point_and_can_cancel_there() {
        let seen = Arc::new(AtomicUsize::new(0));
        let count = seen.clone();
        let signal = StopSignal::never().with_hook(Arc::new(move |signal, n| {
            count.store(n, Ordering::SeqCst);
            if n == 3 {
                signal.cancel();
            }
        }));
        assert_eq!(signal.check(), Ok(()));
        assert_eq!(signal.check(), Ok(()));
        assert_eq!(signal.check(), Err(Stopped::Cancelled));
        assert_eq!(seen.load(Ordering::SeqCst), 3);
    }
}
