//! The edge→agent HTTP API (region-agent/API.md) on axum: routes, the edge-token check, the
//! tenant header, and the headers every `/v1/` answer carries.

mod error;
mod jobs;
mod sse;

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{DefaultBodyLimit, FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use serde_json::json;

pub use self::error::ApiError;
use crate::scheduler::Scheduler;

/// What the handlers share.
#[derive(Clone)]
pub struct AppState(Arc<Inner>);

struct Inner {
    scheduler: Scheduler,
    edge_token: String,
    sync_timeout: Duration,
    max_body_bytes: usize,
    region_header: HeaderValue,
}

impl AppState {
    /// The API over `scheduler`, checking `edge_token`; synchronous runs wait up to
    /// `sync_timeout`; bodies over `max_body_bytes` are refused.
    pub fn new(
        scheduler: Scheduler,
        edge_token: &str,
        sync_timeout: Duration,
        max_body_bytes: usize,
    ) -> Self {
        let region_header = HeaderValue::from_str(scheduler.region())
            .unwrap_or_else(|_| HeaderValue::from_static("unknown"));
        Self(Arc::new(Inner {
            scheduler,
            edge_token: edge_token.to_owned(),
            sync_timeout,
            max_body_bytes,
            region_header,
        }))
    }

    fn scheduler(&self) -> &Scheduler {
        &self.0.scheduler
    }
}

/// The router: `/v1/…` behind the edge token, `/healthz` and `/metrics` open.
pub fn router(state: AppState) -> Router {
    let max_body_bytes = state.0.max_body_bytes;
    let v1 = Router::new()
        .route("/v1/run/{owner}/{model}", post(jobs::run))
        .route("/v1/queue/{owner}/{model}", post(jobs::queue))
        .route("/v1/requests/{id}/status", get(sse::status))
        .route("/v1/requests/{id}", get(jobs::result))
        .route("/v1/requests/{id}/cancel", put(jobs::cancel))
        .route("/v1/requests/{id}/files/{name}", get(jobs::file))
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(state.clone(), v1_layer))
        .layer(DefaultBodyLimit::max(max_body_bytes));
    Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .merge(v1)
        .layer(middleware::from_fn_with_state(
            state.clone(),
            count_responses,
        ))
        .with_state(state)
}

/// Checks the edge token and stamps `x-meridian-region` on the answer.
async fn v1_layer(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let token = request
        .headers()
        .get("x-meridian-edge-token")
        .map(HeaderValue::as_bytes)
        .unwrap_or_default();
    let mut response = if constant_time_eq(token, state.0.edge_token.as_bytes()) {
        next.run(request).await
    } else {
        ApiError::Unauthorized.into_response()
    };
    response
        .headers_mut()
        .insert("x-meridian-region", state.0.region_header.clone());
    response
}

async fn count_responses(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let response = next.run(request).await;
    state
        .scheduler()
        .metrics()
        .response(response.status().as_u16());
    response
}

/// Compares secrets without leaking where they differ.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn not_found() -> ApiError {
    ApiError::NotFound("no such call; see region-agent/API.md".into())
}

async fn healthz(State(state): State<AppState>) -> Response {
    if state.scheduler().is_draining() {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "draining"})),
        )
            .into_response()
    } else {
        Json(json!({"status": "serving"})).into_response()
    }
}

async fn metrics(State(state): State<AppState>) -> Response {
    (
        [("content-type", "text/plain; version=0.0.4")],
        state.scheduler().metrics_text(),
    )
        .into_response()
}

/// The tenant the edge authenticated (`x-meridian-tenant`).
pub struct Tenant(pub String);

impl<S: Send + Sync> FromRequestParts<S> for Tenant {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        parts
            .headers
            .get("x-meridian-tenant")
            .and_then(|v| v.to_str().ok())
            .filter(|t| !t.is_empty() && t.len() <= 128)
            .map(|t| Self(t.to_owned()))
            .ok_or_else(|| ApiError::BadRequest("the x-meridian-tenant header is missing".into()))
    }
}
