//! The reservation planner: how many GPUs to reserve in each region.
//!
//! 1. Simulate the scenario's demand under Meridian's decision with the **current
//!    reservations** (and, for comparison, with none), which gives each region's GPUs in
//!    use over the day, bucket by bucket. Where reservations are changes where Meridian
//!    routes, so the profile comes from a run with reservations, not from an all-on-demand
//!    run (which would send everything to the cheapest on-demand regions).
//! 2. **Analytic estimate** per region: the k-th reserved GPU costs its committed price for
//!    the whole run and saves the on-demand price for the time at least k GPUs are in use;
//!    reserve while the saving exceeds the cost (the classic newsvendor rule).
//! 3. **Validate by simulation**: run the estimate, take the next estimate from that run's
//!    profile (`--rounds` times), then try the best so far scaled by 0.9 and 1.1. A
//!    candidate replaces the best (which starts as the current reservations) when it costs
//!    less while the share of requests meeting their latency goal stays within a tolerance
//!    (`--goal-tolerance`, in percentage points) of the current reservations' (or, while the
//!    best misses that, when it raises the share). Reserving nothing is a candidate too.
//!    Every candidate is listed with its cost and goal share, so the report also shows the
//!    trade-off around the recommendation. So the recommendation is never worse than what
//!    is reserved now, nor dearer than all on-demand when that meets the goal share.
//!
//! Each region keeps its total capacity (reserved + on-demand maximum) unchanged. A region
//! that sells no GPUs on demand keeps its reservations: without an on-demand price there
//! is nothing to weigh them against (and `∞ · 0` never enters a cost). A usage
//! trace ([`crate::trace`]) can replace step 1 ([`from_trace`]); it has only daily totals,
//! so each region's day is spread over the hours by the scenario's daily cycle in the
//! region's time zone, and the result is the analytic estimate only.

use std::fmt;

use anyhow::Context as _;
use policy::CatalogSpec;

use crate::engine::{RunOptions, RunResult, run};
use crate::scenario::{Scenario, US_PER_HOUR};
use crate::strategy::StrategyKind;
use crate::trace::UsageTrace;

/// One region's recommendation.
#[derive(Debug, Clone, PartialEq)]
pub struct RegionPlan {
    /// Region id.
    pub region: String,
    /// Reserved GPUs now.
    pub current: u32,
    /// Reserved GPUs recommended.
    pub recommended: u32,
    /// Mean GPUs in use without reservations.
    pub mean_in_use: f64,
}

/// One configuration's simulated (or estimated) outcome.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    /// What it is.
    pub label: String,
    /// Total cost over the run (reserved + on-demand).
    pub cost: f64,
    /// Share of requests meeting their latency goal, 0–1 (`None` for estimates).
    pub goal_share: Option<f64>,
}

/// The planner's answer.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// Currency of the costs.
    pub currency: String,
    /// How it was made.
    pub method: String,
    /// Per region.
    pub regions: Vec<RegionPlan>,
    /// All on-demand, current reservations, recommendation (and refinements).
    pub outcomes: Vec<Outcome>,
}

/// The catalog with `reserved[r]` reserved GPUs in region r's first pool that sells GPUs on
/// demand, keeping the total capacity of those pools. A pool without an on-demand price
/// keeps its reservations as they are: there is nothing to weigh them against (a region of
/// only such pools is not planned at all, see [`plans`]).
pub fn with_reservations(spec: &CatalogSpec, reserved: &[u32]) -> CatalogSpec {
    let mut spec = spec.clone();
    let sells = |p: &policy::spec::PoolSpec| p.on_demand_price_per_hour.is_some();
    for (region, &k) in spec.regions.iter_mut().zip(reserved) {
        let Some(first) = region.pools.iter().position(sells) else {
            continue;
        };
        let selling = || region.pools.iter().filter(|p| sells(p));
        let total: i64 = selling().map(|p| p.reserved + p.on_demand_max).sum();
        let price = selling().find_map(|p| p.reserved_price_per_hour);
        for (i, pool) in region.pools.iter_mut().enumerate() {
            if !sells(pool) {
                continue;
            }
            if i == first {
                pool.reserved = i64::from(k);
                pool.on_demand_max = (total - i64::from(k)).max(0);
                pool.reserved_price_per_hour = pool.reserved_price_per_hour.or(price);
            } else {
                pool.on_demand_max += pool.reserved;
                pool.reserved = 0;
            }
        }
    }
    spec
}

/// Whether the planner weighs region `r`'s reservations: some pool of it sells GPUs on
/// demand. Another region keeps what it reserves.
pub fn plans(spec: &CatalogSpec, r: usize) -> bool {
    spec.regions[r]
        .pools
        .iter()
        .any(|p| p.on_demand_price_per_hour.is_some())
}

