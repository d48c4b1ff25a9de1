//! OpenAI's image and audio calls, as its official SDK makes them with `base_url` pointed at
//! an edge (`<edge>/v1`). `model` is a Meridian model id. Each call runs its job and waits
//! for it (up to the agent's sync timeout):
//!
//! - `POST /v1/images/generations` (JSON: `prompt`, `size` as `WxH`, `n` = 1,
//!   `response_format` `url` | `b64_json`; `seed`, `steps`, `guidance` pass on to the model)
//!   for text-to-image models;
//! - `POST /v1/images/edits` (multipart: `image`, `prompt` — ignored by a model that takes
//!   none, such as the upscalers —, `response_format`) for image-to-image models;
//! - `POST /v1/audio/transcriptions` (multipart: `file`, `response_format` `json` | `text`
//!   | `srt` | `vtt` | `verbose_json`) for speech-to-text models.
//!
//! No text-to-audio model exists yet, so `POST /v1/audio/speech` is answered `404` by the
//! edge for every model. Errors are OpenAI's envelope.

use axum::Json;
use axum::body::Bytes;
use axum::extract::multipart::MultipartRejection;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Multipart, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use serde_json::{Map, Value, json};

use super::super::jobs::{JobBody, parse_object, submit_parsed, wait};
use super::super::links::now_s;
use super::super::{ApiError, AppState, Tenant, public_url};
use super::{Surface, is_file, with_request_id};
use crate::jobs::{JobRecord, JobState, Priority};

/// How an image comes back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ImageFormat {
    Url,
    B64Json,
}

impl ImageFormat {
    fn parse(value: Option<&str>) -> Result<Self, ApiError> {
        match value {
            None | Some("url") => Ok(Self::Url),
            Some("b64_json") => Ok(Self::B64Json),
            Some(other) => Err(ApiError::BadRequest(format!(
                "response_format must be url or b64_json, not {other:?}"
            ))),
        }
    }
}

/// The one image a call may ask for.
fn one_image(n: Option<&Value>) -> Result<(), ApiError> {
    match n {
        None | Some(Value::Null) => Ok(()),
        Some(n) if n.as_u64() == Some(1) => Ok(()),
        Some(n) => Err(ApiError::BadRequest(format!(
            "n must be 1 (one image a call), not {n}"
        ))),
    }
}

/// `POST /v1/images/generations`.
pub async fn generations(
    State(state): State<AppState>,
    Tenant(tenant): Tenant,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let request = parse_object(&headers, body, state.0.max_body_bytes)
        .and_then(|fields| generation_input(&fields).map(|input| (fields, input)));
    let (fields, input) = match request {
        Ok(parsed) => parsed,
        Err(err) => return Surface::OpenAi.error(err).await,
    };
    let model = fields["model"].as_str().unwrap_or_default().to_owned();
    let format = fields.get("response_format").and_then(Value::as_str);
    match ImageFormat::parse(format) {
        Ok(format) => image_job(&state, &tenant, &model, &headers, input, format).await,
        Err(err) => Surface::OpenAi.error(err).await,
    }
}

/// A text-to-image model's input from the generation call's fields.
fn generation_input(fields: &Map<String, Value>) -> Result<Value, ApiError> {
    if !fields.get("model").is_some_and(Value::is_string) {
        return Err(ApiError::BadRequest("model is required".into()));
    }
    one_image(fields.get("n"))?;
    let prompt = fields
        .get("prompt")
        .and_then(Value::as_str)
        .ok_or_else(|| ApiError::BadRequest("prompt is required".into()))?;
    let mut input = json!({"prompt": prompt});
    if let Some(size) = fields.get("size").and_then(Value::as_str)
        && size != "auto"
    {
        let (width, height) = size
            .split_once('x')
            .and_then(|(w, h)| Some((w.parse::<u32>().ok()?, h.parse::<u32>().ok()?)))
            .ok_or_else(|| {
                ApiError::BadRequest(format!("size must be WIDTHxHEIGHT, not {size:?}"))
            })?;
        input["width"] = json!(width);
        input["height"] = json!(height);
    }
    for field in ["seed", "steps", "guidance"] {
        if let Some(value) = fields.get(field) {
            input[field] = value.clone();
        }
    }
    Ok(input)
}

