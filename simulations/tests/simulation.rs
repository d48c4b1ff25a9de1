//! The simulator end to end: shipped scenarios run, runs are deterministic, invariants hold
//! on every step, and seeds that once broke an invariant stay fixed.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use simulations::engine::{RunOptions, compare, run};
use simulations::{Scenario, StrategyKind, plan, report};

fn opts(seed: u64, requests: u64) -> RunOptions {
    RunOptions {
        seed,
        requests,
        strategy: StrategyKind::Meridian,
        check: false,
    }
}

fn small() -> Scenario {
    Scenario::from_toml(include_str!("data/small.toml")).unwrap()
}

fn checked(
    scenario: &Scenario,
    seed: u64,
    strategy: StrategyKind,
    requests: u64,
) -> simulations::RunResult {
    let options = RunOptions {
        seed,
        requests,
        strategy,
        check: true,
    };
    run(scenario, options)
        .unwrap_or_else(|e| panic!("{e}\nreplay: add seed {seed} to REGRESSION_SEEDS"))
}

/// Seeds that once broke an invariant, or stress a path worth keeping. A checked run that
/// fails prints its seed; add it here and fix the cause (README: "Failing seeds").
const REGRESSION_SEEDS: &[u64] = &[0, 1, 2, 3, 42, 0xDEAD_BEEF];

