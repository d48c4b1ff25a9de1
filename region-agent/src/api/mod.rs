//! The agent's HTTP API (region-agent/API.md) on axum: the edge→agent calls under `/v1/`
//! (the edge-token check, the tenant header, the headers every answer carries, bodies
//! refused by their declared length and read within a deadline) and the control plane's
//! internal calls under `/internal/v1/` (its agent token). [`serve`] serves it with
//! connection deadlines and caps.

mod compat;
mod error;
mod hooks;
mod jobs;
pub mod links;
pub mod serve;
mod sse;
mod usage;
pub mod webhooks;

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{DefaultBodyLimit, FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use contract::{Secret, TenantId, headers};
use futures_util::StreamExt;
use serde_json::json;

pub use self::error::ApiError;
use self::links::FileLinks;
use self::webhooks::Webhooks;
use crate::inputs::MediaUrls;
use crate::scheduler::Scheduler;

/// What the handlers share.
#[derive(Clone)]
pub struct AppState(Arc<Inner>);

struct Inner {
    scheduler: Scheduler,
    edge_token: Secret,
    agent_token: Option<Secret>,
    sync_timeout: Duration,
    max_body_bytes: usize,
    body_read: Duration,
    region_header: HeaderValue,
    media_urls: MediaUrls,
    links: FileLinks,
    webhooks: Webhooks,
}

/// How the API treats requests: how long a synchronous run waits, the largest body and
/// the deadline for reading one.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// How long `POST /v1/run/…` waits for its job.
    pub sync_timeout: Duration,
    /// Largest body, in bytes.
    pub max_body_bytes: usize,
    /// Longest time to read a body once the header has arrived.
    pub body_read: Duration,
}

/// The secrets the API checks.
#[derive(Debug, Clone)]
pub struct Tokens {
    /// What edges send in `x-meridian-edge-token` (`/v1/`).
    pub edge: Secret,
    /// What the control plane sends as `Authorization: Bearer` (`/internal/v1/`); without
    /// a control plane, the internal calls answer 401.
    pub agent: Option<Secret>,
}

impl AppState {
    /// The API over `scheduler`, checking `tokens`, within `limits`, fetching media inputs
    /// given as URLs with `media_urls`, signing file links with `links` and delivering
    /// jobs' webhooks with `webhooks`.
    pub fn new(
        scheduler: Scheduler,
        tokens: Tokens,
        limits: Limits,
        media_urls: MediaUrls,
        links: FileLinks,
        webhooks: Webhooks,
    ) -> Self {
        let region_header = HeaderValue::from_str(scheduler.region().as_str())
            .unwrap_or_else(|_| HeaderValue::from_static("unknown"));
        Self(Arc::new(Inner {
            scheduler,
            edge_token: tokens.edge,
            agent_token: tokens.agent,
            sync_timeout: limits.sync_timeout,
            max_body_bytes: limits.max_body_bytes,
            body_read: limits.body_read,
            region_header,
            media_urls,
            links,
            webhooks,
        }))
    }

    fn scheduler(&self) -> &Scheduler {
        &self.0.scheduler
    }

    fn links(&self) -> &FileLinks {
        &self.0.links
    }

    fn webhooks(&self) -> &Webhooks {
        &self.0.webhooks
    }
}

/// The router: `/v1/…` behind the edge token, `/internal/v1/…` behind the agent token,
/// `/healthz` and `/metrics` open.
pub fn router(state: AppState) -> Router {
    let max_body_bytes = state.0.max_body_bytes;
    let v1 = Router::new()
        .route("/v1/run/{owner}/{model}", post(jobs::run))
        .route("/v1/queue/{owner}/{model}", post(jobs::queue))
        .route("/v1/requests/{id}/status", get(sse::status))
        .route("/v1/requests/{id}", get(jobs::result))
        .route("/v1/requests/{id}/cancel", put(jobs::cancel))
        .route("/v1/requests/{id}/files/{name}", get(jobs::file))
        .route("/v1/requests/{id}/webhooks", get(hooks::deliveries))
        .route("/v1/webhooks/default/secret", get(hooks::secret))
        .route("/fal/.well-known/jwks.json", get(hooks::jwks))
        .route("/fal/queue/{owner}/{model}", post(compat::fal::queue))
        .route("/fal/run/{owner}/{model}", post(compat::fal::run))
        .route(
            "/fal/queue/{owner}/{model}/requests/{id}",
            get(compat::fal::result),
        )
        .route(
            "/fal/queue/{owner}/{model}/requests/{id}/status",
            get(compat::fal::status),
        )
        .route(
            "/fal/queue/{owner}/{model}/requests/{id}/status/stream",
            get(compat::fal::status_stream),
        )
        .route(
            "/fal/queue/{owner}/{model}/requests/{id}/cancel",
            put(compat::fal::cancel),
        )
        .route("/v1/images/generations", post(compat::openai::generations))
        .route("/v1/images/edits", post(compat::openai::edits))
        .route(
            "/v1/audio/transcriptions",
            post(compat::openai::transcriptions),
        )
        .route(
            "/v1/models/{owner}/{model}/predictions",
            post(compat::replicate::create),
        )
        .route("/v1/predictions/{id}", get(compat::replicate::get))
        .route(
            "/v1/predictions/{id}/cancel",
            post(compat::replicate::cancel),
        )
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(state.clone(), read_body))
        .layer(middleware::from_fn_with_state(state.clone(), v1_layer))
        .layer(DefaultBodyLimit::max(max_body_bytes));
    Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .route("/internal/v1/usage/records", get(usage::records))
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
        .get(headers::EDGE_TOKEN)
        .map(HeaderValue::as_bytes)
        .unwrap_or_default();
    let mut response = if state.0.edge_token.matches(token) {
        next.run(request).await
    } else {
        ApiError::Unauthorized.into_response()
    };
    response
        .headers_mut()
        .insert(headers::REGION, state.0.region_header.clone());
    response
}

