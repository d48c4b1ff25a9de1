//! One Meridian component as a process of its own, for the chaos scenarios:
//!
//! ```text
//! meridian-node control-plane CONFIG   the control plane, as `control-plane serve --config`
//! meridian-node agent CONFIG           a region agent, as `region-agent serve --config`
//! ```
//!
//! Each calls its library's `run` on the listen address of its configuration file until
//! SIGTERM, as the component's own binary does. It is built with the tests (cargo builds a
//! package's binaries for its integration tests, not another package's), so a scenario can
//! SIGKILL a real process that runs the code under test, never a stale binary.

use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context, bail};
use tokio_util::sync::CancellationToken;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (component, config) = match args.as_slice() {
        [component, config] => (component.as_str(), Path::new(config)),
        _ => {
            eprintln!("usage: meridian-node control-plane|agent CONFIG");
            return ExitCode::FAILURE;
        }
    };
    let name = match component {
        "agent" => "region-agent",
        _ => "control-plane",
    };
    if let Err(e) = telemetry::init(name) {
        eprintln!("meridian-node: {e}");
        return ExitCode::FAILURE;
    }
    match serve(component, config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("meridian-node {component}: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn serve(component: &str, path: &Path) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Runtime::new().context("start the async runtime")?;
    runtime.block_on(async move {
        let shutdown = CancellationToken::new();
        tokio::spawn(cancel_on_sigterm(shutdown.clone()));
        match component {
            "control-plane" => {
                let config = control_plane::config::load(path)
                    .with_context(|| format!("load {}", path.display()))?;
                let listener = tokio::net::TcpListener::bind(config.listen)
                    .await
                    .with_context(|| format!("listen on {}", config.listen))?;
                control_plane::run(config, listener, shutdown).await
            }
            "agent" => {
                let config = region_agent::config::AgentConfig::load(path)
                    .with_context(|| format!("load {}", path.display()))?;
                let listener = tokio::net::TcpListener::bind(config.listen)
                    .await
                    .with_context(|| format!("listen on {}", config.listen))?;
                region_agent::run(config, listener, shutdown).await
            }
            other => bail!("unknown component {other:?}; control-plane or agent"),
        }
    })
}

/// Cancels `shutdown` on SIGTERM.
async fn cancel_on_sigterm(shutdown: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    if let Ok(mut terminate) = signal(SignalKind::terminate()) {
        terminate.recv().await;
        shutdown.cancel();
    }
}
