//! The configuration files the chaos world's processes read: the catalog, the control
//! plane's and each agent's.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use testkit::etcd::Etcd;
use testkit::tokens::{ADMIN, AGENT, AGENT_EDGE, EDGE};
use testkit::weights;

use super::world::InstanceDef;
use crate::{MODEL, POOL, RegionDef};

/// The catalog: each region's agent at `endpoints[region]`, or no catalog endpoint for a
/// region of several instances (each reports its own).
pub(super) fn catalog(
    regions: &[RegionDef],
    endpoints: &BTreeMap<String, SocketAddr>,
    tenants: &str,
) -> String {
    let endpoint = |id: &str| {
        endpoints
            .get(id)
            .map_or_else(String::new, |address| format!("http://{address}"))
    };
    crate::stack::world_catalog(regions, endpoint, tenants).toml()
}

/// Writes the control plane's configuration file; returns its path.
pub(super) fn control_plane_config(
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

/// One agent process of the world.
pub(super) struct AgentFile<'a> {
    /// Its name in the world: the region's id, or its instance's id.
    pub name: &'a str,
    pub region: &'a str,
    /// Its instance of a region of several, with its id and share of the region's pool.
    pub instance: Option<&'a InstanceDef>,
    pub listen: SocketAddr,
}

/// Writes the configuration file of agent `agent`; returns its path.
pub(super) fn agent_config(dir: &Path, agent: &AgentFile<'_>, control_plane: &str) -> PathBuf {
    let AgentFile {
        name,
        region,
        instance,
        listen,
    } = *agent;
    // An instance names itself, says where edges reach it and serves its share of the pool.
    let (identity, share) = match instance {
        Some(i) => (
            format!("instance = \"{}\"\nendpoint = \"http://{listen}\"", i.id),
            format!(
                "[pools]\n{POOL} = {{ reserved = {}, on_demand = {} }}",
                i.reserved, i.on_demand
            ),
        ),
        None => (String::new(), String::new()),
    };
    let text = format!(
        r#"
        region = "{region}"
        listen = "{listen}"
        {identity}
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
        {share}
        "#,
        data = dir.join(format!("agent-{name}")).display(),
        weights = weights::esrgan_slim().display(),
    );
    let path = dir.join(format!("agent-{name}.toml"));
    std::fs::write(&path, text).unwrap();
    path
}
