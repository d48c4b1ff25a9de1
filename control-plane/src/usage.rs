//! Usage accounting: running totals per tenant, model, region and UTC day, and per tenant
//! and UTC month, fed by the numbered batches of hourly aggregates each region agent sends.
//!
//! Per-job records stay in their region, on the agent's disk; the store holds only totals,
//! so its size follows the catalog and time, never the number of jobs. Each agent numbers
//! its batches (per ledger: a random id its data directory keeps), and the control plane
//! keeps the last number it applied per ledger. A batch, the mark that it was applied and
//! every total it adds to are written in one store [`Transaction`] that compares the mark's
//! and each total's mod revision with what was read. So a batch is counted exactly once: a
//! resend finds its number applied and changes nothing, and two batches that race on one
//! total cannot both add to the value they read — the loser reads again and retries. Sums
//! are kept in integer billionths ([`Totals`]), exactly as the agents computed them, so
//! they equal the sum of the region's per-job records.
//!
//! A record of a batch that cannot be counted (a tenant or model that is not an id, an
//! hour that is not the start of one, more failed jobs than jobs, a row that is not an
//! aggregate at all) does not hold back the others: it is kept under a quarantine key in the
//! same transaction as the batch's mark, so it too is written exactly once, and the batch's
//! other records are counted.
//!
//! ```text
//! /meridian/usage-daily/v1/<tenant>/<day>/<region>/<model> DailyUsage
//! /meridian/usage-ledgers/v1/<region>/<ledger>              LedgerMark (last batch applied)
//! /meridian/usage-quarantine/v1/<region>/<ledger>/<batch>/<n> QuarantinedRecord
//! /meridian/v1/spend/<month>/<tenant>                       MonthlySpend (in edges' snapshot)
//! ```

use std::collections::BTreeMap;

use contract::ConfigProblem;
use control_plane_client::wire::{
    Capacity, TenantSpend, UsageAggregate, UsageBatch, UsageReceipt, UsageTotals,
};
use serde::{Deserialize, Serialize};

use crate::store::versioned::{self, VersionError, Versioned};
use crate::store::{AnyStore, Revision, Store, StoreError, Transaction};

/// The prefix of daily aggregates.
pub const DAILY: &str = "/meridian/usage-daily/v1/";
/// The prefix of monthly spend, inside the snapshot root so edges receive it.
pub const SPEND: &str = "/meridian/v1/spend/";
/// The prefix of ledger marks: the last batch applied from each agent ledger.
pub const LEDGERS: &str = "/meridian/usage-ledgers/v1/";

/// The prefix of quarantined usage records.
pub const QUARANTINE: &str = "/meridian/usage-quarantine/v1/";
/// Longest JSON text of a quarantined record kept whole, in bytes; a longer one is kept
/// as this many bytes of its text, so a batch's writes stay small.
pub const QUARANTINE_EXCERPT: usize = 2048;

/// How often a batch is retried when concurrent writers changed its totals meanwhile.
const ATTEMPTS: usize = 20;
/// Billionths per unit.
const NANO: f64 = 1e9;

/// Sums in billionths of a unit, exact and independent of the order they were added in.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Totals {
    /// Jobs counted (completed and failed).
    pub jobs: u64,
    /// Of those, jobs that failed.
    #[serde(default)]
    pub failed_jobs: u64,
    /// Billionths of units of work.
    pub units: u64,
    /// Billionths of reserved GPU-seconds.
    pub reserved_gpu: u64,
    /// Billionths of on-demand GPU-seconds.
    pub on_demand_gpu: u64,
    /// Billionths of the currency.
    pub cost: u64,
}

#[allow(clippy::cast_precision_loss)]
fn from_nano(nano: u64) -> f64 {
    nano as f64 / NANO
}

impl Totals {
    /// Adds one hourly aggregate.
    pub fn add(&mut self, row: &UsageAggregate) {
        self.jobs = self.jobs.saturating_add(row.jobs);
        self.failed_jobs = self.failed_jobs.saturating_add(row.failed_jobs);
        self.units = self.units.saturating_add(row.units_nanos.0);
        let gpu = row.gpu_nanos.0;
        match row.capacity {
            Capacity::Reserved => self.reserved_gpu = self.reserved_gpu.saturating_add(gpu),
            Capacity::OnDemand => self.on_demand_gpu = self.on_demand_gpu.saturating_add(gpu),
        }
        self.cost = self.cost.saturating_add(row.cost_nanos.0);
    }

