//! What one client connection may hold of the edge (docs/design.md §7): a cap on open
//! connections in all and per client address, and deadlines on what a client sends.
//!
//! Every HTTP/1 connection is wrapped in a [`GuardedStream`] whose reads fail once the
//! client is too slow for the phase its connection is in:
//!
//! - idle (before its first request, or between two): the first byte of the next request
//!   within `idle_timeout` of the connection's start or the last answer's end;
//! - header: the whole request header within `header_timeout` of its first byte — however
//!   the bytes are spread, so a header dripped a byte at a time cannot hold the connection;
//! - body: the whole body within `body_timeout` of the header's end;
//! - busy (the request is being served): no deadline of the client's, the agent's answer
//!   has its own.
//!
//! The proxy moves a connection to body, busy and back to idle ([`Connections::enter`]),
//! finding it by its peer address; the stream moves it from idle to header by itself.
//! HTTP/2 connections (over TLS) are capped but not phased: pingora closes them after
//! `idle_timeout` without a stream. TLS handshakes are bounded by pingora (60 s) and
//! counted only once done.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use async_trait::async_trait;
use parking_lot::Mutex;
use pingora::apps::ServerApp;
use pingora::protocols::raw_connect::ProxyDigest;
use pingora::protocols::tls::TlsRef;
use pingora::protocols::{
    ALPN, GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, SocketDigest, Ssl,
    Stream, TimingDigest, UniqueID, UniqueIDType,
};
use pingora::server::ShutdownWatch;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

use crate::config::ConnectionLimits;
use crate::metrics::Metrics;
use crate::throttle::network_of;

/// Where a connection's client is in its current request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Waiting for a request's first byte, since then.
    Idle(Instant),
    /// Reading a request header whose first byte came then.
    Header(Instant),
    /// Reading a request body whose header ended then.
    Body(Instant),
    /// Serving the request.
    Busy,
}

impl Phase {
    /// The phase's name in metrics.
    pub fn name(self) -> &'static str {
        match self {
            Phase::Idle(_) => "idle",
            Phase::Header(_) => "header",
            Phase::Body(_) => "body",
            Phase::Busy => "busy",
        }
    }
}

/// The open connections and their phases.
#[derive(Debug)]
pub struct Connections {
    limits: ConnectionLimits,
    metrics: Arc<Metrics>,
    open: Mutex<Open>,
}

#[derive(Debug, Default)]
struct Open {
    total: usize,
    /// Open connections by client network ([`network_of`]: IPv6 by /64).
    by_address: HashMap<IpAddr, usize>,
    /// HTTP/1 connections by peer address: their phase.
    phases: HashMap<SocketAddr, Arc<Mutex<Phase>>>,
}

/// One open connection's place in [`Connections`], given back when dropped.
#[derive(Debug)]
pub struct Slot {
    connections: Arc<Connections>,
    peer: Option<SocketAddr>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut open = self.connections.open.lock();
        open.total = open.total.saturating_sub(1);
        self.connections.metrics.connections_open.dec();
        if let Some(peer) = self.peer {
            let network = network_of(peer.ip());
            if let Some(count) = open.by_address.get_mut(&network) {
                *count = count.saturating_sub(1);
                if *count == 0 {
                    open.by_address.remove(&network);
                }
            }
            open.phases.remove(&peer);
        }
    }
}

impl Connections {
    /// No connection open yet; counts go to `metrics`.
    pub fn new(limits: ConnectionLimits, metrics: Arc<Metrics>) -> Arc<Self> {
        Arc::new(Self {
            limits,
            metrics,
            open: Mutex::new(Open::default()),
        })
    }

    /// A slot for a new connection from `peer`, or `None` when the edge or that address is
    /// at its cap.
    pub fn admit(self: &Arc<Self>, peer: Option<SocketAddr>) -> Option<Slot> {
        let mut open = self.open.lock();
        if open.total >= self.limits.max {
            self.metrics.connections_refused.inc();
            return None;
        }
        if let Some(peer) = peer {
            let count = open.by_address.entry(network_of(peer.ip())).or_insert(0);
            if *count >= self.limits.max_per_address {
                self.metrics.connections_refused.inc();
                return None;
            }
            *count += 1;
        }
        open.total += 1;
        self.metrics.connections_open.inc();
        Some(Slot {
            connections: Arc::clone(self),
            peer,
        })
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.open.lock().total
    }

    /// Follows the phase of the HTTP/1 connection from `peer` (holding `slot`).
    fn track(&self, peer: SocketAddr) -> Arc<Mutex<Phase>> {
        let phase = Arc::new(Mutex::new(Phase::Idle(Instant::now())));
        self.open.lock().phases.insert(peer, Arc::clone(&phase));
        phase
    }

    /// Moves the connection from `peer` to `phase` (no-op for connections not followed).
    pub fn enter(&self, peer: Option<SocketAddr>, phase: Phase) {
        let Some(peer) = peer else { return };
        let tracked = self.open.lock().phases.get(&peer).cloned();
        if let Some(tracked) = tracked {
            *tracked.lock() = phase;
        }
    }

    /// When a read of a connection in `phase` must have completed.
    fn deadline(&self, phase: Phase) -> Option<Instant> {
        match phase {
            Phase::Idle(since) => Some(since + self.limits.idle_timeout),
            Phase::Header(since) => Some(since + self.limits.header_timeout),
            Phase::Body(since) => Some(since + self.limits.body_timeout),
            Phase::Busy => None,
        }
    }
}

/// An application whose connections are capped and held to [`Connections`]' deadlines.
pub struct Guarded<A> {
    app: Arc<A>,
    connections: Arc<Connections>,
}

