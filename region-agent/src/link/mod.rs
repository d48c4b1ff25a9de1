//! The link to the control plane: register under a lease, heartbeat (≈1 s) with the agent's
//! report, fetch the agent catalog when the control plane says a newer one exists (and keep
//! it on disk), send the usage ledger's batches until each is receipted, and at shutdown
//! report draining, flush usage and deregister. Each report names the instance, where edges
//! reach it and the slots it serves. When an answer orders the instance to drain, the link
//! cancels the agent's shutdown token, so the agent drains and stops as on SIGTERM. The agent
//! serves whether or not the control plane answers.

use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

use anyhow::Context;
use contract::{InstanceId, RegionId};
use control_plane_client::ControlPlane;
use tokio_util::sync::CancellationToken;

use crate::catalog::source;
use crate::config::{AgentConfig, ControlPlaneConfig};
use crate::scheduler::Scheduler;

/// Most batches sent in one round of the usage interval.
const ROUND_BATCHES: usize = 10;
/// Most batches the final flush at shutdown sends.
const FINAL_BATCHES: usize = 200;

/// The file in the data directory that keeps the agent's instance id.
pub const INSTANCE_FILE: &str = "instance";

/// The instance id kept in `data_dir`, made (`i-` and 12 random hex digits) and kept at the
/// first start, so the agent is the same instance of its region across restarts.
///
/// # Errors
///
/// The file cannot be read or written, or holds no instance id.
pub fn instance_id(data_dir: &std::path::Path) -> anyhow::Result<InstanceId> {
    let path = data_dir.join(INSTANCE_FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) => InstanceId::new(text.trim())
            .with_context(|| format!("{} does not hold an instance id", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let id = InstanceId::new(&format!("i-{:012x}", rand::random::<u64>() >> 16))
                .context("make an instance id")?;
            std::fs::create_dir_all(data_dir)
                .with_context(|| format!("create {}", data_dir.display()))?;
            contract::fs::write_atomic(&path, format!("{id}\n").as_bytes())?;
            Ok(id)
        }
        Err(e) => Err(e).with_context(|| format!("read {}", path.display())),
    }
}

/// The agent's side of the control-plane API.
pub struct Link {
    client: ControlPlane,
    region: RegionId,
    /// This agent among its region's ([`instance_id`]).
    instance: String,
    /// Where edges reach this instance, as reported (empty: the catalog's region endpoint).
    endpoint: String,
    scheduler: Scheduler,
    /// The agent's shutdown token, cancelled when the control plane orders a drain.
    shutdown: CancellationToken,
    data_dir: PathBuf,
    heartbeat: Duration,
    usage_interval: Duration,
    /// The last catalog problem logged, so a problem that lasts is logged once.
    last_catalog_problem: Mutex<Option<String>>,
    /// The last usage delivery problem logged, likewise.
    last_usage_problem: Mutex<Option<String>>,
}

impl Link {
    /// A link to `control_plane` for `scheduler`'s region and instance, reporting `agent`'s
    /// endpoint and keeping the catalog copy in its data directory; a drain order cancels
    /// `shutdown`.
    pub fn new(
        control_plane: &ControlPlaneConfig,
        agent: &AgentConfig,
        scheduler: Scheduler,
        shutdown: CancellationToken,
    ) -> anyhow::Result<Self> {
        let client = ControlPlane::new(
            &control_plane.url,
            control_plane.agent_token.expose(),
            control_plane.request_timeout,
        )?;
        Ok(Self {
            client,
            region: scheduler.region().clone(),
            instance: scheduler.instance().to_string(),
            endpoint: agent.endpoint.clone().unwrap_or_default(),
            scheduler,
            shutdown,
            data_dir: agent.data_dir.clone(),
            heartbeat: control_plane.heartbeat_interval,
            usage_interval: control_plane.usage_interval,
            last_catalog_problem: Mutex::new(None),
            last_usage_problem: Mutex::new(None),
        })
    }

