//! Serving the API on a TCP listener (HTTP/1.1) with deadlines and caps against slow or
//! greedy clients ([`ConnectionLimits`]):
//!
//! - a connection waiting for a request (newly opened, or kept alive after an answer) that
//!   receives nothing for `idle` is closed;
//! - a request's header must arrive whole within `header_read` of its first byte, else the
//!   connection is closed (a client dripping its header holds nothing for long);
//! - the body deadline (`body_read`) is the API's ([`super::read_body`]);
//! - at most `max_total` connections are open at once, and `max_per_client` from one
//!   address; one more is answered `503` and closed at once.
//!
//! Shutdown stops accepting and lets each connection finish the request it is serving.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::{Pin, pin};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, HttpBody};
use axum::extract::Request;
use contract::{ErrorBody, Refusal, headers};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

use crate::config::ConnectionLimits;

/// How long accepting pauses after the listener fails (out of file descriptors).
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
/// How often at most the log says that connections were turned away.
const TURNED_AWAY_LOG_EVERY: Duration = Duration::from_secs(60);

/// Serves `router` on `listener` until `stop`, then waits for open connections to finish
/// their current request.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: ConnectionLimits,
    stop: CancellationToken,
) -> io::Result<()> {
    let open = Arc::new(Semaphore::new(limits.max_total));
    let clients = Arc::new(Clients::default());
    let mut connections = JoinSet::new();
    let mut turned_away = TurnedAway::default();
    loop {
        let (stream, peer) = tokio::select! {
            () = stop.cancelled() => break,
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot accept a connection");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            },
        };
        // Small answers go out at once rather than waiting for more to send.
        let _ = stream.set_nodelay(true);
        let Some(place) = Place::take(&open, &clients, peer, limits.max_per_client) else {
            turned_away.count(peer, &clients, limits);
            turn_away(&stream);
            continue;
        };
        let (router, stop) = (router.clone(), stop.clone());
        connections.spawn(async move {
            serve_connection(stream, router, limits, stop).await;
            drop(place);
        });
    }
    while connections.join_next().await.is_some() {}
    Ok(())
}

/// Connections turned away since the log last said so.
#[derive(Debug, Default)]
struct TurnedAway {
    since_log: u64,
    logged_at: Option<Instant>,
}

impl TurnedAway {
    /// Counts one, and says so in the log at most every [`TURNED_AWAY_LOG_EVERY`].
    fn count(&mut self, peer: SocketAddr, clients: &Clients, limits: ConnectionLimits) {
        self.since_log += 1;
        let now = Instant::now();
        if self
            .logged_at
            .is_some_and(|at| now < at + TURNED_AWAY_LOG_EVERY)
        {
            return;
        }
        let from_peer = clients.lock().get(&peer.ip()).copied().unwrap_or(0);
        tracing::warn!(
            turned_away = self.since_log,
            last_from = %peer.ip(),
            open_from_it = from_peer,
            max_connections = limits.max_total,
            max_connections_per_client = limits.max_per_client,
            "connections turned away: too many open"
        );
        self.since_log = 0;
        self.logged_at = Some(now);
    }
}

/// Connections open per client address.
#[derive(Debug, Default)]
struct Clients(Mutex<HashMap<IpAddr, usize>>);

impl Clients {
    fn lock(&self) -> MutexGuard<'_, HashMap<IpAddr, usize>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A connection's place under both caps; freed when dropped.
struct Place {
    _permit: OwnedSemaphorePermit,
    clients: Arc<Clients>,
    address: IpAddr,
}

impl Place {
    fn take(
        open: &Arc<Semaphore>,
        clients: &Arc<Clients>,
        peer: SocketAddr,
        max_per_client: usize,
    ) -> Option<Self> {
        let permit = open.clone().try_acquire_owned().ok()?;
        let address = peer.ip();
        let mut counts = clients.lock();
        let count = counts.entry(address).or_insert(0);
        if *count >= max_per_client {
            return None;
        }
        *count += 1;
        Some(Self {
            _permit: permit,
            clients: clients.clone(),
            address,
        })
    }
}

impl Drop for Place {
    fn drop(&mut self) {
        let mut counts = self.clients.lock();
        if let Some(count) = counts.get_mut(&self.address) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                counts.remove(&self.address);
            }
        }
    }
}

/// Answers a connection over the caps with `503` and the [`Refusal::TooManyConnections`]
/// refusal (nothing was read, so an edge may send the request to another region), as far
/// as the socket takes it without waiting, and closes it.
fn turn_away(stream: &TcpStream) {
    let refusal = Refusal::TooManyConnections;
    let body = ErrorBody::new(refusal.reason(), refusal.message()).to_json();
    let head = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n\
         content-length: {}\r\nretry-after: 1\r\n{}: {}\r\nconnection: close\r\n\r\n",
        body.len(),
        headers::REFUSED,
        refusal.reason(),
    );
    let _ = stream.try_write(&[head.as_bytes(), &body].concat());
}

