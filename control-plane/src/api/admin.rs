//! The admin API over the catalog: settings, jurisdictions, regions, models and tenants as
//! `policy` spec records, one store key each.
//!
//! | call | does |
//! | --- | --- |
//! | `GET /admin/v1/{collection}` | every record, with the store revision read at |
//! | `POST /admin/v1/{collection}` | creates a record (409 when its id exists) |
//! | `GET /admin/v1/{collection}/{id}` | one record; `ETag` is its revision |
//! | `PUT /admin/v1/{collection}/{id}` | creates or replaces; `If-Match: <revision>` to compare-and-set, `If-None-Match: *` to create only |
//! | `DELETE /admin/v1/{collection}/{id}` | deletes (422 while other records need it) |
//! | `GET`/`PUT /admin/v1/settings` | currency and routing settings |
//!
//! Model ids are `owner/name`, so a model's URL is `/admin/v1/models/{owner}/{name}`. Every
//! write is checked against the whole catalog with the change applied (422 with each
//! problem's path and fix).

use axum::Json;
use axum::extract::{FromRequestParts, Path, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use control_plane_client::wire::{Listed, Settings};
use policy::spec::JurisdictionSpec;
use policy::{CatalogSpec, ModelSpec, RegionSpec, TenantSpec};
use serde::Serialize;

use super::{ApiError, AppState, JsonBody, Routes, etag, precondition};
use crate::records::{CatalogRecord, SETTINGS_KEY};
use crate::registry::{Precondition, not_found};
use crate::store::Store;
use crate::store::versioned;

/// The admin routes over the catalog (without authentication; the router adds it).
pub fn routes() -> Routes {
    let routes = Routes::new()
        .get("/admin/v1/settings", get_settings)
        .put("/admin/v1/settings", put_settings);
    let routes = collection::<JurisdictionSpec>(routes, "{id}");
    let routes = collection::<RegionSpec>(routes, "{id}");
    let routes = collection::<TenantSpec>(routes, "{id}");
    collection::<ModelSpec>(routes, "{owner}/{name}")
}

fn collection<T: CatalogRecord + Serialize>(routes: Routes, id_pattern: &str) -> Routes {
    let base = format!("/admin/v1/{}", T::COLLECTION);
    let one = format!("{base}/{id_pattern}");
    routes
        .get(&base, list::<T>)
        .post(&base, create::<T>)
        .get(&one, get_one::<T>)
        .put(&one, put_one::<T>)
        .delete(&one, delete_one::<T>)
}

/// A record's id from its URL: the path parameters joined with `/` (`owner/name` for
/// models).
#[derive(Debug)]
pub struct RecordId(pub String);

impl<S: Send + Sync> FromRequestParts<S> for RecordId {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let Path(params) = Path::<Vec<(String, String)>>::from_request_parts(parts, state)
            .await
            .map_err(|e| ApiError::BadRequest(format!("unreadable id in the URL: {e}")))?;
        let parts: Vec<String> = params.into_iter().map(|(_, v)| v).collect();
        Ok(Self(parts.join("/")))
    }
}

async fn list<T: CatalogRecord + Serialize>(
    State(state): State<AppState>,
) -> Result<Json<Listed<T>>, ApiError> {
    let listing = state.store().list(&T::prefix()).await?;
    let items = listing
        .kvs
        .iter()
        .map(|kv| versioned::decode::<T>(&kv.value))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Json(Listed {
        revision: listing.revision,
        items,
    }))
}

async fn get_one<T: CatalogRecord + Serialize>(
    State(state): State<AppState>,
    RecordId(id): RecordId,
) -> Result<Response, ApiError> {
    let (record, revision) = state
        .registry()
        .get::<T>(&T::key(&id))
        .await?
        .ok_or_else(|| not_found::<T>(&id))?;
    Ok(([etag(revision)], Json(record)).into_response())
}

async fn create<T: CatalogRecord + Serialize>(
    State(state): State<AppState>,
    JsonBody(record): JsonBody<T>,
) -> Result<Response, ApiError> {
    let id = record.id().to_owned();
    write(&state, &id, record, Precondition::Absent).await
}

async fn put_one<T: CatalogRecord + Serialize>(
    State(state): State<AppState>,
    RecordId(id): RecordId,
    headers: HeaderMap,
    JsonBody(record): JsonBody<T>,
) -> Result<Response, ApiError> {
    let precondition = precondition(&headers)?;
    write(&state, &id, record, precondition).await
}

async fn write<T: CatalogRecord + Serialize>(
    state: &AppState,
    id: &str,
    record: T,
    precondition: Precondition,
) -> Result<Response, ApiError> {
    let written = state
        .registry()
        .put(id, record.clone(), precondition)
        .await?;
    let status = if written.created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, [etag(written.revision)], Json(record)).into_response())
}

async fn delete_one<T: CatalogRecord>(
    State(state): State<AppState>,
    RecordId(id): RecordId,
    headers: HeaderMap,
) -> Result<StatusCode, ApiError> {
    let precondition = precondition(&headers)?;
    state.registry().delete::<T>(&id, precondition).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn get_settings(State(state): State<AppState>) -> Result<Response, ApiError> {
    let (settings, revision) = state
        .registry()
        .get::<Settings>(SETTINGS_KEY)
        .await?
        .unwrap_or_else(|| {
            let defaults = CatalogSpec::default();
            (
                Settings {
                    currency: defaults.currency,
                    routing: defaults.routing,
                },
                0,
            )
        });
    Ok(([etag(revision)], Json(settings)).into_response())
}

async fn put_settings(
    State(state): State<AppState>,
    headers: HeaderMap,
    JsonBody(settings): JsonBody<Settings>,
) -> Result<Response, ApiError> {
    let precondition = precondition(&headers)?;
    let written = state
        .registry()
        .put_settings(settings.clone(), precondition)
        .await?;
    Ok(([etag(written.revision)], Json(settings)).into_response())
}