/// Refuses a body whose declared length is over the limit before reading it, and reads
/// the body within the body deadline; either failure also closes the connection (the rest
/// of the body is never read).
async fn read_body(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let limit = state.0.max_body_bytes;
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if declared.is_some_and(|length| length > u64::try_from(limit).unwrap_or(u64::MAX)) {
        return closing(ApiError::TooLarge(limit).into_response());
    }
    let (parts, body) = request.into_parts();
    let deadline = state.0.body_read;
    let bytes = match tokio::time::timeout(deadline, collect(body, limit)).await {
        Ok(Ok(bytes)) => bytes,
        Ok(Err(e)) => return closing(e.into_response()),
        Err(_) => {
            let ms = deadline.as_millis();
            return closing(ApiError::BodyTimeout(ms).into_response());
        }
    };
    next.run(Request::from_parts(parts, Body::from(bytes)))
        .await
}

/// Reads a body of at most `limit` bytes.
async fn collect(body: Body, limit: usize) -> Result<Vec<u8>, ApiError> {
    let mut stream = body.into_data_stream();
    let mut bytes = Vec::new();
    while let Some(chunk) = stream.next().await {
        let chunk =
            chunk.map_err(|e| ApiError::BadRequest(format!("cannot read the body: {e}")))?;
        if bytes.len().saturating_add(chunk.len()) > limit {
            return Err(ApiError::TooLarge(limit));
        }
        bytes.extend_from_slice(&chunk);
    }
    Ok(bytes)
}

/// Asks for the connection to be closed after `response`.
fn closing(mut response: Response) -> Response {
    response
        .headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
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

/// The tenant the edge authenticated (`x-meridian-tenant`), checked against the tenant id
/// grammar: a bad one is a 400 and never reaches a job or the usage ledger.
pub struct Tenant(pub TenantId);

impl<S: Send + Sync> FromRequestParts<S> for Tenant {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        tenant_of(&parts.headers).map(Self)
    }
}

/// The tenant in `x-meridian-tenant`, checked against the tenant id grammar.
fn tenant_of(headers: &axum::http::HeaderMap) -> Result<TenantId, ApiError> {
    let value = headers.get(headers::TENANT).ok_or_else(|| {
        ApiError::BadRequest(format!("the {} header is missing", headers::TENANT))
    })?;
    let text = value
        .to_str()
        .map_err(|_| ApiError::BadRequest(format!("the {} header is not text", headers::TENANT)))?;
    TenantId::new(text)
        .map_err(|e| ApiError::BadRequest(format!("the {} header: {e}", headers::TENANT)))
}

/// The longest public URL taken from the edge.
const MAX_PUBLIC_URL: usize = 512;

/// The address under which the client reached the public API, as the edge tells it
/// (`x-meridian-public-url`): an `http(s)://` URL without query, fragment or white space,
/// its trailing `/` dropped; `None` without one (links are then paths).
pub(crate) fn public_url(headers: &axum::http::HeaderMap) -> Option<String> {
    let text = headers.get(headers::PUBLIC_URL)?.to_str().ok()?.trim();
    let usable = (text.starts_with("https://") || text.starts_with("http://"))
        && text.len() <= MAX_PUBLIC_URL
        && !text.contains(['?', '#', ' ', '"', '<', '>', '\\']);
    usable.then(|| text.trim_end_matches('/').to_owned())
}
