//! Whether a region's instances add up to its pools.
//!
//! Each instance reports the share of its region's GPU pools it serves
//! (`AgentReport::pools`). For each region, the shares of its live instances (those holding
//! a lease: serving, draining or unhealthy, since an unhealthy instance still holds its
//! GPUs) are added up per pool and compared with the catalog's effective pools — reserved
//! GPUs with the active reservations applied, as agents receive them, and `on_demand_max`.
//! A pool that only one side names counts as 0 on the other.
//!
//! When any live instance reports no pools (an agent older than heartbeat 1.4, or one that
//! serves the whole region) or none is live, the check is *not reported*, never a mismatch.
//!
//! [`run`] keeps the result current: after each change of the store (at most once per
//! [`CHECK_EVERY`]) it sets the gauge `meridian_region_pools_match{region}` (1: the
//! instances add up, 0: they do not; absent: not reported) and logs one line when a
//! region's result changes — a warning with the differing pools when they stop adding up.
//! `GET /admin/v1/regions/{id}/instances` shows the same check with each pool's numbers.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use control_plane_client::wire::RegionLive;
use policy::RegionSpec;
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::changes::ChangeFeed;
use crate::metrics::Metrics;
use crate::registry::{StoredState, read_state};
use crate::store::AnyStore;

/// Least time between two checks, however often the store changes.
pub const CHECK_EVERY: Duration = Duration::from_secs(1);

/// Slots of one pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct Slots {
    /// Reserved GPUs.
    pub reserved: u64,
    /// On-demand GPUs.
    pub on_demand: u64,
}

/// One pool of a region: the catalog's slots beside the instances' sum.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PoolComparison {
    /// Pool id.
    pub pool: String,
    /// The catalog's effective slots (0 for a pool the catalog does not have).
    pub catalog: Slots,
    /// The sum of the live instances' reported shares.
    pub instances: Slots,
    /// Whether they are equal; `None` when the region's check is not reported.
    pub matches: Option<bool>,
}

/// A region's pool check.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PoolCheck {
    /// Every pool the catalog or an instance names, by id.
    pub pools: Vec<PoolComparison>,
    /// Whether every pool matches; `None` when not reported.
    pub pools_match: Option<bool>,
    /// The live instances that report no pools (the region's only agent: `""`).
    pub unreported: Vec<String>,
}

fn count(value: i64) -> u64 {
    u64::try_from(value).unwrap_or(0)
}

/// Compares `region`'s effective pools with the shares its live instances report.
pub fn check(region: &RegionSpec, live: &[&RegionLive]) -> PoolCheck {
    let mut sums: BTreeMap<&str, (Slots, Slots)> = BTreeMap::new();
    for pool in &region.pools {
        sums.entry(&pool.id).or_default().0 = Slots {
            reserved: count(pool.reserved),
            on_demand: count(pool.on_demand_max),
        };
    }
    let mut unreported = Vec::new();
    for status in live {
        if status.report.pools.is_empty() {
            unreported.push(status.report.instance.clone());
        }
        for (pool, share) in &status.report.pools {
            let sum = &mut sums.entry(pool).or_default().1;
            sum.reserved += u64::from(share.reserved);
            sum.on_demand += u64::from(share.on_demand);
        }
    }
    let reported = !live.is_empty() && unreported.is_empty();
    let pools: Vec<PoolComparison> = sums
        .into_iter()
        .map(|(pool, (catalog, instances))| PoolComparison {
            pool: pool.to_owned(),
            catalog,
            instances,
            matches: reported.then_some(catalog == instances),
        })
        .collect();
    let pools_match = reported.then(|| pools.iter().all(|p| p.matches == Some(true)));
    PoolCheck {
        pools,
        pools_match,
        unreported,
    }
}

/// Every catalog region's check, from everything read at one revision.
pub fn check_all(stored: &StoredState) -> BTreeMap<String, PoolCheck> {
    let effective = stored.effective_catalog();
    effective
        .regions
        .iter()
        .map(|region| {
            let live: Vec<&RegionLive> = stored
                .live
                .iter()
                .filter(|l| l.region == region.id)
                .collect();
            (region.id.clone(), check(region, &live))
        })
        .collect()
}

