//! The raft node that owns the embedded store's log: the one loop through which every write
//! passes.
//!
//! It takes proposals and keep-alives as messages, appends proposals to the raft log, fsyncs
//! them, applies committed entries to the [`KeySpace`] and only then answers the caller —
//! so an acknowledged write is on disk. It also keeps the leader-local lease clocks (as
//! etcd's leader does) and proposes a revocation when a lease's TTL runs out, and snapshots
//! the key space every so many entries so the log stays short.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use raft::eraftpb::EntryType;
use raft::prelude::Entry;
use raft::{Config, RawNode, StateRole};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;

use super::disk::{NODE_ID, RaftDisk};
use super::keyspace::{Applied, Command, KeySpace};
use crate::store::{Result, Revision, StoreError};

/// How often raft's logical clock ticks.
const TICK: Duration = Duration::from_millis(100);

/// A message to the node loop.
pub(super) enum Request {
    /// Replicate and apply a command; answer with its result once applied.
    Propose {
        command: Command,
        reply: oneshot::Sender<Result<Applied>>,
    },
    /// Restart a lease's clock; answer with its TTL.
    KeepAlive {
        lease: i64,
        reply: oneshot::Sender<Result<Duration>>,
    },
    /// Stop, release the data directory, then answer.
    Shutdown { done: oneshot::Sender<()> },
}

/// The node loop's state.
pub(super) struct Node {
    raw: RawNode<RaftDisk>,
    disk: RaftDisk,
    keyspace: Arc<RwLock<KeySpace>>,
    applied_revision: watch::Sender<Revision>,
    /// Callers waiting for the entry at an index (with the term it was proposed in).
    pending: HashMap<u64, (u64, oneshot::Sender<Result<Applied>>)>,
    /// When each live lease expires unless kept alive.
    deadlines: HashMap<i64, Instant>,
    /// Leases whose expiry was proposed and not yet applied.
    expiring: HashSet<i64>,
    applied_index: u64,
    snapshot_index: u64,
    snapshot_every: u64,
    snapshot_log_bytes: u64,
}

impl Node {
    /// Loads the snapshot, replays the log, and becomes leader. Returns the node with the key
    /// space it drives and the applied-revision signal watchers wait on.
    pub(super) async fn start(
        disk: RaftDisk,
        snapshot_every: u64,
        snapshot_log_bytes: u64,
    ) -> Result<(Self, Arc<RwLock<KeySpace>>, watch::Receiver<Revision>)> {
        let (snapshot_index, data) = disk.snapshot_data();
        let keyspace = if data.is_empty() {
            KeySpace::default()
        } else {
            postcard::from_bytes(&data)
                .map_err(|e| StoreError::Corrupt(format!("decode the key space snapshot: {e}")))?
        };
        let config = Config {
            id: NODE_ID,
            election_tick: 10,
            heartbeat_tick: 1,
            applied: snapshot_index,
            max_size_per_msg: 1 << 20,
            max_inflight_msgs: 256,
            ..Config::default()
        };
        config
            .validate()
            .map_err(|e| StoreError::InvalidArgument(format!("raft config: {e}")))?;
        let logger = slog::Logger::root(slog::Discard, slog::o!());
        let raw = RawNode::new(&config, disk.clone(), &logger)
            .map_err(|e| StoreError::Corrupt(format!("start raft from the data directory: {e}")))?;
        let (applied_revision, applied_rx) = watch::channel(keyspace.revision());
        let keyspace = Arc::new(RwLock::new(keyspace));
        let mut node = Self {
            raw,
            disk,
            keyspace: keyspace.clone(),
            applied_revision,
            pending: HashMap::new(),
            deadlines: HashMap::new(),
            expiring: HashSet::new(),
            applied_index: snapshot_index,
            snapshot_index,
            snapshot_every: snapshot_every.max(1),
            snapshot_log_bytes: snapshot_log_bytes.max(1),
        };
        node.become_leader().await?;
        Ok((node, keyspace, applied_rx))
    }

