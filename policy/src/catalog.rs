//! The validated configuration: what the route decision reads.
//!
//! A [`Catalog`] is built only by [`CatalogSpec::validate`](crate::CatalogSpec::validate), so
//! every value in it has passed its rules: ids are well formed and unique, references
//! resolve, counts and prices are non-negative. Regions, models and tenants are kept in the
//! order of the configuration and addressed by index, which makes the route decision's
//! lookups cheap and its tie-breaks deterministic.

use std::collections::HashMap;
use std::fmt;

use crate::error::ConfigWarning;
use crate::location::{Location, NetworkModel, UnitVector};
use crate::quota::{MonthlyBudget, RateLimit};
use crate::sets::IndexSet;
use contract::ids::{JurisdictionId, ModelId, PoolId, RegionId, TenantId};

/// A validated configuration.
#[derive(Debug, Clone)]
pub struct Catalog {
    pub(crate) currency: String,
    pub(crate) routing: Routing,
    pub(crate) jurisdictions: Vec<Jurisdiction>,
    pub(crate) regions: Vec<Region>,
    pub(crate) models: Vec<Model>,
    pub(crate) tenants: Vec<Tenant>,
    pub(crate) region_index: HashMap<RegionId, usize>,
    pub(crate) model_index: HashMap<ModelId, usize>,
    pub(crate) tenant_index: HashMap<TenantId, usize>,
    pub(crate) warnings: Vec<ConfigWarning>,
    /// Tells validated catalogs apart, so that what a reused [`crate::RouteDecision`] caches
    /// for one catalog is never used with another. Clones share it: a catalog never changes
    /// once validated.
    pub(crate) generation: u64,
}

impl Catalog {
    pub(crate) fn next_generation() -> u64 {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    }

    /// ISO 4217 code of the currency prices are in.
    pub fn currency(&self) -> &str {
        &self.currency
    }
    /// Route decision settings.
    pub fn routing(&self) -> &Routing {
        &self.routing
    }
    /// Jurisdictions, in configuration order.
    pub fn jurisdictions(&self) -> &[Jurisdiction] {
        &self.jurisdictions
    }
    /// Regions, in configuration order; a region's position is its index.
    pub fn regions(&self) -> &[Region] {
        &self.regions
    }
    /// Models, in configuration order.
    pub fn models(&self) -> &[Model] {
        &self.models
    }
    /// Tenants, in configuration order.
    pub fn tenants(&self) -> &[Tenant] {
        &self.tenants
    }
    /// Legal but probably unintended settings, for an operator to review.
    pub fn warnings(&self) -> &[ConfigWarning] {
        &self.warnings
    }
    /// Index of a region by id.
    pub fn region_index(&self, id: &str) -> Option<usize> {
        self.region_index.get(id).copied()
    }
    /// Index of a model by id.
    pub fn model_index(&self, id: &str) -> Option<usize> {
        self.model_index.get(id).copied()
    }
    /// Index of a tenant by id.
    pub fn tenant_index(&self, id: &str) -> Option<usize> {
        self.tenant_index.get(id).copied()
    }
    /// A region by id.
    pub fn region(&self, id: &str) -> Option<&Region> {
        self.region_index(id).map(|i| &self.regions[i])
    }
    /// A model by id.
    pub fn model(&self, id: &str) -> Option<&Model> {
        self.model_index(id).map(|i| &self.models[i])
    }
    /// A tenant by id.
    pub fn tenant(&self, id: &str) -> Option<&Tenant> {
        self.tenant_index(id).map(|i| &self.tenants[i])
    }
    /// The models `tenant` may call, in configuration order.
    pub fn models_for(&self, tenant: &Tenant) -> impl Iterator<Item = &Model> {
        self.models
            .iter()
            .enumerate()
            .filter(|(i, _)| tenant.may_call(*i))
            .map(|(_, m)| m)
    }
}

/// Validated route decision settings.
#[derive(Debug, Clone, PartialEq)]
pub struct Routing {
    /// Network latency model.
    pub network: NetworkModel,
    /// Marginal cost of an idle reserved GPU, in money per GPU-second.
    pub reserved_cost_per_gpu_second: f64,
    /// Heartbeats older than this (ms) make a region unhealthy.
    pub heartbeat_timeout_ms: u64,
    /// Time (ms) to bring up an on-demand slot when the region reports none.
    pub on_demand_start_ms: u64,
}

