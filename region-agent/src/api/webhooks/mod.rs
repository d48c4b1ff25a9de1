//! Webhooks: a job may name a URL to be called when it finishes (and, on Replicate's
//! surface, when it starts). Deliveries are made from this region (where the job ran, so
//! its output never leaves the region by another way), signed ([`sign`]), kept on the
//! agent's disk until delivered and retried on a schedule (`[webhooks] retry_delays_ms`)
//! that goes on across restarts, and sent only where the destination policy allows — the
//! same policy, resolver and redirect checks as media URLs ([`crate::inputs`]), with the
//! `[webhooks] allow` blocks.
//!
//! Each delivery is one file, `<data_dir>/webhooks/<job id>.<event>.json`, holding its body
//! (made once, when the event happened), its tries and its state; the tenant reads them at
//! `GET /v1/requests/{id}/webhooks`. A delivery is kept as long as its job's result
//! (`result_retention_s`) and swept with it. The webhook itself is part of the job's record, so a
//! job accepted with one always gets its deliveries, whatever stops the agent when.

mod payload;
pub mod sign;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use reqwest::Url;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use self::sign::SigningKeys;
use super::ApiError;
use super::links::FileLinks;
use crate::config::{InputUrlsConfig, WebhooksConfig};
use crate::inputs::fetch::{Fetcher, Problem, shown};
use crate::jobs::{JobRecord, JobState, Webhook, WebhookStyle, now_ms};
use crate::scheduler::Scheduler;

/// The longest webhook URL taken.
const MAX_URL_BYTES: usize = 2048;
/// How much of a receiver's answer is read (and dropped).
const MAX_ANSWER_BYTES: u64 = 64 * 1024;

/// What a delivery announces.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Event {
    /// The job started running.
    Start,
    /// The job finished (completed, failed or cancelled).
    Completed,
}

/// Where a delivery stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    /// Not delivered yet; tries are left.
    Pending,
    /// A try was answered `2xx`.
    Delivered,
    /// Every try failed.
    Failed,
}

/// One try.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Try {
    /// When (Unix ms).
    pub at_ms: u64,
    /// The receiver's status, when it answered.
    pub status: Option<u16>,
    /// Why it failed, when it did.
    pub error: Option<String>,
}

/// One delivery, as kept on disk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delivery {
    /// The job.
    pub job: String,
    /// The job's tenant.
    pub tenant: String,
    /// What it announces.
    pub event: Event,
    /// Where to.
    pub url: String,
    /// How it is signed.
    pub style: WebhookStyle,
    /// The message id (`webhook-id`), the same for every try.
    pub message_id: String,
    /// The body, made when the event happened.
    pub body: String,
    /// The tries so far.
    pub tries: Vec<Try>,
    /// Where it stands.
    pub state: State,
}

/// The webhook deliveries of this agent.
#[derive(Clone)]
pub struct Webhooks(Arc<Inner>);

struct Inner {
    dir: PathBuf,
    keys: SigningKeys,
    sender: Fetcher,
    enabled: bool,
    delays: Vec<Duration>,
    scheduler: Scheduler,
    links: FileLinks,
    following: Mutex<HashSet<String>>,
    stop: CancellationToken,
    sweep_every: Duration,
}

impl std::fmt::Debug for Webhooks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Webhooks")
            .field("dir", &self.0.dir)
            .finish_non_exhaustive()
    }
}

