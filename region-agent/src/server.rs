//! The agent's lifecycle: discover GPUs, restore jobs and start the model threads, serve the
//! API, link to the control plane and sweep expired results — then, when shutdown is asked
//! for (SIGTERM), drain in a fixed order:
//!
//! 1. report draining and refuse new jobs (`503`, `x-meridian-refused: draining`; `/healthz`
//!    answers 503), while status, result and file calls go on being served;
//! 2. let queued and running jobs finish, up to `drain_timeout` (what is still queued then
//!    stays on disk and resumes at the next start);
//! 3. stop the model threads; flush usage; deregister; stop the HTTP server.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::api::{self, AppState};
use crate::config::AgentConfig;
use crate::gpu;
use crate::link::Link;
use crate::scheduler::Scheduler;
use crate::serving::{self, Model};

/// How long the HTTP server may take to close its connections at the end.
const HTTP_CLOSE: Duration = Duration::from_secs(5);
/// How often draining checks whether the work is done.
const DRAIN_POLL: Duration = Duration::from_millis(50);

/// Runs the agent with the models the binary knows ([`serving::builtin`]) until `shutdown`.
pub async fn run(
    config: AgentConfig,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let models = serving::builtin::build(&config)?;
    run_with_models(config, models, listener, shutdown).await
}

/// Runs the agent with the given model implementations (one per configured model id).
pub async fn run_with_models(
    config: AgentConfig,
    models: Vec<Arc<dyn Model>>,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let device = {
        let pools = config.pools.clone();
        tokio::task::spawn_blocking(move || gpu::select_device(&gpu::discover(), &pools))
            .await
            .context("discover GPUs")?
    };
    let scheduler = {
        let config = config.clone();
        tokio::task::spawn_blocking(move || Scheduler::start(&config, models, device))
            .await
            .context("start the scheduler")??
    };
    let state = AppState::new(
        scheduler.clone(),
        &config.edge_token,
        config.sync_timeout,
        config.max_body_bytes,
    );
    let app = api::router(state);
    let address = listener
        .local_addr()
        .context("read the listening address")?;
    let http_stop = CancellationToken::new();
    let server = tokio::spawn(
        axum::serve(listener, app)
            .with_graceful_shutdown(http_stop.clone().cancelled_owned())
            .into_future(),
    );
    tracing::info!(%address, region = %config.region, "region agent serving");

    let link_stop = CancellationToken::new();
    let link = match &config.control_plane {
        Some(cp) => {
            let link =
                Link::new(cp, scheduler.clone()).context("create the control-plane client")?;
            Some((link.clone(), tokio::spawn(link.run(link_stop.clone()))))
        }
        None => {
            tracing::info!("no control plane configured; serving alone");
            None
        }
    };
    let sweeper = tokio::spawn(sweep(
        scheduler.clone(),
        config.result_retention,
        http_stop.clone(),
    ));

    shutdown.cancelled().await;
    drain(
        &scheduler,
        link.as_ref().map(|(l, _)| l),
        config.drain_timeout,
    )
    .await;
    scheduler.stop().await;
    link_stop.cancel();
    if let Some((_, task)) = link {
        let _ = task.await;
    }
    http_stop.cancel();
    sweeper.abort();
    match tokio::time::timeout(HTTP_CLOSE, server).await {
        Ok(Ok(Ok(()))) => {}
        Ok(Ok(Err(e))) => tracing::warn!(error = %e, "HTTP server ended with an error"),
        Ok(Err(e)) => tracing::warn!(error = %e, "HTTP server task failed"),
        Err(_) => tracing::warn!("connections still open after {HTTP_CLOSE:?}; stopping anyway"),
    }
    tracing::info!("region agent stopped");
    Ok(())
}

/// Refuses new work, tells the control plane at once, and waits for the work to finish.
async fn drain(scheduler: &Scheduler, link: Option<&Link>, deadline: Duration) {
    tracing::info!(
        deadline_s = deadline.as_secs(),
        "draining: refusing new jobs, finishing queued ones"
    );
    scheduler.start_draining();
    if let Some(link) = link {
        link.beat(true).await;
    }
    let started = Instant::now();
    while !scheduler.is_idle() {
        if started.elapsed() >= deadline {
            tracing::warn!(
                "drain deadline reached; unfinished jobs stay queued on disk for the next start"
            );
            return;
        }
        tokio::time::sleep(DRAIN_POLL).await;
    }
    tracing::info!(took_ms = started.elapsed().as_millis(), "all jobs finished");
}

/// Deletes expired results every so often.
async fn sweep(scheduler: Scheduler, retention: Duration, stop: CancellationToken) {
    let every = (retention / 10).clamp(Duration::from_millis(100), Duration::from_secs(60));
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(every) => {}
        }
        scheduler.sweep_expired().await;
    }
}
