//! `GET /internal/v1/usage/records`: the control plane reads the per-job usage records this
//! region keeps, page by page, for audits (`GET /admin/v1/usage/records` forwards here). It
//! presents the agent token (`Authorization: Bearer <control_plane.agent_token>`).
//!
//! Query: `tenant`, `model`, `from_ms` (included), `to_ms` (excluded), `cursor` (a previous
//! page's `next`) and `limit` (1–1000, default 100); an empty value is the same as none; any
//! other parameter or a bad value is a 400. Records come oldest first, as `UsageRecordPage`.

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use contract::{ModelId, TenantId};
use control_plane_client::wire::UsageRecordPage;
use serde::Deserialize;

use super::{ApiError, AppState};
use crate::usage::audit::{self, DEFAULT_LIMIT, MAX_LIMIT, RecordFilter};

/// The query as sent.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecordsQuery {
    tenant: Option<String>,
    model: Option<String>,
    from_ms: Option<String>,
    to_ms: Option<String>,
    cursor: Option<String>,
    limit: Option<String>,
}

/// A parameter's value; an empty one counts as absent.
fn given(value: Option<String>) -> Option<String> {
    value.filter(|v| !v.is_empty())
}

/// A whole-number parameter.
fn number(name: &str, value: Option<String>) -> Result<Option<u64>, ApiError> {
    given(value)
        .map(|v| {
            v.parse::<u64>().map_err(|_| {
                ApiError::BadRequest(format!("{name} is {v:?}; it must be a whole number ≥ 0"))
            })
        })
        .transpose()
}

/// A checked query.
struct PageRequest {
    filter: RecordFilter,
    cursor: Option<crate::usage::journal::Position>,
    limit: usize,
}

/// The records call.
pub async fn records(
    State(state): State<AppState>,
    headers: HeaderMap,
    query: Result<Query<RecordsQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    authorize(&state, &headers)?;
    let Query(query) = query.map_err(|e| ApiError::BadRequest(format!("bad query: {e}")))?;
    let request = check(query)?;
    let scheduler = state.scheduler().clone();
    let page = tokio::task::spawn_blocking(move || {
        scheduler
            .ledger()
            .page(&request.filter, request.cursor, request.limit)
    })
    .await
    .map_err(|e| ApiError::internal(format!("read the usage journal: {e}")))?
    .map_err(|e| ApiError::internal(format!("read the usage journal: {e}")))?;
    let (records, next) = page;
    Ok(Json(UsageRecordPage {
        region: state.scheduler().region().to_string(),
        records,
        next: next.map(audit::encode_cursor),
    })
    .into_response())
}

/// Checks `Authorization: Bearer <agent token>`.
fn authorize(state: &AppState, headers: &HeaderMap) -> Result<(), ApiError> {
    let presented = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_default();
    match &state.0.agent_token {
        Some(token) if token.matches(presented.as_bytes()) => Ok(()),
        _ => Err(ApiError::UnauthorizedInternal),
    }
}

fn check(query: RecordsQuery) -> Result<PageRequest, ApiError> {
    let bad = |message: String| ApiError::BadRequest(message);
    let tenant = given(query.tenant)
        .map(|t| TenantId::new(&t))
        .transpose()
        .map_err(|e| bad(format!("tenant: {e}")))?;
    let model = given(query.model)
        .map(|m| ModelId::new(&m))
        .transpose()
        .map_err(|e| bad(format!("model: {e}")))?;
    let (from_ms, to_ms) = (
        number("from_ms", query.from_ms)?,
        number("to_ms", query.to_ms)?,
    );
    if let (Some(from), Some(to)) = (from_ms, to_ms)
        && from > to
    {
        return Err(bad(format!("from_ms {from} is after to_ms {to}")));
    }
    let limit = number("limit", query.limit)?.unwrap_or(DEFAULT_LIMIT as u64);
    if !(1..=MAX_LIMIT as u64).contains(&limit) {
        return Err(bad(format!("limit is {limit}; it must be 1–{MAX_LIMIT}")));
    }
    let cursor = given(query.cursor)
        .map(|c| {
            audit::decode_cursor(&c).ok_or_else(|| {
                bad("cursor is not a cursor this agent gave; pass a page's `next` as it is".into())
            })
        })
        .transpose()?;
    Ok(PageRequest {
        filter: RecordFilter {
            tenant,
            model,
            from_ms,
            to_ms,
        },
        cursor,
        limit: usize::try_from(limit).unwrap_or(MAX_LIMIT),
    })
}
