//! Usage records an earlier agent version left unacknowledged: one JSON file per job in
//! `<data_dir>/usage/<job id>.json`, `{job_id, tenant, model, region, units, gpu_seconds,
//! capacity, cost, finished_at_ms}`. At open they are appended to the journal (completed, at
//! their recorded cost, catalog revision 0) and their files deleted, so a job billed before
//! an upgrade is not lost by it.

use std::collections::HashSet;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};

use contract::Nanos;
use control_plane_client::wire::{Capacity, Outcome, UsageRecord};
use serde::Deserialize;

use super::LedgerError;
use super::journal::{Journal, Position};

/// A record as the earlier version wrote it.
#[derive(Debug, Deserialize)]
struct LegacyRecord {
    job_id: String,
    tenant: String,
    model: String,
    region: String,
    units: f64,
    gpu_seconds: f64,
    capacity: Capacity,
    cost: f64,
    finished_at_ms: u64,
}

impl From<LegacyRecord> for UsageRecord {
    fn from(old: LegacyRecord) -> Self {
        let price_per_unit = if old.units > 0.0 {
            old.cost / old.units
        } else {
            0.0
        };
        Self {
            job_id: old.job_id,
            tenant: old.tenant,
            model: old.model,
            region: old.region,
            capacity: old.capacity,
            outcome: Outcome::Completed,
            error: None,
            unit: "unknown".into(),
            units_nanos: Nanos::from_amount(old.units),
            gpu_nanos: Nanos::from_amount(old.gpu_seconds),
            price_per_unit,
            cost_nanos: Nanos::from_amount(old.cost),
            catalog_revision: 0,
            finished_at_ms: old.finished_at_ms,
        }
    }
}

/// Moves the earlier version's records in `dir` into `journal`, each once (one already in
/// the journal from an interrupted move is not appended again); returns how many.
pub fn migrate(dir: &Path, journal: &Journal) -> Result<usize, LedgerError> {
    let found = read(dir)?;
    let Some(since) = found.iter().map(|(_, r)| r.finished_at_ms).min() else {
        return Ok(0);
    };
    let mut journaled = HashSet::new();
    journal.scan(Position::hour_start(since), |entry| {
        journaled.insert(entry.record.job_id);
        ControlFlow::Continue(())
    })?;
    for (path, record) in &found {
        if !journaled.contains(&record.job_id) {
            journal.append(record, record.finished_at_ms)?;
        }
        std::fs::remove_file(path).map_err(|source| {
            LedgerError::File(contract::fs::FileError {
                action: "delete",
                path: path.clone(),
                source,
            })
        })?;
    }
    contract::fs::sync_dir(dir)?;
    tracing::info!(
        records = found.len(),
        "usage records of an earlier agent version moved into the journal"
    );
    Ok(found.len())
}

/// The earlier version's record files in `dir` (named `<request id>.json`).
fn read(dir: &Path) -> Result<Vec<(PathBuf, UsageRecord)>, LedgerError> {
    let io = |action, source| {
        LedgerError::File(contract::fs::FileError {
            action,
            path: dir.to_path_buf(),
            source,
        })
    };
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| io("list", e))? {
        let path = entry.map_err(|e| io("list", e))?.path();
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        let is_legacy = name
            .strip_suffix(".json")
            .is_some_and(|id| contract::RequestId::new(id).is_ok());
        if !is_legacy {
            continue;
        }
        let bytes = std::fs::read(&path).map_err(|e| io("read", e))?;
        let record: LegacyRecord =
            serde_json::from_slice(&bytes).map_err(|source| LedgerError::Json {
                path: path.clone(),
                source,
            })?;
        found.push((path, UsageRecord::from(record)));
    }
    Ok(found)
}
