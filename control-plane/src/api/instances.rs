//! The admin API over a region's instances.
//!
//! | call | does |
//! | --- | --- |
//! | `GET /admin/v1/regions/{id}/instances` | the region's instances, live or remembered, and whether their pool shares add up to the catalog's pools |
//! | `POST /admin/v1/regions/{id}/instances/{instance}/drain` | orders the instance to drain (202): its next heartbeat answer says `drain: true` |
//!
//! Both answer 404 for a region the catalog does not have; the drain order 404 also for an
//! instance that never registered (or whose record expired). The order is persisted in the
//! instance's record ([`crate::instances`]) and cleared when the instance deregisters or
//! registers again, so a restarted instance serves again.

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use control_plane_client::wire::{PoolShare, RegionLive};
use policy::RegionSpec;
use serde::Serialize;

use super::{ApiError, AppState, Routes};
use crate::instances::pools::{self, PoolComparison};
use crate::instances::{self, InstanceEntry};
use crate::records::CatalogRecord;
use crate::registry::{StoredState, not_found, read_state};
use crate::usage::now_ms;

/// The admin routes over instances (without authentication; the router adds it).
pub fn routes() -> Routes {
    Routes::new()
        .get("/admin/v1/regions/{id}/instances", list)
        .post("/admin/v1/regions/{id}/instances/{instance}/drain", drain)
}

/// One instance of a region as the admin API shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct InstanceView {
    /// Instance id (empty: the region's only agent, which reports none).
    pub instance: String,
    /// Where edges reach it (empty: the catalog's endpoint for the region).
    pub endpoint: String,
    /// Whether it holds a lease (reports now).
    pub live: bool,
    /// Whether it reports itself healthy (false when not live).
    pub healthy: bool,
    /// Whether it reports it is draining (false when not live).
    pub draining: bool,
    /// When it was last heard from, Unix ms.
    pub last_seen_ms: u64,
    /// Whether it deregistered.
    pub deregistered: bool,
    /// How long it keeps finished jobs, in seconds (0: not reported).
    pub result_retention_s: u64,
    /// Its share of the region's pools as it reports it; `None` when not live or not
    /// reported.
    pub pools: Option<BTreeMap<String, PoolShare>>,
    /// Whether an operator ordered it to drain (until it deregisters or registers again).
    pub drain_requested: bool,
}

/// Answer of `GET /admin/v1/regions/{id}/instances`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RegionInstances {
    /// Region id.
    pub region: String,
    /// The store revision everything was read at.
    pub revision: i64,
    /// The instances, by id.
    pub instances: Vec<InstanceView>,
    /// Every pool: the catalog's effective slots beside the live instances' sum.
    pub pools: Vec<PoolComparison>,
    /// Whether every pool matches; `None` (null) when not reported.
    pub pools_match: Option<bool>,
    /// The live instances that report no pools, which make the check not reported.
    pub pools_unreported: Vec<String>,
}

/// A live instance's view, with what its record adds.
fn live_view(status: &RegionLive, entry: Option<&InstanceEntry>) -> InstanceView {
    let report = &status.report;
    InstanceView {
        instance: report.instance.clone(),
        endpoint: report.endpoint.clone(),
        live: true,
        healthy: report.healthy,
        draining: report.draining,
        last_seen_ms: entry.map_or(status.reported_at_ms, |e| e.record.last_seen_ms),
        deregistered: false,
        result_retention_s: report.result_retention_s,
        pools: (!report.pools.is_empty()).then(|| report.pools.clone()),
        drain_requested: entry.is_some_and(|e| e.drain_requested),
    }
}

/// A remembered instance's view, once it no longer reports.
fn away_view(entry: &InstanceEntry) -> InstanceView {
    let record = &entry.record;
    InstanceView {
        instance: record.instance.clone(),
        endpoint: record.endpoint.clone(),
        live: false,
        healthy: false,
        draining: false,
        last_seen_ms: record.last_seen_ms,
        deregistered: record.deregistered,
        result_retention_s: record.result_retention_s,
        pools: None,
        drain_requested: entry.drain_requested,
    }
}

/// Every instance of `region`, live ones first as they report, then remembered ones.
fn views(stored: &StoredState, region: &str, now_ms: u64) -> Vec<InstanceView> {
    let entries: Vec<InstanceEntry> = instances::current(stored, now_ms)
        .into_iter()
        .filter(|e| e.record.region == region)
        .collect();
    let entry_of = |instance: &str| entries.iter().find(|e| e.record.instance == instance);
    let mut views: Vec<InstanceView> = stored
        .live
        .iter()
        .filter(|l| l.region == region)
        .map(|l| live_view(l, entry_of(&l.report.instance)))
        .collect();
    for entry in &entries {
        if !views.iter().any(|v| v.instance == entry.record.instance) {
            views.push(away_view(entry));
        }
    }
    views.sort_by(|a, b| a.instance.cmp(&b.instance));
    views
}

async fn list(
    State(state): State<AppState>,
    Path(region): Path<String>,
) -> Result<Json<RegionInstances>, ApiError> {
    let stored = read_state(state.store()).await?;
    let effective = stored.effective_catalog();
    let Some(spec) = effective.regions.iter().find(|r| r.id == region) else {
        return Err(not_found::<RegionSpec>(&region));
    };
    let live: Vec<&RegionLive> = stored.live.iter().filter(|l| l.region == region).collect();
    let check = pools::check(spec, &live);
    Ok(Json(RegionInstances {
        instances: views(&stored, &region, now_ms()),
        revision: stored.revision,
        region,
        pools: check.pools,
        pools_match: check.pools_match,
        pools_unreported: check.unreported,
    }))
}

async fn drain(
    State(state): State<AppState>,
    Path((region, instance)): Path<(String, String)>,
) -> Result<(StatusCode, Json<InstanceEntry>), ApiError> {
    if state
        .registry()
        .get::<RegionSpec>(&RegionSpec::key(&region))
        .await?
        .is_none()
    {
        return Err(not_found::<RegionSpec>(&region));
    }
    let unknown = || ApiError::NotFound {
        what: format!("instance {instance} of region {region}"),
    };
    if contract::InstanceId::new(&instance).is_err() {
        // Not an instance id, so never registered.
        return Err(unknown());
    }
    let Some(entry) = instances::order_drain(state.store(), &region, &instance).await? else {
        return Err(unknown());
    };
    tracing::info!(region, instance, "instance ordered to drain");
    Ok((StatusCode::ACCEPTED, Json(entry)))
}
