//! One conformance suite for every store backend: each case runs against the embedded store
//! and against a real etcd, and both must behave the same.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::sync::Arc;
use std::time::Duration;

use control_plane::store::{
    AnyStore, LeaseId, Store, StoreConfig, StoreError, Transaction, WatchEvent,
};
use support::{next_event, next_item};
use testkit::within;

fn put_event(key: &str, value: &str, mod_revision: i64) -> WatchEvent {
    WatchEvent::Put {
        key: key.into(),
        value: value.as_bytes().to_vec(),
        mod_revision,
    }
}

fn delete_event(key: &str, mod_revision: i64) -> WatchEvent {
    WatchEvent::Delete {
        key: key.into(),
        mod_revision,
    }
}

async fn revisions_and_versions<S: Store + 'static>(store: Arc<S>) {
    let start = store.revision().await.unwrap();
    let r1 = store.put("a", b"1".to_vec(), None).await.unwrap();
    assert_eq!(r1, start + 1, "every write increments the revision by one");
    let a = store.get("a").await.unwrap().unwrap();
    assert_eq!(
        (
            a.value.as_slice(),
            a.create_revision,
            a.mod_revision,
            a.version
        ),
        (&b"1"[..], r1, r1, 1)
    );
    assert_eq!(a.lease, None);

    let r2 = store.put("a", b"2".to_vec(), None).await.unwrap();
    assert_eq!(r2, r1 + 1);
    let a = store.get("a").await.unwrap().unwrap();
    assert_eq!((a.create_revision, a.mod_revision, a.version), (r1, r2, 2));

    let r3 = store.put("b", b"x".to_vec(), None).await.unwrap();
    assert_eq!(store.revision().await.unwrap(), r3);
    let r4 = store.delete("a").await.unwrap();
    assert_eq!(r4, r3 + 1);
    assert_eq!(store.get("a").await.unwrap(), None);

    let r5 = store.put("a", b"3".to_vec(), None).await.unwrap();
    let a = store.get("a").await.unwrap().unwrap();
    assert_eq!(
        (a.create_revision, a.mod_revision, a.version),
        (r5, r5, 1),
        "a recreated key starts over"
    );
}

async fn missing_keys<S: Store + 'static>(store: Arc<S>) {
    assert_eq!(store.get("nothing").await.unwrap(), None);
    let before = store.revision().await.unwrap();
    assert_eq!(
        store.delete("nothing").await,
        Err(StoreError::NotFound {
            key: "nothing".into()
        })
    );
    assert_eq!(
        store.revision().await.unwrap(),
        before,
        "a failed delete writes nothing"
    );
    assert!(matches!(
        store.put("", b"x".to_vec(), None).await,
        Err(StoreError::InvalidArgument(_))
    ));
}

async fn compare_and_set<S: Store + 'static>(store: Arc<S>) {
    let r1 = store
        .compare_and_put("k", 0, b"1".to_vec(), None)
        .await
        .unwrap();
    assert_eq!(
        store.compare_and_put("k", 0, b"x".to_vec(), None).await,
        Err(StoreError::Conflict {
            expected: 0,
            actual: r1
        }),
        "0 means the key must not exist"
    );
    let r2 = store
        .compare_and_put("k", r1, b"2".to_vec(), None)
        .await
        .unwrap();
    assert_eq!(
        store.compare_and_put("k", r1, b"x".to_vec(), None).await,
        Err(StoreError::Conflict {
            expected: r1,
            actual: r2
        })
    );
    assert_eq!(
        store.compare_and_delete("k", r1).await,
        Err(StoreError::Conflict {
            expected: r1,
            actual: r2
        })
    );
    assert_eq!(
        store.compare_and_delete("k", 0).await,
        Err(StoreError::Conflict {
            expected: 0,
            actual: r2
        })
    );
    assert_eq!(
        store.revision().await.unwrap(),
        r2,
        "conflicts write nothing"
    );
    assert_eq!(store.get("k").await.unwrap().unwrap().value, b"2");

    let r3 = store.compare_and_delete("k", r2).await.unwrap();
    assert_eq!(r3, r2 + 1);
    assert_eq!(
        store.compare_and_delete("k", r2).await,
        Err(StoreError::Conflict {
            expected: r2,
            actual: 0
        })
    );
    assert_eq!(
        store.compare_and_delete("k", 0).await,
        Err(StoreError::NotFound { key: "k".into() })
    );
    assert!(
        store
            .compare_and_put("k", 0, b"again".to_vec(), None)
            .await
            .is_ok()
    );
}

