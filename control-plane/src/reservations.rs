//! GPU reservations: how they are checked, how they shape the catalog edges route with,
//! and the clock that applies them when they start and end.
//!
//! Reservations are stored one per key under `/meridian/v1/reservations/<id>`. Which of
//! them hold *now* is itself a record, `/meridian/v1/reservations-active` (the ids), kept
//! current by [`run_clock`]: it rewrites the record whenever a reservation starts, ends, is
//! created or is deleted. So a snapshot is a function of the store at its revision alone,
//! and an edge is woken (a new revision) exactly when the reserved capacity changes.
//!
//! The catalog in a snapshot gives each pool with active reservations the sum of their GPUs
//! as `reserved` and their GPU-weighted average price as `reserved_price_per_hour`; pools
//! without reservation records keep their configured values.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use contract::ConfigProblem;
use control_plane_client::wire::Reservation;
use policy::{CatalogSpec, RegionId};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::api::ApiError;
use crate::changes::ChangeFeed;
use crate::store::versioned::{self, Versioned};
use crate::store::{AnyStore, Store, StoreError};

/// The prefix of reservation records.
pub const RESERVATIONS: &str = "/meridian/v1/reservations/";
/// The record of which reservations hold now.
pub const ACTIVE_KEY: &str = "/meridian/v1/reservations-active";
/// Longest note, in bytes.
const MAX_NOTE: usize = 500;
/// Most GPUs one reservation may hold.
const MAX_GPUS: i64 = 1_000_000;
/// Longest the clock sleeps without looking again.
const CLOCK_IDLE: Duration = Duration::from_secs(60);

/// The ids of the reservations that hold now, as the clock last wrote them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActiveReservations {
    /// Reservation ids.
    pub ids: BTreeSet<String>,
}

impl Versioned for Reservation {
    const KIND: &'static str = "reservation";
    const VERSION: u32 = 1;
}

impl Versioned for ActiveReservations {
    const KIND: &'static str = "active reservations";
    const VERSION: u32 = 1;
}

/// The store key of reservation `id`.
pub fn reservation_key(id: &str) -> String {
    format!("{RESERVATIONS}{id}")
}

/// Every problem of `reservation` against `spec`, as a 422 naming each field; `Ok` when
/// it may be stored under `id`.
pub fn check(id: &str, reservation: &Reservation, spec: &CatalogSpec) -> Result<(), ApiError> {
    let mut details = Vec::new();
    let mut problem = |field: &str, problem: String, fix: String| {
        details.push(ConfigProblem {
            place: format!("reservations[{id}].{field}"),
            problem,
            fix,
        });
    };
    let r = reservation;
    if r.id != id {
        problem(
            "id",
            format!(
                "the body's id {:?} differs from the id {id:?} in the URL",
                r.id
            ),
            "send the record to the URL of its own id".into(),
        );
    } else if RegionId::new(id).is_err() {
        problem(
            "id",
            format!("{id:?} is not a reservation id"),
            "use 1–63 characters of a–z, 0–9 and '-', starting with a letter (e.g. `h100-2025`)"
                .into(),
        );
    }
    match spec.regions.iter().find(|region| region.id == r.region) {
        None => {
            let known: Vec<&str> = spec.regions.iter().map(|x| x.id.as_str()).collect();
            problem(
                "region",
                format!("region {:?} is not in the catalog", r.region),
                format!("use one of: {}", known.join(", ")),
            );
        }
        Some(region) if !region.pools.iter().any(|p| p.id == r.pool) => {
            let known: Vec<&str> = region.pools.iter().map(|p| p.id.as_str()).collect();
            problem(
                "pool",
                format!("region {} has no pool {:?}", r.region, r.pool),
                format!("use one of its pools: {}", known.join(", ")),
            );
        }
        Some(_) => {}
    }
    if !(1..=MAX_GPUS).contains(&r.gpus) {
        problem(
            "gpus",
            format!("gpus is {}, not from 1 to {MAX_GPUS}", r.gpus),
            "reserve at least one GPU".into(),
        );
    }
    if !(r.price_per_gpu_hour.is_finite() && r.price_per_gpu_hour >= 0.0) {
        problem(
            "price_per_gpu_hour",
            format!("{} is not a price", r.price_per_gpu_hour),
            "give the committed price per GPU-hour: a number, 0 or more".into(),
        );
    }
    if r.start_ms < 0 {
        problem(
            "start_ms",
            format!("{} is before 1970", r.start_ms),
            "give the start in Unix milliseconds".into(),
        );
    }
    if r.end_ms <= r.start_ms {
        problem(
            "end_ms",
            format!("end {} is not after start {}", r.end_ms, r.start_ms),
            "give an end later than the start (Unix milliseconds)".into(),
        );
    }
    if r.note.as_ref().is_some_and(|n| n.len() > MAX_NOTE) {
        problem(
            "note",
            format!("the note is longer than {MAX_NOTE} bytes"),
            "keep the note short, e.g. the contract's reference".into(),
        );
    }
    if details.is_empty() {
        return Ok(());
    }
    Err(ApiError::Invalid {
        message: format!(
            "{} problem(s) in reservation {id}; nothing was stored",
            details.len()
        ),
        details,
    })
}

