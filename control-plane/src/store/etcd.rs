//! The etcd v3 backend: the production store. Compare-and-set runs as an etcd transaction,
//! watches and leases map onto etcd's own.

use std::sync::Arc;
use std::time::Duration;

use etcd_client::{
    Client, CompactionOptions, Compare, CompareOp, EventType, GetOptions, PutOptions, Txn, TxnOp,
    TxnOpResponse, WatchOptions,
};
use tokio::sync::mpsc;

use super::{
    KeyValue, LeaseId, Listing, Result, Revision, Store, StoreError, Transaction, WatchEvent,
    WatchStream, check_key,
};

/// A connection to an etcd cluster. Cloning shares the connection.
#[derive(Clone)]
pub struct EtcdStore {
    client: Arc<Client>,
}

impl std::fmt::Debug for EtcdStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdStore").finish_non_exhaustive()
    }
}

impl EtcdStore {
    /// Connects to the cluster at `endpoints` (client URLs).
    pub async fn connect(endpoints: &[String]) -> Result<Self> {
        let client = Client::connect(endpoints, None)
            .await
            .map_err(|e| StoreError::Unavailable(format!("connect to etcd {endpoints:?}: {e}")))?;
        Ok(Self {
            client: Arc::new(client),
        })
    }

    /// Compares `key`'s mod revision with `expected`, runs `op` when equal and otherwise
    /// reads the key to report the conflict. Returns the transaction's revision.
    async fn compare_then(&self, key: &str, expected: Revision, op: TxnOp) -> Result<Revision> {
        let txn = Txn::new()
            .when([Compare::mod_revision(key, CompareOp::Equal, expected)])
            .and_then([op])
            .or_else([TxnOp::get(key, None)]);
        let response = self
            .client
            .kv_client()
            .txn(txn)
            .await
            .map_err(unavailable)?;
        if response.succeeded() {
            return header_revision(response.header());
        }
        let actual = response
            .op_responses()
            .into_iter()
            .find_map(|op| match op {
                TxnOpResponse::Get(get) => {
                    Some(get.kvs().first().map_or(0, |kv| kv.mod_revision()))
                }
                _ => None,
            })
            .unwrap_or(0);
        Err(StoreError::Conflict { expected, actual })
    }
}

impl Store for EtcdStore {
    async fn transact(&self, txn: Transaction) -> Result<Revision> {
        self.transact_txn(txn).await
    }

    async fn revision(&self) -> Result<Revision> {
        // A count-only read of one key returns the cluster's revision in its header.
        let options = GetOptions::new().with_count_only();
        let response = self
            .client
            .kv_client()
            .get("\0", Some(options))
            .await
            .map_err(unavailable)?;
        header_revision(response.header())
    }

    async fn get(&self, key: &str) -> Result<Option<KeyValue>> {
        check_key(key)?;
        let response = self
            .client
            .kv_client()
            .get(key, None)
            .await
            .map_err(unavailable)?;
        response.kvs().first().map(convert_kv).transpose()
    }

    async fn put(&self, key: &str, value: Vec<u8>, lease: Option<LeaseId>) -> Result<Revision> {
        check_key(key)?;
        let options = lease.map(|LeaseId(id)| PutOptions::new().with_lease(id));
        let response = self
            .client
            .kv_client()
            .put(key, value, options)
            .await
            .map_err(lease_or_unavailable)?;
        header_revision(response.header())
    }

    async fn delete(&self, key: &str) -> Result<Revision> {
        check_key(key)?;
        let response = self
            .client
            .kv_client()
            .delete(key, None)
            .await
            .map_err(unavailable)?;
        if response.deleted() == 0 {
            return Err(StoreError::NotFound {
                key: key.to_owned(),
            });
        }
        header_revision(response.header())
    }

    async fn compare_and_put(
        &self,
        key: &str,
        expected: Revision,
        value: Vec<u8>,
        lease: Option<LeaseId>,
    ) -> Result<Revision> {
        check_key(key)?;
        let options = lease.map(|LeaseId(id)| PutOptions::new().with_lease(id));
        self.compare_then(key, expected, TxnOp::put(key, value, options))
            .await
            .map_err(|e| match e {
                StoreError::Unavailable(message) if is_lease_not_found(&message) => {
                    StoreError::LeaseNotFound
                }
                other => other,
            })
    }

