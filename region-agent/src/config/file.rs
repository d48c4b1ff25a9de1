//! The agent's configuration file as written (TOML). Every field says its unit and default;
//! unknown fields are rejected with their line ([`contract::problems::from_toml_strict`]).
//! [`super::AgentConfig::from_file`] validates it into the runtime configuration.
//!
//! The file says which region the agent is, where its weights and data live, how to reach
//! the control plane (or which catalog file to read without one) and how to operate (queue
//! bounds, batching, keep-alive, timeouts, on-demand start and stop). Pools, GPU counts and
//! what jobs cost come only from the catalog; an instance of a region served by several
//! says only which share of the catalog's pools it serves (`[pools]`).

use std::collections::BTreeMap;
use std::path::PathBuf;

use contract::Secret;
use serde::Deserialize;
use serde::de::{Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

/// The whole file (see `examples/region-agent.toml`).
#[derive(Debug, Clone, Deserialize)]
pub struct AgentFile {
    /// Region id this agent serves, e.g. `eu-west` (required; the catalog's region id).
    pub region: String,
    /// Address to listen on for the edge→agent API. Default `127.0.0.1:9100`.
    #[serde(default)]
    pub listen: Option<String>,
    /// Shared secret edges send in `x-meridian-edge-token` (required; at least 16 characters).
    pub edge_token: Secret,
    /// Directory for queued jobs, results, the usage ledger and the last catalog copy
    /// (required; created if missing).
    pub data_dir: PathBuf,
    /// How long finished results (and their files) are kept, in seconds. Default 86400 (1 day).
    /// A job submitted with an `Idempotency-Key` is kept at least 24 h after it was accepted,
    /// so its key names it that long.
    #[serde(default)]
    pub result_retention_s: Option<u64>,
    /// How long per-job usage records are kept in the region, in days. Default 90. Records
    /// not yet sent to the control plane are kept however old they are.
    #[serde(default)]
    pub usage_retention_days: Option<u64>,
    /// Largest request body accepted, in bytes. Default 33554432 (32 MiB). A request whose
    /// `Content-Length` says more is answered `413` before its body is read.
    #[serde(default)]
    pub max_body_bytes: Option<u64>,
    /// Longest wait for a request's header, in milliseconds, counted from its first byte: a
    /// client that drips its header is disconnected. Default 10000.
    #[serde(default)]
    pub header_read_timeout_ms: Option<u64>,
    /// Longest wait for a request's whole body once its header has arrived, in
    /// milliseconds; a slower body is answered `408` and the connection closed. Default
    /// 60000.
    #[serde(default)]
    pub body_read_timeout_ms: Option<u64>,
    /// A connection waiting for a request (newly opened, or kept alive after an answer) that
    /// receives nothing for this long is closed, in milliseconds. Default 30000.
    #[serde(default)]
    pub keep_alive_idle_ms: Option<u64>,
    /// Most connections open at once; more are answered `503` and closed. Default 1024.
    #[serde(default)]
    pub max_connections: Option<u32>,
    /// Most connections open at once from one client address (edges open many; keep this
    /// well above an edge's connection pool). Default 256; at most `max_connections`.
    #[serde(default)]
    pub max_connections_per_client: Option<u32>,
    /// Free space the data directory must keep, in bytes: while it has less, new jobs are
    /// refused (`507`, `x-meridian-refused: insufficient_storage`) so accepted jobs can still
    /// store their records and results. 0 turns the check off. Default 1073741824 (1 GiB).
    #[serde(default)]
    pub min_free_disk_bytes: Option<u64>,
    /// How long `POST /v1/run/...` waits for its job, in milliseconds. Default 60000.
    #[serde(default)]
    pub sync_timeout_ms: Option<u64>,
    /// How long a draining agent (SIGTERM) keeps finishing queued and running jobs, in
    /// seconds, before it stops anyway (unfinished jobs stay queued on disk). Default 30.
    #[serde(default)]
    pub drain_timeout_s: Option<u64>,
    /// Time to start a stopped on-demand GPU, in milliseconds. Default 0.
    #[serde(default)]
    pub on_demand_start_ms: Option<u64>,
    /// An idle on-demand GPU stops after this long, in seconds. Default 60.
    #[serde(default)]
    pub on_demand_idle_stop_s: Option<u64>,
    /// A Meridian catalog file (TOML, as `control-plane validate-catalog` reads) to take this
    /// region's pools and the models' pricing from, for an agent without a control plane.
    /// Exactly one of `catalog_file` and `[control_plane]` is required.
    #[serde(default)]
    pub catalog_file: Option<PathBuf>,
    /// The control plane, which the agent takes its catalog from and reports to. Exactly one
    /// of `catalog_file` and `[control_plane]` is required.
    #[serde(default)]
    pub control_plane: Option<ControlPlaneFile>,
    /// How slots map onto this host's GPUs and how strictly the GPUs must match the
    /// catalog's pools. Optional; every field has a default.
    #[serde(default)]
    pub gpus: Option<GpusFile>,
    /// The models this agent has weights for (at least one). Each is served while the
    /// catalog places it in this region.
    #[serde(default)]
    pub models: Vec<ModelFile>,
    /// Media inputs given as `http(s)` URLs. Default: fetched, from the public internet only.
    #[serde(default)]
    pub input_urls: Option<InputUrlsFile>,
    /// This agent among its region's agents (a host name, say), unique within the region:
    /// each registers and heartbeats under its own lease. Default: an id made at the first
    /// start and kept in `<data_dir>/instance`.
    #[serde(default)]
    pub instance: Option<String>,
    /// Webhooks jobs name. Default: allowed, to the public internet only.
    #[serde(default)]
    pub webhooks: Option<WebhooksFile>,
    /// Where edges reach this instance, an `http(s)://host[:port]` URL, reported with every
    /// heartbeat so that edges send the region's jobs to each of its instances. Default:
    /// none reported; edges use the catalog's `endpoint` for the region.
    #[serde(default)]
    pub endpoint: Option<String>,
    /// This instance's share of its region's GPU pools, per catalog pool id, e.g.
    /// `h100 = { reserved = 1, on_demand = 0 }`: it serves `min(share, catalog's)` slots of
    /// each pool it names and none of the others. Default: the region's whole pools, as the
    /// region's only agent.
    #[serde(default)]
    pub pools: Option<PoolsFile>,
}

/// One pool's entry in `[pools]`: the slots of the catalog's pool this instance serves.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct PoolShareFile {
    /// Reserved slots (of the catalog's `reserved`). Default 0.
    #[serde(default)]
    pub reserved: Option<u32>,
    /// On-demand slots it may start (of the catalog's `on_demand_max`). Default 0.
    #[serde(default)]
    pub on_demand: Option<u32>,
}