#[test]
fn every_strategy_keeps_the_invariants_on_every_step() {
    let scenario = small();
    for &seed in REGRESSION_SEEDS {
        for strategy in StrategyKind::ALL {
            let r = checked(&scenario, seed, strategy, 3000);
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
fn same_seed_same_results_different_seed_different() {
    let scenario = small();
    let a = run(
        &scenario,
        RunOptions {
            seed: 7,
            requests: 3000,
            strategy: StrategyKind::Meridian,
            check: false,
        },
    )
    .unwrap();
    let b = run(
        &scenario,
        RunOptions {
            seed: 7,
            requests: 3000,
            strategy: StrategyKind::Meridian,
            check: false,
        },
    )
    .unwrap();
    let c = run(
        &scenario,
        RunOptions {
            seed: 8,
            requests: 3000,
            strategy: StrategyKind::Meridian,
            check: false,
        },
    )
    .unwrap();
    assert_eq!(a.summary, b.summary);
    assert_eq!(a.latency, b.latency);
    assert_eq!(a.ledger.on_demand_cost, b.ledger.on_demand_cost);
    assert_eq!(
        report::summary_csv(std::slice::from_ref(&a)),
        report::summary_csv(&[b])
    );
    assert_ne!(a.summary, c.summary);
}

#[test]
fn comparisons_do_not_depend_on_threads_and_share_the_traffic() {
    let scenario = small();
    let one = compare(&scenario, opts(5, 2000), &StrategyKind::ALL, 1).unwrap();
    let many = compare(&scenario, opts(5, 2000), &StrategyKind::ALL, 3).unwrap();
    let summaries =
        |v: &[simulations::RunResult]| v.iter().map(|r| r.summary.clone()).collect::<Vec<_>>();
    assert_eq!(summaries(&one), summaries(&many));
    let arrived: Vec<u64> = one.iter().map(|r| r.summary.outcomes.arrived).collect();
    assert!(arrived.windows(2).all(|w| w[0] == w[1]), "{arrived:?}");
}

#[test]
fn an_outage_loses_running_work_and_edges_fail_over() {
    let scenario = small();
    let nearest = checked(&scenario, 11, StrategyKind::Nearest, 4000);
    assert!(
        nearest.summary.outcomes.failed > 0,
        "{:?}",
        nearest.summary.outcomes
    );
    assert!(
        nearest.summary.outcomes.failovers > 0,
        "{:?}",
        nearest.summary.outcomes
    );
    let meridian = checked(&scenario, 11, StrategyKind::Meridian, 4000);
    assert_eq!(meridian.summary.outcomes.residency_violations, 0);
}

#[test]
fn meridian_fills_reserved_capacity_more_cheaply_than_the_list_price_baseline() {
    let scenario = small();
    let results = compare(
        &scenario,
        opts(3, 4000),
        &[StrategyKind::Cheapest, StrategyKind::Meridian],
        2,
    )
    .unwrap();
    let (cheapest, meridian) = (&results[0].summary, &results[1].summary);
    assert!(
        meridian.goal_share() > cheapest.goal_share(),
        "{meridian:?}\n{cheapest:?}"
    );
}

#[test]
fn shipped_scenarios_validate_and_run() {
    for text in [
        include_str!("../scenarios/global-day.toml"),
        include_str!("../scenarios/region-outage.toml"),
    ] {
        let mut scenario = Scenario::from_toml(text).unwrap();
        assert_eq!(scenario.catalog.regions().len(), 20);
        // Three hours keep the suite fast; the events and the checks are the same.
        scenario.spec.simulation.duration_hours = 3.0;
        let scenario = Scenario::from_spec(scenario.spec).unwrap();
        let r = checked(&scenario, 1, StrategyKind::Meridian, 1500);
        assert!(r.summary.outcomes.completed > 0);
        assert_eq!(r.summary.outcomes.residency_violations, 0);
    }
}

#[test]
fn scenario_problems_are_all_reported_with_a_fix() {
    let text = include_str!("data/small.toml")
        .replace("tenant = \"eu-corp\"", "tenant = \"nobody\"")
        .replace("region = \"us-east\"\nfactor", "region = \"mars\"\nfactor");
    let err = Scenario::from_toml(&text).unwrap_err().to_string();
    assert!(err.contains("\"nobody\" is not in [catalog]"), "{err}");
    assert!(err.contains("\"mars\" is not in [catalog]"), "{err}");
    assert!(err.contains("fix:"), "{err}");
    let bad_catalog = include_str!("data/small.toml").replace(
        "reserved = 2, reserved_price_per_hour = 2.0",
        "reserved = -2, reserved_price_per_hour = 2.0",
    );
    let err = Scenario::from_toml(&bad_catalog).unwrap_err().to_string();
    assert!(
        err.contains("[catalog]") && err.contains("reserved"),
        "{err}"
    );
}

/// The cost of the plan's outcome whose label starts with `label`.
fn outcome_cost(p: &plan::Plan, label: &str) -> f64 {
    p.outcomes
        .iter()
        .find(|o| o.label.starts_with(label))
        .unwrap()
        .cost
}

#[test]
fn the_plan_costs_no_more_than_all_on_demand() {
    let scenario = small();
    let p = plan::plan(&scenario, 2, 3000, 1, 0.5).unwrap();
    let cost = |label: &str| outcome_cost(&p, label);
    assert!(cost("recommended") <= cost("all on-demand"), "{p}");
    assert_eq!(p.regions.len(), 3);
    assert!(p.to_string().contains("saving vs all on-demand"));
}

#[test]
fn in_a_lightly_loaded_world_the_plan_is_never_dearer_than_all_on_demand() {
    // A few requests on many reserved GPUs, goals loose enough for on-demand GPUs' start, and
    // a region with no on-demand price at all (its reservations are kept as they are).
    let text = include_str!("data/small.toml")
        .replace(
            "reserved = 1, reserved_price_per_hour = 2.2, on_demand_max = 3, on_demand_price_per_hour = 4.4",
            "reserved = 4, reserved_price_per_hour = 2.2",
        )
        .replace("latency_goal_ms = 4000", "latency_goal_ms = 60000")
        .replace("latency_goal_ms = 3000", "latency_goal_ms = 60000");
    let scenario = Scenario::from_toml(&text).unwrap();
    let p = plan::plan(&scenario, 3, 300, 1, 0.5).unwrap();
    let cost = |label: &str| outcome_cost(&p, label);
    assert!(cost("recommended") <= cost("all on-demand"), "{p}");
    assert!(cost("recommended") < cost("current reservations"), "{p}");
    assert!(p.outcomes.iter().all(|o| o.cost.is_finite()), "{p}");
    let kept = p.regions.iter().find(|r| r.region == "eu-central").unwrap();
    assert_eq!((kept.current, kept.recommended), (4, 4), "{p}");
}

#[test]
fn reports_write_every_file() {
    let scenario = small();
    let results = compare(&scenario, opts(1, 1000), &StrategyKind::ALL, 2).unwrap();
    let dir = std::env::temp_dir().join(format!("meridian-sim-{}", std::process::id()));
    report::write_all(&dir, &scenario, &results).unwrap();
    for f in [
        "summary.csv",
        "tenants.csv",
        "timeline.csv",
        "latency.csv",
        "latency.svg",
        "cost_over_day.svg",
        "utilisation_over_day.svg",
    ] {
        let text = std::fs::read_to_string(dir.join(f)).unwrap();
        assert!(text.lines().count() > 1 || text.contains("<svg"), "{f}");
    }
    let summary = std::fs::read_to_string(dir.join("summary.csv")).unwrap();
    assert_eq!(summary.lines().count(), 1 + StrategyKind::ALL.len());
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(report::table("USD", &results).contains("meridian"));
}

#[test]
fn a_usage_trace_plans_reservations_where_the_use_is() {
    let scenario = Scenario::from_toml(include_str!("../scenarios/global-day.toml")).unwrap();
    let trace =
        simulations::trace::parse(include_str!("../scenarios/usage-trace.example.csv")).unwrap();
    let p = plan::from_trace(&scenario, &trace).unwrap();
    let region = |id: &str| {
        p.regions
            .iter()
            .find(|r| r.region == id)
            .unwrap()
            .recommended
    };
    assert!(region("ap-south") > 0 && region("uk-south") > 0, "{p}");
    assert_eq!(region("us-central"), 0, "no use there, nothing reserved");
    let cost = |label: &str| p.outcomes.iter().find(|o| o.label == label).unwrap().cost;
    assert!(
        cost("recommended") <= cost("all on-demand")
            && cost("recommended") <= cost("current reservations")
    );
}

#[test]
fn per_tenant_counts_add_up_to_the_totals() {
    let scenario = small();
    let r = checked(&scenario, 4, StrategyKind::Meridian, 3000);
    let o = &r.summary.outcomes;
    let sum = |pick: fn(&(u64, u64, u64)) -> u64| o.tenants.iter().map(pick).sum::<u64>();
    assert_eq!(sum(|t| t.0), o.arrived);
    assert_eq!(sum(|t| t.1), o.completed);
    assert_eq!(sum(|t| t.2), o.met_goal);
}

#[test]
fn the_control_planes_usage_report_plans_as_its_csv_does() {
    use control_plane_client::wire;
    let scenario = Scenario::from_toml(include_str!("../scenarios/global-day.toml")).unwrap();
    let csv =
        simulations::trace::parse(include_str!("../scenarios/usage-trace.example.csv")).unwrap();
    // The same use as the control plane reports it: split across capacity classes.
    let rows = csv
        .rows
        .iter()
        .map(|r| wire::UsageRow {
            tenant: Some(r.tenant.clone()),
            model: Some(r.model.clone()),
            region: Some(r.region.clone()),
            day: Some(r.day.clone()),
            usage: wire::UsageTotals {
                jobs: 1,
                units: r.units,
                reserved_gpu_seconds: r.gpu_seconds * 0.25,
                on_demand_gpu_seconds: r.gpu_seconds * 0.75,
                ..wire::UsageTotals::default()
            },
        })
        .collect();
    let report = wire::UsageReport {
        revision: 1,
        from: None,
        to: None,
        group_by: ["tenant", "model", "region", "day"]
            .map(String::from)
            .into(),
        rows,
        total: wire::UsageTotals::default(),
    };
    let json =
        simulations::trace::parse_usage_report(&serde_json::to_string(&report).unwrap()).unwrap();
    let from_csv = plan::from_trace(&scenario, &csv).unwrap();
    let from_json = plan::from_trace(&scenario, &json).unwrap();
    let recommended = |p: &plan::Plan| -> Vec<(String, u32)> {
        p.regions
            .iter()
            .map(|r| (r.region.clone(), r.recommended))
            .collect()
    };
    assert_eq!(recommended(&from_json), recommended(&from_csv));
    assert!(recommended(&from_csv).iter().any(|(_, n)| *n > 0));
}
