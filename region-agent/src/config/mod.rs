//! Configuration: the TOML file ([`file::AgentFile`]) validated into [`AgentConfig`], whose
//! values are already checked (non-empty ids, positive bounds, at least one slot and model).
//! Every problem names its field and says how to fix it; all problems are reported at once.

pub mod file;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use self::file::{AgentFile, ControlPlaneFile, ModelFile, PoolFile};

/// One thing wrong with a configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigProblem {
    /// Where, e.g. `models[0].max_batch`.
    pub field: String,
    /// What is wrong.
    pub problem: String,
    /// How to fix it.
    pub fix: String,
}

impl std::fmt::Display for ConfigProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}; fix: {}", self.field, self.problem, self.fix)
    }
}

/// Why a configuration cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid TOML or has unknown or mistyped fields.
    #[error("parse the configuration: {0}")]
    Parse(String),
    /// The values break a rule.
    #[error("{} problem(s) in the configuration:\n{}", .0.len(), list(.0))]
    Invalid(Vec<ConfigProblem>),
}

fn list(problems: &[ConfigProblem]) -> String {
    problems
        .iter()
        .map(|p| format!("  - {p}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Whether a slot is reserved (already paid) or on-demand (paid per use).
pub use control_plane_client::wire::Capacity;

/// One slot: a GPU (or the CPU) that runs one batch at a time.
#[derive(Debug, Clone, PartialEq)]
pub struct SlotConfig {
    /// The pool it belongs to.
    pub pool: String,
    /// Reserved or on-demand.
    pub capacity: Capacity,
    /// Money per hour the slot costs while it runs (on-demand) or always (reserved).
    pub price_per_hour: f64,
    /// Time to start it when stopped (on-demand only; zero for reserved).
    pub start_delay: Duration,
    /// An idle on-demand slot stops after this long.
    pub idle_stop: Duration,
}

/// A GPU pool as configured.
#[derive(Debug, Clone, PartialEq)]
pub struct PoolConfig {
    /// Pool id.
    pub id: String,
    /// GPU type (`cpu` when not given).
    pub gpu: String,
    /// Reserved slots.
    pub reserved: u32,
    /// Most on-demand slots.
    pub on_demand_max: u32,
}

/// Where a model's weights come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelWeights {
    /// A directory of real weights (`weights_dir`).
    Dir(PathBuf),
    /// The model's pipeline test model, built in code with seeded random weights
    /// (`pipeline_test = true`): it tests the pipeline and draws noise, never pictures.
    PipelineTest,
}

/// One served model's settings.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelConfig {
    /// `owner/name`.
    pub id: String,
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
    /// Money per unit of work.
    pub price_per_unit: f64,
}

/// The control-plane link's settings.
#[derive(Debug, Clone, PartialEq)]
pub struct ControlPlaneConfig {
    /// Base URL.
    pub url: String,
    /// Agent token.
    pub agent_token: String,
    /// Time between heartbeats (> 0).
    pub heartbeat_interval: Duration,
    /// Timeout of each call (> 0).
    pub request_timeout: Duration,
    /// Most usage records per batch (1..=1000).
    pub usage_batch: usize,
}

/// The validated configuration the agent runs with.
#[derive(Debug, Clone, PartialEq)]
pub struct AgentConfig {
    /// Region id.
    pub region: String,
    /// Listen address.
    pub listen: SocketAddr,
    /// The edges' shared secret.
    pub edge_token: String,
    /// Data directory.
    pub data_dir: PathBuf,
    /// How long results are kept.
    pub result_retention: Duration,
    /// Largest request body, in bytes.
    pub max_body_bytes: usize,
    /// How long a synchronous run waits.
    pub sync_timeout: Duration,
    /// How long draining may take.
    pub drain_timeout: Duration,
    /// The control plane, when configured.
    pub control_plane: Option<ControlPlaneConfig>,
    /// Pools as configured.
    pub pools: Vec<PoolConfig>,
    /// Every slot, reserved ones first (in pool order), then on-demand ones.
    pub slots: Vec<SlotConfig>,
    /// Served models.
    pub models: Vec<ModelConfig>,
}

/// Default listen address.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:9100";
const MIN_TOKEN: usize = 16;

/// Collects problems while a file is checked.
#[derive(Default)]
struct Problems(Vec<ConfigProblem>);

impl Problems {
    fn add(
        &mut self,
        field: impl Into<String>,
        problem: impl Into<String>,
        fix: impl Into<String>,
    ) {
        self.0.push(ConfigProblem {
            field: field.into(),
            problem: problem.into(),
            fix: fix.into(),
        });
    }

    fn id(&mut self, field: &str, value: &str, what: &str) {
        let ok = !value.is_empty()
            && value.len() <= 64
            && value
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if !ok {
            self.add(
                field,
                format!("{value:?} is not a valid {what} id"),
                "use 1–64 characters of a–z, 0–9 and '-'",
            );
        }
    }

    fn token(&mut self, field: &str, value: &str) {
        if value.len() < MIN_TOKEN {
            self.add(
                field,
                format!("the token has {} characters", value.len()),
                format!("use a random secret of at least {MIN_TOKEN} characters"),
            );
        }
    }

    fn price(&mut self, field: &str, value: f64) {
        if !(value.is_finite() && value >= 0.0) {
            self.add(
                field,
                format!("{value} is not a price"),
                "set 0 or a positive amount",
            );
        }
    }

    fn positive(&mut self, field: &str, value: u64, unit: &str) {
        if value == 0 {
            self.add(field, "is 0", format!("set 1 {unit} or more"));
        }
    }
}

impl AgentConfig {
    /// Reads and validates a configuration file. Relative paths in it (`data_dir`,
    /// `weights_dir`) are taken relative to the file's directory.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let mut config = Self::from_toml(&text)?;
        let base = path.parent().unwrap_or(Path::new("."));
        config.data_dir = base.join(&config.data_dir);
        for model in &mut config.models {
            if let ModelWeights::Dir(dir) = &mut model.weights {
                *dir = base.join(&*dir);
            }
        }
        Ok(config)
    }

    /// Parses and validates TOML text.
    pub fn from_toml(text: &str) -> Result<Self, ConfigError> {
        let file: AgentFile =
            toml::from_str(text).map_err(|e| ConfigError::Parse(e.to_string()))?;
        Self::from_file(file)
    }

    /// Validates a parsed file.
    pub fn from_file(file: AgentFile) -> Result<Self, ConfigError> {
        let mut p = Problems::default();
        p.id("region", &file.region, "region");
        p.token("edge_token", &file.edge_token);
        let listen = parse_listen(&mut p, file.listen.as_deref());
        if file.data_dir.as_os_str().is_empty() {
            p.add(
                "data_dir",
                "is empty",
                "name a directory the agent may write",
            );
        }
        let retention = file.result_retention_s.unwrap_or(86_400);
        p.positive("result_retention_s", retention, "second");
        let max_body = file.max_body_bytes.unwrap_or(32 << 20);
        p.positive("max_body_bytes", max_body, "byte");
        let sync_timeout = file.sync_timeout_ms.unwrap_or(60_000);
        p.positive("sync_timeout_ms", sync_timeout, "millisecond");
        let control_plane = file
            .control_plane
            .as_ref()
            .map(|c| control_plane(&mut p, c));
        let (pools, slots) = pools(&mut p, &file.pools);
        let models = models(&mut p, &file.models);
        if !p.0.is_empty() {
            return Err(ConfigError::Invalid(p.0));
        }
        Ok(Self {
            region: file.region,
            listen,
            edge_token: file.edge_token,
            data_dir: file.data_dir,
            result_retention: Duration::from_secs(retention),
            max_body_bytes: usize::try_from(max_body).unwrap_or(usize::MAX),
            sync_timeout: Duration::from_millis(sync_timeout),
            drain_timeout: Duration::from_secs(file.drain_timeout_s.unwrap_or(30)),
            control_plane,
            pools,
            slots,
            models,
        })
    }

    /// The settings of model `id`.
    pub fn model(&self, id: &str) -> Option<&ModelConfig> {
        self.models.iter().find(|m| m.id == id)
    }
}

