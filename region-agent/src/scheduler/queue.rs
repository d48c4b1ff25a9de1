//! One model's queue: three FIFO lanes (high, normal, low), removal by id (cancellation),
//! and batch selection (the next job plus the next ones with its batch key).

use std::collections::VecDeque;

use crate::jobs::Priority;
use crate::serving::JobInput;

/// A queued job, ready to run.
#[derive(Debug)]
pub struct Queued {
    /// Request id.
    pub id: String,
    /// Priority.
    pub priority: Priority,
    /// The decoded input.
    pub input: JobInput,
}

/// Jobs waiting for one model.
#[derive(Debug, Default)]
pub struct ModelQueue {
    lanes: [VecDeque<Queued>; 3],
}

fn lane(priority: Priority) -> usize {
    match priority {
        Priority::High => 0,
        Priority::Normal => 1,
        Priority::Low => 2,
    }
}

impl ModelQueue {
    /// Jobs waiting.
    pub fn len(&self) -> usize {
        self.lanes.iter().map(VecDeque::len).sum()
    }

    /// Whether nothing waits.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Adds a job at the end of its priority's lane.
    pub fn push(&mut self, job: Queued) {
        self.lanes[lane(job.priority)].push_back(job);
    }

    /// Position of `id` (0 = next to run).
    pub fn position(&self, id: &str) -> Option<usize> {
        let mut before = 0;
        for lane in &self.lanes {
            if let Some(i) = lane.iter().position(|job| job.id == id) {
                return Some(before + i);
            }
            before += lane.len();
        }
        None
    }

    /// Removes `id` (a cancellation); `None` when it is not queued.
    pub fn remove(&mut self, id: &str) -> Option<Queued> {
        self.lanes.iter_mut().find_map(|lane| {
            let i = lane.iter().position(|job| job.id == id)?;
            lane.remove(i)
        })
    }

    /// Takes the next job and, up to `max` in all, the following jobs (in priority then FIFO
    /// order) that share its batch key.
    pub fn take_batch(&mut self, max: usize) -> Vec<Queued> {
        let Some(first) = self.lanes.iter_mut().find_map(VecDeque::pop_front) else {
            return Vec::new();
        };
        let key = first.input.batch_key.clone();
        let mut batch = vec![first];
        for lane in &mut self.lanes {
            let mut i = 0;
            while i < lane.len() && batch.len() < max {
                if lane[i].input.batch_key == key {
                    if let Some(job) = lane.remove(i) {
                        batch.push(job);
                    }
                } else {
                    i += 1;
                }
            }
        }
        batch
    }

    /// Every queued id, in run order.
    pub fn ids(&self) -> Vec<String> {
        self.lanes
            .iter()
            .flat_map(|lane| lane.iter().map(|job| job.id.clone()))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(id: &str, priority: Priority, key: &str) -> Queued {
        Queued {
            id: id.to_owned(),
            priority,
            input: JobInput {
                units: 1.0,
                batch_key: key.to_owned(),
                payload: Box::new(()),
            },
        }
    }

    fn ids(batch: &[Queued]) -> Vec<&str> {
        batch.iter().map(|j| j.id.as_str()).collect()
    }

    #[test]
    fn priorities_first_then_fifo() {
        let mut q = ModelQueue::default();
        q.push(job("n1", Priority::Normal, "a"));
        q.push(job("l1", Priority::Low, "a"));
        q.push(job("h1", Priority::High, "a"));
        q.push(job("n2", Priority::Normal, "a"));
        assert_eq!(q.position("h1"), Some(0));
        assert_eq!(q.position("l1"), Some(3));
        let order: Vec<_> = (0..4).flat_map(|_| q.take_batch(1)).collect();
        assert_eq!(ids(&order), ["h1", "n1", "n2", "l1"]);
        assert!(q.is_empty());
    }

    #[test]
    fn a_batch_takes_only_jobs_with_the_same_key() {
        let mut q = ModelQueue::default();
        for (id, key) in [("a1", "8x8"), ("b1", "4x4"), ("a2", "8x8"), ("a3", "8x8")] {
            q.push(job(id, Priority::Normal, key));
        }
        q.push(job("a4", Priority::Low, "8x8"));
        assert_eq!(ids(&q.take_batch(3)), ["a1", "a2", "a3"]);
        assert_eq!(ids(&q.take_batch(3)), ["b1"]);
        assert_eq!(ids(&q.take_batch(3)), ["a4"]);
    }

    #[test]
    fn removal_cancels_only_queued_jobs() {
        let mut q = ModelQueue::default();
        q.push(job("x", Priority::Normal, ""));
        q.push(job("y", Priority::Normal, ""));
        assert!(q.remove("x").is_some());
        assert!(q.remove("x").is_none());
        assert_eq!(q.position("y"), Some(0));
    }
}
