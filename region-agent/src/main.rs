//! `region-agent`: Meridian's region agent binary (see the library for what it does).

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand};
use region_agent::catalog::{RegionCatalog, source};
use region_agent::config::{AgentConfig, CatalogSource};
use region_agent::serving::{self, Model};
use tokio_util::sync::CancellationToken;

/// Meridian's region agent.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the edge→agent API with the configured models and the catalog's pools.
    Serve {
        /// The configuration file (TOML); see examples/region-agent.toml.
        #[arg(long)]
        config: PathBuf,
        /// Check the configuration (that every model's weights exist and, with a catalog
        /// file, the catalog and what it lets the agent serve), print a summary and exit.
        #[arg(long)]
        validate_config: bool,
        /// Address to listen on, overriding the file and MERIDIAN_LISTEN.
        #[arg(long)]
        listen: Option<SocketAddr>,
    },
}

fn main() -> ExitCode {
    if let Err(e) = telemetry::init("region-agent") {
        let _ = writeln!(std::io::stderr(), "region-agent: {e}");
        return ExitCode::FAILURE;
    }
    let Command::Serve {
        config,
        validate_config,
        listen,
    } = Cli::parse().command;
    match serve(config, validate_config, listen) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let _ = writeln!(std::io::stderr(), "region-agent: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn serve(path: PathBuf, validate_only: bool, listen: Option<SocketAddr>) -> anyhow::Result<()> {
    let mut config = AgentConfig::load(&path)?;
    let from_env = std::env::var("MERIDIAN_LISTEN").ok();
    if let Some(env) = from_env {
        config.listen = env
            .parse()
            .with_context(|| format!("MERIDIAN_LISTEN={env:?} is not IP:PORT"))?;
    }
    if let Some(listen) = listen {
        config.listen = listen;
    }
    let models = serving::builtin::build(&config)?;
    if validate_only {
        return summary(&path, &config, &models);
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("start the async runtime")?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("listen on {}", config.listen))?;
        let shutdown = CancellationToken::new();
        tokio::spawn(on_signal(shutdown.clone()));
        region_agent::run(config, listener, shutdown).await
    })
}

/// Prints what `--validate-config` checked; with a catalog file, also the slots it gives and
/// why a configured model would not be served.
fn summary(
    path: &std::path::Path,
    config: &AgentConfig,
    models: &[Arc<dyn Model>],
) -> anyhow::Result<()> {
    let mut out = std::io::stdout();
    let ids: Vec<&str> = config.models.iter().map(|m| m.id.as_str()).collect();
    let catalog = match &config.catalog {
        CatalogSource::ControlPlane(cp) => format!("from the control plane at {}", cp.url),
        CatalogSource::File(file) => {
            let wire = source::read_file(file, &config.region)?;
            let mut copy = RegionCatalog::from_wire(&wire, &config.region)?;
            for problem in config
                .pools
                .as_ref()
                .map(|s| copy.share(s))
                .unwrap_or_default()
            {
                writeln!(out, "warning: {problem}")?;
            }
            for model in models {
                if let Err(why) = copy.quote(model.id(), model.unit()) {
                    writeln!(out, "warning: {} would not be served: {why}", model.id())?;
                }
            }
            let slots = copy.slots(config.on_demand);
            format!("from {} ({} slot(s))", file.display(), slots.len())
        }
    };
    writeln!(
        out,
        "{}: region {}, listen {}, models {}, catalog {catalog}",
        path.display(),
        config.region,
        config.listen,
        ids.join(", "),
    )?;
    Ok(())
}

/// Cancels `shutdown` on SIGTERM or Ctrl-C.
async fn on_signal(shutdown: CancellationToken) {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        () = terminate => tracing::info!("SIGTERM received"),
        _ = tokio::signal::ctrl_c() => tracing::info!("interrupt received"),
    }
    shutdown.cancel();
}
