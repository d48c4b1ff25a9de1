//! A real control plane served in-process on a free loopback port, over the embedded store
//! in a temporary directory or a real etcd started for the test.

use control_plane::InProcess;
use control_plane::api::ApiSettings;
use control_plane::store::StoreConfig;
use control_plane_client::ControlPlane;
use policy::CatalogSpec;

use crate::etcd::Etcd;
use crate::patience::{patience, within};
use crate::tokens::{ADMIN, AGENT, EDGE};

/// Which store the control plane runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// The embedded raft store in a temporary directory.
    Embedded,
    /// A real etcd the test kit starts.
    Etcd,
}

/// What holds the store's data while the control plane runs (and across its restarts).
enum Holder {
    Dir(tempfile::TempDir),
    Etcd(Etcd),
}

/// How to start a [`TestControlPlane`].
pub struct Builder {
    backend: Backend,
    seed: Option<CatalogSpec>,
    api: ApiSettings,
}

impl Builder {
    /// Writes `catalog` into the store at the first start.
    #[must_use]
    pub fn seed(mut self, catalog: CatalogSpec) -> Self {
        self.seed = Some(catalog);
        self
    }

    /// Changes the API settings (tokens are the test kit's, see [`crate::tokens`]).
    #[must_use]
    pub fn settings(mut self, change: impl FnOnce(&mut ApiSettings)) -> Self {
        change(&mut self.api);
        self
    }

    /// Starts it and returns once it serves.
    pub async fn start(self) -> TestControlPlane {
        let holder = match self.backend {
            Backend::Embedded => Holder::Dir(tempfile::tempdir().expect("a temporary directory")),
            Backend::Etcd => Holder::Etcd(Etcd::start().await),
        };
        let store = match &holder {
            Holder::Dir(dir) => StoreConfig::embedded(dir.path().join("store")),
            Holder::Etcd(etcd) => etcd.store_config(),
        };
        let mut control_plane = TestControlPlane {
            url: String::new(),
            server: None,
            store,
            holder,
            api: self.api,
            seed: self.seed,
        };
        control_plane.serve().await;
        control_plane
    }
}

/// A control plane serving in this process.
pub struct TestControlPlane {
    /// Its base URL.
    pub url: String,
    server: Option<InProcess>,
    store: StoreConfig,
    holder: Holder,
    api: ApiSettings,
    seed: Option<CatalogSpec>,
}

impl TestControlPlane {
    /// A control plane on `backend` with the test kit's tokens and the configuration
    /// file's defaults.
    pub fn builder(backend: Backend) -> Builder {
        Builder {
            backend,
            seed: None,
            api: ApiSettings::with_tokens(ADMIN, EDGE, AGENT),
        }
    }

    async fn serve(&mut self) {
        let server = within(
            "the control plane to serve",
            InProcess::start(self.api.clone(), self.store.clone(), self.seed.clone()),
        )
        .await
        .expect("the control plane starts");
        self.url = server.url.clone();
        self.server = Some(server);
    }

    /// A client with `token`.
    pub fn client(&self, token: &str) -> ControlPlane {
        ControlPlane::new(&self.url, token, patience()).expect("a control-plane client")
    }

    /// A client with the admin token.
    pub fn admin(&self) -> ControlPlane {
        self.client(ADMIN)
    }

    /// A client with the edge token.
    pub fn edge(&self) -> ControlPlane {
        self.client(EDGE)
    }

    /// A client with the agent token.
    pub fn agent(&self) -> ControlPlane {
        self.client(AGENT)
    }

    /// The store it runs on.
    pub fn store_config(&self) -> &StoreConfig {
        &self.store
    }

    /// The etcd under it, when that is the backend.
    pub fn etcd(&self) -> Option<&Etcd> {
        match &self.holder {
            Holder::Etcd(etcd) => Some(etcd),
            Holder::Dir(_) => None,
        }
    }

    /// Stops it and waits until it has drained and closed its store (the data stays).
    pub async fn stop(&mut self) {
        if let Some(server) = self.server.take() {
            within("the control plane to stop", server.stop())
                .await
                .expect("the control plane ran without error");
        }
    }

    /// Stops it and starts a new one on the same store (on a new port).
    pub async fn restart(&mut self) {
        self.stop().await;
        self.serve().await;
    }
}