    /// Adds another sum.
    pub fn merge(&mut self, other: &Self) {
        self.jobs = self.jobs.saturating_add(other.jobs);
        self.failed_jobs = self.failed_jobs.saturating_add(other.failed_jobs);
        self.units = self.units.saturating_add(other.units);
        self.reserved_gpu = self.reserved_gpu.saturating_add(other.reserved_gpu);
        self.on_demand_gpu = self.on_demand_gpu.saturating_add(other.on_demand_gpu);
        self.cost = self.cost.saturating_add(other.cost);
    }

    /// The sums as the API shows them.
    pub fn view(&self) -> UsageTotals {
        UsageTotals {
            jobs: self.jobs,
            failed_jobs: self.failed_jobs,
            units: from_nano(self.units),
            reserved_gpu_seconds: from_nano(self.reserved_gpu),
            on_demand_gpu_seconds: from_nano(self.on_demand_gpu),
            cost: from_nano(self.cost),
            cost_nanos: contract::Nanos(self.cost),
        }
    }
}

/// What one tenant's jobs of one model used in one region on one UTC day.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DailyUsage {
    /// Tenant id.
    pub tenant: String,
    /// Model id.
    pub model: String,
    /// Region id.
    pub region: String,
    /// `YYYY-MM-DD`, UTC.
    pub day: String,
    /// The sums.
    pub totals: Totals,
}

/// What one tenant's jobs used in one UTC month.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MonthlySpend {
    /// Tenant id.
    pub tenant: String,
    /// `YYYY-MM`, UTC.
    pub month: String,
    /// The sums.
    pub totals: Totals,
}

impl MonthlySpend {
    /// The form edges receive in their snapshot.
    pub fn to_wire(&self) -> TenantSpend {
        TenantSpend {
            tenant: self.tenant.clone(),
            month: self.month.clone(),
            cost: from_nano(self.totals.cost),
            gpu_seconds: from_nano(
                self.totals
                    .reserved_gpu
                    .saturating_add(self.totals.on_demand_gpu),
            ),
        }
    }
}

impl Versioned for DailyUsage {
    const KIND: &'static str = "daily usage";
    const VERSION: u32 = 1;
}

impl Versioned for MonthlySpend {
    const KIND: &'static str = "monthly spend";
    const VERSION: u32 = 1;
}

/// The last batch applied from one agent ledger.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LedgerMark {
    /// Region the ledger's jobs ran in.
    pub region: String,
    /// The ledger id.
    pub ledger: String,
    /// The number of the last batch applied.
    pub seq: u64,
    /// When it was applied, Unix ms.
    pub applied_at_ms: u64,
}

impl Versioned for LedgerMark {
    const KIND: &'static str = "usage ledger mark";
    const VERSION: u32 = 1;
}

/// A record of a usage batch that could not be counted, kept as it was sent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuarantinedRecord {
    /// Region of the batch.
    pub region: String,
    /// Ledger of the batch.
    pub ledger: String,
    /// The batch's number in its ledger.
    pub batch: u64,
    /// The record's position in the batch's `rows`, from 0.
    pub position: u32,
    /// Why, in one word: `malformed`, `tenant`, `model`, `hour_ms` or `failed_jobs` (the
    /// first problem's field).
    pub reason: String,
    /// Every problem of the record, each with its place and fix.
    pub problems: Vec<ConfigProblem>,
    /// The record as sent (a string holding the start of its JSON text when that is longer
    /// than [`QUARANTINE_EXCERPT`] bytes).
    pub record: serde_json::Value,
    /// When the batch was applied, Unix ms.
    pub quarantined_at_ms: u64,
}

impl Versioned for QuarantinedRecord {
    const KIND: &'static str = "quarantined usage record";
    const VERSION: u32 = 1;
}

