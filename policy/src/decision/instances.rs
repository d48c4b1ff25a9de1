//! Inside the region the route decision chose: which of its instances (agents) takes the job
//! (docs/design.md §3, "Instances"). The decision sees a region as the sum of its instances;
//! the edge then ranks the instances themselves, and tries them in that order before it
//! fails over to the next region.
//!
//! An instance serves when it reports healthy, is not draining and this edge's circuit to it
//! is closed. Serving instances rank by
//! 1. **class**: an idle reserved slot, then an idle running on-demand slot, then only its
//!    queue, then an on-demand slot it can start — each after subtracting the requests this
//!    edge already has in flight to it, so reserved slots anywhere in the region fill before
//!    on-demand capacity is used, and a new on-demand slot is bought only behind every queue.
//!    When the decision chose to start a new on-demand slot in the region
//!    ([`SlotPath::OnDemandStart`]: its queue is too slow for the goal), starting one ranks
//!    before queueing instead;
//! 2. **expected wait**: its reported wait for the model, plus its cold start when the
//!    model is not loaded there, plus one service time per request in flight beyond its idle
//!    slots;
//! 3. fewer requests in flight, then a turn: the instances' order, rotated by the caller's
//!    `turn` (the edge counts its requests), so equal instances share the load rather than
//!    the first one listed taking every job of a lightly loaded region.
//!
//! An instance that reports nothing for the model is taken to have the defaults the route
//! decision assumes ([`ModelLoad::default`]); one that does not serve is left out.

use std::cmp::Ordering;

use super::SlotPath;
use super::status::{ModelLoad, RegionStatus};

/// How an instance could run a job now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Class {
    Reserved,
    RunningOnDemand,
    StartOnDemand,
    Queue,
}

impl Class {
    /// Its place in the ranking, best first, when the decision chose `path`.
    fn order(self, path: SlotPath) -> u8 {
        match (self, path) {
            (Class::Reserved, _) => 0,
            (Class::RunningOnDemand, _) => 1,
            (Class::StartOnDemand, SlotPath::OnDemandStart) => 2,
            (Class::Queue, SlotPath::OnDemandStart) => 3,
            (Class::Queue, _) => 2,
            (Class::StartOnDemand, _) => 3,
        }
    }
}

/// One instance's place in the ranking.
#[derive(Debug, Clone, Copy)]
struct Rank {
    class: Class,
    wait_ms: f64,
    in_flight: u32,
}

/// What one edge knows of an instance beyond its report.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EdgeSide {
    /// Requests this edge has in flight to it.
    pub in_flight: u32,
    /// Whether this edge's circuit to it is open.
    pub circuit_open: bool,
}

fn rank(status: &RegionStatus, edge: EdgeSide, model: usize, default_service_ms: f64) -> Rank {
    let in_flight = edge.in_flight;
    let reserved = status.free_reserved;
    let running = reserved.saturating_add(status.free_on_demand);
    let startable = running.saturating_add(status.on_demand_startable);
    let assumed = ModelLoad::default();
    let load = status.model_load(model).unwrap_or(&assumed);
    let class = if reserved > in_flight {
        Class::Reserved
    } else if running > in_flight {
        Class::RunningOnDemand
    } else if startable > in_flight {
        Class::StartOnDemand
    } else {
        Class::Queue
    };
    let service_ms = load.service_ms_per_unit.unwrap_or(default_service_ms);
    let beyond_idle = f64::from(in_flight.saturating_sub(running));
    let cold_ms = if load.loaded { 0.0 } else { load.cold_start_ms };
    Rank {
        class,
        wait_ms: load.expected_wait_ms + cold_ms + beyond_idle * service_ms,
        in_flight,
    }
}

/// Whether an instance takes new jobs from this edge.
pub fn serves(status: &RegionStatus, edge: EdgeSide) -> bool {
    status.healthy && !status.draining && !edge.circuit_open
}

/// Fills `order` with the indices of the serving `instances`, best first for a job of
/// catalog model `model` for which the decision chose `path` into the region;
/// `default_service_ms` is one job's service time where an instance has not measured it.
/// Each status's own `in_flight` and `circuit_open` are this edge's view; `turn` rotates
/// the order of instances that rank equal. The same inputs always give the same order.
pub fn rank_instances(
    instances: &[RegionStatus],
    model: usize,
    path: SlotPath,
    default_service_ms: f64,
    turn: usize,
    order: &mut Vec<usize>,
) {
    let view = |i: usize| {
        let status = &instances[i];
        let edge = EdgeSide {
            in_flight: status.in_flight,
            circuit_open: status.circuit_open,
        };
        (status, edge)
    };
    rank_instances_with(
        instances.len(),
        view,
        model,
        path,
        default_service_ms,
        turn,
        order,
    );
}

