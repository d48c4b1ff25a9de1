//! Meridian's edge proxy (docs/design.md §1, §3, §4, §7).
//!
//! Every client request arrives here. The edge authenticates the API key, applies the
//! tenant's quotas, resolves the client's location with a MaxMind database, asks the `policy`
//! crate for the ordered candidate regions and proxies to the first, failing over only to
//! the next regions of that list. It runs on pingora.
//!
//! - [`config`]: the TOML file and the checked [`EdgeConfig`]; [`cidr`]: trusted proxies.
//! - [`snapshot`]: following the control plane's snapshots, with a cache file for starts
//!   while it is down; [`state`]: the routing state built from one snapshot.
//! - [`admit`], [`api`]: what the edge decides before a request leaves it, with [`jobs`]
//!   (a tenant's bound on jobs, from the agents' counts), [`idempotency`] (keys and their
//!   regions) and [`throttle`] (read rates, wrong keys); [`surface`]: the compatible
//!   surfaces (fal, OpenAI, Replicate) and their error envelopes; [`named`]: the model a
//!   body names;
//!   [`proxy`]: the pingora service, failover included; [`buffered`]: submissions whose
//!   bodies are too large for pingora to resend, and those that name their model in the
//!   body; [`public_url`]: the URL the client reached the edge at, told to agents;
//!   [`regions`]: circuit breakers, in-flight counts and the retry budget.
//! - [`connections`]: caps on open connections and deadlines on slow clients.
//! - [`metrics`]: Prometheus metrics on the admin listener; [`error`]: the API's errors.
//!
//! [`run`] serves until its shutdown token is cancelled. To start an edge in-process (as
//! the tests do): build an [`EdgeConfig`] (or [`config::load`] a file), bind
//! [`Listeners`] yourself on `127.0.0.1:0` (or [`Listeners::bind`] the configured
//! addresses) and read their ports, then spawn `run(config, listeners, token)`; cancel the
//! token to stop accepting and drain. The edge answers 503 until it has a snapshot, from the
//! control plane or its cache file.

pub mod admit;
mod answer;
pub mod api;
pub mod buffered;
pub mod cidr;
pub mod config;
pub mod connections;
pub mod error;
pub mod hops;
pub mod idempotency;
pub mod instances;
pub mod jobs;
pub mod metrics;
pub mod named;
pub mod proxy;
pub mod public_url;
pub mod regions;
pub mod settle;
pub mod snapshot;
pub mod state;
pub mod surface;
pub mod throttle;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::os::fd::{IntoRawFd, RawFd};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use arc_swap::ArcSwapOption;
use control_plane_client::ControlPlane;
use pingora::apps::HttpServerOptions;
use pingora::apps::http_app::HttpServer;
use pingora::listeners::tls::TlsSettings;
use pingora::server::configuration::ServerConf;
use pingora::server::{Fds, ListenFds};
use pingora::services::listening::Service;
use policy::GeoIp;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

pub use config::{EdgeConfig, HttpsListen};

use crate::connections::Guarded;
use crate::metrics::{AdminApp, Metrics};
use crate::proxy::{Active, EdgeProxy};
use crate::regions::{Regions, RetryBudget};
use crate::settle::Settled;
use crate::snapshot::{Contact, SharedState, SnapshotFollower};

/// How long in-flight requests may take to finish once shutdown is asked for.
pub const DRAIN: Duration = Duration::from_secs(10);
/// How long the edge keeps connections it accepted last after it stops accepting, so that
/// their requests, still on their way, are served rather than cut off (see [`settle`]).
pub const SETTLE: Duration = Duration::from_secs(1);

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
    /// Jobs ranked so far: the turn that rotates a region's equal instances.
    pub(crate) turn: std::sync::atomic::AtomicUsize,
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
    /// Where each tenant's idempotency keys were sent.
    pub keys: idempotency::KeyRegions,
    /// Each tenant's rate of calls about existing requests.
    pub reads: throttle::ReadRates,
    /// Each client address's rate of file calls by signed link (which carry no key).
    pub link_reads: throttle::ReadRates,
    /// Wrong API keys per client address.
    pub failed_keys: throttle::FailedKeys,
    /// Open client connections and their deadlines.
    pub connections: Arc<connections::Connections>,
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
    /// Sockets taken over from the edge this one replaces ([`Listeners::inherit`]).
    inherited: Vec<Inherited>,
}

/// A listening socket received from the edge this one replaces.
#[derive(Debug)]
struct Inherited {
    address: String,
    fd: RawFd,
    role: Role,
}

#[derive(Debug)]
enum Role {
    Http,
    Https(HttpsListen),
    Admin,
}

