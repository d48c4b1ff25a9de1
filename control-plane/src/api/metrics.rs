//! `GET /metrics`: the control plane's Prometheus metrics ([`crate::metrics`]), served
//! without a token like the agents' and edges' metrics.

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;

use super::{AppState, Routes};

/// The route serving the metrics.
pub fn routes() -> Routes {
    Routes::new().get("/metrics", metrics)
}

async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics().render(),
    )
}
