//! `control-plane serve`: load the configuration, start the runtime, serve until SIGINT or
//! SIGTERM.

use std::net::SocketAddr;
use std::path::Path;

use anyhow::Context;
use control_plane::config;
use control_plane::store::StoreConfig;
use tokio_util::sync::CancellationToken;

/// Runs `serve`; the text is what to print on success (`--validate-config`'s summary).
pub fn main(
    path: &Path,
    validate_only: bool,
    listen: Option<SocketAddr>,
) -> anyhow::Result<String> {
    let mut config = config::load(path).with_context(|| format!("load {}", path.display()))?;
    if let Some(listen) = listen {
        config.listen = listen;
    }
    if validate_only {
        let store = match &config.store {
            StoreConfig::Etcd { endpoints } => format!("etcd at {}", endpoints.join(", ")),
            StoreConfig::Embedded(e) => format!("embedded store in {}", e.data_dir.display()),
        };
        let seed = config.seed_catalog.as_ref().map_or(String::new(), |s| {
            format!(
                ", seed catalog of {} regions, {} models, {} tenants",
                s.regions.len(),
                s.models.len(),
                s.tenants.len()
            )
        });
        return Ok(format!(
            "{}: valid — listen on {}, {store}{seed}",
            path.display(),
            config.listen
        ));
    }
    let runtime = tokio::runtime::Runtime::new().context("start the async runtime")?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("listen on {}", config.listen))?;
        let shutdown = CancellationToken::new();
        let signals = tokio::spawn(cancel_on_signal(shutdown.clone()));
        let served = control_plane::run(config, listener, shutdown).await;
        signals.abort();
        served
    })?;
    Ok("control plane stopped".to_owned())
}

/// Cancels `shutdown` on the first SIGINT or SIGTERM.
async fn cancel_on_signal(shutdown: CancellationToken) {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: shutting down"),
        () = terminate => tracing::info!("SIGTERM: shutting down"),
    }
    shutdown.cancel();
}
