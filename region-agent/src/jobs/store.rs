//! Jobs on disk, in the agent's data directory:
//!
//! ```text
//! <data_dir>/jobs/<request id>/record.json   the JobRecord (replaced atomically)
//! <data_dir>/jobs/<request id>/input.json    the job's input, until it has finished
//! <data_dir>/jobs/<request id>/files/<name>  output files
//! ```
//!
//! Every file is written with [`contract::fs::write_atomic`] (temporary name, fsync, rename,
//! fsync of the directory), so a crash leaves either the old or the new content, never a torn
//! file.

use std::fs;
use std::path::{Path, PathBuf};

use contract::RequestId;
use contract::fs::{sync_dir, write_atomic};
use serde_json::Value;

use super::JobRecord;

/// Why the store failed (the agent's disk, never the user's input).
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Reading or writing a file failed.
    #[error(transparent)]
    File(#[from] contract::fs::FileError),
    /// A record could not be encoded or decoded.
    #[error("record {path}: {source}")]
    Json {
        /// The path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: serde_json::Error,
    },
}

fn io<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> StoreError + 'a {
    move |source| contract::fs::failed(action, path)(source).into()
}

/// The jobs directory of one agent.
#[derive(Debug, Clone)]
pub struct JobStore {
    root: PathBuf,
}

impl JobStore {
    /// Opens (creating) `<data_dir>/jobs`.
    pub fn open(data_dir: &Path) -> Result<Self, StoreError> {
        let root = data_dir.join("jobs");
        fs::create_dir_all(&root).map_err(io("create", &root))?;
        Ok(Self { root })
    }

    fn dir(&self, id: &str) -> PathBuf {
        self.root.join(id)
    }

    /// Creates a job's directory with its input and first record.
    pub fn create(&self, record: &JobRecord, input: &Value) -> Result<(), StoreError> {
        let dir = self.dir(&record.id);
        fs::create_dir_all(dir.join("files")).map_err(io("create", &dir))?;
        let input_path = dir.join("input.json");
        let bytes = serde_json::to_vec(input).map_err(|source| StoreError::Json {
            path: input_path.clone(),
            source,
        })?;
        write_atomic(&input_path, &bytes)?;
        self.save(record)?;
        Ok(sync_dir(&self.root)?)
    }

    /// Replaces a job's record.
    pub fn save(&self, record: &JobRecord) -> Result<(), StoreError> {
        let path = self.dir(&record.id).join("record.json");
        let bytes = serde_json::to_vec_pretty(record).map_err(|source| StoreError::Json {
            path: path.clone(),
            source,
        })?;
        Ok(write_atomic(&path, &bytes)?)
    }

    /// Reads a job's input.
    pub fn input(&self, id: &str) -> Result<Value, StoreError> {
        let path = self.dir(id).join("input.json");
        let bytes = fs::read(&path).map_err(io("read", &path))?;
        serde_json::from_slice(&bytes).map_err(|source| StoreError::Json { path, source })
    }

    /// Whether a job's input is still on disk (a finished job keeps it until it is billed).
    pub fn has_input(&self, id: &str) -> bool {
        self.dir(id).join("input.json").exists()
    }

    /// Deletes a finished job's input (its output is all that is kept).
    pub fn drop_input(&self, id: &str) {
        let path = self.dir(id).join("input.json");
        if let Err(e) = fs::remove_file(&path)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(error = %e, path = %path.display(), "cannot delete a finished job's input");
        }
    }

    /// Writes an output file.
    pub fn write_file(&self, id: &str, name: &str, bytes: &[u8]) -> Result<(), StoreError> {
        Ok(write_atomic(&self.dir(id).join("files").join(name), bytes)?)
    }

    /// Reads an output file; `None` when it does not exist or the name is not a plain name.
    pub fn read_file(&self, id: &str, name: &str) -> Option<Vec<u8>> {
        let plain = !name.is_empty()
            && !name.starts_with('.')
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
        if !plain || RequestId::new(id).is_err() {
            return None;
        }
        fs::read(self.dir(id).join("files").join(name)).ok()
    }

    /// Deletes a job and its files.
    pub fn delete(&self, id: &str) -> Result<(), StoreError> {
        let dir = self.dir(id);
        match fs::remove_dir_all(&dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io("delete", &dir)(e)),
        }
    }

    /// Free space on the store's disk for an unprivileged writer, in bytes.
    pub fn free_bytes(&self) -> std::io::Result<u64> {
        let stats = rustix::fs::statvfs(&self.root).map_err(std::io::Error::from)?;
        Ok(stats.f_bavail.saturating_mul(stats.f_frsize))
    }

    /// Every record on disk; directories without a readable record are reported and skipped.
    pub fn load_all(&self) -> Result<Vec<JobRecord>, StoreError> {
        let mut records = Vec::new();
        for entry in fs::read_dir(&self.root).map_err(io("list", &self.root))? {
            let entry = entry.map_err(io("list", &self.root))?;
            let name = entry.file_name();
            let Some(id) = name.to_str().filter(|id| RequestId::new(id).is_ok()) else {
                continue;
            };
            let path = entry.path().join("record.json");
            let record = fs::read(&path)
                .map_err(io("read", &path))
                .and_then(|bytes| {
                    serde_json::from_slice::<JobRecord>(&bytes).map_err(|source| StoreError::Json {
                        path: path.clone(),
                        source,
                    })
                });
            match record {
                Ok(record) if record.id == id => records.push(record),
                Ok(_) => {
                    tracing::error!(path = %path.display(), "record names another job; skipped")
                }
                Err(e) => tracing::error!(error = %e, "unreadable job record; skipped"),
            }
        }
        records.sort_by_key(|r| r.seq);
        Ok(records)
    }
}
