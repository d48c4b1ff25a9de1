//! The control plane's store: one key space with etcd's semantics, behind one trait.
//!
//! Every write increments a global [`Revision`]; each key carries the revision that created it,
//! the revision that last modified it and a per-key version. Writes can be made conditional on
//! a key's mod revision (compare-and-set, `0` meaning "must not exist"), keys can be attached
//! to a lease that deletes them when it expires or is revoked, and a watch replays every event
//! from a chosen revision onwards before it continues live — or fails with
//! [`StoreError::Compacted`] when that revision's history is gone.
//!
//! Two backends implement [`Store`]: [`etcd::EtcdStore`] (production) and
//! [`embedded::EmbeddedStore`] (one machine, the default: a raft log on local disk).
//! [`AnyStore`] is the one the control plane holds, chosen from [`StoreConfig`].

pub mod embedded;
pub mod etcd;
pub mod versioned;
mod watch;

use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

pub use watch::{WatchEvent, WatchStream};

/// A point in the store's history. The first write to an empty store makes revision 2
/// (an empty store is at revision 1, as in etcd).
pub type Revision = i64;

/// A lease's identity, as granted by the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LeaseId(pub i64);

/// One key with its value and its place in the store's history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyValue {
    /// The key.
    pub key: String,
    /// The value as stored (see [`versioned`] for the envelope records use).
    pub value: Vec<u8>,
    /// The revision at which the key was (last) created.
    pub create_revision: Revision,
    /// The revision of the key's latest write.
    pub mod_revision: Revision,
    /// How many times the key was written since it was created (1 after creation).
    pub version: i64,
    /// The lease the key is attached to, if any.
    pub lease: Option<LeaseId>,
}

/// The keys under a prefix, read at one revision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listing {
    /// The store's revision when the keys were read.
    pub revision: Revision,
    /// The keys, sorted by key.
    pub kvs: Vec<KeyValue>,
}

/// What a store operation can fail with; callers branch on the variant.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// The key does not exist.
    #[error("key {key:?} not found")]
    NotFound {
        /// The key that was looked for.
        key: String,
    },
    /// A compare-and-set found another mod revision than the caller expected
    /// (`actual` is 0 when the key does not exist).
    #[error("conflict: expected mod revision {expected}, found {actual}")]
    Conflict {
        /// The mod revision the caller expected.
        expected: Revision,
        /// The key's mod revision when the write was tried.
        actual: Revision,
    },
    /// The requested revision's history was compacted away; start again from a full read.
    #[error("revision {requested} was compacted (history starts at {compacted})")]
    Compacted {
        /// The revision the caller asked for.
        requested: Revision,
        /// The revision the store has compacted up to.
        compacted: Revision,
    },
    /// The lease does not exist: never granted, revoked, or expired.
    #[error("lease not found (never granted, revoked or expired)")]
    LeaseNotFound,
    /// The request itself is invalid (an empty key, a zero TTL, a future revision).
    #[error("invalid request: {0}")]
    InvalidArgument(String),
    /// The store cannot serve the request now (connection lost, shut down, I/O failure).
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// Data read from disk or from the backend is not what the store wrote.
    #[error("store data is corrupt: {0}")]
    Corrupt(String),
}

/// A store result.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// A key-value store with etcd's semantics. See the module docs.
///
/// Implementations are cheap to share (`Arc` or clone) and every method may run concurrently.
pub trait Store: Send + Sync {
    /// The store's current revision.
    fn revision(&self) -> impl Future<Output = Result<Revision>> + Send;

    /// The key's current value, or `None` when it does not exist.
    fn get(&self, key: &str) -> impl Future<Output = Result<Option<KeyValue>>> + Send;

    /// Writes the key (attached to `lease` when given) and returns the new revision.
    /// Fails with [`StoreError::LeaseNotFound`] when the lease does not exist.
    fn put(
        &self,
        key: &str,
        value: Vec<u8>,
        lease: Option<LeaseId>,
    ) -> impl Future<Output = Result<Revision>> + Send;

