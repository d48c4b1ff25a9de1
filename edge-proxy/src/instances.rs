//! A region's instances as this edge routes to them (docs/design.md §3, "Instances"): each
//! agent that reports, at the endpoint it reports (or the catalog's endpoint for the region,
//! for an agent that reports none), with its own status; and the instances that are away
//! but may still hold jobs, whose calls answer `503` until they are back.
//!
//! Endpoints are resolved when a snapshot is built, off the request path, and kept across
//! snapshots: a heartbeat resolves nothing again.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use control_plane_client::wire::{RegionLive, Snapshot};
use policy::{Catalog, LiveStatus, RegionStatus};

use crate::state::{Upstream, parse_endpoint};

/// One of a region's agents that reports.
#[derive(Debug, Clone)]
pub struct Instance {
    /// Its id (empty for an agent that names none: its region's only one).
    pub id: String,
    /// The key of this edge's state for it (circuit, requests in flight): `<region>/<id>`,
    /// or the region id for an agent that names no instance.
    pub key: String,
    /// Its base URL.
    pub endpoint: String,
    /// Where it listens.
    pub upstream: Upstream,
    /// What it reported.
    pub status: RegionStatus,
}

/// The key of this edge's state for `instance` of `region`.
pub fn key(region: &str, instance: &str) -> String {
    if instance.is_empty() {
        region.to_owned()
    } else {
        format!("{region}/{instance}")
    }
}

/// Resolved endpoints, by the URL as reported.
pub type Resolved = Arc<HashMap<String, Option<Upstream>>>;

/// What a snapshot says of the regions' instances.
#[derive(Debug, Default)]
pub struct Instances {
    /// Per catalog region index: its reporting instances that can be reached, in the
    /// snapshot's order.
    pub by_region: Vec<Vec<Instance>>,
    /// Instances that do not report but may still hold jobs, by [`key`].
    pub away: HashSet<String>,
    /// Every endpoint resolved so far.
    pub resolved: Resolved,
}

impl Instances {
    /// The regions' live status and their instances from `snapshot`, received at
    /// `now_ms`. `catalog_upstreams` are the catalog's endpoints by region index;
    /// `previous` the endpoints resolved for an earlier snapshot.
    pub fn build(
        snapshot: &Snapshot,
        catalog: &Catalog,
        catalog_upstreams: &[Option<Upstream>],
        previous: Option<&Resolved>,
        now_ms: u64,
    ) -> (LiveStatus, Self) {
        let (live, reporting) = snapshot.live_with_instances(catalog);
        let resolved = resolve(snapshot, previous);
        let mut live_keys = HashSet::new();
        let by_region = reporting
            .iter()
            .enumerate()
            .map(|(index, list)| {
                list.iter()
                    .filter_map(|(report, status)| {
                        let instance =
                            reachable(report, status, catalog, index, catalog_upstreams, &resolved);
                        live_keys.insert(key(&report.region, &report.report.instance));
                        instance
                    })
                    .collect()
            })
            .collect();
        let away = snapshot
            .instances
            .iter()
            .filter(|record| record.may_hold_jobs(now_ms))
            .map(|record| key(&record.region, &record.instance))
            .filter(|key| !live_keys.contains(key))
            .collect();
        let instances = Self {
            by_region,
            away,
            resolved,
        };
        (live, instances)
    }
}

/// The instance of `report`, when it can be reached: at the endpoint it reports, or else
/// at its region's catalog endpoint.
fn reachable(
    report: &RegionLive,
    status: &RegionStatus,
    catalog: &Catalog,
    index: usize,
    catalog_upstreams: &[Option<Upstream>],
    resolved: &HashMap<String, Option<Upstream>>,
) -> Option<Instance> {
    let reported = report.report.endpoint.trim_end_matches('/');
    let (endpoint, upstream) = if reported.is_empty() {
        let region = catalog.regions().get(index)?;
        let upstream = catalog_upstreams.get(index)?.clone()?;
        (region.endpoint.clone(), upstream)
    } else {
        (reported.to_owned(), resolved.get(reported)?.clone()?)
    };
    Some(Instance {
        id: report.report.instance.clone(),
        key: key(&report.region, &report.report.instance),
        endpoint,
        upstream,
        status: status.clone(),
    })
}

