//! The OpenAPI 3 document of the whole HTTP API, served without a token at
//! `GET /openapi.json`. It is kept in `control-plane/openapi.json`; a test checks that it
//! lists exactly the routes the router serves.

use axum::http::header;
use axum::response::IntoResponse;

use super::Routes;

/// The document, as committed.
pub const DOCUMENT: &str = include_str!("../../openapi.json");

/// The route serving the document.
pub fn routes() -> Routes {
    Routes::new().get("/openapi.json", document)
}

async fn document() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/json")], DOCUMENT)
}
