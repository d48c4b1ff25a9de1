//! `GET /admin/v1/usage/records`: one page of a region's per-job usage records, read from
//! the agents that keep them (per-job records never leave their region but page by page to
//! an admin). A region of several instances is read one instance after another.

use std::time::Duration;

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use contract::{ErrorBody, RegionId};
use control_plane_client::wire::UsageRecordPage;
use policy::RegionSpec;
use serde::{Deserialize, Serialize};

use super::{ApiError, AppState};
use crate::records::CatalogRecord;

/// How long the control plane waits for a region's agent to answer a records page.
const AGENT_TIMEOUT: Duration = Duration::from_secs(15);

/// Query of a records page: the region, and what its agent is asked.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RecordQuery {
    region: Option<String>,
    instance: Option<String>,
    tenant: Option<String>,
    model: Option<String>,
    from_ms: Option<u64>,
    to_ms: Option<u64>,
    cursor: Option<String>,
    limit: Option<u32>,
}

/// What is passed on to the region's agent.
#[derive(Debug, Serialize)]
struct AgentRecordQuery {
    #[serde(skip_serializing_if = "Option::is_none")]
    tenant: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    model: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    from_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    to_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    cursor: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    limit: Option<u32>,
}

/// One page of a region's per-job records, read from the region's agents: per-job records
/// never leave their region except page by page to an admin. A region of several instances
/// is read one instance after another (by instance id); the cursor then names the instance
/// it continues at, `<instance>~<the agent's cursor>`.
pub(super) async fn records(
    State(state): State<AppState>,
    query: Result<Query<RecordQuery>, QueryRejection>,
) -> Result<Json<UsageRecordPage>, ApiError> {
    let Query(query) = query.map_err(|e| {
        ApiError::BadRequest(format!(
            "{}; use ?region=&instance=&tenant=&model=&from_ms=&to_ms=&cursor=&limit=",
            e.body_text()
        ))
    })?;
    let Some(region) = query.region.clone() else {
        return Err(ApiError::BadRequest(
            "per-job records stay in the region that ran the jobs: name it with ?region=<id>"
                .into(),
        ));
    };
    if RegionId::new(&region).is_err() {
        return Err(ApiError::BadRequest(format!(
            "region {region:?} is not a region id"
        )));
    }
    let spec = state
        .registry()
        .get::<RegionSpec>(&RegionSpec::key(&region))
        .await?
        .map(|(spec, _)| spec)
        .ok_or_else(|| ApiError::NotFound {
            what: format!("region {region}"),
        })?;
    let sources = record_sources(&state, &spec, query.instance.as_deref()).await?;
    let (at, cursor) = start_at(&sources, query.cursor.as_deref())?;
    let forward = AgentRecordQuery {
        tenant: query.tenant,
        model: query.model,
        from_ms: query.from_ms,
        to_ms: query.to_ms,
        cursor,
        limit: query.limit,
    };
    let (instance, endpoint) = &sources[at];
    let mut page = agent_records(&state, &region, instance, endpoint, &forward).await?;
    if sources.len() > 1 {
        page.next = match page.next.take() {
            Some(next) => Some(format!("{instance}~{next}")),
            None => sources.get(at + 1).map(|(next, _)| format!("{next}~")),
        };
    }
    Ok(Json(page))
}

