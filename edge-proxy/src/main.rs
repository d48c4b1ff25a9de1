//! `edge-proxy`: Meridian's edge binary. Loads the configuration, binds the listeners (or,
//! with `--upgrade`, takes them from the running edge) and serves until SIGINT or SIGTERM,
//! then drains. On SIGQUIT it first hands its listening sockets to a new edge started with
//! `--upgrade`, then drains: an upgrade without a refused connection.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use edge_proxy::{Listeners, config};
use tokio::sync::Notify;
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
    /// Take the listening sockets from the running edge instead of binding them: start this
    /// edge with --upgrade, then send SIGQUIT to the running one within 5 s. Both use
    /// listen.upgrade_socket.
    #[arg(long, conflicts_with = "validate_config")]
    upgrade: bool,
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
    let listeners = if cli.upgrade {
        Listeners::inherit(&config)?
    } else {
        Listeners::bind(&config)?
    };
    let runtime = tokio::runtime::Runtime::new().context("start the async runtime")?;
    runtime.block_on(async move {
        let shutdown = CancellationToken::new();
        let handoff = Arc::new(Notify::new());
        let signals = tokio::spawn(on_signals(shutdown.clone(), Arc::clone(&handoff)));
        let served = edge_proxy::run_upgradable(config, listeners, shutdown, handoff).await;
        signals.abort();
        served
    })?;
    Ok("edge stopped".to_owned())
}

/// Cancels `shutdown` on the first SIGINT or SIGTERM; notifies `handoff` on each SIGQUIT.
async fn on_signals(shutdown: CancellationToken, handoff: Arc<Notify>) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut terminate), Ok(mut interrupt), Ok(mut quit)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
        signal(SignalKind::quit()),
    ) else {
        tracing::error!("cannot listen for signals; stop the edge with SIGKILL");
        return;
    };
    loop {
        tokio::select! {
            _ = terminate.recv() => break,
            _ = interrupt.recv() => break,
            _ = quit.recv() => {
                tracing::info!("SIGQUIT: handing the listening sockets to a new edge");
                handoff.notify_one();
            }
        }
    }
    tracing::info!("signal received; shutting down");
    shutdown.cancel();
}
