//! A region's instances as the control plane remembers them beyond their leases.
//!
//! A named instance's live status lives only as long as its lease; an edge still needs to
//! know, after the instance has gone quiet, whether calls about its jobs may be answered
//! later. So every named instance that registers also gets a persisted record (no lease),
//! [`InstanceEntry`], at `/meridian/v1/instances/<region>/<instance>`:
//!
//! - registration writes it afresh: last seen now, not deregistered, no drain order (a
//!   restarted instance serves again);
//! - a heartbeat refreshes its last-seen time at most once per [`REFRESH`] (at once when the
//!   endpoint or result retention changed, or the record is missing), so heartbeats do not
//!   each cost a store write; the heartbeat's answer carries the record's drain order;
//! - deregistration marks it deregistered, last seen now, and clears its drain order;
//! - an operator's drain order ([`order_drain`]) sets `drain_requested`.
//!
//! A record is kept for its instance's result retention after it was last seen
//! ([`DEFAULT_KEEP`] when the instance does not say). [`current`] leaves expired records
//! out of snapshots and the admin API at once; [`run_sweep`] deletes them from the store
//! every [`SWEEP_EVERY`]. A live instance's last-seen time is its latest status's, so it
//! never expires while it reports. The region's only agent (no instance id) has no record:
//! its request ids name no instance.

pub mod pools;

use std::collections::BTreeSet;
use std::time::Duration;

use control_plane_client::wire::{AgentReport, InstanceRecord};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::api::ApiError;
use crate::registry::{StoredState, read_state};
use crate::store::versioned::{self, Versioned};
use crate::store::{AnyStore, Store, StoreError};
use crate::usage::now_ms;

/// The prefix of instance records.
pub const INSTANCES: &str = "/meridian/v1/instances/";
/// Least time between two writes of a live instance's last-seen time.
pub const REFRESH: Duration = Duration::from_secs(30);
/// How long a record is kept after its instance was last seen when it reports no result
/// retention.
pub const DEFAULT_KEEP: Duration = Duration::from_secs(30 * 24 * 3600);
/// How often expired records are deleted from the store.
pub const SWEEP_EVERY: Duration = Duration::from_secs(600);
/// How many times a read-modify-write is tried when other writes come between.
const WRITE_TRIES: usize = 5;

/// The store key of `region`'s instance `instance`.
pub fn instance_key(region: &str, instance: &str) -> String {
    format!("{INSTANCES}{region}/{instance}")
}

/// One instance's persisted record: what edges see of it, and the drain order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceEntry {
    /// What edges see.
    #[serde(flatten)]
    pub record: InstanceRecord,
    /// An operator asked the instance to drain; heartbeat answers say so until it
    /// deregisters or registers again.
    #[serde(default)]
    pub drain_requested: bool,
}

impl Versioned for InstanceEntry {
    const KIND: &'static str = "instance";
    const VERSION: u32 = 1;
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

impl InstanceEntry {
    /// The record of `region`'s instance as `report` describes it, seen at `now_ms`.
    pub fn seen(region: &str, report: &AgentReport, now_ms: u64) -> Self {
        Self {
            record: InstanceRecord {
                region: region.to_owned(),
                instance: report.instance.clone(),
                endpoint: report.endpoint.clone(),
                last_seen_ms: now_ms,
                deregistered: false,
                result_retention_s: report.result_retention_s,
            },
            drain_requested: false,
        }
    }

    /// How long after it was last seen the record is kept, in ms.
    pub fn kept_ms(&self) -> u64 {
        match self.record.result_retention_s {
            0 => millis(DEFAULT_KEEP),
            s => s.saturating_mul(1000),
        }
    }

    /// Whether the record has outlived its keeping time at `now_ms`.
    pub fn expired(&self, now_ms: u64) -> bool {
        now_ms.saturating_sub(self.record.last_seen_ms) > self.kept_ms()
    }

