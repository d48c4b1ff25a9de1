//! A model's thread: waits for work, takes a slot (reserved first), takes a batch, loads the
//! model on the slot's device if it is not loaded there (the cold start, measured; refused
//! when the model does not fit the GPU's free memory: [`crate::gpu::memory`]), runs the
//! batch, stores the outputs and bills each job ([`super::billing`]), and unloads the model
//! from every device after its keep-alive without work. A job cancelled while it ran
//! ([`super::running`]) ends `CANCELLED` with no output and no usage record: nothing was
//! delivered, so nothing is billed.

use std::collections::BTreeMap;
use std::collections::btree_map::Entry;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::billing::{self, Work};
use super::queue::Queued;
use super::slots::SlotLease;
use super::{Lane, Shared};
use crate::gpu::Placement;
use crate::jobs::{JobError, JobRecord, JobState, now_ms};
use crate::serving::{LoadedModel, ModelError, ModelOutput, StopSignal, Stopped};

/// How often a thread waiting for a slot checks whether it should stop.
const SLOT_POLL: Duration = Duration::from_millis(100);
/// Weight of the newest sample in the moving averages.
const EWMA: f64 = 0.3;

/// The model as loaded on each device the thread has run it on.
type Loaded = BTreeMap<Placement, Box<dyn LoadedModel>>;

/// The thread's loop; returns when the lane is stopped.
pub(super) fn run_lane(shared: &Shared, lane: &Lane) {
    let mut loaded = Loaded::new();
    let mut last_used = Instant::now();
    while wait_for_work(lane, &mut loaded, last_used) {
        let Some(lease) = take_slot(shared, lane) else {
            continue;
        };
        if !lease.start_delay.is_zero() {
            tracing::info!(model = %lane.config.id, delay_ms = lease.start_delay.as_millis(), "starting an on-demand slot");
            std::thread::sleep(lease.start_delay);
        }
        let batch = {
            let mut state = lane.lock();
            let batch = state.queue.take_batch(lane.config.max_batch);
            state.running.start(batch.iter().map(|job| job.id.clone()));
            batch
        };
        if !batch.is_empty() {
            run_batch(shared, lane, &mut loaded, batch, &lease);
            last_used = Instant::now();
        }
        shared.slots.release(&lease);
    }
    if !loaded.is_empty() {
        loaded.clear();
        lane.lock().stats.loaded = false;
    }
}

/// Waits until a job is queued (true) or the lane is stopped (false), unloading the model
/// when it has been idle for its keep-alive.
fn wait_for_work(lane: &Lane, loaded: &mut Loaded, last_used: Instant) -> bool {
    let mut state = lane.lock();
    loop {
        if state.stop {
            return false;
        }
        if !state.queue.is_empty() {
            return true;
        }
        if !loaded.is_empty() {
            let idle = last_used.elapsed();
            if idle >= lane.config.keep_alive {
                loaded.clear();
                state.stats.loaded = false;
                tracing::info!(model = %lane.config.id, idle_s = idle.as_secs(), "model unloaded after its keep-alive");
                continue;
            }
            state = lane
                .wake
                .wait_timeout(state, lane.config.keep_alive - idle)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        } else {
            state = lane.wake.wait(state).unwrap_or_else(|e| e.into_inner());
        }
    }
}

/// Waits for a free slot; `None` when the lane was stopped meanwhile.
fn take_slot(shared: &Shared, lane: &Lane) -> Option<SlotLease> {
    loop {
        if let Some(lease) = shared.slots.acquire(SLOT_POLL) {
            return Some(lease);
        }
        if lane.lock().stop {
            return None;
        }
    }
}

fn run_batch(
    shared: &Shared,
    lane: &Lane,
    loaded: &mut Loaded,
    batch: Vec<Queued>,
    lease: &SlotLease,
) {
    let ids: Vec<String> = batch.iter().map(|job| job.id.clone()).collect();
    let units: Vec<f64> = batch.iter().map(|job| job.input.units).collect();
    let records: Vec<Option<JobRecord>> = ids.iter().map(|id| mark_started(shared, id)).collect();
    let results = run_on_model(shared, lane, loaded, batch, lease);
    let total_units: f64 = units.iter().sum();
    for (i, record) in records.into_iter().enumerate() {
        let Some(record) = record else { continue };
        let (outcome, elapsed) = results.get(i).cloned().unwrap_or_else(|| {
            let error = JobError {
                kind: "model_error".into(),
                message: "the model returned fewer outputs than inputs".into(),
            };
            (Outcome::Failed(error), Duration::ZERO)
        });
        // The batch's slot time, shared by units (equally when no job has any).
        let share = if total_units > 0.0 {
            units[i] / total_units
        } else {
            1.0 / ids.len() as f64
        };
        let work = Work {
            units: units[i],
            gpu_seconds: elapsed.as_secs_f64() * share,
            capacity: lease.capacity,
        };
        if lane.lock().running.settle(&record.id) {
            finish_cancelled(shared, record);
        } else {
            finish(shared, lane, record, outcome, work);
        }
    }
    // Jobs whose record was gone (none settled above) leave the batch too.
    let mut state = lane.lock();
    for id in &ids {
        state.running.settle(id);
    }
}

