//! Test harness shared by the store's integration tests: a real etcd on free loopback ports
//! and an embedded store in a temporary directory.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::mpsc::{RecvTimeoutError, channel};
use std::time::{Duration, Instant};

use control_plane::store::embedded::{EmbeddedConfig, EmbeddedStore};
use control_plane::store::etcd::EtcdStore;
use control_plane::store::{Result, WatchEvent, WatchStream};

/// How long any awaited condition may take before the test fails.
pub const PATIENCE: Duration = Duration::from_secs(15);

/// A real etcd server (Debian's `etcd`, installed by scripts/bootstrap) with its own data
/// directory and free loopback ports; killed when dropped.
pub struct EtcdServer {
    child: Child,
    _data: tempfile::TempDir,
    /// The client URL.
    pub endpoint: String,
}

impl EtcdServer {
    /// Starts etcd and waits until it serves clients. Panics (failing the test) when it
    /// cannot: these tests never skip.
    pub async fn start() -> Self {
        tokio::task::spawn_blocking(|| {
            let mut failures = Vec::new();
            // A free port found by binding port 0 can be taken by someone else before etcd
            // binds it; try again with new ports then.
            for _ in 0..3 {
                match Self::try_start() {
                    Ok(server) => return server,
                    Err(log) => failures.push(log),
                }
            }
            panic!(
                "etcd did not start (run scripts/bootstrap to install it):\n{}",
                failures.join("\n---\n")
            );
        })
        .await
        .expect("etcd start task")
    }

    fn try_start() -> std::result::Result<Self, String> {
        let client_port = free_port();
        let peer_port = free_port();
        let data = tempfile::tempdir().map_err(|e| e.to_string())?;
        let client = format!("http://127.0.0.1:{client_port}");
        let peer = format!("http://127.0.0.1:{peer_port}");
        let mut child = Command::new("etcd")
            .arg("--name=meridian-test")
            .arg(format!("--data-dir={}", data.path().join("etcd").display()))
            .arg(format!("--listen-client-urls={client}"))
            .arg(format!("--advertise-client-urls={client}"))
            .arg(format!("--listen-peer-urls={peer}"))
            .arg(format!("--initial-advertise-peer-urls={peer}"))
            .arg(format!("--initial-cluster=meridian-test={peer}"))
            // Fast elections and a short minimum lease TTL keep the tests quick.
            .args(["--heartbeat-interval=10", "--election-timeout=100"])
            .args(["--logger=zap", "--log-outputs=stderr"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("spawn etcd: {e}"))?;
        let stderr = child.stderr.take().ok_or("etcd has no stderr")?;
        let (lines_tx, lines) = channel();
        std::thread::spawn(move || {
            // Keep draining etcd's log so it never blocks on a full pipe.
            for line in BufReader::new(stderr)
                .lines()
                .map_while(std::result::Result::ok)
            {
                let _ = lines_tx.send(line);
            }
        });
        let deadline = Instant::now() + PATIENCE;
        let mut log = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match lines.recv_timeout(left) {
                Ok(line) => {
                    // etcd 3.4's zap logger says the first, later versions the second.
                    let ready = line.contains("serving client traffic")
                        || line.contains("ready to serve client requests");
                    log.push(line);
                    if ready {
                        return Ok(Self {
                            child,
                            _data: data,
                            endpoint: client,
                        });
                    }
                }
                Err(RecvTimeoutError::Timeout) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    log.push("timed out waiting for etcd to serve clients".into());
                    return Err(log.join("\n"));
                }
                Err(RecvTimeoutError::Disconnected) => {
                    let status = child.wait().map_err(|e| e.to_string())?;
                    log.push(format!("etcd exited: {status}"));
                    return Err(log.join("\n"));
                }
            }
        }
    }

    /// A store connected to this server.
    pub async fn store(&self) -> Arc<EtcdStore> {
        Arc::new(
            EtcdStore::connect(std::slice::from_ref(&self.endpoint))
                .await
                .expect("connect to etcd"),
        )
    }
}

impl Drop for EtcdServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a free loopback port");
    listener.local_addr().expect("local address").port()
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
