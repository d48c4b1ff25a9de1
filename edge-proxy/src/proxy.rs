//! The request path, as a pingora [`ProxyHttp`] service (docs/design.md §1, §3, §4, §7).
//!
//! `request_filter` recognises the call, authenticates the key, applies the tenant's quotas,
//! locates the client and asks the route decision for the ordered candidate regions (see
//! [`admit`](crate::admit)); calls the edge answers itself (`/v1/models`, every refusal) end
//! there. `upstream_peer` sends the request to the current candidate's agent. A connect
//! failure, or a `503` with `x-meridian-refused` from the agent (it created nothing), moves
//! the request to the next candidate — only ever along the decision's list, and only while
//! the retry budget allows. Every other answer of an agent is final and passed through
//! (a `429 concurrency_limited` too: the tenant's bound holds in every region).
//!
//! A submission that may have reached an agent — its connection broke after it was sent,
//! even a reused connection that looks merely stale — is never sent again, as the agent may
//! have accepted it, unless it carries an `Idempotency-Key`: then it is sent once more, to
//! the same region, which answers with the job it already has (see
//! [`idempotency`](crate::idempotency)). Calls about existing requests may be retried on a
//! stale reused connection, as pingora does. Submissions whose bodies are too large for
//! pingora to send twice take the same path in [`buffered`](crate::buffered).

use contract::headers;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use async_trait::async_trait;
use bytes::Bytes;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::upstreams::peer::HttpPeer;
use pingora::{Error, ErrorSource, ErrorType, Result};
use tokio::time::Instant;

use crate::Edge;
use crate::admit::Admitted;
use crate::connections::Phase;
use crate::error::ApiError;
use crate::regions::InFlight;
use crate::state::RoutingState;
use crate::surface::Surface;

/// The error type marking an agent's refusal, retried on the next candidate.
const REFUSED: &str = "agent refused the request";

/// Requests being handled, for draining at shutdown.
#[derive(Debug, Default)]
pub struct Active(AtomicUsize);

impl Active {
    /// Requests being handled now.
    pub fn count(&self) -> usize {
        self.0.load(Ordering::Relaxed)
    }
}

/// Holds one count in [`Active`] while a request is handled.
#[derive(Debug)]
pub struct ActiveGuard(Arc<Active>);

impl ActiveGuard {
    fn new(active: &Arc<Active>) -> Self {
        active.0.fetch_add(1, Ordering::Relaxed);
        Self(Arc::clone(active))
    }
}

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// What the edge knows about one request while it is handled.
#[derive(Debug)]
pub struct RequestCtx {
    started: Instant,
    /// The routing state the request was admitted with (kept for its whole life).
    pub state: Option<Arc<RoutingState>>,
    /// The authenticated tenant.
    pub tenant: String,
    /// The model, once known to be in the catalog.
    pub model: Option<String>,
    /// Region indices to try, in order.
    pub candidates: Vec<usize>,
    /// For each candidate of a decision, the way into it the decision chose (instances are
    /// ranked by it).
    pub(crate) paths: Vec<policy::SlotPath>,
    /// The instances of the region being tried, in order (indices into its instances;
    /// `None` for the catalog's endpoint of the region), see [`crate::hops`].
    pub(crate) hops: Vec<Option<usize>>,
    /// The hop being tried.
    pub(crate) hop: usize,
    /// A buffer for ranking instances.
    pub(crate) order: Vec<usize>,
    /// Whether the request may move to the next candidate (job submissions only).
    pub failover: bool,
    /// The tenant's bound on jobs queued or running, told to the agent (submissions only).
    pub job_bound: Option<u32>,
    /// The submission's `Idempotency-Key`.
    pub idempotency_key: Option<String>,
    /// Whether the submission was already sent a second time to the same region.
    pub(crate) resent: bool,
    /// Whether the last agent tried refused the request (`x-meridian-refused`).
    pub(crate) refused: bool,
    pub(crate) attempt: usize,
    pub(crate) region: Option<String>,
    /// The key of this edge's state for the agent tried last ([`crate::instances::key`]).
    pub(crate) hop_key: Option<String>,
    /// The instance tried last, for the answer's header.
    pub(crate) instance: Option<String>,
    pub(crate) in_flight: Option<InFlight>,
    pub(crate) instance_in_flight: Option<InFlight>,
    pub(crate) body_bytes: u64,
    /// The surface the call belongs to, whose envelope the edge's errors take.
    pub surface: Surface,
    /// The URL the client reached the edge at, told to the agent.
    pub public_url: Option<String>,
    /// The client's address (the peer, or whom a trusted proxy forwarded for).
    pub client_address: Option<std::net::IpAddr>,
    /// Whether the call is a file by signed link (no key, no tenant).
    pub signed_link: bool,
    error: Option<ApiError>,
    _active: ActiveGuard,
}

