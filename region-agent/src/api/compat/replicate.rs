//! Replicate's predictions, as its official client calls them with `base_url` pointed at an
//! edge:
//!
//! - `POST /v1/models/{owner}/{name}/predictions` (`{"input": {…}}`; with `Prefer: wait`
//!   or `Prefer: wait=N` it waits up to 60 s, or N s, and the agent's sync timeout) →
//!   `201` with the prediction;
//! - `GET /v1/predictions/{id}` → the prediction;
//! - `POST /v1/predictions/{id}/cancel` → the prediction, `canceled` (or still `processing`
//!   until a running job reaches its model's next safe point).
//!
//! A prediction's `status` is `starting` (queued), `processing`, `succeeded`, `failed` or
//! `canceled`; files in its `output` are links (strings), as Replicate's are.

use std::time::Duration;

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};

use super::super::jobs::{JobBody, find, parse_object, submit_parsed};
use super::super::links::{FileLinks, now_s};
use super::super::{ApiError, AppState, Tenant, public_url};
use super::{Surface, map_files, model_input, rfc3339, with_request_id};
use crate::jobs::{JobRecord, JobState, Priority, Webhook, WebhookStyle};

/// The longest `Prefer: wait`, as Replicate allows.
const MAX_WAIT: Duration = Duration::from_secs(60);

/// How long `Prefer` asks to wait: `wait` is [`MAX_WAIT`], `wait=N` is N seconds (1–60).
fn preferred_wait(headers: &HeaderMap) -> Result<Option<Duration>, ApiError> {
    let Some(prefer) = headers.get("prefer") else {
        return Ok(None);
    };
    let text = prefer.to_str().unwrap_or_default().trim();
    match text.split_once('=') {
        None if text == "wait" => Ok(Some(MAX_WAIT)),
        Some(("wait", n)) => match n.trim().parse::<u64>() {
            Ok(secs @ 1..=60) => Ok(Some(Duration::from_secs(secs))),
            _ => Err(ApiError::BadRequest(format!(
                "Prefer: wait=N takes 1 to 60 seconds, not {n:?}"
            ))),
        },
        _ => Ok(None),
    }
}

/// Replicate's webhook events; a delivery is sent at `start` and at `completed` (this
/// agent has no partial output or log events to send).
const EVENTS: [&str; 4] = ["start", "output", "logs", "completed"];

/// The job body from a prediction request's fields, its webhook under `public`.
fn job_body(mut fields: Map<String, Value>, public: Option<String>) -> Result<JobBody, ApiError> {
    if fields
        .get("webhook_completed")
        .is_some_and(|v| !v.is_null())
    {
        return Err(ApiError::Unprocessable(
            "webhook_completed is not taken; give webhook with webhook_events_filter".into(),
        ));
    }
    let events: Vec<String> = match fields.remove("webhook_events_filter") {
        None | Some(Value::Null) => EVENTS.iter().map(|e| (*e).to_owned()).collect(),
        Some(value) => serde_json::from_value(value).map_err(|_| {
            ApiError::BadRequest("webhook_events_filter must be a list of event names".into())
        })?,
    };
    if let Some(unknown) = events.iter().find(|e| !EVENTS.contains(&e.as_str())) {
        return Err(ApiError::BadRequest(format!(
            "webhook_events_filter: unknown event {unknown:?} (start, output, logs, completed)"
        )));
    }
    let webhook = match fields.remove("webhook") {
        None | Some(Value::Null) => None,
        Some(Value::String(url)) => Some(Webhook {
            url,
            style: WebhookStyle::Replicate,
            on_start: events.iter().any(|e| e == "start"),
            public_url: public,
        }),
        Some(_) => return Err(ApiError::BadRequest("webhook must be a URL".into())),
    };
    let input = match fields.remove("input") {
        Some(Value::Object(input)) => input,
        None | Some(Value::Null) => Map::new(),
        Some(_) => return Err(ApiError::BadRequest("input must be a JSON object".into())),
    };
    Ok(JobBody {
        input: model_input(input)?,
        priority: Priority::Normal,
        webhook,
    })
}

/// `POST /v1/models/{owner}/{name}/predictions`.
pub async fn create(
    State(state): State<AppState>,
    Tenant(tenant): Tenant,
    Path((owner, name)): Path<(String, String)>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let model = format!("{owner}/{name}");
    let wait = match preferred_wait(&headers) {
        Ok(wait) => wait,
        Err(err) => return Surface::Replicate.error(err).await,
    };
    let body = parse_object(&headers, body, state.0.max_body_bytes)
        .and_then(|fields| job_body(fields, public_url(&headers)));
    let input = body
        .as_ref()
        .map(|b| b.input.clone())
        .unwrap_or(Value::Null);
    let record = match submit_parsed(&state, &tenant, &model, &headers, body).await {
        Ok(record) => record,
        Err(err) => return Surface::Replicate.error(err).await,
    };
    let record = match wait {
        Some(wait) => {
            let wait = wait.min(state.0.sync_timeout);
            let rx = state.scheduler().watch(tenant.as_str(), &record.id);
            match rx {
                Some(mut rx) => {
                    let finished = {
                        let done = rx.wait_for(|r| r.state.is_final());
                        matches!(tokio::time::timeout(wait, done).await, Ok(Ok(_)))
                    };
                    tracing::debug!(job = %record.id, finished, "waited as Prefer asked");
                    rx.borrow().clone()
                }
                None => record,
            }
        }
        None => record,
    };
    let mut prediction = prediction(state.links(), public_url(&headers).as_deref(), &record);
    prediction["input"] = input;
    with_request_id(
        (StatusCode::CREATED, Json(prediction)).into_response(),
        &record.id,
    )
}