/// Cost over a profile of GPUs in use (one value per bucket of `bucket_h` hours) with `k`
/// reserved: reservations for the whole profile plus on-demand for the excess.
pub fn analytic_cost(
    profile: &[f64],
    bucket_h: f64,
    k: u32,
    reserved_price: f64,
    od_price: f64,
) -> f64 {
    let excess: f64 = profile.iter().map(|u| (u - f64::from(k)).max(0.0)).sum();
    let reserved = f64::from(k) * reserved_price * bucket_h * profile.len() as f64;
    reserved + price_of(od_price, excess * bucket_h)
}

/// `hours` at `price` per hour, where none costs nothing even at an infinite price (a region
/// without that kind of capacity: `∞ · 0` is 0 here, not NaN).
fn price_of(price: f64, hours: f64) -> f64 {
    if hours > 0.0 { price * hours } else { 0.0 }
}

/// The newsvendor rule: the largest k whose k-th GPU saves more on demand than it costs.
/// No GPU past the profile's peak saves anything, so k is at most the peak; without an
/// on-demand price (`od_price` infinite) every GPU up to the peak saves more than it costs,
/// and without a reserved price (infinite) none does.
pub fn newsvendor(profile: &[f64], bucket_h: f64, reserved_price: f64, od_price: f64) -> u32 {
    let hours = bucket_h * profile.len() as f64;
    let peak = profile.iter().fold(0.0_f64, |a, &u| a.max(u)).ceil();
    let peak = if peak.is_finite() { peak as u32 } else { 0 };
    (0..=peak)
        .find(|&k| {
            let covered: f64 = profile
                .iter()
                .map(|u| (u - f64::from(k)).clamp(0.0, 1.0))
                .sum::<f64>()
                * bucket_h;
            price_of(od_price, covered) <= price_of(reserved_price, hours)
        })
        .unwrap_or(peak)
}

fn prices(spec: &CatalogSpec, r: usize) -> (f64, f64) {
    let pools = &spec.regions[r].pools;
    let reserved = pools
        .iter()
        .find_map(|p| p.reserved_price_per_hour)
        .unwrap_or(f64::INFINITY);
    let od = pools
        .iter()
        .filter_map(|p| p.on_demand_price_per_hour)
        .fold(f64::INFINITY, f64::min);
    (reserved, od)
}

fn simulate(
    scenario: &Scenario,
    reserved: &[u32],
    seed: u64,
    requests: u64,
) -> anyhow::Result<RunResult> {
    let variant = scenario
        .with_catalog(with_reservations(&scenario.spec.catalog, reserved))
        .context("build the catalog with the planned reservations")?;
    let options = RunOptions {
        seed,
        requests,
        strategy: StrategyKind::Meridian,
        check: false,
    };
    Ok(run(&variant, options)?)
}

fn outcome(label: String, r: &RunResult) -> Outcome {
    let s = &r.summary;
    Outcome {
        label,
        cost: s.reserved_cost + s.on_demand_cost,
        goal_share: Some(s.goal_share()),
    }
}

/// The newsvendor rule on each region's GPUs in use (reserved GPUs running jobs plus
/// on-demand GPUs paid for) in a run.
fn analytic(scenario: &Scenario, run: &RunResult) -> Vec<RegionPlan> {
    let l = &run.ledger;
    let bucket_h = l.bucket_us() as f64 / US_PER_HOUR;
    let regions = scenario.catalog.regions();
    regions
        .iter()
        .enumerate()
        .map(|(r, region)| {
            let cells = r * l.buckets..(r + 1) * l.buckets;
            let profile: Vec<f64> = l.on_demand_billed_us[cells.clone()]
                .iter()
                .zip(&l.reserved_busy_us[cells])
                .map(|(od, res)| (od + res) / l.bucket_us() as f64)
                .collect();
            let (rp, op) = prices(&scenario.spec.catalog, r);
            let k = if plans(&scenario.spec.catalog, r) {
                newsvendor(&profile, bucket_h, rp, op)
                    .min(region.reserved_slots() + region.on_demand_slots())
            } else {
                region.reserved_slots()
            };
            RegionPlan {
                region: region.id.to_string(),
                current: region.reserved_slots(),
                recommended: k,
                mean_in_use: profile.iter().sum::<f64>() / profile.len().max(1) as f64,
            }
        })
        .collect()
}