    /// Deletes the key and returns the new revision; [`StoreError::NotFound`] when absent
    /// (nothing changes and the revision stays).
    fn delete(&self, key: &str) -> impl Future<Output = Result<Revision>> + Send;

    /// Writes the key only if its mod revision is `expected` (0: only if it does not exist);
    /// otherwise fails with [`StoreError::Conflict`] carrying the actual mod revision.
    fn compare_and_put(
        &self,
        key: &str,
        expected: Revision,
        value: Vec<u8>,
        lease: Option<LeaseId>,
    ) -> impl Future<Output = Result<Revision>> + Send;

    /// Deletes the key only if its mod revision is `expected`; [`StoreError::Conflict`] when
    /// it differs (`actual` 0 when the key is gone), [`StoreError::NotFound`] when `expected`
    /// is 0 and the key does not exist.
    fn compare_and_delete(
        &self,
        key: &str,
        expected: Revision,
    ) -> impl Future<Output = Result<Revision>> + Send;

    /// Every key starting with `prefix` (all keys for `""`), with the revision read at.
    fn list(&self, prefix: &str) -> impl Future<Output = Result<Listing>> + Send;

    /// Events for keys starting with `prefix`, beginning exactly at `from` (0: the next
    /// write). The stream's first item is [`StoreError::Compacted`] when `from` is older than
    /// the compacted history.
    fn watch(
        &self,
        prefix: &str,
        from: Revision,
    ) -> impl Future<Output = Result<WatchStream>> + Send;

    /// Drops history older than `revision`: watches from an earlier revision fail with
    /// [`StoreError::Compacted`] afterwards.
    fn compact(&self, revision: Revision) -> impl Future<Output = Result<()>> + Send;

    /// Grants a lease that expires `ttl` after its grant or last keep-alive (etcd rounds
    /// up to whole seconds).
    fn grant_lease(&self, ttl: Duration) -> impl Future<Output = Result<LeaseId>> + Send;

    /// Renews the lease for its full TTL and returns that TTL;
    /// [`StoreError::LeaseNotFound`] when it has expired or was revoked.
    fn keep_alive(&self, lease: LeaseId) -> impl Future<Output = Result<Duration>> + Send;

    /// Revokes the lease now, deleting every key attached to it (in one revision).
    fn revoke_lease(&self, lease: LeaseId) -> impl Future<Output = Result<()>> + Send;

    /// Writes every key of `txn` at one new revision if every compared key's mod revision is
    /// what the transaction names (0: absent); otherwise writes nothing and fails with
    /// [`StoreError::Conflict`] for the first compare that did not hold. Watchers see all the
    /// writes under the one revision.
    fn transact(&self, txn: Transaction) -> impl Future<Output = Result<Revision>> + Send;
}

/// Most compares, and most writes, one [`Transaction`] may hold (etcd's default
/// `--max-txn-ops` is 128).
pub const MAX_TXN_OPS: usize = 128;

/// Several writes made together, only if the compared keys are as expected.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Transaction {
    /// Key → the mod revision it must have (0: must not exist).
    pub compares: Vec<(String, Revision)>,
    /// Keys and the values written when every compare holds.
    pub puts: Vec<(String, Vec<u8>)>,
}

impl Transaction {
    /// Checks what every backend needs: some writes, no empty key, at most [`MAX_TXN_OPS`]
    /// compares and writes.
    pub(crate) fn check(&self) -> Result<()> {
        if self.puts.is_empty() {
            return Err(StoreError::InvalidArgument(
                "a transaction needs at least one write".into(),
            ));
        }
        if self.compares.len() > MAX_TXN_OPS || self.puts.len() > MAX_TXN_OPS {
            return Err(StoreError::InvalidArgument(format!(
                "a transaction holds at most {MAX_TXN_OPS} compares and {MAX_TXN_OPS} writes"
            )));
        }
        for (key, _) in &self.compares {
            check_key(key)?;
        }
        let mut written = std::collections::HashSet::new();
        for (key, _) in &self.puts {
            check_key(key)?;
            if !written.insert(key.as_str()) {
                return Err(StoreError::InvalidArgument(format!(
                    "key {key:?} is written twice in one transaction"
                )));
            }
        }
        Ok(())
    }
}

