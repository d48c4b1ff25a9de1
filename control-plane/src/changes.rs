//! One watch on everything edges see, shared by every long poll.
//!
//! [`ChangeFeed`] keeps a single store watch on [`ROOT`](crate::records::ROOT) and publishes
//! the revision of the latest change it saw. A long poll for "anything after `REV`" then only
//! waits for that number to pass `REV`, so a thousand waiting edges cost one store watch, not
//! a thousand. Before the feed started it knows nothing, so it starts at the store's revision
//! of that moment: a poll from an older revision is answered at once (with the full
//! snapshot, which is always correct). When the watch breaks or its history was compacted,
//! the feed reconnects and, if events may have been missed, publishes the store's current
//! revision, which again only wakes polls early.
//!
//! Tenants' spend (under [`SPEND`]) changes with every usage batch. Waking every edge for
//! each would have them fetch snapshots nonstop, so a change of spend alone is published at
//! most once per `spend_refresh` (the first after a quiet spell at once); any other change
//! is published at once and covers the spend written before it.
//!
//! The feed also keeps the revision of the latest change to what region agents read (the
//! catalog and reservations: everything under the root but live status, instance records,
//! spend and API keys), which heartbeat answers carry so an agent fetches its catalog only when it
//! changed.

use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::instances::INSTANCES;
use crate::records::{KEYS, LIVE, ROOT};
use crate::store::{AnyStore, Revision, Store, StoreError};
use crate::usage::SPEND;

/// Pause before re-establishing a broken watch.
const RETRY: Duration = Duration::from_millis(200);

/// The revision of the latest change under [`ROOT`], kept current by a background task.
#[derive(Debug, Clone)]
pub struct ChangeFeed {
    latest: watch::Receiver<Revision>,
    catalog: watch::Receiver<Revision>,
}

impl ChangeFeed {
    /// Starts following `store`, publishing spend-only changes at most once per
    /// `spend_refresh`; the task ends when `shutdown` is cancelled.
    pub async fn start(
        store: AnyStore,
        spend_refresh: Duration,
        shutdown: CancellationToken,
    ) -> Result<Self, StoreError> {
        let start = store.revision().await?;
        let (publish, latest) = watch::channel(start);
        let (publish_catalog, catalog) = watch::channel(start);
        let feed = Follower {
            store,
            publish,
            publish_catalog,
            spend_refresh,
        };
        tokio::spawn(feed.follow(start + 1, shutdown));
        Ok(Self { latest, catalog })
    }

    /// The revision of the latest change published.
    pub fn latest(&self) -> Revision {
        *self.latest.borrow()
    }

    /// A receiver of every change published (as polls are woken), to follow them.
    pub fn subscribe(&self) -> watch::Receiver<Revision> {
        self.latest.clone()
    }

    /// The revision of the latest change to what agents read (before the feed saw one:
    /// the store's revision when it started, which may only make agents fetch once more).
    pub fn catalog_revision(&self) -> Revision {
        *self.catalog.borrow()
    }

    /// Waits until a change after `after` is known (`true`) or `wait` passes (`false`).
    pub async fn changed_after(&self, after: Revision, wait: Duration) -> bool {
        let mut latest = self.latest.clone();
        let seen = tokio::time::timeout(wait, latest.wait_for(|latest| *latest > after)).await;
        // An ended feed (the server is stopping) counts as "no change".
        matches!(seen, Ok(Ok(_)))
    }
}

/// The task behind a [`ChangeFeed`].
struct Follower {
    store: AnyStore,
    publish: watch::Sender<Revision>,
    publish_catalog: watch::Sender<Revision>,
    spend_refresh: Duration,
}

/// Whether a change to `key` changes what agents read.
fn agents_read(key: &str) -> bool {
    !(key.starts_with(LIVE)
        || key.starts_with(INSTANCES)
        || key.starts_with(SPEND)
        || key.starts_with(KEYS))
}

impl Follower {
    async fn follow(self, mut from: Revision, shutdown: CancellationToken) {
        let store = &self.store;
        let publish = &self.publish;
        // The latest spend-only change not yet published.
        let mut pending: Option<Revision> = None;
        let mut spend_tick = tokio::time::interval(self.spend_refresh);
        spend_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let mut events = tokio::select! {
                watch = store.watch(ROOT, from) => match watch {
                    Ok(events) => events,
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot watch the store; retrying");
                        from = resync(store, &[publish, &self.publish_catalog], from).await;
                        pending = None;
                        if pause(&shutdown).await { return; }
                        continue;
                    }
                },
                () = shutdown.cancelled() => return,
            };
            loop {
                let item = tokio::select! {
                    item = events.next() => item,
                    _ = spend_tick.tick(), if pending.is_some() => {
                        if let Some(revision) = pending.take() {
                            raise(publish, revision);
                        }
                        continue;
                    }
                    () = shutdown.cancelled() => return,
                };
                match item {
                    Some(Ok(event)) => {
                        let revision = event.mod_revision();
                        from = revision + 1;
                        if agents_read(event.key()) {
                            raise(&self.publish_catalog, revision);
                        }
                        if event.key().starts_with(SPEND) {
                            pending = Some(revision);
                        } else {
                            raise(publish, revision);
                            pending = pending.filter(|p| *p > revision);
                        }
                    }
                    Some(Err(e)) => {
                        if !matches!(e, StoreError::Compacted { .. }) {
                            tracing::warn!(error = %e, "the store's watch failed; re-establishing it");
                        }
                        from = resync(store, &[publish, &self.publish_catalog], from).await;
                        pending = None;
                        break;
                    }
                    None => break,
                }
            }
            if pause(&shutdown).await {
                return;
            }
        }
    }
}

