//! Which agent each attempt of a request goes to (docs/design.md §3, "Instances").
//!
//! The route decision orders regions (`ctx.candidates`); inside the region being tried the
//! edge orders its instances (`ctx.hops`): for a job, the serving instances ranked by
//! [`policy::decision::rank_instances_with`] with this edge's requests in flight and circuits; for
//! other calls, the healthy ones in the snapshot's order. A failure moves to the next
//! instance of the region first, then to the next region. A call about a request goes to the
//! instance its id names, and only there.

use std::sync::Arc;

use policy::decision::EdgeSide;
use tokio::time::Instant;

use crate::Edge;
use crate::api::Holder;
use crate::error::ApiError;
use crate::instances::{Instance, key};
use crate::proxy::{EdgeProxy, RequestCtx};
use crate::state::{RoutingState, Upstream};

/// Where one attempt goes.
#[derive(Debug, Clone, Copy)]
pub struct Hop<'a> {
    /// The region.
    pub region: &'a policy::Region,
    /// The instance, or `None` for the catalog's endpoint of the region.
    pub instance: Option<&'a Instance>,
    /// Where it listens.
    pub upstream: &'a Upstream,
    /// Its base URL.
    pub endpoint: &'a str,
    /// The key of this edge's state for it ([`crate::instances::key`]).
    pub key: &'a str,
}

impl RoutingState {
    /// Where an attempt at region `region`, instance `instance` (an index into its
    /// instances; `None` for the catalog's endpoint), goes.
    pub fn hop(&self, region: usize, instance: Option<usize>) -> Option<Hop<'_>> {
        let spec = self.catalog.regions().get(region)?;
        Some(match instance {
            Some(i) => {
                let instance = self.instances.by_region.get(region)?.get(i)?;
                Hop {
                    region: spec,
                    instance: Some(instance),
                    upstream: &instance.upstream,
                    endpoint: &instance.endpoint,
                    key: &instance.key,
                }
            }
            None => Hop {
                region: spec,
                instance: None,
                upstream: self.upstreams.get(region)?.as_ref()?,
                endpoint: &spec.endpoint,
                key: spec.id.as_str(),
            },
        })
    }

    /// Whether region `region` can be reached at all: an instance reports, or the catalog
    /// gives its endpoint.
    pub fn reachable(&self, region: usize) -> bool {
        self.instances
            .by_region
            .get(region)
            .is_some_and(|list| !list.is_empty())
            || matches!(self.upstreams.get(region), Some(Some(_)))
    }
}

impl RequestCtx {
    /// Where the current attempt goes, with the state it was planned on.
    pub(crate) fn hop(&self) -> Option<(Arc<RoutingState>, usize, Option<usize>)> {
        let state = Arc::clone(self.state.as_ref()?);
        let region = *self.candidates.get(self.attempt)?;
        let instance = *self.hops.get(self.hop)?;
        Some((state, region, instance))
    }
}

impl Edge {
    /// Orders the instances of the region being tried (`ctx.candidates[ctx.attempt]`) into
    /// `ctx.hops`; returns whether there is one to try.
    pub(crate) fn plan_hops(&self, ctx: &mut RequestCtx) -> bool {
        ctx.hops.clear();
        ctx.hop = 0;
        let (Some(state), Some(&region)) = (ctx.state.clone(), ctx.candidates.get(ctx.attempt))
        else {
            return false;
        };
        let instances = state
            .instances
            .by_region
            .get(region)
            .map_or(&[][..], Vec::as_slice);
        if instances.is_empty() {
            if matches!(state.upstreams.get(region), Some(Some(_))) {
                ctx.hops.push(None);
            }
            return !ctx.hops.is_empty();
        }
        let now = Instant::now();
        let model = ctx
            .model
            .as_deref()
            .and_then(|m| state.catalog.model_index(m));
        match model {
            Some(model) => self.rank(ctx, &state, instances, model, now),
            None => {
                let healthy = |i: &usize| {
                    let instance = &instances[*i];
                    instance.status.healthy && self.regions.admits(&instance.key, now)
                };
                ctx.hops
                    .extend((0..instances.len()).filter(healthy).map(Some));
                if ctx.hops.is_empty() {
                    ctx.hops.extend((0..instances.len()).map(Some));
                }
            }
        }
        !ctx.hops.is_empty()
    }

    /// Ranks `instances` for a job of catalog model `model` into `ctx.hops`.
    fn rank(
        &self,
        ctx: &mut RequestCtx,
        state: &RoutingState,
        instances: &[Instance],
        model: usize,
        now: Instant,
    ) {
        let edge: Vec<EdgeSide> = instances
            .iter()
            .map(|instance| EdgeSide {
                in_flight: self.regions.get(&instance.key).in_flight(),
                circuit_open: !self.regions.admits(&instance.key, now),
            })
            .collect();
        let service_ms = state.catalog.models()[model].gpu_seconds_per_unit * 1000.0;
        let path = ctx
            .paths
            .get(ctx.attempt)
            .copied()
            .unwrap_or(policy::SlotPath::Queued);
        let mut order = std::mem::take(&mut ctx.order);
        policy::decision::rank_instances_with(
            instances.len(),
            |i| (&instances[i].status, edge[i]),
            model,
            path,
            service_ms,
            self.turn.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            &mut order,
        );
        ctx.hops.extend(order.iter().map(|&i| Some(i)));
        ctx.order = order;
    }

