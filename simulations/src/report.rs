//! What a run shows: the comparison table, CSV files and SVG charts.
//!
//! Files written to the output folder:
//!
//! | file | contents |
//! | --- | --- |
//! | `summary.csv` | one row per strategy: request fates, costs, utilisation, latency quantiles |
//! | `tenants.csv` | per strategy and tenant: requests arrived, completed and within the latency goal |
//! | `regions.csv` | per strategy and region: reserved utilisation, on-demand GPU-hours, the share of them spent on jobs, on-demand spend |
//! | `timeline.csv` | per strategy and time bucket: completions, on-demand spend, reserved utilisation, on-demand GPUs paid for |
//! | `latency.csv` | per strategy: the latency histogram (bucket upper edge in ms, count, cumulative share) |
//! | `latency.svg` | latency distribution (cumulative share by latency, log scale) |
//! | `cost_over_day.svg` | on-demand spend per hour over the day |
//! | `utilisation_over_day.svg` | reserved utilisation over the day |

use std::fmt::Write as _;
use std::path::Path;

use anyhow::Context as _;

use policy::Catalog;

use crate::engine::RunResult;
use crate::scenario::Scenario;
use crate::svg::{Chart, Series};

/// The comparison table, one row per strategy.
pub fn table(currency: &str, results: &[RunResult]) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{:<13} {:>10} {:>12} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8} {:>7} {:>9}",
        "strategy",
        format!("{currency}/1k out"),
        format!("on-demand {currency}"),
        "res.util",
        "p50 ms",
        "p95 ms",
        "p99 ms",
        "goal met",
        "refused",
        "dropped",
        "failed",
        "residency"
    );
    for r in results {
        let m = &r.summary;
        let o = &m.outcomes;
        let _ = writeln!(
            s,
            "{:<13} {:>10.3} {:>12.0} {:>7.1}% {:>8.0} {:>8.0} {:>8.0} {:>7.2}% {:>8} {:>8} {:>7} {:>9}",
            m.strategy,
            m.cost_per_1000(),
            m.on_demand_cost,
            m.reserved_utilisation * 100.0,
            m.p50_ms,
            m.p95_ms,
            m.p99_ms,
            m.goal_share() * 100.0,
            o.refused,
            o.dropped,
            o.failed,
            o.residency_violations
        );
    }
    s
}

/// `summary.csv`.
pub fn summary_csv(results: &[RunResult]) -> String {
    let mut s = String::from(
        "strategy,arrived,completed,refused,dropped,failed,met_goal,goal_share,residency_violations,failovers,reserved_cost,on_demand_cost,cost_per_1000,reserved_utilisation,p50_ms,p95_ms,p99_ms\n",
    );
    for r in results {
        let m = &r.summary;
        let o = &m.outcomes;
        let _ = writeln!(
            s,
            "{},{},{},{},{},{},{},{:.6},{},{},{:.4},{:.4},{:.6},{:.6},{:.1},{:.1},{:.1}",
            m.strategy,
            o.arrived,
            o.completed,
            o.refused,
            o.dropped,
            o.failed,
            o.met_goal,
            m.goal_share(),
            o.residency_violations,
            o.failovers,
            m.reserved_cost,
            m.on_demand_cost,
            m.cost_per_1000(),
            m.reserved_utilisation,
            m.p50_ms,
            m.p95_ms,
            m.p99_ms
        );
    }
    s
}

/// Per bucket: (start hour, completed, on-demand spend, reserved utilisation, on-demand GPUs).
fn timeline(r: &RunResult, reserved_slots: f64) -> Vec<(f64, u64, f64, f64, f64)> {
    let l = &r.ledger;
    let bucket_us = l.bucket_us() as f64;
    let busy = l.per_bucket(&l.reserved_busy_us);
    let cost = l.per_bucket(&l.on_demand_cost);
    let billed = l.per_bucket(&l.on_demand_billed_us);
    (0..l.buckets)
        .map(|b| {
            let util = if reserved_slots > 0.0 {
                busy[b] / (reserved_slots * bucket_us)
            } else {
                0.0
            };
            (
                b as f64 * bucket_us / 3.6e9,
                l.completed[b],
                cost[b],
                util,
                billed[b] / bucket_us,
            )
        })
        .collect()
}