/// The agents that keep `region`'s records, as (instance id, base URL), by instance id: the
/// region's remembered instances (at the endpoint each reported, or the catalog's), or the
/// catalog's endpoint for a region whose agent names no instance; only `instance` when given.
async fn record_sources(
    state: &AppState,
    spec: &RegionSpec,
    instance: Option<&str>,
) -> Result<Vec<(String, String)>, ApiError> {
    let stored = crate::registry::read_state(state.store()).await?;
    let now_ms = u64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis(),
    )
    .unwrap_or(u64::MAX);
    let endpoint_of = |reported: &str| {
        let endpoint = if reported.is_empty() {
            &spec.endpoint
        } else {
            reported
        };
        endpoint.trim_end_matches('/').to_owned()
    };
    let mut sources: Vec<(String, String)> = crate::instances::current(&stored, now_ms)
        .into_iter()
        .filter(|entry| entry.record.region == spec.id)
        .map(|entry| {
            (
                entry.record.instance.clone(),
                endpoint_of(&entry.record.endpoint),
            )
        })
        .collect();
    let unnamed = stored
        .live
        .iter()
        .any(|l| l.region == spec.id && l.report.instance.is_empty());
    if (sources.is_empty() || unnamed) && !spec.endpoint.is_empty() {
        sources.insert(0, (String::new(), endpoint_of("")));
    }
    if let Some(wanted) = instance {
        sources.retain(|(id, _)| id == wanted);
        if sources.is_empty() {
            return Err(ApiError::NotFound {
                what: format!("instance {wanted} of region {}", spec.id),
            });
        }
    }
    if sources.is_empty() {
        return Err(ApiError::RegionUnavailable(format!(
            "region {} has no agent that keeps records: none has registered, and the catalog \
             gives no endpoint",
            spec.id
        )));
    }
    Ok(sources)
}

/// Which source a page starts at, and the agent's own cursor there.
fn start_at(
    sources: &[(String, String)],
    cursor: Option<&str>,
) -> Result<(usize, Option<String>), ApiError> {
    let Some(cursor) = cursor else {
        return Ok((0, None));
    };
    if sources.len() == 1 {
        return Ok((0, Some(cursor.to_owned())));
    }
    let bad = || {
        ApiError::BadRequest(format!(
            "cursor {cursor:?} is not one this call gave: pass the `next` of the last page"
        ))
    };
    let (instance, rest) = cursor.split_once('~').ok_or_else(bad)?;
    let at = sources
        .iter()
        .position(|(id, _)| id == instance)
        .ok_or_else(bad)?;
    Ok((at, (!rest.is_empty()).then(|| rest.to_owned())))
}

/// One page of the records `instance` of `region` keeps, from its agent at `endpoint`.
async fn agent_records(
    state: &AppState,
    region: &str,
    instance: &str,
    endpoint: &str,
    forward: &AgentRecordQuery,
) -> Result<UsageRecordPage, ApiError> {
    let which = if instance.is_empty() {
        format!("region {region}'s agent")
    } else {
        format!("instance {instance} of region {region}")
    };
    let answer = reqwest::Client::new()
        .get(format!("{endpoint}/internal/v1/usage/records"))
        .query(forward)
        .bearer_auth(state.settings().agent_secret.expose())
        .timeout(AGENT_TIMEOUT)
        .send()
        .await
        .map_err(|e| {
            ApiError::RegionUnavailable(format!(
                "{which} at {endpoint} cannot be reached: {e}; its records stay on it"
            ))
        })?;
    agent_page(&which, answer).await
}

/// The answer of `which` agent to a records call: its page, its 4xx passed on, or a 503.
async fn agent_page(which: &str, answer: reqwest::Response) -> Result<UsageRecordPage, ApiError> {
    let status = answer.status();
    let unreadable = |e: reqwest::Error| {
        ApiError::RegionUnavailable(format!("{which} answered unreadably: {e}"))
    };
    if status.is_success() {
        return answer.json().await.map_err(unreadable);
    }
    let body = answer.bytes().await.map_err(unreadable)?;
    match serde_json::from_slice::<ErrorBody>(&body) {
        Ok(body) if status.is_client_error() && status.as_u16() != 401 => Err(ApiError::Agent {
            status: axum::http::StatusCode::from_u16(status.as_u16())
                .unwrap_or(axum::http::StatusCode::BAD_REQUEST),
            body,
        }),
        _ => Err(ApiError::RegionUnavailable(format!(
            "{which} answered {status} to the control plane (is its \
             control_plane.agent_token the control plane's agent_token?)"
        ))),
    }
}