/// Whether `trial` beats `best`: cheaper while meeting the goal-share `target`, or closer
/// to the target when `best` misses it.
fn better(trial: &RunResult, best: &RunResult, target: f64) -> bool {
    let cost = |r: &RunResult| r.summary.reserved_cost + r.summary.on_demand_cost;
    let (t, b) = (trial.summary.goal_share(), best.summary.goal_share());
    match (t >= target, b >= target) {
        (true, true) => cost(trial) < cost(best),
        (true, false) => true,
        (false, true) => false,
        (false, false) => t > b,
    }
}

/// Plans from the scenario's own demand (see the module docs).
pub fn plan(
    scenario: &Scenario,
    seed: u64,
    requests: u64,
    rounds: u32,
    tolerance_points: f64,
) -> anyhow::Result<Plan> {
    let regions = scenario.catalog.regions();
    let current: Vec<u32> = regions.iter().map(|r| r.reserved_slots()).collect();
    let on_demand = simulate(scenario, &vec![0; regions.len()], seed, requests)?;
    let now = simulate(scenario, &current, seed, requests)?;
    let mut outcomes = vec![
        outcome("all on-demand".into(), &on_demand),
        outcome("current reservations".into(), &now),
    ];
    // Latency goals: stay within the tolerance of the share the current reservations meet.
    let target = now.summary.goal_share() - tolerance_points / 100.0;
    let mut region_plans = analytic(scenario, &now);
    let (mut best, mut best_k, mut latest) = (now, current, None);
    // Reserving nothing is a plan too: in a lightly loaded world it is the cheapest.
    if better(&on_demand, &best, target) {
        (best, best_k) = (on_demand, vec![0; regions.len()]);
    }
    for round in 1..=rounds.max(1) {
        let source = latest.as_ref().unwrap_or(&best);
        let trial: Vec<u32> = analytic(scenario, source)
            .iter()
            .map(|p| p.recommended)
            .collect();
        let result = simulate(scenario, &trial, seed, requests)?;
        outcomes.push(outcome(format!("newsvendor (round {round})"), &result));
        if better(&result, &best, target) {
            (best, best_k) = (result.clone(), trial);
        }
        latest = Some(result);
    }
    for scale in [0.9, 1.1] {
        let trial: Vec<u32> = best_k
            .iter()
            .map(|&k| (f64::from(k) * scale).round() as u32)
            .collect();
        let result = simulate(scenario, &trial, seed, requests)?;
        outcomes.push(outcome(format!("best × {scale}"), &result));
        if better(&result, &best, target) {
            (best, best_k) = (result, trial);
        }
    }
    for (r, (p, k)) in region_plans.iter_mut().zip(&best_k).enumerate() {
        if plans(&scenario.spec.catalog, r) {
            p.recommended = *k;
        }
    }
    outcomes.push(outcome("recommended".into(), &best));
    Ok(Plan {
        currency: scenario.catalog.currency().to_owned(),
        method: format!(
            "simulated {requests} requests, seed {seed}, Meridian's route decision, goal share \
             within {tolerance_points} points of today's"
        ),
        regions: region_plans,
        outcomes,
    })
}

/// Plans from a usage trace (analytic estimate only; see the module docs).
pub fn from_trace(scenario: &Scenario, trace: &UsageTrace) -> anyhow::Result<Plan> {
    let daily = trace.daily_gpu_seconds();
    let catalog = &scenario.catalog;
    if let Some(unknown) = daily.keys().find(|r| catalog.region_index(r).is_none()) {
        anyhow::bail!("the trace names region {unknown:?}, which is not in the scenario's catalog");
    }
    let demand = &scenario.spec.demand;
    let (mut none, mut current, mut planned) = (0.0, 0.0, 0.0);
    let mut regions = Vec::new();
    for (r, region) in catalog.regions().iter().enumerate() {
        let gpu_s = daily.get(region.id.as_str()).copied().unwrap_or(0.0);
        let offset = (region.location.lon / 15.0).round();
        let shape: Vec<f64> = (0..24)
            .map(|h| {
                let local = (f64::from(h) + 0.5 + offset).rem_euclid(24.0);
                let phase = 2.0 * std::f64::consts::PI * (local - demand.peak_hour) / 24.0;
                demand.trough + (1.0 - demand.trough) * (0.5 + 0.5 * phase.cos())
            })
            .collect();
        let sum: f64 = shape.iter().sum();
        let profile: Vec<f64> = shape.iter().map(|s| gpu_s / 3600.0 * s / sum).collect();
        let (rp, op) = prices(&scenario.spec.catalog, r);
        let k = if plans(&scenario.spec.catalog, r) {
            newsvendor(&profile, 1.0, rp, op)
        } else {
            region.reserved_slots()
        };
        none += analytic_cost(&profile, 1.0, 0, rp, op);
        current += analytic_cost(&profile, 1.0, region.reserved_slots(), rp, op);
        planned += analytic_cost(&profile, 1.0, k, rp, op);
        regions.push(RegionPlan {
            region: region.id.to_string(),
            current: region.reserved_slots(),
            recommended: k,
            mean_in_use: gpu_s / 86_400.0,
        });
    }
    let estimate = |label: &str, cost| Outcome {
        label: label.to_owned(),
        cost,
        goal_share: None,
    };
    Ok(Plan {
        currency: catalog.currency().to_owned(),
        method: format!(
            "analytic estimate from a usage trace of {} rows, cost per day",
            trace.rows.len()
        ),
        regions,
        outcomes: vec![
            estimate("all on-demand", none),
            estimate("current reservations", current),
            estimate("recommended", planned),
        ],
    })
}

