//! The embedded store's state machine: an in-memory key space with etcd's revision model.
//!
//! Committed raft entries carry [`Command`]s; applying one in log order is the only way the
//! key space changes, so every replica (and every restart replaying the log) reaches the same
//! state. It keeps the latest value of each key plus the history of events since the
//! compacted revision, which watches replay from.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use serde::{Deserialize, Serialize};

use crate::store::{KeyValue, LeaseId, Listing, Result, Revision, StoreError, WatchEvent};

/// A change proposed through raft.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// Write a key; with `expected`, only if its mod revision equals it (0: absent).
    Put {
        key: String,
        value: Vec<u8>,
        lease: Option<i64>,
        expected: Option<Revision>,
    },
    /// Delete a key; with `expected`, only if its mod revision equals it.
    Delete {
        key: String,
        expected: Option<Revision>,
    },
    /// Drop history older than `revision`.
    Compact { revision: Revision },
    /// Create a lease with a TTL in milliseconds.
    GrantLease { ttl_ms: u64 },
    /// End a lease (revoked, or expired on the leader) and delete its keys.
    RevokeLease { id: i64 },
    /// Write every key of `puts` at one revision if every key of `compares` has the mod
    /// revision named (0: absent).
    Txn {
        compares: Vec<(String, Revision)>,
        puts: Vec<(String, Vec<u8>)>,
    },
}

