//! The store's history of old revisions, kept only as long as anything may need it.
//!
//! Both backends keep every revision's changes until they are compacted, so a watch can
//! replay from a past revision. Nothing in Meridian watches from long ago: the change feed
//! follows the store live and resynchronises from a full read after a gap, and edges poll
//! snapshots, never the store. So the control plane compacts the history older than
//! `history_retention` (default 5 minutes) as it goes, and the store's size follows its
//! live keys — the catalog, and usage totals per day — not the heartbeats and usage batches
//! that passed through it. (etcd keeps the freed pages in its file until an operator
//! defragments it; the embedded store's snapshots shrink at once.)

use std::collections::VecDeque;
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::store::{AnyStore, Revision, Store, StoreError};

/// Which revisions may go: remembers the store's revision at each look, and compacts up to
/// the newest one that is older than the retention.
#[derive(Debug)]
pub struct HistoryTrim {
    retention: Duration,
    seen: VecDeque<(Instant, Revision)>,
}

impl HistoryTrim {
    /// Keeps at least `retention` of history.
    pub fn new(retention: Duration) -> Self {
        Self {
            retention,
            seen: VecDeque::new(),
        }
    }

    /// Notes the store's revision `now` and compacts what is older than the retention;
    /// returns the revision compacted to, if any.
    pub async fn look(
        &mut self,
        store: &AnyStore,
        now: Instant,
    ) -> Result<Option<Revision>, StoreError> {
        self.seen.push_back((now, store.revision().await?));
        let mut due = None;
        while let Some((at, revision)) = self.seen.front().copied() {
            if now.duration_since(at) < self.retention {
                break;
            }
            due = Some(revision);
            self.seen.pop_front();
        }
        let Some(revision) = due else {
            return Ok(None);
        };
        match store.compact(revision).await {
            Ok(()) => Ok(Some(revision)),
            // Another control plane compacted as far or further already.
            Err(StoreError::Compacted { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }
}

/// Compacts the store's history older than `retention`, looking every quarter of it, until
/// `shutdown`.
pub async fn run(store: AnyStore, retention: Duration, shutdown: CancellationToken) {
    let mut trim = HistoryTrim::new(retention);
    let mut ticker = tokio::time::interval((retention / 4).max(Duration::from_millis(100)));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = ticker.tick() => {}
        }
        match trim.look(&store, Instant::now()).await {
            Ok(Some(revision)) => tracing::debug!(revision, "store history compacted"),
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(error = %e, "cannot compact the store's history; trying again later")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::store::StoreConfig;

    #[tokio::test]
    async fn history_older_than_the_retention_is_compacted_and_newer_kept() {
        let dir = tempfile::tempdir().unwrap();
        let store = AnyStore::open(&StoreConfig::embedded(dir.path()))
            .await
            .unwrap();
        let mut trim = HistoryTrim::new(Duration::from_secs(60));
        let start = Instant::now();
        let first = store.put("/k", b"1".to_vec(), None).await.unwrap();
        assert_eq!(trim.look(&store, start).await.unwrap(), None);
        let second = store.put("/k", b"2".to_vec(), None).await.unwrap();
        let later = start + Duration::from_secs(30);
        assert_eq!(trim.look(&store, later).await.unwrap(), None, "too young");
        store.put("/k", b"3".to_vec(), None).await.unwrap();
        let compacted = trim
            .look(&store, start + Duration::from_secs(61))
            .await
            .unwrap();
        assert_eq!(compacted, Some(first));
        // A watch from before the compacted revision is told so; one after it replays.
        let mut old = store.watch("/k", first - 1).await.unwrap();
        assert!(matches!(
            old.next().await,
            Some(Err(StoreError::Compacted { .. }))
        ));
        let mut recent = store.watch("/k", second).await.unwrap();
        assert_eq!(recent.next().await.unwrap().unwrap().mod_revision(), second);
        if let AnyStore::Embedded(embedded) = &store {
            embedded.close().await;
        }
    }
}
