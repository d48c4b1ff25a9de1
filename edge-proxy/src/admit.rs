//! Admission: everything the edge decides before a request leaves it — which call it is,
//! who is calling (the key), whether the tenant's quotas allow it, where the client is and
//! which regions may serve it (docs/design.md §3, §4).
//!
//! Quotas (rate, monthly budget, the bound on jobs) apply to job submissions; calls about an
//! existing request need a valid key, pass the tenant's read rate ([`ReadRates`]) and go to
//! the region named in the request id, which must lie inside the tenant's residency. An
//! address that presented too many wrong keys is refused before its key is looked at
//! ([`FailedKeys`]). A file by signed link (`?signature=…`) needs no key: it goes to the
//! region named in its id, as its address's read rate allows, and that region's agent checks
//! the signature (a refused one counts as a wrong key). A job that names its model in its
//! body (OpenAI's endpoints) is admitted once its body is read ([`Admitted::ReadBody`]).
//!
//! [`ReadRates`]: crate::throttle::ReadRates
//! [`FailedKeys`]: crate::throttle::FailedKeys

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use http::header::{AUTHORIZATION, CONTENT_LENGTH};
use pingora::proxy::Session;
use policy::quota::{RateDecision, Spend, month_start};
use policy::{Model, RouteRequest, Tenant};

use crate::Edge;
use crate::api::{Call, client_ip, locate, models_body};
use crate::error::ApiError;
use crate::proxy::RequestCtx;
use crate::snapshot::unix_now;
use crate::state::RoutingState;
use crate::surface::Surface;

/// What to do with an admitted request.
#[derive(Debug)]
pub enum Admitted {
    /// Send it to `ctx.candidates`.
    Proxy,
    /// Answer `200` with this JSON body.
    Answer(Vec<u8>),
    /// A job whose model is named in its body: read the body, then
    /// [`admit_named`](Edge::admit_named) it.
    ReadBody,
}

impl Edge {
    /// Admits the request or says why not; fills `ctx` for the proxy.
    pub(crate) fn admit(
        &self,
        session: &Session,
        ctx: &mut RequestCtx,
    ) -> Result<Admitted, ApiError> {
        let request = session.req_header();
        ctx.surface = Surface::of_path(request.uri.path());
        let call = Call::parse(&request.method, request.uri.path())?;
        let state = self.state.load_full().ok_or_else(|| {
            ApiError::unavailable("the edge has no routing snapshot yet; try again shortly")
        })?;
        ctx.state = Some(Arc::clone(&state));
        ctx.public_url = self.public_url(session);
        ctx.client_address = self.client_address(session);
        if let Some(address) = ctx.client_address {
            self.failed_keys
                .check(address, self.clock.elapsed())
                .inspect_err(|e| self.count_throttled(e))?;
        }
        if let Call::File(holder) = &call
            && crate::api::is_signed(request.uri.query())
        {
            return self.admit_signed_link(ctx, &state, holder);
        }
        if call == Call::Keys {
            return self.admit_keys(ctx, &state);
        }
        let tenant = self.authenticate(session, ctx, &state)?;
        ctx.tenant = tenant.id.to_string();
        match call {
            Call::Models => Ok(Admitted::Answer(models_body(&state.catalog, tenant))),
            Call::Request(holder) | Call::File(holder) => {
                self.reads
                    .check(tenant.id.as_str(), self.clock.elapsed())
                    .inspect_err(|e| self.count_throttled(e))?;
                Edge::pin(ctx, &state, &holder, |i| {
                    tenant.allowed_regions.contains(*i)
                })?;
                Ok(Admitted::Proxy)
            }
            Call::Submit { model, .. } => {
                self.admit_job(session, ctx, &state, tenant, &model)?;
                Ok(Admitted::Proxy)
            }
            Call::Tenant => {
                self.reads
                    .check(tenant.id.as_str(), self.clock.elapsed())
                    .inspect_err(|e| self.count_throttled(e))?;
                ctx.candidates = any_region(&state, |i| tenant.allowed_regions.contains(*i))?;
                ctx.failover = true;
                self.first_hop(ctx)?;
                Ok(Admitted::Proxy)
            }
            Call::Keys => self.admit_keys(ctx, &state),
            Call::RunNamedInBody => {
                check_declared_length(session, self.config.max_body_bytes)?;
                ctx.failover = true;
                Ok(Admitted::ReadBody)
            }
        }
    }

