//! Following the control plane's snapshots (docs/design.md §5, §7).
//!
//! At start the edge fetches the whole snapshot; when the control plane cannot be reached it
//! loads the last good snapshot from its cache file instead (static stability). A background
//! task then long-polls for newer revisions. Each snapshot is turned into a
//! [`RoutingState`] off the async runtime and swapped in atomically; one that does not
//! validate is logged, counted and dropped, never replacing a good one. Good snapshots are
//! written to the cache file atomically (temporary file, fsync, rename): at once when the
//! catalog, the keys or which regions are up change, and otherwise — heartbeats only moving
//! load figures — at most every [`CACHE_REFRESH`].

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use arc_swap::ArcSwapOption;
use control_plane_client::ControlPlane;
use control_plane_client::wire::Snapshot;
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;
use crate::state::RoutingState;

/// Pause after a failed call to the control plane, doubling up to [`MAX_BACKOFF`].
const MIN_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// Least time between two cache writes of snapshots that change only load figures.
pub const CACHE_REFRESH: Duration = Duration::from_secs(10);

/// The current routing state, shared by the request path and the snapshot follower.
pub type SharedState = Arc<ArcSwapOption<RoutingState>>;

/// Whether this edge can reach the control plane, and when it last heard from it. While the
/// control plane is unreachable the request path judges heartbeats by the time of its last
/// word rather than the wall clock: a snapshot does not go stale because nobody can send a
/// newer one (static stability, docs/design.md §7). Dead agents are caught by the circuit
/// breakers instead.
#[derive(Debug, Default)]
pub struct ControlPlaneContact {
    /// Unix ms of the last answer (or of the newest heartbeat in a cached snapshot); 0: none.
    last_ms: std::sync::atomic::AtomicI64,
    reachable: std::sync::atomic::AtomicBool,
}

/// The contact, shared by the follower and the request path.
pub type Contact = Arc<ControlPlaneContact>;

impl ControlPlaneContact {
    fn answered(&self, now_ms: i64) {
        self.last_ms.store(now_ms, Ordering::Relaxed);
        self.reachable.store(true, Ordering::Relaxed);
    }

    fn failed(&self) {
        self.reachable.store(false, Ordering::Relaxed);
    }

    fn cached(&self, newest_heartbeat_ms: i64) {
        self.last_ms.store(newest_heartbeat_ms, Ordering::Relaxed);
        self.reachable.store(false, Ordering::Relaxed);
    }

    /// The clock the route decision judges heartbeat ages by, in Unix ms: now while the
    /// control plane answers; the time of its last word while it does not.
    pub fn route_clock_ms(&self, now_ms: i64) -> u64 {
        let last = self.last_ms.load(Ordering::Relaxed);
        let clock = if self.reachable.load(Ordering::Relaxed) || last <= 0 {
            now_ms
        } else {
            now_ms.min(last)
        };
        u64::try_from(clock).unwrap_or(0)
    }
}

/// Follows the control plane's snapshots into `shared`.
pub struct SnapshotFollower {
    client: ControlPlane,
    shared: SharedState,
    cache: PathBuf,
    poll_wait: Duration,
    metrics: Arc<Metrics>,
    contact: Contact,
    /// What the cache file holds: when it was written and which regions were up in it.
    cached: parking_lot::Mutex<Option<(std::time::Instant, Vec<RegionUp>)>>,
}

/// A region's presence in a snapshot, as far as it decides where requests may go.
type RegionUp = (String, bool, bool);

/// Which regions report, and whether each is healthy and draining, in order of id.
fn regions_up(snapshot: &Snapshot) -> Vec<RegionUp> {
    let mut up: Vec<RegionUp> = snapshot
        .regions
        .iter()
        .map(|r| (r.region.clone(), r.report.healthy, r.report.draining))
        .collect();
    up.sort();
    up
}

