//! Configuration: the TOML file ([`file::AgentFile`]) validated into [`AgentConfig`], whose
//! values are already checked (ids in the contract's grammar, positive bounds, exactly one
//! catalog source, at least one model). Every problem names its place and says how to fix
//! it ([`contract::ConfigProblems`]); all problems are reported at once.
//!
//! The configuration holds no pool, GPU count or price: those come from the catalog
//! ([`crate::catalog`]), either the control plane's or a catalog file's.

pub mod file;
mod input_urls;
mod instance;
mod webhooks;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use contract::problems::{ParseError, UnknownField};
use contract::{ConfigProblems, ModelId, RegionId, Secret};

use self::file::{AgentFile, ControlPlaneFile, GpusFile, ModelFile};

pub use self::input_urls::InputUrlsConfig;
pub use self::instance::PoolShares;
pub use self::webhooks::{DEFAULT_KEY_FILE, WebhooksConfig};

/// Whether a slot is reserved (already paid) or on-demand (paid per use).
pub use control_plane_client::wire::Capacity;

/// Why a configuration cannot be used (the contract's one configuration error).
pub use contract::ConfigError;

/// Where a model's weights come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelWeights {
    /// A directory of real weights (`weights_dir`).
    Dir(PathBuf),
    /// The model's pipeline test model, built in code with seeded random weights
    /// (`pipeline_test = true`): it tests the pipeline and draws noise, never pictures.
    PipelineTest,
}

/// One configured model's settings (it is served while the catalog places it here).
#[derive(Debug, Clone, PartialEq)]
pub struct ModelConfig {
    /// `owner/name`.
    pub id: ModelId,
    /// Its weights.
    pub weights: ModelWeights,
    /// Most queued jobs (≥ 1).
    pub queue_bound: usize,
    /// Most jobs per batch (≥ 1).
    pub max_batch: usize,
    /// Idle time before the model is unloaded.
    pub keep_alive: Duration,
    /// Longest run of one job (> 0).
    pub timeout: Duration,
    /// Largest output image, in pixels (> 0), for the models that take it (ESRGAN); `None`:
    /// the model's default.
    pub max_output_pixels: Option<u64>,
    /// Longest audio, in seconds (> 0), for the models that take it (audio models); `None`:
    /// the model's default.
    pub max_audio_seconds: Option<u32>,
}

/// The control-plane link's settings.
#[derive(Debug, Clone, PartialEq)]
pub struct ControlPlaneConfig {
    /// Base URL.
    pub url: String,
    /// Agent token: sent to the control plane, and expected from it on the internal API.
    pub agent_token: Secret,
    /// Time between heartbeats (> 0).
    pub heartbeat_interval: Duration,
    /// Timeout of each call (> 0).
    pub request_timeout: Duration,
    /// Time between usage batches (> 0).
    pub usage_interval: Duration,
}

/// Where the agent's catalog comes from: exactly one source.
#[derive(Debug, Clone, PartialEq)]
pub enum CatalogSource {
    /// A catalog file (no control plane); its revision is 0.
    File(PathBuf),
    /// The control plane, with the last copy kept in `<data_dir>/catalog.json`.
    ControlPlane(ControlPlaneConfig),
}

/// How on-demand GPUs start and stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OnDemandConfig {
    /// Time to start a stopped one.
    pub start_delay: Duration,
    /// An idle one stops after this long.
    pub idle_stop: Duration,
}

/// Deadlines and caps on the API's connections, against slow or greedy clients.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// Longest wait for a request's header from its first byte (> 0).
    pub header_read: Duration,
    /// Longest wait for a request's body once its header has arrived (> 0).
    pub body_read: Duration,
    /// A connection waiting for a request that receives nothing this long is closed (> 0).
    pub idle: Duration,
    /// Most connections open at once (≥ 1).
    pub max_total: usize,
    /// Most connections open at once from one client address (1 ..= `max_total`).
    pub max_per_client: usize,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        Self {
            header_read: Duration::from_millis(DEFAULT_HEADER_READ_MS),
            body_read: Duration::from_millis(DEFAULT_BODY_READ_MS),
            idle: Duration::from_millis(DEFAULT_IDLE_MS),
            max_total: DEFAULT_MAX_CONNECTIONS as usize,
            max_per_client: DEFAULT_MAX_PER_CLIENT as usize,
        }
    }
}

