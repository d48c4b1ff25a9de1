//! Usage: region agents report what each finished job used; the admin API reads the
//! records, their totals per group of days, and tenants' monthly spend.
//!
//! | call | does |
//! | --- | --- |
//! | `POST /agent/v1/usage` (agent token) | stores a batch of [`UsageRecord`]s and adds them to the totals; a job id seen before is a redelivery and is ignored |
//! | `GET /admin/v1/usage?tenant=&model=&region=&from=&to=&group_by=` | totals per group over UTC days `from`–`to` (inclusive); `group_by` is a comma list of `tenant`, `model`, `region`, `day` (default all four) |
//! | `GET /admin/v1/usage/records?tenant=&region=&model=` | the stored records themselves |
//! | `GET /admin/v1/tenants/{id}/spend?month=YYYY-MM` | a tenant's spend in a UTC month (default the current one), next to its budgets |
//!
//! A batch is checked whole before anything is written (422 naming `records[i].field`), so
//! an agent can resend it unchanged after any failure. Records for tenants, models or
//! regions since removed from the catalog are still kept: the work happened and is billed.
//! How records and totals stay consistent is described in [`crate::usage`].

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use control_plane_client::wire::{
    ErrorDetail, Listed, SpendReport, UsageBatch, UsageReceipt, UsageRecord, UsageReport, UsageRow,
};
use policy::{ModelId, RegionId, TenantId, TenantSpec};
use serde::Deserialize;

use super::{ApiError, AppState, JsonBody, Routes};
use crate::records::{CatalogRecord, USAGE};
use crate::store::Store;
use crate::store::versioned;
use crate::usage::{self, MAX_VALUE, Totals};

/// Most records one batch may hold.
pub const MAX_BATCH: usize = 1000;

/// The agent's ingestion route (authentication is added by the router).
pub fn agent_routes() -> Routes {
    Routes::new().post("/agent/v1/usage", ingest)
}

/// The admin's reading routes (authentication is added by the router).
pub fn admin_routes() -> Routes {
    Routes::new()
        .get("/admin/v1/usage", report)
        .get("/admin/v1/usage/records", list)
        .get("/admin/v1/tenants/{tenant}/spend", tenant_spend)
}

fn is_job_id(id: &str) -> bool {
    (1..=128).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// Every problem of a batch, as a 422; `Ok` when it may be stored.
fn check_batch(batch: &UsageBatch) -> Result<(), ApiError> {
    let mut details = Vec::new();
    let mut problem = |path: String, problem: String, fix: &str| {
        details.push(ErrorDetail {
            path,
            problem,
            fix: fix.to_owned(),
        });
    };
    if batch.records.len() > MAX_BATCH {
        problem(
            "records".into(),
            format!("{} records in one batch", batch.records.len()),
            &format!("send at most {MAX_BATCH} records per batch"),
        );
    }
    for (i, r) in batch.records.iter().enumerate() {
        if !is_job_id(&r.job_id) {
            problem(
                format!("records[{i}].job_id"),
                format!("{:?} is not a job id", r.job_id),
                "use the job's request id: 1–128 characters of A–Z, a–z, 0–9, '.', '_' and '-'",
            );
        }
        let ids = [
            ("tenant", TenantId::new(&r.tenant).err()),
            ("model", ModelId::new(&r.model).err()),
            ("region", RegionId::new(&r.region).err()),
        ];
        for (field, error) in ids {
            if let Some(error) = error {
                problem(
                    format!("records[{i}].{field}"),
                    error.to_string(),
                    "send the id the job ran under",
                );
            }
        }
        for (field, value) in [
            ("units", r.units),
            ("gpu_seconds", r.gpu_seconds),
            ("cost", r.cost),
        ] {
            if !(value.is_finite() && (0.0..=MAX_VALUE).contains(&value)) {
                problem(
                    format!("records[{i}].{field}"),
                    format!("{field} is {value}, not a number from 0 to {MAX_VALUE}"),
                    "report what the job used: 0 or more",
                );
            }
        }
    }
    if details.is_empty() {
        Ok(())
    } else {
        Err(ApiError::Invalid {
            message: format!(
                "{} problem(s) in the usage batch; nothing was stored",
                details.len()
            ),
            details,
        })
    }
}

async fn ingest(
    State(state): State<AppState>,
    JsonBody(batch): JsonBody<UsageBatch>,
) -> Result<Json<UsageReceipt>, ApiError> {
    check_batch(&batch)?;
    // Batches of this control plane take turns, so they do not make each other retry;
    // the store's compare-and-set keeps several control planes exact.
    let _turn = state.usage_writes().lock().await;
    Ok(Json(usage::ingest(state.store(), &batch.records).await?))
}

/// Filters of a record listing; each absent filter matches everything.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RecordQuery {
    tenant: Option<String>,
    region: Option<String>,
    model: Option<String>,
}

fn matches(filter: Option<&str>, value: &str) -> bool {
    filter.is_none_or(|f| f == value)
}

async fn list(
    State(state): State<AppState>,
    query: Result<Query<RecordQuery>, QueryRejection>,
) -> Result<Json<Listed<UsageRecord>>, ApiError> {
    let Query(query) = query.map_err(|e| {
        ApiError::BadRequest(format!(
            "{}; filter with ?tenant=&region=&model=",
            e.body_text()
        ))
    })?;
    let listing = state.store().list(USAGE).await?;
    let mut items = Vec::new();
    for kv in &listing.kvs {
        let record: UsageRecord = versioned::decode(&kv.value)?;
        if matches(query.tenant.as_deref(), &record.tenant)
            && matches(query.region.as_deref(), &record.region)
            && matches(query.model.as_deref(), &record.model)
        {
            items.push(record);
        }
    }
    Ok(Json(Listed {
        revision: listing.revision,
        items,
    }))
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
