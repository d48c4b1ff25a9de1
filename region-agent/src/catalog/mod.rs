//! The agent's copy of the catalog: its region's pools (with the reservations in force already
//! applied) and the models the catalog places in the region, with their pricing unit and
//! price. It is the agent's only source of slot counts and prices (docs/design.md §6: one truth
//! per fact).
//!
//! A copy comes from the control plane (`GET /agent/v1/regions/{id}/catalog`, kept on disk
//! for starts while the control plane is down) or from a catalog file ([`source`]). It is
//! checked here into a [`RegionCatalog`], cut to this instance's share of the pools when it
//! has one ([`share`]); the scheduler swaps it in whole, so every job is priced by one copy,
//! whose revision its usage record names.

pub mod share;
pub mod source;

use std::collections::BTreeMap;

use contract::RegionId;
use control_plane_client::wire::AgentCatalog;
use policy::PricingUnit;
use serde::{Deserialize, Serialize};

use crate::config::{Capacity, OnDemandConfig};
use crate::scheduler::slots::SlotConfig;

/// Why a catalog copy cannot be used.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CatalogError {
    /// A schema major version this agent cannot read.
    #[error(transparent)]
    Schema(#[from] contract::schema::SchemaError),
    /// The copy describes another region.
    #[error("the catalog describes region {found:?}, but this agent serves {expected}")]
    OtherRegion {
        /// The region the agent serves.
        expected: RegionId,
        /// The region in the copy.
        found: String,
    },
    /// A pool's value cannot be used.
    #[error("pool {pool}: {problem}")]
    Pool {
        /// The pool id.
        pool: String,
        /// What is wrong.
        problem: String,
    },
    /// The host's GPUs do not match the copy's GPU pools.
    #[error(transparent)]
    Hardware(#[from] crate::gpu::Mismatch),
}

/// One pool of the region, as in force now.
#[derive(Debug, Clone, PartialEq)]
pub struct PoolPlan {
    /// Pool id.
    pub id: String,
    /// GPU type, e.g. `H100-80GB` (`cpu` for a CPU pool).
    pub gpu: String,
    /// Reserved GPUs (slots of the reserved class).
    pub reserved: u32,
    /// Committed price per reserved GPU-hour.
    pub reserved_price_per_hour: f64,
    /// Most on-demand GPUs (slots of the on-demand class).
    pub on_demand_max: u32,
    /// Price per on-demand GPU-hour.
    pub on_demand_price_per_hour: f64,
}

/// A model's pricing in one catalog copy.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ModelPrice {
    /// What the tenant pays for.
    pub unit: PricingUnit,
    /// Price per unit, in the catalog's currency.
    pub price_per_unit: f64,
}

/// The price a job is charged by: which copy, which unit, how much per unit. A job keeps the
/// quote it was accepted under, for when its model leaves the catalog before it finishes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Quote {
    /// Revision of the catalog copy.
    pub catalog_revision: i64,
    /// The pricing unit's name, e.g. `megapixel`.
    pub unit: String,
    /// Price per unit, in the catalog's currency.
    pub price_per_unit: f64,
}

/// Why the catalog copy does not let this agent serve a configured model.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NotServed {
    /// The catalog does not place the model in this region.
    #[error("the catalog (revision {revision}) does not place it in this region")]
    NotPlaced {
        /// The copy's revision.
        revision: i64,
    },
    /// The catalog bills it in another unit than the model measures its work in.
    #[error(
        "the catalog (revision {revision}) bills it per {catalog}, but the model measures \
         its work in {model}; fix the model's unit in the catalog"
    )]
    UnitMismatch {
        /// The copy's revision.
        revision: i64,
        /// The catalog's unit.
        catalog: String,
        /// The model's unit.
        model: PricingUnit,
    },
}

/// A checked catalog copy for one region.
#[derive(Debug, Clone, PartialEq)]
pub struct RegionCatalog {
    /// The copy's revision (0 for a catalog file).
    pub revision: i64,
    /// ISO 4217 code of the currency.
    pub currency: String,
    /// The region's pools.
    pub pools: Vec<PoolPlan>,
    /// Model id → (unit name as written, price); a unit this build does not know keeps its
    /// name and no parsed unit, so the model is not served.
    models: BTreeMap<String, (String, f64)>,
}

