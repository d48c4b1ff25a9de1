//! The JSON error body every Meridian component answers with:
//! `{"error": {"type", "message", "details"?, "reason"?}}`.

use serde::{Deserialize, Serialize};

use crate::problems::ConfigProblem;

/// The body of every error answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// The error.
    pub error: ErrorInfo,
}

/// What went wrong.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorInfo {
    /// A stable machine-readable kind, e.g. `invalid_catalog`, `conflict`, `unauthorized`.
    #[serde(rename = "type")]
    pub kind: String,
    /// A sentence for a person.
    pub message: String,
    /// Each problem of an invalid write or input, with its place and fix.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub details: Vec<ConfigProblem>,
    /// A refusal's reason ([`crate::Refusal::reason`]), when an agent refused a job.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

impl ErrorBody {
    /// An error of `kind` with `message` and nothing else.
    pub fn new(kind: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            error: ErrorInfo {
                kind: kind.into(),
                message: message.into(),
                details: Vec::new(),
                reason: None,
            },
        }
    }

    /// The same error with `details`.
    #[must_use]
    pub fn with_details(mut self, details: Vec<ConfigProblem>) -> Self {
        self.error.details = details;
        self
    }

    /// The same error with a refusal's reason.
    #[must_use]
    pub fn with_reason(mut self, reason: impl Into<String>) -> Self {
        self.error.reason = Some(reason.into());
        self
    }

    /// The body as JSON bytes.
    pub fn to_json(&self) -> Vec<u8> {
        // A struct of strings always serializes.
        serde_json::to_vec(self).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_body_has_the_documented_shape_and_reads_unknown_fields() {
        let body = ErrorBody::new("refused", "the model's queue is full").with_reason("queue_full");
        let value: serde_json::Value = serde_json::from_slice(&body.to_json()).unwrap();
        assert_eq!(value["error"]["type"], "refused");
        assert_eq!(value["error"]["reason"], "queue_full");
        assert!(value["error"].get("details").is_none());
        let newer = r#"{"error":{"type":"x","message":"m","hint":"new"},"trace":"t"}"#;
        let read: ErrorBody = serde_json::from_str(newer).unwrap();
        assert_eq!(read.error.kind, "x");
    }
}