/// What applying a command produced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// The store's revision after the command.
    Revision(Revision),
    /// A lease was granted.
    Lease { id: LeaseId, ttl_ms: u64 },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Record {
    value: Vec<u8>,
    create_revision: Revision,
    mod_revision: Revision,
    version: i64,
    lease: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Event {
    key: String,
    /// `None` for a deletion.
    value: Option<Vec<u8>>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Lease {
    ttl_ms: u64,
    keys: BTreeSet<String>,
}

/// The key space. Serialised whole into raft snapshots.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeySpace {
    revision: Revision,
    compacted: Revision,
    keys: BTreeMap<String, Record>,
    /// Events of each revision since `compacted`, oldest first.
    history: VecDeque<(Revision, Vec<Event>)>,
    leases: BTreeMap<i64, Lease>,
    next_lease: i64,
}

impl Default for KeySpace {
    fn default() -> Self {
        Self {
            revision: 1,
            compacted: 0,
            keys: BTreeMap::new(),
            history: VecDeque::new(),
            leases: BTreeMap::new(),
            next_lease: 1,
        }
    }
}

impl KeySpace {
    /// The current revision.
    pub fn revision(&self) -> Revision {
        self.revision
    }

    /// The key's current value.
    pub fn get(&self, key: &str) -> Option<KeyValue> {
        self.keys.get(key).map(|record| to_key_value(key, record))
    }

    /// Every key under `prefix`, sorted.
    pub fn list(&self, prefix: &str) -> Listing {
        let kvs = self
            .keys
            .range(prefix.to_owned()..)
            .take_while(|(key, _)| key.starts_with(prefix))
            .map(|(key, record)| to_key_value(key, record))
            .collect();
        Listing {
            revision: self.revision,
            kvs,
        }
    }

    /// Whether the lease exists, and its TTL in milliseconds.
    pub fn lease_ttl_ms(&self, id: i64) -> Option<u64> {
        self.leases.get(&id).map(|lease| lease.ttl_ms)
    }

    /// Every lease with its TTL in milliseconds.
    pub fn leases(&self) -> impl Iterator<Item = (i64, u64)> + '_ {
        self.leases.iter().map(|(id, lease)| (*id, lease.ttl_ms))
    }

    /// Events under `prefix` from revision `from` on, at most `max_revisions` revisions of
    /// them, and the revision to continue from.
    pub fn events_from(
        &self,
        prefix: &str,
        from: Revision,
        max_revisions: usize,
    ) -> Result<(Vec<WatchEvent>, Revision)> {
        if from < self.compacted {
            return Err(StoreError::Compacted {
                requested: from,
                compacted: self.compacted,
            });
        }
        let start = self
            .history
            .partition_point(|(revision, _)| *revision < from);
        let mut events = Vec::new();
        let mut next = from.max(self.revision + 1);
        for (revision, changes) in self.history.iter().skip(start).take(max_revisions) {
            next = revision + 1;
            for change in changes.iter().filter(|c| c.key.starts_with(prefix)) {
                events.push(match &change.value {
                    Some(value) => WatchEvent::Put {
                        key: change.key.clone(),
                        value: value.clone(),
                        mod_revision: *revision,
                    },
                    None => WatchEvent::Delete {
                        key: change.key.clone(),
                        mod_revision: *revision,
                    },
                });
            }
        }
        Ok((events, next))
    }

    /// Applies one committed command. Errors are results of the command (a conflict, a
    /// missing key), the same on every replica; they leave the key space unchanged.
    pub fn apply(&mut self, command: Command) -> Result<Applied> {
        match command {
            Command::Put {
                key,
                value,
                lease,
                expected,
            } => {
                self.check_expected(&key, expected)?;
                if let Some(id) = lease
                    && !self.leases.contains_key(&id)
                {
                    return Err(StoreError::LeaseNotFound);
                }
                Ok(Applied::Revision(self.put(key, value, lease)))
            }
            Command::Delete { key, expected } => {
                self.check_expected(&key, expected)?;
                if !self.keys.contains_key(&key) {
                    return Err(StoreError::NotFound { key });
                }
                let revision = self.revision + 1;
                self.remove(&key);
                self.commit(vec![Event { key, value: None }]);
                Ok(Applied::Revision(revision))
            }
            Command::Compact { revision } => {
                self.compact(revision)?;
                Ok(Applied::Revision(self.revision))
            }
            Command::GrantLease { ttl_ms } => {
                let id = self.next_lease;
                self.next_lease += 1;
                self.leases.insert(
                    id,
                    Lease {
                        ttl_ms,
                        keys: BTreeSet::new(),
                    },
                );
                Ok(Applied::Lease {
                    id: LeaseId(id),
                    ttl_ms,
                })
            }
            Command::RevokeLease { id } => {
                let lease = self.leases.remove(&id).ok_or(StoreError::LeaseNotFound)?;
                let events: Vec<Event> = lease
                    .keys
                    .into_iter()
                    .filter(|key| self.keys.remove(key).is_some())
                    .map(|key| Event { key, value: None })
                    .collect();
                // Like etcd, a revocation that deletes nothing leaves the revision alone.
                if !events.is_empty() {
                    self.commit(events);
                }
                Ok(Applied::Revision(self.revision))
            }
            Command::Txn { compares, puts } => {
                for (key, expected) in &compares {
                    self.check_expected(key, Some(*expected))?;
                }
                Ok(Applied::Revision(self.put_all(puts)))
            }
        }
    }

    /// Writes every key at one new revision (the keys are distinct).
    fn put_all(&mut self, puts: Vec<(String, Vec<u8>)>) -> Revision {
        let revision = self.revision + 1;
        let mut events = Vec::with_capacity(puts.len());
        for (key, value) in puts {
            let previous = self.remove(&key);
            let (create_revision, version) =
                previous.map_or((revision, 1), |p| (p.create_revision, p.version + 1));
            let record = Record {
                value: value.clone(),
                create_revision,
                mod_revision: revision,
                version,
                lease: None,
            };
            self.keys.insert(key.clone(), record);
            events.push(Event {
                key,
                value: Some(value),
            });
        }
        self.commit(events);
        revision
    }

    fn check_expected(&self, key: &str, expected: Option<Revision>) -> Result<()> {
        let Some(expected) = expected else {
            return Ok(());
        };
        let actual = self.keys.get(key).map_or(0, |record| record.mod_revision);
        if actual != expected {
            return Err(StoreError::Conflict { expected, actual });
        }
        Ok(())
    }

    fn put(&mut self, key: String, value: Vec<u8>, lease: Option<i64>) -> Revision {
        let revision = self.revision + 1;
        let previous = self.remove(&key);
        let (create_revision, version) =
            previous.map_or((revision, 1), |p| (p.create_revision, p.version + 1));
        if let Some(lease) = lease.and_then(|id| self.leases.get_mut(&id)) {
            lease.keys.insert(key.clone());
        }
        let record = Record {
            value: value.clone(),
            create_revision,
            mod_revision: revision,
            version,
            lease,
        };
        self.keys.insert(key.clone(), record);
        self.commit(vec![Event {
            key,
            value: Some(value),
        }]);
        revision
    }

    /// Removes a key and detaches it from its lease.
    fn remove(&mut self, key: &str) -> Option<Record> {
        let record = self.keys.remove(key)?;
        if let Some(lease) = record.lease.and_then(|id| self.leases.get_mut(&id)) {
            lease.keys.remove(key);
        }
        Some(record)
    }

    fn commit(&mut self, events: Vec<Event>) {
        self.revision += 1;
        self.history.push_back((self.revision, events));
    }

    fn compact(&mut self, revision: Revision) -> Result<()> {
        if revision > self.revision {
            return Err(StoreError::InvalidArgument(format!(
                "cannot compact at future revision {revision} (current {})",
                self.revision
            )));
        }
        if revision <= self.compacted {
            return Err(StoreError::Compacted {
                requested: revision,
                compacted: self.compacted,
            });
        }
        self.compacted = revision;
        while self.history.front().is_some_and(|(r, _)| *r < revision) {
            self.history.pop_front();
        }
        Ok(())
    }
}

fn to_key_value(key: &str, record: &Record) -> KeyValue {
    KeyValue {
        key: key.to_owned(),
        value: record.value.clone(),
        create_revision: record.create_revision,
        mod_revision: record.mod_revision,
        version: record.version,
        lease: record.lease.map(LeaseId),
    }
}
