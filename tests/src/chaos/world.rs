//! A Meridian for chaos: the control plane and each region agent as processes of their own
//! (`meridian-node`), killed with SIGKILL and started again on the same address and data; the
//! store on disk or in a real etcd that can be killed too; an in-process edge; optionally a
//! [`LinkProxy`] between the edge and one agent. A region runs one agent, or several — its
//! instances, each with its own address, data and share of the region's pool.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::time::Duration;

use control_plane_client::ControlPlane;
use control_plane_client::wire::{Snapshot, UsageRecord, UsageRecordPage};
use edge_proxy::EdgeConfig;
use edge_proxy::config::Cidr;
use policy::Location;
use serde_json::Value;
use testkit::etcd::Etcd;
use testkit::tokens::{ADMIN, AGENT, EDGE};
use testkit::{TestEdge, eventually, patience};

use super::files::{self, AgentFile};
use super::node::Node;
use super::proxy::LinkProxy;
use crate::RegionDef;

/// Where the control plane keeps its state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Store {
    /// The embedded store in the world's directory.
    Embedded,
    /// A real etcd the world starts (and can kill).
    Etcd,
}

/// One of the instances of a region that runs several: an agent process with its own
/// address, data directory, instance id and share of the region's pool.
#[derive(Debug, Clone, Copy)]
pub struct InstanceDef {
    pub region: &'static str,
    /// Its instance id, also its agent's name in the world.
    pub id: &'static str,
    /// Its reserved slots of the region's pool.
    pub reserved: u32,
    /// Its on-demand slots of the region's pool.
    pub on_demand: u32,
}

/// What to start.
pub struct WorldSpec<'a> {
    /// The control plane's store.
    pub store: Store,
    /// The regions: one agent each, named by the region's id, unless `instances` lists its
    /// instances.
    pub regions: &'a [RegionDef],
    /// The instances of the regions that run several agents (their catalog entry then has
    /// no endpoint: each instance reports its own).
    pub instances: &'a [InstanceDef],
    /// The tenants (TOML `[[tenants]]` tables).
    pub tenants: &'a str,
    /// The edge's own location.
    pub edge_location: Location,
    /// A region of one agent whose link from the edge passes through a [`LinkProxy`].
    pub proxied: Option<&'static str>,
    /// The edge's `agents.read_timeout`.
    pub read_timeout: Duration,
}

/// One agent process and where it listens.
struct Agent {
    region: String,
    /// Its instance id when its region runs several.
    instance: Option<String>,
    address: SocketAddr,
    node: Node,
}

/// The running world.
pub struct World {
    pub dir: tempfile::TempDir,
    node: PathBuf,
    etcd: Option<Etcd>,
    control_plane: Node,
    /// The control plane's base URL (the same across restarts).
    pub control_plane_url: String,
    /// By name: the region's id, or the instance's id in a region of several.
    agents: BTreeMap<String, Agent>,
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
        let plan = agent_plan(&spec);
        let proxy = match spec.proxied {
            Some(region) => Some(LinkProxy::start(plan[region].listen).await),
            None => None,
        };
        let catalog = write_catalog(dir.path(), &spec, &plan, proxy.as_ref());
        let (control_plane, control_plane_url, etcd) =
            start_control_plane(dir.path(), &node, &catalog, spec.store).await;
        let agents = plan
            .iter()
            .map(|(name, a)| {
                (
                    name.clone(),
                    start_agent(dir.path(), &node, a, &control_plane_url),
                )
            })
            .collect();
        let keys = tenant_keys(&control_plane_url).await;
        let edge_client = ControlPlane::new(&control_plane_url, EDGE, patience()).unwrap();
        eventually("every agent reports", || async {
            edge_client
                .snapshot()
                .await
                .is_ok_and(|s| every_agent_reports(&s, &spec))
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

    /// SIGKILLs agent `name` (a region's id, or an instance's); returns once its address
    /// refuses connections.
    pub async fn kill_agent(&mut self, name: &str) {
        self.agents[name].node.kill();
        let address = self.agents[name].address;
        eventually(&format!("{name} refuses connections"), || async {
            tokio::net::TcpStream::connect(address).await.is_err()
        })
        .await;
    }

    /// Waits until agent `name` exits by itself (as after a drain); returns how it exited.
    /// It can then be started again.
    pub async fn await_exit(&self, name: &str) -> ExitStatus {
        let node = &self.agents[name].node;
        let mut status = None;
        eventually(&format!("{name} exits by itself"), || {
            status = status.or_else(|| node.exited());
            let exited = status.is_some();
            async move { exited }
        })
        .await;
        status.unwrap()
    }

    /// Starts agent `name` again after it was killed or exited (same address, same data);
    /// returns once it answers its health check.
    pub async fn restart_agent(&mut self, name: &str) {
        let agent = &self.agents[name];
        agent.node.spawn();
        let url = format!("http://{}/healthz", agent.address);
        let http = testkit::edge::client();
        eventually(&format!("{name} serves again"), || async {
            agent.node.assert_running();
            http.get(&url)
                .send()
                .await
                .is_ok_and(|r| r.status().is_success())
        })
        .await;
    }

    /// The sum of every series of the metric `name` on agent `agent` (0 when it does not
    /// answer).
    pub async fn agent_metric(&self, agent: &str, name: &str) -> f64 {
        let url = format!("http://{}/metrics", self.agents[agent].address);
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

    /// The pid of agent `name`, while it runs.
    pub fn agent_pid(&self, name: &str) -> Option<u32> {
        self.agents[name].node.pid()
    }

    /// Every per-job usage record agent `name` keeps, read page by page from the agent
    /// itself as the control plane reads them (its records call reads a region at its
    /// catalog endpoint, which a region of several instances does not have).
    pub async fn agent_records(&self, name: &str) -> Vec<UsageRecord> {
        let url = format!(
            "http://{}/internal/v1/usage/records",
            self.agents[name].address
        );
        let http = testkit::edge::client();
        let mut all = Vec::new();
        let mut cursor = String::new();
        loop {
            let response = http
                .get(&url)
                .query(&[("cursor", cursor.as_str()), ("limit", "1000")])
                .bearer_auth(AGENT)
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), 200, "{name}'s records");
            let page: UsageRecordPage = response.json().await.unwrap();
            all.extend(page.records);
            match page.next {
                Some(next) => cursor = next,
                None => return all,
            }
        }
    }

    /// The instance ids of `region`'s agents, when it runs several.
    pub fn instances(&self, region: &str) -> Vec<String> {
        self.agents
            .values()
            .filter(|a| a.region == region)
            .filter_map(|a| a.instance.clone())
            .collect()
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

/// Each agent the spec asks for, by name, with a free address.
fn agent_plan<'a>(spec: &WorldSpec<'a>) -> BTreeMap<String, AgentFile<'a>> {
    let mut plan = BTreeMap::new();
    for r in spec.regions {
        let instances: Vec<&InstanceDef> =
            spec.instances.iter().filter(|i| i.region == r.id).collect();
        if instances.is_empty() {
            plan.insert(r.id.to_owned(), agent_file(r.id, r.id, None));
        }
        for i in instances {
            assert_ne!(spec.proxied, Some(r.id), "a proxied region runs one agent");
            let file = agent_file(i.id, r.id, Some(i));
            assert!(
                plan.insert(i.id.to_owned(), file).is_none(),
                "{} twice",
                i.id
            );
        }
    }
    for i in spec.instances {
        assert!(
            plan.contains_key(i.id),
            "{} is of no region of the world",
            i.id
        );
    }
    plan
}

fn agent_file<'a>(
    name: &'a str,
    region: &'a str,
    instance: Option<&'a InstanceDef>,
) -> AgentFile<'a> {
    AgentFile {
        name,
        region,
        instance,
        listen: free_address(),
    }
}

