//! Reading requests: JSON bodies that answer every mistake with an [`ApiError`], and the
//! `If-Match` / `If-None-Match` / `ETag` revision headers.
//!
//! Admin writes are configuration: [`JsonBody`] refuses fields the record does not have,
//! so a misspelt setting is never silently dropped. Agents' messages are wire messages:
//! [`WireBody`] ignores fields a newer agent added, so agents can be upgraded region by
//! region.

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use serde::de::DeserializeOwned;

use super::{ApiError, AppState};
use crate::registry::Precondition;
use crate::store::Revision;

/// A configuration record in a JSON body: 413 above the body limit, 400 for malformed
/// JSON, a wrong shape or an unknown field (the message names the line, column or field).
#[derive(Debug)]
pub struct JsonBody<T>(pub T);

impl<T: DeserializeOwned> FromRequest<AppState> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &AppState) -> Result<Self, ApiError> {
        let bytes = body_bytes(request, state).await?;
        contract::problems::from_json_strict(&bytes)
            .map(Self)
            .map_err(|e| ApiError::BadRequest(format!("the body is not valid for this call: {e}")))
    }
}

/// A wire message in a JSON body, read as [`JsonBody`] reads but ignoring unknown fields.
#[derive(Debug)]
pub struct WireBody<T>(pub T);

impl<T: DeserializeOwned> FromRequest<AppState> for WireBody<T> {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &AppState) -> Result<Self, ApiError> {
        let bytes = body_bytes(request, state).await?;
        serde_json::from_slice(&bytes).map(Self).map_err(|e| {
            ApiError::BadRequest(format!("the body is not valid JSON for this call: {e}"))
        })
    }
}

async fn body_bytes(request: Request, state: &AppState) -> Result<Bytes, ApiError> {
    Bytes::from_request(request, state)
        .await
        .map_err(|rejection| match rejection.status() {
            StatusCode::PAYLOAD_TOO_LARGE => ApiError::TooLarge {
                limit: state.settings().max_body_bytes,
            },
            _ => ApiError::BadRequest(format!(
                "could not read the request body: {}",
                rejection.body_text()
            )),
        })
}

/// The write precondition of a request: `If-Match: <revision>` (quoted or not) or
/// `If-None-Match: *` (the record must not exist); a 400 when either is unreadable.
pub fn precondition(headers: &HeaderMap) -> Result<Precondition, ApiError> {
    if let Some(value) = headers.get(header::IF_MATCH) {
        let text = value
            .to_str()
            .ok()
            .map(|t| t.trim().trim_start_matches("W/").trim_matches('"'))
            .ok_or_else(|| ApiError::BadRequest("If-Match is not text".into()))?;
        let revision: Revision = text.parse().map_err(|_| {
            ApiError::BadRequest(format!(
                "If-Match {text:?} is not a revision: send the ETag a read returned, e.g. If-Match: \"42\""
            ))
        })?;
        return Ok(Precondition::Revision(revision));
    }
    if let Some(value) = headers.get(header::IF_NONE_MATCH) {
        return match value.to_str().map(str::trim) {
            Ok("*") => Ok(Precondition::Absent),
            _ => Err(ApiError::BadRequest(
                "only If-None-Match: * (create, never replace) is supported on writes".into(),
            )),
        };
    }
    Ok(Precondition::None)
}

/// The `ETag` header carrying a record's mod revision.
pub fn etag(revision: Revision) -> (header::HeaderName, HeaderValue) {
    let value = HeaderValue::from_str(&format!("\"{revision}\""))
        .unwrap_or_else(|_| HeaderValue::from_static("\"0\""));
    (header::ETAG, value)
}
