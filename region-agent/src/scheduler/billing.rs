//! Billing a finished job, in a fixed durability order: its output files, then its final
//! record with its usage record (cost included) on disk, then the usage record appended to
//! the journal, and only then its input deleted. A job whose input is still on disk after it
//! finished is therefore not billed yet: if the append fails, the job stays in the unbilled
//! set and is retried; after a crash, [`repair`] appends each such job exactly once.
//!
//! The rule (API.md): a completed job is charged `contract::charge(units, price_per_unit)`
//! at the price of the catalog copy in force when it finished (the copy it was accepted
//! under when its model has left the catalog since). A failed job (model error, timeout,
//! storage failure) is charged nothing and bills no units, while its GPU-seconds count as
//! used capacity.

use std::collections::HashSet;

use contract::{Nanos, charge};
use control_plane_client::wire::{Capacity, Outcome, UsageRecord};

use super::{Lane, Shared, catalog_copy};
use crate::catalog::Quote;
use crate::jobs::store::StoreError;
use crate::jobs::{JobRecord, JobState};
use crate::usage::LedgerError;

/// What a finished job used.
#[derive(Debug, Clone, Copy)]
pub(super) struct Work {
    /// Units of work, in the model's unit.
    pub units: f64,
    /// Its share of the batch's slot time.
    pub gpu_seconds: f64,
    /// The slot's class.
    pub capacity: Capacity,
}

/// The price of a job of `lane` finishing now.
fn quote_now(shared: &Shared, lane: &Lane, record: &JobRecord) -> Quote {
    let current = shared
        .catalog()
        .and_then(|catalog| catalog_copy::quote(&catalog, lane).ok());
    current.or_else(|| record.quote.clone()).unwrap_or_else(|| {
        tracing::error!(job = %record.id, "no catalog prices the job's model; it is recorded at price 0");
        Quote {
            catalog_revision: shared.catalog().map_or(0, |c| c.revision),
            unit: lane.model.unit().as_str().to_owned(),
            price_per_unit: 0.0,
        }
    })
}

/// The per-job usage record of `record`, which has reached its final state.
pub(super) fn usage_record(
    shared: &Shared,
    lane: &Lane,
    record: &JobRecord,
    work: Work,
) -> UsageRecord {
    let quote = quote_now(shared, lane, record);
    let completed = record.state == JobState::Completed;
    UsageRecord {
        job_id: record.id.clone(),
        tenant: record.tenant.clone(),
        model: record.model.clone(),
        region: record.region.clone(),
        capacity: work.capacity,
        outcome: if completed {
            Outcome::Completed
        } else {
            Outcome::Failed
        },
        error: record.error.as_ref().map(|e| e.kind.clone()),
        unit: quote.unit,
        units_nanos: if completed {
            Nanos::from_amount(work.units)
        } else {
            Nanos::ZERO
        },
        gpu_nanos: Nanos::from_amount(work.gpu_seconds),
        price_per_unit: quote.price_per_unit,
        cost_nanos: if completed {
            charge(work.units, quote.price_per_unit)
        } else {
            Nanos::ZERO
        },
        catalog_revision: quote.catalog_revision,
        finished_at_ms: record.finished_at_ms.unwrap_or_default(),
    }
}

/// Why a job could not be billed yet.
#[derive(Debug, thiserror::Error)]
enum BillError {
    #[error("store the final record: {0}")]
    Record(#[from] StoreError),
    #[error("append to the usage journal: {0}")]
    Journal(#[from] LedgerError),
}

/// The final record on disk, then its usage record in the journal.
fn bill(shared: &Shared, record: &JobRecord) -> Result<(), BillError> {
    shared.store.save(record)?;
    if let Some(usage) = &record.usage {
        shared.ledger.append(usage)?;
    }
    Ok(())
}

/// Stores, bills and publishes a finished job, then deletes its input — or keeps the input
/// and retries later when billing failed.
pub(super) fn close(shared: &Shared, record: JobRecord) {
    let billed = bill(shared, &record);
    let (id, model) = (record.id.clone(), record.model.clone());
    let cost = record.cost();
    let state = record.state;
    shared.show(record);
    match billed {
        Ok(()) => shared.store.drop_input(&id),
        Err(e) => {
            tracing::error!(error = %e, job = %id, "a finished job is not billed yet; its input is kept and billing is retried");
            shared.unbilled().insert(id);
        }
    }
    shared.metrics.charged(&model, cost.as_amount());
    shared.metrics.job_finished(&model, state.as_str());
}

/// Tries again to bill every finished job whose billing failed.
pub(super) fn retry_unbilled(shared: &Shared) {
    let ids: Vec<String> = shared.unbilled().iter().cloned().collect();
    for id in ids {
        let Some(record) = shared.record(&id) else {
            shared.unbilled().remove(&id);
            continue;
        };
        match bill(shared, &record) {
            Ok(()) => {
                shared.store.drop_input(&id);
                shared.unbilled().remove(&id);
                tracing::info!(job = %id, "a finished job was billed on a retry");
            }
            Err(e) => tracing::warn!(error = %e, job = %id, "billing still fails; retried later"),
        }
    }
}

/// After a restart: bills each finished job whose input is still on disk (a crash came
/// between its final record and the deletion of its input). Its usage record is appended
/// unless the journal already has it (looking only at the hours since it finished), then
/// its input is deleted.
pub(super) fn repair(shared: &Shared, finished: &[JobRecord]) -> Result<(), LedgerError> {
    let pending: Vec<&JobRecord> = finished
        .iter()
        .filter(|r| r.usage.is_some() && shared.store.has_input(&r.id))
        .collect();
    let Some(since) = pending.iter().filter_map(|r| r.finished_at_ms).min() else {
        return Ok(());
    };
    let ids: HashSet<String> = pending.iter().map(|r| r.id.clone()).collect();
    let journaled = shared.ledger.journaled(&ids, since)?;
    let mut appended = 0;
    for record in pending {
        if !journaled.contains(&record.id) {
            if let Some(usage) = &record.usage
                && let Err(e) = shared.ledger.append(usage)
            {
                tracing::error!(error = %e, job = %record.id, "cannot bill a job left unbilled by a crash; retried later");
                shared.unbilled().insert(record.id.clone());
                continue;
            }
            appended += 1;
        }
        shared.store.drop_input(&record.id);
    }
    tracing::info!(
        appended,
        already = journaled.len(),
        "finished jobs left unbilled by a crash were billed"
    );
    Ok(())
}
