//! The raft log, hard state and snapshot of the embedded store, persisted in a data directory.
//!
//! Layout of the directory:
//!
//! - `LOCK`: held (an OS file lock) while a store has the directory open.
//! - `raft.log`: appended records, one per log entry; a later record for an index replaces
//!   that entry and every entry after it (how raft truncates a conflicting suffix).
//! - `raft.state`: the hard state (term, vote, commit) and the voter set, replaced atomically.
//! - `raft.snapshot`: the latest snapshot of the key space, replaced atomically; the log
//!   keeps only the entries after it.
//!
//! Every record is `[length: u32 LE][crc32 of payload: u32 LE][payload]`; payloads are raft's
//! protobuf messages. A torn record at the log's tail (a crash mid-append) is cut off on open:
//! it was never acknowledged, since appends are fsynced before raft may commit them. A damaged
//! record that valid entries follow is not a crash's torn tail but a corrupt file: cutting it
//! off would drop acknowledged writes, so opening refuses, naming the file, the byte and what
//! to do ([`StoreError::Corrupt`]).

use std::fs::{self, File, OpenOptions, TryLockError};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use prost::Message as _;
use raft::eraftpb::{ConfState, Entry, HardState, Snapshot, SnapshotMetadata};
use raft::{GetEntriesContext, RaftState, StorageError};

use crate::store::{Result, StoreError};

const LOCK_FILE: &str = "LOCK";
const LOG_FILE: &str = "raft.log";
const STATE_FILE: &str = "raft.state";
const SNAPSHOT_FILE: &str = "raft.snapshot";
const HEADER: usize = 8;

/// The raft node's id while the store runs alone.
pub const NODE_ID: u64 = 1;

/// The on-disk raft storage; clones share it. Implements [`raft::Storage`].
#[derive(Clone)]
pub struct RaftDisk {
    core: Arc<Mutex<DiskCore>>,
}

struct DiskCore {
    dir: PathBuf,
    hard_state: HardState,
    conf_state: ConfState,
    snapshot: Snapshot,
    /// The entries after the snapshot, contiguous.
    entries: Vec<Entry>,
    log: File,
    /// Bytes in the log file.
    log_bytes: u64,
    _lock: File,
}

impl RaftDisk {
    /// Opens (creating when empty) the storage in `dir`, waiting up to `lock_wait` for another
    /// handle on the same directory to let go of it.
    pub fn open(dir: &Path, lock_wait: Duration) -> Result<Self> {
        fs::create_dir_all(dir).map_err(|e| io_error("create the data directory", dir, &e))?;
        let lock = acquire_lock(dir, lock_wait)?;
        let snapshot = match read_file(&dir.join(SNAPSHOT_FILE))? {
            Some(bytes) => decode_record::<Snapshot>(&bytes, SNAPSHOT_FILE)?,
            None => Snapshot::default(),
        };
        let (mut hard_state, conf_state) = match read_file(&dir.join(STATE_FILE))? {
            Some(bytes) => decode_state(&bytes)?,
            None => {
                let conf_state = ConfState {
                    voters: vec![NODE_ID],
                    ..ConfState::default()
                };
                write_atomic(
                    dir,
                    STATE_FILE,
                    &encode_state(&HardState::default(), &conf_state),
                )?;
                (HardState::default(), conf_state)
            }
        };
        let meta = snapshot.metadata.clone().unwrap_or_default();
        // A snapshot only holds committed entries; the commit index itself is not fsynced on
        // every change (raft recovers it), so never let it lag behind the snapshot.
        hard_state.commit = hard_state.commit.max(meta.index);
        let (entries, log, log_bytes) = load_log(dir, meta.index)?;
        let core = DiskCore {
            dir: dir.to_owned(),
            hard_state,
            conf_state,
            snapshot,
            entries,
            log,
            log_bytes,
            _lock: lock,
        };
        Ok(Self {
            core: Arc::new(Mutex::new(core)),
        })
    }

