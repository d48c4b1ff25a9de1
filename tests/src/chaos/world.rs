//! A Meridian for chaos: the control plane and each region agent as processes of their own
//! (`meridian-node`), killed with SIGKILL and started again on the same address and data; the
//! store on disk or in a real etcd that can be killed too; an in-process edge; optionally a
//! [`LinkProxy`] between the edge and one agent.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use control_plane_client::ControlPlane;
use edge_proxy::EdgeConfig;
use edge_proxy::config::Cidr;
use policy::Location;
use serde_json::Value;
use testkit::etcd::Etcd;
use testkit::tokens::{ADMIN, AGENT, AGENT_EDGE, EDGE};
use testkit::{TestEdge, eventually, patience, weights};

use super::node::Node;
use super::proxy::LinkProxy;
use crate::{MODEL, RegionDef};

/// Where the control plane keeps its state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Store {
    /// The embedded store in the world's directory.
    Embedded,
    /// A real etcd the world starts (and can kill).
    Etcd,
}

/// What to start.
pub struct WorldSpec<'a> {
    /// The control plane's store.
    pub store: Store,
    /// The regions, an agent each.
    pub regions: &'a [RegionDef],
    /// The tenants (TOML `[[tenants]]` tables).
    pub tenants: &'a str,
    /// The edge's own location.
    pub edge_location: Location,
    /// A region whose link from the edge passes through a [`LinkProxy`].
    pub proxied: Option<&'static str>,
    /// The edge's `agents.read_timeout`.
    pub read_timeout: Duration,
}

/// The running world.
pub struct World {
    pub dir: tempfile::TempDir,
    node: PathBuf,
    etcd: Option<Etcd>,
    control_plane: Node,
    /// The control plane's base URL (the same across restarts).
    pub control_plane_url: String,
    agents: BTreeMap<String, Node>,
    addresses: BTreeMap<String, SocketAddr>,
    /// The link proxy, when the spec asked for one.
    pub proxy: Option<LinkProxy>,
    pub edge: TestEdge,
    /// Tenant id → an API key of it.
    pub keys: BTreeMap<String, String>,
}

impl World {
    /// Starts everything with `node` (the `meridian-node` binary) and returns once every
    /// agent reports and the edge routes on the control plane's snapshot.
    pub async fn start(node: &str, spec: WorldSpec<'_>) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let node = PathBuf::from(node);
        let mut addresses = BTreeMap::new();
        for r in spec.regions {
            addresses.insert(r.id.to_owned(), free_address());
        }
        let proxy = match spec.proxied {
            Some(region) => Some(LinkProxy::start(addresses[region]).await),
            None => None,
        };
        let mut endpoints = addresses.clone();
        if let (Some(region), Some(proxy)) = (spec.proxied, &proxy) {
            endpoints.insert(region.to_owned(), proxy.address);
        }
        let catalog_path = dir.path().join("catalog.toml");
        std::fs::write(
            &catalog_path,
            catalog(spec.regions, &endpoints, spec.tenants),
        )
        .unwrap();
        let etcd = match spec.store {
            Store::Etcd => Some(Etcd::start().await),
            Store::Embedded => None,
        };
        let listen = free_address();
        let config = control_plane_config(dir.path(), listen, &catalog_path, etcd.as_ref());
        let control_plane = Node::start(
            "control-plane",
            &node,
            &["control-plane", path_str(&config)],
            &dir.path().join("control-plane.log"),
        );
        let control_plane_url = format!("http://{listen}");
        let mut agents = BTreeMap::new();
        for r in spec.regions {
            let config = agent_config(dir.path(), r.id, addresses[r.id], &control_plane_url);
            let agent = Node::start(
                &format!("agent-{}", r.id),
                &node,
                &["agent", path_str(&config)],
                &dir.path().join(format!("agent-{}.log", r.id)),
            );
            agents.insert(r.id.to_owned(), agent);
        }
        let admin = ControlPlane::new(&control_plane_url, ADMIN, patience()).unwrap();
        eventually("the control plane serves", || async {
            admin.list::<Value>("tenants").await.is_ok()
        })
        .await;
        let mut keys = BTreeMap::new();
        for tenant in admin.list::<Value>("tenants").await.unwrap().items {
            let id = tenant["id"].as_str().unwrap().to_owned();
            let created = admin.create_key(&id, None).await.unwrap();
            keys.insert(id, created.key);
        }
        let edge_client = ControlPlane::new(&control_plane_url, EDGE, patience()).unwrap();
        let n = spec.regions.len();
        eventually(&format!("{n} agents report"), || async {
            edge_client
                .snapshot()
                .await
                .is_ok_and(|s| s.regions.len() == n)
        })
        .await;
        let revision = edge_client.snapshot().await.unwrap().revision;
        let edge =
            TestEdge::start(edge_config(&control_plane_url, dir.path(), &spec), revision).await;
        Self {
            dir,
            node,
            etcd,
            control_plane,
            control_plane_url,
            agents,
            addresses,
            proxy,
            edge,
            keys,
        }
    }

    /// The API key of `tenant`.
    pub fn key(&self, tenant: &str) -> String {
        self.keys[tenant].clone()
    }

    /// A client of the control plane with the admin token.
    pub fn admin(&self) -> ControlPlane {
        ControlPlane::new(&self.control_plane_url, ADMIN, patience()).unwrap()
    }

    /// A client of the control plane with the edge token.
    pub fn edge_client(&self) -> ControlPlane {
        ControlPlane::new(&self.control_plane_url, EDGE, patience()).unwrap()
    }

    /// SIGKILLs the agent of `region`; returns once its address refuses connections.
    pub async fn kill_agent(&mut self, region: &str) {
        self.agents[region].kill();
        let address = self.addresses[region];
        eventually(&format!("{region} refuses connections"), || async {
            tokio::net::TcpStream::connect(address).await.is_err()
        })
        .await;
    }

