//! The world an edge runs in, started in-process on port 0 with the test kit: the real
//! control plane over an embedded store in a temporary directory, seeded with six regions; a
//! stand-in agent per region; and edges.

use std::collections::HashMap;

use control_plane_client::ControlPlane;
use control_plane_client::wire::AgentReport;
use edge_proxy::EdgeConfig;
use edge_proxy::config::Cidr;
use policy::{CatalogSpec, Location};
use serde_json::json;
use testkit::catalog::{Catalog, Model, Region};
pub use testkit::edge::{Answer, client};
pub use testkit::stand_in::{Behaviour, StandInAgent};
pub use testkit::tokens::{ADMIN, AGENT_EDGE};
use testkit::{Backend, TestControlPlane};
pub use testkit::{TestEdge, eventually};

pub const ESRGAN: &str = "meridian/esrgan-x4";

/// Where the regions are: id, jurisdiction, lat, lon, whether it serves ESRGAN.
const REGIONS: [(&str, &str, f64, f64, bool); 6] = [
    ("eu-west", "eu", 53.35, -6.26, true),   // Dublin
    ("eu-central", "eu", 50.11, 8.68, true), // Frankfurt
    ("us-west", "us", 47.61, -122.33, true), // Seattle
    ("us-east", "us", 39.04, -77.49, true),  // Ashburn
    ("uk-south", "uk", 51.51, -0.13, false), // London: serves only the audio models
    ("jp-east", "jp", 35.68, 139.69, true),  // Tokyo: no agent ever reports
];

/// Frankfurt: where the test edges say they are.
pub const FRANKFURT: Location = Location::new(50.11, 8.68);

/// The control plane with its catalog, the agents, and a key per tenant.
pub struct World {
    pub agents: HashMap<String, StandInAgent>,
    /// Tenant id → an API key of it.
    pub keys: HashMap<String, String>,
    pub dir: tempfile::TempDir,
    control_plane: TestControlPlane,
    /// The control plane's revision once everything above was written.
    ready_at: i64,
}

impl World {
    /// Starts everything; agents of regions in `behaviours` behave so, all others accept.
    pub async fn start(behaviours: &[(&str, Behaviour)]) -> Self {
        let mut agents = HashMap::new();
        for (region, ..) in REGIONS {
            let behaviour = behaviours
                .iter()
                .find(|(r, _)| *r == region)
                .map_or(Behaviour::Accept, |(_, b)| *b);
            agents.insert(
                region.to_owned(),
                StandInAgent::start(region, behaviour).await,
            );
        }
        let control_plane = TestControlPlane::builder(Backend::Embedded)
            .seed(catalog(&agents))
            .settings(|api| {
                api.agent_lease_ttl = std::time::Duration::from_secs(600);
                api.max_poll_wait = std::time::Duration::from_secs(30);
                api.spend_refresh = std::time::Duration::from_millis(200);
            })
            .start()
            .await;
        let (admin, agent) = (control_plane.admin(), control_plane.agent());
        let report = AgentReport {
            healthy: true,
            free_reserved: 2,
            ..AgentReport::default()
        };
        for (region, ..) in REGIONS.iter().filter(|r| r.0 != "jp-east") {
            agent.register(region, &report).await.unwrap();
        }
        let mut keys = HashMap::new();
        for tenant in ["acme", "euro", "brit", "nippon", "slow", "bounded"] {
            let created = admin.create_key(tenant, None).await.unwrap();
            keys.insert(tenant.to_owned(), created.key);
        }
        let ready_at = control_plane.edge().snapshot().await.unwrap().revision;
        Self {
            agents,
            keys,
            dir: tempfile::tempdir().unwrap(),
            control_plane,
            ready_at,
        }
    }

    /// The control plane's URL.
    pub fn url(&self) -> &str {
        &self.control_plane.url
    }

    /// A control plane client with `token`.
    pub fn client(&self, token: &str) -> ControlPlane {
        self.control_plane.client(token)
    }

    pub fn key(&self, tenant: &str) -> &str {
        &self.keys[tenant]
    }

    pub fn agent(&self, region: &str) -> &StandInAgent {
        &self.agents[region]
    }

    /// `region`'s agent reports `jobs` (tenant, jobs queued or running) in a heartbeat; returns
    /// the control plane's revision once it holds the report.
    pub async fn report_jobs(&self, region: &str, jobs: &[(&str, u32)]) -> i64 {
        let report = AgentReport {
            healthy: true,
            free_reserved: 2,
            tenant_jobs: jobs.iter().map(|(t, n)| ((*t).to_owned(), *n)).collect(),
            ..AgentReport::default()
        };
        self.control_plane
            .agent()
            .heartbeat(region, &report)
            .await
            .unwrap();
        self.control_plane.edge().snapshot().await.unwrap().revision
    }

    /// Stops the control plane (agents keep serving).
    pub async fn stop_control_plane(&mut self) {
        self.control_plane.stop().await;
    }

    /// An edge configuration for this world: HTTP and admin on port 0, at `FRANKFURT`.
    pub fn edge_config(&self) -> EdgeConfig {
        let mut config = testkit::edge::edge_config(self.url(), self.dir.path(), FRANKFURT);
        config.read_timeout = std::time::Duration::from_secs(10);
        config
    }

    /// Starts an edge with `config`, returning once it routes on everything this world
    /// wrote at its start.
    pub async fn start_edge(&self, config: EdgeConfig) -> TestEdge {
        TestEdge::start(config, self.ready_at).await
    }
}

/// `POST /v1/run/meridian/esrgan-x4` with `key`, from `forwarded_for` if given.
pub async fn run_esrgan(edge: &TestEdge, key: &str, forwarded_for: Option<&str>) -> Answer {
    let mut request = edge
        .http
        .post(format!("{}/v1/run/{ESRGAN}", edge.base))
        .header("authorization", format!("Bearer {key}"))
        .json(&json!({"input": {"image": "aGVsbG8="}}));
    if let Some(xff) = forwarded_for {
        request = request.header("x-forwarded-for", xff);
    }
    Answer::of(request.send().await.unwrap()).await
}

/// A tenant with at most two jobs queued or running.
const BOUNDED: &str = r#"
[[tenants]]
id = "bounded"
residency = "any"
quotas = { max_concurrent = 2 }
"#;

fn catalog(agents: &HashMap<String, StandInAgent>) -> CatalogSpec {
    let mut catalog = Catalog::new()
        .routing("heartbeat_timeout_ms = 86400000")
        .jurisdictions(&["eu", "us", "uk", "jp"]);
    for (id, jurisdiction, lat, lon, _) in REGIONS {
        catalog = catalog.region(
            Region::new(id, jurisdiction, (lat, lon), &agents[id].endpoint).reserved(2, 2.0),
        );
    }
    let esrgan: Vec<&str> = REGIONS.iter().filter(|r| r.4).map(|r| r.0).collect();
    catalog
        .model(Model::esrgan_x4().only_in(&esrgan))
        .model(
            Model::new(
                "meridian/silero-vad",
                "audio-analysis",
                "audio_second",
                0.0001,
            )
            .gpu_seconds(0.01)
            .only_in(&["uk-south"]),
        )
        .model(
            Model::new(
                "meridian/whisper-tiny-en",
                "audio-to-text",
                "audio_second",
                0.0001,
            )
            .gpu_seconds(0.01)
            .only_in(&["uk-south"]),
        )
        .tenants(testkit::catalog::TENANTS)
        .tenants(BOUNDED)
        .build()
}

/// A trusted-proxy network.
pub fn cidr(text: &str) -> Cidr {
    Cidr::parse(text).unwrap()
}
