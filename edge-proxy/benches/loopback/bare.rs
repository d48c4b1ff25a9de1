//! pingora alone: a proxy that sends every request to the backend and does nothing else — no
//! key check, quotas, geo-IP or route — run the way the edge runs pingora (the same listening
//! service, a single-threaded tokio runtime on a thread of its own). What the edge adds
//! to pingora is the difference between the two.

use std::net::SocketAddr;
use std::os::fd::IntoRawFd;
use std::sync::Arc;
use std::thread::JoinHandle;

use async_trait::async_trait;
use pingora::proxy::{ProxyHttp, Session};
use pingora::server::Fds;
use pingora::server::configuration::ServerConf;
use pingora::services::Service;
use pingora::upstreams::peer::HttpPeer;

/// Sends everything to `backend`.
struct Forward {
    backend: SocketAddr,
}

#[async_trait]
impl ProxyHttp for Forward {
    type CTX = ();

    fn new_ctx(&self) {}

    async fn upstream_peer(
        &self,
        _session: &mut Session,
        _ctx: &mut (),
    ) -> pingora::Result<Box<HttpPeer>> {
        Ok(Box::new(HttpPeer::new(self.backend, false, String::new())))
    }
}

/// The bare pingora proxy, serving until dropped.
pub struct BarePingora {
    /// Where it listens.
    pub address: SocketAddr,
    stop: Option<tokio::sync::watch::Sender<bool>>,
    thread: Option<JoinHandle<()>>,
}

impl BarePingora {
    /// Starts it in front of `backend` on a free loopback port.
    pub fn start(backend: SocketAddr) -> Self {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind bare pingora");
        listener.set_nonblocking(true).unwrap();
        let address = listener.local_addr().unwrap();
        let (stop, watch) = tokio::sync::watch::channel(false);
        let thread = std::thread::Builder::new()
            .name("pingora-worker".into())
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                let mut fds = Fds::new();
                fds.add(address.to_string(), listener.into_raw_fd());
                let conf = Arc::new(ServerConf::default());
                let mut service = pingora::proxy::http_proxy_service_with_name(
                    &conf,
                    Forward { backend },
                    "bare-pingora",
                );
                service.add_tcp(&address.to_string());
                let fds = Arc::new(parking_lot::Mutex::new(fds));
                runtime.block_on(service.start_service(Some(fds), watch, 1));
            })
            .unwrap();
        Self {
            address,
            stop: Some(stop),
            thread: Some(thread),
        }
    }
}

impl Drop for BarePingora {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(true);
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