impl<A> Guarded<A> {
    /// Wraps `app`.
    pub fn new(app: A, connections: Arc<Connections>) -> Self {
        Self {
            app: Arc::new(app),
            connections,
        }
    }
}

#[async_trait]
impl<A: ServerApp + Send + Sync + 'static> ServerApp for Guarded<A> {
    async fn process_new(
        self: &Arc<Self>,
        stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        let peer = stream
            .get_socket_digest()
            .and_then(|d| d.peer_addr().and_then(|a| a.as_inet()).copied());
        let Some(slot) = self.connections.admit(peer) else {
            tracing::debug!(?peer, "connection refused: too many open");
            return None;
        };
        let stream: Stream = match peer {
            Some(peer) if stream.selected_alpn_proto() != Some(ALPN::H2) => {
                let phase = self.connections.track(peer);
                Box::new(GuardedStream {
                    inner: stream,
                    connections: Arc::clone(&self.connections),
                    phase,
                    timer: Box::pin(tokio::time::sleep(Duration::ZERO)),
                    armed: None,
                })
            }
            _ => stream,
        };
        let reused = self.app.process_new(stream, shutdown).await;
        drop(slot);
        reused
    }

    async fn cleanup(&self) {
        self.app.cleanup().await;
    }
}

/// A client connection whose reads fail when the client is past its phase's deadline.
#[derive(Debug)]
pub struct GuardedStream {
    inner: Stream,
    connections: Arc<Connections>,
    phase: Arc<Mutex<Phase>>,
    timer: Pin<Box<Sleep>>,
    armed: Option<Instant>,
}

impl AsyncRead for GuardedStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before {
                    let mut phase = this.phase.lock();
                    if let Phase::Idle(_) = *phase {
                        *phase = Phase::Header(Instant::now());
                    }
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => {
                let phase = *this.phase.lock();
                let Some(deadline) = this.connections.deadline(phase) else {
                    return Poll::Pending;
                };
                if this.armed != Some(deadline) {
                    this.timer.as_mut().reset(deadline);
                    this.armed = Some(deadline);
                }
                match this.timer.as_mut().poll(cx) {
                    Poll::Ready(()) => {
                        this.connections
                            .metrics
                            .slow_clients
                            .with_label_values(&[phase.name()])
                            .inc();
                        Poll::Ready(Err(std::io::Error::new(
                            std::io::ErrorKind::TimedOut,
                            format!("the client was too slow ({phase:?})"),
                        )))
                    }
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }
}

impl AsyncWrite for GuardedStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[async_trait]
impl Shutdown for GuardedStream {
    async fn shutdown(&mut self) {
        self.inner.shutdown().await;
    }
}

impl UniqueID for GuardedStream {
    fn id(&self) -> UniqueIDType {
        self.inner.id()
    }
}

impl Ssl for GuardedStream {
    fn get_ssl(&self) -> Option<&TlsRef> {
        self.inner.get_ssl()
    }

    fn get_ssl_digest(&self) -> Option<Arc<pingora::protocols::tls::SslDigest>> {
        self.inner.get_ssl_digest()
    }

    fn selected_alpn_proto(&self) -> Option<ALPN> {
        self.inner.selected_alpn_proto()
    }
}

impl GetTimingDigest for GuardedStream {
    fn get_timing_digest(&self) -> Vec<Option<TimingDigest>> {
        self.inner.get_timing_digest()
    }

    fn get_read_pending_time(&self) -> Duration {
        self.inner.get_read_pending_time()
    }

    fn get_write_pending_time(&self) -> Duration {
        self.inner.get_write_pending_time()
    }
}

impl GetProxyDigest for GuardedStream {
    fn get_proxy_digest(&self) -> Option<Arc<ProxyDigest>> {
        self.inner.get_proxy_digest()
    }

    fn set_proxy_digest(&mut self, digest: ProxyDigest) {
        self.inner.set_proxy_digest(digest);
    }
}

impl GetSocketDigest for GuardedStream {
    fn get_socket_digest(&self) -> Option<Arc<SocketDigest>> {
        self.inner.get_socket_digest()
    }

    fn set_socket_digest(&mut self, digest: SocketDigest) {
        self.inner.set_socket_digest(digest);
    }
}

#[async_trait]
impl Peek for GuardedStream {
    async fn try_peek(&mut self, buf: &mut [u8]) -> std::io::Result<bool> {
        self.inner.try_peek(buf).await
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn limits(max: usize, max_per_address: usize) -> ConnectionLimits {
        ConnectionLimits {
            max,
            max_per_address,
            ..ConnectionLimits::default()
        }
    }

    #[test]
    fn connections_are_capped_per_address_and_in_all() {
        let metrics = Arc::new(Metrics::new().unwrap());
        let connections = Connections::new(limits(3, 2), Arc::clone(&metrics));
        let a = |port| Some(SocketAddr::from(([192, 0, 2, 1], port)));
        let b = |port| Some(SocketAddr::from(([192, 0, 2, 2], port)));
        let first = connections.admit(a(1)).unwrap();
        let _second = connections.admit(a(2)).unwrap();
        assert!(
            connections.admit(a(3)).is_none(),
            "a third from one address"
        );
        let _third = connections.admit(b(1)).unwrap();
        assert!(connections.admit(b(2)).is_none(), "a fourth in all");
        assert_eq!(metrics.connections_refused.get(), 2);
        assert_eq!(metrics.connections_open.get(), 3);
        drop(first);
        assert_eq!(connections.open(), 2);
        assert_eq!(metrics.connections_open.get(), 2);
        assert!(
            connections.admit(a(4)).is_some(),
            "a closed one frees its place"
        );
    }
}
