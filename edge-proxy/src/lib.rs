//! Meridian's edge proxy (DESIGN.md §1, §3, §4, §7).
//!
//! Every client request arrives here. The edge authenticates the API key, applies the
//! tenant's quotas, resolves the client's location with a MaxMind database, asks the `policy`
//! crate for the ordered candidate regions and proxies to the first, failing over only to
//! the next regions of that list. It runs on pingora.
//!
//! - [`config`]: the TOML file and the checked [`EdgeConfig`]; [`cidr`]: trusted proxies.
//! - [`snapshot`]: following the control plane's snapshots, with a cache file for starts
//!   while it is down; [`state`]: the routing state built from one snapshot.
//! - [`admit`], [`api`]: what the edge decides before a request leaves it;
//!   [`proxy`]: the pingora service, failover included; [`buffered`]: submissions whose
//!   bodies are too large for pingora to resend; [`regions`]: circuit breakers, in-flight
//!   counts and the retry budget.
//! - [`metrics`]: Prometheus metrics on the admin listener; [`error`]: the API's errors.
//!
//! [`run`] serves until its shutdown token is cancelled. To start an edge in-process (as
//! the tests do): build an [`EdgeConfig`] (or [`config::load`] a file), bind
//! [`Listeners`] yourself on `127.0.0.1:0` (or [`Listeners::bind`] the configured
//! addresses) and read their ports, then spawn `run(config, listeners, token)`; cancel the
//! token to stop accepting and drain. The edge answers 503 until it has a snapshot, from the
//! control plane or its cache file.

pub mod admit;
pub mod api;
pub mod buffered;
pub mod cidr;
pub mod config;
pub mod error;
pub mod metrics;
pub mod proxy;
pub mod regions;
pub mod snapshot;
pub mod state;

use std::net::SocketAddr;
use std::os::fd::IntoRawFd;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use arc_swap::ArcSwapOption;
use control_plane_client::ControlPlane;
use pingora::apps::http_app::HttpServer;
use pingora::listeners::tls::TlsSettings;
use pingora::server::configuration::ServerConf;
use pingora::server::{Fds, ListenFds};
use pingora::services::listening::Service;
use policy::GeoIp;
use tokio_util::sync::CancellationToken;

pub use config::{EdgeConfig, HttpsListen};

use crate::metrics::{AdminApp, Metrics};
use crate::proxy::{Active, EdgeProxy};
use crate::regions::{Regions, RetryBudget};
use crate::snapshot::{Contact, SharedState, SnapshotFollower};

/// How long in-flight requests may take to finish once shutdown is asked for.
pub const DRAIN: Duration = Duration::from_secs(10);

/// Everything the request path shares.
#[derive(Debug)]
pub struct Edge {
    /// The configuration.
    pub config: EdgeConfig,
    /// The current routing state.
    pub state: SharedState,
    /// When the control plane last answered (the route decision's clock when it is down).
    pub contact: Contact,
    /// The geo-IP database, if configured.
    pub geoip: Option<GeoIp>,
    /// Circuit breakers and in-flight counts.
    pub regions: Arc<Regions>,
    /// The retry budget.
    pub retries: RetryBudget,
    /// The metrics.
    pub metrics: Arc<Metrics>,
    /// Origin of the rate limiters' time.
    pub clock: std::time::Instant,
    /// Requests being handled.
    pub active: Arc<Active>,
    /// The HTTP client for submissions sent by [`buffered`] (large bodies).
    pub agents: reqwest::Client,
}

/// The sockets the edge serves on, bound before [`run`] so that callers (tests) can bind
/// port 0 and learn the ports.
#[derive(Debug)]
pub struct Listeners {
    /// Plain HTTP.
    pub http: Vec<std::net::TcpListener>,
    /// HTTPS, each with its certificate and key files.
    pub https: Vec<(std::net::TcpListener, HttpsListen)>,
    /// The admin listener (`/metrics`).
    pub admin: Option<std::net::TcpListener>,
}

impl Listeners {
    /// Binds every address of `config`.
    ///
    /// # Errors
    ///
    /// When an address cannot be bound.
    pub fn bind(config: &EdgeConfig) -> anyhow::Result<Self> {
        let bind = |a: &SocketAddr| {
            std::net::TcpListener::bind(a).with_context(|| format!("listen on {a}"))
        };
        Ok(Self {
            http: config.http.iter().map(bind).collect::<Result<_, _>>()?,
            https: config
                .https
                .iter()
                .map(|h| Ok((bind(&h.address)?, h.clone())))
                .collect::<anyhow::Result<_>>()?,
            admin: config.admin.as_ref().map(bind).transpose()?,
        })
    }
}

