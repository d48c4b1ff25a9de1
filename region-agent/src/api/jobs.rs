//! Job calls: run (sync), queue, result, cancel, files.

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use contract::{RequestId, TenantId, headers};
use serde_json::{Value, json};

use super::{ApiError, AppState, Tenant};
use crate::jobs::idempotency::IdempotencyKey;
use crate::jobs::tenant_jobs::JobBound;
use crate::jobs::{JobRecord, JobState, Priority, Webhook, WebhookStyle, now_ms};
use crate::scheduler::{CancelError, Cancellation, SubmitError, Terms};
use crate::serving::InputError;

/// The most array items and object members a job body may hold in all. Parsed, each takes
/// 32 to about 100 bytes where its text may take 2 (`0,`), so a body under the size limit
/// made of tiny values would take twenty times its size; every model's input is a few
/// fields.
const MAX_JSON_ITEMS: usize = 10_000;

/// A parsed job body.
pub(super) struct JobBody {
    /// The model's input.
    pub input: Value,
    /// Its priority.
    pub priority: Priority,
    /// The webhook it names.
    pub webhook: Option<Webhook>,
}

/// Checks the content type and parses `{"input": {…}, "priority": …}`.
fn parse_body(
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
    limit: usize,
) -> Result<JobBody, ApiError> {
    let mut object = parse_object(headers, body, limit)?;
    let input = match object.remove("input") {
        Some(input @ Value::Object(_)) => input,
        Some(_) => return Err(ApiError::BadRequest("input must be a JSON object".into())),
        None => return Err(ApiError::BadRequest("the field input is missing".into())),
    };
    let priority = match object.remove("priority") {
        None | Some(Value::Null) => Priority::Normal,
        Some(value) => serde_json::from_value(value).map_err(|_| {
            ApiError::BadRequest("priority must be one of high, normal, low".into())
        })?,
    };
    let webhook = match object.remove("webhook") {
        None | Some(Value::Null) => None,
        Some(Value::String(url)) => Some(Webhook {
            url,
            style: WebhookStyle::Native,
            on_start: false,
            public_url: super::public_url(headers),
        }),
        Some(_) => return Err(ApiError::BadRequest("webhook must be a URL".into())),
    };
    Ok(JobBody {
        input,
        priority,
        webhook,
    })
}

/// Checks the content type (JSON) and the size of a body, and parses it as a JSON object
/// (bounded: at most [`MAX_JSON_ITEMS`] array items and object members).
pub(super) fn parse_object(
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
    limit: usize,
) -> Result<serde_json::Map<String, Value>, ApiError> {
    let body = body.map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::TooLarge(limit)
        } else {
            ApiError::BadRequest(format!("cannot read the body: {rejection}"))
        }
    })?;
    let json_type = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("application/json"));
    if !json_type {
        return Err(ApiError::UnsupportedMediaType);
    }
    object_of(&body)
}

/// Parses JSON text `body` as an object, bounded as [`parse_object`] says.
pub(super) fn object_of(body: &[u8]) -> Result<serde_json::Map<String, Value>, ApiError> {
    if more_items_than(body, MAX_JSON_ITEMS) {
        return Err(ApiError::BadRequest(format!(
            "the body holds more than {MAX_JSON_ITEMS} array items and object members"
        )));
    }
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::BadRequest(format!("the body is not valid JSON: {e}")))?;
    match value {
        Value::Object(object) => Ok(object),
        _ => Err(ApiError::BadRequest(
            "the body must be a JSON object".into(),
        )),
    }
}

