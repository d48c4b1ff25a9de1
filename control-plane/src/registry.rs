//! The catalog as kept in the store: read whole at one revision, changed one record at a
//! time, and validated with `policy` before every write.
//!
//! A write reads every record, applies the change to the whole [`CatalogSpec`], runs
//! [`CatalogSpec::validate`] and only then writes the one record, compare-and-set on the
//! mod revision it read (or on the revision the caller named). Writes of one control plane
//! are serialised, so two changes that are each valid cannot together leave an invalid
//! catalog behind (several control planes over one etcd would need a multi-key transaction).

use std::collections::HashMap;

use contract::ConfigProblem;
use control_plane_client::wire::{RegionLive, Reservation, Settings};
use policy::spec::JurisdictionSpec;
use policy::{ApiKeyRecord, CatalogSpec, ConfigProblems, ModelSpec, RegionSpec, TenantSpec};
use tokio::sync::{Mutex, MutexGuard};

use crate::api::ApiError;
use crate::instances::{INSTANCES, InstanceEntry};
use crate::records::{self, CatalogRecord, KEYS, LIVE, ROOT, SETTINGS_KEY};
use crate::reservations::{ACTIVE_KEY, ActiveReservations, RESERVATIONS, check_references};
use crate::store::versioned::{self, Versioned};
use crate::store::{AnyStore, Revision, Store, StoreError};
use crate::usage::{MonthlySpend, SPEND};

/// Everything under [`ROOT`], read at one revision.
#[derive(Debug, Clone, Default)]
pub struct StoredState {
    /// The store revision of the read.
    pub revision: Revision,
    /// The catalog.
    pub spec: CatalogSpec,
    /// Store key → mod revision, for every record read.
    pub mod_revisions: HashMap<String, Revision>,
    /// Every API key's record.
    pub keys: Vec<ApiKeyRecord>,
    /// The live status of every region's agents (a region may have several instances).
    pub live: Vec<RegionLive>,
    /// Every tenant's spend, every month.
    pub spend: Vec<MonthlySpend>,
    /// Every GPU reservation.
    pub reservations: Vec<Reservation>,
    /// Every named instance's record, expired ones included ([`crate::instances`]).
    pub instances: Vec<InstanceEntry>,
    /// Which reservations hold now, as the reservation clock last wrote it.
    pub active_reservations: ActiveReservations,
}

impl StoredState {
    /// The mod revision of `key`, or `None` when it does not exist.
    pub fn mod_revision(&self, key: &str) -> Option<Revision> {
        self.mod_revisions.get(key).copied()
    }

    /// The catalog as in force now: each pool's reserved GPUs and price from its active
    /// reservations ([`crate::reservations::effective_catalog`]), as edges and agents see it.
    pub fn effective_catalog(&self) -> CatalogSpec {
        crate::reservations::effective_catalog(
            &self.spec,
            &self.reservations,
            &self.active_reservations,
        )
    }
}

/// Reads everything under [`ROOT`] at one revision.
pub async fn read_state(store: &AnyStore) -> Result<StoredState, ApiError> {
    let listing = store.list(ROOT).await?;
    let mut state = StoredState {
        revision: listing.revision,
        ..StoredState::default()
    };
    for kv in &listing.kvs {
        let key = kv.key.as_str();
        let value = kv.value.as_slice();
        if key == SETTINGS_KEY {
            let settings: Settings = versioned::decode(value)?;
            state.spec.currency = settings.currency;
            state.spec.routing = settings.routing;
        } else if key.starts_with(&JurisdictionSpec::prefix()) {
            state.spec.jurisdictions.push(versioned::decode(value)?);
        } else if key.starts_with(&RegionSpec::prefix()) {
            state.spec.regions.push(versioned::decode(value)?);
        } else if key.starts_with(&ModelSpec::prefix()) {
            state.spec.models.push(versioned::decode(value)?);
        } else if key.starts_with(&TenantSpec::prefix()) {
            state.spec.tenants.push(versioned::decode(value)?);
        } else if key.starts_with(KEYS) {
            state.keys.push(versioned::decode(value)?);
        } else if key.starts_with(LIVE) {
            state.live.push(versioned::decode(value)?);
        } else if key.starts_with(INSTANCES) {
            state.instances.push(versioned::decode(value)?);
        } else if key.starts_with(SPEND) {
            state.spend.push(versioned::decode(value)?);
        } else if key.starts_with(RESERVATIONS) {
            state.reservations.push(versioned::decode(value)?);
        } else if key == ACTIVE_KEY {
            state.active_reservations = versioned::decode(value)?;
        } else {
            // A record kind this build does not know (written by a newer one): leave it.
            continue;
        }
        state.mod_revisions.insert(kv.key.clone(), kv.mod_revision);
    }
    Ok(state)
}