/// `[pools]` as written: a table of pool id → [`PoolShareFile`]. The array of tables older
/// files wrote (`[[pools]]`, the region's pools with their prices) is read as entries that
/// do not belong here, so that each is refused as unknown with its line.
#[derive(Debug, Clone, Default)]
pub struct PoolsFile(pub BTreeMap<String, PoolShareFile>);

impl<'de> Deserialize<'de> for PoolsFile {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(PoolsVisitor)
    }
}

struct PoolsVisitor;

impl<'de> Visitor<'de> for PoolsVisitor {
    type Value = PoolsFile;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a table of pool id = { reserved = N, on_demand = M }")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<PoolsFile, A::Error> {
        let mut shares = BTreeMap::new();
        while let Some((pool, share)) = map.next_entry::<String, PoolShareFile>()? {
            shares.insert(pool, share);
        }
        Ok(PoolsFile(shares))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<PoolsFile, A::Error> {
        // Each element is reported as an unknown field.
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(PoolsFile::default())
    }
}

/// `[webhooks]`: the URLs jobs name to be called when they start or finish, delivered from
/// this region, signed, kept on disk until delivered and retried.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct WebhooksFile {
    /// Let jobs name a webhook; when false, a job that does is refused (422). Default true.
    #[serde(default)]
    pub enabled: Option<bool>,
    /// The deployment's webhook signing key: 32 bytes, made (mode 0600) when missing. Every
    /// agent of a deployment must hold the same file, so that each tenant's secret and the
    /// public key are the same in every region. Default `<data_dir>/keys/webhook-signing.key`.
    #[serde(default)]
    pub signing_key_file: Option<std::path::PathBuf>,
    /// Longest time for one try, in milliseconds. Default 10000.
    #[serde(default)]
    pub timeout_ms: Option<u64>,
    /// The wait before each try after the first, in milliseconds; a delivery is given up
    /// after the last. Default: 5 s, 30 s, 2 min, 5 min, 10 min, 20 min, 40 min, 1 h, 2 h
    /// (ten tries over 4 h 18 min).
    #[serde(default)]
    pub retry_delays_ms: Option<Vec<u64>>,
    /// Address blocks delivered to although the destination policy refuses them (as
    /// `[input_urls] allow`). Default none.
    #[serde(default)]
    pub allow: Vec<String>,
}