const DEFAULT_HEADER_READ_MS: u64 = 10_000;
const DEFAULT_BODY_READ_MS: u64 = 60_000;
const DEFAULT_IDLE_MS: u64 = 30_000;
const DEFAULT_MAX_CONNECTIONS: u32 = 1024;
const DEFAULT_MAX_PER_CLIENT: u32 = 256;
/// Default free space the data directory keeps for accepted jobs: 1 GiB.
pub const DEFAULT_MIN_FREE_DISK_BYTES: u64 = 1 << 30;

/// The validated configuration the agent runs with.
#[derive(Debug, Clone, PartialEq)]
pub struct AgentConfig {
    /// Region id.
    pub region: RegionId,
    /// Listen address.
    pub listen: SocketAddr,
    /// The edges' shared secret.
    pub edge_token: Secret,
    /// Data directory.
    pub data_dir: PathBuf,
    /// How long results are kept.
    pub result_retention: Duration,
    /// How long per-job usage records are kept (once sent).
    pub usage_retention: Duration,
    /// Largest request body, in bytes.
    pub max_body_bytes: usize,
    /// Deadlines and caps on connections.
    pub connections: ConnectionLimits,
    /// Free space (bytes) the data directory keeps; new jobs are refused below it (0: off).
    pub min_free_disk_bytes: u64,
    /// How long a synchronous run waits.
    pub sync_timeout: Duration,
    /// How long draining may take.
    pub drain_timeout: Duration,
    /// On-demand start and stop.
    pub on_demand: OnDemandConfig,
    /// Where the catalog comes from.
    pub catalog: CatalogSource,
    /// How slots map onto the GPUs found.
    pub gpus: GpuConfig,
    /// Configured models.
    pub models: Vec<ModelConfig>,
    /// How media given as URLs is fetched.
    pub input_urls: InputUrlsConfig,
    /// How webhooks are delivered.
    pub webhooks: WebhooksConfig,
    /// This agent among its region's; `None`: the id kept in the data directory.
    pub instance: Option<contract::InstanceId>,
    /// Where edges reach this instance (reported); `None`: the catalog's region endpoint.
    pub endpoint: Option<String>,
    /// This instance's share of the region's pools; `None`: the whole pools.
    pub pools: Option<PoolShares>,
}

/// Default largest request body: 32 MiB.
pub const DEFAULT_MAX_BODY_BYTES: u64 = 32 << 20;
/// Default listen address.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:9100";
const MIN_TOKEN: usize = 16;
const DAY: Duration = Duration::from_secs(86_400);

/// Fields of older configurations that moved to the catalog, and what to do instead.
const MOVED_TO_CATALOG: &str = "remove it: pools, GPU counts and prices come from the catalog \
                                (the control plane's, or catalog_file without one); an instance \
                                serving a share of a pool says so in [pools], e.g. \
                                h100 = { reserved = 1, on_demand = 0 }";
/// What a pool's entry in `[pools]` may hold.
const SHARE_FIELDS: &str = "a pool's share has only reserved and on_demand (slots); the pool's \
                            size and prices come from the catalog";

