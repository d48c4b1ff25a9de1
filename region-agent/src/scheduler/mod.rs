//! The scheduler: a bounded priority queue per model, one dedicated model thread per model
//! (it owns the loaded weights, loads them on first use and unloads them after the model's
//! keep-alive), shared slots (reserved before on-demand), batching, cancellation while
//! queued, per-job timeouts, persistence of every state change, and usage records.
//!
//! The async side ([`Scheduler::submit`], [`Scheduler::cancel`], …) only touches the queues
//! under short locks and does disk work on blocking threads; models never run on the async
//! runtime.

pub mod metrics;
pub mod queue;
mod restore;
pub mod slots;
mod worker;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use candle_core::Device;
use control_plane_client::wire::{AgentReport, ModelReport};
use serde_json::Value;
use tokio::sync::watch;

use self::metrics::{Gauges, Metrics};
use self::queue::{ModelQueue, Queued};
use self::slots::SlotPool;
use crate::config::{AgentConfig, ModelConfig};
use crate::jobs::store::{JobStore, StoreError};
use crate::jobs::{JobRecord, JobState, Priority, new_request_id, now_ms};
use crate::serving::{InputError, Model};
use crate::usage::UsageSpool;

/// Why a job was not accepted. Nothing was created.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The agent is draining.
    #[error("the agent is draining")]
    Draining,
    /// The model's queue is full.
    #[error("the model's queue is full")]
    QueueFull,
    /// This agent does not serve the model.
    #[error("this agent does not serve the model")]
    ModelNotServed,
}

impl Refusal {
    /// The `x-meridian-refused` value.
    pub fn reason(self) -> &'static str {
        match self {
            Self::Draining => "draining",
            Self::QueueFull => "queue_full",
            Self::ModelNotServed => "model_not_served",
        }
    }
}

