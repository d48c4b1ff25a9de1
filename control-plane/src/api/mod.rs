//! The control plane's HTTP/JSON API: one router, three audiences, each behind its own
//! bearer token.
//!
//! - [`admin`] (`/admin/v1/…`, admin token): the catalog's records and tenants' API keys;
//!   [`reservations`]: GPU reservations; [`instances`]: a region's instances, their pool
//!   check and drain orders.
//! - [`edge`] (`/edge/v1/…`, edge token): the versioned snapshot edges route with.
//! - [`agent`] (`/agent/v1/…`, agent token): region agents' registration and heartbeats;
//!   [`usage`]: their usage reports (and the admin's reading of them, totals and spend).
//!
//! [`openapi`] serves the OpenAPI document of all of it at `/openapi.json`, and [`metrics`]
//! the Prometheus metrics at `/metrics` (both without a token).
//!
//! Every answer that is not a success is an [`ApiError`] with a JSON body.

pub mod admin;
pub mod agent;
pub mod edge;
mod error;
mod extract;
pub mod instances;
mod keys;
pub mod metrics;
pub mod openapi;
pub mod reservations;
mod routes;
pub mod throttle;
pub mod usage;
mod usage_records;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{ConnectInfo, DefaultBodyLimit, Request, State};
use axum::http::{HeaderMap, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tokio_util::sync::CancellationToken;

pub use error::ApiError;
pub use extract::{JsonBody, WireBody, etag, precondition};
pub use routes::Routes;
pub use throttle::ThrottleSettings;

use crate::changes::ChangeFeed;
use crate::metrics::Metrics;
use crate::registry::Registry;
use crate::store::AnyStore;
use throttle::{Audience, Throttle};

/// A bearer token, kept as its hash so checks take the same time whatever is presented.
#[derive(Clone)]
pub struct Token([u8; 32]);

impl Token {
    /// The token `secret`.
    pub fn new(secret: &str) -> Self {
        Self(Sha256::digest(secret.as_bytes()).into())
    }

    /// Whether `presented` is this token, compared in constant time.
    pub fn matches(&self, presented: &str) -> bool {
        let presented: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        self.0.ct_eq(&presented).into()
    }
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(…)")
    }
}

/// What the API needs to know, fixed at start.
#[derive(Debug, Clone)]
pub struct ApiSettings {
    /// Token of the admin API.
    pub admin_token: Token,
    /// Token of the edge API.
    pub edge_token: Token,
    /// Token of the agent API.
    pub agent_token: Token,
    /// The agent token itself: the control plane presents it to region agents when it
    /// reads what they keep in their region (per-job usage records).
    pub agent_secret: contract::Secret,
    /// Largest request body accepted, in bytes.
    pub max_body_bytes: usize,
    /// How long a silent agent's status lives.
    pub agent_lease_ttl: Duration,
    /// Longest long poll a snapshot request may ask for.
    pub max_poll_wait: Duration,
    /// Least time between two wake-ups of waiting edges for spend changes alone.
    pub spend_refresh: Duration,
    /// When an address that presents wrong tokens is answered 429 without a check.
    pub throttle: ThrottleSettings,
}

impl ApiSettings {
    /// Settings with these tokens and the configuration file's defaults for the rest: 1 MiB
    /// bodies, 10 s agent leases, 60 s longest poll, spend wakes polls every 5 s at most,
    /// 10 wrong tokens a minute from one address before it is throttled.
    pub fn with_tokens(admin: &str, edge: &str, agent: &str) -> Self {
        Self {
            admin_token: Token::new(admin),
            edge_token: Token::new(edge),
            agent_token: Token::new(agent),
            agent_secret: contract::Secret::new(agent.to_owned()),
            max_body_bytes: 1 << 20,
            agent_lease_ttl: Duration::from_secs(10),
            max_poll_wait: Duration::from_secs(60),
            spend_refresh: Duration::from_secs(5),
            throttle: ThrottleSettings::default(),
        }
    }
}

/// State shared by every handler.
#[derive(Debug, Clone)]
pub struct AppState {
    inner: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    registry: Registry,
    changes: ChangeFeed,
    settings: ApiSettings,
    shutdown: CancellationToken,
    usage_writes: tokio::sync::Mutex<()>,
    metrics: Metrics,
    throttle: Throttle,
}

impl AppState {
    /// State over `store`, whose changes `changes` follows; long polls end early when
    /// `shutdown` is cancelled.
    pub fn new(
        store: AnyStore,
        changes: ChangeFeed,
        settings: ApiSettings,
        shutdown: CancellationToken,
    ) -> Self {
        Self {
            inner: Arc::new(Shared {
                registry: Registry::new(store),
                changes,
                throttle: Throttle::new(settings.throttle),
                settings,
                shutdown,
                usage_writes: tokio::sync::Mutex::new(()),
                metrics: Metrics::new(),
            }),
        }
    }

    /// The catalog in the store.
    pub fn registry(&self) -> &Registry {
        &self.inner.registry
    }

