//! The one error type of the HTTP API: each variant maps to a status and the JSON body
//! `{"error": {"type", "message", "details"}}`.
//!
//! Bad input is always a 4xx naming what to change; 5xx are kept for a store that cannot
//! serve (503) or holds data this build cannot read (500).

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use contract::{ConfigProblem, ErrorBody, SchemaError};

use crate::store::StoreError;
use crate::store::versioned::VersionError;

/// Why an API call failed.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// No token, or the wrong one.
    #[error("missing or wrong token: send `Authorization: Bearer <token>`")]
    Unauthorized,
    /// The client's address presented too many wrong tokens; its token was not checked.
    #[error(
        "too many wrong tokens from this address: try again in {} s",
        retry_after_secs(*.retry_after)
    )]
    Throttled {
        /// How long until its token is checked again.
        retry_after: std::time::Duration,
    },
    /// The body or a parameter could not be read.
    #[error("{0}")]
    BadRequest(String),
    /// The body is larger than the configured limit.
    #[error("the request body is larger than {limit} bytes")]
    TooLarge {
        /// The limit, in bytes.
        limit: usize,
    },
    /// The record does not exist.
    #[error("{what} not found")]
    NotFound {
        /// What was looked for, e.g. `region eu-west`.
        what: String,
    },
    /// A route that does not exist.
    #[error("no such endpoint: {0}")]
    NoRoute(String),
    /// A route that exists, called with a method it does not take.
    #[error("{0} is not supported here")]
    MethodNotAllowed(String),
    /// The request took longer than the server allows.
    #[error("the request took longer than {0:?}")]
    Timeout(std::time::Duration),
    /// The record changed since the revision the caller named (or exists when it must not).
    #[error(
        "the record changed: expected revision {expected}, found {actual} (0: absent); read it again and retry"
    )]
    Conflict {
        /// The revision the caller expected (0: absent).
        expected: i64,
        /// The record's current revision (0: absent).
        actual: i64,
    },
    /// The write would make the catalog invalid.
    #[error("{message}")]
    Invalid {
        /// A summary.
        message: String,
        /// Every problem, with its path and fix.
        details: Vec<ConfigProblem>,
    },
    /// A region agent must register (again) before it can send heartbeats.
    #[error("region {region} is not registered or its lease expired: register again")]
    NotRegistered {
        /// The region.
        region: String,
    },
    /// A message of a schema major version this build cannot read.
    #[error(transparent)]
    UnsupportedSchema(#[from] SchemaError),
    /// A region's agent could not be reached or answered in a way that cannot be passed on.
    #[error("{0}")]
    RegionUnavailable(String),
    /// A region's agent refused a forwarded call; its status and error are passed on.
    #[error("the region's agent answered: {}", .body.error.message)]
    Agent {
        /// The agent's status (a 4xx).
        status: StatusCode,
        /// The agent's error.
        body: ErrorBody,
    },
    /// The store cannot serve now.
    #[error("the store is unavailable: {0}")]
    Unavailable(String),
    /// The store holds data this build cannot read, or the server failed otherwise.
    #[error("internal error: {0}")]
    Internal(String),
}

impl ApiError {
    /// An invalid write with a single problem.
    pub fn invalid_one(
        path: impl Into<String>,
        problem: impl Into<String>,
        fix: impl Into<String>,
    ) -> Self {
        let problem = problem.into();
        Self::Invalid {
            message: problem.clone(),
            details: vec![ConfigProblem::new(path, problem, fix)],
        }
    }

    /// The HTTP status the error is answered with.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::Unauthorized => StatusCode::UNAUTHORIZED,
            Self::Throttled { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Self::NotFound { .. } | Self::NoRoute(_) | Self::NotRegistered { .. } => {
                StatusCode::NOT_FOUND
            }
            Self::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            Self::Timeout(_) => StatusCode::REQUEST_TIMEOUT,
            Self::Conflict { .. } => StatusCode::CONFLICT,
            Self::Invalid { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            Self::UnsupportedSchema(_) => StatusCode::BAD_REQUEST,
            Self::Agent { status, .. } => *status,
            Self::Unavailable(_) | Self::RegionUnavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The stable machine-readable kind in the body's `type`.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Unauthorized => "unauthorized",
            Self::Throttled { .. } => "throttled",
            Self::BadRequest(_) => "bad_request",
            Self::TooLarge { .. } => "too_large",
            Self::NotFound { .. } | Self::NoRoute(_) => "not_found",
            Self::MethodNotAllowed(_) => "method_not_allowed",
            Self::Timeout(_) => "timeout",
            Self::Conflict { .. } => "conflict",
            Self::Invalid { .. } => "invalid_catalog",
            Self::NotRegistered { .. } => "not_registered",
            Self::UnsupportedSchema(_) => "unsupported_schema",
            Self::RegionUnavailable(_) => "region_unavailable",
            Self::Agent { .. } => "agent_error",
            Self::Unavailable(_) => "unavailable",
            Self::Internal(_) => "internal",
        }
    }
}

/// Whole seconds to wait, rounded up, at least 1.
fn retry_after_secs(wait: std::time::Duration) -> u64 {
    (wait.as_secs() + u64::from(wait.subsec_nanos() > 0)).max(1)
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Conflict { expected, actual } => Self::Conflict { expected, actual },
            StoreError::NotFound { key } => Self::NotFound { what: key },
            StoreError::Unavailable(m) => Self::Unavailable(m),
            other => Self::Internal(other.to_string()),
        }
    }
}

impl From<VersionError> for ApiError {
    fn from(e: VersionError) -> Self {
        Self::Internal(e.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        if status.is_server_error() {
            tracing::warn!(error = %self, "request failed");
        }
        let body = match &self {
            Self::Agent { body, .. } => body.clone(),
            Self::Invalid { details, .. } => {
                ErrorBody::new(self.kind(), self.to_string()).with_details(details.clone())
            }
            _ => ErrorBody::new(self.kind(), self.to_string()),
        };
        let mut response = (status, axum::Json(body)).into_response();
        if status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        if let Self::Throttled { retry_after } = self {
            response.headers_mut().insert(
                header::RETRY_AFTER,
                HeaderValue::from(retry_after_secs(retry_after)),
            );
        }
        response
    }
}