/// A jurisdiction.
#[derive(Debug, Clone, PartialEq)]
pub struct Jurisdiction {
    /// Its id.
    pub id: JurisdictionId,
    /// Its human name, if given.
    pub name: Option<String>,
}

/// A region and its GPU pools.
#[derive(Debug, Clone, PartialEq)]
pub struct Region {
    /// Its id.
    pub id: RegionId,
    /// The jurisdiction it is in.
    pub jurisdiction: JurisdictionId,
    /// Where it is.
    pub location: Location,
    pub(crate) point: UnitVector,
    /// Base URL of its agent when the catalog gives one (empty: its instances report
    /// their own).
    pub endpoint: String,
    /// Its GPU pools (at least one).
    pub pools: Vec<Pool>,
    pub(crate) totals: PoolTotals,
}

/// Sums over a region's pools, computed once at validation for the route decision.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub(crate) struct PoolTotals {
    pub(crate) reserved: u32,
    pub(crate) on_demand: u32,
    /// Cheapest on-demand price per GPU-second, if the region has on-demand slots.
    pub(crate) on_demand_per_gpu_second: Option<f64>,
}

impl PoolTotals {
    pub(crate) fn of(pools: &[Pool]) -> Self {
        Self {
            reserved: pools.iter().map(|p| p.reserved).sum(),
            on_demand: pools.iter().map(|p| p.on_demand_max).sum(),
            on_demand_per_gpu_second: pools
                .iter()
                .filter(|p| p.on_demand_max > 0)
                .filter_map(|p| p.on_demand_price_per_hour)
                .min_by(f64::total_cmp)
                .map(|per_hour| per_hour / 3600.0),
        }
    }
}

impl Region {
    /// Reserved GPUs over all pools.
    pub fn reserved_slots(&self) -> u32 {
        self.totals.reserved
    }
    /// On-demand GPUs that may run at once over all pools.
    pub fn on_demand_slots(&self) -> u32 {
        self.totals.on_demand
    }
    /// The cheapest on-demand price per GPU-hour in the region, if it has on-demand slots.
    pub fn on_demand_price_per_hour(&self) -> Option<f64> {
        self.totals.on_demand_per_gpu_second.map(|p| p * 3600.0)
    }
    /// What the region's reservations cost per hour, used or not.
    pub fn reserved_cost_per_hour(&self) -> f64 {
        self.pools
            .iter()
            .map(|p| f64::from(p.reserved) * p.reserved_price_per_hour)
            .sum()
    }
}

/// A pool of GPUs of one type.
#[derive(Debug, Clone, PartialEq)]
pub struct Pool {
    /// Its id, unique in its region.
    pub id: PoolId,
    /// GPU type.
    pub gpu: String,
    /// Reserved GPUs.
    pub reserved: u32,
    /// Committed price per reserved GPU-hour (0 when there are none).
    pub reserved_price_per_hour: f64,
    /// Most on-demand GPUs at once.
    pub on_demand_max: u32,
    /// Price per on-demand GPU-hour; present when `on_demand_max` > 0.
    pub on_demand_price_per_hour: Option<f64>,
}

/// What a model does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ModelKind {
    /// Text prompt → image.
    TextToImage,
    /// Image → image (e.g. super-resolution).
    ImageToImage,
    /// Video → video.
    VideoToVideo,
    /// Audio → text (transcription).
    AudioToText,
    /// Audio → analysis (e.g. voice activity).
    AudioAnalysis,
    /// Text → audio.
    TextToAudio,
}

impl ModelKind {
    /// Every kind, with its configuration name.
    pub const ALL: [(ModelKind, &'static str); 6] = [
        (ModelKind::TextToImage, "text-to-image"),
        (ModelKind::ImageToImage, "image-to-image"),
        (ModelKind::VideoToVideo, "video-to-video"),
        (ModelKind::AudioToText, "audio-to-text"),
        (ModelKind::AudioAnalysis, "audio-analysis"),
        (ModelKind::TextToAudio, "text-to-audio"),
    ];

    /// The configuration name, e.g. `image-to-image`.
    pub fn as_str(self) -> &'static str {
        Self::ALL
            .iter()
            .find(|(k, _)| *k == self)
            .map_or("", |(_, name)| name)
    }

