//! Jobs: their records (what is persisted and what the status and result calls show) and
//! the on-disk store ([`store::JobStore`]), idempotency keys ([`idempotency`]) and each
//! tenant's jobs queued or running ([`tenant_jobs`]). Request ids are
//! [`contract::RequestId`]s.

pub mod idempotency;
pub mod store;
pub mod tenant_jobs;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use control_plane_client::wire::UsageRecord;

pub use control_plane_client::wire::Capacity;

use crate::catalog::Quote;

/// How long an idempotency key keeps naming its job, in ms.
pub const IDEMPOTENCY_WINDOW_MS: u64 = contract::headers::IDEMPOTENCY_WINDOW_SECS * 1000;

/// A job's priority; higher ones run first, FIFO within one.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Priority {
    /// Runs before normal and low.
    High,
    /// The default.
    #[default]
    Normal,
    /// Runs when nothing else waits.
    Low,
}

/// Where a job is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum JobState {
    /// Waiting in its model's queue.
    InQueue,
    /// Running.
    InProgress,
    /// Finished with an output.
    Completed,
    /// Finished with an error.
    Failed,
    /// Cancelled while queued.
    Cancelled,
}

impl JobState {
    /// Whether the job has finished (completed, failed or cancelled).
    pub fn is_final(self) -> bool {
        matches!(self, Self::Completed | Self::Failed | Self::Cancelled)
    }

    /// The name in status answers and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::InQueue => "IN_QUEUE",
            Self::InProgress => "IN_PROGRESS",
            Self::Completed => "COMPLETED",
            Self::Failed => "FAILED",
            Self::Cancelled => "CANCELLED",
        }
    }
}

/// Why a job failed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobError {
    /// Kind: `timeout`, `model_error`, `input`, `restart`.
    #[serde(rename = "type")]
    pub kind: String,
    /// A sentence for a person.
    pub message: String,
}

/// Everything known about one job; persisted as `record.json` in its directory.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobRecord {
    /// Request id, `<region>.<32 hex>`.
    pub id: String,
    /// Tenant that created it.
    pub tenant: String,
    /// Model id.
    pub model: String,
    /// Region.
    pub region: String,
    /// Priority.
    pub priority: Priority,
    /// Acceptance order within the agent (FIFO within a priority, also across restarts).
    pub seq: u64,
    /// Current state.
    pub state: JobState,
    /// Unix ms when accepted.
    pub queued_at_ms: u64,
    /// Unix ms when it started running (last attempt).
    #[serde(default)]
    pub started_at_ms: Option<u64>,
    /// Unix ms when it finished.
    #[serde(default)]
    pub finished_at_ms: Option<u64>,
    /// Times it was started (more than one after a restart interrupted it).
    #[serde(default)]
    pub attempts: u32,
    /// Why it failed.
    #[serde(default)]
    pub error: Option<JobError>,
    /// The output (file objects already carry their URLs).
    #[serde(default)]
    pub output: Option<Value>,
    /// The price the job was accepted under, used when its model has left the catalog by
    /// the time it finishes.
    #[serde(default)]
    pub quote: Option<Quote>,
    /// What the job used and cost, once it finished on a slot: the per-job usage record,
    /// written here before it is appended to the usage journal.
    #[serde(default)]
    pub usage: Option<UsageRecord>,
    /// The client's idempotency key, when the job was submitted with one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency: Option<idempotency::Idempotency>,
    /// The webhook the job was submitted with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook: Option<Webhook>,
}

/// A webhook a job names: called from this region when the job finishes (and, when asked,
/// when it starts), in the shape of the surface it was submitted through.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Webhook {
    /// Where to.
    pub url: String,
    /// The payload's shape and signature scheme.
    pub style: WebhookStyle,
    /// Also call it when the job starts (Replicate's `start` event).
    #[serde(default)]
    pub on_start: bool,
    /// The public URL the job was submitted under, for the links in the payload.
    #[serde(default)]
    pub public_url: Option<String>,
}

/// Which surface's webhook a job names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WebhookStyle {
    /// The native result, Standard Webhooks signature.
    Native,
    /// fal's `{request_id, status, payload, error}`, fal's Ed25519 signature.
    Fal,
    /// Replicate's prediction, Standard Webhooks signature.
    Replicate,
}

impl JobRecord {
    /// The status JSON (API.md), with the queue position when queued.
    pub fn status_json(&self, queue_position: Option<usize>, now_ms: u64) -> Value {
        let queue_end = self.started_at_ms.or(self.finished_at_ms).unwrap_or(now_ms);
        let inference_ms = match (self.started_at_ms, self.finished_at_ms) {
            (Some(start), Some(end)) => Some(end.saturating_sub(start)),
            _ => None,
        };
        json!({
            "request_id": self.id,
            "model": self.model,
            "region": self.region,
            "status": self.state.as_str(),
            "queue_position": queue_position,
            "timings": {
                "queued_at_ms": self.queued_at_ms,
                "queue_ms": queue_end.saturating_sub(self.queued_at_ms),
                "inference_ms": inference_ms,
            },
            "error": self.error,
        })
    }

    /// The result JSON: the status plus output, units, cost (exact: `cost_nanos` billionths)
    /// and capacity.
    pub fn result_json(&self, now_ms: u64) -> Value {
        let mut value = self.status_json(None, now_ms);
        let usage = self.usage.as_ref();
        if let Value::Object(map) = &mut value {
            map.insert("output".into(), self.output.clone().unwrap_or(Value::Null));
            map.insert(
                "units".into(),
                json!(usage.map(|u| u.units_nanos.as_amount())),
            );
            map.insert(
                "cost".into(),
                json!(usage.map(|u| u.cost_nanos.as_amount())),
            );
            map.insert("cost_nanos".into(), json!(usage.map(|u| u.cost_nanos.0)));
            map.insert("capacity".into(), json!(usage.map(|u| u.capacity)));
            map.insert(
                "gpu_seconds".into(),
                json!(usage.map(|u| u.gpu_nanos.as_amount())),
            );
        }
        value
    }

    /// What the job cost (0 when it was charged nothing).
    pub fn cost(&self) -> contract::Nanos {
        self.usage
            .as_ref()
            .map_or(contract::Nanos::ZERO, |u| u.cost_nanos)
    }
}

/// Unix time in ms.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}
