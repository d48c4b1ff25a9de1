//! Taking jobs in and out of the queues: refusals before acceptance (draining, no catalog,
//! model not served, queue full — nothing is created), acceptance (input checked, job stored
//! durably, then queued) and cancellation while queued.

use std::sync::atomic::Ordering;

use contract::{RequestId, TenantId};
use serde_json::Value;
use tokio::sync::watch;

use super::queue::Queued;
use super::{CancelError, Lane, Refusal, Shared, SubmitError, catalog_copy};
use crate::catalog::Quote;
use crate::jobs::{JobRecord, JobState, Priority, now_ms};

/// The lane of `model` and the price a job of it is accepted under, or why it is refused.
pub(super) fn refusal<'a>(shared: &'a Shared, model: &str) -> Result<(&'a Lane, Quote), Refusal> {
    let refused = |refusal: Refusal| {
        shared.metrics.refused(refusal.reason());
        refusal
    };
    if shared.draining.load(Ordering::SeqCst) {
        return Err(refused(Refusal::Draining));
    }
    let catalog = shared
        .catalog()
        .ok_or_else(|| refused(Refusal::NoCatalog))?;
    let lane = shared
        .lanes
        .get(model)
        .ok_or_else(|| refused(Refusal::ModelNotServed))?;
    let quote =
        catalog_copy::quote(&catalog, lane).map_err(|_| refused(Refusal::ModelNotServed))?;
    Ok((lane, quote))
}

/// Accepts a job (on a blocking thread).
pub(super) fn submit(
    shared: &Shared,
    tenant: &TenantId,
    model: &str,
    priority: Priority,
    input: Value,
) -> Result<JobRecord, SubmitError> {
    let (lane, quote) = refusal(shared, model)?;
    {
        let mut state = lane.lock();
        if state.queue.len() + state.reserved >= lane.config.queue_bound {
            drop(state);
            shared.metrics.refused(Refusal::QueueFull.reason());
            return Err(SubmitError::Refused(Refusal::QueueFull));
        }
        state.reserved += 1;
    }
    let accepted = store_new_job(shared, lane, tenant, priority, &input, quote);
    let mut state = lane.lock();
    state.reserved -= 1;
    let (record, job) = accepted?;
    state.queue.push(job);
    drop(state);
    lane.wake.notify_all();
    Ok(record)
}

/// Checks the input and stores the new job (its place in the queue is already reserved).
fn store_new_job(
    shared: &Shared,
    lane: &Lane,
    tenant: &TenantId,
    priority: Priority,
    input: &Value,
    quote: Quote,
) -> Result<(JobRecord, Queued), SubmitError> {
    let prepared = lane.model.prepare(input)?;
    let record = JobRecord {
        id: RequestId::random(&shared.region).to_string(),
        tenant: tenant.to_string(),
        model: lane.config.id.to_string(),
        region: shared.region.to_string(),
        priority,
        seq: shared.next_seq.fetch_add(1, Ordering::SeqCst),
        state: JobState::InQueue,
        queued_at_ms: now_ms(),
        started_at_ms: None,
        finished_at_ms: None,
        attempts: 0,
        error: None,
        output: None,
        quote: Some(quote),
        usage: None,
    };
    shared.store.create(&record, input)?;
    shared
        .table()
        .insert(record.id.clone(), watch::Sender::new(record.clone()));
    let job = Queued {
        id: record.id.clone(),
        priority,
        input: prepared,
    };
    Ok((record, job))
}

/// Cancels a queued job (on a blocking thread). A cancelled job never ran: it has no usage
/// record.
pub(super) fn cancel(shared: &Shared, tenant: &str, id: &str) -> Result<JobRecord, CancelError> {
    let record = shared
        .record(id)
        .filter(|r| r.tenant == tenant)
        .ok_or(CancelError::NotFound)?;
    let lane = shared.lanes.get(&record.model);
    let removed = lane.and_then(|lane| lane.lock().queue.remove(id));
    if removed.is_none() {
        let current = shared.record(id).unwrap_or(record);
        return Err(CancelError::NotCancellable(Box::new(current)));
    }
    let mut record = shared.record(id).unwrap_or(record);
    record.state = JobState::Cancelled;
    record.finished_at_ms = Some(now_ms());
    shared.publish(record.clone())?;
    shared.store.drop_input(id);
    shared
        .metrics
        .job_finished(&record.model, JobState::Cancelled.as_str());
    Ok(record)
}