    /// Alone in its group, the node wins its election at once; its first entry commits every
    /// entry the log already holds, which are applied before the store serves anyone.
    async fn become_leader(&mut self) -> Result<()> {
        self.raw
            .campaign()
            .map_err(|e| StoreError::Unavailable(format!("raft campaign: {e}")))?;
        self.process_ready().await?;
        if self.raw.raft.state != StateRole::Leader
            || self.applied_index < self.raw.raft.raft_log.committed
        {
            return Err(StoreError::Unavailable(
                "the embedded store could not become leader of its own raft group".into(),
            ));
        }
        // Lease clocks are not replicated: every lease gets its full TTL again (as in etcd).
        let now = Instant::now();
        let leases: Vec<(i64, u64)> = self.read_keyspace().leases().collect();
        for (id, ttl_ms) in leases {
            self.deadlines
                .insert(id, now + Duration::from_millis(ttl_ms));
        }
        Ok(())
    }

    fn read_keyspace(&self) -> std::sync::RwLockReadGuard<'_, KeySpace> {
        self.keyspace.read().unwrap_or_else(PoisonError::into_inner)
    }

    /// Serves requests until shut down or until every store handle is gone.
    pub(super) async fn run(mut self, mut inbox: mpsc::Receiver<Request>) {
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut done = None;
        loop {
            let next_expiry = self.deadlines.values().min().copied();
            tokio::select! {
                request = inbox.recv() => {
                    let mut request = request;
                    while let Some(r) = request {
                        if let Some(reply) = self.handle(r) {
                            done = Some(reply);
                            break;
                        }
                        request = inbox.try_recv().ok();
                    }
                    if done.is_some() || inbox.is_closed() && inbox.is_empty() {
                        break;
                    }
                }
                _ = tick.tick() => {
                    self.raw.tick();
                }
                () = sleep_until(next_expiry) => self.expire_leases(),
            }
            if let Err(e) = self.process_ready().await {
                tracing::error!(error = %e, "the embedded store stopped");
                break;
            }
        }
        // Dropping the node releases the data directory before the shutdown is confirmed;
        // callers still waiting see the store as unavailable.
        drop(self);
        if let Some(done) = done {
            let _ = done.send(());
        }
    }

    /// Handles one request; returns the shutdown confirmation when asked to stop.
    fn handle(&mut self, request: Request) -> Option<oneshot::Sender<()>> {
        match request {
            Request::Propose { command, reply } => self.propose(command, Some(reply)),
            Request::KeepAlive { lease, reply } => {
                let _ = reply.send(self.keep_alive(lease));
            }
            Request::Shutdown { done } => return Some(done),
        }
        None
    }

    fn propose(&mut self, command: Command, reply: Option<oneshot::Sender<Result<Applied>>>) {
        let result = postcard::to_stdvec(&command)
            .map_err(|e| StoreError::InvalidArgument(format!("encode the command: {e}")))
            .and_then(|data| {
                self.raw
                    .propose(Vec::new(), data)
                    .map_err(|e| StoreError::Unavailable(format!("raft refused the write: {e}")))
            });
        match (result, reply) {
            (Ok(()), Some(reply)) => {
                let index = self.raw.raft.raft_log.last_index();
                self.pending.insert(index, (self.raw.raft.term, reply));
            }
            (Ok(()), None) => {}
            (Err(e), Some(reply)) => {
                let _ = reply.send(Err(e));
            }
            (Err(e), None) => tracing::warn!(error = %e, "an internal proposal failed"),
        }
    }

    fn keep_alive(&mut self, lease: i64) -> Result<Duration> {
        let now = Instant::now();
        let expired = self.expiring.contains(&lease)
            || self
                .deadlines
                .get(&lease)
                .is_none_or(|deadline| *deadline <= now);
        let ttl_ms = self.read_keyspace().lease_ttl_ms(lease);
        match ttl_ms {
            Some(ttl_ms) if !expired => {
                let ttl = Duration::from_millis(ttl_ms);
                self.deadlines.insert(lease, now + ttl);
                Ok(ttl)
            }
            _ => Err(StoreError::LeaseNotFound),
        }
    }

    /// Proposes the revocation of every lease whose TTL ran out.
    fn expire_leases(&mut self) {
        let now = Instant::now();
        let expired: Vec<i64> = self
            .deadlines
            .iter()
            .filter(|(_, d)| **d <= now)
            .map(|(id, _)| *id)
            .collect();
        for id in expired {
            self.deadlines.remove(&id);
            self.expiring.insert(id);
            self.propose(Command::RevokeLease { id }, None);
        }
    }

    /// Persists, commits and applies whatever raft has ready.
    async fn process_ready(&mut self) -> Result<()> {
        while self.raw.has_ready() {
            let mut ready = self.raw.ready();
            if !ready.snapshot().is_empty() {
                return Err(StoreError::Unavailable(
                    "received a raft snapshot, which a store alone in its group never should"
                        .into(),
                ));
            }
            self.apply(ready.take_committed_entries())?;
            let entries = ready.take_entries();
            let hard_state = ready.hs().cloned();
            if !entries.is_empty() || hard_state.is_some() {
                let disk = self.disk.clone();
                tokio::task::spawn_blocking(move || {
                    disk.append(&entries)?;
                    hard_state.map_or(Ok(()), |hs| disk.set_hard_state(&hs))
                })
                .await
                .map_err(|e| StoreError::Unavailable(format!("the log writer failed: {e}")))??;
            }
            let mut light = self.raw.advance(ready);
            if let Some(commit) = light.commit_index() {
                self.disk.set_commit(commit);
            }
            self.apply(light.take_committed_entries())?;
            self.raw.advance_apply();
        }
        self.maybe_snapshot().await
    }

    /// Applies committed entries to the key space and answers their proposers.
    fn apply(&mut self, entries: Vec<Entry>) -> Result<()> {
        if entries.is_empty() {
            return Ok(());
        }
        let now = Instant::now();
        for entry in entries {
            self.applied_index = entry.index;
            if entry.data.is_empty() || entry.get_entry_type() != EntryType::EntryNormal {
                // A new leader's empty entry; membership changes come with several replicas.
                continue;
            }
            let command: Command = postcard::from_bytes(&entry.data).map_err(|e| {
                StoreError::Corrupt(format!(
                    "decode the command at log index {}: {e}",
                    entry.index
                ))
            })?;
            let revoked = match &command {
                Command::RevokeLease { id } => Some(*id),
                _ => None,
            };
            let result = self
                .keyspace
                .write()
                .unwrap_or_else(PoisonError::into_inner)
                .apply(command);
            if let Ok(Applied::Lease { id, ttl_ms }) = &result {
                self.deadlines
                    .insert(id.0, now + Duration::from_millis(*ttl_ms));
            }
            if let Some(id) = revoked {
                self.deadlines.remove(&id);
                self.expiring.remove(&id);
            }
            if let Some((term, reply)) = self.pending.remove(&entry.index) {
                let answer = if term == entry.term {
                    result
                } else {
                    Err(StoreError::Unavailable(
                        "the write was lost to a raft leader change".into(),
                    ))
                };
                let _ = reply.send(answer);
            }
        }
        let revision = self.read_keyspace().revision();
        self.applied_revision.send_replace(revision);
        Ok(())
    }

    async fn maybe_snapshot(&mut self) -> Result<()> {
        let long = self.applied_index >= self.snapshot_index + self.snapshot_every;
        let large = self.applied_index > self.snapshot_index
            && self.disk.log_bytes() >= self.snapshot_log_bytes;
        if !(long || large) {
            return Ok(());
        }
        let data = postcard::to_stdvec(&*self.read_keyspace())
            .map_err(|e| StoreError::Unavailable(format!("encode the key space snapshot: {e}")))?;
        let (disk, index) = (self.disk.clone(), self.applied_index);
        tokio::task::spawn_blocking(move || disk.save_snapshot(index, data))
            .await
            .map_err(|e| StoreError::Unavailable(format!("the snapshot writer failed: {e}")))??;
        self.snapshot_index = index;
        Ok(())
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}