impl Webhooks {
    /// Deliveries kept under `data_dir`, under `config`, for the jobs of `scheduler`, until
    /// `stop` (what is not delivered then goes on at the next start), the deliveries of jobs
    /// no longer kept swept every `sweep_every`.
    ///
    /// # Errors
    ///
    /// The signing key cannot be read or made, or the HTTP client cannot be built.
    pub fn new(
        data_dir: &Path,
        config: &WebhooksConfig,
        scheduler: Scheduler,
        links: FileLinks,
        (stop, sweep_every): (CancellationToken, Duration),
    ) -> anyhow::Result<Self> {
        use anyhow::Context as _;
        let key_file = config
            .signing_key_file
            .clone()
            .unwrap_or_else(|| data_dir.join(crate::config::DEFAULT_KEY_FILE));
        let keys = SigningKeys::open(&key_file)
            .with_context(|| format!("open the webhook signing key {}", key_file.display()))?;
        let dir = data_dir.join("webhooks");
        std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
        let sending = InputUrlsConfig {
            enabled: true,
            max_bytes: MAX_ANSWER_BYTES,
            timeout: config.timeout,
            connect_timeout: config.timeout.min(Duration::from_secs(5)),
            max_redirects: 5,
            allow: config.allow.clone(),
        };
        let sender = Fetcher::new(&sending).context("build the webhook client")?;
        Ok(Self(Arc::new(Inner {
            dir,
            keys,
            sender,
            enabled: config.enabled,
            delays: config.retry_delays.clone(),
            scheduler,
            links,
            following: Mutex::new(HashSet::new()),
            stop,
            sweep_every,
        })))
    }

    /// The signing keys (the tenant's secret, the JWKS).
    pub fn keys(&self) -> &SigningKeys {
        &self.0.keys
    }

    /// Checks a webhook URL a job names, before the job is accepted: webhooks are on, it is
    /// an `http(s)` URL without credentials, and an IP-literal host is one the policy
    /// allows (a host name is checked at each try, after it is resolved).
    ///
    /// # Errors
    ///
    /// `422` naming the field and why.
    pub fn check(&self, field: &str, url: &str) -> Result<(), ApiError> {
        let refuse = |why: String| ApiError::Unprocessable(format!("{field}: {why}"));
        if !self.0.enabled {
            return Err(refuse("this agent delivers no webhooks".into()));
        }
        if url.len() > MAX_URL_BYTES {
            return Err(refuse(format!("longer than {MAX_URL_BYTES} bytes")));
        }
        let parsed = Url::parse(url).map_err(|e| refuse(format!("not a valid URL: {e}")))?;
        self.0
            .sender
            .check(&parsed)
            .map_err(|problem| refuse(format!("{}: {}", shown(&parsed), refused(&problem))))
    }

    /// Delivers the events of job `id` as they happen (once per job, however often asked).
    pub fn follow(&self, id: &str) {
        let new = self
            .0
            .following
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(id.to_owned());
        if new {
            let this = self.clone();
            let id = id.to_owned();
            tokio::spawn(async move {
                tokio::select! {
                    () = this.run(&id) => {}
                    () = this.0.stop.cancelled() => {}
                }
                this.0
                    .following
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .remove(&id);
            });
        }
    }

    /// Follows every job that names a webhook (at start: deliveries resume), and from now
    /// on sweeps the deliveries of jobs whose results are gone.
    pub fn resume(&self) {
        let jobs = self.0.scheduler.with_webhooks();
        if !jobs.is_empty() {
            tracing::info!(jobs = jobs.len(), "resuming webhook deliveries");
        }
        for id in jobs {
            self.follow(&id);
        }
        let this = self.clone();
        tokio::spawn(async move {
            loop {
                let removed = this.sweep();
                if removed > 0 {
                    tracing::info!(removed, "swept the deliveries of jobs no longer kept");
                }
                tokio::select! {
                    () = tokio::time::sleep(this.0.sweep_every) => {}
                    () = this.0.stop.cancelled() => return,
                }
            }
        });
    }

    /// Removes the delivery files of jobs this agent no longer keeps (their results'
    /// retention ended): a delivery lives as long as its job's result. Returns how many.
    pub fn sweep(&self) -> usize {
        let Ok(entries) = std::fs::read_dir(&self.0.dir) else {
            return 0;
        };
        let mut removed = 0;
        for entry in entries.flatten() {
            let name = entry.file_name();
            let name = name.to_string_lossy();
            let job = name
                .strip_suffix(".start.json")
                .or_else(|| name.strip_suffix(".completed.json"));
            let Some(job) = job else {
                continue;
            };
            if self.0.scheduler.owner(job).is_none() && std::fs::remove_file(entry.path()).is_ok() {
                removed += 1;
            }
        }
        removed
    }

