//! A real etcd server for tests: Debian's `etcd` (installed by scripts/bootstrap) on free
//! loopback ports with a temporary data directory; killed when dropped.

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{RecvTimeoutError, channel};
use std::time::{Duration, Instant};

/// How long etcd may take to serve clients.
const START_PATIENCE: Duration = Duration::from_secs(15);

/// A running etcd.
pub struct LocalEtcd {
    child: Child,
    /// The client URL, e.g. `http://127.0.0.1:40123`.
    pub endpoint: String,
    peer: String,
    data_dir: PathBuf,
}

impl LocalEtcd {
    /// Starts etcd with its data in `data_dir` and waits until it serves clients (blocking).
    /// A free port found by binding port 0 can be taken by someone else before etcd binds
    /// it, so this tries three times with new ports; the error holds etcd's log of each try.
    pub fn start(data_dir: &Path) -> Result<Self, String> {
        let mut failures = Vec::new();
        for attempt in 0..3 {
            match Self::try_start(&data_dir.join(format!("etcd-{attempt}"))) {
                Ok(server) => return Ok(server),
                Err(log) => failures.push(log),
            }
        }
        Err(format!(
            "etcd did not start (run scripts/bootstrap to install it):\n{}",
            failures.join("\n---\n")
        ))
    }

    fn try_start(data_dir: &Path) -> Result<Self, String> {
        let client = format!("http://127.0.0.1:{}", free_port()?);
        let peer = format!("http://127.0.0.1:{}", free_port()?);
        let child = spawn_ready(data_dir, &client, &peer)?;
        Ok(Self {
            child,
            endpoint: client,
            peer,
            data_dir: data_dir.to_owned(),
        })
    }

    /// Kills etcd outright (SIGKILL), as when its machine dies; its data stays.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts etcd again on the same URLs and data (after [`LocalEtcd::kill`]) and waits
    /// until it serves clients (blocking).
    pub fn restart(&mut self) -> Result<(), String> {
        self.kill();
        self.child = spawn_ready(&self.data_dir, &self.endpoint, &self.peer)?;
        Ok(())
    }
}

/// Starts etcd with its data in `data_dir` on the `client` and `peer` URLs and waits until
/// it serves clients; the error holds its log.
fn spawn_ready(data_dir: &Path, client: &str, peer: &str) -> Result<Child, String> {
    let mut child = Command::new("etcd")
        .arg("--name=meridian-local")
        .arg(format!("--data-dir={}", data_dir.display()))
        .arg(format!("--listen-client-urls={client}"))
        .arg(format!("--advertise-client-urls={client}"))
        .arg(format!("--listen-peer-urls={peer}"))
        .arg(format!("--initial-advertise-peer-urls={peer}"))
        .arg(format!("--initial-cluster=meridian-local={peer}"))
        // Fast elections and a short minimum lease TTL keep tests quick.
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
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = lines_tx.send(line);
        }
    });
    let deadline = Instant::now() + START_PATIENCE;
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
                    return Ok(child);
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

/// A real etcd with its own temporary data directory, started for one test.
pub struct Etcd {
    server: LocalEtcd,
    _data: tempfile::TempDir,
    /// The client URL.
    pub endpoint: String,
}

impl Etcd {
    /// Starts etcd and waits until it serves clients. Panics (failing the test) when it
    /// cannot: tests that need etcd never skip.
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

    /// Kills etcd outright (SIGKILL); its data stays.
    pub async fn kill(&mut self) {
        tokio::task::block_in_place(|| self.server.kill());
    }

    /// Starts the killed etcd again on the same URLs and data; returns once it serves.
    pub async fn restart(&mut self) {
        tokio::task::block_in_place(|| self.server.restart()).unwrap_or_else(|log| panic!("{log}"));
    }

    /// The store configuration that reaches it.
    pub fn store_config(&self) -> control_plane::store::StoreConfig {
        control_plane::store::StoreConfig::Etcd {
            endpoints: vec![self.server.endpoint.clone()],
        }
    }
}

impl Drop for LocalEtcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> Result<u16, String> {
    let listener = TcpListener::bind("127.0.0.1:0").map_err(|e| format!("bind port 0: {e}"))?;
    listener
        .local_addr()
        .map(|a| a.port())
        .map_err(|e| format!("local address: {e}"))
}
