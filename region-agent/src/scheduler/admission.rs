//! Taking jobs in and out of the queues: refusals before acceptance (draining, no catalog,
//! the data disk short of free space, model not served, queue full, the tenant at its job
//! bound — nothing is created),
//! acceptance (input checked, job stored durably, then queued), idempotency keys (a key
//! already used for the same submission answers with its job) and cancellation (a queued
//! job at once, a running one marked to stop at its model's next safe point).

use std::sync::atomic::Ordering;

use contract::{RequestId, TenantId};
use serde_json::Value;
use tokio::sync::watch;

use super::queue::Queued;
use super::running::Marked;
use super::{CancelError, Cancellation, Lane, Refusal, Shared, SubmitError, Terms, catalog_copy};
use crate::catalog::Quote;
use crate::jobs::idempotency::{Claim, Idempotency, IdempotencyKey, Pending, fingerprint};
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
    if short_of_space(shared) {
        return Err(refused(Refusal::DiskFull));
    }
    let lane = shared
        .lanes
        .get(model)
        .ok_or_else(|| refused(Refusal::ModelNotServed))?;
    let quote =
        catalog_copy::quote(&catalog, lane).map_err(|_| refused(Refusal::ModelNotServed))?;
    Ok((lane, quote))
}

/// Whether the data disk has less free space than the agent keeps for accepted jobs (their
/// records, results and usage). A disk whose free space cannot be read is not refused for
/// it: its writes will say what is wrong.
fn short_of_space(shared: &Shared) -> bool {
    if shared.min_free_disk_bytes == 0 {
        return false;
    }
    let (short, free) = match shared.store.free_bytes() {
        Ok(free) => (free < shared.min_free_disk_bytes, free),
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the data disk's free space");
            return false;
        }
    };
    // Said once when it changes, not at every refusal.
    if shared.disk_short.swap(short, Ordering::SeqCst) != short {
        let min_free_disk_bytes = shared.min_free_disk_bytes;
        if short {
            tracing::warn!(
                free,
                min_free_disk_bytes,
                "the data disk is short of free space; new jobs are refused"
            );
        } else {
            tracing::info!(
                free,
                min_free_disk_bytes,
                "the data disk has free space again; new jobs are accepted"
            );
        }
    }
    short
}

/// Accepts a job (on a blocking thread), or answers with the job its idempotency key
/// already names.
pub(super) fn submit(
    shared: &Shared,
    tenant: &TenantId,
    model: &str,
    priority: Priority,
    input: Value,
    terms: &Terms,
) -> Result<JobRecord, SubmitError> {
    let keyed = match &terms.key {
        Some(key) => {
            let submitted = terms.submitted.as_ref().unwrap_or(&input);
            let fingerprint = fingerprint(model, priority, submitted);
            match claim(shared, tenant, key, &fingerprint)? {
                Ok(pending) => Some((pending, key, fingerprint)),
                Err(existing) => return Ok(existing),
            }
        }
        None => None,
    };
    let (lane, quote) = refusal(shared, model)?;
    shared.tenants.admit(tenant.as_str(), terms.bound)?;
    {
        let mut state = lane.lock();
        if state.queue.len() + state.reserved >= lane.config.queue_bound {
            drop(state);
            shared.tenants.finished(tenant.as_str());
            shared.metrics.refused(Refusal::QueueFull.reason());
            return Err(SubmitError::Refused(Refusal::QueueFull));
        }
        state.reserved += 1;
    }
    let idempotency = keyed.as_ref().map(|(_, key, fingerprint)| Idempotency {
        key: key.as_str().to_owned(),
        fingerprint: fingerprint.clone(),
    });
    let new = NewJob {
        tenant,
        priority,
        input: &input,
        quote,
        idempotency,
        webhook: terms.webhook.clone(),
    };
    let accepted = store_new_job(shared, lane, new);
    let mut state = lane.lock();
    state.reserved -= 1;
    let (record, job) = match accepted {
        Ok(accepted) => accepted,
        Err(e) => {
            drop(state);
            shared.tenants.finished(tenant.as_str());
            return Err(e);
        }
    };
    state.queue.push(job);
    drop(state);
    lane.wake.notify_all();
    if let Some((pending, _, fingerprint)) = keyed {
        pending.accepted(&record.id, &fingerprint);
    }
    Ok(record)
}

