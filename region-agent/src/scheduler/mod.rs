//! The scheduler: a bounded priority queue per model, one dedicated model thread per model
//! (it owns the loaded weights, loads them on first use and unloads them after the model's
//! keep-alive), shared slots (reserved before on-demand), batching, cancellation (while
//! queued at once, while running at the model's next safe point: [`running`]), per-job
//! timeouts, persistence of every state change, and billing.
//!
//! Slots and prices come from the catalog copy in force ([`Scheduler::install_catalog`]);
//! before the first copy every job is refused with `no_catalog`. A configured model is
//! served while the copy places it in the region and bills it in the unit the model measures
//! ([`crate::serving::Model::unit`]). A job is priced by the copy in force when it finishes
//! ([`billing`]).
//!
//! The async side ([`Scheduler::submit`], [`Scheduler::cancel`], …) only touches the queues
//! under short locks and does disk work on blocking threads; models never run on the async
//! runtime.

mod admission;
mod billing;
mod catalog_copy;
pub mod metrics;
pub mod queue;
mod restore;
mod running;
pub mod slots;
mod worker;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, RwLock};
use std::thread::JoinHandle;
use std::time::Duration;

use contract::{InstanceId, RegionId, TenantId};
use control_plane_client::wire::{AgentReport, ModelReport};
use serde_json::Value;
use tokio::sync::watch;

pub use contract::Refusal;

use self::metrics::{Gauges, Metrics};
use self::queue::ModelQueue;
use self::running::RunningBatch;
use self::slots::SlotPool;
use crate::catalog::RegionCatalog;
use crate::config::{AgentConfig, ModelConfig, OnDemandConfig, PoolShares};
use crate::gpu::Hardware;
use crate::jobs::idempotency::{IdempotencyKey, KeyIndex};
use crate::jobs::store::{JobStore, StoreError};
use crate::jobs::tenant_jobs::{JobBound, OverBound, TenantJobs};
use crate::jobs::{JobRecord, JobState, Priority, now_ms};
use crate::serving::{InputError, Model};
use crate::usage::Ledger;

