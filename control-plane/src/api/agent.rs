//! The agent API: region agents register, send heartbeats, fetch their catalog and
//! deregister.
//!
//! | call | does |
//! | --- | --- |
//! | `POST /agent/v1/regions/{id}/register` | grants a lease and stores the reporting instance's live status under it |
//! | `POST /agent/v1/regions/{id}/heartbeat` | keeps the instance's lease alive and replaces its status (404 `not_registered`: register again) |
//! | `GET /agent/v1/regions/{id}/catalog` | the region's pools (with the reservations active now) and the models placed in it, with their prices |
//! | `POST /agent/v1/regions/{id}/deregister[?instance=]` | revokes the instance's lease: its status is gone at once |
//!
//! A region may have several agents, its instances: each report names its own
//! (`instance`; none: the region's only agent), and each instance registers, heartbeats and
//! deregisters under its own lease, so one host's restart or drain leaves the others'
//! statuses alone. Edges see the region as the sum of its instances. A named instance is
//! also remembered beyond its lease ([`crate::instances`]): registration writes its record
//! and clears any drain order, heartbeats refresh it now and then and answer `drain: true`
//! once an operator ordered the instance to drain, deregistration marks it deregistered.
//!
//! Bodies are [`AgentReport`]s, wire messages read whatever fields a newer agent adds; a
//! report of a schema major version this build does not read is refused (400
//! `unsupported_schema`, naming both versions). Answers carry the newest catalog revision,
//! so an agent fetches its catalog again only when it changed. A silent agent's status
//! disappears when its lease expires, so an edge never routes on a region whose agent
//! stopped reporting.

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use contract::ConfigProblem;
use control_plane_client::wire::{AgentCatalog, AgentReport, RegionLive, Registration};
use policy::RegionSpec;

use super::{ApiError, AppState, Routes, WireBody};
use crate::instances;
use crate::records::{CatalogRecord, live_key};
use crate::registry::{not_found, read_state};
use crate::store::versioned;
use crate::store::{LeaseId, Store, StoreError};
use crate::usage::now_ms;

/// The agent routes (without authentication; the router adds it).
pub fn routes() -> Routes {
    Routes::new()
        .post("/agent/v1/regions/{region}/register", register)
        .post("/agent/v1/regions/{region}/heartbeat", heartbeat)
        .get("/agent/v1/regions/{region}/catalog", catalog)
        .post("/agent/v1/regions/{region}/deregister", deregister)
}

fn live_value(region: &str, report: AgentReport) -> Result<Vec<u8>, ApiError> {
    Ok(versioned::encode(&RegionLive {
        region: region.to_owned(),
        reported_at_ms: now_ms(),
        report,
    })?)
}

/// Every problem of a report (a schema this build cannot read: 400; negative or non-finite
/// times: 422).
fn check_report(report: &AgentReport) -> Result<(), ApiError> {
    contract::schema::HEARTBEAT.accepts("heartbeat", report.schema)?;
    let mut details = Vec::new();
    if let Err(e) = instance(&report.instance) {
        details.push(ConfigProblem {
            place: "instance".into(),
            problem: e.to_string(),
            fix: "name the agent with an instance id, or leave it out for a region's only agent"
                .into(),
        });
    }
    let mut check = |path: String, value: f64| {
        if !(value.is_finite() && value >= 0.0) {
            details.push(ConfigProblem {
                place: path,
                problem: format!("{value} is not a non-negative number of milliseconds"),
                fix: "report 0 or more, or leave the optional field out".into(),
            });
        }
    };
    if let Some(ms) = report.on_demand_start_ms {
        check("on_demand_start_ms".into(), ms);
    }
    for (model, load) in &report.models {
        check(
            format!("models[{model}].expected_wait_ms"),
            load.expected_wait_ms,
        );
        check(format!("models[{model}].cold_start_ms"), load.cold_start_ms);
        if let Some(ms) = load.service_ms_per_unit {
            check(format!("models[{model}].service_ms_per_unit"), ms);
        }
    }
    if details.is_empty() {
        return Ok(());
    }
    Err(ApiError::Invalid {
        message: format!("{} problem(s) in the agent's report", details.len()),
        details,
    })
}

/// An instance id as reported: empty (the region's only agent) or an
/// [`InstanceId`](contract::InstanceId).
fn instance(value: &str) -> Result<&str, contract::IdError> {
    if !value.is_empty() {
        contract::InstanceId::new(value)?;
    }
    Ok(value)
}

/// How errors name an instance of `region`.
fn label(region: &str, instance: &str) -> String {
    if instance.is_empty() {
        region.to_owned()
    } else {
        format!("{region} (instance {instance})")
    }
}