/// Holds a new key for this submission, or finds the job the key already names (the same
/// submission) or refuses it (another submission under the same key).
fn claim<'a>(
    shared: &'a Shared,
    tenant: &TenantId,
    key: &IdempotencyKey,
    fingerprint: &str,
) -> Result<Result<Pending<'a>, JobRecord>, SubmitError> {
    loop {
        match shared.keys.claim(tenant.as_str(), key, fingerprint) {
            Claim::New(pending) => return Ok(Ok(pending)),
            Claim::Reused => return Err(SubmitError::KeyReused),
            Claim::Existing(id) => match shared.record(&id) {
                Some(record) => return Ok(Err(record)),
                // Deleted between the two looks: the key is free again.
                None => shared.keys.remove(tenant.as_str(), key.as_str(), &id),
            },
        }
    }
}

/// What a new job is made of.
struct NewJob<'a> {
    tenant: &'a TenantId,
    priority: Priority,
    input: &'a Value,
    quote: Quote,
    idempotency: Option<Idempotency>,
    webhook: Option<crate::jobs::Webhook>,
}

/// Checks the input and stores the new job (its place in the queue is already reserved).
fn store_new_job(
    shared: &Shared,
    lane: &Lane,
    new: NewJob<'_>,
) -> Result<(JobRecord, Queued), SubmitError> {
    let NewJob {
        tenant,
        priority,
        input,
        quote,
        idempotency,
        webhook,
    } = new;
    let prepared = lane.model.prepare(input)?;
    let record = JobRecord {
        id: RequestId::random(&shared.region, &shared.instance).to_string(),
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
        idempotency,
        webhook,
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

/// Cancels a job (on a blocking thread): a queued one at once — it never ran, so it has no
/// usage record —, a running one by marking it in its model's running batch, where it ends
/// `CANCELLED` at the model's next safe point ([`super::running`]). A job cancelled already
/// answers as cancelled again. `None`: the job has just left its model and its final state
/// is being stored; the answer is that state, once published.
pub(super) fn cancel(
    shared: &Shared,
    tenant: &str,
    id: &str,
) -> Result<Option<Cancellation>, CancelError> {
    let record = shared
        .record(id)
        .filter(|r| r.tenant == tenant)
        .ok_or(CancelError::NotFound)?;
    if record.state.is_final() {
        return finished(record).map(Some);
    }
    let Some(lane) = shared.lanes.get(&record.model) else {
        return Err(CancelError::NotCancellable(Box::new(record)));
    };
    let (removed, marked) = {
        let mut state = lane.lock();
        match state.queue.remove(id) {
            Some(job) => (Some(job), None),
            None => (None, state.running.cancel(id)),
        }
    };
    let current = shared.record(id).unwrap_or(record);
    if removed.is_none() {
        return match marked {
            Some(marked) => {
                if marked == Marked::Now {
                    tracing::info!(job = %id, "a running job is asked to stop at its next safe point");
                }
                Ok(Some(Cancellation::Requested(current)))
            }
            None if current.state.is_final() => finished(current).map(Some),
            None => Ok(None),
        };
    }
    let mut record = current;
    record.state = JobState::Cancelled;
    record.finished_at_ms = Some(now_ms());
    shared.publish(record.clone())?;
    shared.store.drop_input(id);
    shared
        .metrics
        .job_finished(&record.model, JobState::Cancelled.as_str());
    Ok(Some(Cancellation::Cancelled(record)))
}

/// The answer for a job that has finished: cancelled already, or no longer cancellable.
pub(super) fn finished(record: JobRecord) -> Result<Cancellation, CancelError> {
    match record.state {
        JobState::Cancelled => Ok(Cancellation::Cancelled(record)),
        _ => Err(CancelError::NotCancellable(Box::new(record))),
    }
}
