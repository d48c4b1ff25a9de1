//! Regions as several hosts: how a scenario lays a region's GPUs out on hosts, runs that keep
//! every invariant with many hosts and a host lost, and the same seed giving the same table.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use simulations::engine::{RunOptions, run};
use simulations::region::HostShape;
use simulations::{Scenario, StrategyKind, report};

const SMALL: &str = include_str!("data/small.toml");

/// The test world with hosts of two GPUs (eu-west: 2 reserved and 3 on-demand GPUs on
/// hosts of 2 reserved, 2 on-demand and 1 on-demand).
fn small_on_hosts_of_two() -> String {
    SMALL.replace(
        "queue_limit = 20\n",
        "queue_limit = 20\ngpus_per_host = 2\n",
    )
}

/// The same world where only eu-west's first host is lost, instead of the whole region.
fn small_losing_one_host() -> String {
    small_on_hosts_of_two().replace(
        "end_hour = 0.5\nregion = \"eu-west\"\n",
        "end_hour = 0.5\nregion = \"eu-west\"\nhost = 0\n",
    )
}

fn options(seed: u64, strategy: StrategyKind, check: bool) -> RunOptions {
    RunOptions {
        seed,
        requests: 3000,
        strategy,
        check,
    }
}

fn shapes(list: &[(u32, u32)]) -> Vec<HostShape> {
    list.iter()
        .map(|&(reserved, on_demand)| HostShape {
            reserved,
            on_demand,
        })
        .collect()
}

#[test]
fn a_scenario_lays_each_region_out_on_hosts() {
    // Without a layout a region is hosts of 8: each small region fits on one.
    let default = Scenario::from_toml(SMALL).unwrap();
    assert_eq!(default.hosts[0], shapes(&[(2, 3)]));
    let text = small_on_hosts_of_two().replace(
        "gpus_per_host = 2\n",
        "gpus_per_host = 2\nhost_gpus = { \"eu-central\" = [3] }\n",
    );
    let scenario = Scenario::from_toml(&text).unwrap();
    assert_eq!(scenario.hosts[0], shapes(&[(2, 0), (0, 2), (0, 1)]));
    assert_eq!(scenario.hosts[1], shapes(&[(1, 2), (0, 1)]));
    assert_eq!(scenario.hosts[2], shapes(&[(2, 0), (0, 2), (0, 1)]));
}

#[test]
fn a_bad_layout_or_host_is_named_with_its_fix() {
    let text = small_losing_one_host()
        .replace(
            "gpus_per_host = 2\n",
            "gpus_per_host = 2\nhost_gpus = { \"mars\" = [8], \"eu-west\" = [0] }\n",
        )
        .replace("host = 0\n", "host = 3\n");
    let err = Scenario::from_toml(&text).unwrap_err().to_string();
    assert!(err.contains("host_gpus names region \"mars\""), "{err}");
    assert!(
        err.contains("host_gpus.eu-west lists a host of 0 GPUs"),
        "{err}"
    );
    assert!(
        err.contains("events[0].host is 3, but eu-west has"),
        "{err}"
    );
    assert!(err.contains("fix:"), "{err}");
    let none = small_on_hosts_of_two().replace("gpus_per_host = 2", "gpus_per_host = 0");
    let err = Scenario::from_toml(&none).unwrap_err().to_string();
    assert!(err.contains("gpus_per_host"), "{err}");
}

#[test]
fn every_strategy_keeps_the_invariants_on_many_hosts_and_through_a_lost_host() {
    let scenario = Scenario::from_toml(&small_losing_one_host()).unwrap();
    for seed in [0, 1, 2, 42] {
        for strategy in StrategyKind::ALL {
            let r = run(&scenario, options(seed, strategy, true)).unwrap_or_else(|e| panic!("{e}"));
            let o = &r.summary.outcomes;
            assert_eq!(
                o.arrived,
                o.completed + o.refused + o.dropped + o.failed,
                "{strategy:?} seed {seed}"
            );
            assert_eq!(o.residency_violations, 0, "{strategy:?} seed {seed}");
            assert!(
                o.completed > o.arrived / 2,
                "{strategy:?} seed {seed}: {o:?}"
            );
        }
    }
}

#[test]
fn a_lost_host_loses_its_own_work_and_the_region_serves_on() {
    // One GPU a host: eu-west's two reserved GPUs are hosts 0 and 1, both busy at the time.
    let one_gpu = |text: String| text.replace("gpus_per_host = 2", "gpus_per_host = 1");
    let host = Scenario::from_toml(&one_gpu(small_losing_one_host())).unwrap();
    let region = Scenario::from_toml(&one_gpu(small_on_hosts_of_two())).unwrap();
    for strategy in [StrategyKind::Nearest, StrategyKind::Meridian] {
        let one = run(&host, options(11, strategy, true)).unwrap().summary;
        let all = run(&region, options(11, strategy, true)).unwrap().summary;
        let (one, all) = (&one.outcomes, &all.outcomes);
        assert!(one.failed > 0, "{strategy:?}: {one:?}");
        assert!(one.failed < all.failed, "{strategy:?}: {one:?}\n{all:?}");
        assert!(
            one.completed > all.completed,
            "{strategy:?}: {one:?}\n{all:?}"
        );
        assert!(
            one.refused + one.dropped < all.refused + all.dropped,
            "{strategy:?}: {one:?}\n{all:?}"
        );
    }
}

#[test]
fn the_same_seed_gives_the_same_table_on_hosts() {
    let scenario = Scenario::from_toml(&small_losing_one_host()).unwrap();
    let table = |seed| {
        let results: Vec<_> = StrategyKind::ALL
            .iter()
            .map(|&s| run(&scenario, options(seed, s, false)).unwrap())
            .collect();
        (
            report::summary_csv(&results),
            results
                .iter()
                .map(|r| r.latency.clone())
                .collect::<Vec<_>>(),
        )
    };
    let (a, b, c) = (table(7), table(7), table(8));
    assert_eq!(a, b);
    assert_ne!(a.0, c.0);
}
