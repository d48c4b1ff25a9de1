//! Usage records waiting for the control plane: one JSON file per finished job in
//! `<data_dir>/usage/`, written durably before the job's final record, deleted only once the
//! control plane acknowledged it. Delivery is at least once; the control plane deduplicates by
//! job id, so a record sent twice (after a crash or a lost answer) is counted once.

use std::fs;
use std::path::{Path, PathBuf};

use control_plane_client::wire::UsageRecord;

use crate::jobs::store::{StoreError, write_atomic};

/// The spool directory.
#[derive(Debug, Clone)]
pub struct UsageSpool {
    dir: PathBuf,
}

impl UsageSpool {
    /// Opens (creating) `<data_dir>/usage`.
    pub fn open(data_dir: &Path) -> Result<Self, StoreError> {
        let dir = data_dir.join("usage");
        fs::create_dir_all(&dir).map_err(|source| StoreError::Io {
            action: "create",
            path: dir.clone(),
            source,
        })?;
        Ok(Self { dir })
    }

    /// Stores a record until it is acknowledged (replacing an earlier one of the same job).
    pub fn record(&self, record: &UsageRecord) -> Result<(), StoreError> {
        let path = self.dir.join(format!("{}.json", record.job_id));
        let bytes = serde_json::to_vec(record).map_err(|source| StoreError::Json {
            path: path.clone(),
            source,
        })?;
        write_atomic(&path, &bytes)
    }

    /// Up to `limit` unacknowledged records, oldest first by finish time.
    pub fn pending(&self, limit: usize) -> Vec<UsageRecord> {
        let Ok(entries) = fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        let mut records: Vec<UsageRecord> = entries
            .filter_map(Result::ok)
            .filter(|e| e.file_name().to_str().is_some_and(|n| n.ends_with(".json")))
            .filter_map(|e| fs::read(e.path()).ok())
            .filter_map(|bytes| serde_json::from_slice(&bytes).ok())
            .collect();
        records.sort_by(|a, b| (a.finished_at_ms, &a.job_id).cmp(&(b.finished_at_ms, &b.job_id)));
        records.truncate(limit);
        records
    }

    /// Number of unacknowledged records.
    pub fn len(&self) -> usize {
        fs::read_dir(&self.dir)
            .map(|entries| {
                entries
                    .filter_map(Result::ok)
                    .filter(|e| e.file_name().to_str().is_some_and(|n| n.ends_with(".json")))
                    .count()
            })
            .unwrap_or(0)
    }

    /// Whether nothing waits.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Forgets acknowledged records.
    pub fn acknowledge(&self, records: &[UsageRecord]) {
        for record in records {
            let path = self.dir.join(format!("{}.json", record.job_id));
            if let Err(e) = fs::remove_file(&path)
                && e.kind() != std::io::ErrorKind::NotFound
            {
                tracing::warn!(error = %e, path = %path.display(), "cannot delete an acknowledged usage record");
            }
        }
    }
}
