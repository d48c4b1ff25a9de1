//! Job submissions with large bodies, which the edge reads whole and sends itself.
//!
//! pingora keeps at most [`RETRY_BUFFER`] of a request body to send again when an attempt
//! fails; a larger body cannot be resent, so an agent's refusal (`503` +
//! `x-meridian-refused`) could not move it to the next region. A submission whose body may
//! be larger (its `content-length` says so, or it has none) is therefore read whole here,
//! up to the body limit, before any agent sees it, and sent along the decision's candidates
//! with the edge's own HTTP client: to the next candidate on a connect failure or a refusal,
//! as the retry budget allows — exactly as [`proxy`](crate::proxy) does for small bodies,
//! and, like it, sends a submission that may have reached an agent again only with an
//! idempotency key, to the same region.
//! The agent's answer is streamed back to the client unchanged, with `x-meridian-region`.
//!
//! A job that names its model in its body (OpenAI's endpoints, see [`named`]) is read whole
//! the same way, whatever its size: the edge admits and routes it once it knows the model.

use bytes::{Bytes, BytesMut};
use contract::headers;
use http::header::{CONTENT_LENGTH, CONTENT_TYPE, EXPECT, HeaderName};
use pingora::http::ResponseHeader;
use pingora::proxy::Session;

use crate::error::ApiError;
use crate::named;
use crate::proxy::{EdgeProxy, RequestCtx, forwarded_header, may_have_accepted};

/// How much of a request body pingora keeps for a retry (its `BODY_BUF_LIMIT`, 64 KiB).
pub const RETRY_BUFFER: u64 = 64 * 1024;

/// Whether a submission's body may not fit pingora's retry buffer: it is declared larger, or
/// its length is not declared at all (chunked, or HTTP/2 without `content-length`).
pub fn needs_buffering(session: &mut Session) -> bool {
    let headers = &session.req_header().headers;
    match headers.get(CONTENT_LENGTH) {
        Some(value) => value
            .to_str()
            .ok()
            .and_then(|v| v.trim().parse::<u64>().ok())
            .is_none_or(|length| length > RETRY_BUFFER),
        None => session.req_header().method == http::Method::POST && !session.is_body_empty(),
    }
}

/// Response headers that describe one hop, not the answer.
fn hop_by_hop(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "connection"
            | "keep-alive"
            | "transfer-encoding"
            | "te"
            | "trailer"
            | "upgrade"
            | "proxy-connection"
    )
}

/// How one attempt ended.
enum Attempt {
    /// The agent answered; the answer is the client's.
    Answered(reqwest::Response),
    /// Try the next candidate.
    Next,
    /// Stop with this error.
    Failed(ApiError),
}