    fn core(&self) -> MutexGuard<'_, DiskCore> {
        self.core.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The latest snapshot's index and the key space data it holds (empty when none).
    pub fn snapshot_data(&self) -> (u64, Vec<u8>) {
        let core = self.core();
        (core.snapshot_index(), core.snapshot.data.clone())
    }

    /// Bytes in the log since the latest snapshot (the log holds only what came after it).
    pub fn log_bytes(&self) -> u64 {
        self.core().log_bytes
    }

    /// Appends entries (replacing any suffix they overlap) and fsyncs them.
    pub fn append(&self, entries: &[Entry]) -> Result<()> {
        let Some(first) = entries.first() else {
            return Ok(());
        };
        let mut core = self.core();
        let mut buffer = Vec::new();
        for entry in entries {
            encode_record_into(&entry.encode_to_vec(), &mut buffer);
        }
        core.log
            .write_all(&buffer)
            .map_err(|e| io_error("append to", &core.dir.join(LOG_FILE), &e))?;
        core.log
            .sync_data()
            .map_err(|e| io_error("fsync", &core.dir.join(LOG_FILE), &e))?;
        core.log_bytes += buffer.len() as u64;
        let keep = usize::try_from(first.index.saturating_sub(core.snapshot_index() + 1))
            .unwrap_or(usize::MAX);
        core.entries.truncate(keep);
        core.entries.extend_from_slice(entries);
        Ok(())
    }

    /// Records a new hard state; writes it to disk when the term or vote changed (the commit
    /// index alone is recovered by raft after a restart).
    pub fn set_hard_state(&self, hard_state: &HardState) -> Result<()> {
        let mut core = self.core();
        let durable_change =
            core.hard_state.term != hard_state.term || core.hard_state.vote != hard_state.vote;
        core.hard_state = hard_state.clone();
        if durable_change {
            let bytes = encode_state(&core.hard_state, &core.conf_state);
            write_atomic(&core.dir, STATE_FILE, &bytes)?;
        }
        Ok(())
    }

    /// Notes a new commit index (kept in memory; see [`Self::set_hard_state`]).
    pub fn set_commit(&self, commit: u64) {
        self.core().hard_state.commit = commit;
    }

    /// Saves a snapshot of the key space as of `index` and drops the log up to it.
    pub fn save_snapshot(&self, index: u64, data: Vec<u8>) -> Result<()> {
        let mut core = self.core();
        if index <= core.snapshot_index() {
            return Ok(());
        }
        let term = core
            .term_at(index)
            .map_err(|e| StoreError::Corrupt(format!("snapshot at {index}: {e}")))?;
        let metadata = SnapshotMetadata {
            conf_state: Some(core.conf_state.clone()),
            index,
            term,
        };
        let snapshot = Snapshot {
            data,
            metadata: Some(metadata),
        };
        write_atomic(
            &core.dir,
            SNAPSHOT_FILE,
            &encode_record(&snapshot.encode_to_vec()),
        )?;
        let keep_from = usize::try_from(index - core.snapshot_index()).unwrap_or(usize::MAX);
        let keep_from = keep_from.min(core.entries.len());
        let remaining = core.entries.split_off(keep_from);
        let mut buffer = Vec::new();
        for entry in &remaining {
            encode_record_into(&entry.encode_to_vec(), &mut buffer);
        }
        write_atomic(&core.dir, LOG_FILE, &buffer)?;
        core.log = open_log(&core.dir)?;
        core.log_bytes = buffer.len() as u64;
        core.entries = remaining;
        core.snapshot = snapshot;
        Ok(())
    }
}

impl DiskCore {
    fn snapshot_index(&self) -> u64 {
        self.snapshot.metadata.as_ref().map_or(0, |m| m.index)
    }

    fn last_index(&self) -> u64 {
        self.snapshot_index() + self.entries.len() as u64
    }