/// The fields of a multipart form: text fields and file fields (as base64), by name; the
/// first of repeated ones (OpenAI's `image[]` takes several; a model takes one). `model` is
/// required.
async fn form(
    multipart: Result<Multipart, MultipartRejection>,
) -> Result<Map<String, Value>, ApiError> {
    let mut multipart = multipart.map_err(|e| ApiError::BadRequest(e.to_string()))?;
    let mut fields = Map::new();
    let bad = |e: axum::extract::multipart::MultipartError| {
        ApiError::BadRequest(format!("the multipart body cannot be read: {e}"))
    };
    while let Some(field) = multipart.next_field().await.map_err(bad)? {
        let name = field
            .name()
            .unwrap_or_default()
            .trim_end_matches("[]")
            .to_owned();
        let is_file = field.file_name().is_some();
        let bytes = field.bytes().await.map_err(bad)?;
        let value = if is_file {
            Value::String(base64::engine::general_purpose::STANDARD.encode(&bytes))
        } else {
            Value::String(String::from_utf8_lossy(&bytes).into_owned())
        };
        fields.entry(name).or_insert(value);
    }
    if !fields.get("model").is_some_and(Value::is_string) {
        return Err(ApiError::BadRequest("model is required".into()));
    }
    Ok(fields)
}

/// `POST /v1/images/edits`.
pub async fn edits(
    State(state): State<AppState>,
    Tenant(tenant): Tenant,
    headers: HeaderMap,
    multipart: Result<Multipart, MultipartRejection>,
) -> Response {
    let parsed = async {
        let fields = form(multipart).await?;
        let n = fields
            .get("n")
            .and_then(|n| n.as_str()?.parse::<u64>().ok());
        one_image(n.map(Value::from).as_ref())?;
        let image = fields
            .get("image")
            .cloned()
            .ok_or_else(|| ApiError::BadRequest("image is required".into()))?;
        let format = ImageFormat::parse(fields.get("response_format").and_then(Value::as_str))?;
        let model = fields["model"].as_str().unwrap_or_default().to_owned();
        Ok::<_, ApiError>((model, json!({"image": image}), format))
    };
    match parsed.await {
        Ok((model, input, format)) => {
            image_job(&state, &tenant, &model, &headers, input, format).await
        }
        Err(err) => Surface::OpenAi.error(err).await,
    }
}

/// Runs an image job and answers `{created, data: [{url | b64_json}]}`.
async fn image_job(
    state: &AppState,
    tenant: &contract::TenantId,
    model: &str,
    headers: &HeaderMap,
    input: Value,
    format: ImageFormat,
) -> Response {
    let record = match run(state, tenant, model, headers, input).await {
        Ok(record) => record,
        Err(err) => return Surface::OpenAi.error(err).await,
    };
    let Some(file) = first_file(&record) else {
        let err = ApiError::Unprocessable(format!("model {model} made no image"));
        return Surface::OpenAi.error(err).await;
    };
    let name = file["name"].as_str().unwrap_or_default().to_owned();
    let item = match format {
        ImageFormat::Url => {
            let public = public_url(headers);
            json!({"url": state.links().url(public.as_deref(), &record.id, &name, now_s())})
        }
        ImageFormat::B64Json => {
            let Some(bytes) = state
                .scheduler()
                .file(tenant.as_str(), &record.id, &name)
                .await
            else {
                let err = ApiError::internal(format!("file {name} of {} is gone", record.id));
                return Surface::OpenAi.error(err).await;
            };
            json!({"b64_json": base64::engine::general_purpose::STANDARD.encode(bytes)})
        }
    };
    let created = record.finished_at_ms.unwrap_or_default() / 1000;
    let body = json!({"created": created, "data": [item]});
    with_request_id(Json(body).into_response(), &record.id)
}

/// Submits and waits for a job; a job that failed is its error.
async fn run(
    state: &AppState,
    tenant: &contract::TenantId,
    model: &str,
    headers: &HeaderMap,
    input: Value,
) -> Result<JobRecord, ApiError> {
    let body = Ok(JobBody {
        input,
        priority: Priority::Normal,
        webhook: None,
    });
    let record = submit_parsed(state, tenant, model, headers, body).await?;
    let done = wait(state, tenant.as_str(), &record.id).await?;
    match (done.state, &done.error) {
        (JobState::Completed, _) => Ok(done),
        (_, Some(error)) if error.kind == "input" => {
            Err(ApiError::Unprocessable(error.message.clone()))
        }
        (_, error) => Err(ApiError::Internal {
            detail: error
                .as_ref()
                .map_or_else(String::new, |e| e.message.clone()),
            request_id: Some(done.id.clone()),
        }),
    }
}

/// The first file object of a job's output.
fn first_file(record: &JobRecord) -> Option<&Value> {
    record
        .output
        .as_ref()?
        .as_object()?
        .values()
        .find(|v| is_file(v))
}