impl Listeners {
    /// Binds every address of `config`.
    ///
    /// # Errors
    ///
    /// When an address cannot be bound.
    pub fn bind(config: &EdgeConfig) -> anyhow::Result<Self> {
        Ok(Self {
            http: config.http.iter().map(bind).collect::<Result<_, _>>()?,
            https: config
                .https
                .iter()
                .map(|h| Ok((bind(&h.address)?, h.clone())))
                .collect::<anyhow::Result<_>>()?,
            admin: config.admin.as_ref().map(bind).transpose()?,
            inherited: Vec::new(),
        })
    }

    /// Takes the listening sockets of the running edge, which hands them over on `SIGQUIT`
    /// (see [`run_upgradable`]), over `config.upgrade_socket`; addresses the running edge
    /// does not listen on are bound afresh, and its sockets this configuration does not name
    /// are closed. Connections waiting on the sockets are never refused: whichever edge
    /// accepts first serves them. Blocks until the running edge sends (about 5 s at most).
    ///
    /// # Errors
    ///
    /// When no upgrade socket is configured, nothing is received in time, or a new address
    /// cannot be bound.
    pub fn inherit(config: &EdgeConfig) -> anyhow::Result<Self> {
        let socket = config.upgrade_socket.as_ref().context(
            "--upgrade needs listen.upgrade_socket in the configuration (the running edge's too)",
        )?;
        let path = socket
            .to_str()
            .context("the upgrade socket's path is not UTF-8")?;
        if let Some(directory) = socket.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(directory)
                .with_context(|| format!("create {}", directory.display()))?;
        }
        let mut fds = Fds::new();
        fds.get_from_sock(path).map_err(|e| {
            anyhow::anyhow!(
                "no listening sockets received on {path} ({e}): start this edge with --upgrade \
                 first, then send SIGQUIT to the running edge within 5 s"
            )
        })?;
        let keep: HashSet<String> = config
            .http
            .iter()
            .chain(config.https.iter().map(|h| &h.address))
            .chain(config.admin.iter())
            .map(ToString::to_string)
            .collect();
        for address in fds.close_unclaimed(&keep) {
            tracing::warn!(%address, "the running edge listened here; this configuration does not: closed");
        }
        let mut listeners = Self {
            http: Vec::new(),
            https: Vec::new(),
            admin: None,
            inherited: Vec::new(),
        };
        let mut take = |address: &SocketAddr, role: Role| -> Option<Role> {
            let address = address.to_string();
            match fds.get(&address) {
                Some(fd) => {
                    tracing::info!(%address, "listening socket taken over from the running edge");
                    listeners.inherited.push(Inherited {
                        address,
                        fd: *fd,
                        role,
                    });
                    None
                }
                None => Some(role),
            }
        };
        let mut fresh_http = Vec::new();
        let mut fresh_https = Vec::new();
        let mut fresh_admin = None;
        for address in &config.http {
            if take(address, Role::Http).is_some() {
                fresh_http.push(*address);
            }
        }
        for https in &config.https {
            if let Some(Role::Https(h)) = take(&https.address, Role::Https(https.clone())) {
                fresh_https.push(h);
            }
        }
        if let Some(address) = &config.admin
            && take(address, Role::Admin).is_some()
        {
            fresh_admin = Some(*address);
        }
        listeners.http = fresh_http.iter().map(bind).collect::<Result<_, _>>()?;
        listeners.https = fresh_https
            .into_iter()
            .map(|h| Ok((bind(&h.address)?, h)))
            .collect::<anyhow::Result<_>>()?;
        listeners.admin = fresh_admin.as_ref().map(bind).transpose()?;
        Ok(listeners)
    }
}

fn bind(address: &SocketAddr) -> anyhow::Result<std::net::TcpListener> {
    std::net::TcpListener::bind(address).with_context(|| format!("listen on {address}"))
}

/// Serves the edge on `listeners` until `shutdown` is cancelled, then stops accepting, serves
/// the connections it accepted last (for [`SETTLE`]) and lets in-flight requests finish (up
/// to [`DRAIN`]), and returns.
///
/// # Errors
///
/// When the geo-IP database, the TLS files or the listeners cannot be used.
pub async fn run(
    config: EdgeConfig,
    listeners: Listeners,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    run_upgradable(config, listeners, shutdown, Arc::new(Notify::new())).await
}

