//! GPU reservations in the admin API (see [`crate::reservations`] for how they shape the
//! catalog edges receive).
//!
//! | call | does |
//! | --- | --- |
//! | `GET /admin/v1/reservations` | every reservation, with the store revision read at |
//! | `POST /admin/v1/reservations` | creates one (409 when its id exists) |
//! | `GET /admin/v1/reservations/{id}` | one reservation; `ETag` is its revision |
//! | `PUT /admin/v1/reservations/{id}` | creates or replaces; `If-Match` / `If-None-Match: *` as for catalog records |
//! | `DELETE /admin/v1/reservations/{id}` | deletes; `If-Match` to compare-and-delete |
//!
//! Every write is checked against the catalog: the region and pool exist, `gpus` ≥ 1, the
//! price is a finite number ≥ 0 and the end is after the start (422 with each problem's
//! path and fix; nothing is written).

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use control_plane_client::wire::{Listed, Reservation};

use super::{ApiError, AppState, JsonBody, Routes, etag, precondition};
use crate::registry::{Precondition, read_state};
use crate::reservations::{self, RESERVATIONS, reservation_key};
use crate::store::versioned;
use crate::store::{Store, StoreError};

/// The reservation routes (without authentication; the router adds it).
pub fn routes() -> Routes {
    Routes::new()
        .get("/admin/v1/reservations", list)
        .post("/admin/v1/reservations", create)
        .get("/admin/v1/reservations/{id}", get_one)
        .put("/admin/v1/reservations/{id}", put_one)
        .delete("/admin/v1/reservations/{id}", delete_one)
}

fn not_found(id: &str) -> ApiError {
    ApiError::NotFound {
        what: format!("reservation {id}"),
    }
}

async fn list(State(state): State<AppState>) -> Result<Json<Listed<Reservation>>, ApiError> {
    let listing = state.store().list(RESERVATIONS).await?;
    let items = listing
        .kvs
        .iter()
        .map(|kv| versioned::decode::<Reservation>(&kv.value))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Json(Listed {
        revision: listing.revision,
        items,
    }))
}

async fn get_one(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let (record, revision) = state
        .registry()
        .get::<Reservation>(&reservation_key(&id))
        .await?
        .ok_or_else(|| not_found(&id))?;
    Ok(([etag(revision)], Json(record)).into_response())
}

async fn create(
    State(state): State<AppState>,
    JsonBody(record): JsonBody<Reservation>,
) -> Result<Response, ApiError> {
    let id = record.id.clone();
    write(&state, &id, record, Precondition::Absent).await
}

async fn put_one(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    JsonBody(record): JsonBody<Reservation>,
) -> Result<Response, ApiError> {
    let precondition = precondition(&headers)?;
    write(&state, &id, record, precondition).await
}

async fn write(
    state: &AppState,
    id: &str,
    record: Reservation,
    precondition: Precondition,
) -> Result<Response, ApiError> {
    let key = reservation_key(id);
    // Catalog writes take the same turn, so a region cannot lose the pool meanwhile.
    let _guard = state.registry().lock().await;
    let stored = read_state(state.store()).await?;
    reservations::check(id, &record, &stored.spec)?;
    let current = stored.mod_revision(&key);
    let expected = precondition.expected(current)?;
    let revision = state
        .store()
        .compare_and_put(&key, expected, versioned::encode(&record)?, None)
        .await?;
    let status = if current.is_none() {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, [etag(revision)], Json(record)).into_response())
}

async fn delete_one(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<StatusCode, ApiError> {
    let precondition = precondition(&headers)?;
    let key = reservation_key(&id);
    let _guard = state.registry().lock().await;
    let Some(kv) = state.store().get(&key).await? else {
        return Err(not_found(&id));
    };
    let expected = precondition.expected(Some(kv.mod_revision))?;
    match state.store().compare_and_delete(&key, expected).await {
        Ok(_) => Ok(StatusCode::NO_CONTENT),
        Err(StoreError::NotFound { .. }) => Err(not_found(&id)),
        Err(e) => Err(e.into()),
    }
}
