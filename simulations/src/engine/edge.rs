//! What each edge sees: every host's last report and every region as the sum of its hosts,
//! plus the edge's own in-flight counts and circuit breakers.
//!
//! A host's heartbeat reaches every edge (the control plane's snapshot). The region is
//! rebuilt from its hosts' reports with `control_plane_client::region_of`, the
//! function the edges use, leaving out hosts whose last report is older than the routing's
//! heartbeat timeout (the control plane drops an instance whose lease expired). An edge's
//! in-flight count for a host is its requests placed there since that host's last report;
//! for the region, the sum over its hosts. A failed connection opens the edge's circuit to
//! that host; the region's circuit is open while every host of it the edge knows is open
//! (or stale), and a report closes both.

use control_plane_client::region_of;
use policy::{Catalog, LiveStatus, RegionStatus};

use super::Sim;

/// One edge's view of the world.
#[derive(Debug, Clone)]
pub(super) struct EdgeView {
    /// Per region, what the route decision reads.
    pub(super) regions: LiveStatus,
    /// Per host, what the edge ranks a region's hosts by.
    pub(super) hosts: Vec<RegionStatus>,
}

impl EdgeView {
    pub(super) fn new(catalog: &Catalog, hosts: usize) -> Self {
        Self {
            regions: LiveStatus::new(catalog),
            hosts: vec![RegionStatus::default(); hosts],
        }
    }
}

/// Copies a report's fields over `st`, the per-model list only when `models_changed` (so it
/// keeps its allocation); the edge's own fields (in flight, circuit) are left alone.
fn copy_report(st: &mut RegionStatus, report: &RegionStatus, models_changed: bool) {
    st.last_heartbeat_ms = report.last_heartbeat_ms;
    st.healthy = report.healthy;
    st.draining = report.draining;
    st.free_reserved = report.free_reserved;
    st.free_on_demand = report.free_on_demand;
    st.on_demand_startable = report.on_demand_startable;
    st.on_demand_start_ms = report.on_demand_start_ms;
    if models_changed {
        st.models.clone_from(&report.models);
    }
}

/// Whether `report` is at most `timeout_ms` old at `now_ms`: still in the control plane's
/// view.
pub(super) fn is_fresh(report: &RegionStatus, now_ms: u64, timeout_ms: u64) -> bool {
    report
        .last_heartbeat_ms
        .is_some_and(|t| now_ms.saturating_sub(t) <= timeout_ms)
}

impl Sim<'_> {
    /// Now in ms and the heartbeat timeout, for [`is_fresh`].
    pub(super) fn freshness(&self) -> (u64, u64) {
        (self.now / 1000, self.catalog.routing().heartbeat_timeout_ms)
    }

    /// The agents of region `r`'s hosts that are up report (all on one tick, a
    /// simplification: each agent has its own timer in a real region), then the region is
    /// summed again. Every edge learns each report and the new sum, and forgets its
    /// in-flight count on each host that reported (the report includes those requests); a
    /// report also closes the edge's circuits to the host and its region. A region whose
    /// hosts are all down reports nothing.
    pub(super) fn heartbeat(&mut self, r: usize) {
        let mut reported = false;
        for h in self.region_hosts[r].clone() {
            if self.hosts[h].up {
                self.host_heartbeat(h);
                reported = true;
            }
        }
        if !reported {
            return;
        }
        let changed = self.sum_region(r);
        let region = &self.region_reports[r];
        for edge in &mut self.edges {
            if let Some(st) = edge.regions.region_mut(r) {
                copy_report(st, region, changed);
                st.circuit_open = false;
            }
        }
    }

    /// Host `h`'s agent reports. Per-model loads are copied only when the report changed
    /// them, which an idle host's report does not.
    fn host_heartbeat(&mut self, h: usize) {
        let start_ms = self.scenario.spec.simulation.on_demand_start_ms as f64;
        let models = self.catalog.models().len();
        self.epochs[h] += 1;
        let changed = self.hosts[h].report(self.now, start_ms, &mut self.host_reports[h], models);
        let (r, host) = (self.hosts[h].region(), &self.host_reports[h]);
        for edge in &mut self.edges {
            let seen = &mut edge.hosts[h];
            copy_report(seen, host, changed);
            let in_flight = std::mem::take(&mut seen.in_flight);
            seen.circuit_open = false;
            if let Some(st) = edge.regions.region_mut(r) {
                st.in_flight = st.in_flight.saturating_sub(in_flight);
            }
        }
    }

    /// Rebuilds region `r`'s status from its hosts' fresh reports; `true` when its
    /// per-model loads changed.
    fn sum_region(&mut self, r: usize) -> bool {
        let (now_ms, timeout) = self.freshness();
        let fresh = |s: &RegionStatus| is_fresh(s, now_ms, timeout);
        let reports = &self.host_reports[self.region_hosts[r].clone()];
        let summed = if reports.iter().all(fresh) {
            region_of(reports)
        } else {
            self.fresh.clear();
            self.fresh
                .extend(reports.iter().filter(|s| fresh(s)).cloned());
            region_of(&self.fresh)
        };
        let Some(summed) = summed else { return false };
        let old = &mut self.region_reports[r];
        let changed = old.models != summed.models;
        *old = summed;
        changed
    }

    /// Edge `edge` could not connect to host `h`: its circuit to the host opens, and to the
    /// region when no host of it is left to try.
    pub(super) fn open_circuit(&mut self, edge: usize, h: usize) {
        let (now_ms, timeout) = self.freshness();
        let r = self.hosts[h].region();
        let range = self.region_hosts[r].clone();
        let view = &mut self.edges[edge];
        view.hosts[h].circuit_open = true;
        let all_open = view.hosts[range]
            .iter()
            .all(|s| s.circuit_open || !is_fresh(s, now_ms, timeout));
        if let Some(st) = view.regions.region_mut(r) {
            st.circuit_open = all_open;
        }
    }

    /// Counts a request edge `edge` placed on host `h` in flight there and in its region.
    pub(super) fn count_in_flight(&mut self, edge: usize, h: usize) {
        let r = self.hosts[h].region();
        let view = &mut self.edges[edge];
        view.hosts[h].in_flight += 1;
        if let Some(st) = view.regions.region_mut(r) {
            st.in_flight += 1;
        }
    }

    /// The edge saw a request on host `h` end before the host's next report.
    pub(super) fn uncount_in_flight(&mut self, edge: usize, h: usize) {
        let r = self.hosts[h].region();
        let view = &mut self.edges[edge];
        view.hosts[h].in_flight = view.hosts[h].in_flight.saturating_sub(1);
        if let Some(st) = view.regions.region_mut(r) {
            st.in_flight = st.in_flight.saturating_sub(1);
        }
    }
}
