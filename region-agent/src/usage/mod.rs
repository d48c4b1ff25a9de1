//! The usage ledger, kept on the agent's disk in its region (docs/design.md §6).
//!
//! Every finished job's per-job [`UsageRecord`] is appended to the [`journal`] and kept for
//! the usage retention time, readable page by page for audits ([`audit`]). The control plane
//! receives only numbered batches of per-hour aggregates (tenant × model × capacity × UTC
//! hour, [`outbox`]), so what it stores grows with time and the catalog, never with traffic.
//! Each batch is written to the outbox before it is sent and keeps its seq and rows until a
//! receipt comes back; the control plane applies each `(region, ledger, seq)` once. Every
//! record is in exactly one batch, so the sum of the region's records equals the sum of its
//! batches' rows, to the billionth.

pub mod audit;
pub mod journal;
mod legacy;
pub mod outbox;

use std::collections::HashSet;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use contract::RegionId;
use control_plane_client::wire::{UsageBatch, UsageRecord};

use self::audit::RecordFilter;
use self::journal::{Journal, Position, hour_of};
use self::outbox::{Cursor, Outbox, OutboxFiles};
use crate::jobs::now_ms;

/// Why the ledger failed (the agent's disk).
#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    /// Reading or writing a file failed.
    #[error(transparent)]
    File(#[from] contract::fs::FileError),
    /// A file could not be encoded or decoded.
    #[error("{}: {source}", .path.display())]
    Json {
        /// The path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: serde_json::Error,
    },
    /// The ledger id file does not hold a ledger id.
    #[error(
        "{} does not hold a ledger id (32 lowercase hex digits); restore it from a backup, \
         or delete it to start a new ledger",
        .0.display()
    )]
    BadLedgerId(PathBuf),
    /// The journal cannot take appends until the agent restarts.
    #[error("{0}")]
    Broken(String),
}

/// What is being sent, under one lock.
struct SendState {
    cursor: Cursor,
    outbox: Option<Outbox>,
}

/// The ledger of one agent's data directory.
pub struct Ledger {
    id: String,
    region: RegionId,
    journal: Journal,
    files: OutboxFiles,
    send: Mutex<SendState>,
}

impl Ledger {
    /// Opens (creating) `<data_dir>/usage`: the ledger id, the journal (repairing a torn
    /// tail), the cursor and the outbox.
    pub fn open(data_dir: &Path, region: &RegionId) -> Result<Self, LedgerError> {
        let dir = data_dir.join("usage");
        let journal = Journal::open(&dir.join("journal"))?;
        legacy::migrate(&dir, &journal)?;
        let id = ledger_id(&dir.join("ledger"))?;
        let files = OutboxFiles::new(&dir);
        let (cursor, outbox) = files.load()?;
        Ok(Self {
            id,
            region: region.clone(),
            journal,
            files,
            send: Mutex::new(SendState { cursor, outbox }),
        })
    }

    fn lock(&self) -> MutexGuard<'_, SendState> {
        self.send.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The ledger id (32 lowercase hex digits).
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Appends a finished job's record durably.
    pub fn append(&self, record: &UsageRecord) -> Result<(), LedgerError> {
        self.journal.append(record, now_ms()).map(drop)
    }

    /// Which of `ids` are in the journal, looking only at files since `since_ms`'s hour.
    pub fn journaled(
        &self,
        ids: &HashSet<String>,
        since_ms: u64,
    ) -> Result<HashSet<String>, LedgerError> {
        let mut found = HashSet::new();
        if ids.is_empty() {
            return Ok(found);
        }
        self.journal.scan(Position::hour_start(since_ms), |entry| {
            if ids.contains(&entry.record.job_id) {
                found.insert(entry.record.job_id);
            }
            ControlFlow::Continue(())
        })?;
        Ok(found)
    }

    /// The batch to send: the one in the outbox, else a new one built from the journal after
    /// the cursor (written to the outbox before it is returned); `None` when all is sent.
    pub fn pending_batch(&self) -> Result<Option<UsageBatch>, LedgerError> {
        let mut send = self.lock();
        if let Some(outbox) = &send.outbox {
            return Ok(Some(outbox.batch.clone()));
        }
        let Some(outbox) = outbox::build(&self.journal, send.cursor, &self.region, &self.id)?
        else {
            return Ok(None);
        };
        self.files.write_outbox(&outbox)?;
        let batch = outbox.batch.clone();
        send.outbox = Some(outbox);
        Ok(Some(batch))
    }

    /// The control plane has batch `seq` (applied now or before): the cursor moves past it
    /// and it leaves the outbox. Returns whether it was the pending batch.
    pub fn acknowledge(&self, seq: u64) -> Result<bool, LedgerError> {
        let mut send = self.lock();
        let Some(outbox) = send.outbox.as_ref().filter(|o| o.batch.seq == seq) else {
            return Ok(false);
        };
        let cursor = Cursor {
            position: outbox.end,
            seq,
        };
        self.files.advance(cursor)?;
        send.cursor = cursor;
        send.outbox = None;
        Ok(true)
    }

    /// How far the control plane has the journal.
    pub fn cursor(&self) -> Cursor {
        self.lock().cursor
    }

    /// Whether a batch waits in the outbox.
    pub fn has_outbox(&self) -> bool {
        self.lock().outbox.is_some()
    }

    /// A page of records (see [`audit::page`]).
    pub fn page(
        &self,
        filter: &RecordFilter,
        cursor: Option<Position>,
        limit: usize,
    ) -> Result<(Vec<UsageRecord>, Option<Position>), LedgerError> {
        audit::page(&self.journal, filter, cursor, limit)
    }

    /// Deletes journal files older than `retention`; with `keep_unsent`, never one that holds
    /// records the control plane has not received. Returns how many files were deleted.
    pub fn sweep(
        &self,
        now_ms: u64,
        retention: Duration,
        keep_unsent: bool,
    ) -> Result<usize, LedgerError> {
        let retention_ms = u64::try_from(retention.as_millis()).unwrap_or(u64::MAX);
        let mut before = hour_of(now_ms.saturating_sub(retention_ms));
        if keep_unsent {
            before = before.min(self.lock().cursor.position.hour_ms);
        }
        self.journal.delete_before(before)
    }
}

/// Reads the ledger id, making a random one when the file does not exist.
fn ledger_id(path: &Path) -> Result<String, LedgerError> {
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let id = text.trim();
            let valid = id.len() == 32
                && id
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
            if valid {
                Ok(id.to_owned())
            } else {
                Err(LedgerError::BadLedgerId(path.to_path_buf()))
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let id = format!("{:032x}", rand::random::<u128>());
            contract::fs::write_atomic(path, format!("{id}\n").as_bytes())?;
            tracing::info!(ledger = %id, "a new usage ledger was started");
            Ok(id)
        }
        Err(source) => Err(LedgerError::File(contract::fs::FileError {
            action: "read",
            path: path.to_path_buf(),
            source,
        })),
    }
}

#[cfg(test)]
mod tests;
