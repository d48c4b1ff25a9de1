//! The one error type of the public API: each kind maps to an HTTP status and the JSON body
//! `{"error": {"type", "message"}}` (docs/design.md §4); the compatible surfaces write the
//! same error in their own envelopes ([`Surface`](crate::surface::Surface)).

use std::fmt;

use contract::ErrorBody;

/// The `Retry-After` of a call about a request whose instance cannot be reached, in seconds:
/// about one heartbeat lease, after which the snapshot tells whether it is back.
pub const INSTANCE_AWAY_RETRY_SECS: u64 = 5;

/// What went wrong with a client's request, as the client is told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// HTTP status.
    pub status: u16,
    /// Stable machine-readable kind, e.g. `unauthorized`.
    pub kind: &'static str,
    /// A sentence for a person.
    pub message: String,
    /// Seconds for `Retry-After`, for quota refusals.
    pub retry_after: Option<u64>,
    /// A finer code for surfaces whose errors carry one (OpenAI's `model_not_found`); the
    /// kind where absent.
    pub code: Option<&'static str>,
}

impl ApiError {
    fn new(status: u16, kind: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            kind,
            message: message.into(),
            retry_after: None,
            code: None,
        }
    }

    /// 400: the request cannot be understood.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(400, "bad_request", message)
    }

    /// 401: no key, or a key that is malformed, unknown, wrong or revoked.
    pub fn unauthorized() -> Self {
        Self::new(
            401,
            "unauthorized",
            "a valid API key is required: Authorization: Key <key> or Bearer <key>",
        )
    }

    /// 403: the key may not do this.
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(403, "forbidden", message)
    }

    /// 404: nothing here.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(404, "not_found", message)
    }

    /// 404: `model` is not in the catalog.
    pub fn unknown_model(model: &str) -> Self {
        Self {
            code: Some("model_not_found"),
            ..Self::not_found(format!(
                "unknown model {model:?}: GET /v1/models lists the models this key may call"
            ))
        }
    }

    /// 400: the model is of another kind than the call takes (OpenAI's
    /// `model_not_supported`).
    pub fn model_not_supported(message: impl Into<String>) -> Self {
        Self {
            code: Some("model_not_supported"),
            ..Self::bad_request(message)
        }
    }

    /// 405: the path exists but not with this method.
    pub fn method_not_allowed(message: impl Into<String>) -> Self {
        Self::new(405, "method_not_allowed", message)
    }

    /// 413: the body is over the limit.
    pub fn too_large(limit: u64) -> Self {
        Self::new(
            413,
            "request_too_large",
            format!("the request body is over the limit of {limit} bytes"),
        )
    }

    /// 422: the request is well formed but names something invalid.
    pub fn unprocessable(message: impl Into<String>) -> Self {
        Self::new(422, "unprocessable", message)
    }

    /// 429 with `Retry-After`: a quota refused the request; `kind` says which.
    pub fn quota(kind: &'static str, message: impl Into<String>, retry_after: u64) -> Self {
        Self {
            retry_after: Some(retry_after.max(1)),
            ..Self::new(429, kind, message)
        }
    }

    /// 451: no region inside the residency serves the model.
    pub fn residency(message: impl Into<String>) -> Self {
        Self::new(451, "residency", message)
    }

    /// 503: no allowed region can take the request now.
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(503, "unavailable", message)
    }

    /// 503 with `Retry-After`: the instance that holds a request cannot be reached now, and
    /// may be back (it keeps its jobs on disk).
    pub fn instance_away(region: &str, instance: &str) -> Self {
        Self {
            retry_after: Some(INSTANCE_AWAY_RETRY_SECS),
            ..Self::new(
                503,
                "instance_unavailable",
                format!(
                    "instance {instance} of region {region}, which holds this request, cannot be \
                     reached now; it keeps its jobs and answers for them again when it is back: \
                     try again later"
                ),
            )
        }
    }

    /// 502: the region's agent failed in a way that is not the client's fault.
    pub fn bad_gateway(message: impl Into<String>) -> Self {
        Self::new(502, "bad_gateway", message)
    }

    /// 504: the region's agent did not answer in time.
    pub fn timeout(message: impl Into<String>) -> Self {
        Self::new(504, "timeout", message)
    }

    /// 500: the edge itself failed (never for bad input).
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(500, "internal", message)
    }

    /// The JSON body.
    pub fn body(&self) -> Vec<u8> {
        ErrorBody::new(self.kind, &self.message).to_json()
    }
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}: {}", self.status, self.kind, self.message)
    }
}

impl std::error::Error for ApiError {}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn the_body_is_the_documented_json() {
        let err = ApiError::quota("rate_limited", "slow down", 0);
        assert_eq!((err.status, err.retry_after), (429, Some(1)));
        let body: serde_json::Value = serde_json::from_slice(&err.body()).unwrap();
        assert_eq!(body["error"]["type"], "rate_limited");
        assert_eq!(body["error"]["message"], "slow down");
    }
}
