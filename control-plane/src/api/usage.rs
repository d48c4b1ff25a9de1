//! Usage: region agents send numbered batches of hourly aggregates; the admin API reads the
//! totals per group of days, tenants' monthly spend, and — from the region that keeps
//! them — the per-job records.
//!
//! | call | does |
//! | --- | --- |
//! | `POST /agent/v1/usage` (agent token) | applies a [`UsageBatch`] exactly once (a batch number applied before answers `applied: false` and changes nothing) |
//! | `GET /admin/v1/usage?tenant=&model=&region=&from=&to=&group_by=` | totals per group over UTC days `from`–`to` (inclusive); `group_by` is a comma list of `tenant`, `model`, `region`, `day` (default all four) |
//! | `GET /admin/v1/usage/records?region=&instance=&tenant=&model=&from_ms=&to_ms=&cursor=&limit=` | one page of the per-job records the region's agents keep, read from them: each instance in turn (or only `instance`) |
//! | `GET /admin/v1/usage/quarantine?region=` | the records agents sent that could not be counted, each with its problems |
//! | `GET /admin/v1/tenants/{id}/spend?month=YYYY-MM` | a tenant's spend in a UTC month (default the current one), next to its budgets |
//!
//! A batch's envelope is checked before anything is written (422 naming the field; 400
//! `unsupported_schema` for a schema major version this build does not read, or a body that
//! is not a batch), so an agent can resend it unchanged after any failure. A record that
//! cannot be counted — an id that is not one, an hour that does not start one, more failed
//! jobs than jobs, not an aggregate at all — is quarantined, and the batch's other records
//! are counted: one bad record never stops a region's billing. Rows for tenants, models or
//! regions since removed from the catalog are still kept: the work happened and is billed.
//! How totals stay exact is described in [`crate::usage`].

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use contract::{ConfigProblem, ConfigProblems, ModelId, RegionId, Schema, TenantId};
use control_plane_client::wire::{
    Listed, MAX_USAGE_ROWS, SpendReport, UsageAggregate, UsageBatch, UsageReceipt, UsageReport,
    UsageRow,
};
use policy::TenantSpec;
use serde::Deserialize;

use super::{ApiError, AppState, Routes, WireBody};
use crate::records::CatalogRecord;
use crate::usage::{self, QuarantinedRecord, Totals};

/// An hour in Unix ms.
const HOUR_MS: u64 = 3_600_000;

/// The agent's ingestion route (authentication is added by the router).
pub fn agent_routes() -> Routes {
    Routes::new().post("/agent/v1/usage", ingest)
}

/// The admin's reading routes (authentication is added by the router).
pub fn admin_routes() -> Routes {
    Routes::new()
        .get("/admin/v1/usage", report)
        .get("/admin/v1/usage/records", super::usage_records::records)
        .get("/admin/v1/usage/quarantine", quarantine)
        .get("/admin/v1/tenants/{tenant}/spend", tenant_spend)
}