impl EdgeProxy {
    /// Reads the whole body of the submission in `session`, sends it along `ctx.candidates`
    /// and writes the answer. Errors are written as the API's JSON errors.
    pub(crate) async fn forward_buffered(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> pingora::Result<()> {
        match self.read_body(session, ctx).await {
            Some(body) => self.send_along(session, ctx, body).await,
            None => Ok(()),
        }
    }

    /// Reads the whole body of a job that names its model in it ([`named`]), admits the job
    /// for that model and sends it along the candidates.
    pub(crate) async fn forward_named(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> pingora::Result<()> {
        let Some(body) = self.read_body(session, ctx).await else {
            return Ok(());
        };
        let content_type = session
            .req_header()
            .headers
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok());
        let admitted = named::model_of(content_type, &body)
            .and_then(|model| self.edge.admit_named(session, ctx, &model));
        if let Err(err) = admitted {
            self.answer_error(session, ctx, &err).await;
            return Ok(());
        }
        self.send_along(session, ctx, body).await
    }

    /// The whole request body; `None` when it could not be read (the error is answered, or
    /// the client is gone).
    async fn read_body(&self, session: &mut Session, ctx: &mut RequestCtx) -> Option<Bytes> {
        match self.read_whole_body(session).await {
            Ok(body) => {
                ctx.body_bytes = body.len() as u64;
                self.edge
                    .connections
                    .enter(crate::proxy::peer(session), crate::connections::Phase::Busy);
                Some(body)
            }
            Err(Some(err)) => {
                self.answer_error(session, ctx, &err).await;
                None
            }
            // The client went away while sending.
            Err(None) => None,
        }
    }

    /// Sends `body`, read already, along `ctx.candidates` and writes the answer.
    async fn send_along(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        body: Bytes,
    ) -> pingora::Result<()> {
        loop {
            match self.attempt(session, ctx, body.clone()).await {
                Attempt::Answered(response) => return self.pass_on(session, ctx, response).await,
                Attempt::Next => continue,
                Attempt::Failed(err) => {
                    self.answer_error(session, ctx, &err).await;
                    return Ok(());
                }
            }
        }
    }

    /// The request body, or the error to answer (`None`: the client is gone). A client that
    /// waits for `100 Continue` before sending the body (as curl does for large ones) is told
    /// to go on.
    async fn read_whole_body(&self, session: &mut Session) -> Result<Bytes, Option<ApiError>> {
        let limit = self.edge.config.max_body_bytes;
        let expects_continue = session
            .req_header()
            .headers
            .get(EXPECT)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
        if expects_continue {
            let go_on = ResponseHeader::build(100, Some(0)).map_err(|_| None)?;
            if let Err(e) = session.write_response_header(Box::new(go_on), false).await {
                tracing::debug!(error = %e, "could not send 100 Continue");
                return Err(None);
            }
        }
        let mut body = BytesMut::new();
        loop {
            match session.read_request_body().await {
                Ok(Some(chunk)) => {
                    if body.len() as u64 + chunk.len() as u64 > limit {
                        return Err(Some(ApiError::too_large(limit)));
                    }
                    body.extend_from_slice(&chunk);
                }
                Ok(None) => return Ok(body.freeze()),
                Err(e) => {
                    tracing::debug!(error = %e, "could not read a request body");
                    return Err(None);
                }
            }
        }
    }

    /// Sends the job to the current candidate.
    async fn attempt(&self, session: &Session, ctx: &mut RequestCtx, body: Bytes) -> Attempt {
        let path = session
            .req_header()
            .uri
            .path_and_query()
            .map_or("/", |p| p.as_str());
        let planned = ctx.hop().and_then(|(state, region, instance)| {
            let hop = state.hop(region, instance)?;
            self.sending(ctx, &hop);
            let url = format!("{}{path}", hop.endpoint.trim_end_matches('/'));
            Some((hop.region.id.to_string(), url))
        });
        let Some((region, url)) = planned else {
            return Attempt::Failed(ApiError::unavailable(
                "no allowed region has a usable agent endpoint",
            ));
        };
        let request = session.req_header();
        let mut headers = http::HeaderMap::new();
        for (name, value) in &request.headers {
            // The body is here already: the agent is not asked to wait for it.
            let resent = name != CONTENT_LENGTH && name != EXPECT && !hop_by_hop(name);
            if forwarded_header(name.as_str()) && resent {
                headers.append(name.clone(), value.clone());
            }
        }
        let config = &self.edge.config;
        let (Ok(token), Ok(tenant)) = (
            http::HeaderValue::from_str(config.agent_token.expose()),
            http::HeaderValue::from_str(&ctx.tenant),
        ) else {
            return Attempt::Failed(ApiError::internal("the edge cannot name itself to agents"));
        };
        headers.insert(headers::EDGE_TOKEN, token);
        headers.insert(headers::TENANT, tenant);
        if let Some(url) = ctx
            .public_url
            .as_deref()
            .and_then(|url| http::HeaderValue::from_str(url).ok())
        {
            headers.insert(headers::PUBLIC_URL, url);
        }
        for (name, value) in self.submission_headers(ctx) {
            if let Ok(value) = http::HeaderValue::from_str(&value) {
                headers.insert(name, value);
            }
        }
        let sent = self
            .edge
            .agents
            .request(request.method.clone(), &url)
            .headers(headers)
            .body(body)
            .send()
            .await;
        match sent {
            Ok(response) => {
                self.region_answered(ctx);
                let refused =
                    response.status() == 503 && response.headers().contains_key(headers::REFUSED);
                ctx.refused = refused;
                if refused && self.fail_over(ctx, "refused") {
                    tracing::info!(%region, instance = ?ctx.instance, "agent refused; trying the next agent");
                    return Attempt::Next;
                }
                Attempt::Answered(response)
            }
            Err(e) if e.is_connect() => {
                self.region_failed(ctx);
                if self.fail_over(ctx, "connect") {
                    tracing::info!(%region, instance = ?ctx.instance, error = %e, "agent unreachable; trying the next agent");
                    return Attempt::Next;
                }
                if ctx.resent {
                    // Sent once already: that region may hold the job.
                    return Attempt::Failed(may_have_accepted(&region));
                }
                Attempt::Failed(ApiError::unavailable(format!(
                    "no region could be reached (last tried: {region})"
                )))
            }
            Err(e) if e.is_timeout() => {
                self.region_failed(ctx);
                Attempt::Failed(ApiError::timeout(format!(
                    "{region} did not answer in time"
                )))
            }
            Err(e) => {
                // The agent may have read the job: sent again only with its idempotency key,
                // to the same region.
                tracing::warn!(%region, error = %e, "agent failed while answering");
                if self.resend(ctx) {
                    return Attempt::Next;
                }
                Attempt::Failed(may_have_accepted(&region))
            }
        }
    }

    /// Streams the agent's answer to the client.
    async fn pass_on(
        &self,
        session: &mut Session,
        ctx: &RequestCtx,
        mut response: reqwest::Response,
    ) -> pingora::Result<()> {
        let mut header =
            ResponseHeader::build(response.status().as_u16(), Some(response.headers().len()))?;
        for (name, value) in response.headers() {
            if !hop_by_hop(name) {
                header.append_header(name.clone(), value.clone())?;
            }
        }
        if let Some(region) = &ctx.region
            && !header.headers.contains_key(headers::REGION)
        {
            header.insert_header(headers::REGION, region.as_str())?;
        }
        if let Some(instance) = &ctx.instance {
            header.insert_header(headers::INSTANCE, instance.as_str())?;
        }
        session
            .write_response_header(Box::new(header), false)
            .await?;
        loop {
            match response.chunk().await {
                Ok(Some(chunk)) => session.write_response_body(Some(chunk), false).await?,
                Ok(None) => break,
                Err(e) => {
                    tracing::warn!(region = ?ctx.region, error = %e, "agent's answer broke off");
                    return Err(pingora::Error::explain(
                        pingora::ErrorType::ReadError,
                        "the agent's answer broke off",
                    ));
                }
            }
        }
        session.write_response_body(None, true).await
    }
}