/// Publishes `revision` if it is newer than the latest published.
fn raise(publish: &watch::Sender<Revision>, revision: Revision) {
    publish.send_if_modified(|latest| {
        let newer = revision > *latest;
        if newer {
            *latest = revision;
        }
        newer
    });
}

/// After events may have been missed: publishes the store's current revision (waking every
/// poll, which then reads a full snapshot, and making agents fetch their catalog) and
/// returns where to watch from next.
async fn resync(
    store: &AnyStore,
    publish: &[&watch::Sender<Revision>],
    from: Revision,
) -> Revision {
    match store.revision().await {
        Ok(now) => {
            for feed in publish {
                raise(feed, now);
            }
            now + 1
        }
        Err(_) => from,
    }
}

/// Waits before a retry; `true` when the server is shutting down instead.
async fn pause(shutdown: &CancellationToken) -> bool {
    tokio::select! {
        () = tokio::time::sleep(RETRY) => false,
        () = shutdown.cancelled() => true,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::store::StoreConfig;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn only_changes_under_the_root_wake_polls() {
        let dir = tempfile::tempdir().unwrap();
        let store = AnyStore::open(&StoreConfig::embedded(dir.path()))
            .await
            .unwrap();
        let before = store
            .put("/meridian/v1/a", b"1".to_vec(), None)
            .await
            .unwrap();
        let shutdown = CancellationToken::new();
        let feed = ChangeFeed::start(store.clone(), Duration::from_millis(300), shutdown.clone())
            .await
            .unwrap();
        let short = Duration::from_millis(200);
        // From before the feed started, it cannot know: it answers "changed".
        assert!(feed.changed_after(before - 1, short).await);
        assert!(!feed.changed_after(before, short).await);

        let outside = store
            .put("/meridian/usage/v1/j", b"1".to_vec(), None)
            .await
            .unwrap();
        assert!(!feed.changed_after(outside, short).await);
        assert!(!feed.changed_after(before, short).await);

        let waiting = {
            let feed = feed.clone();
            tokio::spawn(async move { feed.changed_after(outside, Duration::from_secs(30)).await })
        };
        let deleted = store.delete("/meridian/v1/a").await.unwrap();
        assert!(waiting.await.unwrap());
        assert_eq!(
            feed.catalog_revision(),
            deleted,
            "a catalog change is one agents read"
        );

        // Live status, instance records, spend and API keys change what edges see, not
        // what agents read.
        let mut last = deleted;
        for key in [
            "/meridian/v1/live/eu-west",
            "/meridian/v1/instances/eu-west/gpu-1",
            "/meridian/v1/spend/2025-01/acme",
            "/meridian/v1/keys/abc",
        ] {
            last = store.put(key, b"1".to_vec(), None).await.unwrap();
        }
        assert!(feed.changed_after(last - 1, Duration::from_secs(30)).await);
        assert_eq!(feed.catalog_revision(), deleted);

        shutdown.cancel();
        if let AnyStore::Embedded(embedded) = &store {
            embedded.close().await;
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn spend_changes_are_coalesced_and_others_are_not() {
        let dir = tempfile::tempdir().unwrap();
        let store = AnyStore::open(&StoreConfig::embedded(dir.path()))
            .await
            .unwrap();
        let shutdown = CancellationToken::new();
        let refresh = Duration::from_millis(400);
        let feed = ChangeFeed::start(store.clone(), refresh, shutdown.clone())
            .await
            .unwrap();
        let mut published = feed.latest.clone();
        let counter = tokio::spawn(async move {
            let mut wakes = 0_u32;
            while published.changed().await.is_ok() {
                wakes += 1;
            }
            wakes
        });
        let started = tokio::time::Instant::now();
        let mut last = 0;
        for i in 0..30 {
            last = store
                .put(&format!("{SPEND}2025-01/t{}", i % 3), b"1".to_vec(), None)
                .await
                .unwrap();
        }
        // The last spend change is published in time, though not at once for every write.
        assert!(feed.changed_after(last - 1, Duration::from_secs(15)).await);
        let elapsed = started.elapsed();
        // A catalog change is published at once, whatever spend is pending.
        let catalog = store
            .put("/meridian/v1/tenants/x", b"1".to_vec(), None)
            .await
            .unwrap();
        assert!(
            feed.changed_after(catalog - 1, Duration::from_secs(15))
                .await
        );
        shutdown.cancel();
        let wakes = counter.await.unwrap();
        let allowed = 2 + u32::try_from(elapsed.as_millis() / refresh.as_millis()).unwrap();
        assert!(
            wakes <= allowed + 1,
            "{wakes} wake-ups for 30 spend writes in {elapsed:?} (at most {allowed} + 1 allowed)"
        );
        if let AnyStore::Embedded(embedded) = &store {
            embedded.close().await;
        }
    }
}
