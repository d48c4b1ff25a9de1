//! Tenants' API keys in the admin API.
//!
//! | call | does |
//! | --- | --- |
//! | `POST /admin/v1/tenants/{id}/keys` | creates a key (body `{"label": …}` or `{}`); the answer holds the whole key, shown this once |
//! | `GET /admin/v1/tenants/{id}/keys` | the tenant's keys: id, tenant, label, created, revoked |
//! | `GET /admin/v1/tenants/{id}/keys/{key}` | one key's record |
//! | `DELETE /admin/v1/tenants/{id}/keys/{key}` | revokes the key (sets `revoked_at`); the record stays |
//!
//! Only the key's SHA-256 hash is stored; the admin API never shows even that.

use std::time::{SystemTime, UNIX_EPOCH};

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use control_plane_client::wire::{CreatedKey, KeyView, Listed, NewKeyRequest};
use policy::{ApiKeyRecord, TenantId, TenantSpec};

use super::{ApiError, AppState, JsonBody, Routes, etag};
use crate::records::{CatalogRecord, KEYS, key_key};
use crate::registry::not_found;
use crate::store::Store;
use crate::store::versioned;

/// Longest label a key may carry, in bytes.
const MAX_LABEL: usize = 200;

/// The key routes (without authentication; the router adds it).
pub fn routes() -> Routes {
    Routes::new()
        .get("/admin/v1/tenants/{tenant}/keys", list)
        .post("/admin/v1/tenants/{tenant}/keys", create)
        .get("/admin/v1/tenants/{tenant}/keys/{key}", get_one)
        .delete("/admin/v1/tenants/{tenant}/keys/{key}", revoke)
}

fn now_unix() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

async fn create(
    State(state): State<AppState>,
    Path(tenant): Path<String>,
    JsonBody(request): JsonBody<NewKeyRequest>,
) -> Result<Response, ApiError> {
    if request.label.as_ref().is_some_and(|l| l.len() > MAX_LABEL) {
        return Err(ApiError::invalid_one(
            "label",
            format!("the label is longer than {MAX_LABEL} bytes"),
            "use a short label, such as `ci` or `mobile-app`",
        ));
    }
    let registry = state.registry();
    // Held while the key is written, so the tenant cannot be deleted in between.
    let _guard = registry.lock().await;
    if registry
        .get::<TenantSpec>(&TenantSpec::key(&tenant))
        .await?
        .is_none()
    {
        return Err(not_found::<TenantSpec>(&tenant));
    }
    let tenant_id = TenantId::new(&tenant).map_err(|e| ApiError::Internal(e.to_string()))?;
    let new = policy::key::generate(&mut rand::rng(), tenant_id, request.label, now_unix());
    let revision = state
        .store()
        .compare_and_put(
            &key_key(new.record.id.as_str()),
            0,
            versioned::encode(&new.record)?,
            None,
        )
        .await?;
    let body = CreatedKey {
        key: new.key,
        record: KeyView::from(&new.record),
    };
    Ok((StatusCode::CREATED, [etag(revision)], Json(body)).into_response())
}

async fn list(
    State(state): State<AppState>,
    Path(tenant): Path<String>,
) -> Result<Json<Listed<KeyView>>, ApiError> {
    let listing = state.store().list(KEYS).await?;
    let mut items = Vec::new();
    for kv in &listing.kvs {
        let record: ApiKeyRecord = versioned::decode(&kv.value)?;
        if record.tenant.as_str() == tenant {
            items.push(KeyView::from(&record));
        }
    }
    if items.is_empty()
        && state
            .registry()
            .get::<TenantSpec>(&TenantSpec::key(&tenant))
            .await?
            .is_none()
    {
        return Err(not_found::<TenantSpec>(&tenant));
    }
    Ok(Json(Listed {
        revision: listing.revision,
        items,
    }))
}

/// The key `id` of `tenant` and its mod revision; 404 when it is another tenant's.
async fn find(state: &AppState, tenant: &str, id: &str) -> Result<(ApiKeyRecord, i64), ApiError> {
    match state.registry().get::<ApiKeyRecord>(&key_key(id)).await? {
        Some((record, revision)) if record.tenant.as_str() == tenant => Ok((record, revision)),
        _ => Err(ApiError::NotFound {
            what: format!("API key {id} of tenant {tenant}"),
        }),
    }
}

async fn get_one(
    State(state): State<AppState>,
    Path((tenant, id)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let (record, revision) = find(&state, &tenant, &id).await?;
    Ok(([etag(revision)], Json(KeyView::from(&record))).into_response())
}

async fn revoke(
    State(state): State<AppState>,
    Path((tenant, id)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let (mut record, revision) = find(&state, &tenant, &id).await?;
    if record.revoked_at.is_some() {
        return Ok(([etag(revision)], Json(KeyView::from(&record))).into_response());
    }
    record.revoked_at = Some(now_unix());
    let revision = state
        .store()
        .compare_and_put(&key_key(&id), revision, versioned::encode(&record)?, None)
        .await?;
    Ok(([etag(revision)], Json(KeyView::from(&record))).into_response())
}
