//! The link to the control plane: register under a lease, heartbeat (≈1 s) with the agent's
//! report, send usage records in batches until acknowledged, and at shutdown report draining,
//! flush usage and deregister. The agent serves whether or not the control plane answers.

use std::time::Duration;

use control_plane_client::ControlPlane;
use control_plane_client::wire::UsageRecord;
use tokio_util::sync::CancellationToken;

use crate::config::ControlPlaneConfig;
use crate::scheduler::Scheduler;

/// How many rounds of usage batches a final flush tries.
const FINAL_FLUSH_ROUNDS: usize = 20;

/// The agent's side of the control-plane API.
#[derive(Clone)]
pub struct Link {
    client: ControlPlane,
    region: String,
    scheduler: Scheduler,
    interval: Duration,
    usage_batch: usize,
}

impl Link {
    /// A link for `scheduler`'s region.
    pub fn new(config: &ControlPlaneConfig, scheduler: Scheduler) -> anyhow::Result<Self> {
        let client = ControlPlane::new(&config.url, &config.agent_token, config.request_timeout)?;
        Ok(Self {
            client,
            region: scheduler.region().to_owned(),
            scheduler,
            interval: config.heartbeat_interval,
            usage_batch: config.usage_batch,
        })
    }

    /// Heartbeats and usage until `stop`; then the final draining report, usage flush and
    /// deregistration.
    pub async fn run(self, stop: CancellationToken) {
        let mut registered = false;
        let mut ticker = tokio::time::interval(self.interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = stop.cancelled() => break,
                _ = ticker.tick() => {}
            }
            registered = self.beat(registered).await;
            if let Err(e) = self.flush_usage(1).await {
                tracing::debug!(error = %e, "usage not delivered yet; kept on disk");
            }
        }
        self.beat(registered).await;
        match self.flush_usage(FINAL_FLUSH_ROUNDS).await {
            Ok(0) => {}
            Ok(sent) => tracing::info!(sent, "usage flushed at shutdown"),
            Err(e) => {
                tracing::warn!(error = %e, left = self.scheduler.usage().len(), "usage not flushed at shutdown; kept on disk for the next start")
            }
        }
        match self.client.deregister(&self.region).await {
            Ok(()) => tracing::info!(region = %self.region, "deregistered from the control plane"),
            Err(e) => tracing::warn!(error = %e, "cannot deregister; the lease will run out"),
        }
    }

    /// One heartbeat (or registration when not registered); returns whether registered.
    pub async fn beat(&self, registered: bool) -> bool {
        let report = self.scheduler.report();
        if registered {
            match self.client.heartbeat(&self.region, &report).await {
                Ok(_) => return true,
                Err(e) if e.kind() == Some("not_registered") => {
                    tracing::warn!("the control plane lost this agent's lease; registering again");
                }
                Err(e) => {
                    tracing::warn!(error = %e, "heartbeat failed; serving on");
                    return true;
                }
            }
        }
        match self.client.register(&self.region, &report).await {
            Ok(registration) => {
                tracing::info!(region = %self.region, ttl_ms = registration.ttl_ms, "registered with the control plane");
                true
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot register with the control plane; serving on and retrying");
                false
            }
        }
    }

    /// Sends up to `rounds` batches of pending usage; returns how many records were
    /// acknowledged.
    pub async fn flush_usage(
        &self,
        rounds: usize,
    ) -> Result<usize, control_plane_client::ClientError> {
        let mut sent = 0;
        for _ in 0..rounds {
            let batch = self.pending().await;
            if batch.is_empty() {
                break;
            }
            let full = batch.len() == self.usage_batch;
            let receipt = self.client.report_usage(batch.clone()).await?;
            tracing::debug!(
                accepted = receipt.accepted,
                duplicates = receipt.duplicates,
                "usage delivered"
            );
            sent += batch.len();
            let spool = self.scheduler.usage().clone();
            let _ = tokio::task::spawn_blocking(move || spool.acknowledge(&batch)).await;
            if !full {
                break;
            }
        }
        Ok(sent)
    }

    async fn pending(&self) -> Vec<UsageRecord> {
        let spool = self.scheduler.usage().clone();
        let limit = self.usage_batch;
        tokio::task::spawn_blocking(move || spool.pending(limit))
            .await
            .unwrap_or_default()
    }
}