/// Every reservation whose region or pool `spec` no longer has, as a 422 (a region or pool
/// cannot be removed while reservations point at it).
pub fn check_references(spec: &CatalogSpec, reservations: &[Reservation]) -> Result<(), ApiError> {
    let details: Vec<ConfigProblem> = reservations
        .iter()
        .filter(|r| {
            !spec
                .regions
                .iter()
                .any(|region| region.id == r.region && region.pools.iter().any(|p| p.id == r.pool))
        })
        .map(|r| ConfigProblem {
            place: format!("reservations[{}]", r.id),
            problem: format!(
                "reservation {} is for pool {} of region {}, which the change removes",
                r.id, r.pool, r.region
            ),
            fix: format!(
                "delete the reservation first (DELETE /admin/v1/reservations/{})",
                r.id
            ),
        })
        .collect();
    if details.is_empty() {
        return Ok(());
    }
    Err(ApiError::Invalid {
        message: format!(
            "{} reservation(s) need what the change removes",
            details.len()
        ),
        details,
    })
}

/// `spec` with each pool that has active reservations set to their GPUs and average price.
pub fn effective_catalog(
    spec: &CatalogSpec,
    reservations: &[Reservation],
    active: &ActiveReservations,
) -> CatalogSpec {
    // (region, pool) -> (GPUs, Σ GPUs × price)
    let mut sums: BTreeMap<(&str, &str), (i64, f64)> = BTreeMap::new();
    for r in reservations.iter().filter(|r| active.ids.contains(&r.id)) {
        let entry = sums.entry((&r.region, &r.pool)).or_default();
        entry.0 = entry.0.saturating_add(r.gpus);
        #[allow(clippy::cast_precision_loss)]
        let weight = r.gpus as f64;
        entry.1 += weight * r.price_per_gpu_hour;
    }
    let mut effective = spec.clone();
    for region in &mut effective.regions {
        for pool in &mut region.pools {
            if let Some((gpus, cost)) = sums.get(&(region.id.as_str(), pool.id.as_str())) {
                pool.reserved = *gpus;
                #[allow(clippy::cast_precision_loss)]
                let average = cost / *gpus as f64;
                pool.reserved_price_per_hour = Some(average);
            }
        }
    }
    if let Err(errors) = effective.validate() {
        tracing::warn!(%errors, "reservations would make the catalog invalid; edges get it without them");
        return spec.clone();
    }
    effective
}