impl AgentConfig {
    /// Reads and validates a configuration file. Relative paths in it (`data_dir`,
    /// `weights_dir`, `catalog_file`) are taken relative to the file's directory.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let mut config = Self::from_toml(&ConfigError::read(path)?)?;
        let base = path.parent().unwrap_or(Path::new("."));
        config.data_dir = base.join(&config.data_dir);
        if let CatalogSource::File(file) = &mut config.catalog {
            *file = base.join(&*file);
        }
        for model in &mut config.models {
            if let ModelWeights::Dir(dir) = &mut model.weights {
                *dir = base.join(&*dir);
            }
        }
        if let Some(file) = &mut config.webhooks.signing_key_file {
            *file = base.join(&*file);
        }
        Ok(config)
    }

    /// Parses and validates TOML text.
    pub fn from_toml(text: &str) -> Result<Self, ConfigError> {
        let file: AgentFile = contract::problems::from_toml_strict(text).map_err(|e| match e {
            ParseError::UnknownFields(fields) => ConfigError::Invalid(unknown(&fields)),
            syntax => ConfigError::Parse {
                path: None,
                source: syntax,
            },
        })?;
        Self::from_file(file)
    }

    /// Validates a parsed file.
    pub fn from_file(file: AgentFile) -> Result<Self, ConfigError> {
        let mut p = ConfigProblems::new();
        let region = region(&mut p, &file.region);
        token(&mut p, "edge_token", &file.edge_token);
        let listen = parse_listen(&mut p, file.listen.as_deref());
        if file.data_dir.as_os_str().is_empty() {
            p.add(
                "data_dir",
                "is empty",
                "name a directory the agent may write",
            );
        }
        let retention = positive(
            &mut p,
            "result_retention_s",
            file.result_retention_s,
            86_400,
        );
        let usage_days = positive(
            &mut p,
            "usage_retention_days",
            file.usage_retention_days,
            90,
        );
        let max_body = positive(
            &mut p,
            "max_body_bytes",
            file.max_body_bytes,
            DEFAULT_MAX_BODY_BYTES,
        );
        let input_urls = input_urls::input_urls(&mut p, file.input_urls.as_ref(), max_body);
        let webhooks = webhooks::webhooks(&mut p, file.webhooks.as_ref());
        let instance = file.instance.as_deref().and_then(|id| {
            contract::InstanceId::new(id)
                .map_err(|e| p.add("instance", e.to_string(), "e.g. instance = \"gpu-host-3\""))
                .ok()
        });
        let endpoint = instance::endpoint(&mut p, file.endpoint.as_deref());
        let pools = instance::pools(&mut p, file.pools.as_ref());
        let sync_timeout = positive(&mut p, "sync_timeout_ms", file.sync_timeout_ms, 60_000);
        let connections = connection_limits(&mut p, &file);
        let catalog = catalog_source(&mut p, &file);
        let models = models(&mut p, &file.models);
        let gpus = gpus(&mut p, file.gpus.as_ref());
        let on_demand = OnDemandConfig {
            start_delay: Duration::from_millis(file.on_demand_start_ms.unwrap_or(0)),
            idle_stop: Duration::from_secs(file.on_demand_idle_stop_s.unwrap_or(60)),
        };
        // Every value is present when no problem was found.
        let (Some(region), Some(catalog), true) = (region, catalog, p.is_empty()) else {
            return Err(ConfigError::Invalid(p));
        };
        Ok(Self {
            region,
            listen,
            edge_token: file.edge_token,
            data_dir: file.data_dir,
            result_retention: Duration::from_secs(retention),
            usage_retention: DAY.saturating_mul(u32::try_from(usage_days).unwrap_or(u32::MAX)),
            max_body_bytes: usize::try_from(max_body).unwrap_or(usize::MAX),
            connections,
            min_free_disk_bytes: file
                .min_free_disk_bytes
                .unwrap_or(DEFAULT_MIN_FREE_DISK_BYTES),
            sync_timeout: Duration::from_millis(sync_timeout),
            drain_timeout: Duration::from_secs(file.drain_timeout_s.unwrap_or(30)),
            on_demand,
            catalog,
            gpus,
            models,
            input_urls,
            webhooks,
            instance,
            endpoint,
            pools,
        })
    }

    /// The settings of model `id`.
    pub fn model(&self, id: &str) -> Option<&ModelConfig> {
        self.models.iter().find(|m| m.id.as_str() == id)
    }

    /// The control plane, when the catalog comes from one.
    pub fn control_plane(&self) -> Option<&ControlPlaneConfig> {
        match &self.catalog {
            CatalogSource::ControlPlane(cp) => Some(cp),
            CatalogSource::File(_) => None,
        }
    }
}