fn registration(state: &AppState, region: String, drain: bool) -> Json<Registration> {
    let ttl = state.settings().agent_lease_ttl;
    Json(Registration {
        region,
        ttl_ms: u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX),
        catalog_revision: state.changes().catalog_revision(),
        drain,
    })
}

async fn register(
    State(state): State<AppState>,
    Path(region): Path<String>,
    WireBody(report): WireBody<AgentReport>,
) -> Result<Json<Registration>, ApiError> {
    check_report(&report)?;
    if state
        .registry()
        .get::<RegionSpec>(&RegionSpec::key(&region))
        .await?
        .is_none()
    {
        return Err(not_found::<RegionSpec>(&region));
    }
    let store = state.store();
    let lease = store.grant_lease(state.settings().agent_lease_ttl).await?;
    // The status moves to the new lease; a lease it hung on before (an agent that
    // restarted) holds nothing any more and simply runs out. It is not revoked, so two
    // agents registering as one instance cannot knock each other out.
    let key = live_key(&region, &report.instance);
    instances::registered(store, &region, &report).await?;
    let instance = report.instance.clone();
    store
        .put(&key, live_value(&region, report)?, Some(lease))
        .await?;
    tracing::info!(region, instance, "region agent registered");
    Ok(registration(&state, region, false))
}

/// The lease the status of `region`'s `instance` hangs on, if it is still registered.
async fn lease_of(state: &AppState, region: &str, instance: &str) -> Result<LeaseId, ApiError> {
    let not_registered = || ApiError::NotRegistered {
        region: label(region, instance),
    };
    let kv = state
        .store()
        .get(&live_key(region, instance))
        .await?
        .ok_or_else(not_registered)?;
    kv.lease.ok_or_else(not_registered)
}

fn lease_error(region: &str, instance: &str, e: StoreError) -> ApiError {
    match e {
        StoreError::LeaseNotFound => ApiError::NotRegistered {
            region: label(region, instance),
        },
        other => other.into(),
    }
}

async fn heartbeat(
    State(state): State<AppState>,
    Path(region): Path<String>,
    WireBody(report): WireBody<AgentReport>,
) -> Result<Json<Registration>, ApiError> {
    check_report(&report)?;
    let instance = report.instance.clone();
    let lease = lease_of(&state, &region, &instance).await?;
    let store = state.store();
    store
        .keep_alive(lease)
        .await
        .map_err(|e| lease_error(&region, &instance, e))?;
    let drain = instances::heartbeat(store, &region, &report).await?;
    store
        .put(
            &live_key(&region, &instance),
            live_value(&region, report)?,
            Some(lease),
        )
        .await
        .map_err(|e| lease_error(&region, &instance, e))?;
    Ok(registration(&state, region, drain))
}

/// The query of a deregistration: the instance (absent: the region's only agent).
#[derive(Debug, serde::Deserialize)]
struct Deregistration {
    #[serde(default)]
    instance: String,
}

async fn deregister(
    State(state): State<AppState>,
    Path(region): Path<String>,
    query: Result<Query<Deregistration>, QueryRejection>,
) -> Result<StatusCode, ApiError> {
    let Query(Deregistration { instance }) =
        query.map_err(|e| ApiError::BadRequest(format!("the query: {}", e.body_text())))?;
    let instance = self::instance(&instance)
        .map_err(|e| ApiError::BadRequest(format!("instance: {e}")))?
        .to_owned();
    let lease = lease_of(&state, &region, &instance).await?;
    state
        .store()
        .revoke_lease(lease)
        .await
        .map_err(|e| lease_error(&region, &instance, e))?;
    instances::deregistered(state.store(), &region, &instance).await?;
    tracing::info!(region, instance, "region agent deregistered");
    Ok(StatusCode::NO_CONTENT)
}

/// The region's part of the catalog as in force now: the effective pools (active
/// reservations applied, as edges see them) and the models the catalog places in it.
async fn catalog(
    State(state): State<AppState>,
    Path(region): Path<String>,
) -> Result<Json<AgentCatalog>, ApiError> {
    let stored = read_state(state.store()).await?;
    let effective = stored.effective_catalog();
    let Some(spec) = effective.regions.iter().find(|r| r.id == region).cloned() else {
        return Err(not_found::<RegionSpec>(&region));
    };
    let models = effective
        .models
        .iter()
        .filter(|m| m.regions.as_ref().is_none_or(|rs| rs.contains(&region)))
        .cloned()
        .collect();
    Ok(Json(AgentCatalog {
        schema: contract::schema::AGENT_CATALOG,
        revision: stored.revision,
        currency: effective.currency,
        region: spec,
        models,
    }))
}
