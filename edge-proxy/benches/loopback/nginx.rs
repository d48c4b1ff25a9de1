//! The reference proxy: Debian's `nginx` (scripts/bootstrap installs it) with a minimal
//! reverse-proxy configuration written to a temporary directory — one worker process, no
//! access log, `proxy_pass` to the backend over an `upstream` with keep-alive connections.
//! `keepalive_requests` is raised on both sides so that nginx, like the edge, never closes
//! a busy keep-alive connection during a run. Stopped (`nginx -s stop`) when dropped, also
//! when the bench panics.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Where nginx is looked for besides `PATH` (Debian puts it in /usr/sbin, which is not on
/// an ordinary user's `PATH`).
const SBIN: [&str; 3] = ["/usr/sbin", "/usr/local/sbin", "/usr/local/nginx/sbin"];

/// A running nginx, stopped when dropped.
pub struct Nginx {
    pub address: SocketAddr,
    binary: PathBuf,
    child: Child,
    dir: tempfile::TempDir,
}

impl Nginx {
    /// Starts nginx in front of `backend` on a free loopback port; waits until it accepts.
    pub fn start(backend: SocketAddr) -> Self {
        let binary = find().unwrap_or_else(|| {
            panic!(
                "nginx not found (on PATH or in {}): the loopback bench compares the edge \
                 with it; run scripts/bootstrap (or apt-get install nginx), then run this again",
                SBIN.join(", ")
            )
        });
        let dir = tempfile::tempdir().expect("a temporary directory for nginx");
        let address = free_port();
        let config = dir.path().join("nginx.conf");
        std::fs::write(&config, config_text(dir.path(), address, backend)).unwrap();
        let child = Command::new(&binary)
            .arg("-p")
            .arg(dir.path())
            .arg("-e")
            .arg(dir.path().join("error.log"))
            .arg("-c")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", binary.display()));
        let mut nginx = Self {
            address,
            binary,
            child,
            dir,
        };
        nginx.wait_until_listening();
        nginx
    }

    fn wait_until_listening(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("nginx exited ({status}) at start:\n{}", self.error_log());
            }
            if std::net::TcpStream::connect(self.address).is_ok() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "nginx did not listen on {} within 10 s:\n{}",
                self.address,
                self.error_log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn error_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("error.log")).unwrap_or_default()
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // The master stops its worker on SIGTERM (`-s stop`); killing only the master would
        // leave the worker behind.
        let _ = Command::new(&self.binary)
            .arg("-p")
            .arg(self.dir.path())
            .arg("-e")
            .arg(self.dir.path().join("error.log"))
            .arg("-c")
            .arg(self.dir.path().join("nginx.conf"))
            .args(["-s", "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn find() -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(SBIN.iter().map(PathBuf::from))
        .map(|dir| dir.join("nginx"))
        .find(|candidate| candidate.is_file())
}

/// A loopback address that was free a moment ago (nginx binds it itself).
fn free_port() -> SocketAddr {
    let probe = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a probe socket");
    probe.local_addr().unwrap()
}

fn config_text(dir: &Path, listen: SocketAddr, backend: SocketAddr) -> String {
    let mut text = String::new();
    // As root, nginx would run its worker as `nobody`, which cannot enter the private
    // temporary directory; the directory's owner is the user this bench runs as.
    if std::fs::metadata(dir).is_ok_and(|m| m.uid() == 0) {
        text.push_str("user root;\n");
    }
    let dir = dir.display();
    write!(
        text,
        r#"daemon off;
worker_processes 1;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{
    worker_connections 1024;
}}
http {{
    access_log off;
    client_body_temp_path {dir}/client_body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    keepalive_requests 1000000;
    upstream backend {{
        server {backend};
        keepalive 64;
        keepalive_requests 1000000;
    }}
    server {{
        listen {listen};
        location / {{
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
    }}
}}
"#
    )
    .unwrap();
    text
}
