//! Restart and retention: what a starting agent finds in its data directory, and the sweep
//! that deletes results past their retention time.
//!
//! At start every job on disk is looked at: finished jobs are served again until their
//! retention ends, and those a crash left unbilled (input still on disk) are billed once
//! ([`super::billing::repair`]); queued jobs are queued again in their original order (the
//! queue bound does not apply: they were accepted already); jobs that were running when the
//! agent stopped are queued again too (their work is repeated; they are billed once, when
//! they finish). A job that cannot be resumed (its input is gone or unreadable, or its model
//! is no longer configured) fails with a reason — none vanishes; it never ran on a slot, so
//! it has no usage record. The sweep never deletes a job that is not billed yet, nor a job
//! with an idempotency key before the key's window has ended (so the key keeps naming it).
//! Restored jobs count for their tenants again and their keys name them again.

use std::sync::atomic::Ordering;

use tokio::sync::watch;

use super::queue::Queued;
use super::{Shared, billing};
use crate::jobs::{IDEMPOTENCY_WINDOW_MS, JobError, JobRecord, JobState, now_ms};

/// Loads every job from disk into the scheduler (before the model threads start).
pub(super) fn restore(shared: &Shared) -> anyhow::Result<()> {
    let records = shared.store.load_all()?;
    let finished: Vec<JobRecord> = records
        .iter()
        .filter(|r| r.state.is_final())
        .cloned()
        .collect();
    billing::repair(shared, &finished)?;
    for record in finished.iter().filter(|r| r.usage.is_none()) {
        shared.store.drop_input(&record.id);
    }
    let now = now_ms();
    let retention_ms = u64::try_from(shared.retention.as_millis()).unwrap_or(u64::MAX);
    let (mut resumed, mut kept, mut expired, mut failed) = (0, 0, 0, 0);
    for record in records {
        shared
            .next_seq
            .fetch_max(record.seq.saturating_add(1), Ordering::SeqCst);
        if record.state.is_final() {
            let billed = !shared.unbilled().contains(&record.id);
            if billed && expires_at(&record, retention_ms) <= now {
                shared.store.delete(&record.id)?;
                expired += 1;
            } else {
                insert(shared, record);
                kept += 1;
            }
            continue;
        }
        match resume(shared, record) {
            Ok(()) => resumed += 1,
            Err(record) => {
                failed += 1;
                insert(shared, *record);
            }
        }
    }
    tracing::info!(
        resumed,
        kept,
        expired,
        failed,
        "jobs restored from the data directory"
    );
    Ok(())
}

/// When a finished job may be deleted: after its retention, and for a job with an
/// idempotency key not before the key's window has ended.
fn expires_at(record: &JobRecord, retention_ms: u64) -> u64 {
    let finished = record.finished_at_ms.unwrap_or(record.queued_at_ms);
    let kept = finished.saturating_add(retention_ms);
    match record.idempotency {
        Some(_) => kept.max(record.queued_at_ms.saturating_add(IDEMPOTENCY_WINDOW_MS)),
        None => kept,
    }
}

fn insert(shared: &Shared, record: JobRecord) {
    if !record.state.is_final() {
        shared.tenants.add(&record.tenant);
    }
    if let Some(idempotency) = &record.idempotency {
        shared.keys.insert(&record.tenant, idempotency, &record.id);
    }
    shared
        .table()
        .insert(record.id.clone(), watch::Sender::new(record));
}

/// Queues an unfinished job again, or returns it failed (and stored) with the reason.
fn resume(shared: &Shared, mut record: JobRecord) -> Result<(), Box<JobRecord>> {
    let Some(lane) = shared.lanes.get(&record.model) else {
        return Err(fail(
            shared,
            record,
            "the model is no longer served by this agent".into(),
        ));
    };
    let prepared = match shared.store.input(&record.id) {
        Ok(input) => lane
            .model
            .prepare(&input)
            .map_err(|e| format!("the stored input is no longer accepted: {e}")),
        Err(e) => Err(format!("the stored input cannot be read: {e}")),
    };
    let input = match prepared {
        Ok(input) => input,
        Err(reason) => return Err(fail(shared, record, reason)),
    };
    if record.state == JobState::InProgress {
        tracing::warn!(job = %record.id, "job was running when the agent stopped; queued again");
        record.state = JobState::InQueue;
        record.started_at_ms = None;
        if let Err(e) = shared.store.save(&record) {
            tracing::error!(error = %e, job = %record.id, "cannot store a re-queued job");
        }
    }
    lane.lock().queue.push(Queued {
        id: record.id.clone(),
        priority: record.priority,
        input,
    });
    insert(shared, record);
    Ok(())
}

fn fail(shared: &Shared, mut record: JobRecord, message: String) -> Box<JobRecord> {
    tracing::error!(job = %record.id, reason = %message, "job cannot be resumed after a restart; failed");
    record.state = JobState::Failed;
    record.finished_at_ms = Some(now_ms());
    record.error = Some(JobError {
        kind: "restart".into(),
        message,
    });
    if let Err(e) = shared.store.save(&record) {
        tracing::error!(error = %e, job = %record.id, "cannot store a failed job");
    }
    shared.store.drop_input(&record.id);
    Box::new(record)
}

/// Deletes finished jobs whose retention has ended; returns how many.
pub(super) fn sweep(shared: &Shared, now: u64) -> usize {
    let retention_ms = u64::try_from(shared.retention.as_millis()).unwrap_or(u64::MAX);
    let unbilled = shared.unbilled().clone();
    let expired: Vec<(String, String, Option<String>)> = shared
        .table()
        .iter()
        .filter_map(|(id, tx)| {
            let record = tx.borrow();
            record.finished_at_ms?;
            let due = expires_at(&record, retention_ms) <= now;
            let key = record.idempotency.as_ref().map(|i| i.key.clone());
            (record.state.is_final() && due && !unbilled.contains(id))
                .then(|| (id.clone(), record.tenant.clone(), key))
        })
        .collect();
    let mut deleted = 0;
    for (id, tenant, key) in expired {
        match shared.store.delete(&id) {
            Ok(()) => {
                if let Some(key) = key {
                    shared.keys.remove(&tenant, &key, &id);
                }
                shared.table().remove(&id);
                deleted += 1;
            }
            Err(e) => tracing::error!(error = %e, job = %id, "cannot delete an expired result"),
        }
    }
    if deleted > 0 {
        tracing::info!(deleted, "expired results deleted");
    }
    deleted
}
