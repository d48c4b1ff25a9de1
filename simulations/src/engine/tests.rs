//! Placement inside a region: the edge ranks the chosen region's hosts as it would rank
//! its instances.
#![allow(clippy::unwrap_used)]

use super::{Job, Sim};
use crate::demand::Arrival;
use crate::engine::RunOptions;
use crate::host::SlotState;
use crate::scenario::Scenario;
use crate::strategy::StrategyKind;

/// The test world with one GPU per host: eu-west's 2 reserved GPUs are hosts 0 and 1, its 3
/// on-demand GPUs hosts 2 to 4.
fn one_gpu_hosts() -> Scenario {
    let mut spec = Scenario::from_toml(include_str!("../../tests/data/small.toml"))
        .unwrap()
        .spec;
    spec.simulation.gpus_per_host = 1;
    spec.events.clear();
    Scenario::from_spec(spec).unwrap()
}

/// Places one London request for eu-west (index 0) from edge 0, the decision having chosen
/// to start an on-demand slot there when `wants_slot`; returns the host it got.
fn place_in_eu_west(sim: &mut Sim<'_>, wants_slot: bool) -> Option<u32> {
    let a = Arrival {
        time_us: sim.now,
        city: 0,
        tenant: 0,
        model: 0,
        units: 1.0,
        service_us: 60_000_000,
    };
    let job = sim.new_job(Job {
        arrival_us: sim.now,
        live: true,
        service_us: a.service_us,
        ..Job::default()
    });
    sim.order.clear();
    sim.order.push((0, wants_slot));
    assert!(sim.place(job, &a, 0));
    sim.jobs[job as usize].host
}

#[test]
fn a_job_goes_to_a_host_with_a_free_reserved_slot_before_any_on_demand_one() {
    let scenario = one_gpu_hosts();
    assert_eq!(scenario.hosts[0].len(), 5);
    let options = RunOptions {
        seed: 1,
        requests: 10,
        strategy: StrategyKind::Nearest,
        check: false,
    };
    let mut sim = Sim::new(&scenario, options);
    sim.heartbeat(0);
    // Both reserved hosts report a free slot; the first is taken, and the edge's own
    // in-flight count sends the next request to the other before any report says so.
    assert_eq!(place_in_eu_west(&mut sim, false), Some(0));
    assert_eq!(place_in_eu_west(&mut sim, false), Some(1));
    assert_eq!(sim.hosts[1].slots[0].state, SlotState::Busy);
    // With every reserved slot busy (reported, too), a request the decision meant to queue
    // queues behind a reserved one: no on-demand slot is bought for it.
    sim.heartbeat(0);
    assert_eq!(place_in_eu_west(&mut sim, false), Some(0));
    assert_eq!(sim.hosts[0].queue_len(), 1);
    assert!(
        sim.hosts[2..]
            .iter()
            .all(|h| h.slots.iter().all(|s| s.state != SlotState::Starting))
    );
    // One the decision chose to start a slot for goes to an on-demand host, which starts it.
    assert_eq!(place_in_eu_west(&mut sim, true), Some(2));
    assert_eq!(sim.hosts[2].slots[0].state, SlotState::Starting);
}

#[test]
fn the_region_the_strategies_see_is_the_sum_of_its_hosts() {
    let scenario = one_gpu_hosts();
    let options = RunOptions {
        seed: 1,
        requests: 10,
        strategy: StrategyKind::Meridian,
        check: false,
    };
    let mut sim = Sim::new(&scenario, options);
    sim.heartbeat(0);
    place_in_eu_west(&mut sim, false);
    let region = sim.edges[0].regions.region(0).unwrap();
    assert_eq!(
        (region.free_reserved, region.on_demand_startable),
        (2, 3),
        "the last reports, before the placement"
    );
    assert_eq!(region.in_flight, 1);
    assert_eq!(sim.edges[0].hosts[0].in_flight, 1);
    sim.heartbeat(0);
    let region = sim.edges[0].regions.region(0).unwrap();
    assert_eq!((region.free_reserved, region.in_flight), (1, 0));
    assert_eq!(sim.edges[0].hosts[0].in_flight, 0);
    assert_eq!(sim.edges[1].regions.region(0).unwrap().free_reserved, 1);
}