    fn term_at(&self, index: u64) -> raft::Result<u64> {
        let snapshot_index = self.snapshot_index();
        if index == snapshot_index {
            return Ok(self.snapshot.metadata.as_ref().map_or(0, |m| m.term));
        }
        if index < snapshot_index {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        let offset = usize::try_from(index - snapshot_index - 1).unwrap_or(usize::MAX);
        self.entries
            .get(offset)
            .map(|e| e.term)
            .ok_or(raft::Error::Store(StorageError::Unavailable))
    }
}

impl raft::Storage for RaftDisk {
    fn initial_state(&self) -> raft::Result<RaftState> {
        let core = self.core();
        Ok(RaftState::new(
            core.hard_state.clone(),
            core.conf_state.clone(),
        ))
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        _context: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        let core = self.core();
        let first = core.snapshot_index() + 1;
        if low < first {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        if high > core.last_index() + 1 || low > high {
            return Err(raft::Error::Store(StorageError::Unavailable));
        }
        let lo = usize::try_from(low - first).unwrap_or(usize::MAX);
        let hi = usize::try_from(high - first).unwrap_or(usize::MAX);
        let mut entries = core
            .entries
            .get(lo..hi)
            .map(<[Entry]>::to_vec)
            .unwrap_or_default();
        raft::util::limit_size(&mut entries, max_size.into());
        Ok(entries)
    }

    fn term(&self, index: u64) -> raft::Result<u64> {
        self.core().term_at(index)
    }

    fn first_index(&self) -> raft::Result<u64> {
        Ok(self.core().snapshot_index() + 1)
    }

    fn last_index(&self) -> raft::Result<u64> {
        Ok(self.core().last_index())
    }

    fn snapshot(&self, request_index: u64, _to: u64) -> raft::Result<Snapshot> {
        let core = self.core();
        if core.snapshot_index() < request_index {
            return Err(raft::Error::Store(
                StorageError::SnapshotTemporarilyUnavailable,
            ));
        }
        Ok(core.snapshot.clone())
    }
}

fn acquire_lock(dir: &Path, wait: Duration) -> Result<File> {
    let path = dir.join(LOCK_FILE);
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| io_error("open", &path, &e))?;
    let deadline = Instant::now() + wait;
    loop {
        match file.try_lock() {
            Ok(()) => return Ok(file),
            Err(TryLockError::WouldBlock) if Instant::now() < deadline => {
                // Another handle is shutting down or another process holds the directory.
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(TryLockError::WouldBlock) => {
                return Err(StoreError::Unavailable(format!(
                    "the data directory {} is in use by another store",
                    dir.display()
                )));
            }
            Err(TryLockError::Error(e)) => return Err(io_error("lock", &path, &e)),
        }
    }
}

/// Reads the log's valid records, cuts off a torn tail, and opens it for appending.
fn load_log(dir: &Path, snapshot_index: u64) -> Result<(Vec<Entry>, File, u64)> {
    let path = dir.join(LOG_FILE);
    let bytes = read_file(&path)?.unwrap_or_default();
    let mut entries: Vec<Entry> = Vec::new();
    let mut offset = 0;
    while let Some((payload, next)) = next_record(&bytes, offset) {
        let entry = Entry::decode(payload).map_err(|e| {
            StoreError::Corrupt(format!("{} at byte {offset}: {e}", path.display()))
        })?;
        offset = next;
        if entry.index <= snapshot_index {
            continue;
        }
        let position = usize::try_from(entry.index - snapshot_index - 1).unwrap_or(usize::MAX);
        if position > entries.len() {
            return Err(StoreError::Corrupt(format!(
                "{}: entry {} follows entry {}",
                path.display(),
                entry.index,
                snapshot_index + entries.len() as u64
            )));
        }
        entries.truncate(position);
        entries.push(entry);
    }
    if offset < bytes.len() {
        refuse_damaged_middle(&path, &bytes, offset)?;
    }
    let log = open_log(dir)?;
    if offset < bytes.len() {
        tracing::warn!(
            path = %path.display(),
            offset,
            bytes = bytes.len() - offset,
            "cutting off a torn record at the raft log's tail (a write cut short by a crash, never acknowledged)"
        );
        log.set_len(offset as u64)
            .map_err(|e| io_error("truncate", &path, &e))?;
        log.sync_all().map_err(|e| io_error("fsync", &path, &e))?;
    }
    Ok((entries, log, offset as u64))
}

/// Checks that the damaged record at `offset` of the log `bytes` is a torn tail: nothing
/// after it is a valid log entry. Otherwise the file is corrupt in the middle and opening it
/// must stop, since cutting the log at `offset` would lose the acknowledged entries after it.
fn refuse_damaged_middle(path: &Path, bytes: &[u8], offset: usize) -> Result<()> {
    let Some(found) = (offset + 1..bytes.len()).find(|&at| is_entry_record(bytes, at)) else {
        return Ok(());
    };
    let path = path.display();
    Err(StoreError::Corrupt(format!(
        "{path} is corrupt: the record at byte {offset} is damaged (its length or checksum does          not match its bytes) and a valid entry follows at byte {found}, so this is not a write          cut short by a crash; the store will not start, since dropping what follows would lose          acknowledged writes. Restore the data directory from a backup. Only if losing every          write from byte {offset} on is acceptable, keep a copy of the file and cut it with          `truncate -s {offset} {path}`"
    )))
}

/// Whether a record that decodes as a real log entry (index 1 or more) starts at `offset`.
fn is_entry_record(bytes: &[u8], offset: usize) -> bool {
    next_record(bytes, offset)
        .and_then(|(payload, _)| Entry::decode(payload).ok())
        .is_some_and(|entry| entry.index > 0)
}

fn open_log(dir: &Path) -> Result<File> {
    let path = dir.join(LOG_FILE);
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .map_err(|e| io_error("open", &path, &e))
}

/// The payload of the record at `offset` and where the next one starts; `None` at the end or
/// at a torn or damaged record.
fn next_record(bytes: &[u8], offset: usize) -> Option<(&[u8], usize)> {
    let header = bytes.get(offset..offset.checked_add(HEADER)?)?;
    let length = u32::from_le_bytes(header.get(0..4)?.try_into().ok()?) as usize;
    let crc = u32::from_le_bytes(header.get(4..8)?.try_into().ok()?);
    let start = offset + HEADER;
    let payload = bytes.get(start..start.checked_add(length)?)?;
    (crc32fast::hash(payload) == crc).then_some((payload, start + length))
}

fn encode_record_into(payload: &[u8], out: &mut Vec<u8>) {
    // Raft entries and snapshots stay far below 4 GiB; a longer payload is a bug.
    let length = u32::try_from(payload.len()).unwrap_or(u32::MAX);
    out.extend_from_slice(&length.to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(payload).to_le_bytes());
    out.extend_from_slice(payload);
}

fn encode_record(payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + HEADER);
    encode_record_into(payload, &mut out);
    out
}

/// Decodes a file holding exactly one record.
fn decode_record<M: prost::Message + Default>(bytes: &[u8], name: &str) -> Result<M> {
    match next_record(bytes, 0) {
        Some((payload, end)) if end == bytes.len() => {
            M::decode(payload).map_err(|e| StoreError::Corrupt(format!("{name}: {e}")))
        }
        _ => Err(StoreError::Corrupt(format!(
            "{name}: damaged or truncated record"
        ))),
    }
}

fn encode_state(hard_state: &HardState, conf_state: &ConfState) -> Vec<u8> {
    let mut out = encode_record(&hard_state.encode_to_vec());
    encode_record_into(&conf_state.encode_to_vec(), &mut out);
    out
}

fn decode_state(bytes: &[u8]) -> Result<(HardState, ConfState)> {
    let damaged = || StoreError::Corrupt(format!("{STATE_FILE}: damaged or truncated record"));
    let (hard, next) = next_record(bytes, 0).ok_or_else(damaged)?;
    let (conf, end) = next_record(bytes, next).ok_or_else(damaged)?;
    if end != bytes.len() {
        return Err(damaged());
    }
    let corrupt = |e: prost::DecodeError| StoreError::Corrupt(format!("{STATE_FILE}: {e}"));
    Ok((
        HardState::decode(hard).map_err(corrupt)?,
        ConfState::decode(conf).map_err(corrupt)?,
    ))
}

fn read_file(path: &Path) -> Result<Option<Vec<u8>>> {
    match fs::read(path) {
        Ok(bytes) => Ok(Some(bytes)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_error("read", path, &e)),
    }
}

/// Replaces `dir/name` with `bytes` so that a crash leaves either the old or the new file
/// (`contract::fs::write_atomic`).
fn write_atomic(dir: &Path, name: &str, bytes: &[u8]) -> Result<()> {
    contract::fs::write_atomic(&dir.join(name), bytes)
        .map_err(|e| StoreError::Unavailable(e.to_string()))
}

fn io_error(action: &str, path: &Path, error: &std::io::Error) -> StoreError {
    StoreError::Unavailable(format!("{action} {}: {error}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(index: u64, term: u64, data: &[u8]) -> Entry {
        Entry {
            index,
            term,
            data: data.to_vec(),
            ..Entry::default()
        }
    }

    #[test]
    fn entries_survive_reopen_and_torn_tail_is_cut() {
        let dir = tempfile::tempdir().unwrap();
        {
            let disk = RaftDisk::open(dir.path(), Duration::ZERO).unwrap();
            disk.append(&[entry(1, 1, b"a"), entry(2, 1, b"b"), entry(3, 1, b"c")])
                .unwrap();
            // A new leader overwrites the suffix from index 3.
            disk.append(&[entry(3, 2, b"c2")]).unwrap();
        }
        // A crash in the middle of the next append leaves half a record.
        let mut log = OpenOptions::new()
            .append(true)
            .open(dir.path().join(LOG_FILE))
            .unwrap();
        log.write_all(&[42, 0, 0, 0, 1, 2]).unwrap();
        drop(log);

        let disk = RaftDisk::open(dir.path(), Duration::ZERO).unwrap();
        let core = disk.core();
        let got: Vec<_> = core
            .entries
            .iter()
            .map(|e| (e.index, e.term, e.data.clone()))
            .collect();
        assert_eq!(
            got,
            vec![
                (1, 1, b"a".to_vec()),
                (2, 1, b"b".to_vec()),
                (3, 2, b"c2".to_vec())
            ]
        );
        drop(core);
        let bytes = fs::read(dir.path().join(LOG_FILE)).unwrap();
        let mut offset = 0;
        let mut records = 0;
        while let Some((_, next)) = next_record(&bytes, offset) {
            offset = next;
            records += 1;
        }
        assert_eq!(
            (records, offset),
            (4, bytes.len()),
            "the torn bytes are gone from the file"
        );
    }

    /// Three entries written and closed; the offsets of the records in `raft.log`.
    fn three_entries(dir: &Path) -> Vec<usize> {
        let disk = RaftDisk::open(dir, Duration::ZERO).unwrap();
        disk.append(&[entry(1, 1, b"a"), entry(2, 1, b"b"), entry(3, 1, b"c")])
            .unwrap();
        drop(disk);
        let bytes = fs::read(dir.join(LOG_FILE)).unwrap();
        let mut offsets = vec![0];
        while let Some((_, next)) = next_record(&bytes, *offsets.last().unwrap()) {
            offsets.push(next);
        }
        assert_eq!(offsets.pop(), Some(bytes.len()));
        offsets
    }

    fn damage(dir: &Path, at: usize, change: impl Fn(u8) -> u8) {
        let path = dir.join(LOG_FILE);
        let mut bytes = fs::read(&path).unwrap();
        bytes[at] = change(bytes[at]);
        fs::write(&path, bytes).unwrap();
    }

    #[test]
    fn a_damaged_record_in_the_middle_refuses_to_open() {
        let dir = tempfile::tempdir().unwrap();
        let offsets = three_entries(dir.path());
        let size = fs::metadata(dir.path().join(LOG_FILE)).unwrap().len();
        // One flipped bit in the second record's payload.
        damage(dir.path(), offsets[1] + HEADER + 1, |b| b ^ 0x01);
        let Err(StoreError::Corrupt(message)) = RaftDisk::open(dir.path(), Duration::ZERO) else {
            panic!("a corrupt middle must refuse to open");
        };
        let path = dir.path().join(LOG_FILE);
        assert!(message.contains(&path.display().to_string()), "{message}");
        assert!(
            message.contains(&format!("byte {}", offsets[1])),
            "{message}"
        );
        assert!(message.contains("backup"), "{message}");
        assert_eq!(
            fs::metadata(&path).unwrap().len(),
            size,
            "nothing was cut off"
        );
        // A length that runs past the end of the file, with entries after it, likewise.
        let dir = tempfile::tempdir().unwrap();
        let offsets = three_entries(dir.path());
        damage(dir.path(), offsets[1] + 3, |_| 0x7f);
        assert!(matches!(
            RaftDisk::open(dir.path(), Duration::ZERO),
            Err(StoreError::Corrupt(m)) if m.contains(&format!("byte {}", offsets[1]))
        ));
    }

    #[test]
    fn a_damaged_last_record_is_a_torn_tail() {
        let dir = tempfile::tempdir().unwrap();
        let offsets = three_entries(dir.path());
        // The last record's payload was not all written before the crash.
        damage(dir.path(), offsets[2] + HEADER + 1, |b| b ^ 0xff);
        let disk = RaftDisk::open(dir.path(), Duration::ZERO).unwrap();
        use raft::Storage as _;
        assert_eq!(disk.last_index().unwrap(), 2);
        assert_eq!(disk.log_bytes(), offsets[2] as u64);
        drop(disk);
        // The file was cut there, and appending goes on after it.
        let disk = RaftDisk::open(dir.path(), Duration::ZERO).unwrap();
        disk.append(&[entry(3, 2, b"c2")]).unwrap();
        drop(disk);
        let disk = RaftDisk::open(dir.path(), Duration::ZERO).unwrap();
        assert_eq!(disk.last_index().unwrap(), 3);
        assert_eq!(disk.term(3).unwrap(), 2);
    }

    #[test]
    fn snapshot_drops_the_log_prefix_and_reloads() {
        let dir = tempfile::tempdir().unwrap();
        {
            let disk = RaftDisk::open(dir.path(), Duration::ZERO).unwrap();
            disk.append(&[entry(1, 1, b"a"), entry(2, 1, b"b"), entry(3, 1, b"c")])
                .unwrap();
            disk.set_commit(3);
            disk.save_snapshot(2, b"state".to_vec()).unwrap();
        }
        let disk = RaftDisk::open(dir.path(), Duration::ZERO).unwrap();
        assert_eq!(disk.snapshot_data(), (2, b"state".to_vec()));
        use raft::Storage as _;
        assert_eq!(disk.first_index().unwrap(), 3);
        assert_eq!(disk.last_index().unwrap(), 3);
        assert_eq!(disk.term(2).unwrap(), 1);
        assert_eq!(disk.initial_state().unwrap().hard_state.commit, 2);
    }

    #[test]
    fn a_second_open_of_the_same_directory_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let _first = RaftDisk::open(dir.path(), Duration::ZERO).unwrap();
        let second = RaftDisk::open(dir.path(), Duration::ZERO);
        assert!(matches!(second, Err(StoreError::Unavailable(m)) if m.contains("in use")));
    }
}
