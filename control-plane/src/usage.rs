//! Usage accounting: each job's record stored once, and running totals per tenant, model,
//! region and UTC day, and per tenant and UTC month, that always equal what the stored
//! records sum to.
//!
//! Agents deliver records at least once. A record, and every total it adds to, are written
//! in one store [`Transaction`] that also compares the record's key with "absent" and each
//! total's key with the mod revision it was read at. So a record is counted exactly when it
//! is stored: a redelivery finds its key present and changes nothing, and two batches that
//! race on one total cannot both add to the value they read — the loser reads again and
//! retries. Sums are kept in integer billionths ([`Totals`]), so they are exact and do not
//! depend on the order records arrive in.
//!
//! ```text
//! /meridian/usage/v1/<job id>                              UsageRecord (the dedup marker)
//! /meridian/usage-daily/v1/<tenant>/<day>/<region>/<model> DailyUsage
//! /meridian/v1/spend/<month>/<tenant>                      MonthlySpend (in edges' snapshot)
//! ```

use std::collections::BTreeMap;

use control_plane_client::wire::{Capacity, TenantSpend, UsageReceipt, UsageRecord, UsageTotals};
use serde::{Deserialize, Serialize};

use crate::records::usage_key;
use crate::store::versioned::{self, VersionError, Versioned};
use crate::store::{AnyStore, Revision, Store, StoreError, Transaction};

/// The prefix of daily aggregates.
pub const DAILY: &str = "/meridian/usage-daily/v1/";
/// The prefix of monthly spend, inside the snapshot root so edges receive it.
pub const SPEND: &str = "/meridian/v1/spend/";

/// Records per store transaction: each adds up to three compares (its key, its day, its
/// month), which keeps a transaction under etcd's default limit of 128 operations.
const CHUNK: usize = 32;
/// How often a chunk is retried when concurrent writers changed its totals meanwhile.
const ATTEMPTS: usize = 20;
/// Billionths per unit.
const NANO: f64 = 1e9;

/// Sums in billionths of a unit, exact and independent of the order they were added in.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Totals {
    /// Jobs counted.
    pub jobs: u64,
    /// Billionths of units of work.
    pub units: u64,
    /// Billionths of reserved GPU-seconds.
    pub reserved_gpu: u64,
    /// Billionths of on-demand GPU-seconds.
    pub on_demand_gpu: u64,
    /// Billionths of the currency.
    pub cost: u64,
}

/// `value` in billionths, rounded (ingestion only accepts finite values from 0 to
/// [`MAX_VALUE`]).
pub fn to_nano(value: f64) -> u64 {
    let nano = (value * NANO).round();
    if nano.is_finite() && nano > 0.0 {
        // Saturating: the float-to-int cast clamps values above u64::MAX.
        nano as u64
    } else {
        0
    }
}

/// Largest units, GPU-seconds or cost one record may carry (a year of GPU time, or a
/// billion of the currency), so no sum of realistic records overflows.
pub const MAX_VALUE: f64 = 1e9;

#[allow(clippy::cast_precision_loss)]
fn from_nano(nano: u64) -> f64 {
    nano as f64 / NANO
}

impl Totals {
    /// Adds one job's record.
    pub fn add(&mut self, record: &UsageRecord) {
        self.jobs = self.jobs.saturating_add(1);
        self.units = self.units.saturating_add(to_nano(record.units));
        let gpu = to_nano(record.gpu_seconds);
        match record.capacity {
            Capacity::Reserved => self.reserved_gpu = self.reserved_gpu.saturating_add(gpu),
            Capacity::OnDemand => self.on_demand_gpu = self.on_demand_gpu.saturating_add(gpu),
        }
        self.cost = self.cost.saturating_add(to_nano(record.cost));
    }

    /// Adds another sum.
    pub fn merge(&mut self, other: &Self) {
        self.jobs = self.jobs.saturating_add(other.jobs);
        self.units = self.units.saturating_add(other.units);
        self.reserved_gpu = self.reserved_gpu.saturating_add(other.reserved_gpu);
        self.on_demand_gpu = self.on_demand_gpu.saturating_add(other.on_demand_gpu);
        self.cost = self.cost.saturating_add(other.cost);
    }

