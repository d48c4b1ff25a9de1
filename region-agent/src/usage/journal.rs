//! The journal: every finished job's [`UsageRecord`], one JSON line each, appended and
//! fsynced before the job's input is deleted.
//!
//! ```text
//! <data_dir>/usage/journal/<hour>.jsonl   records appended during that UTC hour
//! ```
//!
//! `<hour>` is the hour's start in Unix ms, 13 digits. Records go to the file of the hour
//! they are appended in, never to an older file than the newest, so the journal is one
//! append-only sequence and a [`Position`] (file, byte offset) only moves forward. A record
//! finished at `t` is therefore in a file of `t`'s hour or later. A crash during an append
//! leaves an unterminated last line: [`Journal::open`] cuts it off (the job it belonged to
//! was not yet billed, so its input is still there and it is appended again at the restart),
//! and readers never read past the last complete line.

use std::fs::{self, File, OpenOptions};
use std::io::{BufRead, BufReader, Seek, SeekFrom, Write};
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use control_plane_client::wire::UsageRecord;
use serde::{Deserialize, Serialize};

use super::LedgerError;

/// Milliseconds in an hour.
pub const HOUR_MS: u64 = 3_600_000;

/// The start of `unix_ms`'s UTC hour.
pub fn hour_of(unix_ms: u64) -> u64 {
    unix_ms - unix_ms % HOUR_MS
}

/// A place in the journal: just after the record that ends there.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct Position {
    /// The file's hour (its start, Unix ms); 0 before every file.
    pub hour_ms: u64,
    /// Bytes of the file before this place.
    pub offset: u64,
}

impl Position {
    /// The start of the hour of `unix_ms`.
    pub fn hour_start(unix_ms: u64) -> Self {
        Self {
            hour_ms: hour_of(unix_ms),
            offset: 0,
        }
    }
}

/// One record read from the journal, and the position just after it.
#[derive(Debug, Clone)]
pub struct Entry {
    /// The record.
    pub record: UsageRecord,
    /// Where the next record starts.
    pub end: Position,
}

/// The file being appended to.
struct Tail {
    hour_ms: u64,
    file: File,
    len: u64,
}

/// The appending side, under one lock.
#[derive(Default)]
struct Appender {
    tail: Option<Tail>,
    newest: Option<u64>,
    /// Set when a failed append could not be undone: appends stop until a restart repairs
    /// the file (jobs stay unbilled, their inputs kept, meanwhile).
    broken: Option<String>,
}

/// The journal directory.
pub struct Journal {
    dir: PathBuf,
    appender: Mutex<Appender>,
}

fn io<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> LedgerError + 'a {
    move |source| contract::fs::failed(action, path)(source).into()
}

impl Journal {
    /// Opens (creating) the directory and cuts off an unterminated last line of any file.
    pub fn open(dir: &Path) -> Result<Self, LedgerError> {
        fs::create_dir_all(dir).map_err(io("create", dir))?;
        let journal = Self {
            dir: dir.to_path_buf(),
            appender: Mutex::default(),
        };
        let hours = journal.hours()?;
        for hour in &hours {
            journal.repair(*hour)?;
        }
        journal.lock().newest = hours.last().copied();
        Ok(journal)
    }

    fn lock(&self) -> MutexGuard<'_, Appender> {
        self.appender.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn path(&self, hour_ms: u64) -> PathBuf {
        self.dir.join(format!("{hour_ms:013}.jsonl"))
    }

    /// The hours that have a file, oldest first.
    pub fn hours(&self) -> Result<Vec<u64>, LedgerError> {
        let mut hours = Vec::new();
        for entry in fs::read_dir(&self.dir).map_err(io("list", &self.dir))? {
            let entry = entry.map_err(io("list", &self.dir))?;
            let name = entry.file_name();
            let hour = name
                .to_str()
                .and_then(|n| n.strip_suffix(".jsonl"))
                .and_then(|n| n.parse::<u64>().ok());
            hours.extend(hour);
        }
        hours.sort_unstable();
        Ok(hours)
    }

    /// Cuts an unterminated last line off an hour's file.
    fn repair(&self, hour_ms: u64) -> Result<(), LedgerError> {
        let path = self.path(hour_ms);
        let bytes = fs::read(&path).map_err(io("read", &path))?;
        if bytes.last().is_none_or(|b| *b == b'\n') {
            return Ok(());
        }
        let keep = bytes.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
        tracing::warn!(
            path = %path.display(),
            cut = bytes.len() - keep,
            "the journal ends in a torn line (a crash during an append); cut off, the job is \
             appended again"
        );
        let file = OpenOptions::new()
            .write(true)
            .open(&path)
            .map_err(io("open", &path))?;
        file.set_len(keep as u64).map_err(io("truncate", &path))?;
        file.sync_all().map_err(io("fsync", &path))
    }