    /// Parses a configuration name.
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.iter().find(|(_, n)| *n == name).map(|(k, _)| *k)
    }
}

impl fmt::Display for ModelKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a tenant pays for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PricingUnit {
    /// Per output image.
    Image,
    /// Per output megapixel.
    Megapixel,
    /// Per second of input audio.
    AudioSecond,
    /// Per second of video.
    VideoSecond,
    /// Per GPU-second used.
    GpuSecond,
    /// Per output megapixel per denoising step: the work of a diffusion model, which grows
    /// with the picture's size and the steps asked for, and is known before the job runs.
    MegapixelStep,
}

impl PricingUnit {
    /// Every unit, with its configuration name.
    pub const ALL: [(PricingUnit, &'static str); 6] = [
        (PricingUnit::Image, "image"),
        (PricingUnit::Megapixel, "megapixel"),
        (PricingUnit::AudioSecond, "audio_second"),
        (PricingUnit::VideoSecond, "video_second"),
        (PricingUnit::GpuSecond, "gpu_second"),
        (PricingUnit::MegapixelStep, "megapixel_step"),
    ];

    /// The configuration name, e.g. `megapixel`.
    pub fn as_str(self) -> &'static str {
        Self::ALL
            .iter()
            .find(|(u, _)| *u == self)
            .map_or("", |(_, name)| name)
    }

    /// Parses a configuration name.
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.iter().find(|(_, n)| *n == name).map(|(u, _)| *u)
    }
}

impl fmt::Display for PricingUnit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A model and where it is served.
#[derive(Debug, Clone, PartialEq)]
pub struct Model {
    /// Its id.
    pub id: ModelId,
    /// What it does.
    pub kind: ModelKind,
    /// What a tenant pays for.
    pub unit: PricingUnit,
    /// Price per unit.
    pub price_per_unit: f64,
    /// Expected GPU-seconds per unit (> 0).
    pub gpu_seconds_per_unit: f64,
    /// Indices of the regions that serve it.
    pub served_by: IndexSet,
    /// Where agents find the weights.
    pub weights: Option<String>,
}

impl Model {
    /// What a tenant pays for `units`.
    pub fn price_for(&self, units: f64) -> f64 {
        self.price_per_unit * units
    }
}

/// Where a tenant's data may be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Residency {
    /// Anywhere.
    Any,
    /// Only in these jurisdictions and regions.
    Only {
        /// Allowed jurisdictions.
        jurisdictions: Vec<JurisdictionId>,
        /// Allowed regions beyond those jurisdictions.
        regions: Vec<RegionId>,
    },
}

/// A tenant's validated limits; `None` is unlimited. The edge builds its per-tenant
/// [`RateLimiter`](crate::quota::RateLimiter) and [`ConcurrencyGate`](crate::quota::ConcurrencyGate)
/// from these; validation has already checked that both accept them.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Quotas {
    /// Sustained requests per second and burst.
    pub rate: Option<RateLimit>,
    /// Jobs running or waiting at once (≥ 1).
    pub max_concurrent: Option<u32>,
    /// Money and/or GPU-seconds per calendar month (UTC).
    pub budget: MonthlyBudget,
}

/// A tenant and its policies.
#[derive(Debug, Clone, PartialEq)]
pub struct Tenant {
    /// Its id.
    pub id: TenantId,
    /// Its human name.
    pub name: Option<String>,
    /// Where its data may be.
    pub residency: Residency,
    /// Indices of the regions its residency allows.
    pub allowed_regions: IndexSet,
    /// Its limits.
    pub quotas: Quotas,
    /// Indices of the models it may call; `None` is all.
    pub allowed_models: Option<IndexSet>,
    /// Latency goal in milliseconds.
    pub latency_goal_ms: Option<f64>,
    /// λ, money per second of latency.
    pub latency_value_per_second: f64,
}

impl Tenant {
    /// Whether the tenant may call the model at `model_index`.
    pub fn may_call(&self, model_index: usize) -> bool {
        self.allowed_models
            .as_ref()
            .is_none_or(|set| set.contains(model_index))
    }
}