    /// The deliveries of job `id`, oldest event first.
    pub fn deliveries(&self, id: &str) -> Vec<Delivery> {
        [Event::Start, Event::Completed]
            .into_iter()
            .filter_map(|event| read(&self.path(id, event)))
            .collect()
    }

    fn path(&self, id: &str, event: Event) -> PathBuf {
        let event = match event {
            Event::Start => "start",
            Event::Completed => "completed",
        };
        self.0.dir.join(format!("{id}.{event}.json"))
    }

    /// Waits for the job's events and delivers each.
    async fn run(&self, id: &str) {
        let Some(tenant) = self.0.scheduler.owner(id) else {
            return;
        };
        let Some(mut rx) = self.0.scheduler.watch(&tenant, id) else {
            return;
        };
        let Some(webhook) = rx.borrow().webhook.clone() else {
            return;
        };
        if webhook.on_start {
            let started = rx.wait_for(|r| r.state != JobState::InQueue).await;
            let record = started.map(|r| r.clone()).ok();
            if let Some(record) = record.filter(|r| r.started_at_ms.is_some()) {
                self.deliver(&record, &webhook, Event::Start).await;
            }
        }
        let finished = rx.wait_for(|r| r.state.is_final()).await.map(|r| r.clone());
        match finished {
            Ok(record) => self.deliver(&record, &webhook, Event::Completed).await,
            Err(_) => tracing::warn!(job = id, "job gone before its webhook was sent"),
        }
    }

    /// Makes the delivery of `event` (unless it exists) and tries it until it is delivered
    /// or its tries are spent.
    async fn deliver(&self, record: &JobRecord, webhook: &Webhook, event: Event) {
        let path = self.path(&record.id, event);
        let mut delivery = match read(&path) {
            Some(delivery) => delivery,
            None => {
                let body = payload::body(&self.0.links, record, webhook, event);
                let delivery = Delivery {
                    job: record.id.clone(),
                    tenant: record.tenant.clone(),
                    event,
                    url: webhook.url.clone(),
                    style: webhook.style,
                    message_id: message_id(&record.id, event),
                    body: body.to_string(),
                    tries: Vec::new(),
                    state: State::Pending,
                };
                if let Err(e) = write(&path, &delivery) {
                    tracing::error!(job = %record.id, error = %e, "cannot keep a webhook delivery");
                    return;
                }
                delivery
            }
        };
        while delivery.state == State::Pending {
            let done = delivery.tries.len();
            if done > self.0.delays.len() {
                delivery.state = State::Failed;
            } else {
                if done > 0 {
                    let last = delivery.tries[done - 1].at_ms;
                    let due = last.saturating_add(ms(self.0.delays[done - 1]));
                    let wait = due.saturating_sub(now_ms());
                    tokio::time::sleep(Duration::from_millis(wait)).await;
                }
                let tried = self.try_once(&delivery).await;
                delivery.tries.push(tried.clone());
                if tried.error.is_none() {
                    delivery.state = State::Delivered;
                } else if delivery.tries.len() > self.0.delays.len() {
                    delivery.state = State::Failed;
                }
            }
            if let Err(e) = write(&path, &delivery) {
                tracing::error!(job = %delivery.job, error = %e, "cannot keep a webhook delivery");
                return;
            }
        }
        tracing::info!(job = %delivery.job, state = ?delivery.state, tries = delivery.tries.len(), "webhook delivery ended");
    }