async fn concurrent_cas_exactly_one_wins<S: Store + 'static>(store: Arc<S>) {
    const TASKS: usize = 16;
    let mut expected = 0;
    for round in 0..3 {
        let mut tasks = Vec::new();
        for task in 0..TASKS {
            let store = store.clone();
            let value = format!("{round}/{task}").into_bytes();
            tasks.push(tokio::spawn(async move {
                store.compare_and_put("race", expected, value, None).await
            }));
        }
        let mut winners = Vec::new();
        let mut conflicts = Vec::new();
        for (task, handle) in tasks.into_iter().enumerate() {
            match handle.await.unwrap() {
                Ok(revision) => winners.push((task, revision)),
                Err(StoreError::Conflict {
                    expected: e,
                    actual,
                }) => {
                    assert_eq!(e, expected);
                    conflicts.push(actual);
                }
                Err(other) => panic!("unexpected error: {other}"),
            }
        }
        assert_eq!(
            winners.len(),
            1,
            "round {round}: exactly one writer wins, got {winners:?}"
        );
        let (winner, revision) = winners[0];
        assert!(
            conflicts.iter().all(|actual| *actual == revision),
            "losers see the winner's revision"
        );
        let stored = store.get("race").await.unwrap().unwrap();
        assert_eq!(stored.value, format!("{round}/{winner}").into_bytes());
        assert_eq!(stored.mod_revision, revision);
        expected = revision;
    }
}

async fn prefix_list<S: Store + 'static>(store: Arc<S>) {
    for key in ["/a/1", "/a/2", "/a/10", "/ab", "/b/1"] {
        store.put(key, key.as_bytes().to_vec(), None).await.unwrap();
    }
    let listing = store.list("/a/").await.unwrap();
    let keys: Vec<_> = listing.kvs.iter().map(|kv| kv.key.as_str()).collect();
    assert_eq!(
        keys,
        ["/a/1", "/a/10", "/a/2"],
        "sorted by key, prefix only"
    );
    assert_eq!(listing.kvs[1].value, b"/a/10");
    assert_eq!(listing.revision, store.revision().await.unwrap());
    assert_eq!(store.list("").await.unwrap().kvs.len(), 5);
    let empty = store.list("/zzz").await.unwrap();
    assert!(empty.kvs.is_empty());
    assert_eq!(empty.revision, listing.revision);
}

async fn watch_replays_missed_events_then_continues_live<S: Store + 'static>(store: Arc<S>) {
    let r1 = store.put("w/1", b"a".to_vec(), None).await.unwrap();
    store.put("other/1", b"z".to_vec(), None).await.unwrap();
    let r2 = store.put("w/2", b"b".to_vec(), None).await.unwrap();
    let r3 = store.delete("w/1").await.unwrap();

    let mut watch = store.watch("w/", r1).await.unwrap();
    assert_eq!(next_event(&mut watch).await, put_event("w/1", "a", r1));
    assert_eq!(next_event(&mut watch).await, put_event("w/2", "b", r2));
    assert_eq!(next_event(&mut watch).await, delete_event("w/1", r3));
    let r4 = store.put("w/3", b"c".to_vec(), None).await.unwrap();
    store.put("other/2", b"z".to_vec(), None).await.unwrap();
    let r5 = store.put("w/2", b"d".to_vec(), None).await.unwrap();
    assert_eq!(next_event(&mut watch).await, put_event("w/3", "c", r4));
    assert_eq!(next_event(&mut watch).await, put_event("w/2", "d", r5));

    let mut from_r2 = store.watch("w/", r2).await.unwrap();
    assert_eq!(
        next_event(&mut from_r2).await,
        put_event("w/2", "b", r2),
        "starts exactly at the revision"
    );
}

async fn a_long_replay_arrives_complete_and_in_order<S: Store + 'static>(store: Arc<S>) {
    // More events than any backend buffers, read only after all were written.
    const WRITES: usize = 300;
    let mut revisions = Vec::new();
    for i in 0..WRITES {
        revisions.push(
            store
                .put(
                    &format!("long/{}", i % 17),
                    i.to_string().into_bytes(),
                    None,
                )
                .await
                .unwrap(),
        );
    }
    let mut watch = store.watch("long/", revisions[0]).await.unwrap();
    for (i, revision) in revisions.iter().enumerate() {
        assert_eq!(
            next_event(&mut watch).await,
            put_event(&format!("long/{}", i % 17), &i.to_string(), *revision)
        );
    }
}

