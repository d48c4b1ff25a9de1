//! The JSON bodies of the control plane's HTTP API, shared by the server and its clients so
//! both sides read and write exactly the same shapes.
//!
//! Catalog records travel as the `policy` crate's spec records (`RegionSpec`, `ModelSpec`,
//! `TenantSpec`, `JurisdictionSpec`); what is defined here is everything around them: the
//! settings record, API-key views, agent reports and catalogs, the edge snapshot and the
//! usage ledger's messages. The error body is [`contract::ErrorBody`].
//!
//! These are wire types: reading one ignores fields this build does not know, so a newer
//! sender can add fields without breaking an older reader. Messages that components send
//! each other on their own (heartbeats, snapshots, agent catalogs, usage batches) carry a
//! [`Schema`] version, and a reader refuses only a major version it does not know
//! (`contract::schema`). Admin writes are configuration, not wire messages: the control
//! plane reads them strictly and refuses unknown fields.

use std::collections::BTreeMap;

pub use contract::{ConfigProblem, ErrorBody, ErrorInfo, Nanos, Schema};
use policy::spec::RoutingSpec;
use policy::{ApiKeyRecord, CatalogSpec, ModelSpec, RegionSpec};
use serde::{Deserialize, Serialize};

/// Deployment-wide settings of the catalog: its currency and the route decision's settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
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
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AgentReport {
    /// The message's schema version (`contract::schema::HEARTBEAT`; absent: 1.0).
    #[serde(default)]
    pub schema: Schema,
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
    /// The revision of the agent catalog the agent runs with, when it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub catalog_revision: Option<i64>,
    /// Per tenant id, the jobs the region holds queued or running (tenants with none are
    /// left out). Edges add these up across regions to bound a tenant's `max_concurrent`
    /// jobs (docs/design.md §4). Absent from a 1.1 agent.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub tenant_jobs: BTreeMap<String, u32>,
    /// Which of its region's agents reports ([`contract::ids::InstanceId`]'s grammar): each
    /// registers and heartbeats under its own lease, and the region is the sum of its
    /// instances. Empty (absent from a 1.2 agent): the region's only agent.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub instance: String,
    /// Where edges reach this instance (`http(s)://host:port`). Empty (absent from a 1.3
    /// agent): at the catalog's `endpoint` for the region.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub endpoint: String,
    /// Per GPU pool id, the slots this instance serves; the control plane checks that a
    /// region's instances add up to the catalog's pools. Empty (absent from a 1.3 agent):
    /// not reported.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub pools: BTreeMap<String, PoolShare>,
    /// How long the instance keeps a finished job's record and result, in seconds: calls
    /// about its jobs answer `503` while it is away for less than this. Absent (0) from a
    /// 1.3 agent.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub result_retention_s: u64,
}

fn is_zero(value: &u64) -> bool {
    *value == 0
}

/// The slots one instance serves of one of its region's GPU pools.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct PoolShare {
    /// Reserved slots.
    #[serde(default)]
    pub reserved: u32,
    /// On-demand slots it may start.
    #[serde(default)]
    pub on_demand: u32,
}

impl Default for AgentReport {
    /// A healthy-looking empty report at this build's schema.
    fn default() -> Self {
        Self {
            schema: contract::schema::HEARTBEAT,
            healthy: false,
            draining: false,
            free_reserved: 0,
            free_on_demand: 0,
            on_demand_startable: 0,
            on_demand_start_ms: None,
            models: BTreeMap::new(),
            catalog_revision: None,
            tenant_jobs: BTreeMap::new(),
            instance: String::new(),
            endpoint: String::new(),
            pools: BTreeMap::new(),
            result_retention_s: 0,
        }
    }
}

/// A region's live status as the control plane stores it and edges receive it. It exists
/// only while the agent keeps its lease alive.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RegionLive {
    /// Region id.
    pub region: String,
    /// When the control plane received the report, Unix ms.
    pub reported_at_ms: u64,
    /// What the agent reported.
    pub report: AgentReport,
}