/// Keeps [`ACTIVE_KEY`] equal to the reservations that hold now, until `shutdown`.
pub async fn run_clock(store: AnyStore, changes: ChangeFeed, shutdown: CancellationToken) {
    loop {
        let next = match tick(&store).await {
            Ok(next) => next,
            Err(e) => {
                tracing::warn!(error = %e, "cannot bring the active reservations up to date");
                Some(crate::usage::now_ms().saturating_add(1000))
            }
        };
        let now = crate::usage::now_ms();
        let sleep = next.map_or(CLOCK_IDLE, |at| {
            Duration::from_millis(at.saturating_sub(now))
        });
        let seen = changes.latest();
        tokio::select! {
            _ = changes.changed_after(seen, sleep.min(CLOCK_IDLE)) => {}
            () = shutdown.cancelled() => return,
        }
    }
}

/// Writes the set of reservations active now if it changed; returns when the next one
/// starts or ends (Unix ms).
async fn tick(store: &AnyStore) -> Result<Option<u64>, StoreError> {
    let listing = store.list(RESERVATIONS).await?;
    let now = i64::try_from(crate::usage::now_ms()).unwrap_or(i64::MAX);
    let mut active = ActiveReservations::default();
    let mut next: Option<i64> = None;
    for kv in &listing.kvs {
        let r: Reservation =
            versioned::decode(&kv.value).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        if r.active_at(now) {
            active.ids.insert(r.id.clone());
        }
        for boundary in [r.start_ms, r.end_ms] {
            if boundary > now {
                next = Some(next.map_or(boundary, |n| n.min(boundary)));
            }
        }
    }
    let current = store.get(ACTIVE_KEY).await?;
    let (stored, revision) = match &current {
        Some(kv) => (
            versioned::decode::<ActiveReservations>(&kv.value)
                .map_err(|e| StoreError::Corrupt(e.to_string()))?,
            kv.mod_revision,
        ),
        None => (ActiveReservations::default(), 0),
    };
    if stored != active {
        let value = versioned::encode(&active).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        match store
            .compare_and_put(ACTIVE_KEY, revision, value, None)
            .await
        {
            // Another control plane wrote it meanwhile; the next look settles it.
            Ok(_) | Err(StoreError::Conflict { .. }) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(next.and_then(|n| u64::try_from(n).ok()))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::records::ROOT;

    #[test]
    fn active_reservations_set_their_pools_reserved_capacity() {
        let spec = CatalogSpec::from_toml(
            r#"
            [[jurisdictions]]
            id = "eu"
            [[regions]]
            id = "eu-west"
            jurisdiction = "eu"
            location = { lat = 53.35, lon = -6.26 }
            endpoint = "http://127.0.0.1:9102"
            pools = [
              { id = "h100", gpu = "H100", reserved = 2, reserved_price_per_hour = 2.2 },
              { id = "a100", gpu = "A100", reserved = 1, reserved_price_per_hour = 1.0 },
            ]
            "#,
        )
        .unwrap();
        let r = |id: &str, gpus, price| Reservation {
            id: id.into(),
            region: "eu-west".into(),
            pool: "h100".into(),
            gpus,
            price_per_gpu_hour: price,
            start_ms: 0,
            end_ms: 10,
            note: None,
        };
        let reservations = [r("a", 3, 2.0), r("b", 1, 4.0), r("c", 100, 0.1)];
        let active = ActiveReservations {
            ids: ["a".to_owned(), "b".to_owned()].into(),
        };
        let effective = effective_catalog(&spec, &reservations, &active);
        let h100 = &effective.regions[0].pools[0];
        assert_eq!(h100.reserved, 4);
        assert!((h100.reserved_price_per_hour.unwrap() - 2.5).abs() < 1e-12);
        assert_eq!(effective.regions[0].pools[1], spec.regions[0].pools[1]);
        assert!(check_references(&spec, &reservations).is_ok());
        let mut without = spec.clone();
        without.regions[0].pools.remove(0);
        assert!(check_references(&without, &reservations).is_err());
        assert!(!r("x", 1, 1.0).active_at(10) && r("x", 1, 1.0).active_at(0));
        assert!(ROOT.len() < RESERVATIONS.len());
    }
}
