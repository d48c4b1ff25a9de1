//! `GET /v1/requests/{id}/status`: the status as JSON, or with `Accept: text/event-stream`
//! (or `?stream=true`) a stream of `status` events, one per change of state or queue
//! position, ending after a final state.

use std::collections::HashMap;
use std::convert::Infallible;
use std::time::Duration;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use tokio::sync::watch;

use super::jobs::{find, with_id};
use super::{ApiError, AppState, Tenant};
use crate::jobs::{JobRecord, JobState, now_ms};
use crate::scheduler::Scheduler;

/// How often a stream re-reads the queue position while nothing else changes.
const POSITION_POLL: Duration = Duration::from_millis(500);

/// The status call.
pub async fn status(
    State(state): State<AppState>,
    Tenant(tenant): Tenant,
    Path(id): Path<String>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let tenant = tenant.to_string();
    find(&state, &tenant, &id)?;
    let wants_stream = query.get("stream").is_some_and(|v| v == "true" || v == "1")
        || headers
            .get("accept")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.contains("text/event-stream"));
    let scheduler = state.scheduler().clone();
    if !wants_stream {
        let (record, position) = scheduler
            .status(&tenant, &id)
            .ok_or_else(|| ApiError::NotFound(format!("no request {id:?}")))?;
        return Ok(with_id(
            Json(record.status_json(position, now_ms())).into_response(),
            &id,
        ));
    }
    let render = |record: &JobRecord, position: Option<usize>| {
        let data = record.status_json(position, now_ms()).to_string();
        Event::default().event("status").data(data)
    };
    let stream = events(&scheduler, &tenant, &id, render)
        .ok_or_else(|| ApiError::NotFound(format!("no request {id:?}")))?;
    Ok(with_id(stream.into_response(), &id))
}

/// A server-sent event stream of job `id` of `tenant`: `render(record, queue position)` at
/// the start and at each change of state or queue position, ending after a final state;
/// `None` for an unknown job.
pub(super) fn events<R>(
    scheduler: &Scheduler,
    tenant: &str,
    id: &str,
    render: R,
) -> Option<Sse<impl futures_util::Stream<Item = Result<Event, Infallible>> + use<R>>>
where
    R: Fn(&JobRecord, Option<usize>) -> Event + Send + 'static,
{
    let rx = scheduler.watch(tenant, id)?;
    let follow = Follow {
        scheduler: scheduler.clone(),
        tenant: tenant.to_owned(),
        id: id.to_owned(),
        rx,
        render,
        last: None,
        done: false,
    };
    let stream = futures_util::stream::unfold(follow, next_event);
    Some(Sse::new(stream).keep_alive(KeepAlive::default()))
}

/// A stream's state.
struct Follow<R> {
    scheduler: Scheduler,
    tenant: String,
    id: String,
    rx: watch::Receiver<JobRecord>,
    render: R,
    /// State and position last sent.
    last: Option<(JobState, Option<usize>)>,
    done: bool,
}

async fn next_event<R>(mut follow: Follow<R>) -> Option<(Result<Event, Infallible>, Follow<R>)>
where
    R: Fn(&JobRecord, Option<usize>) -> Event,
{
    if follow.done {
        return None;
    }
    loop {
        let (record, position) = follow.scheduler.status(&follow.tenant, &follow.id)?;
        let key = (record.state, position);
        if follow.last != Some(key) {
            follow.last = Some(key);
            follow.done = record.state.is_final();
            let event = (follow.render)(&record, position);
            return Some((Ok(event), follow));
        }
        tokio::select! {
            changed = follow.rx.changed() => {
                if changed.is_err() {
                    // The record was swept; nothing more will come.
                    return None;
                }
            }
            () = tokio::time::sleep(POSITION_POLL) => {}
        }
    }
}