/// Answer to an agent's registration and heartbeats.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Registration {
    /// Region id.
    pub region: String,
    /// The agent's status disappears this long after its last heartbeat, in ms.
    pub ttl_ms: u64,
    /// The newest revision of the configuration agents read: an agent whose catalog is
    /// older fetches `GET /agent/v1/regions/{id}/catalog`. Absent (0) from an older
    /// control plane, which never asks for a fetch.
    #[serde(default)]
    pub catalog_revision: i64,
    /// An operator asked this instance to drain (`POST /admin/v1/regions/{id}/instances/
    /// {instance}/drain`): it takes no new jobs, finishes its work, flushes its
    /// usage, deregisters and exits, as on SIGTERM. Absent (false) from an older control
    /// plane.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub drain: bool,
}

/// What an agent takes from the catalog (`GET /agent/v1/regions/{id}/catalog`): its
/// region's pools, with the reserved GPUs and price of the reservations active now, and the
/// models the catalog places in the region, with their pricing. It is the agent's only
/// source of slot counts and prices.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AgentCatalog {
    /// The message's schema version (`contract::schema::AGENT_CATALOG`).
    #[serde(default)]
    pub schema: Schema,
    /// The store revision it was read at; usage records name it.
    pub revision: i64,
    /// ISO 4217 code of the currency prices are in.
    pub currency: String,
    /// The region, its pools as in force now.
    pub region: RegionSpec,
    /// The models the catalog places in the region.
    pub models: Vec<ModelSpec>,
}

/// Everything an edge needs to route, read at one store revision.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    /// The message's schema version (`contract::schema::SNAPSHOT`; absent: 1.0).
    #[serde(default)]
    pub schema: Schema,
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
    /// Every instance that has registered and whose jobs may still be held: live or not.
    /// An edge answers calls about the jobs of an instance that is away `503` while this
    /// says it may come back. Absent from a 1.1 control plane.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub instances: Vec<InstanceRecord>,
}

/// One instance of a region as the control plane remembers it beyond its lease.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceRecord {
    /// Region id.
    pub region: String,
    /// Instance id.
    pub instance: String,
    /// Where edges reached it (empty: the catalog's endpoint).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub endpoint: String,
    /// When it was last heard from, Unix ms (at most a minute or so old while it is live).
    pub last_seen_ms: u64,
    /// Whether it deregistered (drained and left) rather than went silent.
    #[serde(default)]
    pub deregistered: bool,
    /// How long it keeps finished jobs, in seconds (0: not reported).
    #[serde(default)]
    pub result_retention_s: u64,
}

impl InstanceRecord {
    /// Whether calls about this instance's jobs may still be answered by it at `now_ms`:
    /// it was heard from within its result retention (or it never said its retention).
    pub fn may_hold_jobs(&self, now_ms: u64) -> bool {
        self.result_retention_s == 0
            || now_ms.saturating_sub(self.last_seen_ms)
                <= self.result_retention_s.saturating_mul(1000)
    }
}

/// What one tenant has spent in the current calendar month (UTC), summed from usage records.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
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

/// Which capacity a job ran on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Capacity {
    /// A reserved GPU (already paid for).
    Reserved,
    /// An on-demand GPU (paid per use).
    OnDemand,
}

/// How a job ended, for billing: completed jobs are charged, failed ones are not.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// The job produced its output; the tenant is charged its units at the catalog price.
    Completed,
    /// The job failed (a model error, a timeout, a storage failure): the tenant is charged
    /// nothing, while its GPU time still counts as used capacity.
    Failed,
}