impl RegionCatalog {
    /// Checks a copy for `region`.
    pub fn from_wire(catalog: &AgentCatalog, region: &RegionId) -> Result<Self, CatalogError> {
        contract::schema::AGENT_CATALOG.accepts("agent catalog", catalog.schema)?;
        if catalog.region.id != region.as_str() {
            return Err(CatalogError::OtherRegion {
                expected: region.clone(),
                found: catalog.region.id.clone(),
            });
        }
        let pools = catalog
            .region
            .pools
            .iter()
            .map(pool)
            .collect::<Result<Vec<_>, _>>()?;
        let models = catalog
            .models
            .iter()
            .filter(|m| m.price_per_unit.is_finite() && m.price_per_unit >= 0.0)
            .map(|m| (m.id.clone(), (m.unit.clone(), m.price_per_unit)))
            .collect();
        Ok(Self {
            revision: catalog.revision,
            currency: catalog.currency.clone(),
            pools,
            models,
        })
    }

    /// The quote for a job of `model`, which measures its work in `unit`.
    pub fn quote(&self, model: &str, unit: PricingUnit) -> Result<Quote, NotServed> {
        let revision = self.revision;
        let (name, price) = self
            .models
            .get(model)
            .ok_or(NotServed::NotPlaced { revision })?;
        if PricingUnit::parse(name) != Some(unit) {
            return Err(NotServed::UnitMismatch {
                revision,
                catalog: name.clone(),
                model: unit,
            });
        }
        Ok(Quote {
            catalog_revision: revision,
            unit: unit.as_str().to_owned(),
            price_per_unit: *price,
        })
    }

    /// Ids of the models the copy places in the region.
    pub fn model_ids(&self) -> impl Iterator<Item = &str> {
        self.models.keys().map(String::as_str)
    }

    /// The slots the pools give: every reserved GPU, then every on-demand one, in pool order.
    pub fn slots(&self, on_demand: OnDemandConfig) -> Vec<SlotConfig> {
        let slot = |pool: &PoolPlan, capacity, price_per_hour, start_delay| SlotConfig {
            pool: pool.id.clone(),
            capacity,
            price_per_hour,
            start_delay,
            idle_stop: on_demand.idle_stop,
            // Placed on the host's devices when the copy is put in force.
            device: Default::default(),
        };
        let reserved = self.pools.iter().flat_map(|p| {
            let price = p.reserved_price_per_hour;
            (0..p.reserved).map(move |_| slot(p, Capacity::Reserved, price, Default::default()))
        });
        let on_demand_slots = self.pools.iter().flat_map(|p| {
            let price = p.on_demand_price_per_hour;
            (0..p.on_demand_max)
                .map(move |_| slot(p, Capacity::OnDemand, price, on_demand.start_delay))
        });
        reserved.chain(on_demand_slots).collect()
    }
}

fn pool(spec: &policy::PoolSpec) -> Result<PoolPlan, CatalogError> {
    let problem = |problem: String| CatalogError::Pool {
        pool: spec.id.clone(),
        problem,
    };
    let count = |what: &str, n: i64| {
        u32::try_from(n).map_err(|_| problem(format!("{what} is {n}, not a GPU count")))
    };
    let price = |what: &str, price: Option<f64>| match price.unwrap_or(0.0) {
        p if p.is_finite() && p >= 0.0 => Ok(p),
        p => Err(problem(format!("{what} is {p}, not a price"))),
    };
    Ok(PoolPlan {
        id: spec.id.clone(),
        gpu: spec.gpu.clone(),
        reserved: count("reserved", spec.reserved)?,
        reserved_price_per_hour: price("reserved_price_per_hour", spec.reserved_price_per_hour)?,
        on_demand_max: count("on_demand_max", spec.on_demand_max)?,
        on_demand_price_per_hour: price("on_demand_price_per_hour", spec.on_demand_price_per_hour)?,
    })
}

#[cfg(test)]
mod tests;