    async fn compare_and_delete(&self, key: &str, expected: Revision) -> Result<Revision> {
        check_key(key)?;
        if expected == 0 {
            // "Delete only if absent" deletes nothing; report what is there.
            return match self.get(key).await? {
                Some(kv) => Err(StoreError::Conflict {
                    expected,
                    actual: kv.mod_revision,
                }),
                None => Err(StoreError::NotFound {
                    key: key.to_owned(),
                }),
            };
        }
        self.compare_then(key, expected, TxnOp::delete(key, None))
            .await
    }

    async fn list(&self, prefix: &str) -> Result<Listing> {
        let options = if prefix.is_empty() {
            GetOptions::new().with_all_keys()
        } else {
            GetOptions::new().with_prefix()
        };
        let response = self
            .client
            .kv_client()
            .get(prefix, Some(options))
            .await
            .map_err(unavailable)?;
        let revision = header_revision(response.header())?;
        let kvs = response
            .kvs()
            .iter()
            .map(convert_kv)
            .collect::<Result<Vec<_>>>()?;
        Ok(Listing { revision, kvs })
    }

    async fn watch(&self, prefix: &str, from: Revision) -> Result<WatchStream> {
        let mut options = if prefix.is_empty() {
            WatchOptions::new().with_all_keys()
        } else {
            WatchOptions::new().with_prefix()
        };
        if from > 0 {
            options = options.with_start_revision(from);
        }
        let stream = self
            .client
            .watch_client()
            .watch(prefix, Some(options))
            .await
            .map_err(unavailable)?;
        let (tx, watch) = WatchStream::channel();
        tokio::spawn(forward_watch(stream, tx, from));
        Ok(watch)
    }

    async fn compact(&self, revision: Revision) -> Result<()> {
        let options = CompactionOptions::new().with_physical();
        match self
            .client
            .kv_client()
            .compact(revision, Some(options))
            .await
        {
            Ok(_) => Ok(()),
            Err(e) => {
                let message = e.to_string();
                if message.contains("required revision has been compacted") {
                    // etcd does not say up to where; the caller's revision is at or below it.
                    Err(StoreError::Compacted {
                        requested: revision,
                        compacted: revision,
                    })
                } else if message.contains("future revision") {
                    Err(StoreError::InvalidArgument(format!(
                        "cannot compact at future revision {revision}"
                    )))
                } else {
                    Err(StoreError::Unavailable(message))
                }
            }
        }
    }

    async fn grant_lease(&self, ttl: Duration) -> Result<LeaseId> {
        if ttl.is_zero() {
            return Err(StoreError::InvalidArgument(
                "a lease needs a TTL above zero".into(),
            ));
        }
        let seconds = i64::try_from(ttl.as_secs())
            .unwrap_or(i64::MAX)
            .saturating_add(i64::from(ttl.subsec_nanos() > 0));
        let response = self
            .client
            .lease_client()
            .grant(seconds, None)
            .await
            .map_err(unavailable)?;
        Ok(LeaseId(response.id()))
    }

    async fn keep_alive(&self, lease: LeaseId) -> Result<Duration> {
        let (mut keeper, mut responses) = self
            .client
            .lease_client()
            .keep_alive(lease.0)
            .await
            .map_err(lease_or_unavailable)?;
        keeper.keep_alive().await.map_err(lease_or_unavailable)?;
        let response = responses
            .message()
            .await
            .map_err(lease_or_unavailable)?
            .ok_or_else(|| StoreError::Unavailable("etcd closed the keep-alive stream".into()))?;
        match u64::try_from(response.ttl()) {
            Ok(seconds) if seconds > 0 => Ok(Duration::from_secs(seconds)),
            _ => Err(StoreError::LeaseNotFound),
        }
    }

    async fn revoke_lease(&self, lease: LeaseId) -> Result<()> {
        self.client
            .lease_client()
            .revoke(lease.0)
            .await
            .map_err(lease_or_unavailable)?;
        Ok(())
    }
}