/// [`rank_instances`] over `count` instances, instance `i` being `view(i)`: its report and
/// this edge's view of it.
pub fn rank_instances_with<'a>(
    count: usize,
    view: impl Fn(usize) -> (&'a RegionStatus, EdgeSide),
    model: usize,
    path: SlotPath,
    default_service_ms: f64,
    turn: usize,
    order: &mut Vec<usize>,
) {
    order.clear();
    let place = |i: usize| (i + count - turn % count.max(1)) % count.max(1);
    order.extend((0..count).filter(|&i| {
        let (status, edge) = view(i);
        serves(status, edge)
    }));
    // Ranks are recomputed in the comparison rather than kept, so ranking allocates
    // nothing beyond `order`.
    order.sort_by(|&a, &b| {
        let (sa, ea) = view(a);
        let (sb, eb) = view(b);
        let x = rank(sa, ea, model, default_service_ms);
        let y = rank(sb, eb, model, default_service_ms);
        x.class
            .order(path)
            .cmp(&y.class.order(path))
            .then_with(|| x.wait_ms.partial_cmp(&y.wait_ms).unwrap_or(Ordering::Equal))
            .then_with(|| x.in_flight.cmp(&y.in_flight))
            .then_with(|| place(a).cmp(&place(b)))
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn instance(free_reserved: u32, free_on_demand: u32, wait_ms: f64) -> RegionStatus {
        let mut status = RegionStatus {
            last_heartbeat_ms: Some(1),
            healthy: true,
            free_reserved,
            free_on_demand,
            ..RegionStatus::default()
        };
        status.set_model_load(
            0,
            ModelLoad {
                expected_wait_ms: wait_ms,
                ..ModelLoad::default()
            },
        );
        status
    }

    fn ranked(instances: &[RegionStatus]) -> Vec<usize> {
        let mut order = Vec::new();
        rank_instances(instances, 0, SlotPath::Queued, 100.0, 0, &mut order);
        order
    }

    #[test]
    fn reserved_slots_anywhere_come_before_on_demand_ones() {
        let instances = [
            instance(0, 3, 0.0),
            instance(1, 0, 50.0),
            instance(0, 0, 10.0),
        ];
        assert_eq!(ranked(&instances), [1, 0, 2]);
    }

    #[test]
    fn a_new_on_demand_slot_is_started_only_when_the_decision_chose_one() {
        let mut startable = instance(0, 0, 0.0);
        startable.on_demand_startable = 2;
        let queue = instance(0, 0, 5_000.0);
        let instances = [startable, queue];
        assert_eq!(ranked(&instances), [1, 0], "behind the queue");
        let mut order = Vec::new();
        rank_instances(&instances, 0, SlotPath::OnDemandStart, 100.0, 0, &mut order);
        assert_eq!(order, [0, 1], "the decision chose to start one");
    }

    #[test]
    fn within_a_class_the_least_expected_wait_wins() {
        let instances = [
            instance(0, 0, 900.0),
            instance(0, 0, 300.0),
            instance(0, 0, 600.0),
        ];
        assert_eq!(ranked(&instances), [1, 2, 0]);
    }

    #[test]
    fn requests_in_flight_use_up_idle_slots_and_add_wait() {
        let mut busy = instance(1, 0, 0.0);
        busy.in_flight = 1;
        let idle = instance(1, 0, 0.0);
        assert_eq!(ranked(&[busy.clone(), idle]), [1, 0]);
        // Both full: each request beyond the idle slots adds a service time of wait.
        let mut a = instance(0, 0, 100.0);
        a.in_flight = 3;
        let b = instance(0, 0, 250.0);
        assert_eq!(ranked(&[a, b]), [1, 0], "100 + 3 × 100 > 250");
    }

    #[test]
    fn draining_unhealthy_and_open_circuit_instances_are_left_out() {
        let mut draining = instance(4, 0, 0.0);
        draining.draining = true;
        let mut sick = instance(4, 0, 0.0);
        sick.healthy = false;
        let mut open = instance(4, 0, 0.0);
        open.circuit_open = true;
        let full = instance(0, 0, 5_000.0);
        assert_eq!(ranked(&[draining, sick, open, full]), [3]);
    }

    #[test]
    fn a_cold_model_pays_its_start_and_an_unreported_one_has_the_defaults() {
        let mut cold = instance(0, 0, 0.0);
        cold.set_model_load(
            0,
            ModelLoad {
                loaded: false,
                cold_start_ms: 2_000.0,
                ..ModelLoad::default()
            },
        );
        let warm = instance(0, 0, 1_000.0);
        let silent = RegionStatus {
            healthy: true,
            ..RegionStatus::default()
        };
        assert_eq!(
            ranked(&[cold, warm, silent]),
            [2, 1, 0],
            "0, 1 000, 2 000 ms"
        );
    }

    #[test]
    fn ties_take_turns() {
        let instances = [
            instance(1, 0, 0.0),
            instance(1, 0, 0.0),
            instance(1, 0, 0.0),
        ];
        let mut firsts = Vec::new();
        for turn in 0..6 {
            let mut order = Vec::new();
            rank_instances(&instances, 0, SlotPath::Queued, 100.0, turn, &mut order);
            firsts.push(order[0]);
        }
        assert_eq!(firsts, [0, 1, 2, 0, 1, 2]);
        // A better instance is first whatever the turn.
        let better = [
            instance(0, 0, 0.0),
            instance(1, 0, 0.0),
            instance(0, 0, 0.0),
        ];
        for turn in 0..3 {
            let mut order = Vec::new();
            rank_instances(&better, 0, SlotPath::Queued, 100.0, turn, &mut order);
            assert_eq!(order[0], 1);
        }
    }
}