impl fmt::Display for Plan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "reservation plan — {}", self.method)?;
        writeln!(
            f,
            "{:<16} {:>8} {:>12} {:>12}",
            "region", "in use", "reserved now", "recommended"
        )?;
        for r in &self.regions {
            writeln!(
                f,
                "{:<16} {:>8.1} {:>12} {:>12}",
                r.region, r.mean_in_use, r.current, r.recommended
            )?;
        }
        let total = |pick: fn(&RegionPlan) -> u32| self.regions.iter().map(pick).sum::<u32>();
        writeln!(
            f,
            "{:<16} {:>8} {:>12} {:>12}\n",
            "total",
            "",
            total(|r| r.current),
            total(|r| r.recommended)
        )?;
        writeln!(
            f,
            "{:<28} {:>14} {:>10}",
            "configuration",
            format!("cost {}", self.currency),
            "goal met"
        )?;
        for o in &self.outcomes {
            let goal = o
                .goal_share
                .map_or("—".to_owned(), |g| format!("{:.2}%", g * 100.0));
            writeln!(f, "{:<28} {:>14.0} {:>10}", o.label, o.cost, goal)?;
        }
        let find = |label: &str| {
            self.outcomes
                .iter()
                .find(|o| o.label.starts_with(label))
                .map(|o| o.cost)
        };
        if let (Some(od), Some(now), Some(rec)) = (
            find("all on-demand"),
            find("current"),
            self.outcomes.last().map(|o| o.cost),
        ) {
            let pct = |base: f64| {
                if base > 0.0 {
                    (base - rec) / base * 100.0
                } else {
                    0.0
                }
            };
            writeln!(
                f,
                "\nsaving vs all on-demand: {:.0} {} ({:.1}%)",
                od - rec,
                self.currency,
                pct(od)
            )?;
            writeln!(
                f,
                "saving vs current reservations: {:.0} {} ({:.1}%)",
                now - rec,
                self.currency,
                pct(now)
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_price_ends_the_rule_at_the_peak_or_at_zero() {
        let profile = [0.5, 2.0, 3.2, 1.0];
        // No on-demand price: every GPU up to the peak (4) is worth reserving.
        assert_eq!(newsvendor(&profile, 1.0, 2.0, f64::INFINITY), 4);
        // No reserved price: none is.
        assert_eq!(newsvendor(&profile, 1.0, f64::INFINITY, 4.0), 0);
        assert_eq!(newsvendor(&[], 1.0, 2.0, f64::INFINITY), 0);
        // Nothing on demand at an infinite price costs nothing.
        let cost = analytic_cost(&profile, 1.0, 4, 2.0, f64::INFINITY);
        assert_eq!(cost, 4.0 * 2.0 * 4.0);
    }

    #[test]
    fn newsvendor_reserves_what_is_used_often_enough() {
        // 10 GPUs all day, 20 for a quarter of it; reserving costs half of on demand.
        let mut profile = vec![10.0; 18];
        profile.extend([20.0; 6]);
        assert_eq!(newsvendor(&profile, 1.0, 2.0, 4.0), 10);
        // At a third of the price, GPUs used a quarter of the time are still not worth it,
        // but at a fifth they are.
        assert_eq!(newsvendor(&profile, 1.0, 4.0 / 3.0, 4.0), 10);
        assert_eq!(newsvendor(&profile, 1.0, 0.8, 4.0), 20);
        let best = newsvendor(&profile, 1.0, 2.0, 4.0);
        for k in [0, 5, 15, 20] {
            assert!(
                analytic_cost(&profile, 1.0, best, 2.0, 4.0)
                    <= analytic_cost(&profile, 1.0, k, 2.0, 4.0)
            );
        }
    }
}
