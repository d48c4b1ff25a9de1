//! The API's one error type: each variant maps to an HTTP status and the contract's JSON
//! error body ([`contract::ErrorBody`], `{"error": {"type", "message", "reason"?}}`, API.md).
//! Bad input is always a 4xx. An internal failure is logged in full but answered with a
//! generic message and an id to find it in the log: never a path or an OS error.

use axum::Json;
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use contract::{ErrorBody, Refusal, headers};
use serde_json::json;

/// When to try again after a `disk_full` refusal, in seconds (`Retry-After`).
const DISK_FULL_RETRY_S: &str = "30";

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
    /// A file link that is altered or expired.
    #[error("{0}")]
    Forbidden(String),
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
    /// The body did not arrive within the body deadline.
    #[error("the body did not arrive within {0} ms")]
    BodyTimeout(u128),
    /// The body is not JSON.
    #[error("the body must be JSON (content-type: application/json)")]
    UnsupportedMediaType,
    /// The input is well-formed but cannot be used.
    #[error("{0}")]
    Unprocessable(String),
    /// Refused before acceptance; nothing was created.
    #[error("{0}")]
    Refused(Refusal),
    /// The tenant has as many jobs queued or running as its bound allows (a final answer:
    /// another region would say the same).
    #[error("{0}")]
    ConcurrencyLimited(String),
    /// The idempotency key was used for another submission.
    #[error("{0}")]
    KeyReused(String),
    /// A synchronous run did not finish in time; the job goes on.
    #[error("the request did not finish within {timeout_ms} ms; it goes on, poll its status")]
    Timeout {
        /// The job.
        request_id: String,
        /// How long was waited.
        timeout_ms: u128,
    },
    /// The agent failed (its disk); not the caller's fault. `detail` goes to the log only.
    #[error("the agent failed to handle the request; its log has the details")]
    Internal {
        /// What failed, for the log (may name paths).
        detail: String,
        /// The job concerned, when there is one.
        request_id: Option<String>,
    },
}

impl ApiError {
    /// The status and the error `type`.
    pub fn status_and_kind(&self) -> (StatusCode, &'static str) {
        match self {
            Self::Unauthorized | Self::UnauthorizedInternal => {
                (StatusCode::UNAUTHORIZED, "unauthorized")
            }
            Self::BadRequest(_) => (StatusCode::BAD_REQUEST, "bad_request"),
            Self::Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden"),
            Self::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            Self::NotReady(_) => (StatusCode::CONFLICT, "not_ready"),
            Self::NotCancellable(_) => (StatusCode::CONFLICT, "not_cancellable"),
            Self::TooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, "too_large"),
            Self::BodyTimeout(_) => (StatusCode::REQUEST_TIMEOUT, "body_timeout"),
            Self::UnsupportedMediaType => {
                (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type")
            }
            Self::Unprocessable(_) => (StatusCode::UNPROCESSABLE_ENTITY, "invalid_input"),
            Self::Refused(_) => (StatusCode::SERVICE_UNAVAILABLE, "refused"),
            Self::ConcurrencyLimited(_) => (StatusCode::TOO_MANY_REQUESTS, "concurrency_limited"),
            Self::KeyReused(_) => (StatusCode::UNPROCESSABLE_ENTITY, "idempotency_key_reused"),
            Self::Timeout { .. } => (StatusCode::GATEWAY_TIMEOUT, "timeout"),
            Self::Internal { .. } => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        }
    }
}

impl ApiError {
    /// An internal failure, `detail` for the log only.
    pub fn internal(detail: impl Into<String>) -> Self {
        Self::Internal {
            detail: detail.into(),
            request_id: None,
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
            Self::ConcurrencyLimited(_) => headers.push(("retry-after", "1".to_owned())),
            Self::Refused(refusal) => {
                body = body.with_reason(refusal.reason());
                headers.push((headers::REFUSED, refusal.reason().to_owned()));
                if *refusal == Refusal::DiskFull {
                    headers.push(("retry-after", DISK_FULL_RETRY_S.to_owned()));
                }
            }
            Self::Timeout { request_id: id, .. } => {
                request_id = Some(id.clone());
                headers.push((headers::REQUEST_ID, id.clone()));
            }
            Self::Internal {
                detail,
                request_id: job,
            } => {
                // The answer names an id the log line carries: the job's, or a new one.
                let error_id = job.clone().unwrap_or_else(error_id);
                tracing::error!(%detail, error_id, "internal error answered with 500");
                body = ErrorBody::new(kind, format!("{self} (error id {error_id})"));
                request_id = Some(error_id);
                if let Some(job) = job {
                    headers.push((headers::REQUEST_ID, job.clone()));
                }
            }
            _ => {}
        }
        let mut response = match request_id {
            // A timed-out run also names its job beside the error, to poll it; an internal
            // failure names the id its log line carries.
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

/// A fresh id for an internal failure that concerns no job: 32 lowercase hex digits.
fn error_id() -> String {
    format!("{:032x}", rand::random::<u128>())
}
