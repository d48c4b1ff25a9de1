//! Turning a snapshot's live region reports into the `policy` crate's [`LiveStatus`], the
//! form the route decision reads.

use policy::{Catalog, LiveStatus, ModelLoad, RegionStatus};

use crate::wire::{ModelReport, RegionLive, Snapshot};

impl Snapshot {
    /// The live status of `catalog`'s regions (built from this snapshot's catalog): each
    /// reporting region as the sum of its agents' reports ([`region_of`]); regions without
    /// a report stay never-heard-from. Reports for regions or models the catalog does not
    /// hold are skipped.
    pub fn live_status(&self, catalog: &Catalog) -> LiveStatus {
        self.live_with_instances(catalog).0
    }

    /// [`live_status`](Self::live_status), and per catalog region index its instances'
    /// reports with each one's own status, in the snapshot's order.
    pub fn live_with_instances<'a>(
        &'a self,
        catalog: &Catalog,
    ) -> (LiveStatus, Vec<Vec<(&'a RegionLive, RegionStatus)>>) {
        let mut instances: Vec<Vec<(&RegionLive, RegionStatus)>> =
            vec![Vec::new(); catalog.regions().len()];
        for report in &self.regions {
            if let Some(list) = catalog
                .region_index(&report.region)
                .and_then(|index| instances.get_mut(index))
            {
                list.push((report, region_status(report, catalog)));
            }
        }
        let mut live = LiveStatus::new(catalog);
        let mut statuses = Vec::new();
        for (index, list) in instances.iter().enumerate() {
            statuses.clear();
            statuses.extend(list.iter().map(|(_, status)| status.clone()));
            if let (Some(region), Some(status)) = (region_of(&statuses), live.region_mut(index)) {
                *status = region;
            }
        }
        (live, instances)
    }
}

/// A region as the sum of its agents' statuses (`None` for none): the agents that serve
/// (healthy, not draining) add up — free and startable slots, queues and their room; a
/// model's wait, service time and cold start are the best any of them offers (the edge
/// sends the job there), and it is loaded when one has it loaded. With none serving, the
/// region is its newest report as it is (draining or unhealthy). The last heartbeat is the
/// newest of all.
pub fn region_of(instances: &[RegionStatus]) -> Option<RegionStatus> {
    let newest = instances.iter().max_by_key(|s| s.last_heartbeat_ms)?;
    let mut serving = instances.iter().filter(|s| s.healthy && !s.draining);
    let Some(first) = serving.next() else {
        return Some(newest.clone());
    };
    let mut region = first.clone();
    for other in serving {
        add(&mut region, other);
    }
    region.last_heartbeat_ms = newest.last_heartbeat_ms;
    Some(region)
}

/// Adds serving agent `other`'s capacity to `region`'s.
fn add(region: &mut RegionStatus, other: &RegionStatus) {
    region.free_reserved += other.free_reserved;
    region.free_on_demand += other.free_on_demand;
    region.on_demand_startable += other.on_demand_startable;
    region.on_demand_start_ms = best(region.on_demand_start_ms, other.on_demand_start_ms);
    for (index, load) in other.models.iter().enumerate() {
        let Some(load) = load else { continue };
        let merged = match region.model_load(index) {
            None => load.clone(),
            Some(mine) => ModelLoad {
                queue_depth: mine.queue_depth + load.queue_depth,
                queue_room: mine.queue_room + load.queue_room,
                expected_wait_ms: mine.expected_wait_ms.min(load.expected_wait_ms),
                service_ms_per_unit: best(mine.service_ms_per_unit, load.service_ms_per_unit),
                loaded: mine.loaded || load.loaded,
                cold_start_ms: mine.cold_start_ms.min(load.cold_start_ms),
            },
        };
        region.set_model_load(index, merged);
    }
}

