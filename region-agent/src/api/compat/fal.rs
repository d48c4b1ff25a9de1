//! fal's queue protocol, as its official clients call it with their hosts pointed at an
//! edge (`FAL_QUEUE_RUN_HOST=<edge>/fal/queue`, `FAL_RUN_HOST=<edge>/fal/run`):
//!
//! - `POST /fal/queue/{owner}/{model}`: the model's arguments as the body (no `input`
//!   wrapper; `image_url`, `audio_url`, `video_url` name media), `X-Fal-Queue-Priority:
//!   normal | low`; answers `request_id`, `status_url`, `response_url`, `cancel_url`
//!   (absolute) and `queue_position`.
//! - `GET …/requests/{id}/status[?logs=1]`: `IN_QUEUE` (with `queue_position`),
//!   `IN_PROGRESS` or `COMPLETED` (a failed or cancelled job with `error` and `error_type`),
//!   always with `logs`; `…/status/stream` sends them as server-sent events until
//!   `COMPLETED`.
//! - `GET …/requests/{id}`: the bare output, files as `{url, content_type, file_name,
//!   file_size}` (+ `width`, `height` for pictures); `PUT …/requests/{id}/cancel`.
//! - `POST /fal/run/{owner}/{model}`: runs and answers the bare output.
//!
//! fal's client retries `408`, `409` and `429` for about a minute, so no call here answers
//! `409`: a result asked for too early or a job that finished before its cancel is `400`.

use std::collections::HashMap;

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::Event;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::super::jobs::{JobBody, find, parse_object, submit_parsed};
use super::super::links::{FileLinks, now_s};
use super::super::{ApiError, AppState, Tenant, public_url};
use super::{Surface, map_files, model_input, rfc3339, with_request_id};
use crate::jobs::{JobRecord, JobState, Priority, Webhook, WebhookStyle};
use crate::scheduler::Cancellation;

/// fal's priority header.
const PRIORITY: &str = "x-fal-queue-priority";

/// The model and request of a call about a job.
type RequestPath = Path<(String, String, String)>;