fn is_ledger_id(id: &str) -> bool {
    id.len() == 32
        && id
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// A usage batch as sent, its records not yet read: a record that is not an aggregate is
/// quarantined, while a malformed envelope refuses the batch.
#[derive(Debug, Deserialize)]
struct SentBatch {
    schema: Schema,
    region: String,
    ledger: String,
    seq: u64,
    rows: Vec<serde_json::Value>,
}

/// Every problem of a batch's envelope (schema, region, ledger, number, row count), as a
/// 400 or 422; `Ok` when its records may be read.
fn check_envelope(batch: &SentBatch) -> Result<(), ApiError> {
    contract::schema::USAGE_BATCH.accepts("usage batch", batch.schema)?;
    let mut problems = ConfigProblems::new();
    if let Err(e) = RegionId::new(&batch.region) {
        problems.add("region", e.to_string(), "send the region the jobs ran in");
    }
    if !is_ledger_id(&batch.ledger) {
        problems.add(
            "ledger",
            format!("{:?} is not a ledger id", batch.ledger),
            "send the agent's ledger id: 32 lowercase hex digits",
        );
    }
    if batch.seq == 0 {
        problems.add("seq", "is 0", "number batches from 1");
    }
    if batch.rows.len() > MAX_USAGE_ROWS {
        problems.add(
            "rows",
            format!("{} rows in one batch", batch.rows.len()),
            format!("send at most {MAX_USAGE_ROWS} rows per batch"),
        );
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(ApiError::Invalid {
            message: format!(
                "{} problem(s) in the usage batch; nothing was applied",
                problems.len()
            ),
            details: problems.into_vec(),
        })
    }
}

/// Every problem of one record, each placed at `rows[i].field`.
fn row_problems(i: usize, row: &UsageAggregate) -> ConfigProblems {
    let mut problems = ConfigProblems::new();
    let ids = [
        ("tenant", TenantId::new(&row.tenant).err()),
        ("model", ModelId::new(&row.model).err()),
    ];
    for (field, error) in ids {
        if let Some(error) = error {
            problems.add(
                format!("rows[{i}].{field}"),
                error.to_string(),
                "send the id the jobs ran under",
            );
        }
    }
    if !row.hour_ms.is_multiple_of(HOUR_MS) {
        problems.add(
            format!("rows[{i}].hour_ms"),
            format!("{} is not the start of a UTC hour", row.hour_ms),
            "send a multiple of 3600000",
        );
    }
    if row.failed_jobs > row.jobs {
        problems.add(
            format!("rows[{i}].failed_jobs"),
            format!("{} failed of {} jobs", row.failed_jobs, row.jobs),
            "count failed jobs among the row's jobs",
        );
    }
    problems
}

/// The first `limit` bytes of `text` (cut at a character boundary).
fn excerpt(text: &str, limit: usize) -> &str {
    if text.len() <= limit {
        return text;
    }
    let mut end = limit;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// The record as kept in quarantine: whole when its JSON text is short, else the start of
/// that text.
fn kept_record(raw: serde_json::Value) -> serde_json::Value {
    let text = raw.to_string();
    if text.len() <= usage::QUARANTINE_EXCERPT {
        return raw;
    }
    serde_json::Value::String(excerpt(&text, usage::QUARANTINE_EXCERPT).to_owned())
}

/// A record's problems as kept in quarantine: a problem can quote the value it found, so
/// each is cut to a few hundred bytes and a batch's writes stay small.
fn kept_problems(problems: ConfigProblems) -> Vec<ConfigProblem> {
    const LIMIT: usize = 512;
    problems
        .into_vec()
        .into_iter()
        .map(|mut p| {
            if p.problem.len() > LIMIT {
                p.problem = format!("{}…", excerpt(&p.problem, LIMIT));
            }
            p
        })
        .collect()
}

/// Splits a checked batch into the records that can be counted (as a [`UsageBatch`]) and
/// those that go to quarantine.
fn sort_records(sent: SentBatch) -> (UsageBatch, Vec<QuarantinedRecord>) {
    let mut rows = Vec::with_capacity(sent.rows.len());
    let mut quarantined = Vec::new();
    for (i, raw) in sent.rows.into_iter().enumerate() {
        let problems = match UsageAggregate::deserialize(&raw) {
            Ok(row) => {
                let problems = row_problems(i, &row);
                if problems.is_empty() {
                    rows.push(row);
                    continue;
                }
                problems
            }
            Err(e) => {
                let mut problems = ConfigProblems::new();
                problems.add(
                    format!("rows[{i}]"),
                    format!("is not a usage aggregate: {e}"),
                    "send the fields of an hourly aggregate",
                );
                problems
            }
        };
        let problems = kept_problems(problems);
        let reason = problems
            .first()
            .and_then(|p| p.place.rsplit_once('.').map(|(_, field)| field.to_owned()))
            .unwrap_or_else(|| "malformed".to_owned());
        quarantined.push(QuarantinedRecord {
            region: sent.region.clone(),
            ledger: sent.ledger.clone(),
            batch: sent.seq,
            position: u32::try_from(i).unwrap_or(u32::MAX),
            reason,
            problems,
            record: kept_record(raw),
            quarantined_at_ms: 0,
        });
    }
    let batch = UsageBatch {
        schema: sent.schema,
        region: sent.region,
        ledger: sent.ledger,
        seq: sent.seq,
        rows,
    };
    (batch, quarantined)
}

async fn ingest(
    State(state): State<AppState>,
    WireBody(sent): WireBody<SentBatch>,
) -> Result<Json<UsageReceipt>, ApiError> {
    check_envelope(&sent)?;
    let (batch, quarantined) = sort_records(sent);
    // Batches of this control plane take turns, so they do not make each other retry;
    // the store's compare-and-set keeps several control planes exact.
    let _turn = state.usage_writes().lock().await;
    let receipt = usage::ingest_with_quarantine(state.store(), &batch, &quarantined).await?;
    if receipt.applied {
        for record in &quarantined {
            state
                .metrics()
                .usage_quarantined
                .with_label_values(&[record.region.as_str(), record.reason.as_str()])
                .inc();
            let problem = record.problems.first().map(ToString::to_string);
            tracing::warn!(
                region = %record.region,
                ledger = %record.ledger,
                batch = record.batch,
                position = record.position,
                reason = %record.reason,
                problem = problem.as_deref().unwrap_or_default(),
                "a usage record cannot be counted; kept in quarantine (GET /admin/v1/usage/quarantine), the batch's other records are counted"
            );
        }
    }
    Ok(Json(receipt))
}

/// Query of the quarantine listing.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct QuarantineQuery {
    region: Option<String>,
}

/// The usage records set aside because they could not be counted.
async fn quarantine(
    State(state): State<AppState>,
    query: Result<Query<QuarantineQuery>, QueryRejection>,
) -> Result<Json<Listed<QuarantinedRecord>>, ApiError> {
    let Query(query) =
        query.map_err(|e| ApiError::BadRequest(format!("{}; use ?region=<id>", e.body_text())))?;
    if let Some(region) = &query.region
        && RegionId::new(region).is_err()
    {
        return Err(ApiError::BadRequest(format!(
            "region {region:?} is not a region id"
        )));
    }
    let (items, revision) = usage::quarantined(state.store(), query.region.as_deref()).await?;
    Ok(Json(Listed { revision, items }))
}

fn matches(filter: Option<&str>, value: &str) -> bool {
    filter.is_none_or(|f| f == value)
}

/// Query of a usage report.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ReportQuery {
    tenant: Option<String>,
    model: Option<String>,
    region: Option<String>,
    from: Option<String>,
    to: Option<String>,
    group_by: Option<String>,
}