/// Which backend to run, as chosen in the control plane's configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreConfig {
    /// An etcd v3 cluster.
    Etcd {
        /// Client URLs, such as `http://127.0.0.1:2379`.
        endpoints: Vec<String>,
    },
    /// The embedded raft store, persisted under `data_dir`.
    Embedded(embedded::EmbeddedConfig),
}

impl StoreConfig {
    /// The embedded store under `data_dir` with default settings.
    pub fn embedded(data_dir: impl Into<PathBuf>) -> Self {
        Self::Embedded(embedded::EmbeddedConfig::new(data_dir))
    }
}

/// The store the control plane holds: one of the backends, chosen from [`StoreConfig`].
#[derive(Debug, Clone)]
pub enum AnyStore {
    /// etcd.
    Etcd(etcd::EtcdStore),
    /// The embedded raft store.
    Embedded(embedded::EmbeddedStore),
}

impl AnyStore {
    /// Connects to or opens the configured backend.
    pub async fn open(config: &StoreConfig) -> Result<Self> {
        match config {
            StoreConfig::Etcd { endpoints } => {
                Ok(Self::Etcd(etcd::EtcdStore::connect(endpoints).await?))
            }
            StoreConfig::Embedded(config) => Ok(Self::Embedded(
                embedded::EmbeddedStore::open(config.clone()).await?,
            )),
        }
    }
}

/// Forwards one [`Store`] method to whichever backend `self` holds.
macro_rules! dispatch {
    ($self:ident, $store:ident => $call:expr) => {
        match $self {
            AnyStore::Etcd($store) => $call.await,
            AnyStore::Embedded($store) => $call.await,
        }
    };
}

impl Store for AnyStore {
    async fn revision(&self) -> Result<Revision> {
        dispatch!(self, s => s.revision())
    }
    async fn get(&self, key: &str) -> Result<Option<KeyValue>> {
        dispatch!(self, s => s.get(key))
    }
    async fn put(&self, key: &str, value: Vec<u8>, lease: Option<LeaseId>) -> Result<Revision> {
        dispatch!(self, s => s.put(key, value, lease))
    }
    async fn delete(&self, key: &str) -> Result<Revision> {
        dispatch!(self, s => s.delete(key))
    }
    async fn compare_and_put(
        &self,
        key: &str,
        expected: Revision,
        value: Vec<u8>,
        lease: Option<LeaseId>,
    ) -> Result<Revision> {
        dispatch!(self, s => s.compare_and_put(key, expected, value, lease))
    }
    async fn compare_and_delete(&self, key: &str, expected: Revision) -> Result<Revision> {
        dispatch!(self, s => s.compare_and_delete(key, expected))
    }
    async fn list(&self, prefix: &str) -> Result<Listing> {
        dispatch!(self, s => s.list(prefix))
    }
    async fn watch(&self, prefix: &str, from: Revision) -> Result<WatchStream> {
        dispatch!(self, s => s.watch(prefix, from))
    }
    async fn compact(&self, revision: Revision) -> Result<()> {
        dispatch!(self, s => s.compact(revision))
    }
    async fn grant_lease(&self, ttl: Duration) -> Result<LeaseId> {
        dispatch!(self, s => s.grant_lease(ttl))
    }
    async fn keep_alive(&self, lease: LeaseId) -> Result<Duration> {
        dispatch!(self, s => s.keep_alive(lease))
    }
    async fn revoke_lease(&self, lease: LeaseId) -> Result<()> {
        dispatch!(self, s => s.revoke_lease(lease))
    }
    async fn transact(&self, txn: Transaction) -> Result<Revision> {
        dispatch!(self, s => s.transact(txn))
    }
}

/// Rejects keys no backend can store.
pub(crate) fn check_key(key: &str) -> Result<()> {
    if key.is_empty() {
        return Err(StoreError::InvalidArgument("the key is empty".into()));
    }
    Ok(())
}