    /// The tenant of the request's API key.
    fn authenticate<'s>(
        &self,
        session: &Session,
        ctx: &RequestCtx,
        state: &'s RoutingState,
    ) -> Result<&'s Tenant, ApiError> {
        let authorization = session
            .req_header()
            .headers
            .get(AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        let record = policy::key::from_authorization(authorization)
            .and_then(|key| state.keys.authenticate(key))
            .map_err(|e| {
                tracing::debug!(reason = ?e, "key refused");
                if let Some(address) = ctx.client_address {
                    self.failed_keys.failed(address, self.clock.elapsed());
                }
                ApiError::unauthorized()
            })?;
        state
            .catalog
            .tenant(record.tenant.as_str())
            .ok_or_else(ApiError::unauthorized)
    }

    /// The webhook signing key's JWKS, without a key: to any region with an agent (each
    /// answers the same), the next on a connect failure, as the client's address's read rate
    /// allows.
    fn admit_keys(&self, ctx: &mut RequestCtx, state: &RoutingState) -> Result<Admitted, ApiError> {
        self.check_address_rate(ctx)?;
        ctx.candidates = any_region(state, |_| true)?;
        ctx.failover = true;
        self.first_hop(ctx)?;
        Ok(Admitted::Proxy)
    }

    /// The read rate of a call without a key, by the client's address (its /64 for IPv6).
    fn check_address_rate(&self, ctx: &RequestCtx) -> Result<(), ApiError> {
        let caller = ctx
            .client_address
            .map_or_else(String::new, |a| crate::throttle::network_of(a).to_string());
        self.link_reads
            .check(&caller, self.clock.elapsed())
            .inspect_err(|e| self.count_throttled(e))
    }

    /// A file by signed link, without a key: to the instance named in the id, as the
    /// client's address's read rate allows; the agent checks the signature.
    fn admit_signed_link(
        &self,
        ctx: &mut RequestCtx,
        state: &RoutingState,
        holder: &crate::api::Holder,
    ) -> Result<Admitted, ApiError> {
        self.check_address_rate(ctx)?;
        Edge::pin(ctx, state, holder, |_| true)?;
        ctx.signed_link = true;
        Ok(Admitted::Proxy)
    }

    /// Admits a job whose body, read whole, named `model` (see [`Admitted::ReadBody`]).
    pub(crate) fn admit_named(
        &self,
        session: &Session,
        ctx: &mut RequestCtx,
        model: &str,
    ) -> Result<(), ApiError> {
        let state = ctx
            .state
            .clone()
            .ok_or_else(|| ApiError::internal("a job admitted without a routing state"))?;
        let tenant = state
            .catalog
            .tenant(&ctx.tenant)
            .ok_or_else(ApiError::unauthorized)?;
        if let (Some(wanted), Some(found)) = (
            kind_for(session.req_header().uri.path()),
            state.catalog.model(model),
        ) && found.kind != wanted
        {
            return Err(ApiError::model_not_supported(format!(
                "model {model} is {}; {} takes a {} model",
                found.kind.as_str(),
                session.req_header().uri.path(),
                wanted.as_str()
            )));
        }
        self.admit_job(session, ctx, &state, tenant, model)
    }

    fn admit_job(
        &self,
        session: &Session,
        ctx: &mut RequestCtx,
        state: &RoutingState,
        tenant: &Tenant,
        model_id: &str,
    ) -> Result<(), ApiError> {
        let request = session.req_header();
        check_declared_length(session, self.config.max_body_bytes)?;
        let catalog = &state.catalog;
        let model_index = catalog
            .model_index(model_id)
            .ok_or_else(|| ApiError::unknown_model(model_id))?;
        if !tenant.may_call(model_index) {
            return Err(ApiError::forbidden(format!(
                "model {model_id} is not allowed for this key"
            )));
        }
        let model = &catalog.models()[model_index];
        ctx.model = Some(model.id.to_string());
        ctx.idempotency_key = crate::idempotency::key_of(&request.headers)?;
        check_quotas(state, tenant, model, self.clock.elapsed(), unix_now())?;
        ctx.job_bound = tenant.quotas.max_concurrent;
        if let Some(holder) = self.key_holder(ctx) {
            // The key went there before: that instance may hold its job, and only there is
            // sending it again safe.
            Edge::pin(ctx, state, &holder, |i| tenant.allowed_regions.contains(*i))?;
            ctx.failover = true;
            self.retries.deposit();
            return Ok(());
        }
        self.route(session, ctx, state, tenant, model_id)
    }

    /// The instance this request's idempotency key was sent to, while the tenant may still
    /// use it.
    fn key_holder(&self, ctx: &RequestCtx) -> Option<crate::api::Holder> {
        let key = ctx.idempotency_key.as_deref()?;
        let holder = self
            .keys
            .region(&ctx.tenant, key, std::time::Instant::now())?;
        let (region, instance) = match holder.split_once('/') {
            Some((region, instance)) => (region, Some(instance.to_owned())),
            None => (holder.as_str(), None),
        };
        Some(crate::api::Holder {
            region: region.to_owned(),
            instance,
        })
    }

    fn count_throttled(&self, refusal: &ApiError) {
        self.metrics
            .throttled
            .with_label_values(&[refusal.kind])
            .inc();
    }

    /// The client's address: the peer, or the address a trusted proxy forwarded for.
    pub(crate) fn client_address(&self, session: &Session) -> Option<IpAddr> {
        let peer: Option<IpAddr> = session
            .client_addr()
            .and_then(|a| a.as_inet())
            .map(|a| a.ip());
        let forwarded = session
            .req_header()
            .headers
            .get("x-forwarded-for")
            .and_then(|v| v.to_str().ok());
        client_ip(peer, forwarded, &self.config.trusted_proxies)
    }

    fn route(
        &self,
        session: &Session,
        ctx: &mut RequestCtx,
        state: &RoutingState,
        tenant: &Tenant,
        model_id: &str,
    ) -> Result<(), ApiError> {
        let ip = self.client_address(session);
        let client = locate(self.geoip.as_ref(), ip, self.config.location);
        let mut live = state.live.clone();
        let now = tokio::time::Instant::now();
        for (index, region) in state.catalog.regions().iter().enumerate() {
            let admits = self.region_admits(state, index, now);
            if let Some(status) = live.region_mut(index) {
                let edge_side = self.regions.get(region.id.as_str());
                status.in_flight = edge_side.in_flight();
                status.circuit_open = !admits;
            }
        }
        // Heartbeats are judged by the control plane's last word while it is unreachable.
        let now_ms = self.contact.route_clock_ms(unix_now().saturating_mul(1000));
        let decision = state
            .catalog
            .route(
                &live,
                &RouteRequest {
                    tenant: tenant.id.as_str(),
                    model: model_id,
                    client,
                    narrowing: None,
                    units: 1.0,
                    now_ms,
                },
            )
            .map_err(|e| match e.http_status() {
                401 => ApiError::unauthorized(),
                403 => ApiError::forbidden(e.to_string()),
                404 => ApiError::not_found(e.to_string()),
                _ => ApiError::unprocessable(e.to_string()),
            })?;
        if let Some(refusal) = decision.refusal() {
            let message = decision.explain(&state.catalog);
            return Err(match refusal.http_status() {
                451 => ApiError::residency(message),
                _ => ApiError::unavailable(message),
            });
        }
        let reachable = || {
            decision
                .candidates
                .iter()
                .filter(|c| state.reachable(c.region))
        };
        ctx.candidates = reachable().map(|c| c.region).collect();
        ctx.paths = reachable().map(|c| c.path).collect();
        if ctx.candidates.is_empty() {
            return Err(ApiError::unavailable(
                "no allowed region has a usable agent endpoint",
            ));
        }
        ctx.failover = true;
        self.first_hop(ctx)?;
        self.retries.deposit();
        Ok(())
    }
}