/// The store key of a quarantined record.
pub fn quarantine_key(region: &str, ledger: &str, batch: u64, position: u32) -> String {
    format!("{QUARANTINE}{region}/{ledger}/{batch:020}/{position:03}")
}

/// The store key of a ledger's mark.
pub fn ledger_key(region: &str, ledger: &str) -> String {
    format!("{LEDGERS}{region}/{ledger}")
}

/// The store key of a daily aggregate.
pub fn daily_key(tenant: &str, day: &str, region: &str, model: &str) -> String {
    format!("{DAILY}{tenant}/{day}/{region}/{model}")
}

/// The store key of a tenant's spend in `month`.
pub fn spend_key(month: &str, tenant: &str) -> String {
    format!("{SPEND}{month}/{tenant}")
}

/// The prefix of every tenant's spend in `month`.
pub fn spend_prefix(month: &str) -> String {
    format!("{SPEND}{month}/")
}

/// The UTC calendar day (`YYYY-MM-DD`) of a Unix time in milliseconds.
pub fn day_of(unix_ms: u64) -> String {
    let days = i64::try_from(unix_ms / 86_400_000).unwrap_or(i64::MAX / 2);
    let (y, m, d) = civil_from_days(days);
    format!("{y:04}-{m:02}-{d:02}")
}

/// The UTC month (`YYYY-MM`) of a Unix time in milliseconds.
pub fn month_of(unix_ms: u64) -> String {
    let mut day = day_of(unix_ms);
    day.truncate(7);
    day
}

/// The current UTC month.
pub fn current_month() -> String {
    month_of(now_ms())
}

/// Now, in Unix milliseconds.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Year, month and day of the `days`-th day after 1970-01-01 (the proleptic Gregorian
/// calendar, after Howard Hinnant's `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (
        y,
        u32::try_from(m).unwrap_or(1),
        u32::try_from(d).unwrap_or(1),
    )
}

/// Whether `text` is a real calendar day written `YYYY-MM-DD`.
pub fn is_day(text: &str) -> bool {
    let bytes = text.as_bytes();
    if bytes.len() != 10 || bytes[4] != b'-' || bytes[7] != b'-' {
        return false;
    }
    let number =
        |range: std::ops::Range<usize>| text.get(range).and_then(|t| t.parse::<u32>().ok());
    match (number(0..4), number(5..7), number(8..10)) {
        (Some(y), Some(m), Some(d)) => {
            let leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
            let days = match m {
                1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
                4 | 6 | 9 | 11 => 30,
                2 if leap => 29,
                2 => 28,
                _ => return false,
            };
            (1..=days).contains(&d)
                && text
                    .bytes()
                    .enumerate()
                    .all(|(i, b)| i == 4 || i == 7 || b.is_ascii_digit())
        }
        _ => false,
    }
}

/// Whether `text` is a month written `YYYY-MM`.
pub fn is_month(text: &str) -> bool {
    is_day(&format!("{text}-01"))
}

/// Applies a usage batch exactly once: adds its rows to their daily totals and their
/// tenants' monthly spend and marks its number applied, all in one transaction; a batch
/// whose number was applied before changes nothing (`applied: false`). The batch must
/// already be checked (ids, hours, at most `MAX_USAGE_ROWS` rows).
pub async fn ingest(store: &AnyStore, batch: &UsageBatch) -> Result<UsageReceipt, StoreError> {
    ingest_with_quarantine(store, batch, &[]).await
}

