//! The server's lifecycle: open the store, seed it on the first start, serve the API until
//! shutdown is asked for, drain, close the store.

use std::time::Duration;

use anyhow::Context;
use policy::CatalogSpec;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::api::{self, ApiSettings, AppState};
use crate::changes::ChangeFeed;
use crate::config::ServerConfig;
use crate::records::SEEDED_KEY;
use crate::registry::Registry;
use crate::store::{AnyStore, Store, StoreConfig, StoreError};

/// How long in-flight requests may take to finish once shutdown is asked for.
pub const DRAIN: Duration = Duration::from_secs(10);

/// A control plane serving in this process on a free loopback port, as tests, benchmarks
/// and embedding programs start one. Dropping it asks it to stop; [`InProcess::stop`] also
/// waits until it has.
#[derive(Debug)]
pub struct InProcess {
    /// Its base URL, `http://127.0.0.1:PORT`.
    pub url: String,
    shutdown: CancellationToken,
    task: Option<JoinHandle<anyhow::Result<()>>>,
}

impl InProcess {
    /// Starts [`run`] on `127.0.0.1:0` with `api`, `store` and `seed_catalog`, and returns
    /// once it serves (its store open and seeded).
    ///
    /// # Errors
    ///
    /// When no loopback port can be bound, or the server failed before it served (a store
    /// that cannot be opened): then with the server's error.
    pub async fn start(
        api: ApiSettings,
        store: StoreConfig,
        seed_catalog: Option<CatalogSpec>,
    ) -> anyhow::Result<Self> {
        let listen = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
        let listener = TcpListener::bind(listen)
            .await
            .context("bind a loopback port")?;
        let url = format!("http://{}", listener.local_addr()?);
        let config = ServerConfig {
            listen,
            api,
            store,
            seed_catalog,
            history_retention: crate::config::DEFAULT_HISTORY_RETENTION,
        };
        let shutdown = CancellationToken::new();
        let (ready, serving) = tokio::sync::oneshot::channel();
        let task = tokio::spawn(serve(config, listener, shutdown.clone(), Some(ready)));
        let mut started = Self {
            url,
            shutdown,
            task: Some(task),
        };
        if serving.await.is_err() {
            // The server ended before it served: its error says why.
            let failed = match started.task.take() {
                Some(task) => task.await.context("the control plane task failed")?,
                None => Ok(()),
            };
            return Err(failed
                .err()
                .unwrap_or_else(|| anyhow::anyhow!("the control plane stopped before it served")));
        }
        Ok(started)
    }

    /// Stops it and waits until it has drained and closed its store.
    ///
    /// # Errors
    ///
    /// What the server failed with, if it failed.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        self.shutdown.cancel();
        match self.task.take() {
            Some(task) => task.await.context("the control plane task failed")?,
            None => Ok(()),
        }
    }
}

impl Drop for InProcess {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// Serves the control plane's API on `listener` until `shutdown` is cancelled, then stops
/// accepting, lets in-flight requests finish (long polls end at once), and closes the store.
pub async fn run(
    config: ServerConfig,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    serve(config, listener, shutdown, None).await
}

/// [`run`], telling `ready` once the API serves.
async fn serve(
    config: ServerConfig,
    listener: TcpListener,
    shutdown: CancellationToken,
    ready: Option<tokio::sync::oneshot::Sender<()>>,
) -> anyhow::Result<()> {
    let store = AnyStore::open(&config.store)
        .await
        .context("open the store")?;
    if let Some(seed) = &config.seed_catalog {
        seed_once(&store, seed)
            .await
            .context("apply the seed catalog")?;
    }
    let changes = ChangeFeed::start(store.clone(), config.api.spend_refresh, shutdown.clone())
        .await
        .context("follow the store's changes")?;
    tokio::spawn(crate::history::run(
        store.clone(),
        config.history_retention,
        shutdown.clone(),
    ));
    tokio::spawn(crate::reservations::run_clock(
        store.clone(),
        changes.clone(),
        shutdown.clone(),
    ));
    tokio::spawn(crate::instances::run_sweep(store.clone(), shutdown.clone()));
    let state = AppState::new(store.clone(), changes.clone(), config.api, shutdown.clone());
    tokio::spawn(crate::instances::pools::run(
        store.clone(),
        changes,
        state.metrics().clone(),
        shutdown.clone(),
    ));
    let app = api::router(state);
    let address = listener
        .local_addr()
        .context("read the listening address")?;
    tracing::info!(%address, "control plane serving");
    if let Some(ready) = ready {
        // Connections made from now on are served (those made before wait in the backlog).
        let _ = ready.send(());
    }
    // Each request knows its peer's address, which the wrong-token throttle counts by.
    let app = app.into_make_service_with_connect_info::<std::net::SocketAddr>();
    let serve =
        axum::serve(listener, app).with_graceful_shutdown(shutdown.clone().cancelled_owned());
    let drained = tokio::select! {
        served = serve => served.context("serve the API"),
        () = async {
            shutdown.cancelled().await;
            tokio::time::sleep(DRAIN).await;
        } => {
            tracing::warn!("requests still in flight after {DRAIN:?}; stopping anyway");
            Ok(())
        }
    };
    if let AnyStore::Embedded(embedded) = &store {
        embedded.close().await;
    }
    tracing::info!("control plane stopped");
    drained
}

/// Writes `seed` into the store unless a seed was applied before.
async fn seed_once(store: &AnyStore, seed: &CatalogSpec) -> anyhow::Result<()> {
    if store.get(SEEDED_KEY).await?.is_some() {
        tracing::info!("seed catalog applied on an earlier start; leaving the store as it is");
        return Ok(());
    }
    let registry = Registry::new(store.clone());
    registry
        .apply_whole(seed)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    match store
        .compare_and_put(SEEDED_KEY, 0, b"1".to_vec(), None)
        .await
    {
        Ok(_) | Err(StoreError::Conflict { .. }) => {}
        Err(e) => return Err(e.into()),
    }
    tracing::info!(
        regions = seed.regions.len(),
        models = seed.models.len(),
        tenants = seed.tenants.len(),
        "seed catalog applied"
    );
    Ok(())
}