async fn watch_from_zero_starts_at_the_next_write<S: Store + 'static>(store: Arc<S>) {
    store.put("n/old", b"1".to_vec(), None).await.unwrap();
    let mut watch = store.watch("n/", 0).await.unwrap();
    let revision = store.put("n/new", b"2".to_vec(), None).await.unwrap();
    assert_eq!(
        next_event(&mut watch).await,
        put_event("n/new", "2", revision)
    );
}

async fn watch_from_a_compacted_revision_fails<S: Store + 'static>(store: Arc<S>) {
    let r1 = store.put("c/a", b"1".to_vec(), None).await.unwrap();
    store.put("c/b", b"2".to_vec(), None).await.unwrap();
    let r3 = store.put("c/c", b"3".to_vec(), None).await.unwrap();
    store.compact(r3).await.unwrap();

    let mut watch = store.watch("c/", r1).await.unwrap();
    assert_eq!(
        next_item(&mut watch).await,
        Err(StoreError::Compacted {
            requested: r1,
            compacted: r3
        })
    );
    assert!(
        within("the watch to end", watch.next()).await.is_none(),
        "the watch ends"
    );

    let mut watch = store.watch("c/", r3).await.unwrap();
    assert_eq!(
        next_event(&mut watch).await,
        put_event("c/c", "3", r3),
        "the compaction revision is kept"
    );
    assert!(matches!(
        store.compact(r1).await,
        Err(StoreError::Compacted { .. })
    ));
    assert!(matches!(
        store.compact(r3 + 100).await,
        Err(StoreError::InvalidArgument(_))
    ));
}

async fn lease_expiry_deletes_keys_and_notifies_watchers<S: Store + 'static>(store: Arc<S>) {
    let lease = store.grant_lease(Duration::from_secs(1)).await.unwrap();
    store.put("l/1", b"1".to_vec(), Some(lease)).await.unwrap();
    let r2 = store.put("l/2", b"2".to_vec(), Some(lease)).await.unwrap();
    store.put("l/3", b"3".to_vec(), None).await.unwrap();
    assert_eq!(store.get("l/1").await.unwrap().unwrap().lease, Some(lease));

    let mut watch = store.watch("l/", r2 + 2).await.unwrap();
    let first = next_event(&mut watch).await;
    let second = next_event(&mut watch).await;
    assert_eq!(first, delete_event("l/1", first.mod_revision()));
    assert_eq!(
        second,
        delete_event("l/2", first.mod_revision()),
        "one revision deletes the lease's keys"
    );
    assert_eq!(store.get("l/1").await.unwrap(), None);
    assert!(
        store.get("l/3").await.unwrap().is_some(),
        "keys without the lease stay"
    );
    assert_eq!(
        store.keep_alive(lease).await,
        Err(StoreError::LeaseNotFound)
    );
    assert_eq!(
        store.put("l/4", b"4".to_vec(), Some(lease)).await,
        Err(StoreError::LeaseNotFound)
    );
}

async fn keep_alive_keeps_keys<S: Store + 'static>(store: Arc<S>) {
    let ttl = Duration::from_secs(1);
    let lease = store.grant_lease(ttl).await.unwrap();
    store.put("k/1", b"1".to_vec(), Some(lease)).await.unwrap();
    // Keep the lease alive for well over its TTL: time has to pass for this to mean anything.
    for _ in 0..8 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(store.keep_alive(lease).await.unwrap() >= ttl);
    }
    assert!(
        store.get("k/1").await.unwrap().is_some(),
        "a kept-alive lease keeps its keys"
    );
    store.revoke_lease(lease).await.unwrap();
    assert_eq!(store.get("k/1").await.unwrap(), None);
}

async fn revoke_deletes_keys_and_notifies_watchers<S: Store + 'static>(store: Arc<S>) {
    let lease = store.grant_lease(Duration::from_secs(60)).await.unwrap();
    store.put("r/1", b"1".to_vec(), Some(lease)).await.unwrap();
    store.put("r/2", b"2".to_vec(), Some(lease)).await.unwrap();
    // Moving a key to no lease detaches it.
    store.put("r/2", b"2b".to_vec(), None).await.unwrap();
    let mut watch = store.watch("r/", 0).await.unwrap();
    store.revoke_lease(lease).await.unwrap();
    let event = next_event(&mut watch).await;
    assert_eq!(event, delete_event("r/1", event.mod_revision()));
    assert_eq!(store.revision().await.unwrap(), event.mod_revision());
    assert_eq!(store.get("r/2").await.unwrap().unwrap().value, b"2b");
    assert_eq!(
        store.revoke_lease(lease).await,
        Err(StoreError::LeaseNotFound)
    );
    assert_eq!(
        store.keep_alive(LeaseId(lease.0 + 1000)).await,
        Err(StoreError::LeaseNotFound)
    );
}

