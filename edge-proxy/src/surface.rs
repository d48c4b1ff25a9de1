//! The public API's surfaces: Meridian's own (`/v1/run`, `/v1/queue`, `/v1/requests`) and
//! the compatible ones that let a developer keep the client they already use — fal's queue
//! protocol under `/fal/queue` and `/fal/run`, OpenAI's media endpoints under `/v1/images`
//! and `/v1/audio`, Replicate's predictions under `/v1/models/{owner}/{name}/predictions`
//! and `/v1/predictions`. The edge routes all of them the same way (the agent answers them
//! in their own shapes); what differs is the envelope of the errors the edge answers itself,
//! which each client reads in its own way.

use serde_json::{Value, json};

use crate::error::ApiError;

/// The surface a call belongs to, by its path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Surface {
    /// Meridian's own API: `{"error": {"type", "message"}}`.
    #[default]
    Native,
    /// fal's queue protocol: `{"detail", "error_type"}`.
    Fal,
    /// OpenAI's media endpoints: `{"error": {"message", "type", "param", "code"}}`.
    OpenAi,
    /// Replicate's predictions API: `{"title", "detail", "status"}`.
    Replicate,
}

impl Surface {
    /// The surface of `path` (whether or not it is a call).
    pub fn of_path(path: &str) -> Surface {
        let mut parts = path.trim_start_matches('/').split('/');
        match (parts.next(), parts.next()) {
            (Some("fal"), _) => Surface::Fal,
            (Some("v1"), Some("images" | "audio")) => Surface::OpenAi,
            (Some("v1"), Some("predictions")) => Surface::Replicate,
            // `/v1/models` alone is Meridian's list; deeper is Replicate's.
            (Some("v1"), Some("models")) if parts.next().is_some() => Surface::Replicate,
            _ => Surface::Native,
        }
    }

    /// The JSON body of `err` as this surface's clients read it.
    pub fn error_body(self, err: &ApiError) -> Vec<u8> {
        let body: Value = match self {
            Surface::Native => return err.body(),
            Surface::Fal => json!({ "detail": err.message, "error_type": err.kind }),
            Surface::OpenAi => json!({
                "error": {
                    "message": err.message,
                    "type": err.kind,
                    "param": Value::Null,
                    "code": err.code.unwrap_or(err.kind),
                }
            }),
            Surface::Replicate => json!({
                "title": err.kind,
                "detail": err.message,
                "status": err.status,
            }),
        };
        body.to_string().into_bytes()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn rendered(surface: Surface, err: &ApiError) -> Value {
        serde_json::from_slice(&surface.error_body(err)).unwrap()
    }

    #[test]
    fn paths_belong_to_their_surfaces() {
        for (path, surface) in [
            ("/v1/run/meridian/esrgan-x4", Surface::Native),
            (
                "/v1/requests/eu-west.0123456789abcdef0123456789abcdef",
                Surface::Native,
            ),
            ("/v1/models", Surface::Native),
            ("/", Surface::Native),
            ("/fal/queue/meridian/esrgan-x4", Surface::Fal),
            ("/fal/nothing", Surface::Fal),
            ("/v1/images/generations", Surface::OpenAi),
            ("/v1/audio/transcriptions", Surface::OpenAi),
            (
                "/v1/models/meridian/esrgan-x4/predictions",
                Surface::Replicate,
            ),
            ("/v1/predictions/x/cancel", Surface::Replicate),
        ] {
            assert_eq!(Surface::of_path(path), surface, "{path}");
        }
    }

    #[test]
    fn each_surface_writes_errors_in_its_own_envelope() {
        let quota = ApiError::quota("rate_limited", "slow down", 3);
        let native = rendered(Surface::Native, &quota);
        assert_eq!(native["error"]["type"], "rate_limited");
        assert_eq!(native["error"]["message"], "slow down");
        let fal = rendered(Surface::Fal, &quota);
        assert_eq!(
            fal,
            json!({"detail": "slow down", "error_type": "rate_limited"})
        );
        let openai = rendered(Surface::OpenAi, &quota);
        assert_eq!(
            openai,
            json!({"error": {"message": "slow down", "type": "rate_limited", "param": null,
                             "code": "rate_limited"}})
        );
        let replicate = rendered(Surface::Replicate, &quota);
        assert_eq!(
            replicate,
            json!({"title": "rate_limited", "detail": "slow down", "status": 429})
        );
    }

    #[test]
    fn openai_names_an_unknown_model_with_its_own_code() {
        let unknown = ApiError::unknown_model("acme/nothing");
        assert_eq!(unknown.status, 404);
        let openai = rendered(Surface::OpenAi, &unknown);
        assert_eq!(openai["error"]["code"], "model_not_found");
        assert_eq!(openai["error"]["type"], "not_found");
        assert!(
            openai["error"]["message"]
                .as_str()
                .unwrap()
                .contains("acme/nothing")
        );
        // Meridian's own surface keeps its type.
        assert_eq!(
            rendered(Surface::Native, &unknown)["error"]["type"],
            "not_found"
        );
    }
}