/// The kind of model an OpenAI call takes, by its path.
fn kind_for(path: &str) -> Option<policy::ModelKind> {
    use policy::ModelKind;
    Some(match path.trim_end_matches('/') {
        "/v1/images/generations" => ModelKind::TextToImage,
        "/v1/images/edits" => ModelKind::ImageToImage,
        "/v1/audio/transcriptions" => ModelKind::AudioToText,
        "/v1/audio/speech" => ModelKind::TextToAudio,
        _ => return None,
    })
}

/// Every region `allowed` with an agent endpoint, in the catalog's order.
fn any_region(
    state: &RoutingState,
    allowed: impl Fn(&usize) -> bool,
) -> Result<Vec<usize>, ApiError> {
    let regions: Vec<usize> = (0..state.catalog.regions().len())
        .filter(allowed)
        .filter(|i| state.reachable(*i))
        .collect();
    if regions.is_empty() {
        return Err(ApiError::unavailable(
            "no region has a usable agent endpoint",
        ));
    }
    Ok(regions)
}

/// Refuses a body whose declared length is over `limit`.
fn check_declared_length(session: &Session, limit: u64) -> Result<(), ApiError> {
    let declared = session
        .req_header()
        .headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    match declared {
        Some(length) if length > limit => Err(ApiError::too_large(limit)),
        _ => Ok(()),
    }
}

