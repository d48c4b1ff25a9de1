//! Routing strategies: Meridian's route decision and the baselines it is compared with.
//!
//! Every strategy sees only what an edge sees: the last heartbeat of each region and its
//! own in-flight counts and circuit breakers. Each answers with an ordered list of regions
//! (the first is tried first, the rest are the failover order). The baselines keep to the
//! tenant's residency, skip regions that do not serve the model and regions whose heartbeat
//! is stale or whose circuit is open, as any sane load balancer would; they differ only in
//! how they order what is left.

use policy::{Catalog, LiveStatus, Location, ResolvedRequest, RouteDecision, SlotPath};

/// Which strategy routes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StrategyKind {
    /// The allowed region closest to the client.
    Nearest,
    /// Allowed regions in turn.
    RoundRobin,
    /// The allowed region with the most free capacity (free slots minus queue and in-flight).
    LeastLoaded,
    /// The allowed region with the cheapest on-demand list price.
    Cheapest,
    /// Meridian's route decision (`policy::Catalog::route_resolved_into`).
    Meridian,
}

impl StrategyKind {
    /// Every strategy, Meridian last.
    pub const ALL: [StrategyKind; 5] = [
        StrategyKind::Nearest,
        StrategyKind::RoundRobin,
        StrategyKind::LeastLoaded,
        StrategyKind::Cheapest,
        StrategyKind::Meridian,
    ];

    /// Its name in reports and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            StrategyKind::Nearest => "nearest",
            StrategyKind::RoundRobin => "round-robin",
            StrategyKind::LeastLoaded => "least-loaded",
            StrategyKind::Cheapest => "cheapest",
            StrategyKind::Meridian => "meridian",
        }
    }

    /// Parses a name.
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.name() == name)
    }
}

/// What the strategy is asked.
#[derive(Debug, Clone, Copy)]
pub struct Ask<'a> {
    /// Tenant index.
    pub tenant: usize,
    /// Model index.
    pub model: usize,
    /// Where the client is.
    pub client: Location,
    /// Round-trip ms from the client's city to each region.
    pub rtt_ms: &'a [f64],
    /// Units of work.
    pub units: f64,
    /// Now, ms of virtual time.
    pub now_ms: u64,
}

/// A strategy with its reusable buffers.
#[derive(Debug)]
pub struct Router {
    kind: StrategyKind,
    turn: usize,
    decision: RouteDecision,
    keyed: Vec<(f64, f64, usize)>,
}

impl Router {
    /// A router for `kind`.
    pub fn new(kind: StrategyKind) -> Self {
        Self {
            kind,
            turn: 0,
            decision: RouteDecision::default(),
            keyed: Vec::new(),
        }
    }

    /// Fills `out` with (region, ask for a new on-demand slot), best first; empty when the
    /// strategy refuses the request.
    pub fn choose(
        &mut self,
        catalog: &Catalog,
        status: &LiveStatus,
        ask: &Ask<'_>,
        out: &mut Vec<(usize, bool)>,
    ) {
        out.clear();
        if self.kind == StrategyKind::Meridian {
            return self.meridian(catalog, status, ask, out);
        }
        self.keyed.clear();
        let tenant = &catalog.tenants()[ask.tenant];
        let model = &catalog.models()[ask.model];
        let timeout = catalog.routing().heartbeat_timeout_ms;
        for (r, region) in catalog.regions().iter().enumerate() {
            let Some(st) = status.region(r) else { continue };
            let fresh = st
                .last_heartbeat_ms
                .is_some_and(|t| ask.now_ms.saturating_sub(t) <= timeout);
            if !(model.served_by.contains(r)
                && tenant.allowed_regions.contains(r)
                && fresh
                && st.healthy
                && !st.circuit_open)
            {
                continue;
            }
            let key = match self.kind {
                StrategyKind::LeastLoaded => {
                    let queued = st.model_load(ask.model).map_or(0, |l| l.queue_depth);
                    f64::from(st.in_flight) + f64::from(queued)
                        - f64::from(st.free_reserved + st.free_on_demand)
                }
                StrategyKind::Cheapest => {
                    region.on_demand_price_per_hour().unwrap_or(f64::INFINITY)
                }
                _ => 0.0,
            };
            self.keyed.push((key, ask.rtt_ms[r], r));
        }
        if self.kind == StrategyKind::RoundRobin {
            if !self.keyed.is_empty() {
                let n = self.keyed.len();
                self.keyed.rotate_left(self.turn % n);
            }
            self.turn = self.turn.wrapping_add(1);
        } else {
            self.keyed.sort_by(|a, b| {
                a.0.total_cmp(&b.0)
                    .then(a.1.total_cmp(&b.1))
                    .then(a.2.cmp(&b.2))
            });
        }
        out.extend(self.keyed.iter().map(|&(_, _, r)| (r, false)));
    }

    fn meridian(
        &mut self,
        catalog: &Catalog,
        status: &LiveStatus,
        ask: &Ask<'_>,
        out: &mut Vec<(usize, bool)>,
    ) {
        let request = ResolvedRequest {
            tenant: ask.tenant,
            model: ask.model,
            client: ask.client,
            narrowing: None,
            units: ask.units,
            now_ms: ask.now_ms,
        };
        // Unknown ids or bad units cannot occur here (the scenario was checked); a failure
        // leaves the list empty, which counts as a refusal.
        if catalog
            .route_resolved_into(status, &request, &mut self.decision)
            .is_ok()
        {
            out.extend(
                self.decision
                    .candidates
                    .iter()
                    .map(|c| (c.region, c.path == SlotPath::OnDemandStart)),
            );
        }
    }
}