/// Every endpoint the snapshot's instances report, resolved: those `previous` holds are
/// taken from it, the others resolved now (a warning for one that cannot be used).
fn resolve(snapshot: &Snapshot, previous: Option<&Resolved>) -> Resolved {
    let wanted: HashSet<&str> = snapshot
        .regions
        .iter()
        .map(|r| r.report.endpoint.trim_end_matches('/'))
        .filter(|e| !e.is_empty())
        .collect();
    if let Some(previous) = previous
        && wanted.iter().all(|e| previous.contains_key(*e))
        && wanted.len() == previous.len()
    {
        return Arc::clone(previous);
    }
    let map = wanted
        .into_iter()
        .map(|endpoint| {
            let known = previous.and_then(|p| p.get(endpoint).cloned());
            let upstream = known.unwrap_or_else(|| {
                let upstream = parse_endpoint(endpoint);
                if upstream.is_none() {
                    tracing::warn!(endpoint, "an instance's endpoint cannot be used");
                }
                upstream
            });
            (endpoint.to_owned(), upstream)
        })
        .collect();
    Arc::new(map)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use control_plane_client::wire::{AgentReport, InstanceRecord, RegionLive};

    use super::*;
    use crate::state::testing;

    fn live(instance: &str, endpoint: &str) -> RegionLive {
        RegionLive {
            region: "eu-west".into(),
            reported_at_ms: 1_000,
            report: AgentReport {
                healthy: true,
                instance: instance.into(),
                endpoint: endpoint.into(),
                free_reserved: 1,
                ..AgentReport::default()
            },
        }
    }

    fn record(instance: &str, last_seen_ms: u64) -> InstanceRecord {
        InstanceRecord {
            region: "eu-west".into(),
            instance: instance.into(),
            endpoint: String::new(),
            last_seen_ms,
            deregistered: false,
            result_retention_s: 60,
        }
    }

    #[test]
    fn each_instance_is_reached_where_it_says_or_at_the_catalog_endpoint() {
        let mut snapshot = testing::snapshot("");
        snapshot.regions = vec![
            live("gpu-1", "http://127.0.0.1:9201/"),
            live("gpu-2", ""),
            live("gpu-3", "ftp://nowhere"),
        ];
        let state = testing::state_of(&snapshot, 0);
        let instances = &state.instances.by_region[0];
        let ids: Vec<&str> = instances.iter().map(|i| i.id.as_str()).collect();
        assert_eq!(ids, ["gpu-1", "gpu-2"], "an unusable endpoint is left out");
        assert_eq!(instances[0].upstream.address.port(), 9201);
        assert_eq!(instances[0].endpoint, "http://127.0.0.1:9201");
        assert_eq!(instances[0].key, "eu-west/gpu-1");
        assert_eq!(instances[1].endpoint, state.catalog.regions()[0].endpoint);
        assert_eq!(
            state.live.region(0).unwrap().free_reserved,
            3,
            "the region sums all"
        );
    }

    #[test]
    fn instances_away_are_known_while_they_may_hold_jobs() {
        let mut snapshot = testing::snapshot("");
        snapshot.regions = vec![live("gpu-1", "http://127.0.0.1:9201")];
        snapshot.instances = vec![
            record("gpu-1", 100_000),
            record("gpu-2", 100_000),
            record("gpu-3", 10_000),
        ];
        let state = testing::state_of(&snapshot, 150);
        let away: Vec<&str> = state.instances.away.iter().map(String::as_str).collect();
        assert_eq!(
            away,
            ["eu-west/gpu-2"],
            "gpu-1 reports; gpu-3 is past its retention"
        );
    }

    #[test]
    fn endpoints_are_resolved_once() {
        let mut snapshot = testing::snapshot("");
        snapshot.regions = vec![live("gpu-1", "http://127.0.0.1:9201")];
        let one = testing::state_of(&snapshot, 0);
        let two = RoutingState::build(&snapshot, Some(&one), 0).unwrap();
        assert!(Arc::ptr_eq(
            &one.instances.resolved,
            &two.instances.resolved
        ));
        snapshot
            .regions
            .push(live("gpu-2", "http://127.0.0.1:9202"));
        let three = RoutingState::build(&snapshot, Some(&two), 0).unwrap();
        assert_eq!(three.instances.resolved.len(), 2);
    }

    use crate::state::RoutingState;
}