/// Applies `tenant`'s quotas to one job for `model`: its bound on jobs queued or running
/// (against the agents' reported counts, see [`jobs`](crate::jobs)), the monthly budget
/// (month-to-date spend from the snapshot, if it was received this month, at `now_unix`)
/// and the rate limit (checked at `since_start`, the edge's monotonic clock; last, so that
/// a job refused for another reason takes nothing from the bucket).
///
/// # Errors
///
/// 429 with `Retry-After` and a type naming the quota: `concurrency_limited`,
/// `budget_exceeded` or `rate_limited`.
pub fn check_quotas(
    state: &RoutingState,
    tenant: &Tenant,
    model: &Model,
    since_start: Duration,
    now_unix: i64,
) -> Result<(), ApiError> {
    if let Some(max) = tenant.quotas.max_concurrent {
        crate::jobs::check(&state.jobs, tenant.id.as_str(), max)?;
    }
    let spent = if month_start(state.received_unix) == month_start(now_unix) {
        state.spend.get(tenant.id.as_str()).copied()
    } else {
        None
    };
    let estimate = Spend {
        money: model.price_for(1.0),
        gpu_seconds: model.gpu_seconds_per_unit,
    };
    if let Err(over) = tenant
        .quotas
        .budget
        .check(spent.unwrap_or_default(), estimate, now_unix)
    {
        return Err(ApiError::quota(
            "budget_exceeded",
            over.to_string(),
            over.retry_after_secs,
        ));
    }
    let limits = state.limits.get(tenant.id.as_str());
    if let Some(rate) = limits.and_then(|l| l.rate.as_ref())
        && let RateDecision::Limited { retry_after } = rate.check(since_start)
    {
        return Err(ApiError::quota(
            "rate_limited",
            "too many requests for this tenant's rate limit",
            policy::quota::retry_after_secs(retry_after),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::state::testing::{snapshot, state_of};

    fn quotas(state: &RoutingState, at: Duration, now: i64) -> Result<(), ApiError> {
        let tenant = state.catalog.tenant("acme").unwrap();
        let model = state.catalog.model("meridian/esrgan-x4").unwrap();
        check_quotas(state, tenant, model, at, now)
    }

    #[test]
    fn a_tenant_over_its_monthly_budget_gets_429_until_the_month_ends() {
        let quota = "quotas = { monthly_budget = 1.0 }";
        let now = 1_717_200_000; // 2024-06-01T00:00:00Z
        let mut under = snapshot(quota);
        under.spend[0].cost = 0.5;
        let state = state_of(&under, now);
        assert_eq!(quotas(&state, Duration::ZERO, now + 3600), Ok(()));
        let mut over = snapshot(quota);
        over.spend[0].cost = 1.0;
        let state = state_of(&over, now);
        let err = quotas(&state, Duration::ZERO, now + 3600).unwrap_err();
        assert_eq!((err.status, err.kind), (429, "budget_exceeded"));
        // Retry when the month ends: 2024-07-01.
        assert_eq!(err.retry_after, Some(30 * 86_400 - 3600));
        // Spend from last month's snapshot does not count in a new month.
        assert_eq!(quotas(&state, Duration::ZERO, now + 31 * 86_400), Ok(()));
    }

    #[test]
    fn the_job_bound_counts_reported_jobs_not_requests() {
        use control_plane_client::wire::{AgentReport, RegionLive};

        let quota = "quotas = { requests_per_second = 1.0, burst = 2, max_concurrent = 2 }";
        let mut reported = snapshot(quota);
        let state = state_of(&reported, 0);
        // Nothing reported: however many requests came before, the bound does not refuse.
        assert_eq!(quotas(&state, Duration::ZERO, 0), Ok(()));
        assert_eq!(quotas(&state, Duration::ZERO, 0), Ok(()));
        let limited = quotas(&state, Duration::ZERO, 0).unwrap_err();
        assert_eq!(
            (limited.kind, limited.retry_after),
            ("rate_limited", Some(1))
        );
        reported.regions.push(RegionLive {
            region: "eu-west".into(),
            reported_at_ms: 1,
            report: AgentReport {
                tenant_jobs: [("acme".to_owned(), 2)].into(),
                ..AgentReport::default()
            },
        });
        let state = state_of(&reported, 0);
        let busy = quotas(&state, Duration::from_secs(10), 0).unwrap_err();
        assert_eq!((busy.status, busy.kind), (429, "concurrency_limited"));
        // The refusal took nothing from the rate bucket: its whole burst is left.
        let rate = state.limits["acme"].rate.as_ref().unwrap();
        for _ in 0..2 {
            let decision = rate.check(Duration::from_secs(10));
            assert!(
                matches!(decision, RateDecision::Allowed { .. }),
                "{decision:?}"
            );
        }
    }

    #[test]
    fn a_new_snapshot_keeps_a_tenants_rate_bucket() {
        let quota = "quotas = { requests_per_second = 0.5, burst = 1 }";
        let first = state_of(&snapshot(quota), 0);
        assert_eq!(quotas(&first, Duration::ZERO, 0), Ok(()));
        let mut next = snapshot(quota);
        next.revision += 1;
        let second = RoutingState::build(&next, Some(&first), 0).unwrap();
        let err = quotas(&second, Duration::ZERO, 0).unwrap_err();
        assert_eq!(err.kind, "rate_limited");
    }
}
