//! What the store's integration tests share beyond the test kit: a store on a real etcd or
//! the embedded store in a temporary directory, and reading a watch with patience.

#![allow(dead_code)]

use std::sync::Arc;

use control_plane::store::embedded::{EmbeddedConfig, EmbeddedStore};
use control_plane::store::etcd::EtcdStore;
use control_plane::store::{Result, WatchEvent, WatchStream};
pub use testkit::etcd::Etcd;
use testkit::within;

/// A store connected to `etcd`.
pub async fn etcd_store(etcd: &Etcd) -> Arc<EtcdStore> {
    Arc::new(
        EtcdStore::connect(std::slice::from_ref(&etcd.endpoint))
            .await
            .expect("connect to etcd"),
    )
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
    within("a watch event", watch.next())
        .await
        .expect("the watch to go on")
}

/// The next event of a watch, which must not be an error.
pub async fn next_event(watch: &mut WatchStream) -> WatchEvent {
    next_item(watch).await.expect("a watch event, not an error")
}