/// The edge's pingora service.
pub struct EdgeProxy {
    pub(crate) edge: Arc<Edge>,
}

impl EdgeProxy {
    /// The internal headers a submission carries to the region at candidate `ctx.attempt`
    /// beyond the edge token and tenant: the tenant's job bound. Also remembers where its
    /// idempotency key goes.
    pub(crate) fn submission_headers(&self, ctx: &mut RequestCtx) -> Vec<(&'static str, String)> {
        ctx.refused = false;
        let (Some(state), Some(index)) = (ctx.state.as_ref(), ctx.candidates.get(ctx.attempt))
        else {
            return Vec::new();
        };
        let holder = ctx
            .hop_key
            .as_deref()
            .or(ctx.region.as_deref())
            .or_else(|| state.catalog.regions().get(*index).map(|r| r.id.as_str()));
        if let (Some(key), Some(holder)) = (&ctx.idempotency_key, holder) {
            // The instance the job goes to: only there is sending it again safe.
            self.edge
                .keys
                .remember(&ctx.tenant, key, holder, std::time::Instant::now());
        }
        ctx.job_bound
            .map(|max| crate::jobs::bound_headers(&state.jobs, &ctx.tenant, max, *index).to_vec())
            .unwrap_or_default()
    }

    /// Whether a submission that failed after it may have reached the agent is sent again,
    /// to the same region: only with an idempotency key, once, as the budget allows.
    pub(crate) fn resend(&self, ctx: &mut RequestCtx) -> bool {
        if ctx.idempotency_key.is_none() || ctx.resent {
            return false;
        }
        if !self.edge.retries.try_withdraw() {
            self.edge.metrics.retries_denied.inc();
            return false;
        }
        self.edge
            .metrics
            .retries
            .with_label_values(&["resend"])
            .inc();
        ctx.resent = true;
        ctx.in_flight = None;
        ctx.instance_in_flight = None;
        true
    }

    /// Moves the request to its next hop if there is one and the budget allows: another
    /// instance of the same region first, then the next candidate region. A submission
    /// sent a second time stays with the instance that may hold its job: sent to another,
    /// one request could make two jobs.
    pub(crate) fn fail_over(&self, ctx: &mut RequestCtx, reason: &str) -> bool {
        if !ctx.failover || ctx.resent || !Edge::has_next_hop(ctx) {
            return false;
        }
        if !self.edge.retries.try_withdraw() {
            self.edge.metrics.retries_denied.inc();
            tracing::warn!(reason, "retry budget spent; not failing over");
            return false;
        }
        ctx.in_flight = None;
        ctx.instance_in_flight = None;
        if !self.edge.next_hop(ctx) {
            return false;
        }
        self.edge.metrics.retries.with_label_values(&[reason]).inc();
        true
    }
}

/// The answer to a submission that `region` may have accepted before it failed.
pub(crate) fn may_have_accepted(region: &str) -> ApiError {
    ApiError::bad_gateway(format!(
        "{region} failed while answering; it may have accepted the job: send it again with \
         the same Idempotency-Key to get that job rather than a second"
    ))
}