/// [`ingest`], also keeping `quarantined` — the batch's records that could not be counted
/// — in the same transaction, so they are kept exactly once with the batch.
pub async fn ingest_with_quarantine(
    store: &AnyStore,
    batch: &UsageBatch,
    quarantined: &[QuarantinedRecord],
) -> Result<UsageReceipt, StoreError> {
    let key = ledger_key(&batch.region, &batch.ledger);
    for _ in 0..ATTEMPTS {
        let (mark, mark_revision) = read::<LedgerMark>(store, &key).await?;
        let last = mark.map_or(0, |m| m.seq);
        if batch.seq <= last {
            return Ok(UsageReceipt {
                seq: batch.seq,
                applied: false,
            });
        }
        if batch.seq > last + 1 {
            tracing::warn!(
                region = %batch.region,
                ledger = %batch.ledger,
                last,
                seq = batch.seq,
                "a usage ledger skipped batch numbers (was the store restored from an older backup?); applying this batch"
            );
        }
        let mut txn = batch_transaction(store, batch).await?;
        let applied_at_ms = now_ms();
        for record in quarantined {
            let record = QuarantinedRecord {
                quarantined_at_ms: applied_at_ms,
                ..record.clone()
            };
            let qkey = quarantine_key(
                &record.region,
                &record.ledger,
                record.batch,
                record.position,
            );
            txn.puts
                .push((qkey, versioned::encode(&record).map_err(corrupt)?));
        }
        let mark = LedgerMark {
            region: batch.region.clone(),
            ledger: batch.ledger.clone(),
            seq: batch.seq,
            applied_at_ms,
        };
        txn.compares.push((key.clone(), mark_revision));
        txn.puts
            .push((key.clone(), versioned::encode(&mark).map_err(corrupt)?));
        match store.transact(txn).await {
            Ok(_) => {
                return Ok(UsageReceipt {
                    seq: batch.seq,
                    applied: true,
                });
            }
            // The mark or a total changed since it was read: read again.
            Err(StoreError::Conflict { .. }) => continue,
            Err(e) => return Err(e),
        }
    }
    Err(StoreError::Unavailable(
        "usage totals kept changing under concurrent batches; resend the batch".into(),
    ))
}

/// The writes that add `batch`'s rows to their totals, compared with the revisions the
/// totals were read at.
async fn batch_transaction(
    store: &AnyStore,
    batch: &UsageBatch,
) -> Result<Transaction, StoreError> {
    let mut daily: BTreeMap<String, DailyUsage> = BTreeMap::new();
    let mut monthly: BTreeMap<String, MonthlySpend> = BTreeMap::new();
    let mut txn = Transaction::default();
    for row in &batch.rows {
        let day = day_of(row.hour_ms);
        let month = month_of(row.hour_ms);
        let dkey = daily_key(&row.tenant, &day, &batch.region, &row.model);
        if !daily.contains_key(&dkey) {
            let (current, revision) = read::<DailyUsage>(store, &dkey).await?;
            txn.compares.push((dkey.clone(), revision));
            let current = current.unwrap_or_else(|| DailyUsage {
                tenant: row.tenant.clone(),
                model: row.model.clone(),
                region: batch.region.clone(),
                day: day.clone(),
                totals: Totals::default(),
            });
            daily.insert(dkey.clone(), current);
        }
        if let Some(aggregate) = daily.get_mut(&dkey) {
            aggregate.totals.add(row);
        }
        let mkey = spend_key(&month, &row.tenant);
        if !monthly.contains_key(&mkey) {
            let (current, revision) = read::<MonthlySpend>(store, &mkey).await?;
            txn.compares.push((mkey.clone(), revision));
            let current = current.unwrap_or_else(|| MonthlySpend {
                tenant: row.tenant.clone(),
                month: month.clone(),
                totals: Totals::default(),
            });
            monthly.insert(mkey.clone(), current);
        }
        if let Some(spend) = monthly.get_mut(&mkey) {
            spend.totals.add(row);
        }
    }
    for (key, aggregate) in daily {
        txn.puts
            .push((key, versioned::encode(&aggregate).map_err(corrupt)?));
    }
    for (key, spend) in monthly {
        txn.puts
            .push((key, versioned::encode(&spend).map_err(corrupt)?));
    }
    Ok(txn)
}

/// A record and its mod revision (0 and `None` when absent).
async fn read<T: Versioned>(
    store: &AnyStore,
    key: &str,
) -> Result<(Option<T>, Revision), StoreError> {
    match store.get(key).await? {
        Some(kv) => Ok((
            Some(versioned::decode(&kv.value).map_err(corrupt)?),
            kv.mod_revision,
        )),
        None => Ok((None, 0)),
    }
}

fn corrupt(e: VersionError) -> StoreError {
    StoreError::Corrupt(e.to_string())
}