/// `regions.csv`: per strategy and region, reserved utilisation and on-demand use.
pub fn regions_csv(catalog: &Catalog, duration_us: u64, results: &[RunResult]) -> String {
    let mut s = String::from(
        "strategy,region,reserved_gpus,reserved_utilisation,on_demand_gpu_hours,on_demand_busy_share,on_demand_cost\n",
    );
    for r in results {
        let l = &r.ledger;
        for (i, region) in catalog.regions().iter().enumerate() {
            let capacity = f64::from(region.reserved_slots()) * duration_us as f64;
            let busy = l.region_total(&l.reserved_busy_us, i);
            let billed = l.region_total(&l.on_demand_billed_us, i);
            let od_busy = l.region_total(&l.on_demand_busy_us, i);
            let _ = writeln!(
                s,
                "{},{},{},{:.6},{:.3},{:.6},{:.4}",
                r.summary.strategy,
                region.id,
                region.reserved_slots(),
                if capacity > 0.0 { busy / capacity } else { 0.0 },
                billed / 3.6e9,
                if billed > 0.0 { od_busy / billed } else { 0.0 },
                l.region_total(&l.on_demand_cost, i)
            );
        }
    }
    s
}

/// `tenants.csv`: per strategy and tenant, requests arrived, completed and within the goal.
pub fn tenants_csv(catalog: &Catalog, results: &[RunResult]) -> String {
    let mut s = String::from("strategy,tenant,arrived,completed,met_goal,goal_share\n");
    for r in results {
        for (t, &(arrived, done, met)) in r.summary.outcomes.tenants.iter().enumerate() {
            let share = if arrived > 0 {
                met as f64 / arrived as f64
            } else {
                1.0
            };
            let id = &catalog.tenants()[t].id;
            let _ = writeln!(
                s,
                "{},{id},{arrived},{done},{met},{share:.6}",
                r.summary.strategy
            );
        }
    }
    s
}

/// Writes the CSV files and charts to `dir`.
pub fn write_all(dir: &Path, scenario: &Scenario, results: &[RunResult]) -> anyhow::Result<()> {
    let catalog = &scenario.catalog;
    let reserved_slots: u32 = catalog.regions().iter().map(|r| r.reserved_slots()).sum();
    std::fs::create_dir_all(dir)
        .with_context(|| format!("create output folder {}", dir.display()))?;
    let slots = f64::from(reserved_slots);
    let mut timeline_csv = String::from(
        "strategy,bucket_start_hour,completed,on_demand_cost,reserved_utilisation,on_demand_gpus\n",
    );
    let mut latency_csv = String::from("strategy,upper_ms,count,cumulative_share\n");
    let (mut cost_series, mut util_series, mut latency_series): (
        Vec<Series>,
        Vec<Series>,
        Vec<Series>,
    ) = Default::default();
    for r in results {
        let name = &r.summary.strategy;
        let rows = timeline(r, slots);
        let per_hour = 3.6e9 / r.ledger.bucket_us() as f64;
        for &(h, done, cost, util, gpus) in &rows {
            let _ = writeln!(
                timeline_csv,
                "{name},{h:.3},{done},{cost:.4},{util:.6},{gpus:.3}"
            );
        }
        cost_series.push((
            name.clone(),
            rows.iter().map(|t| (t.0, t.2 * per_hour)).collect(),
        ));
        util_series.push((
            name.clone(),
            rows.iter().map(|t| (t.0, t.3 * 100.0)).collect(),
        ));
        let total = r.latency.total().max(1) as f64;
        let mut seen = 0;
        let mut cdf = Vec::new();
        for (ms, count) in r.latency.buckets() {
            seen += count;
            let share = seen as f64 / total;
            let _ = writeln!(latency_csv, "{name},{ms:.3},{count},{share:.6}");
            cdf.push((ms, share * 100.0));
        }
        latency_series.push((name.clone(), cdf));
    }
    let charts = [
        (
            "latency.svg",
            Chart {
                title: "Latency distribution",
                x_label: "latency, ms (log scale)",
                y_label: "% of completed requests at or below",
                log_x: true,
            },
            latency_series,
        ),
        (
            "cost_over_day.svg",
            Chart {
                title: "On-demand spend over the day",
                x_label: "hour (UTC)",
                y_label: "on-demand spend per hour",
                log_x: false,
            },
            cost_series,
        ),
        (
            "utilisation_over_day.svg",
            Chart {
                title: "Reserved GPU utilisation over the day",
                x_label: "hour (UTC)",
                y_label: "reserved utilisation, %",
                log_x: false,
            },
            util_series,
        ),
    ];
    let files = [
        ("summary.csv", summary_csv(results)),
        (
            "regions.csv",
            regions_csv(catalog, scenario.duration_us(), results),
        ),
        ("tenants.csv", tenants_csv(catalog, results)),
        ("timeline.csv", timeline_csv),
        ("latency.csv", latency_csv),
    ];
    for (file, text) in files
        .into_iter()
        .chain(charts.iter().map(|(f, c, s)| (*f, c.render(s))))
    {
        let path = dir.join(file);
        std::fs::write(&path, text).with_context(|| format!("write {}", path.display()))?;
    }
    Ok(())
}