/// Whether a client's request header goes on to the agent: not the client's key, not the
/// host (the agent's own is set), and no `x-meridian-*` header a client could spoof.
pub(crate) fn forwarded_header(name: &str) -> bool {
    name != "authorization" && name != "host" && !headers::is_internal(name)
}

/// The client connection's peer address.
pub(crate) fn peer(session: &Session) -> Option<std::net::SocketAddr> {
    session.client_addr().and_then(|a| a.as_inet()).copied()
}

#[async_trait]
impl ProxyHttp for EdgeProxy {
    type CTX = RequestCtx;

    fn new_ctx(&self) -> RequestCtx {
        RequestCtx {
            started: Instant::now(),
            state: None,
            tenant: String::new(),
            model: None,
            candidates: Vec::new(),
            paths: Vec::new(),
            hops: Vec::new(),
            hop: 0,
            order: Vec::new(),
            failover: false,
            job_bound: None,
            idempotency_key: None,
            resent: false,
            refused: false,
            attempt: 0,
            region: None,
            hop_key: None,
            instance: None,
            in_flight: None,
            instance_in_flight: None,
            body_bytes: 0,
            surface: Surface::Native,
            public_url: None,
            client_address: None,
            signed_link: false,
            error: None,
            _active: ActiveGuard::new(&self.edge.active),
        }
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
        let phase = if session.is_body_empty() {
            Phase::Busy
        } else {
            Phase::Body(Instant::now())
        };
        self.edge.connections.enter(peer(session), phase);
        match self.edge.admit(session, ctx) {
            Ok(Admitted::Proxy) if ctx.failover && crate::buffered::needs_buffering(session) => {
                self.forward_buffered(session, ctx).await?;
                Ok(true)
            }
            Ok(Admitted::Proxy) => Ok(false),
            Ok(Admitted::ReadBody) => {
                self.forward_named(session, ctx).await?;
                Ok(true)
            }
            Ok(Admitted::Answer(body)) => {
                crate::answer::respond(session, 200, body, None, false).await?;
                Ok(true)
            }
            Err(err) => {
                self.answer_error(session, ctx, &err).await;
                Ok(true)
            }
        }
    }

    async fn request_body_filter(
        &self,
        session: &mut Session,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        if end_of_stream {
            self.edge.connections.enter(peer(session), Phase::Busy);
        }
        if let Some(chunk) = body {
            ctx.body_bytes += chunk.len() as u64;
            let limit = self.edge.config.max_body_bytes;
            if ctx.body_bytes > limit {
                ctx.error = Some(ApiError::too_large(limit));
                return Err(Error::explain(
                    ErrorType::HTTPStatus(413),
                    "request body over the limit",
                ));
            }
        }
        Ok(())
    }