/// [`run`], and each time `handoff` is notified: hands the listening sockets to a new edge
/// waiting in [`Listeners::inherit`] on `config.upgrade_socket`, then shuts down as on
/// `shutdown`. If the handoff fails (no upgrade socket, nobody waiting), the edge logs why
/// and keeps serving.
///
/// # Errors
///
/// As [`run`].
pub async fn run_upgradable(
    config: EdgeConfig,
    listeners: Listeners,
    shutdown: CancellationToken,
    handoff: Arc<Notify>,
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
        config.control_plane_token.expose(),
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
        keys: idempotency::KeyRegions::new(
            config.limits.idempotency_keys,
            Duration::from_secs(contract::headers::IDEMPOTENCY_WINDOW_SECS),
        ),
        reads: throttle::ReadRates::new(config.limits.reads),
        link_reads: throttle::ReadRates::per(config.limits.reads, "address"),
        failed_keys: throttle::FailedKeys::new(config.limits.failed_keys_per_minute),
        connections: connections::Connections::new(config.connections, Arc::clone(&metrics)),
        retries: RetryBudget::new(config.retry_ratio, config.retry_floor),
        config,
        state: shared,
        contact,
        geoip,
        regions: Arc::clone(&regions),
        turn: std::sync::atomic::AtomicUsize::new(0),
        metrics: Arc::clone(&metrics),
        clock: std::time::Instant::now(),
        active: Arc::new(Active::default()),
    });
    let upgrade_socket = edge.config.upgrade_socket.clone();
    let (services, fds) = services(&edge, listeners)?;
    let (signal, watch) = tokio::sync::watch::channel(false);
    let mut serving = tokio::task::JoinSet::new();
    for mut service in services {
        let fds = Arc::clone(&fds);
        let watch = watch.clone();
        serving.spawn(async move { service.start_service(Some(fds), watch, 1).await });
    }
    loop {
        tokio::select! {
            () = shutdown.cancelled() => break,
            () = handoff.notified() => match hand_off(&fds, upgrade_socket.as_deref()).await {
                Ok(count) => {
                    tracing::info!(count, "listening sockets handed to the new edge");
                    break;
                }
                Err(e) => tracing::error!("upgrade failed, still serving: {e:#}"),
            },
        }
    }
    tracing::info!("edge shutting down: no new connections");
    let _ = signal.send(true);
    while let Some(done) = serving.join_next().await {
        if let Err(e) = done {
            tracing::error!(error = %e, "a listening service failed");
        }
    }
    // The services return SETTLE after they stopped accepting (see `settle`), having served
    // the requests of the connections they accepted last; requests in flight finish up to
    // DRAIN after that.
    let stopped = tokio::time::Instant::now();
    while edge.active.count() > 0 && stopped.elapsed() < DRAIN {
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

/// Sends the listening sockets to the edge waiting on `socket`.
async fn hand_off(fds: &ListenFds, socket: Option<&Path>) -> anyhow::Result<usize> {
    let socket = socket
        .context("no listen.upgrade_socket configured")?
        .to_str()
        .context("the upgrade socket's path is not UTF-8")?
        .to_owned();
    let fds = Arc::clone(fds);
    tokio::task::spawn_blocking(move || {
        fds.lock().send_to_sock(socket.as_str()).map_err(|e| {
            anyhow::anyhow!(
                "no new edge took the sockets on {socket} ({e}); start one with --upgrade first"
            )
        })
    })
    .await
    .context("the handoff task failed")?
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
    let mut app = pingora::proxy::http_proxy(
        &conf,
        EdgeProxy {
            edge: Arc::clone(edge),
        },
    );
    let mut options = HttpServerOptions::default();
    options.h2_idle_timeout = Some(edge.config.connections.idle_timeout);
    app.server_options = Some(options);
    let app = Guarded::new(app, Arc::clone(&edge.connections));
    let mut proxy = Service::new("meridian-edge".to_owned(), Settled::new(app, SETTLE));
    for listener in listeners.http {
        let address = adopt(listener)?;
        proxy.add_tcp(&address);
        tracing::info!(%address, "edge serving HTTP");
    }
    let mut https = Vec::new();
    for (listener, config) in listeners.https {
        https.push((adopt(listener)?, config));
    }
    let mut admin = listeners.admin.map(&mut adopt).transpose()?;
    for inherited in listeners.inherited {
        fds.add(inherited.address.clone(), inherited.fd);
        match inherited.role {
            Role::Http => {
                proxy.add_tcp(&inherited.address);
                tracing::info!(address = %inherited.address, "edge serving HTTP");
            }
            Role::Https(config) => https.push((inherited.address, config)),
            Role::Admin => admin = Some(inherited.address),
        }
    }
    for (address, https) in https {
        let cert = https.cert.to_string_lossy().into_owned();
        let key = https.key.to_string_lossy().into_owned();
        let mut tls = TlsSettings::intermediate(&cert, &key)
            .map_err(|e| anyhow::anyhow!("load TLS certificate {cert} and key {key}: {e}"))?;
        tls.enable_h2();
        proxy.add_tls_with_settings(&address, None, tls);
        tracing::info!(%address, "edge serving HTTPS");
    }
    let mut services: Services = vec![Box::new(proxy)];
    if let Some(address) = admin {
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
