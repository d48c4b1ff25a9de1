//! The embedded store: etcd's semantics on one machine, with no etcd to run.
//!
//! Writes go through a raft log ([`raft`], tikv's raft-rs) persisted under a data directory
//! and are acknowledged only once fsynced and applied, so dropping or killing the process
//! loses no acknowledged write. The log is applied to an in-memory [`keyspace::KeySpace`]
//! that copies etcd's model: a global revision, per-key create/mod revisions and versions,
//! history kept for watches until compacted, and leases whose TTL is kept by the leader's
//! clock ([`tokio::time`]). The raft group has a single voter today; the log, hard state
//! and snapshots are already kept the way more replicas will need them.

mod disk;
mod keyspace;
mod node;

use std::path::PathBuf;
use std::sync::{Arc, PoisonError, RwLock, RwLockReadGuard};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch};

use self::disk::RaftDisk;
use self::keyspace::{Applied, Command, KeySpace};
use self::node::{Node, Request};
use super::{
    KeyValue, LeaseId, Listing, Result, Revision, Store, StoreError, Transaction, WatchEvent,
    WatchStream, check_key,
};

/// Settings of the embedded store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EmbeddedConfig {
    /// Where the raft log, hard state and snapshots live; created when missing.
    pub data_dir: PathBuf,
    /// Snapshot the key space (and drop the log before it) every this many log entries.
    /// Default 10 000.
    pub snapshot_every: u64,
    /// ... or as soon as the log holds this many bytes, whichever comes first, so large
    /// writes (usage batches) do not let the log, and the memory holding it, grow long.
    /// Default 16 MiB.
    pub snapshot_log_bytes: u64,
    /// How long opening waits for a previous handle on the same directory to let go of it.
    /// Default 5 s.
    pub lock_wait: Duration,
}

impl EmbeddedConfig {
    /// Defaults for a store under `data_dir`.
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        Self {
            data_dir: data_dir.into(),
            snapshot_every: 10_000,
            snapshot_log_bytes: 16 << 20,
            lock_wait: Duration::from_secs(5),
        }
    }
}

/// A handle on an open embedded store; clones share it. The store stops when [`close`] is
/// called or the last handle is dropped.
///
/// [`close`]: EmbeddedStore::close
#[derive(Clone)]
pub struct EmbeddedStore {
    inner: Arc<Inner>,
}

struct Inner {
    requests: mpsc::Sender<Request>,
    keyspace: Arc<RwLock<KeySpace>>,
    applied: watch::Receiver<Revision>,
}

impl std::fmt::Debug for EmbeddedStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedStore").finish_non_exhaustive()
    }
}

/// How many requests may queue for the node loop.
const REQUEST_QUEUE: usize = 1024;
/// How many revisions a watch copies out of the history per lock.
const WATCH_BATCH: usize = 64;

impl EmbeddedStore {
    /// Opens the store in `config.data_dir`, replaying what is there, and starts serving.
    pub async fn open(config: EmbeddedConfig) -> Result<Self> {
        let dir = config.data_dir.clone();
        let lock_wait = config.lock_wait;
        let disk = tokio::task::spawn_blocking(move || RaftDisk::open(&dir, lock_wait))
            .await
            .map_err(|e| StoreError::Unavailable(format!("open the data directory: {e}")))??;
        let (node, keyspace, applied) =
            Node::start(disk, config.snapshot_every, config.snapshot_log_bytes).await?;
        let (requests, inbox) = mpsc::channel(REQUEST_QUEUE);
        tokio::spawn(node.run(inbox));
        Ok(Self {
            inner: Arc::new(Inner {
                requests,
                keyspace,
                applied,
            }),
        })
    }

    /// Stops the store and releases its data directory; other handles see it unavailable.
    pub async fn close(&self) {
        let (done, closed) = oneshot::channel();
        if self
            .inner
            .requests
            .send(Request::Shutdown { done })
            .await
            .is_ok()
        {
            let _ = closed.await;
        }
    }

    /// The key space for a read; reads after a shutdown fail like writes do.
    fn keyspace(&self) -> Result<RwLockReadGuard<'_, KeySpace>> {
        if self.inner.requests.is_closed() {
            return Err(shut_down());
        }
        Ok(self
            .inner
            .keyspace
            .read()
            .unwrap_or_else(PoisonError::into_inner))
    }

    async fn send<T>(
        &self,
        request: impl FnOnce(oneshot::Sender<Result<T>>) -> Request,
    ) -> Result<T> {
        let (reply, answer) = oneshot::channel();
        self.inner
            .requests
            .send(request(reply))
            .await
            .map_err(|_| shut_down())?;
        answer.await.map_err(|_| shut_down())?
    }

    async fn propose(&self, command: Command) -> Result<Applied> {
        self.send(|reply| Request::Propose { command, reply }).await
    }

    async fn write(&self, command: Command) -> Result<Revision> {
        match self.propose(command).await? {
            Applied::Revision(revision) => Ok(revision),
            Applied::Lease { .. } => {
                Err(StoreError::Corrupt("a write answered with a lease".into()))
            }
        }
    }
}