/// `GET /v1/predictions/{id}`.
pub async fn get(
    State(state): State<AppState>,
    Tenant(tenant): Tenant,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    match find(&state, tenant.as_str(), &id) {
        Ok(record) => answer(&state, &headers, StatusCode::OK, &record),
        Err(err) => Surface::Replicate.error(err).await,
    }
}

/// `POST /v1/predictions/{id}/cancel`: the prediction after the cancellation; one that
/// finished already is answered as it is.
pub async fn cancel(
    State(state): State<AppState>,
    Tenant(tenant): Tenant,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    let record = match find(&state, tenant.as_str(), &id) {
        Ok(record) => record,
        Err(err) => return Surface::Replicate.error(err).await,
    };
    let record = if record.state.is_final() {
        record
    } else {
        match state.scheduler().cancel(tenant.as_str(), &id).await {
            Ok(crate::scheduler::Cancellation::Cancelled(done)) => done,
            Ok(crate::scheduler::Cancellation::Requested(running)) => running,
            Err(crate::scheduler::CancelError::NotCancellable(_)) => {
                find(&state, tenant.as_str(), &id).unwrap_or(record)
            }
            Err(e) => {
                let err = super::super::jobs::cancel_error(&id, e);
                return Surface::Replicate.error(err).await;
            }
        }
    };
    answer(&state, &headers, StatusCode::OK, &record)
}

/// `record`'s prediction at `status`, its links under the public URL in `headers`.
fn answer(
    state: &AppState,
    headers: &HeaderMap,
    status: StatusCode,
    record: &JobRecord,
) -> Response {
    let body = prediction(state.links(), public_url(headers).as_deref(), record);
    with_request_id((status, Json(body)).into_response(), &record.id)
}

/// Replicate's status name of a job state.
fn status_name(state: JobState) -> &'static str {
    match state {
        JobState::InQueue => "starting",
        JobState::InProgress => "processing",
        JobState::Completed => "succeeded",
        JobState::Failed => "failed",
        JobState::Cancelled => "canceled",
    }
}

/// The prediction object of `record`, its links under `public`.
pub(crate) fn prediction(links: &FileLinks, public: Option<&str>, record: &JobRecord) -> Value {
    let get_url = format!("{}/v1/predictions/{}", public.unwrap_or(""), record.id);
    let output = record.output.as_ref().map(|output| {
        map_files(output, |file| {
            let name = file["name"].as_str().unwrap_or_default();
            json!(links.url(public, &record.id, name, now_s()))
        })
    });
    let predict_time = match (record.started_at_ms, record.finished_at_ms) {
        (Some(start), Some(end)) => json!(end.saturating_sub(start) as f64 / 1000.0),
        _ => Value::Null,
    };
    let mut logs = format!("queued in {}\n", record.region);
    if record.started_at_ms.is_some() {
        logs.push_str("started\n");
    }
    if record.state.is_final() {
        logs.push_str(&format!("finished: {}\n", status_name(record.state)));
    }
    json!({
        "id": record.id,
        "model": record.model,
        "version": "",
        "status": status_name(record.state),
        "input": {},
        "output": output,
        "error": record.error.as_ref().map(|e| e.message.clone()),
        "logs": logs,
        "metrics": {"predict_time": predict_time},
        "created_at": rfc3339(record.queued_at_ms),
        "started_at": record.started_at_ms.map(rfc3339),
        "completed_at": record.finished_at_ms.map(rfc3339),
        "urls": {"get": get_url, "cancel": format!("{get_url}/cancel")},
        "data_removed": false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn prefer_wait_is_read_as_replicate_defines_it() {
        let with = |value: &'static str| {
            let mut headers = HeaderMap::new();
            headers.insert("prefer", HeaderValue::from_static(value));
            preferred_wait(&headers)
        };
        assert_eq!(preferred_wait(&HeaderMap::new()).unwrap(), None);
        assert_eq!(with("wait").unwrap(), Some(MAX_WAIT));
        assert_eq!(with("wait=5").unwrap(), Some(Duration::from_secs(5)));
        assert!(with("wait=0").is_err());
        assert!(with("wait=61").is_err());
        assert_eq!(with("respond-async").unwrap(), None);
    }
}
