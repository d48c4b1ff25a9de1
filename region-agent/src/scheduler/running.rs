//! The batch a model's thread is running (one at a time per model): each job's request id
//! and whether it was cancelled, and the batch's stop signal once the model runs it.
//!
//! A batch shares one stop signal, so cancelling one of its jobs does not stop the others'
//! work: the job is marked, and the signal is raised only once every job of the batch is
//! marked. A marked job ends `CANCELLED` when the batch returns, even if the model finished
//! it; its output is dropped. A job running alone (`max_batch` 1, or no other queued job
//! had its batch key) thus stops at the model's next safe point.
//!
//! The batch is entered under the lane's lock in the same step that takes it off the queue,
//! so a job is always either queued or here until its outcome is settled: a cancellation
//! never falls between the two.

use std::collections::BTreeMap;

use crate::serving::StopSignal;

/// What a cancellation of a running job did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Marked {
    /// The job is marked now.
    Now,
    /// It was marked already (cancelling twice is harmless).
    Already,
}

/// The running batch of one model.
#[derive(Debug, Default)]
pub(super) struct RunningBatch {
    /// Each job's request id and whether it was cancelled.
    jobs: BTreeMap<String, bool>,
    /// The batch's stop signal, once the model runs it.
    signal: Option<StopSignal>,
}

impl RunningBatch {
    /// Enters a batch just taken off the queue.
    pub(super) fn start(&mut self, ids: impl IntoIterator<Item = String>) {
        self.jobs = ids.into_iter().map(|id| (id, false)).collect();
        self.signal = None;
    }

    /// Jobs running.
    pub(super) fn len(&self) -> usize {
        self.jobs.len()
    }

    /// Whether no job is running.
    pub(super) fn is_empty(&self) -> bool {
        self.jobs.is_empty()
    }

    /// Hands the batch the signal the model runs under; raises it at once when every job
    /// was cancelled before the model started.
    pub(super) fn arm(&mut self, signal: &StopSignal) {
        self.signal = Some(signal.clone());
        self.stop_if_all_cancelled();
    }

    /// Marks `id` cancelled; `None` when it is not running here. The batch's signal is
    /// raised once every job of the batch is marked.
    pub(super) fn cancel(&mut self, id: &str) -> Option<Marked> {
        let marked = self.jobs.get_mut(id)?;
        let was = std::mem::replace(marked, true);
        self.stop_if_all_cancelled();
        Some(if was { Marked::Already } else { Marked::Now })
    }

    /// Takes `id` out of the batch as its outcome is settled: whether it was cancelled.
    pub(super) fn settle(&mut self, id: &str) -> bool {
        let cancelled = self.jobs.remove(id).unwrap_or(false);
        if self.jobs.is_empty() {
            self.signal = None;
        }
        cancelled
    }

    fn stop_if_all_cancelled(&self) {
        if let Some(signal) = &self.signal
            && !self.jobs.is_empty()
            && self.jobs.values().all(|&cancelled| cancelled)
        {
            signal.cancel();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::serving::Stopped;

    fn batch(ids: &[&str]) -> (RunningBatch, StopSignal) {
        let mut running = RunningBatch::default();
        running.start(ids.iter().map(|&id| id.to_owned()));
        let signal = StopSignal::never();
        running.arm(&signal);
        (running, signal)
    }

    #[test]
    fn a_lone_job_stops_its_batch_and_a_second_cancellation_is_harmless() {
        let (mut running, signal) = batch(&["a"]);
        assert_eq!(running.cancel("b"), None);
        assert_eq!(signal.reason(), None);
        assert_eq!(running.cancel("a"), Some(Marked::Now));
        assert_eq!(signal.reason(), Some(Stopped::Cancelled));
        assert_eq!(running.cancel("a"), Some(Marked::Already));
        assert!(running.settle("a"));
        assert!(running.is_empty());
        assert_eq!(running.cancel("a"), None);
    }

    #[test]
    fn a_batch_stops_only_when_all_its_jobs_are_cancelled() {
        let (mut running, signal) = batch(&["a", "b"]);
        assert_eq!(running.cancel("a"), Some(Marked::Now));
        assert_eq!(signal.reason(), None, "b still wants its output");
        assert!(running.settle("a"));
        assert!(!running.settle("b"));

        let (mut running, signal) = batch(&["a", "b"]);
        running.cancel("b");
        running.cancel("a");
        assert_eq!(signal.reason(), Some(Stopped::Cancelled));
    }

    #[test]
    fn jobs_cancelled_before_the_model_starts_stop_it_at_its_first_safe_point() {
        let mut running = RunningBatch::default();
        running.start(["a".to_owned()]);
        assert_eq!(running.cancel("a"), Some(Marked::Now));
        let signal = StopSignal::never();
        running.arm(&signal);
        assert_eq!(signal.check(), Err(Stopped::Cancelled));
    }
}
