//! The embedded store keeps every acknowledged write across a close, a drop, snapshots, and
//! a killed process.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use control_plane::store::embedded::{EmbeddedConfig, EmbeddedStore};
use control_plane::store::{Store, StoreError};
use support::{next_event, next_item};
use testkit::within;
use tokio::io::{AsyncBufReadExt, BufReader};

async fn open(dir: &Path) -> EmbeddedStore {
    EmbeddedStore::open(EmbeddedConfig::new(dir)).await.unwrap()
}

/// Writes a mix of creates, overwrites and deletes.
async fn write_some(store: &EmbeddedStore, count: usize) {
    for i in 0..count {
        store
            .put(&format!("k/{i:03}"), format!("v{i}").into_bytes(), None)
            .await
            .unwrap();
        if i % 5 == 0 {
            store
                .put(&format!("k/{i:03}"), format!("w{i}").into_bytes(), None)
                .await
                .unwrap();
        }
        if i % 7 == 0 {
            store.delete(&format!("k/{i:03}")).await.unwrap();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closing_and_reopening_keeps_every_write_and_revision() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).await;
    write_some(&store, 40).await;
    let before = store.list("").await.unwrap();
    store.close().await;
    assert!(matches!(
        store.put("k/x", b"x".to_vec(), None).await,
        Err(StoreError::Unavailable(_))
    ));

    let store = open(dir.path()).await;
    assert_eq!(
        store.list("").await.unwrap(),
        before,
        "same keys, values and revisions"
    );
    let next = store.put("k/new", b"n".to_vec(), None).await.unwrap();
    assert_eq!(
        next,
        before.revision + 1,
        "the revision goes on where it stopped"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_without_closing_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).await;
    write_some(&store, 20).await;
    let before = store.list("").await.unwrap();
    drop(store);
    // The reopen waits for the dropped store to let go of the directory.
    let store = open(dir.path()).await;
    assert_eq!(store.list("").await.unwrap(), before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_and_compaction_survive_snapshots_and_restart() {
    let dir = tempfile::tempdir().unwrap();
    let config = EmbeddedConfig {
        snapshot_every: 7,
        ..EmbeddedConfig::new(dir.path())
    };
    let store = EmbeddedStore::open(config.clone()).await.unwrap();
    write_some(&store, 30).await;
    let compacted = store.put("h/1", b"1".to_vec(), None).await.unwrap();
    let later = store.put("h/2", b"2".to_vec(), None).await.unwrap();
    store.compact(compacted).await.unwrap();
    write_some(&store, 3).await;
    let before = store.list("").await.unwrap();
    store.close().await;
    let snapshot = std::fs::metadata(dir.path().join("raft.snapshot")).unwrap();
    assert!(snapshot.len() > 0, "snapshots were taken");

    let store = EmbeddedStore::open(config).await.unwrap();
    assert_eq!(store.list("").await.unwrap(), before);
    let mut watch = store.watch("h/", compacted).await.unwrap();
    let first = next_event(&mut watch).await;
    assert_eq!((first.key(), first.mod_revision()), ("h/1", compacted));
    assert_eq!(next_event(&mut watch).await.mod_revision(), later);
    let mut watch = store.watch("h/", compacted - 1).await.unwrap();
    assert_eq!(
        next_item(&mut watch).await,
        Err(StoreError::Compacted {
            requested: compacted - 1,
            compacted
        })
    );
}

/// Large writes snapshot the key space by the log's size, not only its length: the log on
/// disk stays near its bound and a compacted history keeps snapshots to the live keys.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_writes_keep_the_log_and_snapshots_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let bound = 64 << 10;
    let config = EmbeddedConfig {
        snapshot_every: 1_000_000,
        snapshot_log_bytes: bound,
        ..EmbeddedConfig::new(dir.path())
    };
    let store = EmbeddedStore::open(config.clone()).await.unwrap();
    let value = vec![7_u8; 4096];
    let mut last = 0;
    for i in 0..300 {
        last = store
            .put(&format!("big/{}", i % 10), value.clone(), None)
            .await
            .unwrap();
        if i % 50 == 49 {
            store.compact(last).await.unwrap();
        }
    }
    let size = |name: &str| std::fs::metadata(dir.path().join(name)).unwrap().len();
    assert!(
        size("raft.log") < bound + 2 * 4096 + 1024,
        "the log holds {} bytes",
        size("raft.log")
    );
    // Ten live keys of 4 KiB and a short history: the snapshot is tens of KiB, not the
    // 1.2 MB that passed through.
    assert!(
        size("raft.snapshot") < 200 << 10,
        "{}",
        size("raft.snapshot")
    );
    let before = store.list("big/").await.unwrap();
    assert_eq!(before.kvs.len(), 10);
    store.close().await;
    let reopened = EmbeddedStore::open(config).await.unwrap();
    assert_eq!(reopened.list("big/").await.unwrap(), before);
    assert_eq!(reopened.revision().await.unwrap(), last);
    reopened.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leases_survive_restart_with_a_fresh_ttl() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).await;
    let lease = store.grant_lease(Duration::from_secs(60)).await.unwrap();
    store
        .put("agent/eu", b"up".to_vec(), Some(lease))
        .await
        .unwrap();
    store.close().await;

    let store = open(dir.path()).await;
    assert_eq!(
        store.get("agent/eu").await.unwrap().unwrap().lease,
        Some(lease)
    );
    assert_eq!(
        store.keep_alive(lease).await.unwrap(),
        Duration::from_secs(60)
    );
    let mut watch = store.watch("agent/", 0).await.unwrap();
    store.revoke_lease(lease).await.unwrap();
    assert_eq!(next_event(&mut watch).await.key(), "agent/eu");
    assert_eq!(store.get("agent/eu").await.unwrap(), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_store_on_the_same_directory_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let _first = open(dir.path()).await;
    let config = EmbeddedConfig {
        lock_wait: Duration::ZERO,
        ..EmbeddedConfig::new(dir.path())
    };
    let second = EmbeddedStore::open(config).await;
    assert!(matches!(second, Err(StoreError::Unavailable(m)) if m.contains("in use")));
}

/// The byte offsets at which the records of a raft log file start.
fn record_offsets(log: &[u8]) -> Vec<usize> {
    let mut offsets = Vec::new();
    let mut at = 0;
    while at + 8 <= log.len() {
        offsets.push(at);
        let length = u32::from_le_bytes(log[at..at + 4].try_into().unwrap()) as usize;
        at += 8 + length;
    }
    offsets
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_damaged_in_the_middle_refuses_to_open_and_a_torn_tail_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).await;
    write_some(&store, 20).await;
    let before = store.list("").await.unwrap();
    store.close().await;
    let path = dir.path().join("raft.log");
    let intact = std::fs::read(&path).unwrap();
    let offsets = record_offsets(&intact);
    assert!(offsets.len() > 10, "{} records", offsets.len());

    // A torn tail: the last append was cut short by a crash. Everything acknowledged stays.
    let mut torn = intact.clone();
    torn.extend_from_slice(&[200, 0, 0, 0, 1, 2, 3, 4, 5]);
    std::fs::write(&path, &torn).unwrap();
    let store = open(dir.path()).await;
    assert_eq!(store.list("").await.unwrap(), before);
    store.close().await;

    // One flipped bit in a record in the middle: the store will not start, and says why.
    let mut damaged = std::fs::read(&path).unwrap();
    let at = offsets[offsets.len() / 2] + 8 + 2;
    damaged[at] ^= 0x10;
    std::fs::write(&path, &damaged).unwrap();
    let refused = EmbeddedStore::open(EmbeddedConfig::new(dir.path())).await;
    let Err(StoreError::Corrupt(message)) = refused else {
        panic!("a log damaged in the middle must refuse to open");
    };
    assert!(message.contains(&path.display().to_string()), "{message}");
    assert!(
        message.contains(&format!("byte {}", offsets[offsets.len() / 2])),
        "{message}"
    );
    assert!(
        message.contains("Restore the data directory from a backup"),
        "{message}"
    );
    assert_eq!(
        std::fs::read(&path).unwrap(),
        damaged,
        "nothing was cut off the file"
    );
}

const CHILD_DIR: &str = "MERIDIAN_STORE_CHILD_DIR";

/// The child side of [`a_killed_process_loses_no_acknowledged_write`]: writes until killed,
/// printing each acknowledged write.
#[tokio::test]
#[ignore = "run as a child process by a_killed_process_loses_no_acknowledged_write"]
async fn child_writes_until_killed() {
    let dir =
        std::env::var(CHILD_DIR).expect("run by a_killed_process_loses_no_acknowledged_write");
    let store = open(Path::new(&dir)).await;
    for i in 0.. {
        let revision = store
            .put(&format!("kill/{i:06}"), i.to_string().into_bytes(), None)
            .await
            .unwrap();
        println!("acked {i} {revision}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_process_loses_no_acknowledged_write() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = tokio::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "child_writes_until_killed",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_DIR, dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut acked = Vec::new();
    while acked.len() < 150 {
        let line = within("the child's next line", lines.next_line())
            .await
            .unwrap();
        let line = line.expect("the child writes until it is killed");
        if let Some(rest) = line.strip_prefix("acked ") {
            let (i, revision) = rest.split_once(' ').unwrap();
            acked.push((i.parse::<u32>().unwrap(), revision.parse::<i64>().unwrap()));
        }
    }
    // SIGKILL: no destructor, no flush, possibly in the middle of an append.
    child.kill().await.unwrap();

    let store = open(dir.path()).await;
    for (i, revision) in &acked {
        let kv = store
            .get(&format!("kill/{i:06}"))
            .await
            .unwrap()
            .expect("an acknowledged write");
        assert_eq!(
            (kv.value, kv.mod_revision),
            (i.to_string().into_bytes(), *revision)
        );
    }
    assert!(store.revision().await.unwrap() >= acked.last().unwrap().1);
}

/// Lease clocks run on `tokio::time`, so a test can move time instead of waiting for it.
#[tokio::test(start_paused = true)]
async fn lease_expiry_follows_tokio_time() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).await;
    let lease = store.grant_lease(Duration::from_secs(30)).await.unwrap();
    store
        .put("agent/us", b"up".to_vec(), Some(lease))
        .await
        .unwrap();
    let mut watch = store.watch("agent/", 0).await.unwrap();

    tokio::time::sleep(Duration::from_secs(25)).await;
    assert_eq!(
        store.keep_alive(lease).await.unwrap(),
        Duration::from_secs(30)
    );
    tokio::time::sleep(Duration::from_secs(25)).await;
    assert!(
        store.get("agent/us").await.unwrap().is_some(),
        "kept alive 25 s ago"
    );

    let event = next_event(&mut watch).await;
    assert_eq!(event.key(), "agent/us");
    assert_eq!(store.get("agent/us").await.unwrap(), None);
    assert_eq!(
        store.keep_alive(lease).await,
        Err(StoreError::LeaseNotFound)
    );
}