/// Loads the model if needed and runs the batch: one outcome per job, with the batch's run
/// time; all failed (and timed) when the model cannot be loaded or the batch overran. The
/// model gets a stop signal with the batch's deadline (its start plus the model's timeout)
/// and stops at its next safe point after it.
fn run_on_model(
    shared: &Shared,
    lane: &Lane,
    loaded: &mut Loaded,
    batch: Vec<Queued>,
    lease: &SlotLease,
) -> Vec<(Outcome, Duration)> {
    let jobs = batch.len();
    let model = match ensure_loaded(shared, lane, loaded, lease.device) {
        Ok(model) => model,
        Err(e) => {
            let error = JobError {
                kind: "model_error".into(),
                message: format!("load the model: {e}"),
            };
            return Outcome::Failed(error).repeat(jobs, Duration::ZERO);
        }
    };
    let units: Vec<f64> = batch.iter().map(|job| job.input.units).collect();
    let started = Instant::now();
    let stop = StopSignal::until(started + lane.config.timeout);
    lane.lock().running.arm(&stop);
    let results = model.run(batch.into_iter().map(|job| job.input).collect(), &stop);
    let elapsed = started.elapsed();
    let cancelled = stop.reason() == Some(Stopped::Cancelled);
    // A batch cut short says nothing about how long the model takes.
    if !cancelled {
        record_timing(lane, elapsed, &units);
    }
    let seconds = elapsed.as_secs_f64();
    let id = lane.config.id.as_str();
    shared
        .metrics
        .batch(id, jobs, lease.capacity, seconds, lease.price_per_hour);
    if !cancelled && (elapsed > lane.config.timeout || stop.reason() == Some(Stopped::TimedOut)) {
        return Outcome::Failed(timeout_error(lane.config.timeout)).repeat(jobs, elapsed);
    }
    results
        .into_iter()
        .map(|r| (Outcome::from(r), elapsed))
        .collect()
}

#[derive(Debug, Clone)]
enum Outcome {
    Done(ModelOutput),
    Failed(JobError),
}

impl Outcome {
    fn repeat(self, n: usize, elapsed: Duration) -> Vec<(Self, Duration)> {
        vec![(self, elapsed); n]
    }
}

impl From<Result<ModelOutput, ModelError>> for Outcome {
    fn from(result: Result<ModelOutput, ModelError>) -> Self {
        match result {
            Ok(output) => Self::Done(output),
            Err(e) => Self::Failed(JobError {
                kind: "model_error".into(),
                message: e.0,
            }),
        }
    }
}

fn timeout_error(timeout: Duration) -> JobError {
    JobError {
        kind: "timeout".into(),
        message: format!(
            "the job ran longer than its timeout of {} s",
            timeout.as_secs()
        ),
    }
}

fn mark_started(shared: &Shared, id: &str) -> Option<JobRecord> {
    let mut record = shared.record(id)?;
    record.state = JobState::InProgress;
    record.started_at_ms = Some(now_ms());
    record.attempts += 1;
    if let Err(e) = shared.publish(record.clone()) {
        tracing::error!(error = %e, job = id, "cannot store that a job started");
    }
    Some(record)
}

fn ensure_loaded<'a>(
    shared: &Shared,
    lane: &Lane,
    loaded: &'a mut Loaded,
    device: Placement,
) -> Result<&'a mut Box<dyn LoadedModel>, ModelError> {
    match loaded.entry(device) {
        Entry::Occupied(model) => Ok(model.into_mut()),
        Entry::Vacant(slot) => Ok(slot.insert(load(shared, lane, device)?)),
    }
}

