//! `edge-proxy`: Meridian's edge binary. Loads the configuration, binds the listeners and
//! serves until SIGINT or SIGTERM, then drains.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use edge_proxy::{Listeners, config};
use tokio_util::sync::CancellationToken;

/// Meridian's edge proxy.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    /// The configuration file (TOML); see examples/edge.toml.
    #[arg(long)]
    config: PathBuf,
    /// Check the configuration, print a summary and exit.
    #[arg(long)]
    validate_config: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Err(e) = telemetry::init("edge-proxy") {
        eprintln!("edge-proxy: {e}");
        return ExitCode::FAILURE;
    }
    match serve(&cli) {
        Ok(summary) => {
            #[allow(clippy::print_stdout)]
            {
                println!("{summary}");
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("edge-proxy: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn serve(cli: &Cli) -> anyhow::Result<String> {
    let path = &cli.config;
    let config = config::load(path).with_context(|| format!("load {}", path.display()))?;
    if cli.validate_config {
        let mut listen: Vec<String> = config.http.iter().map(|a| format!("http://{a}")).collect();
        listen.extend(
            config
                .https
                .iter()
                .map(|h| format!("https://{}", h.address)),
        );
        return Ok(format!(
            "{}: valid — listen on {}, control plane {}, {} trusted proxy network(s)",
            path.display(),
            listen.join(", "),
            config.control_plane_url,
            config.trusted_proxies.len()
        ));
    }
    let runtime = tokio::runtime::Runtime::new().context("start the async runtime")?;
    runtime.block_on(async move {
        let listeners = Listeners::bind(&config)?;
        let shutdown = CancellationToken::new();
        let signals = tokio::spawn(cancel_on_signal(shutdown.clone()));
        let served = edge_proxy::run(config, listeners, shutdown).await;
        signals.abort();
        served
    })?;
    Ok("edge stopped".to_owned())
}

/// Cancels `shutdown` on the first SIGINT or SIGTERM.
async fn cancel_on_signal(shutdown: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut terminate), Ok(mut interrupt)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot listen for signals; stop the edge with SIGKILL");
        return;
    };
    tokio::select! {
        _ = terminate.recv() => {}
        _ = interrupt.recv() => {}
    }
    tracing::info!("signal received; shutting down");
    shutdown.cancel();
}
