//! The edge API: the versioned snapshot edges route with.
//!
//! `GET /edge/v1/snapshot` answers the whole catalog, every API key's record (hashes only),
//! the live status of every registered region and every tenant's spend in the current UTC
//! month, read at one store revision (also in the `ETag`), with every named instance whose
//! record has not expired ([`crate::instances`]), live or not, so an edge knows which away
//! instances may still hold jobs. The catalog's pools carry the
//! reserved capacity of their active reservations ([`crate::reservations`]). `GET /edge/v1/snapshot?after=REV&wait=SECS` long-polls: it answers the new full
//! snapshot as soon as anything an edge sees changed after `REV`, or `304 Not Modified` when
//! nothing did within `wait` seconds. When `REV` is older than what the control plane has
//! followed since it started (so its history may be compacted), or newer than the store (as
//! after a restore), the full snapshot comes at once. Polls wait on one shared
//! [`ChangeFeed`](crate::changes::ChangeFeed), not a store watch each. Spend changes with
//! every usage batch, so a change of spend alone wakes polls at most once per
//! `spend_refresh` (the feed's coalescing); any other change wakes them at once, and the
//! snapshot it brings carries the latest spend too.

use std::time::Duration;

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use control_plane_client::wire::{Snapshot, TenantSpend};
use serde::Deserialize;

use super::{ApiError, AppState, Routes, etag};
use crate::instances;
use crate::registry::read_state;
use crate::store::{Revision, Store};
use crate::usage::{self, MonthlySpend};

/// Shortest wait of a long poll, so a change just written has time to reach the feed.
const MIN_WAIT: Duration = Duration::from_millis(50);

/// The edge routes (without authentication; the router adds it).
pub fn routes() -> Routes {
    Routes::new().get("/edge/v1/snapshot", snapshot)
}

/// Query of a snapshot request.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SnapshotQuery {
    /// The revision the edge already has.
    after: Option<Revision>,
    /// How long to wait for a change after `after`, in seconds. Default 0.
    wait: Option<u64>,
}

async fn snapshot(
    State(state): State<AppState>,
    query: Result<Query<SnapshotQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(query) = query.map_err(|e| {
        ApiError::BadRequest(format!(
            "{}; use ?after=<revision>&wait=<seconds>",
            e.body_text()
        ))
    })?;
    if let Some(after) = query.after {
        let wait = Duration::from_secs(query.wait.unwrap_or(0))
            .min(state.settings().max_poll_wait)
            .max(MIN_WAIT);
        if !changed_after(&state, after, wait).await? {
            return Ok((StatusCode::NOT_MODIFIED, [etag(after)]).into_response());
        }
    }
    let stored = read_state(state.store()).await?;
    let instances = instances::current(&stored, usage::now_ms())
        .into_iter()
        .map(|entry| entry.record)
        .collect();
    let body = Snapshot {
        schema: contract::schema::SNAPSHOT,
        revision: stored.revision,
        catalog: stored.effective_catalog(),
        keys: stored.keys,
        regions: stored.live,
        spend: current_spend(&stored.spend),
        instances,
    };
    Ok(([etag(body.revision)], Json(body)).into_response())
}

/// Every tenant's spend in the current UTC month (tenants without any are left out).
fn current_spend(spend: &[MonthlySpend]) -> Vec<TenantSpend> {
    let month = usage::current_month();
    spend
        .iter()
        .filter(|s| s.month == month)
        .map(MonthlySpend::to_wire)
        .collect()
}

/// Whether anything an edge sees changed after `after`, waiting up to `wait` for it.
async fn changed_after(
    state: &AppState,
    after: Revision,
    wait: Duration,
) -> Result<bool, ApiError> {
    if after < 0 || after > state.store().revision().await? {
        // Not a revision of this store (or a restored one): the edge needs everything.
        return Ok(true);
    }
    tokio::select! {
        changed = state.changes().changed_after(after, wait) => Ok(changed),
        () = state.shutdown().cancelled() => Ok(false),
    }
}
