//! Meridian's edge as it runs in production, in-process: the real control plane over an
//! embedded store in a temporary directory, seeded with three regions whose agent endpoint
//! is the stand-in backend, one model and one tenant with a key; and `edge_proxy::run` on
//! its own thread, with a single-threaded tokio runtime (the edge's "one worker", as pingora runs
//! each of its worker threads: one runtime per thread, no work stealing).
//!
//! Each request does the edge's real work: the key check, the tenant's quotas (rate,
//! concurrency and monthly budget, all set far above what the bench sends, so they are
//! checked but never refuse), a geo-IP lookup in the MaxMind test database of the client
//! address that `X-Forwarded-For` gives (loopback is a trusted proxy), the route decision
//! over the three regions, the choice of one of the region's instances, and the proxying to
//! it.
//!
//! Each region is served by `instances` agent instances (1, 8 or 64 in the bench), every one
//! reporting the same backend as its endpoint and an equal share of the slots: the edge
//! ranks them all for every request, while the backend and its connections stay the same, so
//! what changes with the count is only the edge's own work per request.

use std::net::SocketAddr;
use std::thread::JoinHandle;
use std::time::Duration;

use control_plane::api::ApiSettings;
use control_plane::config::ServerConfig;
use control_plane::store::StoreConfig;
use control_plane_client::ControlPlane;
use control_plane_client::wire::AgentReport;
use edge_proxy::config::Cidr;
use edge_proxy::{EdgeConfig, Listeners};
use policy::{CatalogSpec, Location};
use testkit::catalog::{Catalog, Model, Region};
use testkit::tokens::{ADMIN, AGENT, EDGE};
use tokio_util::sync::CancellationToken;

const TENANT: &str = "bench";
/// Dublin, Frankfurt, Ashburn.
const REGIONS: [(&str, &str, f64, f64); 3] = [
    ("eu-west", "eu", 53.35, -6.26),
    ("eu-central", "eu", 50.11, 8.68),
    ("us-east", "us", 39.04, -77.49),
];
/// Slots every region reports free, far above the connections the bench opens.
const SLOTS: u32 = 10_000;

/// The control plane and an edge in front of `backend`, each on its own thread.
pub struct EdgeUnderTest {
    /// The edge's HTTP address.
    pub address: SocketAddr,
    /// The tenant's API key.
    pub key: String,
    edge: Thread,
    control_plane: Thread,
    _dir: tempfile::TempDir,
}

/// A server on its own thread, stopped by cancelling its token.
struct Thread {
    shutdown: CancellationToken,
    handle: Option<JoinHandle<anyhow::Result<()>>>,
}

impl Thread {
    fn stop(&mut self) {
        self.shutdown.cancel();
        if let Some(handle) = self.handle.take() {
            match handle.join() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => eprintln!("a server stopped with an error: {e:#}"),
                Err(_) => eprintln!("a server thread panicked"),
            }
        }
    }
}

impl EdgeUnderTest {
    /// Starts the control plane, seeds it with `instances` instances per region, and starts
    /// the edge (which then fetches its first snapshot; wait for a 200 before measuring).
    pub fn start(backend: SocketAddr, instances: u32) -> Self {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let (control_plane, url) = start_control_plane(&dir, backend);
        let key = seed(&url, backend, instances);
        let config = edge_config(&url, dir.path());
        let listeners = Listeners::bind(&config).expect("bind the edge");
        let address = listeners.http[0].local_addr().unwrap();
        let shutdown = CancellationToken::new();
        let handle = {
            let shutdown = shutdown.clone();
            std::thread::Builder::new()
                .name("edge".into())
                .spawn(move || {
                    let runtime = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()?;
                    runtime.block_on(edge_proxy::run(config, listeners, shutdown))
                })
                .unwrap()
        };
        Self {
            address,
            key,
            edge: Thread {
                shutdown,
                handle: Some(handle),
            },
            control_plane,
            _dir: dir,
        }
    }
}

impl Drop for EdgeUnderTest {
    fn drop(&mut self) {
        self.edge.stop();
        self.control_plane.stop();
    }
}

fn start_control_plane(dir: &tempfile::TempDir, backend: SocketAddr) -> (Thread, String) {
    let config = ServerConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        api: ApiSettings {
            agent_lease_ttl: Duration::from_secs(3600),
            max_poll_wait: Duration::from_secs(30),
            ..ApiSettings::with_tokens(ADMIN, EDGE, AGENT)
        },
        store: StoreConfig::embedded(dir.path().join("store")),
        seed_catalog: Some(catalog(backend)),
        history_retention: control_plane::config::DEFAULT_HISTORY_RETENTION,
    };
    let listener = std::net::TcpListener::bind(config.listen).expect("bind the control plane");
    listener.set_nonblocking(true).unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let shutdown = CancellationToken::new();
    let handle = {
        let shutdown = shutdown.clone();
        std::thread::Builder::new()
            .name("control-plane".into())
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()?;
                runtime.block_on(async {
                    let listener = tokio::net::TcpListener::from_std(listener)?;
                    control_plane::run(config, listener, shutdown).await
                })
            })
            .unwrap()
    };
    let thread = Thread {
        shutdown,
        handle: Some(handle),
    };
    (thread, url)
}

/// Registers `instances` instances of every region and creates the tenant's key; returns
/// the key.
fn seed(url: &str, backend: SocketAddr, instances: u32) -> String {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        // The control plane's listener is bound before its thread starts, so these calls
        // wait in its backlog until it serves.
        let patience = testkit::patience();
        let admin = ControlPlane::new(url, ADMIN, patience).unwrap();
        let agent = ControlPlane::new(url, AGENT, patience).unwrap();
        for (region, ..) in REGIONS {
            for instance in 0..instances {
                let report = AgentReport {
                    healthy: true,
                    free_reserved: SLOTS / instances,
                    instance: format!("i-{instance}"),
                    endpoint: format!("http://{backend}"),
                    ..AgentReport::default()
                };
                agent
                    .register(region, &report)
                    .await
                    .expect("register an agent");
            }
        }
        admin
            .create_key(TENANT, None)
            .await
            .expect("create a key")
            .key
    })
}

fn catalog(backend: SocketAddr) -> CatalogSpec {
    let endpoint = format!("http://{backend}");
    let mut catalog = Catalog::new().routing("heartbeat_timeout_ms = 86400000");
    for (id, jurisdiction, lat, lon) in REGIONS {
        catalog = catalog
            .region(Region::new(id, jurisdiction, (lat, lon), &endpoint).reserved(SLOTS, 2.0));
    }
    catalog
        .model(Model::esrgan_x4())
        .tenants(&format!(
            "[[tenants]]\nid = \"{TENANT}\"\nresidency = \"any\"\nquotas = {{ \
             requests_per_second = 1000000.0, burst = 1000000, max_concurrent = 100000, \
             monthly_budget = 1000000000.0 }}"
        ))
        .build()
}

fn edge_config(control_plane: &str, dir: &std::path::Path) -> EdgeConfig {
    EdgeConfig {
        admin: None,
        trusted_proxies: vec![Cidr::parse("127.0.0.0/8").expect("a network")],
        read_timeout: Duration::from_secs(10),
        agent_idle_timeout: Duration::from_secs(20),
        ..testkit::edge::edge_config(control_plane, dir, Location::new(50.11, 8.68))
    }
}