/// Loads the model on `device` (the cold start, measured), unless it does not fit the
/// device's free memory.
fn load(
    shared: &Shared,
    lane: &Lane,
    device: Placement,
) -> Result<Box<dyn LoadedModel>, ModelError> {
    shared
        .hardware
        .check_fit(&lane.config, device)
        .map_err(|e| {
            tracing::warn!(error = %e, "model not loaded");
            ModelError(e.to_string())
        })?;
    let started = Instant::now();
    let model = lane.model.load(&shared.hardware.device(device))?;
    let elapsed = started.elapsed();
    tracing::info!(model = %lane.config.id, %device, cold_start_ms = elapsed.as_secs_f64() * 1000.0, "model loaded");
    shared
        .metrics
        .cold_start(lane.config.id.as_str(), elapsed.as_secs_f64());
    let mut state = lane.lock();
    state.stats.loaded = true;
    state.stats.cold_start_ms = elapsed.as_secs_f64() * 1000.0;
    Ok(model)
}

fn record_timing(lane: &Lane, elapsed: Duration, units: &[f64]) {
    let ms = elapsed.as_secs_f64() * 1000.0;
    let total: f64 = units.iter().sum();
    let mut state = lane.lock();
    let stats = &mut state.stats;
    let blend =
        |old: Option<f64>, new: f64| Some(old.map_or(new, |o| o * (1.0 - EWMA) + new * EWMA));
    stats.batch_ms = blend(stats.batch_ms, ms);
    if total > 0.0 {
        stats.service_ms_per_unit = blend(stats.service_ms_per_unit, ms / total);
        stats.units_per_job = blend(stats.units_per_job, total / units.len() as f64);
    }
}

/// Settles a job's final state (its output files written first) and bills it.
fn finish(shared: &Shared, lane: &Lane, mut record: JobRecord, outcome: Outcome, work: Work) {
    record.finished_at_ms = Some(now_ms());
    match outcome {
        Outcome::Done(output) => match store_output(shared, &record.id, output) {
            Ok(output) => {
                record.state = JobState::Completed;
                record.output = Some(output);
            }
            Err(e) => {
                // The tenant sees why, not where: the path and OS error go to the log.
                tracing::error!(job = %record.id, error = %e, "cannot store a job's output");
                let message = "the agent could not store the output; its log has the details";
                fail(&mut record, "storage", message.into());
            }
        },
        Outcome::Failed(error) => {
            record.state = JobState::Failed;
            record.error = Some(error);
        }
    }
    record.usage = Some(billing::usage_record(shared, lane, &record, work));
    billing::close(shared, record);
}

/// Settles a job cancelled while it ran: `CANCELLED`, with no output (dropped even when the
/// model had finished it) and no usage record, then stored and published like any
/// finished job (its tenant's count drops).
fn finish_cancelled(shared: &Shared, mut record: JobRecord) {
    record.state = JobState::Cancelled;
    record.finished_at_ms = Some(now_ms());
    record.output = None;
    record.error = None;
    record.usage = None;
    tracing::info!(job = %record.id, "a running job stopped because it was cancelled");
    billing::close(shared, record);
}

fn fail(record: &mut JobRecord, kind: &str, message: String) {
    record.state = JobState::Failed;
    record.error = Some(JobError {
        kind: kind.into(),
        message,
    });
}

/// Writes the output files and returns the output JSON with a file object per file.
fn store_output(
    shared: &Shared,
    id: &str,
    output: ModelOutput,
) -> Result<Value, crate::jobs::store::StoreError> {
    let mut fields = output.fields;
    for file in output.files {
        shared.store.write_file(id, &file.name, &file.bytes)?;
        let mut object = json!({
            "name": file.name,
            "content_type": file.content_type,
            "url": format!("/v1/requests/{id}/files/{}", file.name),
            "bytes": file.bytes.len(),
        });
        if let Some((width, height)) = picture_size(&file.bytes) {
            object["width"] = json!(width);
            object["height"] = json!(height);
        }
        fields.insert(file.field, object);
    }
    Ok(Value::Object(fields))
}

/// The width and height a PNG (its `IHDR`) or GIF (its logical screen) header states, read
/// from the first bytes of a file the agent wrote itself.
fn picture_size(bytes: &[u8]) -> Option<(u32, u32)> {
    if bytes.starts_with(b"\x89PNG\r\n\x1a\n") && bytes.get(12..16) == Some(b"IHDR") {
        let word = |at: usize| Some(u32::from_be_bytes(bytes.get(at..at + 4)?.try_into().ok()?));
        return Some((word(16)?, word(20)?));
    }
    if bytes.starts_with(b"GIF8") {
        let half = |at: usize| {
            Some(u32::from(u16::from_le_bytes(
                bytes.get(at..at + 2)?.try_into().ok()?,
            )))
        };
        return Some((half(6)?, half(8)?));
    }
    None
}
