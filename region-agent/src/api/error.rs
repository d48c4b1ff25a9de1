//! The API's one error type: each variant maps to an HTTP status and the contract's JSON
//! error body ([`contract::ErrorBody`], `{"error": {"type", "message", "reason"?}}`, API.md).
//! Bad input is always a 4xx.

use axum::Json;
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use contract::{ErrorBody, Refusal, headers};
use serde_json::json;

/// Everything a `/v1/` call can answer with instead of success.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// Wrong or missing edge token.
    #[error("missing or wrong x-meridian-edge-token")]
    Unauthorized,
    /// Wrong or missing agent token on an internal call.
    #[error("missing or wrong Authorization: Bearer <agent token>")]
    UnauthorizedInternal,
    /// Malformed JSON, a missing field or header.
    #[error("{0}")]
    BadRequest(String),
    /// No such request (or another tenant's), model route or file.
    #[error("{0}")]
    NotFound(String),
    /// The result is not ready yet.
    #[error("request {0} has not finished")]
    NotReady(String),
    /// The job can no longer be cancelled.
    #[error("{0}")]
    NotCancellable(String),
    /// The body is over the limit.
    #[error("the body is larger than {0} bytes")]
    TooLarge(usize),
    /// The body is not JSON.
    #[error("the body must be JSON (content-type: application/json)")]
    UnsupportedMediaType,
    /// The input is well-formed but cannot be used.
    #[error("{0}")]
    Unprocessable(String),
    /// Refused before acceptance; nothing was created.
    #[error("{0}")]
    Refused(Refusal),
    /// A synchronous run did not finish in time; the job goes on.
    #[error("the request did not finish within {timeout_ms} ms; it goes on, poll its status")]
    Timeout {
        /// The job.
        request_id: String,
        /// How long was waited.
        timeout_ms: u128,
    },
    /// The agent failed (its disk); not the caller's fault.
    #[error("{0}")]
    Internal(String),
}

impl ApiError {
    /// The status and the error `type`.
    pub fn status_and_kind(&self) -> (StatusCode, &'static str) {
        match self {
            Self::Unauthorized | Self::UnauthorizedInternal => {
                (StatusCode::UNAUTHORIZED, "unauthorized")
            }
            Self::BadRequest(_) => (StatusCode::BAD_REQUEST, "bad_request"),
            Self::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            Self::NotReady(_) => (StatusCode::CONFLICT, "not_ready"),
            Self::NotCancellable(_) => (StatusCode::CONFLICT, "not_cancellable"),
            Self::TooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, "too_large"),
            Self::UnsupportedMediaType => {
                (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type")
            }
            Self::Unprocessable(_) => (StatusCode::UNPROCESSABLE_ENTITY, "invalid_input"),
            Self::Refused(_) => (StatusCode::SERVICE_UNAVAILABLE, "refused"),
            Self::Timeout { .. } => (StatusCode::GATEWAY_TIMEOUT, "timeout"),
            Self::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, kind) = self.status_and_kind();
        let mut body = ErrorBody::new(kind, self.to_string());
        let mut headers = Vec::new();
        let mut request_id = None;
        match &self {
            Self::Refused(refusal) => {
                body = body.with_reason(refusal.reason());
                headers.push((headers::REFUSED, refusal.reason().to_owned()));
            }
            Self::Timeout { request_id: id, .. } => {
                request_id = Some(id.clone());
                headers.push((headers::REQUEST_ID, id.clone()));
            }
            Self::Internal(message) => {
                tracing::error!(%message, "internal error answered with 500")
            }
            _ => {}
        }
        let mut response = match request_id {
            // A timed-out run also names its job beside the error, to poll it.
            Some(id) => {
                let mut value = serde_json::to_value(&body).unwrap_or_default();
                value["request_id"] = json!(id);
                (status, Json(value)).into_response()
            }
            None => (status, Json(body)).into_response(),
        };
        for (name, value) in headers {
            if let Ok(value) = HeaderValue::from_str(&value) {
                response.headers_mut().insert(name, value);
            }
        }
        response
    }
}