/// The smaller of two optional times.
fn best(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

fn region_status(live: &RegionLive, catalog: &Catalog) -> RegionStatus {
    let report = &live.report;
    let mut status = RegionStatus {
        last_heartbeat_ms: Some(live.reported_at_ms),
        healthy: report.healthy,
        draining: report.draining,
        free_reserved: report.free_reserved,
        free_on_demand: report.free_on_demand,
        on_demand_startable: report.on_demand_startable,
        on_demand_start_ms: report.on_demand_start_ms,
        ..RegionStatus::default()
    };
    for (model, load) in &report.models {
        if let Some(index) = catalog.model_index(model) {
            status.set_model_load(index, model_load(load));
        }
    }
    status
}

fn model_load(report: &ModelReport) -> ModelLoad {
    ModelLoad {
        queue_depth: report.queue_depth,
        queue_room: report.queue_room,
        expected_wait_ms: report.expected_wait_ms,
        service_ms_per_unit: report.service_ms_per_unit,
        loaded: report.loaded,
        cold_start_ms: report.cold_start_ms,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::collections::BTreeMap;

    use policy::CatalogSpec;

    use super::*;
    use crate::wire::AgentReport;

    #[test]
    fn reports_land_on_their_region_and_model() {
        let spec = CatalogSpec::from_toml(
            r#"
            [[jurisdictions]]
            id = "eu"
            [[regions]]
            id = "eu-west"
            jurisdiction = "eu"
            location = { lat = 53.35, lon = -6.26 }
            endpoint = "http://127.0.0.1:9102"
            pools = [{ id = "h100", gpu = "H100", reserved = 2, reserved_price_per_hour = 2.2 }]
            [[regions]]
            id = "eu-north"
            jurisdiction = "eu"
            location = { lat = 59.33, lon = 18.07 }
            endpoint = "http://127.0.0.1:9103"
            pools = [{ id = "h100", gpu = "H100", reserved = 2, reserved_price_per_hour = 2.2 }]
            [[models]]
            id = "meridian/esrgan-x4"
            kind = "image-to-image"
            unit = "megapixel"
            price_per_unit = 0.002
            gpu_seconds_per_unit = 0.4
            "#,
        )
        .unwrap();
        let catalog = spec.validate().unwrap();
        let load = ModelReport {
            queue_depth: 4,
            queue_room: 6,
            expected_wait_ms: 250.0,
            service_ms_per_unit: None,
            loaded: false,
            cold_start_ms: 900.0,
        };
        let report = AgentReport {
            healthy: true,
            free_reserved: 1,
            models: BTreeMap::from([
                ("meridian/esrgan-x4".to_owned(), load),
                (
                    "someone/unknown".to_owned(),
                    ModelReport {
                        queue_room: 1,
                        ..load_default()
                    },
                ),
            ]),
            ..AgentReport::default()
        };
        let snapshot = Snapshot {
            schema: contract::schema::SNAPSHOT,
            revision: 9,
            catalog: spec,
            keys: Vec::new(),
            regions: vec![
                RegionLive {
                    region: "eu-north".into(),
                    reported_at_ms: 1234,
                    report,
                },
                RegionLive {
                    region: "gone".into(),
                    reported_at_ms: 1,
                    report: AgentReport::default(),
                },
            ],
            spend: Vec::new(),
            instances: Vec::new(),
        };
        let live = snapshot.live_status(&catalog);
        assert_eq!(live.region(0).unwrap(), &RegionStatus::default());
        let north = live.region(1).unwrap();
        assert_eq!(north.last_heartbeat_ms, Some(1234));
        assert!(north.healthy);
        assert_eq!(north.free_reserved, 1);
        let model = north.model_load(0).unwrap();
        assert_eq!((model.queue_depth, model.loaded), (4, false));
        assert_eq!(north.models.len(), 1);
    }

    fn load_default() -> ModelReport {
        ModelReport {
            queue_depth: 0,
            queue_room: 0,
            expected_wait_ms: 0.0,
            service_ms_per_unit: None,
            loaded: true,
            cold_start_ms: 0.0,
        }
    }

    fn instance(heartbeat: u64, free: u32, wait_ms: f64) -> RegionStatus {
        let mut status = RegionStatus {
            last_heartbeat_ms: Some(heartbeat),
            healthy: true,
            free_reserved: free,
            on_demand_startable: 1,
            ..RegionStatus::default()
        };
        status.set_model_load(
            0,
            ModelLoad {
                queue_depth: 2,
                queue_room: 8,
                expected_wait_ms: wait_ms,
                service_ms_per_unit: Some(wait_ms / 10.0),
                loaded: wait_ms < 100.0,
                cold_start_ms: 500.0,
            },
        );
        status
    }

    #[test]
    fn a_region_is_the_sum_of_the_agents_that_serve() {
        let (a, b) = (instance(10, 1, 300.0), instance(30, 2, 50.0));
        let mut draining = instance(40, 5, 1.0);
        draining.draining = true;
        let region = region_of(&[a.clone(), b, draining.clone()]).unwrap();
        assert_eq!(region.last_heartbeat_ms, Some(40));
        assert!(region.healthy && !region.draining);
        assert_eq!((region.free_reserved, region.on_demand_startable), (3, 2));
        let load = region.model_load(0).unwrap();
        assert_eq!((load.queue_depth, load.queue_room), (4, 16));
        assert_eq!(load.expected_wait_ms, 50.0);
        assert_eq!(load.service_ms_per_unit, Some(5.0));
        assert!(load.loaded);
        // One agent alone is itself; with none serving the region is its newest report.
        assert_eq!(region_of(std::slice::from_ref(&a)), Some(a.clone()));
        assert_eq!(region_of(&[draining.clone()]), Some(draining.clone()));
        let mut sick = a;
        sick.healthy = false;
        assert_eq!(region_of(&[sick, draining.clone()]), Some(draining));
        assert_eq!(region_of(&[]), None);
    }
}