/// What one finished job used and cost: the per-job record an agent keeps on its own disk,
/// in its region, for its retention time (`GET /admin/v1/usage/records` reads it through
/// the control plane, page by page). Amounts are exact billionths.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UsageRecord {
    /// The job's request id (`<region>.<random>`).
    pub job_id: String,
    /// Tenant the job ran for.
    pub tenant: String,
    /// Model id (`owner/name`).
    pub model: String,
    /// Region that ran it.
    pub region: String,
    /// Capacity it ran on.
    pub capacity: Capacity,
    /// How it ended.
    pub outcome: Outcome,
    /// Why it failed (the job error's `type`, e.g. `timeout`), for failed jobs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The model's pricing unit (`megapixel`, `image`, …).
    pub unit: String,
    /// Units of work done, in billionths of the unit.
    pub units_nanos: Nanos,
    /// GPU-seconds the job took, in billionths.
    pub gpu_nanos: Nanos,
    /// Price per unit that priced it, in the catalog's currency.
    pub price_per_unit: f64,
    /// What the tenant is charged, in billionths of the catalog's currency (0 for failed
    /// jobs).
    pub cost_nanos: Nanos,
    /// The revision of the agent catalog that priced it.
    pub catalog_revision: i64,
    /// When the job finished, Unix ms.
    pub finished_at_ms: u64,
}

/// A page of per-job usage records, oldest first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UsageRecordPage {
    /// Region the records are kept in.
    pub region: String,
    /// The records.
    pub records: Vec<UsageRecord>,
    /// Pass as `cursor` for the next page; absent on the last page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next: Option<String>,
}

/// What one tenant's jobs of one model used on one capacity class in one UTC hour of one
/// region, summed exactly.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UsageAggregate {
    /// Tenant id.
    pub tenant: String,
    /// Model id.
    pub model: String,
    /// Capacity class.
    pub capacity: Capacity,
    /// Start of the UTC hour, Unix ms (a multiple of 3 600 000).
    pub hour_ms: u64,
    /// Jobs that finished (completed or failed).
    pub jobs: u64,
    /// Of those, jobs that failed.
    pub failed_jobs: u64,
    /// Units of work, in billionths.
    pub units_nanos: Nanos,
    /// GPU-seconds, in billionths.
    pub gpu_nanos: Nanos,
    /// Money charged, in billionths of the catalog's currency.
    pub cost_nanos: Nanos,
}

/// Most rows one usage batch may hold: a batch is applied in one store transaction, which
/// writes each row's daily total and its tenant's monthly spend, and etcd allows 128
/// operations per transaction.
pub const MAX_USAGE_ROWS: usize = 60;

/// Body of `POST /agent/v1/usage`: one numbered batch of an agent's ledger. The control
/// plane applies a batch exactly once: it keeps the last sequence number applied for each
/// `(region, ledger)` and compares it in the same store transaction that adds the rows.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UsageBatch {
    /// The message's schema version (`contract::schema::USAGE_BATCH`).
    pub schema: Schema,
    /// Region the jobs ran in.
    pub region: String,
    /// The agent's ledger id: 32 lowercase hex digits, random, made when its data
    /// directory was first used, so a rebuilt agent starts a new sequence instead of
    /// repeating an old one.
    pub ledger: String,
    /// The batch's number in its ledger, from 1, with no gaps.
    pub seq: u64,
    /// The aggregates (at most [`MAX_USAGE_ROWS`]).
    pub rows: Vec<UsageAggregate>,
}

/// Answer to a usage batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct UsageReceipt {
    /// The batch's number.
    pub seq: u64,
    /// `true` when this call applied it; `false` when it had been applied before (a
    /// resend), in which case nothing changed.
    pub applied: bool,
}
/// What a set of jobs used, summed.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct UsageTotals {
    /// Jobs counted (completed and failed).
    pub jobs: u64,
    /// Of those, jobs that failed (charged nothing).
    #[serde(default)]
    pub failed_jobs: u64,
    /// Units of work billed (summed across models, whatever their unit).
    pub units: f64,
    /// GPU-seconds on reserved capacity.
    pub reserved_gpu_seconds: f64,
    /// GPU-seconds on on-demand capacity.
    pub on_demand_gpu_seconds: f64,
    /// Money charged, in the catalog's currency.
    pub cost: f64,
    /// Money charged, in exact billionths of the catalog's currency.
    #[serde(default)]
    pub cost_nanos: Nanos,
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