/// `POST /v1/audio/transcriptions`.
pub async fn transcriptions(
    State(state): State<AppState>,
    Tenant(tenant): Tenant,
    headers: HeaderMap,
    multipart: Result<Multipart, MultipartRejection>,
) -> Response {
    let parsed = async {
        let fields = form(multipart).await?;
        let audio = fields
            .get("file")
            .cloned()
            .ok_or_else(|| ApiError::BadRequest("file is required".into()))?;
        let format = fields
            .get("response_format")
            .and_then(Value::as_str)
            .unwrap_or("json")
            .to_owned();
        if !["json", "text", "srt", "vtt", "verbose_json"].contains(&format.as_str()) {
            return Err(ApiError::BadRequest(format!(
                "response_format must be json, text, srt, vtt or verbose_json, not {format:?}"
            )));
        }
        let model = fields["model"].as_str().unwrap_or_default().to_owned();
        Ok((model, json!({"audio": audio}), format))
    };
    let (model, input, format) = match parsed.await {
        Ok(parsed) => parsed,
        Err(err) => return Surface::OpenAi.error(err).await,
    };
    let record = match run(&state, &tenant, &model, &headers, input).await {
        Ok(record) => record,
        Err(err) => return Surface::OpenAi.error(err).await,
    };
    let output = record.output.clone().unwrap_or(Value::Null);
    let Some(text) = output.get("text").and_then(Value::as_str) else {
        let err = ApiError::Unprocessable(format!("model {model} does not transcribe speech"));
        return Surface::OpenAi.error(err).await;
    };
    let segments = output["segments"].as_array().cloned().unwrap_or_default();
    let duration = record
        .usage
        .as_ref()
        .map_or(0.0, |u| u.units_nanos.as_amount());
    let response = match format.as_str() {
        "text" => plain(format!("{text}\n"), "text/plain; charset=utf-8"),
        "srt" => plain(subtitles(&segments, false), "text/plain; charset=utf-8"),
        "vtt" => plain(subtitles(&segments, true), "text/vtt; charset=utf-8"),
        "verbose_json" => Json(json!({
            "task": "transcribe",
            "language": "english",
            "duration": duration,
            "text": text,
            "segments": segments.iter().enumerate().map(|(i, s)| json!({
                "id": i, "seek": 0, "start": s["start_s"], "end": s["end_s"],
                "text": s["text"], "temperature": 0.0,
            })).collect::<Vec<_>>(),
        }))
        .into_response(),
        _ => Json(json!({"text": text})).into_response(),
    };
    with_request_id(response, &record.id)
}

fn plain(text: String, content_type: &'static str) -> Response {
    (StatusCode::OK, [("content-type", content_type)], text).into_response()
}

/// SubRip (`vtt`: WebVTT) subtitles of `segments` (`start_s`, `end_s`, `text`).
fn subtitles(segments: &[Value], vtt: bool) -> String {
    let stamp = |seconds: f64| {
        let ms = (seconds.max(0.0) * 1000.0).round() as u64;
        let (h, m, s, ms) = (ms / 3_600_000, ms / 60_000 % 60, ms / 1000 % 60, ms % 1000);
        if vtt {
            format!("{h:02}:{m:02}:{s:02}.{ms:03}")
        } else {
            format!("{h:02}:{m:02}:{s:02},{ms:03}")
        }
    };
    let mut out = String::from(if vtt { "WEBVTT\n\n" } else { "" });
    for (i, segment) in segments.iter().enumerate() {
        let start = stamp(segment["start_s"].as_f64().unwrap_or(0.0));
        let end = stamp(segment["end_s"].as_f64().unwrap_or(0.0));
        let text = segment["text"].as_str().unwrap_or_default().trim();
        if !vtt {
            out.push_str(&format!("{}\n", i + 1));
        }
        out.push_str(&format!("{start} --> {end}\n{text}\n\n"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_counts_are_read_as_openai_writes_them() {
        let Value::Object(fields) =
            json!({"model": "m", "prompt": "a fox", "size": "128x64", "seed": 3})
        else {
            panic!()
        };
        assert_eq!(
            generation_input(&fields).unwrap(),
            json!({"prompt": "a fox", "width": 128, "height": 64, "seed": 3})
        );
        let Value::Object(two) = json!({"model": "m", "prompt": "p", "n": 2}) else {
            panic!()
        };
        assert!(
            matches!(generation_input(&two), Err(ApiError::BadRequest(m)) if m.contains("n must be 1"))
        );
        let Value::Object(bad) = json!({"model": "m", "prompt": "p", "size": "big"}) else {
            panic!()
        };
        assert!(generation_input(&bad).is_err());
    }

    #[test]
    fn subtitles_number_and_time_each_segment() {
        let segments = vec![
            json!({"start_s": 0.0, "end_s": 1.5, "text": " Hello."}),
            json!({"start_s": 61.25, "end_s": 3723.0, "text": "World"}),
        ];
        assert_eq!(
            subtitles(&segments, false),
            "1\n00:00:00,000 --> 00:00:01,500\nHello.\n\n2\n00:01:01,250 --> 01:02:03,000\nWorld\n\n"
        );
        assert!(
            subtitles(&segments, true)
                .starts_with("WEBVTT\n\n00:00:00.000 --> 00:00:01.500\nHello.\n")
        );
    }
}