/// Why [`Scheduler::submit`] did not accept a job.
#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    /// Refused before acceptance (the edge may try another region).
    #[error(transparent)]
    Refused(#[from] Refusal),
    /// The input is bad.
    #[error(transparent)]
    Input(#[from] InputError),
    /// The job could not be stored.
    #[error("store the job: {0}")]
    Storage(#[from] StoreError),
}

/// Why a cancellation did nothing.
#[derive(Debug, thiserror::Error)]
pub enum CancelError {
    /// No such job for this tenant.
    #[error("no such request")]
    NotFound,
    /// The job is running or finished.
    #[error("the request is {} and can no longer be cancelled", .0.state.as_str())]
    NotCancellable(Box<JobRecord>),
    /// The cancellation could not be stored.
    #[error("store the cancellation: {0}")]
    Storage(#[from] StoreError),
}

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
    /// Jobs running.
    running: usize,
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
    region: String,
    store: JobStore,
    usage: UsageSpool,
    slots: SlotPool,
    device: Device,
    retention: Duration,
    jobs: Mutex<HashMap<String, watch::Sender<JobRecord>>>,
    lanes: BTreeMap<String, Arc<Lane>>,
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

    /// Stores `record` and publishes it to watchers.
    fn publish(&self, record: JobRecord) -> Result<(), StoreError> {
        let saved = self.store.save(&record);
        let mut table = self.table();
        match table.get(&record.id) {
            Some(tx) => {
                tx.send_replace(record);
            }
            None => {
                table.insert(record.id.clone(), watch::Sender::new(record));
            }
        }
        saved
    }
}

/// The scheduler (cheap to clone).
#[derive(Clone)]
pub struct Scheduler {
    shared: Arc<Shared>,
    threads: Arc<Mutex<Vec<JoinHandle<()>>>>,
}

impl Scheduler {
    /// Opens the data directory, restores queued jobs and results, and starts one thread per
    /// model. `models` must hold a model for every configured model id.
    pub fn start(
        config: &AgentConfig,
        models: Vec<Arc<dyn Model>>,
        device: Device,
    ) -> anyhow::Result<Self> {
        let mut lanes = BTreeMap::new();
        for model_config in &config.models {
            let model = models
                .iter()
                .find(|m| m.id() == model_config.id)
                .cloned()
                .ok_or_else(|| {
                    anyhow::anyhow!("no implementation for model {}", model_config.id)
                })?;
            let lane = Lane {
                model,
                config: model_config.clone(),
                state: Mutex::new(LaneState::default()),
                wake: Condvar::new(),
            };
            lanes.insert(model_config.id.clone(), Arc::new(lane));
        }
        let shared = Arc::new(Shared {
            region: config.region.clone(),
            store: JobStore::open(&config.data_dir)?,
            usage: UsageSpool::open(&config.data_dir)?,
            slots: SlotPool::new(config.slots.clone()),
            device,
            retention: config.result_retention,
            jobs: Mutex::new(HashMap::new()),
            lanes,
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
    pub fn region(&self) -> &str {
        &self.shared.region
    }

    /// Accepts a job: checks the input, stores it, queues it. Blocking work runs on a
    /// blocking thread.
    pub async fn submit(
        &self,
        tenant: &str,
        model: &str,
        priority: Priority,
        input: Value,
    ) -> Result<JobRecord, SubmitError> {
        let shared = self.shared.clone();
        let (tenant, model) = (tenant.to_owned(), model.to_owned());
        tokio::task::spawn_blocking(move || {
            submit_blocking(&shared, &tenant, &model, priority, input)
        })
        .await
        .map_err(|e| {
            SubmitError::Storage(StoreError::Io {
                action: "run",
                path: "submit".into(),
                source: std::io::Error::other(e.to_string()),
            })
        })?
    }

    /// Whether this agent serves `model`.
    pub fn serves(&self, model: &str) -> bool {
        self.shared.lanes.contains_key(model)
    }

    /// A job's record when `tenant` owns it.
    pub fn get(&self, tenant: &str, id: &str) -> Option<JobRecord> {
        self.shared.record(id).filter(|r| r.tenant == tenant)
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

    /// Cancels a queued job.
    pub async fn cancel(&self, tenant: &str, id: &str) -> Result<JobRecord, CancelError> {
        let shared = self.shared.clone();
        let (tenant, id) = (tenant.to_owned(), id.to_owned());
        tokio::task::spawn_blocking(move || cancel_blocking(&shared, &tenant, &id))
            .await
            .map_err(|_| CancelError::NotFound)?
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
            state.queue.is_empty() && state.running == 0 && state.reserved == 0
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

    /// Deletes results older than the retention time; returns how many.
    pub async fn sweep_expired(&self) -> usize {
        let shared = self.shared.clone();
        tokio::task::spawn_blocking(move || restore::sweep(&shared, now_ms()))
            .await
            .unwrap_or(0)
    }

    /// Unacknowledged usage records.
    pub fn usage(&self) -> &UsageSpool {
        &self.shared.usage
    }

    /// What a heartbeat reports.
    pub fn report(&self) -> AgentReport {
        let counts = self.shared.slots.counts();
        let draining = self.is_draining();
        let models = self
            .shared
            .lanes
            .iter()
            .map(|(id, lane)| (id.clone(), model_report(lane)))
            .collect();
        AgentReport {
            healthy: true,
            draining,
            free_reserved: counts.free_reserved,
            free_on_demand: counts.free_on_demand,
            on_demand_startable: counts.on_demand_startable,
            on_demand_start_ms: self
                .shared
                .slots
                .on_demand_start()
                .map(|d| d.as_secs_f64() * 1000.0),
            models,
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
                        state.running,
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
            usage_pending: self.shared.usage.len(),
            draining: self.is_draining(),
        };
        self.shared.metrics.render(&self.shared.region, &gauges)
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
    let batches_ahead = depth.div_ceil(lane.config.max_batch) + usize::from(state.running > 0);
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

fn submit_blocking(
    shared: &Shared,
    tenant: &str,
    model: &str,
    priority: Priority,
    input: Value,
) -> Result<JobRecord, SubmitError> {
    let refuse = |refusal: Refusal| {
        shared.metrics.refused(refusal.reason());
        SubmitError::Refused(refusal)
    };
    if shared.draining.load(Ordering::SeqCst) {
        return Err(refuse(Refusal::Draining));
    }
    let lane = shared
        .lanes
        .get(model)
        .ok_or_else(|| refuse(Refusal::ModelNotServed))?;
    {
        let mut state = lane.lock();
        if state.queue.len() + state.reserved >= lane.config.queue_bound {
            return Err(refuse(Refusal::QueueFull));
        }
        state.reserved += 1;
    }
    let accepted = store_new_job(shared, lane, tenant, priority, &input);
    let mut state = lane.lock();
    state.reserved -= 1;
    let (record, job) = accepted?;
    state.queue.push(job);
    drop(state);
    lane.wake.notify_all();
    Ok(record)
}

/// Checks the input and stores the new job (its place in the queue is already reserved).
fn store_new_job(
    shared: &Shared,
    lane: &Lane,
    tenant: &str,
    priority: Priority,
    input: &Value,
) -> Result<(JobRecord, Queued), SubmitError> {
    let prepared = lane.model.prepare(input)?;
    let record = JobRecord {
        id: new_request_id(&shared.region),
        tenant: tenant.to_owned(),
        model: lane.config.id.clone(),
        region: shared.region.clone(),
        priority,
        seq: shared.next_seq.fetch_add(1, Ordering::SeqCst),
        state: JobState::InQueue,
        queued_at_ms: now_ms(),
        started_at_ms: None,
        finished_at_ms: None,
        attempts: 0,
        error: None,
        output: None,
        units: None,
        gpu_seconds: None,
        cost: None,
        capacity: None,
    };
    shared.store.create(&record, input)?;
    shared
        .table()
        .insert(record.id.clone(), watch::Sender::new(record.clone()));
    let job = Queued {
        id: record.id.clone(),
        priority,
        input: prepared,
    };
    Ok((record, job))
}

fn cancel_blocking(shared: &Shared, tenant: &str, id: &str) -> Result<JobRecord, CancelError> {
    let record = shared
        .record(id)
        .filter(|r| r.tenant == tenant)
        .ok_or(CancelError::NotFound)?;
    let lane = shared.lanes.get(&record.model);
    let removed = lane.and_then(|lane| lane.lock().queue.remove(id));
    if removed.is_none() {
        let current = shared.record(id).unwrap_or(record);
        return Err(CancelError::NotCancellable(Box::new(current)));
    }
    let mut record = shared.record(id).unwrap_or(record);
    record.state = JobState::Cancelled;
    record.finished_at_ms = Some(now_ms());
    shared.publish(record.clone())?;
    shared.store.drop_input(id);
    shared
        .metrics
        .job_finished(&record.model, JobState::Cancelled.as_str());
    Ok(record)
}

#[cfg(test)]
mod tests;