/// Whether JSON text `bytes` holds more than `most` array items and object members in all,
/// counted without parsing (the bytes inside strings are skipped): each follows a `,` or
/// opens a non-empty array or object.
fn more_items_than(bytes: &[u8], most: usize) -> bool {
    let mut items = 0usize;
    let mut in_string = false;
    let mut escaped = false;
    let mut opened = false;
    for &b in bytes {
        if in_string {
            match b {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        if b.is_ascii_whitespace() {
            continue;
        }
        if std::mem::take(&mut opened) && b != b']' && b != b'}' {
            items += 1;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => opened = true,
            b',' => items += 1,
            _ => {}
        }
        if items > most {
            return true;
        }
    }
    false
}

impl From<SubmitError> for ApiError {
    fn from(e: SubmitError) -> Self {
        match e {
            SubmitError::Refused(refusal) => Self::Refused(refusal),
            SubmitError::Input(e @ InputError::Field { .. }) => Self::BadRequest(e.to_string()),
            SubmitError::Input(e @ InputError::Unprocessable(_)) => {
                Self::Unprocessable(e.to_string())
            }
            SubmitError::OverBound(e) => Self::ConcurrencyLimited(e.to_string()),
            SubmitError::KeyReused => Self::KeyReused(SubmitError::KeyReused.to_string()),
            SubmitError::Storage(e) => Self::internal(format!("accept a job: {e}")),
        }
    }
}

/// The submission's terms from its headers: the tenant's job bound the edge passes
/// (`x-meridian-tenant-max-jobs`, `x-meridian-tenant-jobs-elsewhere`) and the client's
/// `Idempotency-Key`.
fn terms(headers: &HeaderMap) -> Result<Terms, ApiError> {
    let count = |name: &str| -> Result<Option<u32>, ApiError> {
        headers
            .get(name)
            .map(|value| {
                value
                    .to_str()
                    .ok()
                    .and_then(|text| text.parse::<u32>().ok())
                    .ok_or_else(|| {
                        ApiError::BadRequest(format!("the {name} header must be a whole number"))
                    })
            })
            .transpose()
    };
    let max = count(headers::TENANT_MAX_JOBS)?;
    let elsewhere = count(headers::TENANT_JOBS_ELSEWHERE)?.unwrap_or(0);
    let key = headers
        .get(headers::IDEMPOTENCY_KEY)
        .map(|value| IdempotencyKey::parse(value.as_bytes()))
        .transpose()
        .map_err(ApiError::BadRequest)?;
    Ok(Terms {
        bound: max.map(|max| JobBound { max, elsewhere }),
        key,
        submitted: None,
        webhook: None,
    })
}

async fn submit(
    state: &AppState,
    tenant: &TenantId,
    model: &str,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<JobRecord, ApiError> {
    let body = parse_body(headers, body, state.0.max_body_bytes);
    submit_parsed(state, tenant, model, headers, body).await
}

/// Accepts the job `body` (parsed, or why it could not be) of `tenant` for `model`, with
/// the terms in `headers`.
pub(super) async fn submit_parsed(
    state: &AppState,
    tenant: &TenantId,
    model: &str,
    headers: &HeaderMap,
    body: Result<JobBody, ApiError>,
) -> Result<JobRecord, ApiError> {
    // A job that would be refused (draining, no catalog, model not served) is refused
    // before its body is even looked at, so the edge can try the next region — unless its
    // idempotency key names a job already accepted here, which is the answer.
    let terms = terms(headers);
    let scheduler = state.scheduler();
    let known = matches!(&terms, Ok(Terms { key: Some(key), .. })
        if scheduler.knows_key(tenant.as_str(), key));
    if !known && let Some(refusal) = scheduler.refusal(model) {
        return Err(ApiError::Refused(refusal));
    }
    let (mut body, mut terms) = (body?, terms?);
    if let Some(webhook) = &body.webhook {
        let field = match webhook.style {
            WebhookStyle::Fal => "fal_webhook",
            WebhookStyle::Native | WebhookStyle::Replicate => "webhook",
        };
        state.webhooks().check(field, &webhook.url)?;
    }
    terms.webhook = body.webhook.take();
    // Media given as URLs is fetched now, unless the key names a job already (the answer).
    if !known {
        let fetched = state.0.media_urls.fetch_into(&body.input).await;
        if let Some(fetched) = fetched.map_err(SubmitError::Input)? {
            terms.submitted = Some(std::mem::replace(&mut body.input, fetched));
        }
    }
    let record = scheduler
        .submit_with(tenant, model, body.priority, body.input, terms)
        .await?;
    tracing::info!(job = %record.id, model, %tenant, "job accepted");
    if record.webhook.is_some() {
        state.webhooks().follow(&record.id);
    }
    Ok(record)
}

/// `POST /v1/queue/{owner}/{model}`.
pub async fn queue(
    State(state): State<AppState>,
    Tenant(tenant): Tenant,
    Path((owner, model)): Path<(String, String)>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let model = format!("{owner}/{model}");
    let record = submit(&state, &tenant, &model, &headers, body).await?;
    let id = &record.id;
    let base = format!(
        "{}/v1/requests/{id}",
        super::public_url(&headers).unwrap_or_default()
    );
    let body = json!({
        "request_id": id,
        "status_url": format!("{base}/status"),
        "response_url": base,
        "cancel_url": format!("{base}/cancel"),
    });
    Ok(with_id(
        (StatusCode::ACCEPTED, Json(body)).into_response(),
        id,
    ))
}

/// `POST /v1/run/{owner}/{model}`: accepts the job and waits for it up to the sync timeout.
pub async fn run(
    State(state): State<AppState>,
    Tenant(tenant): Tenant,
    Path((owner, model)): Path<(String, String)>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let model = format!("{owner}/{model}");
    let record = submit(&state, &tenant, &model, &headers, body).await?;
    let done = wait(&state, tenant.as_str(), &record.id).await?;
    Ok(result_response(&state, &headers, &done))
}

/// Waits for job `id` of `tenant` to finish, up to the sync timeout.
///
/// # Errors
///
/// `504 timeout` naming the job, which goes on.
pub(super) async fn wait(state: &AppState, tenant: &str, id: &str) -> Result<JobRecord, ApiError> {
    let Some(mut rx) = state.scheduler().watch(tenant, id) else {
        return Err(ApiError::Internal {
            detail: format!("request {id} vanished"),
            request_id: Some(id.to_owned()),
        });
    };
    let timeout = state.0.sync_timeout;
    let finished = tokio::time::timeout(timeout, rx.wait_for(|r| r.state.is_final())).await;
    match finished {
        Ok(Ok(record)) => Ok(record.clone()),
        _ => Err(ApiError::Timeout {
            request_id: id.to_owned(),
            timeout_ms: timeout.as_millis(),
        }),
    }
}

/// `GET /v1/requests/{id}`.
pub async fn result(
    State(state): State<AppState>,
    Tenant(tenant): Tenant,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let record = find(&state, tenant.as_str(), &id)?;
    if !record.state.is_final() {
        return Err(ApiError::NotReady(id));
    }
    Ok(result_response(&state, &headers, &record))
}

/// `PUT /v1/requests/{id}/cancel`: `200` with the status `CANCELLED` for a queued job (or one
/// cancelled already), `202` with its status now (`IN_PROGRESS`) for a running one, which
/// ends `CANCELLED` at its model's next safe point; `409` once it has completed or failed.
pub async fn cancel(
    State(state): State<AppState>,
    Tenant(tenant): Tenant,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    find(&state, tenant.as_str(), &id)?;
    match state.scheduler().cancel(tenant.as_str(), &id).await {
        Ok(Cancellation::Cancelled(record)) => {
            tracing::info!(job = %id, "job cancelled");
            let body = record.status_json(None, now_ms());
            Ok(with_id(Json(body).into_response(), &id))
        }
        Ok(Cancellation::Requested(record)) => {
            let body = record.status_json(None, now_ms());
            Ok(with_id(
                (StatusCode::ACCEPTED, Json(body)).into_response(),
                &id,
            ))
        }
        Err(e) => Err(cancel_error(&id, e)),
    }
}

/// The answer for a cancellation of job `id` that failed.
pub(super) fn cancel_error(id: &str, e: CancelError) -> ApiError {
    match e {
        CancelError::NotFound => unknown(id),
        e @ CancelError::NotCancellable(_) => ApiError::NotCancellable(e.to_string()),
        CancelError::Storage(e) => ApiError::Internal {
            detail: format!("store a cancellation: {e}"),
            request_id: Some(id.to_owned()),
        },
    }
}

/// A signed file link's query: the first `expires` and `signature` in it (whatever else it
/// holds, however it is written: a malformed link is refused by its signature).
#[derive(Debug, Default)]
struct LinkQuery {
    expires: Option<String>,
    signature: Option<String>,
}

impl LinkQuery {
    fn of(query: Option<&str>) -> Self {
        let mut link = Self::default();
        for pair in query.unwrap_or_default().split('&') {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            let slot = match name {
                "expires" => &mut link.expires,
                "signature" => &mut link.signature,
                _ => continue,
            };
            slot.get_or_insert_with(|| value.to_owned());
        }
        link
    }
}

/// `GET /v1/requests/{id}/files/{name}`: for the tenant the edge names, or for anyone with a
/// link this agent signed (`?expires=…&signature=…`, see [`super::links`]).
pub async fn file(
    State(state): State<AppState>,
    Path((id, name)): Path<(String, String)>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let link = LinkQuery::of(query.as_deref());
    let tenant = if link.signature.is_some() || link.expires.is_some() {
        state
            .links()
            .check(
                &id,
                &name,
                link.expires.as_deref(),
                link.signature.as_deref(),
                super::links::now_s(),
            )
            .map_err(|e| {
                ApiError::Forbidden(format!("{e}: ask for the result again for a new link"))
            })?;
        state.scheduler().owner(&id).ok_or_else(|| unknown(&id))?
    } else {
        super::tenant_of(&headers)?.to_string()
    };
    let record = find(&state, &tenant, &id)?;
    let no_file = || ApiError::NotFound(format!("request {id} has no file {name:?}"));
    let content_type = file_object(&record, &name)
        .and_then(|file| file.get("content_type")?.as_str())
        .map(str::to_owned)
        .ok_or_else(no_file)?;
    let bytes = state
        .scheduler()
        .file(&tenant, &id, &name)
        .await
        .ok_or_else(no_file)?;
    let mut response = ([("content-type", content_type)], bytes).into_response();
    response = with_id(response, &id);
    Ok(response)
}

/// The file object named `name` in `record`'s output.
pub(super) fn file_object<'a>(
    record: &'a JobRecord,
    name: &str,
) -> Option<&'a serde_json::Map<String, Value>> {
    record
        .output
        .as_ref()?
        .as_object()?
        .values()
        .filter_map(Value::as_object)
        .find(|file| file.get("name").and_then(Value::as_str) == Some(name))
}

/// The job `id` when `tenant` owns it; otherwise 404, the same as for an unknown id.
pub(super) fn find(state: &AppState, tenant: &str, id: &str) -> Result<JobRecord, ApiError> {
    if RequestId::new(id).is_err() {
        return Err(unknown(id));
    }
    state.scheduler().get(tenant, id).ok_or_else(|| unknown(id))
}

fn unknown(id: &str) -> ApiError {
    ApiError::NotFound(format!("no request {id:?}"))
}

/// Adds `x-request-id`.
pub(super) fn with_id(mut response: Response, id: &str) -> Response {
    if let Ok(value) = HeaderValue::from_str(id) {
        response.headers_mut().insert(headers::REQUEST_ID, value);
    }
    response
}

/// `200` with the result JSON (its files as signed links under the public URL in
/// `headers`), `x-request-id` and `x-meridian-cost` (the exact cost of the job's usage
/// record, nine decimals).
fn result_response(state: &AppState, headers: &HeaderMap, record: &JobRecord) -> Response {
    let mut body = record.result_json(now_ms());
    let public = super::public_url(headers);
    state.links().sign_output(
        &mut body["output"],
        public.as_deref(),
        &record.id,
        super::links::now_s(),
    );
    let mut response = with_id(Json(body).into_response(), &record.id);
    if let Ok(value) = HeaderValue::from_str(&record.cost().to_string()) {
        response.headers_mut().insert(headers::COST, value);
    }
    if record.state == JobState::Completed {
        tracing::debug!(job = %record.id, "result served");
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn items(text: &str) -> usize {
        (0..100)
            .find(|&most| !more_items_than(text.as_bytes(), most))
            .unwrap_or(100)
    }

    #[test]
    fn items_and_members_are_counted_outside_strings() {
        assert_eq!(items("{}"), 0);
        assert_eq!(items("[ ]"), 0);
        assert_eq!(items("0"), 0);
        assert_eq!(items("[0]"), 1);
        assert_eq!(items("[0, 1, [], {}]"), 4);
        assert_eq!(items(r#"{"input": {"text": "a,b[{", "n": [1, 2]}}"#), 5);
        assert_eq!(items(r#"{"a": "\\", "b": "\",[", "c": 1}"#), 3);
    }

    #[test]
    fn a_body_of_many_tiny_values_is_refused_before_it_is_parsed() {
        let mut json = HeaderMap::new();
        json.insert("content-type", HeaderValue::from_static("application/json"));
        let wide = |n: usize| {
            let zeros = vec!["0"; n].join(",");
            Bytes::from(format!(r#"{{"input": {{"text": "x", "n": [{zeros}]}}}}"#))
        };
        // The body's input, the input's two fields and the array's items.
        assert!(parse_body(&json, Ok(wide(MAX_JSON_ITEMS - 3)), usize::MAX).is_ok());
        let refused = parse_body(&json, Ok(wide(MAX_JSON_ITEMS - 2)), usize::MAX);
        assert!(
            matches!(&refused, Err(ApiError::BadRequest(m)) if m.contains("10000 array items")),
            "{:?}",
            refused.err()
        );
    }
}
