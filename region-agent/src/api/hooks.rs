//! The webhook calls: a job's deliveries (`GET /v1/requests/{id}/webhooks`), the tenant's
//! Standard Webhooks secret (`GET /v1/webhooks/default/secret`, as Replicate's client asks
//! for it) and the public key fal's signatures verify with (`GET
//! /fal/.well-known/jwks.json`).

use axum::Json;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::jobs::{find, with_id};
use super::webhooks::shown_delivery;
use super::{ApiError, AppState, Tenant};

/// `GET /v1/requests/{id}/webhooks`: `{"webhook": url | null, "deliveries": [{event, url,
/// state, tries}]}`.
pub async fn deliveries(
    State(state): State<AppState>,
    Tenant(tenant): Tenant,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let record = find(&state, tenant.as_str(), &id)?;
    let deliveries: Vec<_> = state
        .webhooks()
        .deliveries(&id)
        .iter()
        .map(shown_delivery)
        .collect();
    let body = json!({
        "request_id": id,
        "webhook": record.webhook.map(|w| json!({"style": w.style, "on_start": w.on_start})),
        "deliveries": deliveries,
    });
    Ok(with_id(Json(body).into_response(), &id))
}

/// `GET /v1/webhooks/default/secret`: `{"key": "whsec_…"}`.
pub async fn secret(State(state): State<AppState>, Tenant(tenant): Tenant) -> Response {
    let key = state.webhooks().keys().shown_secret(tenant.as_str());
    Json(json!({"key": key})).into_response()
}

/// `GET /fal/.well-known/jwks.json`.
pub async fn jwks(State(state): State<AppState>) -> Response {
    Json(state.webhooks().keys().jwks()).into_response()
}