/// A transaction writes all its keys at one revision when every compare holds, and nothing
/// otherwise, naming the compare that failed.
async fn transactions_are_all_or_nothing<S: Store + 'static>(store: Arc<S>) {
    let r1 = store.put("t/a", b"1".to_vec(), None).await.unwrap();
    let mut watch = store.watch("t/", r1 + 1).await.unwrap();
    let txn = |a: i64, b: i64, value: &str| Transaction {
        compares: vec![("t/a".into(), a), ("t/b".into(), b)],
        puts: vec![
            ("t/a".into(), value.as_bytes().to_vec()),
            ("t/b".into(), value.as_bytes().to_vec()),
        ],
    };
    let r2 = store.transact(txn(r1, 0, "2")).await.unwrap();
    assert_eq!(r2, r1 + 1, "one transaction is one revision");
    for key in ["t/a", "t/b"] {
        let kv = store.get(key).await.unwrap().unwrap();
        assert_eq!((kv.value.as_slice(), kv.mod_revision), (&b"2"[..], r2));
    }
    assert_eq!(next_event(&mut watch).await, put_event("t/a", "2", r2));
    assert_eq!(next_event(&mut watch).await, put_event("t/b", "2", r2));

    // The second compare fails: nothing is written, and the conflict names it.
    assert_eq!(
        store.transact(txn(r2, 0, "3")).await,
        Err(StoreError::Conflict {
            expected: 0,
            actual: r2
        })
    );
    assert_eq!(
        store.revision().await.unwrap(),
        r2,
        "a failed txn writes nothing"
    );
    assert_eq!(store.get("t/a").await.unwrap().unwrap().value, b"2");

    // Malformed transactions are refused before they reach the store.
    let twice = Transaction {
        compares: Vec::new(),
        puts: vec![("t/c".into(), b"1".to_vec()), ("t/c".into(), b"2".to_vec())],
    };
    assert!(matches!(
        store.transact(twice).await,
        Err(StoreError::InvalidArgument(_))
    ));
    assert!(matches!(
        store.transact(Transaction::default()).await,
        Err(StoreError::InvalidArgument(_))
    ));
    assert_eq!(store.revision().await.unwrap(), r2);
}

/// Runs every named case against both backends.
macro_rules! conformance {
    ($($case:ident),* $(,)?) => {
        mod embedded {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    let backend = crate::support::EmbeddedBackend::start().await;
                    super::$case(backend.store.clone()).await;
                }
            )*
        }
        mod etcd {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    let etcd = crate::support::Etcd::start().await;
                    super::$case(crate::support::etcd_store(&etcd).await).await;
                }
            )*
        }
    };
}

conformance!(
    revisions_and_versions,
    missing_keys,
    compare_and_set,
    concurrent_cas_exactly_one_wins,
    prefix_list,
    watch_replays_missed_events_then_continues_live,
    watch_from_zero_starts_at_the_next_write,
    a_long_replay_arrives_complete_and_in_order,
    watch_from_a_compacted_revision_fails,
    lease_expiry_deletes_keys_and_notifies_watchers,
    keep_alive_keeps_keys,
    revoke_deletes_keys_and_notifies_watchers,
    transactions_are_all_or_nothing,
);

/// The store the control plane holds opens either backend from its configuration.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn any_store_opens_each_backend_from_config() {
    let dir = tempfile::tempdir().unwrap();
    let embedded = AnyStore::open(&StoreConfig::embedded(dir.path()))
        .await
        .unwrap();
    assert!(matches!(embedded, AnyStore::Embedded(_)));
    compare_and_set(Arc::new(embedded)).await;

    let server = support::Etcd::start().await;
    let etcd = AnyStore::open(&server.store_config()).await.unwrap();
    assert!(matches!(etcd, AnyStore::Etcd(_)));
    compare_and_set(Arc::new(etcd)).await;
}
