//! Test harness shared by the store's integration tests: a real etcd on free loopback ports
//! and an embedded store in a temporary directory.

#![allow(dead_code)]

use std::sync::Arc;
use std::time::Duration;

use control_plane::store::embedded::{EmbeddedConfig, EmbeddedStore};
use control_plane::store::etcd::EtcdStore;
use control_plane::store::local_etcd::LocalEtcd;
use control_plane::store::{Result, WatchEvent, WatchStream};

/// How long any awaited condition may take before the test fails.
pub const PATIENCE: Duration = Duration::from_secs(15);

/// A real etcd server (Debian's `etcd`, installed by scripts/bootstrap) with its own data
/// directory and free loopback ports; killed when dropped.
pub struct EtcdServer {
    server: LocalEtcd,
    _data: tempfile::TempDir,
    /// The client URL.
    pub endpoint: String,
}

impl EtcdServer {
    /// Starts etcd and waits until it serves clients. Panics (failing the test) when it
    /// cannot: these tests never skip.
    pub async fn start() -> Self {
        tokio::task::spawn_blocking(|| {
            let data = tempfile::tempdir().expect("a temporary directory");
            let server = LocalEtcd::start(data.path()).unwrap_or_else(|log| panic!("{log}"));
            Self {
                endpoint: server.endpoint.clone(),
                server,
                _data: data,
            }
        })
        .await
        .expect("etcd start task")
    }

    /// A store connected to this server.
    pub async fn store(&self) -> Arc<EtcdStore> {
        Arc::new(
            EtcdStore::connect(std::slice::from_ref(&self.server.endpoint))
                .await
                .expect("connect to etcd"),
        )
    }
}

/// An embedded store in a temporary directory.
pub struct EmbeddedBackend {
    pub dir: tempfile::TempDir,
    pub store: Arc<EmbeddedStore>,
}

impl EmbeddedBackend {
    pub async fn start() -> Self {
        let dir = tempfile::tempdir().expect("temporary directory");
        let store = EmbeddedStore::open(EmbeddedConfig::new(dir.path()))
            .await
            .expect("open the embedded store");
        Self {
            dir,
            store: Arc::new(store),
        }
    }
}

/// The next item of a watch, failing the test when none comes in time.
pub async fn next_item(watch: &mut WatchStream) -> Result<WatchEvent> {
    tokio::time::timeout(PATIENCE, watch.next())
        .await
        .expect("a watch event in time")
        .expect("the watch to go on")
}

/// The next event of a watch, which must not be an error.
pub async fn next_event(watch: &mut WatchStream) -> WatchEvent {
    next_item(watch).await.expect("a watch event, not an error")
}