    async fn upstream_peer(
        &self,
        _session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<Box<HttpPeer>> {
        let (state, region, instance) = ctx
            .hop()
            .ok_or_else(|| Error::explain(ErrorType::InternalError, "no hop left"))?;
        let hop = state.hop(region, instance).ok_or_else(|| {
            Error::explain(ErrorType::InternalError, "a hop without an agent endpoint")
        })?;
        let config = &self.edge.config;
        let upstream = hop.upstream;
        let mut peer = HttpPeer::new(upstream.address, upstream.tls, upstream.host.clone());
        peer.options.connection_timeout = Some(config.connect_timeout);
        peer.options.total_connection_timeout = Some(config.connect_timeout);
        peer.options.read_timeout = Some(config.read_timeout);
        peer.options.write_timeout = Some(config.read_timeout);
        peer.options.idle_timeout = Some(config.agent_idle_timeout);
        self.sending(ctx, &hop);
        Ok(Box::new(peer))
    }

    async fn upstream_request_filter(
        &self,
        _session: &mut Session,
        request: &mut RequestHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        let dropped: Vec<String> = request
            .headers
            .keys()
            .map(|name| name.as_str())
            .filter(|name| !forwarded_header(name))
            .map(str::to_owned)
            .collect();
        for name in dropped {
            request.remove_header(&name);
        }
        request.insert_header(headers::EDGE_TOKEN, self.edge.config.agent_token.expose())?;
        if !ctx.signed_link {
            request.insert_header(headers::TENANT, &ctx.tenant)?;
        }
        if let Some(url) = &ctx.public_url {
            request.insert_header(headers::PUBLIC_URL, url)?;
        }
        if let Some((state, region, instance)) = ctx.hop()
            && let Some(hop) = state.hop(region, instance)
        {
            request.insert_header("host", hop.upstream.host.as_str())?;
        }
        if ctx.failover {
            for (name, value) in self.submission_headers(ctx) {
                request.insert_header(name, value)?;
            }
        }
        Ok(())
    }

    async fn upstream_response_filter(
        &self,
        session: &mut Session,
        response: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        self.region_answered(ctx);
        if ctx.signed_link
            && response.status.as_u16() == 403
            && let Some(address) = ctx.client_address
        {
            // A refused signature counts as a wrong key: guessing links is throttled too.
            self.edge
                .failed_keys
                .failed(address, self.edge.clock.elapsed());
        }
        if response.status.as_u16() == 503 {
            let reason = response
                .headers
                .get(headers::REFUSED)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            if let Some(reason) = reason {
                ctx.refused = true;
                if session.as_ref().retry_buffer_truncated() {
                    tracing::warn!(%reason, "agent refused, but the body is too large to resend; passing the refusal on");
                } else if self.fail_over(ctx, "refused") {
                    tracing::info!(region = ?ctx.region, instance = ?ctx.instance, %reason, "agent refused; trying the next agent");
                    return Err(Error::explain(ErrorType::Custom(REFUSED), reason));
                }
            }
        }
        Ok(())
    }

    async fn response_filter(
        &self,
        _session: &mut Session,
        response: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        if let Some(region) = &ctx.region
            && !response.headers.contains_key(headers::REGION)
        {
            response.insert_header(headers::REGION, region.as_str())?;
        }
        if let Some(instance) = &ctx.instance {
            response.insert_header(headers::INSTANCE, instance.as_str())?;
        }
        Ok(())
    }

    fn error_while_proxy(
        &self,
        peer: &HttpPeer,
        session: &mut Session,
        e: Box<Error>,
        ctx: &mut RequestCtx,
        client_reused: bool,
    ) -> Box<Error> {
        let refused = matches!(e.etype(), ErrorType::Custom(REFUSED));
        let mut e = e.more_context(format!("peer {peer}"));
        if refused {
            // Decided in upstream_response_filter: the next candidate is already chosen.
            e.set_retry(true);
        } else if session.as_ref().retry_buffer_truncated() {
            e.set_retry(false);
        } else {
            // A reused connection that broke may just have been stale — or the agent read
            // the request and then failed: nothing tells the two apart.
            e.retry.decide_reuse(client_reused);
            if ctx.failover && e.retry() {
                // A submission may have created a job: sent again only with its key, to the
                // same region (ctx.attempt is unchanged).
                let again = self.resend(ctx);
                if again {
                    tracing::info!(region = ?ctx.region, error = %e, "connection to the agent broke; sending the keyed submission again");
                }
                e.set_retry(again);
            }
        }
        e
    }

    fn fail_to_connect(
        &self,
        _session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut RequestCtx,
        mut e: Box<Error>,
    ) -> Box<Error> {
        self.region_failed(ctx);
        let retry = self.fail_over(ctx, "connect");
        if retry {
            tracing::info!(region = ?ctx.region, instance = ?ctx.instance, error = %e, "agent unreachable; trying the next agent");
        }
        e.set_retry(retry);
        e
    }

    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        ctx: &mut RequestCtx,
    ) -> FailToProxy {
        let err = match ctx.error.take() {
            Some(err) => Some(err),
            None => self.classify(e, ctx),
        };
        // pingora closes the client's connection after a failed proxying, so the answer
        // says so: a client never sends its next request on a connection going away.
        let error_code = match err {
            Some(err) => self.answer_error_then(session, ctx, &err, true).await,
            None => 0,
        };
        FailToProxy {
            error_code,
            can_reuse_downstream: false,
        }
    }