/// Unknown fields as problems; fields that moved to the catalog say so.
fn unknown(fields: &[UnknownField]) -> ConfigProblems {
    let mut p = ConfigProblems::new();
    for field in fields {
        let name = field.place.rsplit('.').next().unwrap_or(&field.place);
        let share = field.place.starts_with("pools.");
        let moved = field.place.starts_with("pools[")
            || name.contains("price")
            || matches!(name, "reserved" | "on_demand_max");
        let line = field
            .line
            .map(|l| format!(" (line {l})"))
            .unwrap_or_default();
        let fix = if share {
            SHARE_FIELDS
        } else if moved {
            MOVED_TO_CATALOG
        } else {
            "remove it or check its spelling"
        };
        p.add(&field.place, format!("unknown field `{name}`{line}"), fix);
    }
    p
}

fn region(p: &mut ConfigProblems, value: &str) -> Option<RegionId> {
    match RegionId::new(value) {
        Ok(id) => Some(id),
        Err(e) => {
            p.add(
                "region",
                e.to_string(),
                "write the region's id as the catalog names it",
            );
            None
        }
    }
}

fn token(p: &mut ConfigProblems, place: &str, value: &Secret) {
    let value = value.expose();
    if value.len() < MIN_TOKEN {
        p.add(
            place,
            format!("the token has {} characters", value.len()),
            format!("use a random secret of at least {MIN_TOKEN} characters"),
        );
    }
}

/// `value` (or `default`), which must not be 0.
fn positive(p: &mut ConfigProblems, place: &str, value: Option<u64>, default: u64) -> u64 {
    let value = value.unwrap_or(default);
    if value == 0 {
        p.add(place, "is 0", format!("set 1 or more (default {default})"));
    }
    value
}

fn connection_limits(p: &mut ConfigProblems, file: &AgentFile) -> ConnectionLimits {
    let ms = |p: &mut ConfigProblems, place: &str, value: Option<u64>, default: u64| {
        Duration::from_millis(positive(p, place, value, default))
    };
    let header_read = ms(
        p,
        "header_read_timeout_ms",
        file.header_read_timeout_ms,
        DEFAULT_HEADER_READ_MS,
    );
    let body_read = ms(
        p,
        "body_read_timeout_ms",
        file.body_read_timeout_ms,
        DEFAULT_BODY_READ_MS,
    );
    let idle = ms(
        p,
        "keep_alive_idle_ms",
        file.keep_alive_idle_ms,
        DEFAULT_IDLE_MS,
    );
    let max_total = positive(
        p,
        "max_connections",
        file.max_connections.map(u64::from),
        u64::from(DEFAULT_MAX_CONNECTIONS),
    );
    let max_per_client = positive(
        p,
        "max_connections_per_client",
        file.max_connections_per_client.map(u64::from),
        u64::from(DEFAULT_MAX_PER_CLIENT).min(max_total),
    );
    if max_per_client > max_total {
        p.add(
            "max_connections_per_client",
            format!("{max_per_client} is more than max_connections ({max_total})"),
            "set it to max_connections or less",
        );
    }
    ConnectionLimits {
        header_read,
        body_read,
        idle,
        max_total: usize::try_from(max_total).unwrap_or(usize::MAX),
        max_per_client: usize::try_from(max_per_client).unwrap_or(usize::MAX),
    }
}

fn parse_listen(p: &mut ConfigProblems, listen: Option<&str>) -> SocketAddr {
    let fallback = SocketAddr::from(([127, 0, 0, 1], 9100));
    match listen.unwrap_or(DEFAULT_LISTEN).parse() {
        Ok(address) => address,
        Err(_) => {
            p.add(
                "listen",
                format!("{:?} is not an address", listen.unwrap_or_default()),
                "write IP:PORT, e.g. 0.0.0.0:9100",
            );
            fallback
        }
    }
}

fn catalog_source(p: &mut ConfigProblems, file: &AgentFile) -> Option<CatalogSource> {
    match (&file.catalog_file, &file.control_plane) {
        (Some(path), None) if path.as_os_str().is_empty() => {
            p.add(
                "catalog_file",
                "is empty",
                "name a Meridian catalog file (TOML)",
            );
            None
        }
        (Some(path), None) => Some(CatalogSource::File(path.clone())),
        (None, Some(cp)) => Some(CatalogSource::ControlPlane(control_plane(p, cp))),
        (Some(_), Some(_)) => {
            p.add(
                "catalog_file",
                "catalog_file and [control_plane] are both set",
                "remove catalog_file: with a control plane the agent takes its catalog from it",
            );
            None
        }
        (None, None) => {
            p.add(
                "control_plane",
                "neither [control_plane] nor catalog_file is set: the agent has no catalog \
                 to take its pools and prices from",
                "add a [control_plane] table with url and agent_token, or set catalog_file \
                 to a Meridian catalog (e.g. examples/catalog.toml) to serve without one",
            );
            None
        }
    }
}

