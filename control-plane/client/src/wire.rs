//! The JSON bodies of the control plane's HTTP API, shared by the server and its clients so
//! both sides read and write exactly the same shapes.
//!
//! Catalog records travel as the `policy` crate's spec records (`RegionSpec`, `ModelSpec`,
//! `TenantSpec`, `JurisdictionSpec`); what is defined here is everything around them: the
//! settings record, API-key views, agent reports, the edge snapshot and the error body.

use std::collections::BTreeMap;

use policy::spec::RoutingSpec;
use policy::{ApiKeyRecord, CatalogSpec};
use serde::{Deserialize, Serialize};

/// Deployment-wide settings of the catalog: its currency and the route decision's settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// ISO 4217 code of the currency all prices are in. Default `USD`.
    #[serde(default = "default_currency")]
    pub currency: String,
    /// How routes are estimated and scored.
    #[serde(default)]
    pub routing: RoutingSpec,
}

fn default_currency() -> String {
    CatalogSpec::default().currency
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            currency: default_currency(),
            routing: RoutingSpec::default(),
        }
    }
}

/// A list of records read at one store revision.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Listed<T> {
    /// The store revision the list was read at.
    pub revision: i64,
    /// The records, sorted by id.
    pub items: Vec<T>,
}

/// Body of `POST /admin/v1/tenants/{id}/keys`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewKeyRequest {
    /// Free-text label, e.g. `ci`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
}

/// What the admin API shows of a key: never its secret, never its hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyView {
    /// Public id (`mk_live_<id>_…`).
    pub id: String,
    /// Tenant the key acts for.
    pub tenant: String,
    /// Free-text label.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    /// Creation time, Unix seconds.
    pub created_at: i64,
    /// Revocation time, Unix seconds, once revoked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked_at: Option<i64>,
}

impl From<&ApiKeyRecord> for KeyView {
    fn from(record: &ApiKeyRecord) -> Self {
        Self {
            id: record.id.to_string(),
            tenant: record.tenant.to_string(),
            label: record.label.clone(),
            created_at: record.created_at,
            revoked_at: record.revoked_at,
        }
    }
}

/// Answer to a key creation: the whole key, shown this once, and its record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreatedKey {
    /// The full key, `mk_live_<id>_<secret>`. Meridian keeps only its hash.
    pub key: String,
    /// The stored record.
    pub record: KeyView,
}

/// One model's queue and timing in a region, as its agent reports it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelReport {
    /// Jobs waiting.
    #[serde(default)]
    pub queue_depth: u32,
    /// More jobs the queue can take.
    pub queue_room: u32,
    /// Expected wait for a job queued now, in ms.
    #[serde(default)]
    pub expected_wait_ms: f64,
    /// Measured service time per unit, in ms, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_ms_per_unit: Option<f64>,
    /// Whether the model is loaded.
    pub loaded: bool,
    /// Measured time to load the model, in ms.
    #[serde(default)]
    pub cold_start_ms: f64,
}

/// What a region agent reports when it registers and with every heartbeat.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentReport {
    /// Whether the agent considers itself healthy.
    pub healthy: bool,
    /// Whether the agent is draining (finishing its work, taking none).
    #[serde(default)]
    pub draining: bool,
    /// Idle reserved slots.
    #[serde(default)]
    pub free_reserved: u32,
    /// Idle on-demand slots already running.
    #[serde(default)]
    pub free_on_demand: u32,
    /// On-demand slots that can still be started.
    #[serde(default)]
    pub on_demand_startable: u32,
    /// Time to start an on-demand slot, in ms, when measured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_demand_start_ms: Option<f64>,
    /// Per model id (`owner/name`).
    #[serde(default)]
    pub models: BTreeMap<String, ModelReport>,
}

/// A region's live status as the control plane stores it and edges receive it. It exists
/// only while the agent keeps its lease alive.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegionLive {
    /// Region id.
    pub region: String,
    /// When the control plane received the report, Unix ms.
    pub reported_at_ms: u64,
    /// What the agent reported.
    pub report: AgentReport,
}

/// Answer to an agent's registration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Registration {
    /// Region id.
    pub region: String,
    /// The agent's status disappears this long after its last heartbeat, in ms.
    pub ttl_ms: u64,
}

/// Everything an edge needs to route, read at one store revision.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    /// The store revision the snapshot was read at.
    pub revision: i64,
    /// The whole catalog.
    pub catalog: CatalogSpec,
    /// Every API key's record (hashes only), revoked keys included.
    pub keys: Vec<ApiKeyRecord>,
    /// The live status of every region whose agent holds a lease.
    pub regions: Vec<RegionLive>,
    /// Month-to-date spend of every tenant that has used anything this month, for the
    /// edge's monthly budget check.
    #[serde(default)]
    pub spend: Vec<TenantSpend>,
}

/// What one tenant has spent in the current calendar month (UTC), summed from usage records.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantSpend {
    /// Tenant id.
    pub tenant: String,
    /// The month, `YYYY-MM` (UTC).
    pub month: String,
    /// Money charged so far this month, in the catalog's currency.
    pub cost: f64,
    /// GPU-seconds used so far this month.
    pub gpu_seconds: f64,
}