    /// The sums as the API shows them.
    pub fn view(&self) -> UsageTotals {
        UsageTotals {
            jobs: self.jobs,
            units: from_nano(self.units),
            reserved_gpu_seconds: from_nano(self.reserved_gpu),
            on_demand_gpu_seconds: from_nano(self.on_demand_gpu),
            cost: from_nano(self.cost),
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

/// Stores a batch's new records and adds them to their totals; records whose job id is
/// stored already (or repeats within the batch) are counted as duplicates and change
/// nothing. Records are written in chunks, each atomically with its totals; when a later
/// chunk fails, the earlier ones stay stored and a resent batch finds them as duplicates.
pub async fn ingest(store: &AnyStore, records: &[UsageRecord]) -> Result<UsageReceipt, StoreError> {
    let mut receipt = UsageReceipt {
        accepted: 0,
        duplicates: 0,
    };
    let mut seen = std::collections::HashSet::new();
    let mut unique = Vec::with_capacity(records.len());
    for record in records {
        if seen.insert(record.job_id.as_str()) {
            unique.push(record);
        } else {
            receipt.duplicates += 1;
        }
    }
    for chunk in unique.chunks(CHUNK) {
        let (accepted, duplicates) = ingest_chunk(store, chunk).await?;
        receipt.accepted += accepted;
        receipt.duplicates += duplicates;
    }
    Ok(receipt)
}

/// One chunk, retried from a fresh read while concurrent writers change what it read.
async fn ingest_chunk(
    store: &AnyStore,
    chunk: &[&UsageRecord],
) -> Result<(usize, usize), StoreError> {
    for _ in 0..ATTEMPTS {
        let mut fresh = Vec::with_capacity(chunk.len());
        for record in chunk {
            if store.get(&usage_key(&record.job_id)).await?.is_none() {
                fresh.push(*record);
            }
        }
        let duplicates = chunk.len() - fresh.len();
        if fresh.is_empty() {
            return Ok((0, duplicates));
        }
        let txn = chunk_transaction(store, &fresh).await?;
        match store.transact(txn).await {
            Ok(_) => return Ok((fresh.len(), duplicates)),
            // A record or a total changed since it was read: read again.
            Err(StoreError::Conflict { .. }) => continue,
            Err(e) => return Err(e),
        }
    }
    Err(StoreError::Unavailable(
        "usage totals kept changing under concurrent batches; resend the batch".into(),
    ))
}

/// The transaction that stores `fresh` records and their updated totals, compared with
/// the revisions the totals were read at.
async fn chunk_transaction(
    store: &AnyStore,
    fresh: &[&UsageRecord],
) -> Result<Transaction, StoreError> {
    let mut daily: BTreeMap<String, DailyUsage> = BTreeMap::new();
    let mut monthly: BTreeMap<String, MonthlySpend> = BTreeMap::new();
    let mut txn = Transaction::default();
    for record in fresh {
        let key = usage_key(&record.job_id);
        txn.compares.push((key.clone(), 0));
        txn.puts
            .push((key, versioned::encode(*record).map_err(corrupt)?));
        let day = day_of(record.finished_at_ms);
        let month = month_of(record.finished_at_ms);
        let dkey = daily_key(&record.tenant, &day, &record.region, &record.model);
        if !daily.contains_key(&dkey) {
            let (current, revision) = read::<DailyUsage>(store, &dkey).await?;
            txn.compares.push((dkey.clone(), revision));
            let current = current.unwrap_or_else(|| DailyUsage {
                tenant: record.tenant.clone(),
                model: record.model.clone(),
                region: record.region.clone(),
                day: day.clone(),
                totals: Totals::default(),
            });
            daily.insert(dkey.clone(), current);
        }
        if let Some(aggregate) = daily.get_mut(&dkey) {
            aggregate.totals.add(record);
        }
        let mkey = spend_key(&month, &record.tenant);
        if !monthly.contains_key(&mkey) {
            let (current, revision) = read::<MonthlySpend>(store, &mkey).await?;
            txn.compares.push((mkey.clone(), revision));
            let current = current.unwrap_or_else(|| MonthlySpend {
                tenant: record.tenant.clone(),
                month: month.clone(),
                totals: Totals::default(),
            });
            monthly.insert(mkey.clone(), current);
        }
        if let Some(spend) = monthly.get_mut(&mkey) {
            spend.totals.add(record);
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
        assert!(SPEND.starts_with(ROOT) && !DAILY.starts_with(ROOT));
    }

    #[test]
    fn totals_are_exact_whatever_the_order() {
        let record = |cost: f64, capacity| UsageRecord {
            job_id: "j".into(),
            tenant: "t".into(),
            model: "m/x".into(),
            region: "r".into(),
            units: 0.1,
            gpu_seconds: 0.7,
            capacity,
            cost,
            finished_at_ms: 0,
        };
        let records = [
            record(0.1, Capacity::Reserved),
            record(0.2, Capacity::OnDemand),
            record(1e-9, Capacity::Reserved),
            record(0.3, Capacity::OnDemand),
        ];
        let mut forward = Totals::default();
        records.iter().for_each(|r| forward.add(r));
        let mut backward = Totals::default();
        records.iter().rev().for_each(|r| backward.add(r));
        assert_eq!(forward, backward);
        assert_eq!(forward.cost, 600_000_001);
        assert_eq!(
            (forward.reserved_gpu, forward.on_demand_gpu),
            (1_400_000_000, 1_400_000_000)
        );
        let view = forward.view();
        assert_eq!(view.jobs, 4);
        assert!((view.cost - 0.600_000_001).abs() < 1e-15);
        assert_eq!(to_nano(f64::NAN), 0);
        assert_eq!(to_nano(-1.0), 0);
    }
}