fn control_plane(p: &mut ConfigProblems, c: &ControlPlaneFile) -> ControlPlaneConfig {
    if !(c.url.starts_with("http://") || c.url.starts_with("https://")) {
        p.add(
            "control_plane.url",
            format!("{:?} is not an http(s) URL", c.url),
            "write e.g. http://10.0.0.2:7070",
        );
    }
    token(p, "control_plane.agent_token", &c.agent_token);
    let heartbeat = positive(
        p,
        "control_plane.heartbeat_interval_ms",
        c.heartbeat_interval_ms,
        1000,
    );
    let timeout = positive(
        p,
        "control_plane.request_timeout_ms",
        c.request_timeout_ms,
        5000,
    );
    let usage = positive(
        p,
        "control_plane.usage_interval_ms",
        c.usage_interval_ms,
        DEFAULT_USAGE_INTERVAL_MS,
    );
    ControlPlaneConfig {
        url: c.url.clone(),
        agent_token: c.agent_token.clone(),
        heartbeat_interval: Duration::from_millis(heartbeat),
        request_timeout: Duration::from_millis(timeout),
        usage_interval: Duration::from_millis(usage),
    }
}

/// Default time between usage batches: each batch rewrites its day's totals in the store, so
/// sending every 10 s rather than every heartbeat keeps the store's write load a tenth, while
/// tenants' month-to-date spend (the edges' budget check) stays at most 10 s behind.
const DEFAULT_USAGE_INTERVAL_MS: u64 = 10_000;

fn models(p: &mut ConfigProblems, models: &[ModelFile]) -> Vec<ModelConfig> {
    if models.is_empty() {
        p.add(
            "models",
            "no model is configured",
            "add a [[models]] table, e.g. id = \"meridian/esrgan-x2\"",
        );
    }
    models
        .iter()
        .enumerate()
        .filter_map(|(i, m)| model(p, i, m, &models[..i]))
        .collect()
}

fn model(
    p: &mut ConfigProblems,
    i: usize,
    m: &ModelFile,
    before: &[ModelFile],
) -> Option<ModelConfig> {
    let at = |field: &str| format!("models[{i}].{field}");
    let id = ModelId::new(&m.id)
        .map_err(|e| p.add(at("id"), e.to_string(), "write e.g. meridian/esrgan-x2"))
        .ok();
    if before.iter().any(|other| other.id == m.id) {
        p.add(
            at("id"),
            format!("{:?} appears twice", m.id),
            "list each model once",
        );
    }
    let queue_bound = positive(p, &at("queue_bound"), m.queue_bound.map(u64::from), 64);
    let max_batch = positive(p, &at("max_batch"), m.max_batch.map(u64::from), 1);
    let timeout = positive(p, &at("timeout_s"), m.timeout_s, 120);
    let weights = weights(p, i, m);
    if m.max_output_pixels == Some(0) {
        let fix = "set 1 or more, or remove it for the default (1024 × 1024 × scale²)";
        p.add(at("max_output_pixels"), "is 0", fix);
    }
    if m.max_audio_seconds == Some(0) {
        let fix = "set 1 or more, or remove it for the model's default";
        p.add(at("max_audio_seconds"), "is 0", fix);
    }
    Some(ModelConfig {
        id: id?,
        weights,
        queue_bound: usize::try_from(queue_bound).unwrap_or(usize::MAX),
        max_batch: usize::try_from(max_batch).unwrap_or(usize::MAX),
        keep_alive: Duration::from_secs(m.keep_alive_s.unwrap_or(300)),
        timeout: Duration::from_secs(timeout),
        max_output_pixels: m.max_output_pixels,
        max_audio_seconds: m.max_audio_seconds,
    })
}