    /// Starts the killed agent of `region` again (same address, same data); returns once
    /// it answers its health check.
    pub async fn restart_agent(&mut self, region: &str) {
        self.agents[region].spawn();
        let url = format!("http://{}/healthz", self.addresses[region]);
        let http = testkit::edge::client();
        eventually(&format!("{region} serves again"), || async {
            self.agents[region].assert_running();
            http.get(&url)
                .send()
                .await
                .is_ok_and(|r| r.status().is_success())
        })
        .await;
    }

    /// The sum of every series of the metric `name` on the agent of `region` (0 when it does
    /// not answer).
    pub async fn agent_metric(&self, region: &str, name: &str) -> f64 {
        let url = format!("http://{}/metrics", self.addresses[region]);
        let Ok(response) = testkit::edge::client().get(&url).send().await else {
            return 0.0;
        };
        let text = response.text().await.unwrap_or_default();
        text.lines()
            .filter(|line| {
                line.strip_prefix(name)
                    .is_some_and(|rest| rest.starts_with([' ', '{']))
            })
            .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    /// The pid of the agent of `region`, while it runs.
    pub fn agent_pid(&self, region: &str) -> Option<u32> {
        self.agents[region].pid()
    }

    /// SIGKILLs the control plane.
    pub fn kill_control_plane(&mut self) {
        self.control_plane.kill();
    }

    /// Starts the control plane again on the same address and store; returns once it
    /// serves.
    pub async fn restart_control_plane(&mut self) {
        self.control_plane.spawn();
        let admin = self.admin();
        eventually("the control plane serves again", || async {
            self.control_plane.assert_running();
            admin.list::<Value>("tenants").await.is_ok()
        })
        .await;
    }

    /// SIGKILLs etcd (the control plane stays up).
    pub async fn kill_etcd(&mut self) {
        self.etcd.as_mut().expect("a world on etcd").kill().await;
    }

    /// Starts etcd again on the same URLs and data; returns once it serves clients.
    pub async fn restart_etcd(&mut self) {
        self.etcd.as_mut().expect("a world on etcd").restart().await;
    }

    /// The `meridian-node` binary this world runs.
    pub fn node_binary(&self) -> &Path {
        &self.node
    }
}

fn path_str(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// A loopback address no one listens on now.
fn free_address() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap()
}

fn catalog(
    regions: &[RegionDef],
    endpoints: &BTreeMap<String, SocketAddr>,
    tenants: &str,
) -> String {
    crate::stack::world_catalog(regions, |id| format!("http://{}", endpoints[id]), tenants).toml()
}

/// Writes the control plane's configuration file; returns its path.
fn control_plane_config(
    dir: &Path,
    listen: SocketAddr,
    catalog: &Path,
    etcd: Option<&Etcd>,
) -> PathBuf {
    let store = match etcd {
        Some(etcd) => format!("backend = \"etcd\"\nendpoints = [\"{}\"]", etcd.endpoint),
        None => format!(
            "backend = \"embedded\"\ndata_dir = \"{}\"",
            dir.join("store").display()
        ),
    };
    let text = format!(
        r#"
        listen = "{listen}"
        admin_token = "{ADMIN}"
        edge_token = "{EDGE}"
        agent_token = "{AGENT}"
        seed_catalog = "{catalog}"
        agent_lease_ttl_secs = 6
        max_poll_wait_secs = 5
        spend_refresh_ms = 200
        [store]
        {store}
        "#,
        catalog = catalog.display(),
    );
    let path = dir.join("control-plane.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// Writes the configuration file of `region`'s agent; returns its path.
fn agent_config(dir: &Path, region: &str, listen: SocketAddr, control_plane: &str) -> PathBuf {
    let text = format!(
        r#"
        region = "{region}"
        listen = "{listen}"
        edge_token = "{AGENT_EDGE}"
        data_dir = "{data}"
        drain_timeout_s = 5
        on_demand_start_ms = 0
        # The world's pools are H100s; its agents run on the CPU.
        [gpus]
        accept_mismatch = true
        [control_plane]
        url = "{control_plane}"
        agent_token = "{AGENT}"
        heartbeat_interval_ms = 200
        usage_interval_ms = 200
        [[models]]
        id = "{MODEL}"
        weights_dir = "{weights}"
        "#,
        data = dir.join(format!("agent-{region}")).display(),
        weights = weights::esrgan_slim().display(),
    );
    let path = dir.join(format!("agent-{region}.toml"));
    std::fs::write(&path, text).unwrap();
    path
}

/// How long the edge keeps a region's circuit open before it half-opens.
pub const BREAKER_COOL_DOWN: Duration = Duration::from_secs(1);

/// The edge: believes X-Forwarded-For from loopback, fails over fast (short connect
/// timeout, a breaker that opens after two failures and half-opens after a second), every
/// request earns a retry.
fn edge_config(control_plane: &str, dir: &Path, spec: &WorldSpec<'_>) -> EdgeConfig {
    EdgeConfig {
        trusted_proxies: vec![Cidr::parse("127.0.0.0/8").unwrap()],
        control_plane_timeout: Duration::from_secs(2),
        connect_timeout: Duration::from_millis(500),
        read_timeout: spec.read_timeout,
        agent_idle_timeout: Duration::from_secs(20),
        max_body_bytes: 256 * 1024,
        retry_ratio: 1.0,
        retry_floor: 100,
        breaker_failures: 2,
        breaker_cool_down: BREAKER_COOL_DOWN,
        ..testkit::edge::edge_config(control_plane, dir, spec.edge_location)
    }
}