/// What a write must find before it may go ahead.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Precondition {
    /// Nothing: the write applies to whatever is there.
    None,
    /// The record's mod revision must be this (`If-Match`).
    Revision(Revision),
    /// The record must not exist (a create).
    Absent,
}

impl Precondition {
    /// The mod revision the compare-and-set expects, given the one read (`None`: absent).
    pub fn expected(self, current: Option<Revision>) -> Result<Revision, ApiError> {
        let actual = current.unwrap_or(0);
        let expected = match self {
            Self::None => actual,
            Self::Revision(r) => r,
            Self::Absent => 0,
        };
        if expected == actual {
            Ok(expected)
        } else {
            Err(ApiError::Conflict { expected, actual })
        }
    }
}

/// The outcome of a write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Written {
    /// The record's new mod revision.
    pub revision: Revision,
    /// Whether the record was created (rather than replaced).
    pub created: bool,
}

/// The catalog in the store, with the lock that serialises its writes.
#[derive(Debug)]
pub struct Registry {
    store: AnyStore,
    writes: Mutex<()>,
}

impl Registry {
    /// The catalog kept in `store`.
    pub fn new(store: AnyStore) -> Self {
        Self {
            store,
            writes: Mutex::new(()),
        }
    }

    /// The store.
    pub fn store(&self) -> &AnyStore {
        &self.store
    }

    /// Holds off every other catalog write until the guard is dropped.
    pub async fn lock(&self) -> MutexGuard<'_, ()> {
        self.writes.lock().await
    }

    /// One record and its mod revision.
    pub async fn get<T: Versioned>(&self, key: &str) -> Result<Option<(T, Revision)>, ApiError> {
        match self.store.get(key).await? {
            Some(kv) => Ok(Some((versioned::decode(&kv.value)?, kv.mod_revision))),
            None => Ok(None),
        }
    }

    /// Creates or replaces the record `id` of its collection, if the catalog stays valid.
    pub async fn put<T: CatalogRecord>(
        &self,
        id: &str,
        record: T,
        precondition: Precondition,
    ) -> Result<Written, ApiError> {
        if record.id() != id {
            return Err(ApiError::invalid_one(
                "id",
                format!(
                    "the body's id {:?} differs from the id {id:?} in the URL",
                    record.id()
                ),
                "send the record to the URL of its own id (ids cannot be renamed: create the new id, then delete the old)",
            ));
        }
        let key = T::key(id);
        let _guard = self.lock().await;
        let mut state = read_state(&self.store).await?;
        let current = state.mod_revision(&key);
        let expected = precondition.expected(current)?;
        let value = versioned::encode(&record)?;
        let list = T::collection_mut(&mut state.spec);
        match list.iter_mut().find(|r| r.id() == id) {
            Some(slot) => *slot = record,
            None => {
                list.push(record);
                list.sort_by(|a, b| a.id().cmp(b.id()));
            }
        }
        check(&state.spec)?;
        check_references(&state.spec, &state.reservations)?;
        let revision = self
            .store
            .compare_and_put(&key, expected, value, None)
            .await?;
        Ok(Written {
            revision,
            created: current.is_none(),
        })
    }

    /// Deletes the record `id` of its collection, if nothing else in the catalog needs it.
    pub async fn delete<T: CatalogRecord>(
        &self,
        id: &str,
        precondition: Precondition,
    ) -> Result<Revision, ApiError> {
        let key = T::key(id);
        let _guard = self.lock().await;
        let mut state = read_state(&self.store).await?;
        let Some(current) = state.mod_revision(&key) else {
            return Err(not_found::<T>(id));
        };
        let expected = precondition.expected(Some(current))?;
        T::collection_mut(&mut state.spec).retain(|r| r.id() != id);
        if T::COLLECTION == TenantSpec::COLLECTION {
            check_no_live_keys(id, &state.keys)?;
        }
        check(&state.spec)?;
        check_references(&state.spec, &state.reservations)?;
        match self.store.compare_and_delete(&key, expected).await {
            Ok(revision) => Ok(revision),
            Err(StoreError::NotFound { .. }) => Err(not_found::<T>(id)),
            Err(e) => Err(e.into()),
        }
    }

    /// Replaces the settings, if the catalog stays valid.
    pub async fn put_settings(
        &self,
        settings: Settings,
        precondition: Precondition,
    ) -> Result<Written, ApiError> {
        let _guard = self.lock().await;
        let mut state = read_state(&self.store).await?;
        let current = state.mod_revision(SETTINGS_KEY);
        let expected = precondition.expected(current)?;
        let value = versioned::encode(&settings)?;
        state.spec.currency = settings.currency;
        state.spec.routing = settings.routing;
        check(&state.spec)?;
        let revision = self
            .store
            .compare_and_put(SETTINGS_KEY, expected, value, None)
            .await?;
        Ok(Written {
            revision,
            created: current.is_none(),
        })
    }

    /// Writes every record of `spec` (which must be valid) and returns the last revision.
    pub async fn apply_whole(&self, spec: &CatalogSpec) -> Result<Revision, ApiError> {
        check(spec)?;
        let _guard = self.lock().await;
        let mut revision = self
            .store
            .put(
                SETTINGS_KEY,
                versioned::encode(&records::settings_of(spec))?,
                None,
            )
            .await?;
        revision = write_all(&self.store, &spec.jurisdictions, revision).await?;
        revision = write_all(&self.store, &spec.regions, revision).await?;
        revision = write_all(&self.store, &spec.models, revision).await?;
        write_all(&self.store, &spec.tenants, revision).await
    }
}