/// Writes the catalog: each one-agent region at its agent (or its proxy), regions of
/// several instances without an endpoint; returns its path.
fn write_catalog(
    dir: &Path,
    spec: &WorldSpec<'_>,
    plan: &BTreeMap<String, AgentFile<'_>>,
    proxy: Option<&LinkProxy>,
) -> PathBuf {
    let mut endpoints: BTreeMap<String, SocketAddr> = plan
        .iter()
        .filter(|(_, a)| a.instance.is_none())
        .map(|(name, a)| (name.clone(), a.listen))
        .collect();
    if let (Some(region), Some(proxy)) = (spec.proxied, proxy) {
        endpoints.insert(region.to_owned(), proxy.address);
    }
    let path = dir.join("catalog.toml");
    std::fs::write(
        &path,
        files::catalog(spec.regions, &endpoints, spec.tenants),
    )
    .unwrap();
    path
}

/// Starts the control plane (and etcd under it when `store` says so) on `catalog`;
/// returns it, its base URL and etcd.
async fn start_control_plane(
    dir: &Path,
    node: &Path,
    catalog: &Path,
    store: Store,
) -> (Node, String, Option<Etcd>) {
    let etcd = match store {
        Store::Etcd => Some(Etcd::start().await),
        Store::Embedded => None,
    };
    let listen = free_address();
    let config = files::control_plane_config(dir, listen, catalog, etcd.as_ref());
    let control_plane = Node::start(
        "control-plane",
        node,
        &["control-plane", path_str(&config)],
        &dir.join("control-plane.log"),
    );
    (control_plane, format!("http://{listen}"), etcd)
}

/// Starts the agent `file` describes.
fn start_agent(dir: &Path, node: &Path, file: &AgentFile<'_>, control_plane: &str) -> Agent {
    let config = files::agent_config(dir, file, control_plane);
    let process = Node::start(
        &format!("agent-{}", file.name),
        node,
        &["agent", path_str(&config)],
        &dir.join(format!("agent-{}.log", file.name)),
    );
    Agent {
        region: file.region.to_owned(),
        instance: file.instance.map(|i| i.id.to_owned()),
        address: file.listen,
        node: process,
    }
}

/// Waits until the control plane serves; returns an API key of each of its tenants.
async fn tenant_keys(control_plane: &str) -> BTreeMap<String, String> {
    let admin = ControlPlane::new(control_plane, ADMIN, patience()).unwrap();
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
    keys
}

/// Whether `snapshot` has a live report from every region, and from each named instance.
fn every_agent_reports(snapshot: &Snapshot, spec: &WorldSpec<'_>) -> bool {
    let live = &snapshot.regions;
    spec.regions
        .iter()
        .all(|r| live.iter().any(|l| l.region == r.id))
        && spec.instances.iter().all(|i| {
            live.iter()
                .any(|l| l.region == i.region && l.report.instance == i.id)
        })
}

/// A loopback address no one listens on now.
fn free_address() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap()
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
