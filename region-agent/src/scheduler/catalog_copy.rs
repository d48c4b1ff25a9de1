//! The catalog copy in force: installing a new one (cut to this instance's share of the
//! pools, when it has one; slots reconfigured live and each placed on a device — a copy whose GPU pools the host's GPUs do not match is refused; why a
//! configured model is not served logged once per copy) and what it says about a model.

use std::sync::Arc;

use control_plane_client::wire::AgentCatalog;

use super::{Lane, Scheduler, Shared};
use crate::catalog::{CatalogError, NotServed, Quote, RegionCatalog};
use crate::gpu;

impl Scheduler {
    /// Puts `catalog` in force: its slots (of this instance's share of the pools, with
    /// `[pools]`; a share the copy does not cover is logged) replace the current ones (busy slots finish their
    /// batch; no job is lost), its prices price every job that finishes from now on. A copy
    /// whose GPU pools the host's GPUs do not match is refused ([`CatalogError::Hardware`])
    /// unless `[gpus] accept_mismatch` is set; the copy in force stays.
    pub fn install_catalog(&self, catalog: &AgentCatalog) -> Result<(), CatalogError> {
        let shared = &self.shared;
        let mut copy = RegionCatalog::from_wire(catalog, &shared.region)?;
        if let Some(shares) = &shared.shares {
            for problem in copy.share(shares) {
                tracing::warn!(revision = copy.revision, "{problem}");
            }
        }
        let mut slots = copy.slots(shared.on_demand);
        let placements = shared.hardware.place(&copy.pools, &slots)?;
        for (slot, device) in slots.iter_mut().zip(placements) {
            slot.device = device;
        }
        log_served(shared, &copy);
        tracing::info!(
            revision = copy.revision,
            slots = slots.len(),
            devices = %gpu::plan::describe(&slots),
            models = copy.model_ids().count(),
            "catalog in force"
        );
        *shared.catalog.write().unwrap_or_else(|e| e.into_inner()) = Some(Arc::new(copy));
        shared.slots.reconfigure(slots);
        Ok(())
    }

    /// The revision of the catalog copy in force, once there is one.
    pub fn catalog_revision(&self) -> Option<i64> {
        self.shared.catalog().map(|c| c.revision)
    }
}

/// The quote `catalog` gives a job of `lane`'s model.
pub(super) fn quote(catalog: &RegionCatalog, lane: &Lane) -> Result<Quote, NotServed> {
    catalog.quote(lane.config.id.as_str(), lane.model.unit())
}

/// Whether `catalog` lets the agent serve `lane`'s model.
pub(super) fn serves(catalog: Option<&RegionCatalog>, lane: &Lane) -> bool {
    catalog.is_some_and(|c| quote(c, lane).is_ok())
}

/// Says once per copy why a configured model is not served, and which models the copy
/// places here that the agent has no weights for.
fn log_served(shared: &Shared, copy: &RegionCatalog) {
    for (id, lane) in &shared.lanes {
        if let Err(why) = quote(copy, lane) {
            tracing::warn!(model = %id, reason = %why, "model configured here but not served: refused with model_not_served");
        }
    }
    for id in copy.model_ids() {
        if !shared.lanes.contains_key(id) {
            tracing::info!(model = %id, "the catalog places this model here, but this agent has no weights configured for it");
        }
    }
}