/// The pools of `check` that do not match, as `pool: catalog R reserved + O on demand,
/// instances …`.
fn differences(check: &PoolCheck) -> String {
    check
        .pools
        .iter()
        .filter(|p| p.matches == Some(false))
        .map(|p| {
            format!(
                "{}: catalog {} reserved + {} on demand, instances {} + {}",
                p.pool,
                p.catalog.reserved,
                p.catalog.on_demand,
                p.instances.reserved,
                p.instances.on_demand
            )
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// The last result of every region, published as a gauge and logged when it changes.
#[derive(Debug)]
pub struct PoolWatch {
    metrics: Metrics,
    last: BTreeMap<String, PoolCheck>,
}

impl PoolWatch {
    /// Nothing seen yet.
    pub fn new(metrics: Metrics) -> Self {
        Self {
            metrics,
            last: BTreeMap::new(),
        }
    }

    /// Takes the latest checks; returns the regions whose result changed (and was logged).
    pub fn observe(&mut self, checks: BTreeMap<String, PoolCheck>) -> Vec<String> {
        let gauge = &self.metrics.region_pools_match;
        let gone: BTreeSet<&String> = self
            .last
            .keys()
            .filter(|r| !checks.contains_key(*r))
            .collect();
        for region in gone {
            let _ = gauge.remove_label_values(&[region]);
        }
        let mut changed = Vec::new();
        for (region, check) in &checks {
            match check.pools_match {
                Some(matches) => gauge.with_label_values(&[region]).set(i64::from(matches)),
                None => {
                    let _ = gauge.remove_label_values(&[region]);
                }
            }
            if self.last.get(region) != Some(check) {
                log_change(region, self.last.get(region), check);
                changed.push(region.clone());
            }
        }
        self.last = checks;
        changed
    }
}

fn log_change(region: &str, before: Option<&PoolCheck>, now: &PoolCheck) {
    let was = before.and_then(|b| b.pools_match);
    match now.pools_match {
        Some(false) => tracing::warn!(
            region,
            differences = differences(now),
            "the region's instances do not add up to its pools in the catalog"
        ),
        Some(true) if was == Some(false) => {
            tracing::info!(region, "the region's instances add up to its pools again");
        }
        Some(true) => tracing::debug!(region, "the region's instances add up to its pools"),
        None => tracing::debug!(
            region,
            unreported = ?now.unreported,
            "the region's pool check is not reported"
        ),
    }
}

/// Checks every region after each change of the store, at most once per [`CHECK_EVERY`],
/// until `shutdown`.
pub async fn run(
    store: AnyStore,
    changes: ChangeFeed,
    metrics: Metrics,
    shutdown: CancellationToken,
) {
    let mut watch = PoolWatch::new(metrics);
    let mut latest = changes.subscribe();
    loop {
        latest.mark_unchanged();
        match read_state(&store).await {
            Ok(stored) => {
                watch.observe(check_all(&stored));
                tokio::select! {
                    changed = latest.changed() => if changed.is_err() { return },
                    () = shutdown.cancelled() => return,
                }
            }
            // Tried again after the pause, changed or not.
            Err(e) => tracing::warn!(error = %e, "cannot check the regions' pools"),
        }
        tokio::select! {
            () = tokio::time::sleep(CHECK_EVERY) => {}
            () = shutdown.cancelled() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use control_plane_client::wire::{AgentReport, PoolShare};
    use serde_json::json;

    use super::*;

    fn region() -> RegionSpec {
        serde_json::from_value(json!({
            "id": "eu-west", "jurisdiction": "eu", "location": {"lat": 53.35, "lon": -6.26},
            "pools": [
                {"id": "h100", "gpu": "H100", "reserved": 2, "reserved_price_per_hour": 2.0,
                 "on_demand_max": 3, "on_demand_price_per_hour": 4.0},
                {"id": "l4", "gpu": "L4", "on_demand_max": 1, "on_demand_price_per_hour": 1.0}
            ]
        }))
        .unwrap()
    }

    fn instance(name: &str, pools: &[(&str, u32, u32)]) -> RegionLive {
        RegionLive {
            region: "eu-west".into(),
            reported_at_ms: 1,
            report: AgentReport {
                instance: name.into(),
                pools: pools
                    .iter()
                    .map(|(pool, reserved, on_demand)| {
                        let share = PoolShare {
                            reserved: *reserved,
                            on_demand: *on_demand,
                        };
                        ((*pool).to_owned(), share)
                    })
                    .collect(),
                ..AgentReport::default()
            },
        }
    }

    fn run(live: &[RegionLive]) -> PoolCheck {
        check(&region(), &live.iter().collect::<Vec<_>>())
    }

    #[test]
    fn shares_that_add_up_match() {
        let result = run(&[
            instance("gpu-1", &[("h100", 1, 3)]),
            instance("gpu-2", &[("h100", 1, 0), ("l4", 0, 1)]),
        ]);
        assert_eq!(result.pools_match, Some(true));
        assert!(result.pools.iter().all(|p| p.matches == Some(true)));
        assert_eq!(
            result.pools[0].instances,
            Slots {
                reserved: 2,
                on_demand: 3
            }
        );
    }

    #[test]
    fn shares_that_do_not_add_up_are_a_mismatch_naming_the_pool() {
        let result = run(&[
            instance("gpu-1", &[("h100", 2, 3), ("a100", 1, 0)]),
            instance("gpu-2", &[("h100", 1, 0), ("l4", 0, 1)]),
        ]);
        assert_eq!(result.pools_match, Some(false));
        let matches: Vec<(&str, Option<bool>)> = result
            .pools
            .iter()
            .map(|p| (p.pool.as_str(), p.matches))
            .collect();
        assert_eq!(
            matches,
            [
                ("a100", Some(false)),
                ("h100", Some(false)),
                ("l4", Some(true))
            ]
        );
        assert_eq!(
            differences(&result),
            "a100: catalog 0 reserved + 0 on demand, instances 1 + 0; \
             h100: catalog 2 reserved + 3 on demand, instances 3 + 3"
        );
    }

    #[test]
    fn an_instance_without_pools_or_no_instance_is_not_reported() {
        let result = run(&[instance("gpu-1", &[("h100", 9, 9)]), instance("old", &[])]);
        assert_eq!(result.pools_match, None);
        assert_eq!(result.unreported, ["old"]);
        assert!(result.pools.iter().all(|p| p.matches.is_none()));
        assert_eq!(run(&[]).pools_match, None);
    }

    fn gauge_lines(metrics: &Metrics) -> Vec<String> {
        String::from_utf8(metrics.render())
            .unwrap()
            .lines()
            .filter(|l| l.starts_with("meridian_region_pools_match{"))
            .map(str::to_owned)
            .collect()
    }

    #[test]
    fn the_watch_sets_the_gauge_and_reports_each_change_once() {
        let metrics = Metrics::new();
        let mut watch = PoolWatch::new(metrics.clone());
        let checks = |live: &[RegionLive]| BTreeMap::from([("eu-west".to_owned(), run(live))]);
        let good = [instance("gpu-1", &[("h100", 2, 3), ("l4", 0, 1)])];
        let bad = [instance("gpu-1", &[("h100", 1, 3), ("l4", 0, 1)])];
        assert_eq!(watch.observe(checks(&good)), ["eu-west"]);
        assert_eq!(
            gauge_lines(&metrics),
            [r#"meridian_region_pools_match{region="eu-west"} 1"#]
        );
        assert!(watch.observe(checks(&good)).is_empty(), "no change, no log");
        assert_eq!(watch.observe(checks(&bad)), ["eu-west"]);
        assert!(watch.observe(checks(&bad)).is_empty());
        assert_eq!(
            gauge_lines(&metrics),
            [r#"meridian_region_pools_match{region="eu-west"} 0"#]
        );
        assert_eq!(watch.observe(checks(&[instance("old", &[])])), ["eu-west"]);
        assert!(gauge_lines(&metrics).is_empty(), "not reported: no series");
        watch.observe(checks(&good));
        watch.observe(BTreeMap::new());
        assert!(
            gauge_lines(&metrics).is_empty(),
            "a region gone from the catalog"
        );
    }
}