    /// The store.
    pub fn store(&self) -> &AnyStore {
        self.inner.registry.store()
    }

    /// The feed of changes long polls wait on.
    pub fn changes(&self) -> &ChangeFeed {
        &self.inner.changes
    }

    /// The API's settings.
    pub fn settings(&self) -> &ApiSettings {
        &self.inner.settings
    }

    /// Taken while a usage batch is written, so this server's batches take turns.
    pub fn usage_writes(&self) -> &tokio::sync::Mutex<()> {
        &self.inner.usage_writes
    }

    /// The server's metrics.
    pub fn metrics(&self) -> &Metrics {
        &self.inner.metrics
    }

    /// Cancelled when the server shuts down.
    pub fn shutdown(&self) -> &CancellationToken {
        &self.inner.shutdown
    }
}

/// The admin API's routes.
fn admin_routes() -> Routes {
    admin::routes()
        .merge(keys::routes())
        .merge(reservations::routes())
        .merge(instances::routes())
        .merge(usage::admin_routes())
}

/// The routes served without a token.
fn open_routes() -> Routes {
    openapi::routes().merge(metrics::routes())
}

/// The agent API's routes.
fn agent_routes() -> Routes {
    agent::routes().merge(usage::agent_routes())
}

/// The `(method, path)` of every route the API serves, paths written as in the router
/// and the OpenAPI document (`/admin/v1/regions/{id}`).
pub fn route_table() -> Vec<(axum::http::Method, String)> {
    let all = open_routes()
        .merge(admin_routes())
        .merge(edge::routes())
        .merge(agent_routes());
    all.into_parts().1
}

/// The whole API.
pub fn router(state: AppState) -> Router {
    let limit = state.settings().max_body_bytes;
    let admin = admin_routes()
        .map(|r| r.route_layer(middleware::from_fn_with_state(state.clone(), admin_auth)));
    let edge = edge::routes()
        .map(|r| r.route_layer(middleware::from_fn_with_state(state.clone(), edge_auth)));
    let agent = agent_routes()
        .map(|r| r.route_layer(middleware::from_fn_with_state(state.clone(), agent_auth)));
    let (routes, _) = open_routes()
        .merge(admin)
        .merge(edge)
        .merge(agent)
        .into_parts();
    routes
        .fallback(|request: Request| async move {
            ApiError::NoRoute(format!("{} {}", request.method(), request.uri().path()))
        })
        .method_not_allowed_fallback(|request: Request| async move {
            ApiError::MethodNotAllowed(format!("{} {}", request.method(), request.uri().path()))
        })
        .layer(middleware::from_fn_with_state(state.clone(), deadline))
        .layer(DefaultBodyLimit::max(limit))
        .with_state(state)
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.trim().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then_some(token.trim())
}

/// How much longer than the longest long poll any request may take (reading its body
/// included) before it is answered with a 408.
const REQUEST_SLACK: Duration = Duration::from_secs(15);

async fn deadline(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let limit = state.settings().max_poll_wait + REQUEST_SLACK;
    match tokio::time::timeout(limit, next.run(request)).await {
        Ok(response) => response,
        Err(_) => ApiError::Timeout(limit).into_response(),
    }
}

async fn admin_auth(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    check(&state, Audience::Admin, request, next).await
}

async fn edge_auth(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    check(&state, Audience::Edge, request, next).await
}

async fn agent_auth(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    check(&state, Audience::Agent, request, next).await
}

/// Lets the request through when it carries `api`'s token. An address that presented too
/// many wrong tokens is answered 429 without a check ([`throttle`]).
async fn check(
    state: &AppState,
    api: Audience,
    request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let settings = state.settings();
    let token = match api {
        Audience::Admin => &settings.admin_token,
        Audience::Edge => &settings.edge_token,
        Audience::Agent => &settings.agent_token,
    };
    let address = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(peer)| peer.ip());
    let throttle = &state.inner.throttle;
    let metrics = state.metrics();
    if let Some(retry_after) = address.and_then(|a| throttle.wait(a, api)) {
        metrics
            .auth_throttled
            .with_label_values(&[api.as_str()])
            .inc();
        return Err(ApiError::Throttled { retry_after });
    }
    match bearer(request.headers()) {
        Some(presented) if token.matches(presented) => {
            if let Some(address) = address {
                throttle.succeeded(address, api);
            }
            Ok(next.run(request).await)
        }
        Some(_) => {
            metrics
                .auth_failures
                .with_label_values(&[api.as_str()])
                .inc();
            if let Some(address) = address
                && let Some(wait) = throttle.failed(address, api)
            {
                tracing::warn!(
                    %address,
                    api = api.as_str(),
                    wait_secs = wait.as_secs(),
                    "too many wrong tokens from one address; answering it 429 for a while"
                );
            }
            Err(ApiError::Unauthorized)
        }
        // No token guesses nothing.
        None => Err(ApiError::Unauthorized),
    }
}