/// Every daily aggregate of `tenant` (all tenants for `None`), with the revision read at.
pub async fn daily(
    store: &AnyStore,
    tenant: Option<&str>,
) -> Result<(Vec<DailyUsage>, Revision), StoreError> {
    let prefix = match tenant {
        Some(tenant) => format!("{DAILY}{tenant}/"),
        None => DAILY.to_owned(),
    };
    let listing = store.list(&prefix).await?;
    let rows = listing
        .kvs
        .iter()
        .map(|kv| versioned::decode::<DailyUsage>(&kv.value).map_err(corrupt))
        .collect::<Result<Vec<_>, _>>()?;
    Ok((rows, listing.revision))
}

/// Every quarantined record (of `region` only, when given), in the order of region,
/// ledger, batch and position, with the revision read at.
pub async fn quarantined(
    store: &AnyStore,
    region: Option<&str>,
) -> Result<(Vec<QuarantinedRecord>, Revision), StoreError> {
    let prefix = match region {
        Some(region) => format!("{QUARANTINE}{region}/"),
        None => QUARANTINE.to_owned(),
    };
    let listing = store.list(&prefix).await?;
    let records = listing
        .kvs
        .iter()
        .map(|kv| versioned::decode::<QuarantinedRecord>(&kv.value).map_err(corrupt))
        .collect::<Result<Vec<_>, _>>()?;
    Ok((records, listing.revision))
}

/// A tenant's spend in `month` (zero when nothing was recorded).
pub async fn spend(
    store: &AnyStore,
    tenant: &str,
    month: &str,
) -> Result<MonthlySpend, StoreError> {
    let (current, _) = read::<MonthlySpend>(store, &spend_key(month, tenant)).await?;
    Ok(current.unwrap_or_else(|| MonthlySpend {
        tenant: tenant.to_owned(),
        month: month.to_owned(),
        totals: Totals::default(),
    }))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::records::ROOT;

    #[test]
    fn days_and_months_are_utc_calendar_dates() {
        assert_eq!(day_of(0), "1970-01-01");
        // 2024-02-29T23:59:59.999Z and the next millisecond.
        assert_eq!(day_of(1_709_251_199_999), "2024-02-29");
        assert_eq!(day_of(1_709_251_200_000), "2024-03-01");
        assert_eq!(month_of(1_709_251_200_000), "2024-03");
        assert_eq!(day_of(4_102_444_800_000), "2100-01-01");
        assert!(is_day("2024-02-29"));
        assert!(!is_day("2023-02-29"));
        assert!(!is_day("2024-13-01"));
        assert!(!is_day("2024-1-01"));
        assert!(!is_day("2024-01-+1"));
        assert!(is_month("2024-12"));
        assert!(!is_month("2024-00"));
        assert!(SPEND.starts_with(ROOT) && !DAILY.starts_with(ROOT) && !LEDGERS.starts_with(ROOT));
    }

    #[test]
    fn totals_are_exact_whatever_the_order() {
        let row = |cost: u64, capacity, failed| UsageAggregate {
            tenant: "t".into(),
            model: "m/x".into(),
            capacity,
            hour_ms: 0,
            jobs: 1,
            failed_jobs: failed,
            units_nanos: contract::Nanos(100_000_000),
            gpu_nanos: contract::Nanos(700_000_000),
            cost_nanos: contract::Nanos(cost),
        };
        let rows = [
            row(100_000_000, Capacity::Reserved, 0),
            row(200_000_000, Capacity::OnDemand, 0),
            row(1, Capacity::Reserved, 0),
            row(0, Capacity::OnDemand, 1),
            row(300_000_000, Capacity::OnDemand, 0),
        ];
        let mut forward = Totals::default();
        rows.iter().for_each(|r| forward.add(r));
        let mut backward = Totals::default();
        rows.iter().rev().for_each(|r| backward.add(r));
        assert_eq!(forward, backward);
        assert_eq!(forward.cost, 600_000_001);
        assert_eq!((forward.jobs, forward.failed_jobs), (5, 1));
        assert_eq!(
            (forward.reserved_gpu, forward.on_demand_gpu),
            (1_400_000_000, 2_100_000_000)
        );
        let view = forward.view();
        assert_eq!(view.cost_nanos, contract::Nanos(600_000_001));
        assert!((view.cost - 0.600_000_001).abs() < 1e-15);
    }
}