/// Whether a snapshot must be written to the cache now: it changes the configuration or
/// which regions are up, or the cache is [`CACHE_REFRESH`] old.
fn cache_due(
    reconfigured: bool,
    up: &[RegionUp],
    cached: Option<&(std::time::Instant, Vec<RegionUp>)>,
    now: std::time::Instant,
) -> bool {
    match cached {
        None => true,
        Some((written, cached_up)) => {
            reconfigured || cached_up != up || now.duration_since(*written) >= CACHE_REFRESH
        }
    }
}

impl SnapshotFollower {
    /// A follower of `client` writing into `shared`, caching in `cache`.
    pub fn new(
        client: ControlPlane,
        shared: SharedState,
        cache: PathBuf,
        poll_wait: Duration,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            client,
            shared,
            cache,
            poll_wait,
            metrics,
            contact: Contact::default(),
            cached: parking_lot::Mutex::new(None),
        }
    }

    /// When the follower last heard from the control plane.
    pub fn contact(&self) -> Contact {
        Arc::clone(&self.contact)
    }

    fn heard_from_control_plane(&self) {
        self.contact.answered(unix_now().saturating_mul(1000));
    }

    /// The first state: the control plane's current snapshot, or else the cached one. Leaves
    /// `shared` empty (every request then gets 503) when neither is available; the follower
    /// keeps trying.
    pub async fn start(&self) {
        match self.client.snapshot().await {
            Ok(snapshot) => {
                self.heard_from_control_plane();
                if self.apply(snapshot).await {
                    return;
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "control plane unreachable at start; trying the snapshot cache")
            }
        }
        match read_cache(&self.cache).await {
            Ok(snapshot) => {
                let revision = snapshot.revision;
                // The cache is as fresh as the newest heartbeat in it.
                let newest = snapshot.regions.iter().map(|r| r.reported_at_ms).max();
                let newest = newest.and_then(|ms| i64::try_from(ms).ok()).unwrap_or(0);
                self.contact.cached(newest);
                match build(snapshot, None).await.1 {
                    Ok(state) => {
                        tracing::info!(revision, cache = %self.cache.display(), "routing on the cached snapshot");
                        self.install(state);
                    }
                    Err(e) => {
                        self.metrics.snapshot_rejected.inc();
                        tracing::error!(error = %e, cache = %self.cache.display(), "cached snapshot is not usable");
                    }
                }
            }
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "no usable snapshot cache; answering 503 until the control plane is reached");
            }
        }
    }

    /// Long-polls for new snapshots until `shutdown`.
    pub async fn follow(self, shutdown: CancellationToken) {
        let mut backoff = MIN_BACKOFF;
        loop {
            let current = self.shared.load_full().map(|s| s.revision);
            let call = async {
                match current {
                    Some(after) => self.client.poll_snapshot(after, self.poll_wait).await,
                    None => self.client.snapshot().await.map(Some),
                }
            };
            let result = tokio::select! {
                () = shutdown.cancelled() => return,
                result = call => result,
            };
            match result {
                Ok(Some(snapshot)) => {
                    backoff = MIN_BACKOFF;
                    self.heard_from_control_plane();
                    self.apply(snapshot).await;
                }
                Ok(None) => {
                    backoff = MIN_BACKOFF;
                    self.heard_from_control_plane();
                }
                Err(e) => {
                    self.contact.failed();
                    tracing::warn!(error = %e, retry_in = ?backoff, "snapshot poll failed; routing on the last good snapshot");
                    tokio::select! {
                        () = shutdown.cancelled() => return,
                        () = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
    }

    /// Builds and installs `snapshot` and writes it to the cache when due; false when it is
    /// rejected.
    async fn apply(&self, snapshot: Snapshot) -> bool {
        let revision = snapshot.revision;
        let previous = self.shared.load_full();
        let (snapshot, built) = build(snapshot, previous.clone()).await;
        match built {
            Ok(state) => {
                let reconfigured = previous.is_none_or(|p| !state.same_configuration(&p));
                self.install(state);
                if reconfigured {
                    tracing::info!(revision, "snapshot applied: new catalog or keys");
                } else {
                    tracing::debug!(revision, "snapshot applied: live status");
                }
                let Some(snapshot) = snapshot else {
                    return true;
                };
                let up = regions_up(&snapshot);
                let now = std::time::Instant::now();
                if !cache_due(reconfigured, &up, self.cached.lock().as_ref(), now) {
                    return true;
                }
                match serde_json::to_vec(&snapshot) {
                    Ok(bytes) => match write_cache(&self.cache, bytes).await {
                        Ok(()) => *self.cached.lock() = Some((now, up)),
                        Err(e) => {
                            tracing::warn!(error = %format!("{e:#}"), "could not write the snapshot cache");
                        }
                    },
                    Err(e) => tracing::warn!(error = %e, "could not encode the snapshot cache"),
                }
                true
            }
            Err(e) => {
                self.metrics.snapshot_rejected.inc();
                tracing::error!(revision, error = %e, "snapshot rejected; keeping the last good one");
                false
            }
        }
    }

    fn install(&self, state: RoutingState) {
        self.metrics.snapshot_revision.set(state.revision);
        self.metrics.snapshot_received(state.received_unix);
        self.shared.store(Some(Arc::new(state)));
    }
}

/// Builds a routing state on a blocking thread (validation and name resolution); gives the
/// snapshot back unless the task failed.
async fn build(
    snapshot: Snapshot,
    previous: Option<Arc<RoutingState>>,
) -> (Option<Snapshot>, Result<RoutingState, String>) {
    let task = tokio::task::spawn_blocking(move || {
        let state = RoutingState::build(&snapshot, previous.as_deref(), unix_now());
        (snapshot, state)
    });
    match task.await {
        Ok((snapshot, state)) => (Some(snapshot), state),
        Err(e) => (None, Err(format!("snapshot build task failed: {e}"))),
    }
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

async fn read_cache(path: &Path) -> anyhow::Result<Snapshot> {
    let bytes = tokio::fs::read(path)
        .await
        .with_context(|| format!("read {}", path.display()))?;
    serde_json::from_slice(&bytes).with_context(|| format!("parse {}", path.display()))
}

/// Writes `bytes` to `path` so that a reader sees the old file or the new, never a part.
async fn write_cache(path: &Path, bytes: Vec<u8>) -> anyhow::Result<()> {
    let path = path.to_owned();
    tokio::task::spawn_blocking(move || {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
        }
        contract::fs::write_atomic(&path, &bytes)?;
        Ok(())
    })
    .await
    .context("snapshot cache task failed")?
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::state::testing::snapshot;

    /// A follower of a control plane that is never reached, caching in `cache`.
    fn unreachable(shared: SharedState, cache: PathBuf, metrics: Arc<Metrics>) -> SnapshotFollower {
        let client = ControlPlane::new(
            "http://127.0.0.1:9",
            "edge-token-0123456789",
            Duration::from_secs(1),
        );
        SnapshotFollower::new(
            client.unwrap(),
            shared,
            cache,
            Duration::from_secs(1),
            metrics,
        )
    }

    #[test]
    fn heartbeats_are_judged_by_the_last_word_of_an_unreachable_control_plane() {
        let contact = ControlPlaneContact::default();
        // Never heard from it: the wall clock.
        assert_eq!(contact.route_clock_ms(1_000_000), 1_000_000);
        // Answering: the wall clock, however long ago its last snapshot came.
        contact.answered(900_000);
        assert_eq!(contact.route_clock_ms(1_000_000), 1_000_000);
        // Unreachable: the clock stops at its last word.
        contact.failed();
        assert_eq!(contact.route_clock_ms(1_000_000), 900_000);
        assert_eq!(contact.route_clock_ms(5_000_000), 900_000);
        // Started from the cache: as of the newest heartbeat in it, until it answers.
        contact.cached(800_000);
        assert_eq!(contact.route_clock_ms(1_000_000), 800_000);
        contact.answered(1_000_000);
        assert_eq!(contact.route_clock_ms(1_000_100), 1_000_100);
    }

    #[tokio::test]
    async fn a_bad_snapshot_never_replaces_a_good_one_nor_its_cache() {
        let dir = tempfile::tempdir().unwrap();
        let cache = dir.path().join("cache").join("snapshot.json");
        let shared: SharedState = Arc::new(ArcSwapOption::empty());
        let metrics = Arc::new(Metrics::new().unwrap());
        let follower = unreachable(Arc::clone(&shared), cache.clone(), Arc::clone(&metrics));
        assert!(follower.apply(snapshot("")).await);
        assert_eq!(shared.load_full().unwrap().revision, 7);
        assert_eq!(read_cache(&cache).await.unwrap().revision, 7);

        let mut bad = snapshot("");
        bad.revision = 8;
        bad.catalog.tenants[0].allowed_models = Some(vec!["nobody/nothing".into()]);
        assert!(!follower.apply(bad).await);
        assert_eq!(shared.load_full().unwrap().revision, 7);
        assert_eq!(read_cache(&cache).await.unwrap().revision, 7);
        assert_eq!(metrics.snapshot_rejected.get(), 1);

        // A snapshot of a schema major version this edge does not read is rejected the same
        // way; a newer minor version is read.
        let mut newer = snapshot("");
        newer.revision = 9;
        newer.schema = contract::Schema::new(2, 0);
        assert!(!follower.apply(newer.clone()).await);
        assert_eq!(shared.load_full().unwrap().revision, 7);
        newer.schema = contract::Schema::new(1, 9);
        assert!(follower.apply(newer).await);
        assert_eq!(shared.load_full().unwrap().revision, 9);

        // A start with the control plane unreachable routes on the cache.
        let restarted: SharedState = Arc::new(ArcSwapOption::empty());
        let follower = unreachable(Arc::clone(&restarted), cache, metrics);
        follower.start().await;
        assert_eq!(restarted.load_full().unwrap().revision, 7);
    }

    #[tokio::test]
    async fn the_cache_follows_configuration_and_regions_at_once_and_load_figures_lazily() {
        use control_plane_client::wire::{AgentReport, RegionLive};

        let dir = tempfile::tempdir().unwrap();
        let cache = dir.path().join("snapshot.json");
        let follower = unreachable(
            Arc::new(ArcSwapOption::empty()),
            cache.clone(),
            Arc::new(Metrics::new().unwrap()),
        );
        let cached = || async { read_cache(&cache).await.unwrap().revision };
        let mut next = snapshot("");
        assert!(follower.apply(next.clone()).await);
        assert_eq!(cached().await, 7);

        // A region comes up: written at once.
        next.revision = 8;
        next.regions.push(RegionLive {
            region: "eu-west".into(),
            reported_at_ms: 1,
            report: AgentReport {
                healthy: true,
                free_reserved: 2,
                ..AgentReport::default()
            },
        });
        assert!(follower.apply(next.clone()).await);
        assert_eq!(cached().await, 8);

        // Only load figures move: routed on at once, cached later.
        next.revision = 9;
        next.regions[0].reported_at_ms = 2;
        next.regions[0].report.free_reserved = 1;
        assert!(follower.apply(next.clone()).await);
        assert_eq!(follower.shared.load_full().unwrap().revision, 9);
        assert_eq!(cached().await, 8);

        // The region turns unhealthy: written at once.
        next.revision = 10;
        next.regions[0].report.healthy = false;
        assert!(follower.apply(next.clone()).await);
        assert_eq!(cached().await, 10);

        // A catalog change: written at once.
        next.revision = 11;
        next.catalog.tenants[0].quotas.max_concurrent = Some(2);
        assert!(follower.apply(next.clone()).await);
        assert_eq!(cached().await, 11);

        // After CACHE_REFRESH load figures are written too.
        let now = std::time::Instant::now();
        let up = regions_up(&next);
        let written = (now, up.clone());
        assert!(!cache_due(
            false,
            &up,
            Some(&written),
            now + CACHE_REFRESH / 2
        ));
        assert!(cache_due(false, &up, Some(&written), now + CACHE_REFRESH));
    }
}