/// Serves one connection until it closes, its deadlines pass or shutdown.
async fn serve_connection(
    stream: TcpStream,
    router: Router,
    limits: ConnectionLimits,
    stop: CancellationToken,
) {
    let activity = Arc::new(Activity::new());
    let io = TokioIo::new(Watched {
        inner: stream,
        activity: activity.clone(),
    });
    let requests = activity.clone();
    let service = hyper::service::service_fn(move |request: Request<Incoming>| {
        let serving = Serving::start(&requests);
        let router = router.clone();
        async move {
            let response = router.oneshot(request.map(Body::new)).await;
            response.map(|r| {
                r.map(|body| {
                    Body::new(Tracked {
                        body,
                        _serving: serving,
                    })
                })
            })
        }
    });
    let connection = http1::Builder::new()
        .timer(TokioTimer::new())
        // The header and idle deadlines are kept here ([`Activity`]): hyper's would count
        // the idle time before a request's first byte as header time.
        .header_read_timeout(None)
        .serve_connection(io, service);
    let mut connection = pin!(connection);
    let mut closing = false;
    loop {
        tokio::select! {
            result = connection.as_mut() => {
                if let Err(e) = result {
                    tracing::debug!(error = %e, "connection ended with an error");
                }
                return;
            }
            () = stop.cancelled(), if !closing => {
                connection.as_mut().graceful_shutdown();
                closing = true;
            }
            why = activity.expired(limits) => {
                tracing::debug!(why, "connection closed");
                return;
            }
        }
    }
}

/// What a connection is doing, for its deadlines.
#[derive(Debug)]
struct Activity {
    state: Mutex<ActivityState>,
    changed: Notify,
}

#[derive(Debug)]
struct ActivityState {
    /// Requests being served (until their answer's body is sent).
    serving: usize,
    /// Since when the connection has been waiting for a request.
    waiting_since: Instant,
    /// When the first byte of the next request arrived.
    first_byte: Option<Instant>,
}

impl Activity {
    fn new() -> Self {
        Self {
            state: Mutex::new(ActivityState {
                serving: 0,
                waiting_since: Instant::now(),
                first_byte: None,
            }),
            changed: Notify::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, ActivityState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Bytes arrived.
    fn read(&self) {
        let mut state = self.lock();
        if state.serving == 0 && state.first_byte.is_none() {
            state.first_byte = Some(Instant::now());
            drop(state);
            self.changed.notify_one();
        }
    }

    /// The deadline in force now, and what passing it means.
    fn deadline(&self, limits: ConnectionLimits) -> Option<(Instant, &'static str)> {
        let state = self.lock();
        if state.serving > 0 {
            return None;
        }
        Some(match state.first_byte {
            None => (state.waiting_since + limits.idle, "idle"),
            Some(first) => (first + limits.header_read, "header not received in time"),
        })
    }

    /// Resolves when the connection's deadline passes.
    async fn expired(&self, limits: ConnectionLimits) -> &'static str {
        loop {
            let changed = self.changed.notified();
            match self.deadline(limits) {
                None => changed.await,
                Some((deadline, why)) => {
                    tokio::select! {
                        () = tokio::time::sleep_until(deadline) => {
                            if self.deadline(limits).is_some_and(|(d, _)| d <= Instant::now()) {
                                return why;
                            }
                        }
                        () = changed => {}
                    }
                }
            }
        }
    }
}

/// A request being served: the connection has no deadline until its answer is sent.
struct Serving(Arc<Activity>);

impl Serving {
    fn start(activity: &Arc<Activity>) -> Self {
        activity.lock().serving += 1;
        activity.changed.notify_one();
        Self(activity.clone())
    }
}

impl Drop for Serving {
    fn drop(&mut self) {
        let mut state = self.0.lock();
        state.serving = state.serving.saturating_sub(1);
        if state.serving == 0 {
            state.waiting_since = Instant::now();
            state.first_byte = None;
        }
        drop(state);
        self.0.changed.notify_one();
    }
}

/// An answer's body that keeps its request counted as served until it is sent.
struct Tracked {
    body: Body,
    _serving: Serving,
}

impl HttpBody for Tracked {
    type Data = <Body as HttpBody>::Data;
    type Error = <Body as HttpBody>::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.body.size_hint()
    }
}

/// The connection's socket, noting when bytes arrive.
struct Watched {
    inner: TcpStream,
    activity: Arc<Activity>,
}

impl AsyncRead for Watched {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.read();
        }
        polled
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}