/// The body of every error answer: `{"error": {"type", "message", "details"}}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// The error.
    pub error: ErrorInfo,
}

/// What went wrong.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorInfo {
    /// A stable machine-readable kind, e.g. `invalid_catalog`, `conflict`.
    #[serde(rename = "type")]
    pub kind: String,
    /// A sentence for a person.
    pub message: String,
    /// Each problem of an invalid write, with its path and fix.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub details: Vec<ErrorDetail>,
}

/// One problem of an invalid write.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorDetail {
    /// Where the offending value is, e.g. `regions[eu-west].pools[0].reserved`.
    pub path: String,
    /// What is wrong with it.
    pub problem: String,
    /// How to fix it.
    pub fix: String,
}

/// Which capacity a job ran on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Capacity {
    /// A reserved GPU (already paid for).
    Reserved,
    /// An on-demand GPU (paid per use).
    OnDemand,
}

/// What one finished job used, as its region agent reports it (DESIGN.md §6).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UsageRecord {
    /// The job's request id (`<region>.<random>`); reports are deduplicated by it.
    pub job_id: String,
    /// Tenant the job ran for.
    pub tenant: String,
    /// Model id (`owner/name`).
    pub model: String,
    /// Region that ran it.
    pub region: String,
    /// Units of work billed (images, megapixels, seconds, …).
    pub units: f64,
    /// GPU-seconds the job took.
    pub gpu_seconds: f64,
    /// Capacity it ran on.
    pub capacity: Capacity,
    /// What the tenant is charged, in the catalog's currency.
    pub cost: f64,
    /// When the job finished, Unix ms.
    pub finished_at_ms: u64,
}

/// Body of `POST /agent/v1/usage`: a batch of records, delivered at least once.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UsageBatch {
    /// The records.
    pub records: Vec<UsageRecord>,
}

/// Answer to a usage batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct UsageReceipt {
    /// Records stored now.
    pub accepted: usize,
    /// Records whose job id was stored before (a redelivery), ignored.
    pub duplicates: usize,
}

/// What a set of jobs used, summed.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct UsageTotals {
    /// Jobs counted.
    pub jobs: u64,
    /// Units of work billed (summed across models, whatever their unit).
    pub units: f64,
    /// GPU-seconds on reserved capacity.
    pub reserved_gpu_seconds: f64,
    /// GPU-seconds on on-demand capacity.
    pub on_demand_gpu_seconds: f64,
    /// Money charged, in the catalog's currency.
    pub cost: f64,
}

/// One row of a usage report: the totals of one group. A dimension the report is not
/// grouped by is absent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UsageRow {
    /// Tenant id, when grouped by tenant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    /// Model id, when grouped by model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// Region id, when grouped by region.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// UTC day `YYYY-MM-DD`, when grouped by day.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub day: Option<String>,
    /// What the group's jobs used.
    pub usage: UsageTotals,
}

/// Answer of `GET /admin/v1/usage`: usage summed per group over a range of UTC days.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UsageReport {
    /// The store revision the aggregates were read at.
    pub revision: i64,
    /// First day included (`YYYY-MM-DD`, UTC), when limited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    /// Last day included (`YYYY-MM-DD`, UTC), when limited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<String>,
    /// The dimensions rows are grouped by (`tenant`, `model`, `region`, `day`).
    pub group_by: Vec<String>,
    /// One row per group, sorted by its dimensions.
    pub rows: Vec<UsageRow>,
    /// Every row summed.
    pub total: UsageTotals,
}

/// Answer of `GET /admin/v1/tenants/{id}/spend`: one tenant's spend in one UTC month,
/// next to its monthly budgets.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SpendReport {
    /// Tenant id.
    pub tenant: String,
    /// The month, `YYYY-MM` (UTC).
    pub month: String,
    /// What the tenant's jobs that month used.
    pub usage: UsageTotals,
    /// The tenant's monthly budget in money, if it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub monthly_budget: Option<f64>,
    /// The tenant's monthly budget in GPU-seconds, if it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub monthly_gpu_seconds: Option<f64>,
}

/// A commitment to pay for GPUs of one pool over a period, used or not.
///
/// While a pool has active reservations (start ≤ now < end), the catalog edges receive
/// gives it their summed GPUs as its `reserved` count and their GPU-weighted average price
/// as its `reserved_price_per_hour`; a pool without any keeps the values it is configured
/// with.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Reservation {
    /// Id: 1–63 characters of a–z, 0–9 and '-', starting with a letter.
    pub id: String,
    /// Region holding the GPUs.
    pub region: String,
    /// Pool of that region.
    pub pool: String,
    /// GPUs committed (at least 1).
    pub gpus: i64,
    /// Committed price per GPU-hour, in the catalog's currency.
    pub price_per_gpu_hour: f64,
    /// Start, Unix ms (included).
    pub start_ms: i64,
    /// End, Unix ms (excluded); after the start.
    pub end_ms: i64,
    /// Free text, e.g. the contract's reference.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

impl Reservation {
    /// Whether the reservation holds at `unix_ms`.
    pub fn active_at(&self, unix_ms: i64) -> bool {
        self.start_ms <= unix_ms && unix_ms < self.end_ms
    }
}