fn weights(p: &mut ConfigProblems, i: usize, m: &ModelFile) -> ModelWeights {
    match (&m.weights_dir, m.pipeline_test.unwrap_or(false)) {
        (Some(dir), false) if dir.as_os_str().is_empty() => {
            p.add(
                format!("models[{i}].weights_dir"),
                "is empty",
                "name the directory of the model's weights",
            );
            ModelWeights::Dir(dir.clone())
        }
        (Some(dir), false) => ModelWeights::Dir(dir.clone()),
        (None, true) => ModelWeights::PipelineTest,
        (Some(dir), true) => {
            p.add(
                format!("models[{i}].pipeline_test"),
                format!(
                    "pipeline_test = true and weights_dir = {:?} are both set",
                    dir.display().to_string()
                ),
                "remove weights_dir to serve the pipeline test model (random weights), or \
                 pipeline_test to serve the weights in weights_dir",
            );
            ModelWeights::PipelineTest
        }
        (None, false) => {
            p.add(
                format!("models[{i}].weights_dir"),
                "is missing",
                "name the directory of the model's weights (scripts/fetch-models writes \
                 esrgan-slim and silero-vad), or set pipeline_test = true where the model has \
                 a pipeline test model (meridian/tiny-sd)",
            );
            ModelWeights::Dir(PathBuf::new())
        }
    }
}

/// `[gpus]`, validated: how slots map onto the GPUs found and how strictly the GPUs must
/// match the catalog's pools ([`crate::gpu`]).
#[derive(Debug, Clone, PartialEq)]
pub struct GpuConfig {
    /// Slots sharing one GPU (1 ..= [`MAX_SLOTS_PER_DEVICE`]).
    pub slots_per_device: u32,
    /// Start (and take catalog copies) even when the GPUs found do not match the GPU pools.
    pub accept_mismatch: bool,
    /// A model's GPU memory need per byte of its weight files (≥ 1, finite).
    pub weights_memory_factor: f64,
    /// The NVIDIA management library to open.
    pub nvml_library: PathBuf,
}

/// Most slots that may share one GPU.
pub const MAX_SLOTS_PER_DEVICE: u32 = 16;
/// Default [`GpuConfig::weights_memory_factor`].
pub const DEFAULT_WEIGHTS_MEMORY_FACTOR: f64 = 3.0;
/// Default [`GpuConfig::nvml_library`]: the name the driver installs it under.
pub const DEFAULT_NVML_LIBRARY: &str = "libnvidia-ml.so.1";

impl Default for GpuConfig {
    fn default() -> Self {
        Self {
            slots_per_device: 1,
            accept_mismatch: false,
            weights_memory_factor: DEFAULT_WEIGHTS_MEMORY_FACTOR,
            nvml_library: PathBuf::from(DEFAULT_NVML_LIBRARY),
        }
    }
}

fn gpus(p: &mut ConfigProblems, file: Option<&GpusFile>) -> GpuConfig {
    let mut config = GpuConfig::default();
    let Some(file) = file else { return config };
    let shares = file.slots_per_device.unwrap_or(1);
    if !(1..=MAX_SLOTS_PER_DEVICE).contains(&shares) {
        p.add(
            "gpus.slots_per_device",
            format!("is {shares}"),
            format!("set 1 to {MAX_SLOTS_PER_DEVICE} (default 1: one slot per GPU)"),
        );
    }
    let factor = file
        .weights_memory_factor
        .unwrap_or(DEFAULT_WEIGHTS_MEMORY_FACTOR);
    if !(factor.is_finite() && factor >= 1.0) {
        p.add(
            "gpus.weights_memory_factor",
            format!("is {factor}"),
            format!("set a number of 1 or more (default {DEFAULT_WEIGHTS_MEMORY_FACTOR})"),
        );
    }
    if let Some(library) = &file.nvml_library {
        if library.as_os_str().is_empty() {
            p.add(
                "gpus.nvml_library",
                "is empty",
                format!("remove it to open {DEFAULT_NVML_LIBRARY}, or name the library's path"),
            );
        }
        config.nvml_library = library.clone();
    }
    config.slots_per_device = shares;
    config.accept_mismatch = file.accept_mismatch.unwrap_or(false);
    config.weights_memory_factor = factor;
    config
}

#[cfg(test)]
mod tests;