/// The job body from fal's arguments and priority header.
fn job_body(
    state: &AppState,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<JobBody, ApiError> {
    let priority = match headers.get(PRIORITY).map(|v| v.to_str().unwrap_or("")) {
        None | Some("normal") => Priority::Normal,
        Some("low") => Priority::Low,
        Some(other) => {
            return Err(ApiError::BadRequest(format!(
                "X-Fal-Queue-Priority must be normal or low, not {other:?}"
            )));
        }
    };
    let arguments = parse_object(headers, body, state.0.max_body_bytes)?;
    Ok(JobBody {
        input: model_input(arguments)?,
        priority,
        webhook: None,
    })
}

/// Where the calls about job `id` of `model` are.
fn request_url(headers: &HeaderMap, model: &str, id: &str) -> String {
    let public = public_url(headers).unwrap_or_default();
    format!("{public}/fal/queue/{model}/requests/{id}")
}

/// `POST /fal/queue/{owner}/{model}`.
pub async fn queue(
    State(state): State<AppState>,
    Tenant(tenant): Tenant,
    Path((owner, name)): Path<(String, String)>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let model = format!("{owner}/{name}");
    let body = job_body(&state, &headers, body).map(|mut body| {
        body.webhook = query.get("fal_webhook").map(|url| Webhook {
            url: url.clone(),
            style: WebhookStyle::Fal,
            on_start: false,
            public_url: public_url(&headers),
        });
        body
    });
    let record = match submit_parsed(&state, &tenant, &model, &headers, body).await {
        Ok(record) => record,
        Err(err) => return Surface::Fal.error(err).await,
    };
    let position = state
        .scheduler()
        .status(tenant.as_str(), &record.id)
        .and_then(|(_, position)| position);
    let url = request_url(&headers, &model, &record.id);
    let answer = json!({
        "request_id": record.id,
        "response_url": url,
        "status_url": format!("{url}/status"),
        "cancel_url": format!("{url}/cancel"),
        "queue_position": position.unwrap_or(0),
    });
    with_request_id(Json(answer).into_response(), &record.id)
}

/// `POST /fal/run/{owner}/{model}`: waits up to the agent's sync timeout.
pub async fn run(
    State(state): State<AppState>,
    Tenant(tenant): Tenant,
    Path((owner, name)): Path<(String, String)>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let model = format!("{owner}/{name}");
    let body = job_body(&state, &headers, body);
    let record = match submit_parsed(&state, &tenant, &model, &headers, body).await {
        Ok(record) => record,
        Err(err) => return Surface::Fal.error(err).await,
    };
    match super::super::jobs::wait(&state, tenant.as_str(), &record.id).await {
        Ok(done) => result_response(&state, &headers, &done).await,
        Err(err) => Surface::Fal.error(err).await,
    }
}

/// The job `id` of `tenant`, when it is a job of the model in the path.
fn find_for(
    state: &AppState,
    tenant: &str,
    owner: &str,
    name: &str,
    id: &str,
) -> Result<JobRecord, ApiError> {
    let record = find(state, tenant, id)?;
    if record.model != format!("{owner}/{name}") {
        return Err(ApiError::NotFound(format!(
            "no request {id:?} of {owner}/{name}"
        )));
    }
    Ok(record)
}

/// `GET …/requests/{id}/status`.
pub async fn status(
    State(state): State<AppState>,
    Tenant(tenant): Tenant,
    Path((owner, name, id)): RequestPath,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    if let Err(err) = find_for(&state, tenant.as_str(), &owner, &name, &id) {
        return Surface::Fal.error(err).await;
    }
    let logs = wants_logs(&query);
    let Some((record, position)) = state.scheduler().status(tenant.as_str(), &id) else {
        return Surface::Fal
            .error(ApiError::NotFound(format!("no request {id:?}")))
            .await;
    };
    let url = request_url(&headers, &record.model, &id);
    let body = status_json(&record, position, logs, &url);
    with_request_id(Json(body).into_response(), &id)
}

/// Whether a status call asks for the job's log lines (`?logs=1`; fal's client writes
/// `true`).
fn wants_logs(query: &HashMap<String, String>) -> bool {
    query
        .get("logs")
        .is_some_and(|v| matches!(v.as_str(), "1" | "true" | "True"))
}

/// fal's status object of `record`.
fn status_json(record: &JobRecord, position: Option<usize>, logs: bool, url: &str) -> Value {
    let mut body = json!({
        "request_id": record.id,
        "response_url": url,
        "status_url": format!("{url}/status"),
        "cancel_url": format!("{url}/cancel"),
        "logs": if logs { log_lines(record) } else { Value::Null },
    });
    match record.state {
        JobState::InQueue => {
            body["status"] = json!("IN_QUEUE");
            body["queue_position"] = json!(position.unwrap_or(0));
        }
        JobState::InProgress => body["status"] = json!("IN_PROGRESS"),
        JobState::Completed | JobState::Failed | JobState::Cancelled => {
            body["status"] = json!("COMPLETED");
            let inference = match (record.started_at_ms, record.finished_at_ms) {
                (Some(start), Some(end)) => json!(end.saturating_sub(start) as f64 / 1000.0),
                _ => Value::Null,
            };
            body["metrics"] = json!({"inference_time": inference});
            if let Some((kind, message)) = failure(record) {
                body["error"] = json!(message);
                body["error_type"] = json!(kind);
            }
        }
    }
    body
}

/// Why a finished job has no output: its error, or its cancellation.
fn failure(record: &JobRecord) -> Option<(String, String)> {
    match record.state {
        JobState::Failed => Some(record.error.as_ref().map_or_else(
            || ("model_error".to_owned(), "the job failed".to_owned()),
            |e| (e.kind.clone(), e.message.clone()),
        )),
        JobState::Cancelled => Some((
            "request_cancelled".to_owned(),
            "the request was cancelled".to_owned(),
        )),
        _ => None,
    }
}

/// The job's life as fal's log lines.
fn log_lines(record: &JobRecord) -> Value {
    let line = |ms: u64, message: String| {
        json!({"message": message, "level": "INFO", "source": "meridian",
               "timestamp": rfc3339(ms)})
    };
    let mut lines = vec![line(
        record.queued_at_ms,
        format!("queued in {} for {}", record.region, record.model),
    )];
    if let Some(start) = record.started_at_ms {
        lines.push(line(start, "started".to_owned()));
    }
    if let Some(end) = record.finished_at_ms {
        lines.push(line(end, format!("finished: {}", record.state.as_str())));
    }
    Value::Array(lines)
}

/// `GET …/requests/{id}/status/stream`: status objects as server-sent events, one per
/// change of state or queue position, ending after `COMPLETED`.
pub async fn status_stream(
    State(state): State<AppState>,
    Tenant(tenant): Tenant,
    Path((owner, name, id)): RequestPath,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    if let Err(err) = find_for(&state, tenant.as_str(), &owner, &name, &id) {
        return Surface::Fal.error(err).await;
    }
    let logs = wants_logs(&query);
    let url = request_url(&headers, &format!("{owner}/{name}"), &id);
    let render = move |record: &JobRecord, position: Option<usize>| {
        Event::default().data(status_json(record, position, logs, &url).to_string())
    };
    match super::super::sse::events(state.scheduler(), tenant.as_str(), &id, render) {
        Some(stream) => with_request_id(stream.into_response(), &id),
        None => {
            Surface::Fal
                .error(ApiError::NotFound(format!("no request {id:?}")))
                .await
        }
    }
}

/// `GET …/requests/{id}`: the bare output of a completed job; a failed one is answered
/// with its error (`422` for unusable input, `504` for a timeout, `500` for a model
/// failure), a cancelled one with `400`, one not finished with `400`.
pub async fn result(
    State(state): State<AppState>,
    Tenant(tenant): Tenant,
    Path((owner, name, id)): RequestPath,
    headers: HeaderMap,
) -> Response {
    match find_for(&state, tenant.as_str(), &owner, &name, &id) {
        Ok(record) if record.state.is_final() => result_response(&state, &headers, &record).await,
        Ok(_) => Surface::Fal.error(ApiError::NotReady(id)).await,
        Err(err) => Surface::Fal.error(err).await,
    }
}

/// The answer for a finished job.
async fn result_response(state: &AppState, headers: &HeaderMap, record: &JobRecord) -> Response {
    if let Some((kind, message)) = failure(record) {
        let status = match (record.state, kind.as_str()) {
            (JobState::Cancelled, _) => StatusCode::BAD_REQUEST,
            (_, "input") => StatusCode::UNPROCESSABLE_ENTITY,
            (_, "timeout") => StatusCode::GATEWAY_TIMEOUT,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        let body = Surface::Fal.error_body(status, &kind, &message);
        return with_request_id((status, Json(body)).into_response(), &record.id);
    }
    let public = public_url(headers);
    let body = output(state.links(), public.as_deref(), record);
    let mut response = with_request_id(Json(body).into_response(), &record.id);
    if let Ok(cost) = record.cost().to_string().parse() {
        response.headers_mut().insert(contract::headers::COST, cost);
    }
    response
}

/// A completed job's bare output in fal's shapes: each file as `{url, content_type,
/// file_name, file_size}` (+ `width`, `height` for pictures), the link signed under `public`.
pub(crate) fn output(links: &FileLinks, public: Option<&str>, record: &JobRecord) -> Value {
    let output = record.output.clone().unwrap_or(Value::Null);
    map_files(&output, |file| {
        let name = file["name"].as_str().unwrap_or_default();
        let mut fal = json!({
            "url": links.url(public, &record.id, name, now_s()),
            "content_type": file["content_type"],
            "file_name": name,
            "file_size": file["bytes"],
        });
        for side in ["width", "height"] {
            if let Some(value) = file.get(side) {
                fal[side] = value.clone();
            }
        }
        fal
    })
}

/// Why a finished job has no output, as fal's webhook `error` and `payload` say it.
pub(crate) fn failure_of(record: &JobRecord) -> Option<(String, String)> {
    failure(record)
}

/// `PUT …/requests/{id}/cancel`: `202 {"status": "CANCELLATION_REQUESTED"}` while the job
/// is queued or running (a running one stops at its model's next safe point); `400
/// {"status": "ALREADY_COMPLETED"}` once it has finished.
pub async fn cancel(
    State(state): State<AppState>,
    Tenant(tenant): Tenant,
    Path((owner, name, id)): RequestPath,
) -> Response {
    let record = match find_for(&state, tenant.as_str(), &owner, &name, &id) {
        Ok(record) => record,
        Err(err) => return Surface::Fal.error(err).await,
    };
    let finished = || {
        let body = json!({"status": "ALREADY_COMPLETED",
                          "detail": "the request has already finished",
                          "error_type": "already_completed"});
        with_request_id((StatusCode::BAD_REQUEST, Json(body)).into_response(), &id)
    };
    if record.state.is_final() {
        return finished();
    }
    match state.scheduler().cancel(tenant.as_str(), &id).await {
        Ok(Cancellation::Cancelled(_) | Cancellation::Requested(_)) => {
            tracing::info!(job = %id, "job cancelled (fal)");
            let body = json!({"status": "CANCELLATION_REQUESTED"});
            with_request_id((StatusCode::ACCEPTED, Json(body)).into_response(), &id)
        }
        Err(crate::scheduler::CancelError::NotCancellable(_)) => finished(),
        Err(e) => {
            Surface::Fal
                .error(super::super::jobs::cancel_error(&id, e))
                .await
        }
    }
}
