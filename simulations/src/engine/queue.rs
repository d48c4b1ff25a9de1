//! The event queue: events in order of (time, sequence number), so simultaneous events run in
//! the order they were scheduled.
//!
//! About half of all events are arrivals, and at most one arrival is pending at a time (each
//! arrival schedules the next). That one waits in its own slot beside a binary heap of the
//! rest, so it never pays for a trip through the heap; popping compares it with the heap's
//! top. The order is exactly that of one heap holding every event.

use std::cmp::Ordering;
use std::collections::BinaryHeap;

/// An event of kind `K` due at `time`; `seq` orders events due at the same time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Event<K> {
    pub(super) time: u64,
    pub(super) seq: u64,
    pub(super) kind: K,
}

impl<K: Eq> Ord for Event<K> {
    fn cmp(&self, other: &Self) -> Ordering {
        // Reversed: the heap pops the earliest event first.
        (other.time, other.seq).cmp(&(self.time, self.seq))
    }
}

impl<K: Eq> PartialOrd for Event<K> {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// Events in order of (time, sequence number); the sequence number counts pushes.
#[derive(Debug)]
pub(super) struct EventQueue<K> {
    heap: BinaryHeap<Event<K>>,
    /// One event of the kind that `is_arrival` picks, kept out of the heap.
    arrival: Option<Event<K>>,
    seq: u64,
    is_arrival: fn(&K) -> bool,
}

impl<K: Copy + Eq> EventQueue<K> {
    /// An empty queue that keeps one event for which `is_arrival` holds beside the heap.
    pub(super) fn new(is_arrival: fn(&K) -> bool) -> Self {
        Self {
            heap: BinaryHeap::new(),
            arrival: None,
            seq: 0,
            is_arrival,
        }
    }

    /// Schedules `kind` at `time`, after every event already scheduled for that time.
    pub(super) fn push(&mut self, time: u64, kind: K) {
        self.seq += 1;
        let event = Event {
            time,
            seq: self.seq,
            kind,
        };
        if self.arrival.is_none() && (self.is_arrival)(&kind) {
            self.arrival = Some(event);
        } else {
            self.heap.push(event);
        }
    }

    /// The earliest event (the first scheduled among equals), removed.
    pub(super) fn pop(&mut self) -> Option<Event<K>> {
        match (self.arrival, self.heap.peek()) {
            // `>` on events is "earlier" (the order is reversed for the max-heap).
            (Some(a), Some(top)) if *top > a => self.heap.pop(),
            (Some(a), _) => {
                self.arrival = None;
                Some(a)
            }
            (None, _) => self.heap.pop(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    /// Pops the same events in the same order as one binary heap holding them all, for
    /// random interleavings of pushes and pops with many equal times, whether arrivals come
    /// one at a time (as in the simulator) or several are pending.
    #[test]
    fn pops_in_the_order_of_one_heap() {
        for seed in 0..200 {
            let mut rng = Rng::new(seed, 7);
            let mut queue = EventQueue::new(|k: &(bool, u32)| k.0);
            let mut heap = BinaryHeap::new();
            let (mut seq, mut now, mut popped) = (0, 0u64, 0);
            let one_arrival_at_a_time = seed % 2 == 0;
            let mut arrival_pending = false;
            for i in 0..2000u32 {
                if rng.uniform() < 0.55 {
                    let time = now + (rng.uniform() * 20.0) as u64;
                    let arrival = rng.uniform() < 0.5;
                    if arrival && one_arrival_at_a_time && arrival_pending {
                        continue;
                    }
                    arrival_pending |= arrival;
                    seq += 1;
                    queue.push(time, (arrival, i));
                    heap.push(Event {
                        time,
                        seq,
                        kind: (arrival, i),
                    });
                } else {
                    let got = queue.pop();
                    assert_eq!(got, heap.pop(), "seed {seed}, step {i}");
                    if let Some(e) = got {
                        now = e.time;
                        popped += 1;
                        arrival_pending &= !e.kind.0;
                    }
                }
            }
            while let Some(e) = heap.pop() {
                assert_eq!(queue.pop(), Some(e), "seed {seed}, draining");
                popped += 1;
            }
            assert_eq!(queue.pop(), None);
            assert!(popped > 500, "seed {seed}: only {popped} events");
        }
    }
}
