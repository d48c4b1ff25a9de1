//! The surfaces of hosted platforms, over the same jobs as the native API (API.md,
//! "Compatible surfaces"): fal's queue protocol ([`fal`]), OpenAI's image and audio calls
//! ([`openai`]) and Replicate's predictions ([`replicate`]). Each takes the platform's
//! request shapes, submits, reads and cancels jobs through the native calls' code, and
//! answers in the platform's shapes and error envelopes. What they share is here: errors
//! in each envelope, media fields given as `*_url`, and file objects.

pub mod fal;
pub mod openai;
pub mod replicate;

use axum::Json;
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};

use super::ApiError;

/// The most bytes of a native error body read back to re-wrap it.
const MAX_ERROR_BODY: usize = 64 * 1024;

/// A hosted platform whose shapes a call follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Surface {
    /// fal's queue protocol.
    Fal,
    /// OpenAI's API.
    OpenAi,
    /// Replicate's API.
    Replicate,
}

impl Surface {
    /// The error body of this surface for an error of `kind` with `message` at `status`.
    pub fn error_body(self, status: StatusCode, kind: &str, message: &str) -> Value {
        match self {
            Self::Fal => json!({"detail": message, "error_type": kind}),
            Self::OpenAi => json!({"error": {
                "message": message, "type": kind, "param": null, "code": kind,
            }}),
            Self::Replicate => json!({
                "title": kind, "detail": message, "status": status.as_u16(),
            }),
        }
    }

    /// The status a native status becomes: fal's client retries `409` for a minute, so on
    /// its paths a conflict (not ready, not cancellable) is a `400`.
    fn status(self, status: StatusCode) -> StatusCode {
        match (self, status) {
            (Self::Fal, StatusCode::CONFLICT) => StatusCode::BAD_REQUEST,
            _ => status,
        }
    }

    /// `err` as this surface answers it: the native answer's status (a fal `409` as `400`)
    /// and headers (`Retry-After`, `x-meridian-refused`, `x-request-id`), its type and
    /// message in the surface's envelope.
    pub async fn error(self, err: ApiError) -> Response {
        let native = err.into_response();
        let (parts, body) = native.into_parts();
        let body = axum::body::to_bytes(body, MAX_ERROR_BODY)
            .await
            .ok()
            .and_then(|bytes| serde_json::from_slice::<Value>(&bytes).ok())
            .unwrap_or(Value::Null);
        let kind = body["error"]["type"].as_str().unwrap_or("error");
        let message = body["error"]["message"]
            .as_str()
            .unwrap_or("the call failed");
        let status = self.status(parts.status);
        let mut response = (status, Json(self.error_body(status, kind, message))).into_response();
        for (name, value) in &parts.headers {
            if name != "content-type" && name != "content-length" {
                response.headers_mut().insert(name.clone(), value.clone());
            }
        }
        response
    }
}

/// The media fields a model takes, and the names the compatible surfaces give them.
const MEDIA_URL_FIELDS: [(&str, &str); 3] = [
    ("image_url", "image"),
    ("audio_url", "audio"),
    ("video_url", "video"),
];

/// A model's input from a compatible surface's arguments: `image_url`, `audio_url` and
/// `video_url` (a `data:` URI or an `http(s)` URL, as the surfaces name them) become the
/// model's `image`, `audio` and `video`; every other field is the model's own.
///
/// # Errors
///
/// `400` when both names of one field are given.
pub fn model_input(mut arguments: Map<String, Value>) -> Result<Value, ApiError> {
    for (url_name, field) in MEDIA_URL_FIELDS {
        if let Some(value) = arguments.remove(url_name) {
            if arguments.contains_key(field) {
                return Err(ApiError::BadRequest(format!(
                    "give {url_name} or {field}, not both"
                )));
            }
            arguments.insert(field.to_owned(), value);
        }
    }
    Ok(Value::Object(arguments))
}

/// Whether `value` is one of the agent's file objects (`name`, `content_type`, `url`).
pub fn is_file(value: &Value) -> bool {
    ["name", "content_type", "url"]
        .iter()
        .all(|field| value.get(field).is_some_and(Value::is_string))
}

/// `output` with each file object replaced by `file(object)`.
pub fn map_files(output: &Value, file: impl Fn(&Value) -> Value) -> Value {
    match output {
        Value::Object(fields) => Value::Object(
            fields
                .iter()
                .map(|(name, value)| {
                    let value = if is_file(value) {
                        file(value)
                    } else {
                        value.clone()
                    };
                    (name.clone(), value)
                })
                .collect(),
        ),
        other => other.clone(),
    }
}

/// Sets `x-request-id` on `response`.
pub fn with_request_id(mut response: Response, id: &str) -> Response {
    if let Ok(value) = HeaderValue::from_str(id) {
        response
            .headers_mut()
            .insert(contract::headers::REQUEST_ID, value);
    }
    response
}

/// RFC 3339 UTC time (millisecond precision) of Unix ms `ms`.
pub fn rfc3339(ms: u64) -> String {
    let secs = ms / 1000;
    let (days, rest) = (secs / 86_400, secs % 86_400);
    let (year, month, day) = civil_from_days(i64::try_from(days).unwrap_or(0));
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60,
        ms % 1000
    )
}

/// The civil date of the `days`-th day since 1970-01-01 (proleptic Gregorian).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let mp = (5 * day_of_year + 2) / 153;
    let day = u32::try_from(day_of_year - (153 * mp + 2) / 5 + 1).unwrap_or(1);
    let month = u32::try_from(if mp < 10 { mp + 3 } else { mp - 9 }).unwrap_or(1);
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_fields_become_the_models_media_fields() {
        let args = json!({"image_url": "data:image/png;base64,AA", "scale": 2});
        let Value::Object(args) = args else { panic!() };
        let input = model_input(args).unwrap();
        assert_eq!(
            input,
            json!({"image": "data:image/png;base64,AA", "scale": 2})
        );
        let Value::Object(both) = json!({"audio_url": "a", "audio": "b"}) else {
            panic!()
        };
        assert!(matches!(model_input(both), Err(ApiError::BadRequest(_))));
    }

    #[test]
    fn times_are_written_in_utc() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(951_827_696_789), "2000-02-29T12:34:56.789Z");
        assert_eq!(rfc3339(1_796_601_600_000), "2026-12-07T00:00:00.000Z");
    }

    #[tokio::test]
    async fn each_surface_has_its_envelope_and_fal_never_answers_409() {
        let read = |response: Response| async move {
            let status = response.status();
            let bytes = axum::body::to_bytes(response.into_body(), 1 << 16)
                .await
                .unwrap();
            (status, serde_json::from_slice::<Value>(&bytes).unwrap())
        };
        let (status, body) = read(Surface::Fal.error(ApiError::NotReady("x".into())).await).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(body["error_type"], "not_ready");
        assert_eq!(body["detail"], "request x has not finished");
        let not_found = ApiError::NotFound("no model".into());
        let (status, body) = read(Surface::OpenAi.error(not_found).await).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert_eq!(body["error"]["message"], "no model");
        assert_eq!(body["error"]["code"], "not_found");
        let limited = Surface::Replicate
            .error(ApiError::ConcurrencyLimited("busy".into()))
            .await;
        assert_eq!(limited.headers()["retry-after"], "1");
        let (status, body) = read(limited).await;
        assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(body["status"], 429);
        assert_eq!(body["detail"], "busy");
    }
}