fn shut_down() -> StoreError {
    StoreError::Unavailable("the embedded store has shut down".into())
}

impl Store for EmbeddedStore {
    async fn revision(&self) -> Result<Revision> {
        Ok(self.keyspace()?.revision())
    }

    async fn get(&self, key: &str) -> Result<Option<KeyValue>> {
        check_key(key)?;
        Ok(self.keyspace()?.get(key))
    }

    async fn put(&self, key: &str, value: Vec<u8>, lease: Option<LeaseId>) -> Result<Revision> {
        check_key(key)?;
        let lease = lease.map(|l| l.0);
        self.write(Command::Put {
            key: key.to_owned(),
            value,
            lease,
            expected: None,
        })
        .await
    }

    async fn delete(&self, key: &str) -> Result<Revision> {
        check_key(key)?;
        self.write(Command::Delete {
            key: key.to_owned(),
            expected: None,
        })
        .await
    }

    async fn compare_and_put(
        &self,
        key: &str,
        expected: Revision,
        value: Vec<u8>,
        lease: Option<LeaseId>,
    ) -> Result<Revision> {
        check_key(key)?;
        let lease = lease.map(|l| l.0);
        self.write(Command::Put {
            key: key.to_owned(),
            value,
            lease,
            expected: Some(expected),
        })
        .await
    }

    async fn compare_and_delete(&self, key: &str, expected: Revision) -> Result<Revision> {
        check_key(key)?;
        self.write(Command::Delete {
            key: key.to_owned(),
            expected: Some(expected),
        })
        .await
    }

    async fn list(&self, prefix: &str) -> Result<Listing> {
        Ok(self.keyspace()?.list(prefix))
    }

    async fn watch(&self, prefix: &str, from: Revision) -> Result<WatchStream> {
        let from = if from <= 0 {
            self.keyspace()?.revision() + 1
        } else {
            from
        };
        let (tx, stream) = WatchStream::channel();
        let watch = Watch {
            keyspace: self.inner.keyspace.clone(),
            applied: self.inner.applied.clone(),
            prefix: prefix.to_owned(),
            next: from,
            tx,
        };
        tokio::spawn(watch.run());
        Ok(stream)
    }

    async fn compact(&self, revision: Revision) -> Result<()> {
        self.write(Command::Compact { revision }).await.map(|_| ())
    }

    async fn grant_lease(&self, ttl: Duration) -> Result<LeaseId> {
        let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX)
            + u64::from(!ttl.subsec_nanos().is_multiple_of(1_000_000));
        if ttl_ms == 0 {
            return Err(StoreError::InvalidArgument(
                "a lease needs a TTL above zero".into(),
            ));
        }
        match self.propose(Command::GrantLease { ttl_ms }).await? {
            Applied::Lease { id, .. } => Ok(id),
            Applied::Revision(_) => Err(StoreError::Corrupt(
                "a lease grant answered with a revision".into(),
            )),
        }
    }

    async fn keep_alive(&self, lease: LeaseId) -> Result<Duration> {
        self.send(|reply| Request::KeepAlive {
            lease: lease.0,
            reply,
        })
        .await
    }

    async fn revoke_lease(&self, lease: LeaseId) -> Result<()> {
        self.write(Command::RevokeLease { id: lease.0 })
            .await
            .map(|_| ())
    }

    async fn transact(&self, txn: Transaction) -> Result<Revision> {
        txn.check()?;
        self.write(Command::Txn {
            compares: txn.compares,
            puts: txn.puts,
        })
        .await
    }
}

/// One watch: copies events out of the key space's history from `next` on, then waits for
/// new revisions. Catching up and following live are the same path, so a watch from the past
/// sees every event exactly once and in order.
struct Watch {
    keyspace: Arc<RwLock<KeySpace>>,
    applied: watch::Receiver<Revision>,
    prefix: String,
    next: Revision,
    tx: mpsc::Sender<Result<WatchEvent>>,
}

impl Watch {
    async fn run(mut self) {
        loop {
            let latest = *self.applied.borrow_and_update();
            let batch = self
                .keyspace
                .read()
                .unwrap_or_else(PoisonError::into_inner)
                .events_from(&self.prefix, self.next, WATCH_BATCH);
            let (events, next) = match batch {
                Ok(batch) => batch,
                Err(e) => {
                    let _ = self.tx.send(Err(e)).await;
                    return;
                }
            };
            for event in events {
                if self.tx.send(Ok(event)).await.is_err() {
                    return;
                }
            }
            self.next = next;
            if next <= latest {
                continue;
            }
            tokio::select! {
                () = self.tx.closed() => return,
                changed = self.applied.changed() => {
                    if changed.is_err() {
                        let _ = self.tx.send(Err(shut_down())).await;
                        return;
                    }
                }
            }
        }
    }
}