async fn write_all<T: CatalogRecord>(
    store: &AnyStore,
    records: &[T],
    mut revision: Revision,
) -> Result<Revision, ApiError> {
    for record in records {
        revision = store
            .put(&T::key(record.id()), versioned::encode(record)?, None)
            .await?;
    }
    Ok(revision)
}

/// The 404 for record `id` of `T`'s collection.
pub fn not_found<T: CatalogRecord>(id: &str) -> ApiError {
    ApiError::NotFound {
        what: format!("{} {id}", T::KIND),
    }
}

fn check_no_live_keys(tenant: &str, keys: &[ApiKeyRecord]) -> Result<(), ApiError> {
    let live: Vec<&str> = keys
        .iter()
        .filter(|k| k.tenant.as_str() == tenant && k.revoked_at.is_none())
        .map(|k| k.id.as_str())
        .collect();
    if live.is_empty() {
        return Ok(());
    }
    Err(ApiError::invalid_one(
        format!("tenants[{tenant}]"),
        format!(
            "tenant {tenant} still has {} unrevoked API key(s): {}",
            live.len(),
            live.join(", ")
        ),
        format!("revoke them first (DELETE /admin/v1/tenants/{tenant}/keys/<id>)"),
    ))
}

/// Validates a whole catalog, turning its problems into a 422 whose paths name records by
/// id (`regions[eu-west].pools[0].reserved`) rather than by position.
pub fn check(spec: &CatalogSpec) -> Result<(), ApiError> {
    match spec.validate() {
        Ok(_) => Ok(()),
        Err(errors) => Err(invalid(spec, &errors)),
    }
}

fn invalid(spec: &CatalogSpec, errors: &ConfigProblems) -> ApiError {
    let details: Vec<ConfigProblem> = errors
        .iter()
        .map(|e| ConfigProblem {
            place: path_by_id(spec, &e.place),
            problem: e.problem.clone(),
            fix: e.fix.clone(),
        })
        .collect();
    let n = details.len();
    ApiError::Invalid {
        message: format!(
            "the change would make the catalog invalid: {n} problem{}",
            if n == 1 { "" } else { "s" }
        ),
        details,
    }
}

/// Rewrites a leading `regions[3]` (and the like) to `regions[<id of the 4th region>]`.
fn path_by_id(spec: &CatalogSpec, path: &str) -> String {
    let ids = |collection: &str| -> Vec<&str> {
        match collection {
            "jurisdictions" => spec.jurisdictions.iter().map(|r| r.id.as_str()).collect(),
            "regions" => spec.regions.iter().map(|r| r.id.as_str()).collect(),
            "models" => spec.models.iter().map(|r| r.id.as_str()).collect(),
            "tenants" => spec.tenants.iter().map(|r| r.id.as_str()).collect(),
            _ => Vec::new(),
        }
    };
    let Some((collection, rest)) = path.split_once('[') else {
        return path.to_owned();
    };
    let Some((index, tail)) = rest.split_once(']') else {
        return path.to_owned();
    };
    match index
        .parse::<usize>()
        .ok()
        .and_then(|i| ids(collection).get(i).copied())
    {
        Some(id) => format!("{collection}[{id}]{tail}"),
        None => path.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_name_records_by_id() {
        let spec = CatalogSpec::from_toml(
            r#"
            [[jurisdictions]]
            id = "eu"
            [[regions]]
            id = "eu-west"
            jurisdiction = "eu"
            location = { lat = 53.35, lon = -6.26 }
            endpoint = "http://127.0.0.1:9101"
            "#,
        )
        .unwrap();
        assert_eq!(
            path_by_id(&spec, "regions[0].pools"),
            "regions[eu-west].pools"
        );
        assert_eq!(path_by_id(&spec, "jurisdictions[0]"), "jurisdictions[eu]");
        assert_eq!(path_by_id(&spec, "regions[7].id"), "regions[7].id");
        assert_eq!(path_by_id(&spec, "currency"), "currency");
        let ApiError::Invalid { details, .. } = check(&spec).unwrap_err() else {
            panic!("expected an invalid catalog");
        };
        assert!(
            details.iter().any(|d| d.place == "regions[eu-west].pools"),
            "{details:?}"
        );
    }
}