/// Moves etcd's watch responses into `tx` until the reader goes away or the watch ends.
async fn forward_watch(
    mut stream: etcd_client::WatchStream,
    tx: mpsc::Sender<Result<WatchEvent>>,
    from: Revision,
) {
    loop {
        let message = tokio::select! {
            () = tx.closed() => return,
            message = stream.message() => message,
        };
        let response = match message {
            Ok(Some(response)) => response,
            Ok(None) => {
                let _ = tx
                    .send(Err(StoreError::Unavailable("etcd ended the watch".into())))
                    .await;
                return;
            }
            Err(e) => {
                let _ = tx.send(Err(unavailable(e))).await;
                return;
            }
        };
        if response.compact_revision() > 0 {
            let compacted = response.compact_revision();
            let _ = tx
                .send(Err(StoreError::Compacted {
                    requested: from,
                    compacted,
                }))
                .await;
            return;
        }
        for event in response.events() {
            let Some(kv) = event.kv() else { continue };
            let converted = convert_kv(kv).map(|kv| match event.event_type() {
                EventType::Put => WatchEvent::Put {
                    key: kv.key,
                    value: kv.value,
                    mod_revision: kv.mod_revision,
                },
                EventType::Delete => WatchEvent::Delete {
                    key: kv.key,
                    mod_revision: kv.mod_revision,
                },
            });
            let failed = converted.is_err();
            if tx.send(converted).await.is_err() || failed {
                return;
            }
        }
        if response.canceled() {
            let reason = response.cancel_reason().to_owned();
            let _ = tx
                .send(Err(StoreError::Unavailable(format!(
                    "etcd canceled the watch: {reason}"
                ))))
                .await;
            return;
        }
    }
}

impl EtcdStore {
    /// [`Store::transact`]: one etcd transaction whose failure branch reads every compared
    /// key, so a conflict can name the compare that failed.
    async fn transact_txn(&self, txn: Transaction) -> Result<Revision> {
        txn.check()?;
        let compares: Vec<Compare> = txn
            .compares
            .iter()
            .map(|(key, expected)| Compare::mod_revision(key.as_str(), CompareOp::Equal, *expected))
            .collect();
        let puts: Vec<TxnOp> = txn
            .puts
            .into_iter()
            .map(|(key, value)| TxnOp::put(key, value, None))
            .collect();
        let reads: Vec<TxnOp> = txn
            .compares
            .iter()
            .map(|(key, _)| TxnOp::get(key.as_str(), None))
            .collect();
        let request = Txn::new().when(compares).and_then(puts).or_else(reads);
        let response = self
            .client
            .kv_client()
            .txn(request)
            .await
            .map_err(unavailable)?;
        if response.succeeded() {
            return header_revision(response.header());
        }
        let actuals = response.op_responses().into_iter().map(|op| match op {
            TxnOpResponse::Get(get) => get.kvs().first().map_or(0, |kv| kv.mod_revision()),
            _ => 0,
        });
        let (expected, actual) = txn
            .compares
            .iter()
            .map(|(_, expected)| *expected)
            .zip(actuals)
            .find(|(expected, actual)| expected != actual)
            .unwrap_or((0, 0));
        Err(StoreError::Conflict { expected, actual })
    }
}

fn convert_kv(kv: &etcd_client::KeyValue) -> Result<KeyValue> {
    let key = kv.key_str().map_err(|_| {
        StoreError::Corrupt(format!(
            "etcd returned a key that is not UTF-8: {:?}",
            kv.key()
        ))
    })?;
    Ok(KeyValue {
        key: key.to_owned(),
        value: kv.value().to_vec(),
        create_revision: kv.create_revision(),
        mod_revision: kv.mod_revision(),
        version: kv.version(),
        lease: (kv.lease() != 0).then_some(LeaseId(kv.lease())),
    })
}

fn header_revision(header: Option<&etcd_client::ResponseHeader>) -> Result<Revision> {
    header
        .map(|h| h.revision())
        .ok_or_else(|| StoreError::Corrupt("etcd response without a header".into()))
}

fn unavailable(e: etcd_client::Error) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

fn is_lease_not_found(message: &str) -> bool {
    // etcd says "requested lease not found"; the client's keep-alive says "lease not found".
    message.contains("lease not found")
}

fn lease_or_unavailable(e: etcd_client::Error) -> StoreError {
    let message = e.to_string();
    if is_lease_not_found(&message) {
        StoreError::LeaseNotFound
    } else {
        StoreError::Unavailable(message)
    }
}
