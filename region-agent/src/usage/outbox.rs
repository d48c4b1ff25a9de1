//! What the control plane receives: numbered batches of per-hour aggregates, built from the
//! journal after the cursor, each written durably to the outbox before it is sent.
//!
//! ```text
//! <data_dir>/usage/ledger        the ledger id: 32 random lowercase hex digits
//! <data_dir>/usage/cursor.json   {"position": …, "seq": …}: the journal is sent up to
//!                                position, and seq is the last batch the control plane applied
//! <data_dir>/usage/outbox.json   {"batch": UsageBatch, "end": position}: the batch on its way
//! ```
//!
//! A batch is built once and kept in the outbox until a receipt for its `seq` comes back, so
//! a resend (after a lost answer or a crash) has the same seq and the same rows, and the
//! control plane, which applies each `(region, ledger, seq)` once, counts it once. On the
//! receipt the cursor moves to the batch's end (written atomically) and the outbox entry is
//! removed; an outbox whose seq the cursor already covers (a crash between the two) is
//! dropped at open.

use std::collections::BTreeMap;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};

use contract::RegionId;
use control_plane_client::wire::{
    Capacity, MAX_USAGE_ROWS, Outcome, UsageAggregate, UsageBatch, UsageRecord,
};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::LedgerError;
use super::journal::{Journal, Position, hour_of};

/// How far the control plane has the journal.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cursor {
    /// The journal is sent up to here.
    pub position: Position,
    /// The last batch applied (0 before the first).
    pub seq: u64,
}

/// A batch on its way.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Outbox {
    /// The batch, exactly as sent.
    pub batch: UsageBatch,
    /// Where in the journal its records end.
    pub end: Position,
}

/// The cursor and outbox files.
pub struct OutboxFiles {
    dir: PathBuf,
}

impl OutboxFiles {
    /// The files under `dir` (`<data_dir>/usage`).
    pub fn new(dir: &Path) -> Self {
        Self {
            dir: dir.to_path_buf(),
        }
    }

    fn cursor_path(&self) -> PathBuf {
        self.dir.join("cursor.json")
    }

    fn outbox_path(&self) -> PathBuf {
        self.dir.join("outbox.json")
    }

    /// The cursor and the pending batch, as left on disk.
    pub fn load(&self) -> Result<(Cursor, Option<Outbox>), LedgerError> {
        let cursor: Cursor = read_json(&self.cursor_path())?.unwrap_or_default();
        let outbox: Option<Outbox> = read_json(&self.outbox_path())?;
        match outbox {
            Some(outbox) if outbox.batch.seq <= cursor.seq => {
                tracing::info!(
                    seq = outbox.batch.seq,
                    "the outbox batch was applied before the last stop; dropped"
                );
                self.clear_outbox()?;
                Ok((cursor, None))
            }
            outbox => Ok((cursor, outbox)),
        }
    }

    /// Writes the pending batch durably.
    pub fn write_outbox(&self, outbox: &Outbox) -> Result<(), LedgerError> {
        write_json(&self.outbox_path(), outbox)
    }

    /// Moves the cursor (durably), then removes the outbox entry.
    pub fn advance(&self, cursor: Cursor) -> Result<(), LedgerError> {
        write_json(&self.cursor_path(), &cursor)?;
        self.clear_outbox()
    }

    fn clear_outbox(&self) -> Result<(), LedgerError> {
        let path = self.outbox_path();
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(contract::fs::sync_dir(&self.dir)?),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(LedgerError::File(contract::fs::FileError {
                action: "delete",
                path,
                source,
            })),
        }
    }
}

fn read_json<T: DeserializeOwned>(path: &Path) -> Result<Option<T>, LedgerError> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|source| LedgerError::Json {
                path: path.to_path_buf(),
                source,
            }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(LedgerError::File(contract::fs::FileError {
            action: "read",
            path: path.to_path_buf(),
            source,
        })),
    }
}

fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<(), LedgerError> {
    let bytes = serde_json::to_vec_pretty(value).map_err(|source| LedgerError::Json {
        path: path.to_path_buf(),
        source,
    })?;
    Ok(contract::fs::write_atomic(path, &bytes)?)
}

/// A row's key: tenant × model × capacity × UTC hour.
type RowKey = (String, String, u8, u64);

fn row_key(record: &UsageRecord) -> RowKey {
    let capacity = match record.capacity {
        Capacity::Reserved => 0,
        Capacity::OnDemand => 1,
    };
    (
        record.tenant.clone(),
        record.model.clone(),
        capacity,
        hour_of(record.finished_at_ms),
    )
}

fn add(row: &mut UsageAggregate, record: &UsageRecord) {
    row.jobs += 1;
    row.failed_jobs += u64::from(record.outcome == Outcome::Failed);
    row.units_nanos += record.units_nanos;
    row.gpu_nanos += record.gpu_nanos;
    row.cost_nanos += record.cost_nanos;
}

/// The next batch after `cursor`: the journal's records from the cursor on, summed into at
/// most [`MAX_USAGE_ROWS`] rows (a record that would need one more row waits for the next
/// batch); `None` when there is nothing new.
pub fn build(
    journal: &Journal,
    cursor: Cursor,
    region: &RegionId,
    ledger: &str,
) -> Result<Option<Outbox>, LedgerError> {
    let mut rows: BTreeMap<RowKey, UsageAggregate> = BTreeMap::new();
    let mut end = None;
    journal.scan(cursor.position, |entry| {
        let key = row_key(&entry.record);
        if !rows.contains_key(&key) && rows.len() == MAX_USAGE_ROWS {
            return ControlFlow::Break(());
        }
        let row = rows.entry(key).or_insert_with(|| UsageAggregate {
            tenant: entry.record.tenant.clone(),
            model: entry.record.model.clone(),
            capacity: entry.record.capacity,
            hour_ms: hour_of(entry.record.finished_at_ms),
            jobs: 0,
            failed_jobs: 0,
            units_nanos: Default::default(),
            gpu_nanos: Default::default(),
            cost_nanos: Default::default(),
        });
        add(row, &entry.record);
        end = Some(entry.end);
        ControlFlow::Continue(())
    })?;
    let Some(end) = end else { return Ok(None) };
    Ok(Some(Outbox {
        batch: UsageBatch {
            schema: contract::schema::USAGE_BATCH,
            region: region.to_string(),
            ledger: ledger.to_owned(),
            seq: cursor.seq + 1,
            rows: rows.into_values().collect(),
        },
        end,
    }))
}
