//! Turning a snapshot's live region reports into the `policy` crate's [`LiveStatus`], the
//! form the route decision reads.

use policy::{Catalog, LiveStatus, ModelLoad, RegionStatus};

use crate::wire::{ModelReport, RegionLive, Snapshot};

impl Snapshot {
    /// The live status of `catalog`'s regions (built from this snapshot's catalog): each
    /// reporting region as its agent said, with its report's time as the last heartbeat;
    /// regions without a report stay never-heard-from. Reports for regions or models the
    /// catalog does not hold are skipped.
    pub fn live_status(&self, catalog: &Catalog) -> LiveStatus {
        let mut live = LiveStatus::new(catalog);
        for report in &self.regions {
            let Some(index) = catalog.region_index(&report.region) else {
                continue;
            };
            if let Some(status) = live.region_mut(index) {
                *status = region_status(report, catalog);
            }
        }
        live
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
}