fn parse_listen(p: &mut Problems, listen: Option<&str>) -> SocketAddr {
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

fn control_plane(p: &mut Problems, c: &ControlPlaneFile) -> ControlPlaneConfig {
    if !(c.url.starts_with("http://") || c.url.starts_with("https://")) {
        p.add(
            "control_plane.url",
            format!("{:?} is not an http(s) URL", c.url),
            "write e.g. http://10.0.0.2:7070",
        );
    }
    p.token("control_plane.agent_token", &c.agent_token);
    let heartbeat = c.heartbeat_interval_ms.unwrap_or(1000);
    p.positive(
        "control_plane.heartbeat_interval_ms",
        heartbeat,
        "millisecond",
    );
    let timeout = c.request_timeout_ms.unwrap_or(5000);
    p.positive("control_plane.request_timeout_ms", timeout, "millisecond");
    let batch = c.usage_batch.unwrap_or(100);
    if !(1..=1000).contains(&batch) {
        p.add(
            "control_plane.usage_batch",
            format!("{batch} records per batch"),
            "set 1 to 1000",
        );
    }
    ControlPlaneConfig {
        url: c.url.clone(),
        agent_token: c.agent_token.clone(),
        heartbeat_interval: Duration::from_millis(heartbeat),
        request_timeout: Duration::from_millis(timeout),
        usage_batch: batch as usize,
    }
}

fn pools(p: &mut Problems, pools: &[PoolFile]) -> (Vec<PoolConfig>, Vec<SlotConfig>) {
    let mut configs = Vec::new();
    let (mut reserved, mut on_demand) = (Vec::new(), Vec::new());
    for (i, pool) in pools.iter().enumerate() {
        let at = |field: &str| format!("pools[{i}].{field}");
        p.id(&at("id"), &pool.id, "pool");
        if pools[..i].iter().any(|other| other.id == pool.id) {
            p.add(
                at("id"),
                format!("{:?} appears twice", pool.id),
                "give each pool its own id",
            );
        }
        let reserved_price = pool.reserved_price_per_hour.unwrap_or(0.0);
        let on_demand_price = pool.on_demand_price_per_hour.unwrap_or(0.0);
        p.price(&at("reserved_price_per_hour"), reserved_price);
        p.price(&at("on_demand_price_per_hour"), on_demand_price);
        let config = PoolConfig {
            id: pool.id.clone(),
            gpu: pool.gpu.clone().unwrap_or_else(|| "cpu".to_owned()),
            reserved: pool.reserved.unwrap_or(0),
            on_demand_max: pool.on_demand_max.unwrap_or(0),
        };
        let slot = |capacity, price_per_hour, start_delay| SlotConfig {
            pool: pool.id.clone(),
            capacity,
            price_per_hour,
            start_delay,
            idle_stop: Duration::from_secs(pool.on_demand_idle_stop_s.unwrap_or(60)),
        };
        for _ in 0..config.reserved {
            reserved.push(slot(Capacity::Reserved, reserved_price, Duration::ZERO));
        }
        let start = Duration::from_millis(pool.on_demand_start_ms.unwrap_or(0));
        for _ in 0..config.on_demand_max {
            on_demand.push(slot(Capacity::OnDemand, on_demand_price, start));
        }
        configs.push(config);
    }
    if reserved.len() + on_demand.len() == 0 {
        p.add(
            "pools",
            "no slot is configured",
            "add a [[pools]] table with reserved = 1 or more (or on_demand_max)",
        );
    }
    reserved.extend(on_demand);
    (configs, reserved)
}

fn models(p: &mut Problems, models: &[ModelFile]) -> Vec<ModelConfig> {
    if models.is_empty() {
        p.add(
            "models",
            "no model is served",
            "add a [[models]] table, e.g. id = \"meridian/esrgan-x2\"",
        );
    }
    models
        .iter()
        .enumerate()
        .map(|(i, m)| model(p, i, m, &models[..i]))
        .collect()
}

fn model(p: &mut Problems, i: usize, m: &ModelFile, before: &[ModelFile]) -> ModelConfig {
    let at = |field: &str| format!("models[{i}].{field}");
    let valid_id = m
        .id
        .split_once('/')
        .is_some_and(|(owner, name)| !owner.is_empty() && !name.is_empty() && !name.contains('/'));
    if !valid_id {
        p.add(
            at("id"),
            format!("{:?} is not owner/name", m.id),
            "write e.g. meridian/esrgan-x2",
        );
    }
    if before.iter().any(|other| other.id == m.id) {
        p.add(
            at("id"),
            format!("{:?} appears twice", m.id),
            "list each model once",
        );
    }
    let queue_bound = m.queue_bound.unwrap_or(64);
    p.positive(&at("queue_bound"), u64::from(queue_bound), "job");
    let max_batch = m.max_batch.unwrap_or(1);
    p.positive(&at("max_batch"), u64::from(max_batch), "job");
    let timeout = m.timeout_s.unwrap_or(120);
    p.positive(&at("timeout_s"), timeout, "second");
    let price = m.price_per_unit.unwrap_or(0.0);
    p.price(&at("price_per_unit"), price);
    let weights = weights(p, i, m);
    ModelConfig {
        id: m.id.clone(),
        weights,
        queue_bound: queue_bound as usize,
        max_batch: max_batch as usize,
        keep_alive: Duration::from_secs(m.keep_alive_s.unwrap_or(300)),
        timeout: Duration::from_secs(timeout),
        price_per_unit: price,
    }
}

fn weights(p: &mut Problems, i: usize, m: &ModelFile) -> ModelWeights {
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

#[cfg(test)]
mod tests;