    /// Whether a heartbeat carrying `report` at `now_ms` must rewrite the record.
    pub fn needs_refresh(&self, report: &AgentReport, now_ms: u64) -> bool {
        self.record.deregistered
            || self.record.endpoint != report.endpoint
            || self.record.result_retention_s != report.result_retention_s
            || now_ms.saturating_sub(self.record.last_seen_ms) >= millis(REFRESH)
    }
}

/// Reads `key`'s record and its mod revision (0: absent).
async fn read(store: &AnyStore, key: &str) -> Result<(Option<InstanceEntry>, i64), ApiError> {
    match store.get(key).await? {
        Some(kv) => Ok((Some(versioned::decode(&kv.value)?), kv.mod_revision)),
        None => Ok((None, 0)),
    }
}

/// Writes the record of a registering instance (none for a region's only agent).
pub async fn registered(
    store: &AnyStore,
    region: &str,
    report: &AgentReport,
) -> Result<(), ApiError> {
    if report.instance.is_empty() {
        return Ok(());
    }
    let entry = InstanceEntry::seen(region, report, now_ms());
    let key = instance_key(region, &report.instance);
    store.put(&key, versioned::encode(&entry)?, None).await?;
    Ok(())
}

/// Refreshes the record of an instance that sent a heartbeat, when due, and answers whether
/// it was asked to drain.
pub async fn heartbeat(
    store: &AnyStore,
    region: &str,
    report: &AgentReport,
) -> Result<bool, ApiError> {
    if report.instance.is_empty() {
        return Ok(false);
    }
    let key = instance_key(region, &report.instance);
    let (entry, revision) = read(store, &key).await?;
    let now = now_ms();
    let drain = entry.as_ref().is_some_and(|e| e.drain_requested);
    if entry
        .as_ref()
        .is_some_and(|e| !e.needs_refresh(report, now))
    {
        return Ok(drain);
    }
    let mut fresh = InstanceEntry::seen(region, report, now);
    fresh.drain_requested = drain;
    match store
        .compare_and_put(&key, revision, versioned::encode(&fresh)?, None)
        .await
    {
        // Another write came between (a drain order, a registration): the next heartbeat
        // reads it.
        Ok(_) | Err(StoreError::Conflict { .. }) => Ok(drain),
        Err(e) => Err(e.into()),
    }
}

/// Changes the record of `region`'s `instance` with `change`, compare-and-set, reading it
/// again when another write came between; `None` when there is no record.
async fn update(
    store: &AnyStore,
    region: &str,
    instance: &str,
    change: impl Fn(&mut InstanceEntry),
) -> Result<Option<InstanceEntry>, ApiError> {
    let key = instance_key(region, instance);
    for _ in 0..WRITE_TRIES {
        let (Some(mut entry), revision) = read(store, &key).await? else {
            return Ok(None);
        };
        change(&mut entry);
        match store
            .compare_and_put(&key, revision, versioned::encode(&entry)?, None)
            .await
        {
            Ok(_) => return Ok(Some(entry)),
            Err(StoreError::Conflict { .. }) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Err(ApiError::Unavailable(format!(
        "the record of instance {instance} of region {region} kept changing; try again"
    )))
}

/// Marks a deregistering instance's record: deregistered, last seen now, no drain order.
pub async fn deregistered(store: &AnyStore, region: &str, instance: &str) -> Result<(), ApiError> {
    if instance.is_empty() {
        return Ok(());
    }
    let now = now_ms();
    update(store, region, instance, |entry| {
        entry.record.deregistered = true;
        entry.record.last_seen_ms = now;
        entry.drain_requested = false;
    })
    .await?;
    Ok(())
}

/// Records an operator's order that `region`'s `instance` drain; `None` when the instance
/// never registered (or its record expired).
pub async fn order_drain(
    store: &AnyStore,
    region: &str,
    instance: &str,
) -> Result<Option<InstanceEntry>, ApiError> {
    update(store, region, instance, |entry| {
        entry.drain_requested = true
    })
    .await
}

/// The records not expired at `now_ms`, sorted by region and instance; a live instance's
/// last-seen time is its latest status's when that is newer.
pub fn current(stored: &StoredState, now_ms: u64) -> Vec<InstanceEntry> {
    let mut entries: Vec<InstanceEntry> = stored
        .instances
        .iter()
        .map(|entry| {
            let mut entry = entry.clone();
            let live = stored.live.iter().filter(|l| {
                l.region == entry.record.region && l.report.instance == entry.record.instance
            });
            for status in live {
                entry.record.last_seen_ms = entry.record.last_seen_ms.max(status.reported_at_ms);
            }
            entry
        })
        .filter(|entry| !entry.expired(now_ms))
        .collect();
    entries.sort_by(|a, b| {
        (&a.record.region, &a.record.instance).cmp(&(&b.record.region, &b.record.instance))
    });
    entries
}

/// Deletes the records expired at `now_ms` (each only if unchanged since it was read);
/// returns how many went.
pub async fn sweep(store: &AnyStore, now_ms: u64) -> Result<usize, ApiError> {
    let stored = read_state(store).await?;
    let kept: BTreeSet<(String, String)> = current(&stored, now_ms)
        .into_iter()
        .map(|e| (e.record.region, e.record.instance))
        .collect();
    let mut deleted = 0;
    for entry in &stored.instances {
        let (region, instance) = (&entry.record.region, &entry.record.instance);
        if kept.contains(&(region.clone(), instance.clone())) {
            continue;
        }
        let key = instance_key(region, instance);
        let Some(revision) = stored.mod_revision(&key) else {
            continue;
        };
        match store.compare_and_delete(&key, revision).await {
            Ok(_) => deleted += 1,
            // Written again meanwhile (the instance came back), or already gone.
            Err(StoreError::Conflict { .. } | StoreError::NotFound { .. }) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(deleted)
}

/// Deletes expired records every [`SWEEP_EVERY`] until `shutdown`.
pub async fn run_sweep(store: AnyStore, shutdown: CancellationToken) {
    let mut every = tokio::time::interval(SWEEP_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = every.tick() => {}
            () = shutdown.cancelled() => return,
        }
        match sweep(&store, now_ms()).await {
            Ok(0) => {}
            Ok(deleted) => tracing::info!(deleted, "expired instance records deleted"),
            Err(e) => tracing::warn!(error = %e, "cannot sweep expired instance records"),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use control_plane_client::wire::RegionLive;

    use super::*;
    use crate::store::StoreConfig;

    const T0: u64 = 1_800_000_000_000;

    fn report(instance: &str, retention_s: u64) -> AgentReport {
        AgentReport {
            instance: instance.to_owned(),
            endpoint: format!("http://127.0.0.1:9/{instance}"),
            result_retention_s: retention_s,
            ..AgentReport::default()
        }
    }

    #[test]
    fn a_heartbeat_rewrites_the_record_at_most_every_30_s_unless_it_changed() {
        let beat = report("gpu-1", 3600);
        let entry = InstanceEntry::seen("eu-west", &beat, T0);
        assert!(!entry.needs_refresh(&beat, T0));
        assert!(!entry.needs_refresh(&beat, T0 + 29_999));
        assert!(entry.needs_refresh(&beat, T0 + 30_000));
        let moved = AgentReport {
            endpoint: "http://127.0.0.1:10".into(),
            ..beat.clone()
        };
        assert!(entry.needs_refresh(&moved, T0 + 1));
        assert!(entry.needs_refresh(&report("gpu-1", 60), T0 + 1));
        let mut gone = entry.clone();
        gone.record.deregistered = true;
        assert!(gone.needs_refresh(&beat, T0 + 1));
    }

    #[test]
    fn records_are_kept_for_their_retention_or_30_days() {
        let kept = InstanceEntry::seen("eu-west", &report("gpu-1", 60), T0);
        assert!(!kept.expired(T0 + 60_000));
        assert!(kept.expired(T0 + 60_001));
        let unsaid = InstanceEntry::seen("eu-west", &report("gpu-2", 0), T0);
        let month = 30 * 24 * 3600 * 1000;
        assert!(!unsaid.expired(T0 + month));
        assert!(unsaid.expired(T0 + month + 1));
        // A clock that went back never expires anything.
        assert!(!kept.expired(T0 - 1));
    }

    fn live(instance: &str, reported_at_ms: u64) -> RegionLive {
        RegionLive {
            region: "eu-west".into(),
            reported_at_ms,
            report: report(instance, 60),
        }
    }

    #[test]
    fn a_live_instance_is_seen_at_its_latest_status_and_never_expires_while_it_reports() {
        let stored = StoredState {
            instances: vec![
                InstanceEntry::seen("eu-west", &report("gpu-2", 60), T0),
                InstanceEntry::seen("eu-west", &report("gpu-1", 60), T0),
                InstanceEntry::seen("us-east", &report("gpu-1", 60), T0),
            ],
            live: vec![live("gpu-2", T0 + 90_000)],
            ..StoredState::default()
        };
        let now = T0 + 100_000;
        let current = current(&stored, now);
        let names: Vec<(&str, &str, u64)> = current
            .iter()
            .map(|e| {
                (
                    e.record.region.as_str(),
                    e.record.instance.as_str(),
                    e.record.last_seen_ms,
                )
            })
            .collect();
        // gpu-1 in both regions was last seen 100 s ago with a 60 s retention: gone.
        assert_eq!(names, [("eu-west", "gpu-2", T0 + 90_000)]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_sweep_deletes_expired_records_only() {
        let dir = tempfile::tempdir().unwrap();
        let store = AnyStore::open(&StoreConfig::embedded(dir.path()))
            .await
            .unwrap();
        for (instance, retention) in [("gpu-1", 60), ("gpu-2", 600), ("gpu-3", 0)] {
            let entry = InstanceEntry::seen("eu-west", &report(instance, retention), T0);
            let key = instance_key("eu-west", instance);
            store
                .put(&key, versioned::encode(&entry).unwrap(), None)
                .await
                .unwrap();
        }
        assert_eq!(sweep(&store, T0 + 60_000).await.unwrap(), 0);
        assert_eq!(sweep(&store, T0 + 120_000).await.unwrap(), 1);
        let left = read_state(&store).await.unwrap().instances;
        let names: Vec<&str> = left.iter().map(|e| e.record.instance.as_str()).collect();
        assert_eq!(names, ["gpu-2", "gpu-3"]);
        assert_eq!(sweep(&store, T0 + 601_000).await.unwrap(), 1);
        if let AnyStore::Embedded(embedded) = &store {
            embedded.close().await;
        }
    }
}
