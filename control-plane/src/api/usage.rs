//! Usage ingestion: region agents report what each finished job used; the admin API reads
//! it back.
//!
//! | call | does |
//! | --- | --- |
//! | `POST /agent/v1/usage` (agent token) | stores a batch of [`UsageRecord`]s, one key per job id; a job id seen before is a redelivery and is ignored |
//! | `GET /admin/v1/usage?tenant=&region=&model=` (admin token) | the stored records, optionally filtered |
//!
//! A batch is checked whole before anything is written (422 naming `records[i].field`), so
//! an agent can resend it unchanged after any failure. Records for tenants, models or
//! regions since removed from the catalog are still kept: the work happened and is billed.

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::{Json, Router};
use control_plane_client::wire::{Listed, UsageBatch, UsageReceipt, UsageRecord};
use serde::Deserialize;

use super::{ApiError, AppState, JsonBody};
use crate::records::{USAGE, usage_key};
use crate::store::versioned;
use crate::store::{Store, StoreError};

/// Most records one batch may hold.
pub const MAX_BATCH: usize = 1000;

/// The agent's ingestion route (authentication is added by the router).
pub fn agent_routes() -> Router<AppState> {
    Router::new().route("/agent/v1/usage", axum::routing::post(ingest))
}

/// The admin's reading route (authentication is added by the router).
pub fn admin_routes() -> Router<AppState> {
    Router::new().route("/admin/v1/usage", axum::routing::get(list))
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
        details.push(control_plane_client::wire::ErrorDetail {
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
        for (field, value) in [
            ("tenant", &r.tenant),
            ("model", &r.model),
            ("region", &r.region),
        ] {
            if value.is_empty() || value.len() > 128 {
                problem(
                    format!("records[{i}].{field}"),
                    format!("{field} is empty or longer than 128 characters"),
                    "send the id the job ran under",
                );
            }
        }
        for (field, value) in [
            ("units", r.units),
            ("gpu_seconds", r.gpu_seconds),
            ("cost", r.cost),
        ] {
            if !(value.is_finite() && value >= 0.0) {
                problem(
                    format!("records[{i}].{field}"),
                    format!("{field} is {value}, not a non-negative number"),
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
    let store = state.store();
    let mut receipt = UsageReceipt {
        accepted: 0,
        duplicates: 0,
    };
    for record in &batch.records {
        let value = versioned::encode(record)?;
        match store
            .compare_and_put(&usage_key(&record.job_id), 0, value, None)
            .await
        {
            Ok(_) => receipt.accepted += 1,
            Err(StoreError::Conflict { .. }) => receipt.duplicates += 1,
            Err(e) => return Err(e.into()),
        }
    }
    Ok(Json(receipt))
}

/// Filters of a usage listing; each absent filter matches everything.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct UsageQuery {
    tenant: Option<String>,
    region: Option<String>,
    model: Option<String>,
}

async fn list(
    State(state): State<AppState>,
    query: Result<Query<UsageQuery>, QueryRejection>,
) -> Result<Json<Listed<UsageRecord>>, ApiError> {
    let Query(query) = query.map_err(|e| {
        ApiError::BadRequest(format!(
            "{}; filter with ?tenant=&region=&model=",
            e.body_text()
        ))
    })?;
    let matches =
        |filter: &Option<String>, value: &str| filter.as_deref().is_none_or(|f| f == value);
    let listing = state.store().list(USAGE).await?;
    let mut items = Vec::new();
    for kv in &listing.kvs {
        let record: UsageRecord = versioned::decode(&kv.value)?;
        if matches(&query.tenant, &record.tenant)
            && matches(&query.region, &record.region)
            && matches(&query.model, &record.model)
        {
            items.push(record);
        }
    }
    Ok(Json(Listed {
        revision: listing.revision,
        items,
    }))
}
