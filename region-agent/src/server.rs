//! The agent's lifecycle: discover GPUs, restore jobs and start the model threads, put the
//! first catalog copy in force (the catalog file's; or the control plane's, else the copy
//! kept on disk, else none: jobs are refused with `no_catalog` until one arrives; a first copy
//! whose GPU pools the host's GPUs do not match stops the start, naming the pool), serve the
//! API, link to the control plane, and sweep expired results and usage records — then, when
//! shutdown is asked for (SIGTERM, or the control plane's drain order to this instance),
//! drain in a fixed order:
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

use crate::api::{self, AppState, Limits, Tokens};
use crate::catalog::{CatalogError, source};
use crate::config::{AgentConfig, CatalogSource};
use crate::gpu::Hardware;
use crate::inputs::MediaUrls;
use crate::jobs::now_ms;
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
    let (scheduler, link) = start_scheduler(&config, models, &shutdown).await?;
    first_catalog(&config, &scheduler, link.as_deref()).await?;
    let http_stop = CancellationToken::new();
    let server = serve_http(&config, &scheduler, listener, http_stop.clone())?;
    let link_stop = CancellationToken::new();
    let link_task = link.clone().map(|link| {
        let stop = link_stop.clone();
        tokio::spawn(async move { link.run(stop).await })
    });
    if link.is_none() {
        tracing::info!("no control plane configured; serving alone");
    }
    let retention = Retention::of(&config);
    let sweeper = tokio::spawn(sweep(scheduler.clone(), retention, http_stop.clone()));

    shutdown.cancelled().await;
    drain(&scheduler, link.as_deref(), config.drain_timeout).await;
    scheduler.stop().await;
    link_stop.cancel();
    if let Some(task) = link_task {
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

/// Discovers the GPUs, starts the scheduler (restoring jobs) and, with a control plane, its
/// link (which cancels `shutdown` when the control plane orders a drain).
async fn start_scheduler(
    config: &AgentConfig,
    models: Vec<Arc<dyn Model>>,
    shutdown: &CancellationToken,
) -> anyhow::Result<(Scheduler, Option<Arc<Link>>)> {
    let settings = config.gpus.clone();
    let hardware = tokio::task::spawn_blocking(move || Hardware::discover(&settings))
        .await
        .context("discover GPUs")?;
    let scheduler = {
        let config = config.clone();
        tokio::task::spawn_blocking(move || Scheduler::start(&config, models, hardware))
            .await
            .context("start the scheduler")??
    };
    let link = match config.control_plane() {
        Some(cp) => Some(Arc::new(
            Link::new(cp, config, scheduler.clone(), shutdown.clone())
                .context("create the control-plane client")?,
        )),
        None => None,
    };
    Ok((scheduler, link))
}

/// Serves the API on `listener` until `stop`.
fn serve_http(
    config: &AgentConfig,
    scheduler: &Scheduler,
    listener: TcpListener,
    stop: CancellationToken,
) -> anyhow::Result<tokio::task::JoinHandle<std::io::Result<()>>> {
    let tokens = Tokens {
        edge: config.edge_token.clone(),
        agent: config.control_plane().map(|cp| cp.agent_token.clone()),
    };
    let limits = Limits {
        sync_timeout: config.sync_timeout,
        max_body_bytes: config.max_body_bytes,
        body_read: config.connections.body_read,
    };
    let media_urls = MediaUrls::new(&config.input_urls).context("build the media URL client")?;
    let links = api::links::FileLinks::open(&config.data_dir).with_context(|| {
        format!(
            "open the file-link key {}",
            config.data_dir.join(api::links::KEY_FILE).display()
        )
    })?;
    let webhooks = api::webhooks::Webhooks::new(
        &config.data_dir,
        &config.webhooks,
        scheduler.clone(),
        links.clone(),
        (stop.clone(), sweep_period(config.result_retention)),
    )?;
    webhooks.resume();
    let state = AppState::new(
        scheduler.clone(),
        tokens,
        limits,
        media_urls,
        links,
        webhooks,
    );
    let address = listener
        .local_addr()
        .context("read the listening address")?;
    let server = tokio::spawn(api::serve::serve(
        listener,
        api::router(state),
        config.connections,
        stop,
    ));
    tracing::info!(%address, region = %config.region, "region agent serving");
    Ok(server)
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

/// Puts the first catalog copy in force.
async fn first_catalog(
    config: &AgentConfig,
    scheduler: &Scheduler,
    link: Option<&Link>,
) -> anyhow::Result<()> {
    if let CatalogSource::File(path) = &config.catalog {
        let (path, region) = (path.clone(), config.region.clone());
        let catalog = tokio::task::spawn_blocking(move || source::read_file(&path, &region))
            .await
            .context("read the catalog file")??;
        scheduler.install_catalog(&catalog)?;
        return Ok(());
    }
    let link = link.context("a control plane is configured but has no link")?;
    let fetched = link.fetch_catalog().await;
    let error = match fetched {
        Ok(revision) => {
            tracing::info!(revision, "catalog received from the control plane");
            return Ok(());
        }
        // The host's GPUs do not match the region's pools: no copy will do.
        Err(e) if matches!(e.downcast_ref(), Some(CatalogError::Hardware(_))) => return Err(e),
        Err(e) => e,
    };
    let data_dir = config.data_dir.clone();
    let cached = tokio::task::spawn_blocking(move || source::load_cache(&data_dir))
        .await
        .context("read the cached catalog")?;
    match cached.map(|c| (c.revision, scheduler.install_catalog(&c))) {
        Some((revision, Ok(()))) => tracing::warn!(
            error = %format!("{error:#}"), revision,
            "the control plane did not give a catalog; serving with the copy kept on disk"
        ),
        Some((_, Err(e @ CatalogError::Hardware(_)))) => return Err(e.into()),
        Some((_, Err(e))) => tracing::error!(
            error = %e,
            "the control plane did not give a catalog and the copy on disk is unusable; \
             refusing jobs (no_catalog) until the control plane answers"
        ),
        None => tracing::warn!(
            error = %format!("{error:#}"),
            "the control plane did not give a catalog and none is kept on disk; refusing \
             jobs (no_catalog) until it answers"
        ),
    }
    Ok(())
}

/// How long results and usage records are kept.
#[derive(Debug, Clone, Copy)]
struct Retention {
    results: Duration,
    usage: Duration,
    /// Usage not yet sent is kept (with a control plane to send it to).
    keep_unsent: bool,
}

impl Retention {
    fn of(config: &AgentConfig) -> Self {
        Self {
            results: config.result_retention,
            usage: config.usage_retention,
            keep_unsent: config.control_plane().is_some(),
        }
    }
}

/// How often what outlived `results` (the results' retention) is looked for: a tenth of it,
/// from 100 ms to a minute.
pub(crate) fn sweep_period(results: Duration) -> Duration {
    (results / 10).clamp(Duration::from_millis(100), Duration::from_secs(60))
}

/// Deletes expired results (and retries billing) every so often, and usage records past
/// their retention.
async fn sweep(scheduler: Scheduler, retention: Retention, stop: CancellationToken) {
    let every = sweep_period(retention.results);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(every) => {}
        }
        scheduler.sweep_expired().await;
        let ledger_owner = scheduler.clone();
        let swept = tokio::task::spawn_blocking(move || {
            ledger_owner
                .ledger()
                .sweep(now_ms(), retention.usage, retention.keep_unsent)
        })
        .await;
        match swept {
            Ok(Ok(0)) => {}
            Ok(Ok(files)) => tracing::info!(files, "usage records past their retention deleted"),
            Ok(Err(e)) => tracing::error!(error = %e, "cannot delete old usage records"),
            Err(e) => tracing::error!(error = %e, "the usage sweep failed"),
        }
    }
}