    /// Appends `record` durably at `now_ms`; returns where the record ends.
    pub fn append(&self, record: &UsageRecord, now_ms: u64) -> Result<Position, LedgerError> {
        let mut line = serde_json::to_vec(record).map_err(|source| LedgerError::Json {
            path: self.dir.clone(),
            source,
        })?;
        line.push(b'\n');
        let mut appender = self.lock();
        if let Some(why) = &appender.broken {
            return Err(LedgerError::Broken(why.clone()));
        }
        let hour_ms = hour_of(now_ms).max(appender.newest.unwrap_or(0));
        let tail = self.tail(&mut appender, hour_ms)?;
        let path = self.path(hour_ms);
        let written = tail
            .file
            .write_all(&line)
            .and_then(|()| tail.file.sync_data());
        if let Err(e) = written {
            let undone = tail
                .file
                .set_len(tail.len)
                .and_then(|()| tail.file.sync_data());
            if let Err(undo) = undone {
                appender.broken = Some(format!(
                    "an append to {} failed ({e}) and could not be undone ({undo}); restart \
                     the agent to repair the journal",
                    path.display()
                ));
            }
            return Err(io("append to", &path)(e));
        }
        tail.len += line.len() as u64;
        Ok(Position {
            hour_ms,
            offset: tail.len,
        })
    }

    /// The open file of `hour_ms`, opened (and created durably) when needed.
    fn tail<'a>(
        &self,
        appender: &'a mut Appender,
        hour_ms: u64,
    ) -> Result<&'a mut Tail, LedgerError> {
        if appender.tail.as_ref().is_none_or(|t| t.hour_ms != hour_ms) {
            let path = self.path(hour_ms);
            let existed = path.exists();
            let file = OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .map_err(io("open", &path))?;
            let len = file.metadata().map_err(io("stat", &path))?.len();
            if !existed {
                contract::fs::sync_dir(&self.dir)?;
            }
            appender.newest = Some(hour_ms);
            appender.tail = Some(Tail { hour_ms, file, len });
        }
        appender
            .tail
            .as_mut()
            .ok_or_else(|| LedgerError::Broken("no journal file is open".into()))
    }

    /// Reads records from `from` on, oldest first, until `visit` breaks or the journal ends.
    /// Lines that are not records are logged and skipped.
    pub fn scan(
        &self,
        from: Position,
        mut visit: impl FnMut(Entry) -> ControlFlow<()>,
    ) -> Result<(), LedgerError> {
        for hour_ms in self.hours()?.into_iter().filter(|h| *h >= from.hour_ms) {
            let offset = if hour_ms == from.hour_ms {
                from.offset
            } else {
                0
            };
            if self.scan_file(hour_ms, offset, &mut visit)?.is_break() {
                break;
            }
        }
        Ok(())
    }

    fn scan_file(
        &self,
        hour_ms: u64,
        offset: u64,
        visit: &mut impl FnMut(Entry) -> ControlFlow<()>,
    ) -> Result<ControlFlow<()>, LedgerError> {
        let path = self.path(hour_ms);
        let mut file = match File::open(&path) {
            Ok(file) => file,
            // Deleted by the retention sweep meanwhile: nothing to read there.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(ControlFlow::Continue(()));
            }
            Err(e) => return Err(io("open", &path)(e)),
        };
        file.seek(SeekFrom::Start(offset))
            .map_err(io("seek", &path))?;
        let mut reader = BufReader::new(file);
        let (mut at, mut line) = (offset, Vec::new());
        loop {
            line.clear();
            let n = reader
                .read_until(b'\n', &mut line)
                .map_err(io("read", &path))?;
            if n == 0 || line.last() != Some(&b'\n') {
                // The end, or a line still being written.
                return Ok(ControlFlow::Continue(()));
            }
            at += n as u64;
            let end = Position {
                hour_ms,
                offset: at,
            };
            match serde_json::from_slice::<UsageRecord>(&line) {
                Ok(record) => {
                    if visit(Entry { record, end }).is_break() {
                        return Ok(ControlFlow::Break(()));
                    }
                }
                Err(e) => {
                    tracing::error!(error = %e, path = %path.display(), offset = at - n as u64, "a journal line is not a usage record; skipped");
                }
            }
        }
    }

    /// Deletes the files of hours before `before_hour_ms` (exclusive), except the newest
    /// file; returns how many were deleted.
    pub fn delete_before(&self, before_hour_ms: u64) -> Result<usize, LedgerError> {
        let newest = self.lock().newest;
        let mut deleted = 0;
        for hour_ms in self.hours()? {
            if hour_ms >= before_hour_ms || Some(hour_ms) == newest {
                continue;
            }
            let path = self.path(hour_ms);
            fs::remove_file(&path).map_err(io("delete", &path))?;
            deleted += 1;
        }
        if deleted > 0 {
            contract::fs::sync_dir(&self.dir)?;
        }
        Ok(deleted)
    }
}