/// What a report's rows can be grouped by, in their order in a row.
const DIMENSIONS: [&str; 4] = ["tenant", "model", "region", "day"];

fn check_day(name: &str, day: Option<&str>) -> Result<(), ApiError> {
    match day {
        Some(day) if !usage::is_day(day) => Err(ApiError::BadRequest(format!(
            "{name}={day:?} is not a day: write it YYYY-MM-DD (UTC), e.g. 2025-03-01"
        ))),
        _ => Ok(()),
    }
}

fn group_by(text: Option<&str>) -> Result<Vec<&'static str>, ApiError> {
    let Some(text) = text else {
        return Ok(DIMENSIONS.to_vec());
    };
    let mut chosen = Vec::new();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let Some(dimension) = DIMENSIONS.iter().find(|d| **d == part) else {
            return Err(ApiError::BadRequest(format!(
                "group_by {part:?} is not a dimension: use a comma list of tenant, model, region, day"
            )));
        };
        chosen.push(*dimension);
    }
    // Rows are keyed in a fixed order whatever order they were asked in.
    Ok(DIMENSIONS
        .into_iter()
        .filter(|d| chosen.contains(d))
        .collect())
}

async fn report(
    State(state): State<AppState>,
    query: Result<Query<ReportQuery>, QueryRejection>,
) -> Result<Json<UsageReport>, ApiError> {
    let Query(query) = query.map_err(|e| {
        ApiError::BadRequest(format!(
            "{}; use ?tenant=&model=&region=&from=YYYY-MM-DD&to=YYYY-MM-DD&group_by=tenant,model,region,day",
            e.body_text()
        ))
    })?;
    check_day("from", query.from.as_deref())?;
    check_day("to", query.to.as_deref())?;
    if let (Some(from), Some(to)) = (&query.from, &query.to)
        && from > to
    {
        return Err(ApiError::BadRequest(format!(
            "from {from} is after to {to}: give the first day, then the last"
        )));
    }
    let dimensions = group_by(query.group_by.as_deref())?;
    if let Some(tenant) = &query.tenant
        && TenantId::new(tenant).is_err()
    {
        return Err(ApiError::BadRequest(format!(
            "tenant {tenant:?} is not a tenant id"
        )));
    }
    let (aggregates, revision) = usage::daily(state.store(), query.tenant.as_deref()).await?;
    let mut groups: BTreeMap<[Option<String>; 4], Totals> = BTreeMap::new();
    let mut total = Totals::default();
    for a in &aggregates {
        let in_range = query.from.as_deref().is_none_or(|f| a.day.as_str() >= f)
            && query.to.as_deref().is_none_or(|t| a.day.as_str() <= t);
        if !(in_range
            && matches(query.model.as_deref(), &a.model)
            && matches(query.region.as_deref(), &a.region))
        {
            continue;
        }
        let values = [&a.tenant, &a.model, &a.region, &a.day];
        let key = std::array::from_fn(|i| {
            dimensions
                .contains(&DIMENSIONS[i])
                .then(|| values[i].clone())
        });
        groups.entry(key).or_default().merge(&a.totals);
        total.merge(&a.totals);
    }
    let rows = groups
        .into_iter()
        .map(|([tenant, model, region, day], totals)| UsageRow {
            tenant,
            model,
            region,
            day,
            usage: totals.view(),
        })
        .collect();
    Ok(Json(UsageReport {
        revision,
        from: query.from,
        to: query.to,
        group_by: dimensions.iter().map(|d| (*d).to_owned()).collect(),
        rows,
        total: total.view(),
    }))
}