/// Serves the edge on `listeners` until `shutdown` is cancelled, then stops accepting, lets
/// in-flight requests finish (up to [`DRAIN`]) and returns.
///
/// # Errors
///
/// When the geo-IP database, the TLS files or the listeners cannot be used.
pub async fn run(
    config: EdgeConfig,
    listeners: Listeners,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let geoip = match &config.geoip_database {
        Some(path) => {
            let bytes = tokio::fs::read(path)
                .await
                .with_context(|| format!("read {}", path.display()))?;
            Some(GeoIp::from_bytes(bytes).with_context(|| format!("open {}", path.display()))?)
        }
        None => None,
    };
    let metrics = Arc::new(Metrics::new().context("register the metrics")?);
    let regions = Arc::new(Regions::new(
        config.breaker_failures,
        config.breaker_cool_down,
    ));
    let shared: SharedState = Arc::new(ArcSwapOption::empty());
    let client = ControlPlane::new(
        &config.control_plane_url,
        &config.control_plane_token,
        config.control_plane_timeout,
    )
    .context("build the control plane client")?;
    let follower = SnapshotFollower::new(
        client,
        Arc::clone(&shared),
        config.snapshot_cache.clone(),
        config.poll_wait,
        Arc::clone(&metrics),
    );
    follower.start().await;
    let contact = follower.contact();
    let follow = tokio::spawn(follower.follow(shutdown.clone()));

    let agents = reqwest::Client::builder()
        .connect_timeout(config.connect_timeout)
        .read_timeout(config.read_timeout)
        .no_proxy()
        .build()
        .context("build the HTTP client for agents")?;
    let edge = Arc::new(Edge {
        agents,
        retries: RetryBudget::new(config.retry_ratio, config.retry_floor),
        config,
        state: shared,
        contact,
        geoip,
        regions: Arc::clone(&regions),
        metrics: Arc::clone(&metrics),
        clock: std::time::Instant::now(),
        active: Arc::new(Active::default()),
    });
    let (services, fds) = services(&edge, listeners)?;
    let (signal, watch) = tokio::sync::watch::channel(false);
    let mut serving = tokio::task::JoinSet::new();
    for mut service in services {
        let fds = Arc::clone(&fds);
        let watch = watch.clone();
        serving.spawn(async move { service.start_service(Some(fds), watch, 1).await });
    }
    shutdown.cancelled().await;
    tracing::info!("edge shutting down: no new connections");
    let _ = signal.send(true);
    while let Some(done) = serving.join_next().await {
        if let Err(e) = done {
            tracing::error!(error = %e, "a listening service failed");
        }
    }
    // Requests already accepted finish, up to the drain deadline.
    let deadline = tokio::time::Instant::now() + DRAIN;
    while edge.active.count() > 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    if edge.active.count() > 0 {
        tracing::warn!(
            active = edge.active.count(),
            "requests still in flight after the drain; stopping anyway"
        );
    }
    follow.abort();
    tracing::info!("edge stopped");
    Ok(())
}

type Services = Vec<Box<dyn pingora::services::Service>>;

/// The pingora services on `listeners`, and the table of their sockets.
fn services(edge: &Arc<Edge>, listeners: Listeners) -> anyhow::Result<(Services, ListenFds)> {
    let mut fds = Fds::new();
    let mut adopt = |listener: std::net::TcpListener| -> anyhow::Result<String> {
        listener
            .set_nonblocking(true)
            .context("make a listener non-blocking")?;
        let address = listener
            .local_addr()
            .context("read a listener's address")?
            .to_string();
        fds.add(address.clone(), listener.into_raw_fd());
        Ok(address)
    };
    let conf = Arc::new(ServerConf::default());
    let mut proxy = pingora::proxy::http_proxy_service_with_name(
        &conf,
        EdgeProxy {
            edge: Arc::clone(edge),
        },
        "meridian-edge",
    );
    for listener in listeners.http {
        let address = adopt(listener)?;
        proxy.add_tcp(&address);
        tracing::info!(%address, "edge serving HTTP");
    }
    for (listener, https) in listeners.https {
        let address = adopt(listener)?;
        let cert = https.cert.to_string_lossy().into_owned();
        let key = https.key.to_string_lossy().into_owned();
        let mut tls = TlsSettings::intermediate(&cert, &key)
            .map_err(|e| anyhow::anyhow!("load TLS certificate {cert} and key {key}: {e}"))?;
        tls.enable_h2();
        proxy.add_tls_with_settings(&address, None, tls);
        tracing::info!(%address, "edge serving HTTPS");
    }
    let mut services: Services = vec![Box::new(proxy)];
    if let Some(listener) = listeners.admin {
        let address = adopt(listener)?;
        let mut admin = Service::new(
            "meridian-edge-admin".to_owned(),
            HttpServer::new_app(AdminApp {
                metrics: Arc::clone(&edge.metrics),
                regions: Arc::clone(&edge.regions),
            }),
        );
        admin.add_tcp(&address);
        tracing::info!(%address, "edge serving metrics");
        services.push(Box::new(admin));
    }
    Ok((services, Arc::new(parking_lot::Mutex::new(fds))))
}