/// Why [`Scheduler::submit`] did not accept a job.
#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    /// Refused before acceptance (the edge may try another region).
    #[error(transparent)]
    Refused(#[from] Refusal),
    /// The input is bad.
    #[error(transparent)]
    Input(#[from] InputError),
    /// The tenant has as many jobs queued or running as its bound allows.
    #[error(transparent)]
    OverBound(#[from] OverBound),
    /// The idempotency key names a job submitted with another model, priority or input.
    #[error(
        "this idempotency key was already used with another submission; send a new key for \
         a new job"
    )]
    KeyReused,
    /// The job could not be stored.
    #[error("store the job: {0}")]
    Storage(#[from] StoreError),
}

/// What a submission carries besides its input.
#[derive(Debug, Clone, Default)]
pub struct Terms {
    /// The tenant's bound on jobs queued or running, when the edge sent one.
    pub bound: Option<JobBound>,
    /// The client's idempotency key, when it sent one.
    pub key: Option<IdempotencyKey>,
    /// The input as the client sent it, when the agent rewrote it before acceptance (media
    /// URLs replaced by the media fetched): the idempotency fingerprint is taken from it.
    pub submitted: Option<Value>,
    /// The webhook the job names.
    pub webhook: Option<crate::jobs::Webhook>,
}

/// What a cancellation did.
#[derive(Debug, Clone)]
pub enum Cancellation {
    /// The job was queued, or had been cancelled already: it is `CANCELLED` now.
    Cancelled(JobRecord),
    /// The job is running: it stops at its model's next safe point and then ends
    /// `CANCELLED` (its record as it is now). Asking again changes nothing.
    Requested(JobRecord),
}

/// Why a cancellation did nothing.
#[derive(Debug, thiserror::Error)]
pub enum CancelError {
    /// No such job for this tenant.
    #[error("no such request")]
    NotFound,
    /// The job has finished (completed or failed).
    #[error("the request is {} and can no longer be cancelled", .0.state.as_str())]
    NotCancellable(Box<JobRecord>),
    /// The cancellation could not be stored.
    #[error("store the cancellation: {0}")]
    Storage(#[from] StoreError),
}

/// How long a cancellation waits for the final record of a job that has just left its
/// model (its output and record being stored).
const SETTLING: Duration = Duration::from_secs(10);

/// Live numbers of one model, kept by its thread.
#[derive(Debug, Default, Clone)]
struct LaneStats {
    loaded: bool,
    cold_start_ms: f64,
    service_ms_per_unit: Option<f64>,
    batch_ms: Option<f64>,
    units_per_job: Option<f64>,
}

/// The mutable part of a lane, under its lock.
#[derive(Debug, Default)]
struct LaneState {
    queue: ModelQueue,
    /// Places promised to jobs being stored right now.
    reserved: usize,
    /// The batch running, with its jobs' cancellations.
    running: RunningBatch,
    stop: bool,
    stats: LaneStats,
}

/// One model: its queue and the thread that runs it.
pub(crate) struct Lane {
    model: Arc<dyn Model>,
    config: ModelConfig,
    state: Mutex<LaneState>,
    wake: Condvar,
}

impl Lane {
    fn lock(&self) -> MutexGuard<'_, LaneState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// State shared by the API, the model threads and the background tasks.
pub(crate) struct Shared {
    region: RegionId,
    /// This agent's instance of the region; request ids name it.
    instance: InstanceId,
    store: JobStore,
    ledger: Ledger,
    slots: SlotPool,
    hardware: Hardware,
    on_demand: OnDemandConfig,
    /// This instance's share of the region's pools (`None`: the whole pools).
    shares: Option<PoolShares>,
    retention: Duration,
    /// Free space the data directory keeps; new jobs are refused below it (0: no check).
    min_free_disk_bytes: u64,
    /// Whether the last look found the data disk short of free space.
    disk_short: AtomicBool,
    /// The catalog copy in force; `None` until the first one arrives.
    catalog: RwLock<Option<Arc<RegionCatalog>>>,
    jobs: Mutex<HashMap<String, watch::Sender<JobRecord>>>,
    lanes: BTreeMap<String, Arc<Lane>>,
    /// Finished jobs whose usage record is not in the journal yet (their inputs are kept).
    unbilled: Mutex<BTreeSet<String>>,
    /// Each tenant's jobs queued or running.
    tenants: TenantJobs,
    /// The idempotency keys of the jobs kept.
    keys: KeyIndex,
    draining: AtomicBool,
    next_seq: AtomicU64,
    metrics: Metrics,
}

impl Shared {
    fn table(&self) -> MutexGuard<'_, HashMap<String, watch::Sender<JobRecord>>> {
        self.jobs.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn record(&self, id: &str) -> Option<JobRecord> {
        self.table().get(id).map(|tx| tx.borrow().clone())
    }

    /// The catalog copy in force.
    fn catalog(&self) -> Option<Arc<RegionCatalog>> {
        self.catalog
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn unbilled(&self) -> MutexGuard<'_, BTreeSet<String>> {
        self.unbilled.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Stores `record` and publishes it to watchers.
    fn publish(&self, record: JobRecord) -> Result<(), StoreError> {
        let saved = self.store.save(&record);
        self.show(record);
        saved
    }

    /// Publishes `record` to watchers (already stored); a job that has just finished no
    /// longer counts for its tenant.
    fn show(&self, record: JobRecord) {
        let mut table = self.table();
        let was_open = table
            .get(&record.id)
            .is_some_and(|tx| !tx.borrow().state.is_final());
        if was_open && record.state.is_final() {
            self.tenants.finished(&record.tenant);
        }
        match table.get(&record.id) {
            Some(tx) => {
                tx.send_replace(record);
            }
            None => {
                table.insert(record.id.clone(), watch::Sender::new(record));
            }
        }
    }
}

/// The scheduler (cheap to clone).
#[derive(Clone)]
pub struct Scheduler {
    shared: Arc<Shared>,
    threads: Arc<Mutex<Vec<JoinHandle<()>>>>,
}

impl Scheduler {
    /// Opens the data directory (jobs and the usage ledger), restores queued jobs and
    /// results, bills finished jobs a crash left unbilled, and starts one thread per model.
    /// `models` must hold a model for every configured model id. It has no slots and refuses
    /// jobs until a catalog copy is installed ([`Scheduler::install_catalog`]).
    pub fn start(
        config: &AgentConfig,
        models: Vec<Arc<dyn Model>>,
        hardware: Hardware,
    ) -> anyhow::Result<Self> {
        let mut lanes = BTreeMap::new();
        for model_config in &config.models {
            let id = model_config.id.as_str();
            let model = models
                .iter()
                .find(|m| m.id() == id)
                .cloned()
                .ok_or_else(|| anyhow::anyhow!("no implementation for model {id}"))?;
            let lane = Lane {
                model,
                config: model_config.clone(),
                state: Mutex::new(LaneState::default()),
                wake: Condvar::new(),
            };
            lanes.insert(id.to_owned(), Arc::new(lane));
        }
        let instance = match &config.instance {
            Some(instance) => instance.clone(),
            None => crate::link::instance_id(&config.data_dir)?,
        };
        let shared = Arc::new(Shared {
            region: config.region.clone(),
            instance,
            store: JobStore::open(&config.data_dir)?,
            ledger: Ledger::open(&config.data_dir, &config.region)?,
            slots: SlotPool::default(),
            hardware,
            on_demand: config.on_demand,
            shares: config.pools.clone(),
            retention: config.result_retention,
            min_free_disk_bytes: config.min_free_disk_bytes,
            disk_short: AtomicBool::new(false),
            catalog: RwLock::new(None),
            jobs: Mutex::new(HashMap::new()),
            lanes,
            unbilled: Mutex::new(BTreeSet::new()),
            tenants: TenantJobs::default(),
            keys: KeyIndex::default(),
            draining: AtomicBool::new(false),
            next_seq: AtomicU64::new(1),
            metrics: Metrics::default(),
        });
        restore::restore(&shared)?;
        let mut threads = Vec::new();
        for lane in shared.lanes.values() {
            let (shared, lane) = (shared.clone(), lane.clone());
            let name = format!("model {}", lane.config.id);
            threads.push(
                std::thread::Builder::new()
                    .name(name)
                    .spawn(move || worker::run_lane(&shared, &lane))?,
            );
        }
        Ok(Self {
            shared,
            threads: Arc::new(Mutex::new(threads)),
        })
    }

    /// The region id.
    pub fn region(&self) -> &RegionId {
        &self.shared.region
    }

    /// This agent's instance id within its region.
    pub fn instance(&self) -> &InstanceId {
        &self.shared.instance
    }

    /// Accepts a job: checks the input, stores it, queues it. Blocking work runs on a
    /// blocking thread.
    pub async fn submit(
        &self,
        tenant: &TenantId,
        model: &str,
        priority: Priority,
        input: Value,
    ) -> Result<JobRecord, SubmitError> {
        self.submit_with(tenant, model, priority, input, Terms::default())
            .await
    }

    /// Accepts a job under `terms`: the tenant's job bound (checked and counted at once) and
    /// the idempotency key (a key already used for the same submission answers with that
    /// job, and creates none).
    pub async fn submit_with(
        &self,
        tenant: &TenantId,
        model: &str,
        priority: Priority,
        input: Value,
        terms: Terms,
    ) -> Result<JobRecord, SubmitError> {
        let shared = self.shared.clone();
        let (tenant, model) = (tenant.clone(), model.to_owned());
        tokio::task::spawn_blocking(move || {
            admission::submit(&shared, &tenant, &model, priority, input, &terms)
        })
        .await
        .map_err(|e| {
            SubmitError::Storage(StoreError::File(contract::fs::FileError {
                action: "run",
                path: "submit".into(),
                source: std::io::Error::other(e.to_string()),
            }))
        })?
    }

    /// Whether a job of `model` would be refused now, and why (before its body is read).
    pub fn refusal(&self, model: &str) -> Option<Refusal> {
        admission::refusal(&self.shared, model).err()
    }

    /// Whether `key` names a job of `tenant` (a submission with it is answered with that
    /// job even while new jobs are refused).
    pub fn knows_key(&self, tenant: &str, key: &IdempotencyKey) -> bool {
        self.shared.keys.contains(tenant, key)
    }

    /// Jobs of `tenant` queued or running.
    pub fn tenant_jobs(&self, tenant: &str) -> u32 {
        self.shared.tenants.count(tenant)
    }

    /// A job's record when `tenant` owns it.
    pub fn get(&self, tenant: &str, id: &str) -> Option<JobRecord> {
        self.shared.record(id).filter(|r| r.tenant == tenant)
    }

    /// The jobs that name a webhook (at start, to resume their deliveries).
    pub fn with_webhooks(&self) -> Vec<String> {
        self.shared
            .table()
            .iter()
            .filter(|(_, tx)| tx.borrow().webhook.is_some())
            .map(|(id, _)| id.clone())
            .collect()
    }

    /// The tenant that owns job `id` (a signed file link names a job, not its tenant).
    pub fn owner(&self, id: &str) -> Option<String> {
        self.shared.record(id).map(|r| r.tenant.to_string())
    }

    /// A job's record and its queue position (0 = next) when `tenant` owns it.
    pub fn status(&self, tenant: &str, id: &str) -> Option<(JobRecord, Option<usize>)> {
        let record = self.get(tenant, id)?;
        let position = match record.state {
            JobState::InQueue => self
                .shared
                .lanes
                .get(&record.model)
                .and_then(|lane| lane.lock().queue.position(id)),
            _ => None,
        };
        Some((record, position))
    }

    /// Follows a job's record as it changes, when `tenant` owns it.
    pub fn watch(&self, tenant: &str, id: &str) -> Option<watch::Receiver<JobRecord>> {
        let table = self.shared.table();
        let tx = table.get(id)?;
        (tx.borrow().tenant == tenant).then(|| tx.subscribe())
    }

    /// Cancels a job: a queued one at once, a running one at its model's next safe point.
    pub async fn cancel(&self, tenant: &str, id: &str) -> Result<Cancellation, CancelError> {
        let shared = self.shared.clone();
        let (tenant, id) = (tenant.to_owned(), id.to_owned());
        let found = {
            let (shared, tenant, id) = (shared.clone(), tenant.clone(), id.clone());
            tokio::task::spawn_blocking(move || admission::cancel(&shared, &tenant, &id))
                .await
                .map_err(|_| CancelError::NotFound)??
        };
        match found {
            Some(done) => Ok(done),
            // Its final record is being stored: answer with it.
            None => {
                let mut rx = self.watch(&tenant, &id).ok_or(CancelError::NotFound)?;
                let settled = tokio::time::timeout(SETTLING, rx.wait_for(|r| r.state.is_final()))
                    .await
                    .ok()
                    .and_then(Result::ok)
                    .map(|r| r.clone());
                let record = settled
                    .or_else(|| shared.record(&id))
                    .ok_or(CancelError::NotFound)?;
                admission::finished(record)
            }
        }
    }

    /// An output file of a job `tenant` owns.
    pub async fn file(&self, tenant: &str, id: &str, name: &str) -> Option<Vec<u8>> {
        self.get(tenant, id)?;
        let store = self.shared.store.clone();
        let (id, name) = (id.to_owned(), name.to_owned());
        tokio::task::spawn_blocking(move || store.read_file(&id, &name))
            .await
            .ok()
            .flatten()
    }

    /// Refuses new jobs from now on.
    pub fn start_draining(&self) {
        self.shared.draining.store(true, Ordering::SeqCst);
    }

    /// Whether the agent is draining.
    pub fn is_draining(&self) -> bool {
        self.shared.draining.load(Ordering::SeqCst)
    }

    /// Whether no job is queued or running.
    pub fn is_idle(&self) -> bool {
        self.shared.lanes.values().all(|lane| {
            let state = lane.lock();
            state.queue.is_empty() && state.running.is_empty() && state.reserved == 0
        })
    }

    /// Stops the model threads once their current batch is done (queued jobs stay queued on
    /// disk and resume at the next start) and waits for them.
    pub async fn stop(&self) {
        for lane in self.shared.lanes.values() {
            lane.lock().stop = true;
            lane.wake.notify_all();
        }
        let threads = std::mem::take(&mut *self.threads.lock().unwrap_or_else(|e| e.into_inner()));
        let joined = tokio::task::spawn_blocking(move || {
            for thread in threads {
                if thread.join().is_err() {
                    tracing::error!("a model thread panicked");
                }
            }
        });
        let _ = joined.await;
    }

    /// Deletes results older than the retention time (never a job not yet billed) and
    /// retries billing jobs whose usage record could not be journaled; returns how many
    /// results were deleted.
    pub async fn sweep_expired(&self) -> usize {
        let shared = self.shared.clone();
        tokio::task::spawn_blocking(move || {
            billing::retry_unbilled(&shared);
            restore::sweep(&shared, now_ms())
        })
        .await
        .unwrap_or(0)
    }

    /// The usage ledger.
    pub fn ledger(&self) -> &Ledger {
        &self.shared.ledger
    }

    /// What a heartbeat reports: slots, the queues of the models served now, each tenant's
    /// jobs queued or running, the slots served per pool (this instance's share, or the
    /// whole pools; none before a catalog copy) and the result retention.
    pub fn report(&self) -> AgentReport {
        let counts = self.shared.slots.counts();
        let catalog = self.shared.catalog();
        let models = self
            .shared
            .lanes
            .iter()
            .filter(|(_, lane)| catalog_copy::serves(catalog.as_deref(), lane))
            .map(|(id, lane)| (id.clone(), model_report(lane)))
            .collect();
        AgentReport {
            healthy: true,
            draining: self.is_draining(),
            free_reserved: counts.free_reserved,
            free_on_demand: counts.free_on_demand,
            on_demand_startable: counts.on_demand_startable,
            on_demand_start_ms: self
                .shared
                .slots
                .on_demand_start()
                .map(|d| d.as_secs_f64() * 1000.0),
            models,
            catalog_revision: catalog.as_ref().map(|c| c.revision),
            tenant_jobs: self.shared.tenants.counts(),
            pools: catalog.map(|c| c.served()).unwrap_or_default(),
            result_retention_s: self.shared.retention.as_secs(),
            ..AgentReport::default()
        }
    }

    /// Prometheus text.
    pub fn metrics_text(&self) -> String {
        let counts = self.shared.slots.counts();
        let gauges = Gauges {
            models: self
                .shared
                .lanes
                .iter()
                .map(|(id, lane)| {
                    let state = lane.lock();
                    (
                        id.clone(),
                        state.queue.len(),
                        state.running.len(),
                        state.stats.loaded,
                    )
                })
                .collect(),
            slots: (
                counts.busy,
                counts.free_reserved,
                counts.free_on_demand,
                counts.on_demand_startable,
            ),
            unbilled: self.shared.unbilled().len(),
            usage_batch_pending: self.shared.ledger.has_outbox(),
            catalog_revision: self.shared.catalog().map(|c| c.revision),
            draining: self.is_draining(),
        };
        self.shared
            .metrics
            .render(self.shared.region.as_str(), &gauges)
    }

    /// The counters, for the API to count responses.
    pub fn metrics(&self) -> &Metrics {
        &self.shared.metrics
    }
}

fn model_report(lane: &Lane) -> ModelReport {
    let state = lane.lock();
    let depth = state.queue.len();
    let room = lane
        .config
        .queue_bound
        .saturating_sub(depth + state.reserved);
    let stats = &state.stats;
    let batches_ahead =
        depth.div_ceil(lane.config.max_batch) + usize::from(!state.running.is_empty());
    let mut expected_wait_ms = batches_ahead as f64 * stats.batch_ms.unwrap_or(0.0);
    if !stats.loaded {
        expected_wait_ms += stats.cold_start_ms;
    }
    ModelReport {
        queue_depth: u32::try_from(depth).unwrap_or(u32::MAX),
        queue_room: u32::try_from(room).unwrap_or(u32::MAX),
        expected_wait_ms,
        service_ms_per_unit: stats.service_ms_per_unit,
        loaded: stats.loaded,
        cold_start_ms: stats.cold_start_ms,
    }
}

#[cfg(test)]
mod admission_tests;
#[cfg(test)]
mod billing_tests;
#[cfg(test)]
mod tests;