/// Query of a spend request.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SpendQuery {
    month: Option<String>,
}

async fn tenant_spend(
    State(state): State<AppState>,
    Path(tenant): Path<String>,
    query: Result<Query<SpendQuery>, QueryRejection>,
) -> Result<Json<SpendReport>, ApiError> {
    let Query(query) = query
        .map_err(|e| ApiError::BadRequest(format!("{}; use ?month=YYYY-MM", e.body_text())))?;
    let month = match query.month {
        Some(month) if !usage::is_month(&month) => {
            return Err(ApiError::BadRequest(format!(
                "month={month:?} is not a month: write it YYYY-MM (UTC), e.g. 2025-03"
            )));
        }
        Some(month) => month,
        None => usage::current_month(),
    };
    if TenantId::new(&tenant).is_err() {
        return Err(ApiError::NotFound {
            what: format!("tenant {tenant}"),
        });
    }
    let spec = state
        .registry()
        .get::<TenantSpec>(&TenantSpec::key(&tenant))
        .await?
        .map(|(spec, _)| spec);
    let spend = usage::spend(state.store(), &tenant, &month).await?;
    if spec.is_none() && spend.totals.jobs == 0 {
        // Neither in the catalog nor ever billed that month.
        return Err(ApiError::NotFound {
            what: format!("tenant {tenant}"),
        });
    }
    Ok(Json(SpendReport {
        tenant,
        month,
        usage: spend.totals.view(),
        monthly_budget: spec.as_ref().and_then(|s| s.quotas.monthly_budget),
        monthly_gpu_seconds: spec.as_ref().and_then(|s| s.quotas.monthly_gpu_seconds),
    }))
}