    /// One try: the signed post.
    async fn try_once(&self, delivery: &Delivery) -> Try {
        let at_ms = now_ms();
        let url = match Url::parse(&delivery.url) {
            Ok(url) => url,
            Err(e) => return failed(at_ms, None, format!("not a valid URL: {e}")),
        };
        let headers = self.headers(delivery, at_ms / 1000);
        let body = delivery.body.clone().into_bytes();
        match self.0.sender.post(&url, headers, body).await {
            Ok(status) => Try {
                at_ms,
                status: Some(status.as_u16()),
                error: None,
            },
            Err(Problem::Status(status)) => failed(
                at_ms,
                Some(status.as_u16()),
                format!("answered HTTP {status}"),
            ),
            Err(problem) => failed(at_ms, None, refused(&problem)),
        }
    }

    /// The headers of a try at `timestamp` (Unix s): the content type and the signature.
    fn headers(&self, delivery: &Delivery, timestamp: u64) -> HeaderMap {
        let keys = &self.0.keys;
        let body = delivery.body.as_bytes();
        let mut pairs = vec![("content-type", "application/json".to_owned())];
        match delivery.style {
            WebhookStyle::Fal => {
                let signature =
                    keys.fal_signature(&delivery.job, &delivery.tenant, timestamp, body);
                pairs.extend([
                    ("x-fal-webhook-request-id", delivery.job.clone()),
                    ("x-fal-webhook-user-id", delivery.tenant.clone()),
                    ("x-fal-webhook-timestamp", timestamp.to_string()),
                    ("x-fal-webhook-signature", signature),
                ]);
            }
            WebhookStyle::Native | WebhookStyle::Replicate => {
                let signature = keys.standard_signature(
                    &delivery.tenant,
                    &delivery.message_id,
                    timestamp,
                    body,
                );
                pairs.extend([
                    ("webhook-id", delivery.message_id.clone()),
                    ("webhook-timestamp", timestamp.to_string()),
                    ("webhook-signature", signature),
                ]);
            }
        }
        pairs
            .into_iter()
            .filter_map(|(name, value)| {
                Some((
                    HeaderName::from_static(name),
                    HeaderValue::from_str(&value).ok()?,
                ))
            })
            .collect()
    }
}

/// A delivery's public view: the tenant's `GET /v1/requests/{id}/webhooks`.
pub fn shown_delivery(delivery: &Delivery) -> Value {
    let url = Url::parse(&delivery.url).map_or_else(|_| delivery.url.clone(), |u| shown(&u));
    json!({
        "event": delivery.event,
        "url": url,
        "state": delivery.state,
        "tries": delivery.tries.iter().map(|t| json!({
            "at": super::compat::rfc3339(t.at_ms), "status": t.status, "error": t.error,
        })).collect::<Vec<_>>(),
    })
}

fn failed(at_ms: u64, status: Option<u16>, error: String) -> Try {
    Try {
        at_ms,
        status,
        error: Some(error),
    }
}

/// Why a destination is refused, in words about webhooks.
fn refused(problem: &Problem) -> String {
    match problem {
        Problem::Refused(address) => format!(
            "refused: {address}; webhooks go to the public internet only, unless the \
             operator's [webhooks] allow names the block"
        ),
        other => other.to_string(),
    }
}

fn ms(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// The message id of job `id`'s `event`: the same at every try, and after a restart.
fn message_id(id: &str, event: Event) -> String {
    use sha2::Digest as _;
    let digest = sha2::Sha256::digest(format!("{id}\n{event:?}").as_bytes());
    format!("msg_{}", hex::encode(&digest[..12]))
}

fn read(path: &Path) -> Option<Delivery> {
    let text = std::fs::read(path).ok()?;
    serde_json::from_slice(&text)
        .inspect_err(
            |e| tracing::warn!(path = %path.display(), error = %e, "unreadable webhook delivery"),
        )
        .ok()
}

fn write(path: &Path, delivery: &Delivery) -> Result<(), contract::fs::FileError> {
    let bytes = serde_json::to_vec_pretty(delivery).unwrap_or_default();
    contract::fs::write_atomic(path, &bytes)
}