/// `[input_urls]`: media fields (`image`, `video`, `audio`) given as `http://` or `https://`
/// URLs, which the agent fetches before it accepts the job.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct InputUrlsFile {
    /// Fetch media given as URLs; when false, a job with one is refused (422). Default true.
    #[serde(default)]
    pub enabled: Option<bool>,
    /// Largest body fetched for one URL, in bytes: a larger one is refused (422) by its
    /// `Content-Length`, or as soon as more has arrived. Default: `max_body_bytes`.
    #[serde(default)]
    pub max_bytes: Option<u64>,
    /// Longest time for one URL, from resolving its host to the last byte of its body,
    /// redirects included, in milliseconds. Default 30000.
    #[serde(default)]
    pub timeout_ms: Option<u64>,
    /// Longest time to connect to one address, in milliseconds; at most `timeout_ms`.
    /// Default 5000 (or `timeout_ms` when less).
    #[serde(default)]
    pub connect_timeout_ms: Option<u64>,
    /// Most redirects followed for one URL (0: none). Default 5.
    #[serde(default)]
    pub max_redirects: Option<u32>,
    /// Address blocks fetched from although the destination policy refuses them (CIDR, e.g.
    /// `10.20.0.0/16`, or one address, e.g. `127.0.0.1`): loopback, private (RFC 1918,
    /// `fc00::/7`), shared (`100.64.0.0/10`), link-local, unspecified, multicast, broadcast,
    /// documentation and reserved ranges, and cloud metadata addresses (`169.254.169.254`,
    /// `fd00:ec2::254`) are refused, after DNS resolution and at every redirect. Default
    /// none.
    #[serde(default)]
    pub allow: Vec<String>,
}

/// `[gpus]`: the GPUs found at start (through NVIDIA's management library) against the
/// catalog's GPU pools, one slot per device (or per share of one), and the memory check
/// before a model is loaded on a GPU.
#[derive(Debug, Clone, Deserialize)]
pub struct GpusFile {
    /// Slots that share one GPU: each runs its own batches on it (1 to 16). A GPU pool of
    /// `n` slots needs `ceil(n / slots_per_device)` GPUs of its type. Default 1.
    #[serde(default)]
    pub slots_per_device: Option<u32>,
    /// Start even when the GPUs found do not match the catalog's GPU pools (fewer GPUs, or
    /// none of the pool's type): GPU slots then share the GPUs there are, or run on the CPU
    /// without any — for a CPU-only development stack. Without it such an agent refuses to
    /// start, and a live catalog copy that does not match is refused. Default false.
    #[serde(default)]
    pub accept_mismatch: Option<bool>,
    /// A model's GPU memory need is estimated as the size of the files in its `weights_dir`
    /// times this (at least 1; weights stored in 16 bits are widened, and a batch needs room
    /// for its activations). A model that does not fit a GPU's free memory is not loaded on
    /// it. Default 3.
    #[serde(default)]
    pub weights_memory_factor: Option<f64>,
    /// The NVIDIA management library opened at start to find the GPUs. Default
    /// `libnvidia-ml.so.1` (installed with the driver, found on the library path).
    #[serde(default)]
    pub nvml_library: Option<PathBuf>,
}

/// `[control_plane]`: where the catalog comes from and heartbeats and usage go.
#[derive(Debug, Clone, Deserialize)]
pub struct ControlPlaneFile {
    /// Base URL of the control plane, e.g. `http://10.0.0.2:7070` (required).
    pub url: String,
    /// The agent token of the control plane's agent API (required; at least 16 characters).
    /// The control plane also presents it when it reads this agent's usage records.
    pub agent_token: Secret,
    /// Time between heartbeats, in milliseconds. Default 1000.
    #[serde(default)]
    pub heartbeat_interval_ms: Option<u64>,
    /// Timeout of each call to the control plane, in milliseconds. Default 5000.
    #[serde(default)]
    pub request_timeout_ms: Option<u64>,
    /// Time between usage batches sent to the control plane, in milliseconds (tenants'
    /// month-to-date spend, which edges check budgets against, lags this much). Default
    /// 10000.
    #[serde(default)]
    pub usage_interval_ms: Option<u64>,
}

/// `[[models]]`: one model this agent has weights for.
#[derive(Debug, Clone, Deserialize)]
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
    /// ESRGAN models only (`meridian/esrgan-x2`, `-x4`): largest output image accepted, in
    /// pixels (width × height after upscaling); larger inputs are refused with 422. Default
    /// 1048576 × scale² (2048 × 2048 for ×2, 4096 × 4096 for ×4: 1024 × 1024 in, about a
    /// minute on two CPU cores).
    #[serde(default)]
    pub max_output_pixels: Option<u64>,
    /// Audio models only (`meridian/silero-vad`, `meridian/whisper-tiny-en`): longest audio
    /// accepted, in seconds; longer audio is refused with 422. Default 600 for silero-vad and
    /// 300 for whisper-tiny-en (region-agent/API.md): each well within the default
    /// `timeout_s` on two CPU cores. Raise `timeout_s` with it.
    #[serde(default)]
    pub max_audio_seconds: Option<u32>,
}