    /// Heartbeats, catalog updates and usage until `stop`; then the final draining report,
    /// usage flush and deregistration.
    pub async fn run(&self, stop: CancellationToken) {
        let mut registered = false;
        let mut beats = tokio::time::interval(self.heartbeat);
        beats.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut usage = tokio::time::interval(self.usage_interval);
        usage.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = stop.cancelled() => break,
                _ = beats.tick() => registered = self.beat(registered).await,
                _ = usage.tick() => self.deliver_usage().await,
            }
        }
        self.beat(registered).await;
        match self.flush_usage(FINAL_BATCHES).await {
            Ok(0) => {}
            Ok(sent) => tracing::info!(batches = sent, "usage flushed at shutdown"),
            Err(e) => {
                tracing::warn!(error = %e, "usage not flushed at shutdown; kept on disk for the next start")
            }
        }
        match self
            .client
            .deregister(self.region.as_str(), &self.instance)
            .await
        {
            Ok(()) => {
                tracing::info!(region = %self.region, instance = self.instance, "deregistered from the control plane")
            }
            Err(e) => tracing::warn!(error = %e, "cannot deregister; the lease will run out"),
        }
    }

    /// One heartbeat (or registration when not registered), then a catalog fetch when the
    /// answer names a newer catalog; returns whether registered.
    pub async fn beat(&self, registered: bool) -> bool {
        let mut report = self.scheduler.report();
        report.instance.clone_from(&self.instance);
        report.endpoint.clone_from(&self.endpoint);
        let region = self.region.as_str();
        if registered {
            match self.client.heartbeat(region, &report).await {
                Ok(answer) => {
                    self.follow_drain(answer.drain);
                    self.follow_catalog(answer.catalog_revision).await;
                    return true;
                }
                Err(e) if e.kind() == Some("not_registered") => {
                    tracing::warn!("the control plane lost this agent's lease; registering again");
                }
                Err(e) => {
                    tracing::warn!(error = %e, "heartbeat failed; serving on");
                    return true;
                }
            }
        }
        match self.client.register(region, &report).await {
            Ok(registration) => {
                tracing::info!(
                    region,
                    instance = self.instance,
                    ttl_ms = registration.ttl_ms,
                    "registered with the control plane"
                );
                self.follow_drain(registration.drain);
                self.follow_catalog(registration.catalog_revision).await;
                true
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot register with the control plane; serving on and retrying");
                false
            }
        }
    }

    /// Starts the agent's shutdown (drain, flush, deregister, stop) when the control plane's
    /// answer orders this instance to drain.
    fn follow_drain(&self, ordered: bool) {
        if ordered && !self.shutdown.is_cancelled() {
            tracing::info!(
                region = %self.region,
                instance = self.instance,
                "the control plane asked this instance to drain; draining as on SIGTERM, then stopping"
            );
            self.shutdown.cancel();
        }
    }

    /// Fetches the catalog when the control plane's `newest` revision is newer than the copy
    /// in force, or there is none.
    async fn follow_catalog(&self, newest: i64) {
        let stale = self
            .scheduler
            .catalog_revision()
            .is_none_or(|own| own < newest);
        if stale && let Err(e) = self.fetch_catalog().await {
            self.catalog_problem(format!("{e:#}"));
        }
    }

    /// Fetches the region's agent catalog, puts it in force and keeps it on disk.
    pub async fn fetch_catalog(&self) -> anyhow::Result<i64> {
        let catalog = self
            .client
            .agent_catalog(self.region.as_str())
            .await
            .context("fetch the agent catalog")?;
        self.scheduler
            .install_catalog(&catalog)
            .context("use the agent catalog")?;
        let data_dir = self.data_dir.clone();
        let revision = catalog.revision;
        let saved =
            tokio::task::spawn_blocking(move || source::save_cache(&data_dir, &catalog)).await;
        match saved {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::error!(error = %e, "cannot keep the catalog on disk; a start without the control plane would have none")
            }
            Err(e) => tracing::error!(error = %e, "cannot keep the catalog on disk"),
        }
        *self
            .last_catalog_problem
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = None;
        Ok(revision)
    }

    /// Logs a catalog problem once while it lasts.
    fn catalog_problem(&self, problem: String) {
        let mut last = self
            .last_catalog_problem
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if last.as_deref() != Some(problem.as_str()) {
            tracing::error!(error = %problem, revision = ?self.scheduler.catalog_revision(), "no newer catalog; serving on with the copy in force");
            *last = Some(problem);
        }
    }

    /// One round of usage batches; a delivery problem is logged once while it lasts.
    async fn deliver_usage(&self) {
        let problem = self
            .flush_usage(ROUND_BATCHES)
            .await
            .err()
            .map(|e| format!("{e:#}"));
        let mut last = self
            .last_usage_problem
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        match &problem {
            Some(p) if last.as_deref() != Some(p.as_str()) => {
                tracing::warn!(error = %p, "usage not delivered yet; kept on disk and sent again");
            }
            None if last.is_some() => tracing::info!("usage delivered again"),
            _ => {}
        }
        *last = problem;
    }

    /// Sends up to `batches` usage batches, each until its receipt; returns how many were
    /// receipted.
    pub async fn flush_usage(&self, batches: usize) -> anyhow::Result<usize> {
        let mut sent = 0;
        while sent < batches {
            let scheduler = self.scheduler.clone();
            let pending = tokio::task::spawn_blocking(move || scheduler.ledger().pending_batch())
                .await
                .context("build a usage batch")??;
            let Some(batch) = pending else { break };
            let receipt = self.client.report_usage(&batch).await?;
            anyhow::ensure!(
                receipt.seq == batch.seq,
                "the control plane receipted batch {} for batch {}",
                receipt.seq,
                batch.seq
            );
            let scheduler = self.scheduler.clone();
            tokio::task::spawn_blocking(move || scheduler.ledger().acknowledge(receipt.seq))
                .await
                .context("record a usage receipt")??;
            tracing::debug!(
                seq = batch.seq,
                rows = batch.rows.len(),
                applied = receipt.applied,
                "usage batch receipted"
            );
            sent += 1;
        }
        Ok(sent)
    }
}