    async fn logging(&self, session: &mut Session, _e: Option<&Error>, ctx: &mut RequestCtx) {
        self.edge
            .connections
            .enter(peer(session), Phase::Idle(Instant::now()));
        let refused_first = ctx.refused && !ctx.resent;
        let holder = ctx.hop_key.as_ref();
        if let (true, Some(key), Some(holder)) = (refused_first, &ctx.idempotency_key, holder) {
            // The agent refused it at its first sending, so it holds no job for the key. (A
            // refusal of the second sending says nothing of the first.)
            self.edge.keys.forget(&ctx.tenant, key, holder);
        }
        let status = session.response_written().map_or(0, |r| r.status.as_u16());
        let region = ctx.region.as_deref().unwrap_or("edge");
        let model = ctx.model.as_deref().unwrap_or("-");
        let metrics = &self.edge.metrics;
        metrics
            .requests
            .with_label_values(&[region, model, &status.to_string()])
            .inc();
        metrics
            .latency
            .with_label_values(&[region, model])
            .observe(ctx.started.elapsed().as_secs_f64());
        let request = session.req_header();
        tracing::debug!(
            method = %request.method,
            path = request.uri.path(),
            status,
            tenant = ctx.tenant.as_str(),
            region,
            "request"
        );
    }
}

impl EdgeProxy {
    /// The client's answer for a proxy error; `None` when the client is gone.
    fn classify(&self, e: &Error, ctx: &mut RequestCtx) -> Option<ApiError> {
        let region = ctx
            .region
            .clone()
            .unwrap_or_else(|| "the region".to_owned());
        Some(match e.etype() {
            ErrorType::ConnectTimedout
            | ErrorType::ConnectRefused
            | ErrorType::ConnectNoRoute
            | ErrorType::ConnectError
            | ErrorType::TLSHandshakeFailure
            | ErrorType::TLSHandshakeTimedout
            | ErrorType::InvalidCert
            | ErrorType::HandshakeError
            | ErrorType::SocketError => {
                if ctx.resent {
                    // Sent once already: that region may hold the job.
                    may_have_accepted(&region)
                } else if !ctx.failover
                    && let Some(instance) = &ctx.instance
                {
                    // A call about a request its instance holds, and only it.
                    ApiError::instance_away(&region, instance)
                } else {
                    ApiError::unavailable(format!(
                        "no region could be reached (last tried: {region})"
                    ))
                }
            }
            ErrorType::Custom(REFUSED) => {
                ApiError::unavailable("every allowed region refused the request")
            }
            ErrorType::ReadTimedout | ErrorType::WriteTimedout => {
                self.region_failed(ctx);
                ApiError::timeout(format!("{region} did not answer in time"))
            }
            ErrorType::HTTPStatus(413) => ApiError::too_large(self.edge.config.max_body_bytes),
            ErrorType::HTTPStatus(code) if (400..500).contains(code) => {
                ApiError::bad_request("the request could not be read")
            }
            _ => match e.esource() {
                ErrorSource::Downstream => match e.etype() {
                    ErrorType::ReadError | ErrorType::WriteError | ErrorType::ConnectionClosed => {
                        return None;
                    }
                    _ => ApiError::bad_request("the request could not be read"),
                },
                ErrorSource::Upstream if ctx.failover => may_have_accepted(&region),
                // The instance that holds the request went away while answering.
                ErrorSource::Upstream if let Some(instance) = &ctx.instance => {
                    ApiError::instance_away(&region, instance)
                }
                ErrorSource::Upstream => {
                    ApiError::bad_gateway(format!("{region} failed while answering"))
                }
                ErrorSource::Internal | ErrorSource::Unset => {
                    tracing::error!(error = %e, "edge failure");
                    ApiError::internal("the edge failed to handle the request")
                }
            },
        })
    }
}