    /// Plans the first attempt: the first candidate region with an instance to try.
    ///
    /// # Errors
    ///
    /// 503 when no candidate region has one.
    pub(crate) fn first_hop(&self, ctx: &mut RequestCtx) -> Result<(), ApiError> {
        ctx.attempt = 0;
        while ctx.attempt < ctx.candidates.len() {
            if self.plan_hops(ctx) {
                return Ok(());
            }
            ctx.attempt += 1;
        }
        Err(ApiError::unavailable(
            "no allowed region has an agent that can take the request now",
        ))
    }

    /// Moves `ctx` to its next hop: the region's next instance, else the next candidate
    /// region that has one. Returns whether there is one.
    pub(crate) fn next_hop(&self, ctx: &mut RequestCtx) -> bool {
        if ctx.hop + 1 < ctx.hops.len() {
            ctx.hop += 1;
            return true;
        }
        while ctx.attempt + 1 < ctx.candidates.len() {
            ctx.attempt += 1;
            if self.plan_hops(ctx) {
                return true;
            }
        }
        false
    }

    /// Whether `ctx` has another hop to move to.
    pub(crate) fn has_next_hop(ctx: &RequestCtx) -> bool {
        ctx.hop + 1 < ctx.hops.len() || ctx.attempt + 1 < ctx.candidates.len()
    }

    /// Sends every attempt of a call about a request to the holder its id names.
    ///
    /// # Errors
    ///
    /// 404 when the region is not one the tenant may use or the id names an instance the
    /// region never had (or that has been away past its retention); 503 with `Retry-After`
    /// while the instance is away but may still hold the request.
    pub(crate) fn pin(
        ctx: &mut RequestCtx,
        state: &RoutingState,
        holder: &Holder,
        allowed: impl Fn(&usize) -> bool,
    ) -> Result<(), ApiError> {
        let no_such = || ApiError::not_found("no such request");
        let region = state
            .catalog
            .region_index(&holder.region)
            .filter(allowed)
            .ok_or_else(no_such)?;
        ctx.candidates.clear();
        ctx.candidates.push(region);
        ctx.attempt = 0;
        ctx.hops.clear();
        ctx.hop = 0;
        let instances = state
            .instances
            .by_region
            .get(region)
            .map_or(&[][..], Vec::as_slice);
        let hop = match &holder.instance {
            Some(id) => match instances.iter().position(|i| &i.id == id) {
                Some(index) => Some(index),
                None if state.instances.away.contains(&key(&holder.region, id)) => {
                    return Err(ApiError::instance_away(&holder.region, id));
                }
                None => return Err(no_such()),
            },
            // An id from before regions had instances: the region's one agent.
            None if matches!(state.upstreams.get(region), Some(Some(_))) => None,
            None if !instances.is_empty() => Some(0),
            None => return Err(no_such()),
        };
        ctx.hops.push(hop);
        Ok(())
    }
}

impl EdgeProxy {
    /// Records a failure to reach the agent tried last, on its own circuit (a region's
    /// circuit is open when all its instances' are, see [`Edge::region_admits`]).
    pub(crate) fn region_failed(&self, ctx: &mut RequestCtx) {
        ctx.in_flight = None;
        ctx.instance_in_flight = None;
        if let Some(key) = &ctx.hop_key
            && self.edge.regions.failure(key, Instant::now())
        {
            tracing::warn!(agent = %key, "circuit opened after consecutive failures");
        }
    }

    /// Records that the agent tried last answered.
    pub(crate) fn region_answered(&self, ctx: &RequestCtx) {
        if let Some(key) = &ctx.hop_key {
            self.edge.regions.success(key);
        }
    }

    /// Counts the current attempt as sent to its hop (its circuit's trial, requests in
    /// flight to it and to its region) and remembers where it went.
    pub(crate) fn sending(&self, ctx: &mut RequestCtx, hop: &crate::hops::Hop<'_>) {
        let regions = &self.edge.regions;
        let region = hop.region.id.as_str();
        regions.sending(hop.key, Instant::now());
        ctx.in_flight = Some(regions.get(region).start());
        ctx.instance_in_flight = (hop.key != region).then(|| regions.get(hop.key).start());
        ctx.region = Some(region.to_owned());
        ctx.hop_key = Some(hop.key.to_owned());
        ctx.instance = hop
            .instance
            .map(|i| i.id.clone())
            .filter(|id| !id.is_empty());
    }
}

impl Edge {
    /// Whether this edge's circuits let requests go to region `region` at `now`: the
    /// circuit of one of its instances does (or the region's own, for agents that name no
    /// instance).
    pub(crate) fn region_admits(&self, state: &RoutingState, region: usize, now: Instant) -> bool {
        let Some(spec) = state.catalog.regions().get(region) else {
            return false;
        };
        match state.instances.by_region.get(region) {
            Some(list) if !list.is_empty() => list
                .iter()
                .any(|instance| self.regions.admits(&instance.key, now)),
            _ => self.regions.admits(spec.id.as_str(), now),
        }
    }
}
