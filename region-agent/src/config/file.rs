//! The agent's configuration file as written (TOML). Every field says its unit and default;
//! unknown fields are rejected. [`super::AgentConfig::from_file`] validates it into the
//! runtime configuration.

use std::path::PathBuf;

use serde::Deserialize;

/// The whole file (see `examples/region-agent.toml`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentFile {
    /// Region id this agent serves, e.g. `eu-west` (required; `[a-z0-9-]`, as in the catalog).
    pub region: String,
    /// Address to listen on for the edge→agent API. Default `127.0.0.1:9100`.
    #[serde(default)]
    pub listen: Option<String>,
    /// Shared secret edges send in `x-meridian-edge-token` (required; at least 16 characters).
    pub edge_token: String,
    /// Directory for queued jobs, results and unsent usage (required; created if missing).
    pub data_dir: PathBuf,
    /// How long finished results (and their files) are kept, in seconds. Default 86400 (1 day).
    #[serde(default)]
    pub result_retention_s: Option<u64>,
    /// Largest request body accepted, in bytes. Default 33554432 (32 MiB).
    #[serde(default)]
    pub max_body_bytes: Option<u64>,
    /// How long `POST /v1/run/...` waits for its job, in milliseconds. Default 60000.
    #[serde(default)]
    pub sync_timeout_ms: Option<u64>,
    /// How long a draining agent (SIGTERM) keeps finishing queued and running jobs, in
    /// seconds, before it stops anyway (unfinished jobs stay queued on disk). Default 30.
    #[serde(default)]
    pub drain_timeout_s: Option<u64>,
    /// The control plane; leave the table out to serve without one.
    #[serde(default)]
    pub control_plane: Option<ControlPlaneFile>,
    /// GPU pools; their slots are shared by all models (at least one slot in all).
    #[serde(default)]
    pub pools: Vec<PoolFile>,
    /// The models this agent serves (at least one).
    #[serde(default)]
    pub models: Vec<ModelFile>,
}

/// `[control_plane]`: where heartbeats and usage go.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ControlPlaneFile {
    /// Base URL of the control plane, e.g. `http://10.0.0.2:7070` (required).
    pub url: String,
    /// The agent token of the control plane's agent API (required; at least 16 characters).
    pub agent_token: String,
    /// Time between heartbeats, in milliseconds. Default 1000.
    #[serde(default)]
    pub heartbeat_interval_ms: Option<u64>,
    /// Timeout of each call to the control plane, in milliseconds. Default 5000.
    #[serde(default)]
    pub request_timeout_ms: Option<u64>,
    /// Most usage records sent in one batch. Default 100 (the control plane takes ≤ 1000).
    #[serde(default)]
    pub usage_batch: Option<u32>,
}

/// `[[pools]]`: GPUs of one type. Each GPU is one slot: it runs one batch at a time.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolFile {
    /// Pool id, e.g. `h100` (required).
    pub id: String,
    /// GPU type, e.g. `H100` (informational; checked against discovered GPUs). Default `cpu`.
    #[serde(default)]
    pub gpu: Option<String>,
    /// Reserved slots (already paid for). Default 0.
    #[serde(default)]
    pub reserved: Option<u32>,
    /// Committed price of one reserved slot, money per hour. Default 0.
    #[serde(default)]
    pub reserved_price_per_hour: Option<f64>,
    /// Most on-demand slots (bought per use, after reserved ones are busy). Default 0.
    #[serde(default)]
    pub on_demand_max: Option<u32>,
    /// Price of one on-demand slot, money per hour. Default 0.
    #[serde(default)]
    pub on_demand_price_per_hour: Option<f64>,
    /// Time to start a stopped on-demand slot, in milliseconds. Default 0.
    #[serde(default)]
    pub on_demand_start_ms: Option<u64>,
    /// An idle on-demand slot stops after this long, in seconds. Default 60.
    #[serde(default)]
    pub on_demand_idle_stop_s: Option<u64>,
}

/// `[[models]]`: one model this agent serves.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelFile {
    /// Model id `owner/name`, one the agent knows (e.g. `meridian/esrgan-x2`) (required).
    pub id: String,
    /// Directory holding the model's weights, e.g. `models/esrgan-slim` (required unless
    /// `pipeline_test` is true).
    #[serde(default)]
    pub weights_dir: Option<PathBuf>,
    /// Serve the model's pipeline test model instead of real weights: toy networks with
    /// seeded random weights, built in code, that prove requests flow through the pipeline
    /// but draw noise, never pictures. Only `meridian/tiny-sd` has one. Default false.
    #[serde(default)]
    pub pipeline_test: Option<bool>,
    /// Most jobs waiting in this model's queue; more are refused with `queue_full`. Default 64.
    #[serde(default)]
    pub queue_bound: Option<u32>,
    /// Most jobs run together in one batch (1 = no batching). Default 1.
    #[serde(default)]
    pub max_batch: Option<u32>,
    /// An idle loaded model is unloaded after this long, in seconds (0 = right away). Default 300.
    #[serde(default)]
    pub keep_alive_s: Option<u64>,
    /// Longest a job may run once started, in seconds; later it fails with `timeout`. Default 120.
    #[serde(default)]
    pub timeout_s: Option<u64>,
    /// What the tenant is charged per unit of work (the model's unit), in the catalog's
    /// currency. Default 0.
    #[serde(default)]
    pub price_per_unit: Option<f64>,
}
