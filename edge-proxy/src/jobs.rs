//! A tenant's bound on jobs queued or running (its `max_concurrent` quota, docs/design.md
//! §4), as far as an edge can see it.
//!
//! Only the agents know which jobs are queued or running: each reports, in every heartbeat,
//! its count per tenant, and the control plane passes the reports to the edges in the
//! snapshot. From those counts the edge refuses a submission early (429
//! `concurrency_limited`) when the tenant's jobs in all regions together already reach the
//! bound, and otherwise tells the agent it sends the job to the bound
//! ([`headers::TENANT_MAX_JOBS`]) and the tenant's jobs in the other regions
//! ([`headers::TENANT_JOBS_ELSEWHERE`]). The agent makes the exact check for its own region
//! at the moment it accepts the job, and refuses with 429 `concurrency_limited`, which the
//! edge passes to the client without trying another region. The other regions' counts are
//! as old as their last heartbeat plus the snapshot's delivery.

use std::collections::HashMap;

use contract::headers;
use control_plane_client::wire::Snapshot;
use policy::Catalog;

use crate::error::ApiError;

/// Each region's reported jobs queued or running, per tenant.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JobCounts {
    /// By catalog region index: tenant id → jobs.
    by_region: Vec<HashMap<String, u32>>,
}

impl JobCounts {
    /// The counts the agents reported in `snapshot`, by `catalog`'s region indices; regions
    /// the catalog does not have are ignored.
    pub fn of(snapshot: &Snapshot, catalog: &Catalog) -> Self {
        let mut by_region = vec![HashMap::new(); catalog.regions().len()];
        for live in &snapshot.regions {
            if let Some(counts) = catalog
                .region_index(&live.region)
                .and_then(|i| by_region.get_mut(i))
            {
                // A region's agents each count their own jobs.
                for (tenant, jobs) in &live.report.tenant_jobs {
                    *counts.entry(tenant.clone()).or_default() += jobs;
                }
            }
        }
        Self { by_region }
    }

    /// `tenant`'s jobs in every region.
    pub fn total(&self, tenant: &str) -> u64 {
        self.by_region
            .iter()
            .filter_map(|counts| counts.get(tenant))
            .map(|jobs| u64::from(*jobs))
            .sum()
    }

    /// `tenant`'s jobs in every region but the one at `region`.
    pub fn elsewhere(&self, tenant: &str, region: usize) -> u64 {
        let here = self
            .by_region
            .get(region)
            .and_then(|counts| counts.get(tenant))
            .map_or(0, |jobs| u64::from(*jobs));
        self.total(tenant).saturating_sub(here)
    }
}

/// Refuses a job of `tenant` when its reported jobs already reach `max`.
///
/// # Errors
///
/// 429 `concurrency_limited`.
pub fn check(counts: &JobCounts, tenant: &str, max: u32) -> Result<(), ApiError> {
    let jobs = counts.total(tenant);
    if jobs >= u64::from(max) {
        return Err(limited(max));
    }
    Ok(())
}

/// The refusal of a job over the bound.
pub fn limited(max: u32) -> ApiError {
    ApiError::quota(
        "concurrency_limited",
        format!("this tenant already has {max} jobs queued or running (its max_concurrent)"),
        1,
    )
}

/// The headers that tell the agent of the region at `region` the bound of `tenant`.
pub fn bound_headers(
    counts: &JobCounts,
    tenant: &str,
    max: u32,
    region: usize,
) -> [(&'static str, String); 2] {
    [
        (headers::TENANT_MAX_JOBS, max.to_string()),
        (
            headers::TENANT_JOBS_ELSEWHERE,
            counts.elsewhere(tenant, region).to_string(),
        ),
    ]
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use control_plane_client::wire::{AgentReport, RegionLive};

    use super::*;
    use crate::state::testing;

    fn reported(region: &str, jobs: &[(&str, u32)]) -> RegionLive {
        RegionLive {
            region: region.into(),
            reported_at_ms: 1,
            report: AgentReport {
                tenant_jobs: jobs.iter().map(|(t, n)| ((*t).to_owned(), *n)).collect(),
                ..AgentReport::default()
            },
        }
    }

    fn counts(regions: Vec<RegionLive>) -> JobCounts {
        let mut snapshot = testing::snapshot("quotas = { max_concurrent = 16 }");
        snapshot.regions = regions;
        let state = testing::state_of(&snapshot, 0);
        state.jobs.clone()
    }

    #[test]
    fn the_bound_counts_every_regions_reported_jobs() {
        let none = counts(Vec::new());
        assert!(check(&none, "acme", 16).is_ok());
        let counts = counts(vec![
            reported("eu-west", &[("acme", 6), ("other", 50)]),
            // Another agent of the same region: its jobs add up.
            reported("eu-west", &[("acme", 4)]),
            // A region the catalog does not know is ignored.
            reported("mars", &[("acme", 100)]),
        ]);
        assert_eq!(counts.total("acme"), 10);
        assert!(check(&counts, "acme", 11).is_ok());
        let err = check(&counts, "acme", 10).unwrap_err();
        assert_eq!((err.status, err.kind), (429, "concurrency_limited"));
        assert_eq!(err.retry_after, Some(1));
        assert!(check(&counts, "nobody", 1).is_ok());
    }

    #[test]
    fn the_agent_is_told_the_bound_and_the_jobs_in_the_other_regions() {
        let mut counts = JobCounts {
            by_region: vec![HashMap::new(); 3],
        };
        counts.by_region[0].insert("acme".into(), 3);
        counts.by_region[1].insert("acme".into(), 5);
        counts.by_region[2].insert("beta".into(), 7);
        let sent = |region| bound_headers(&counts, "acme", 16, region);
        assert_eq!(
            sent(0),
            [
                (headers::TENANT_MAX_JOBS, "16".to_owned()),
                (headers::TENANT_JOBS_ELSEWHERE, "5".to_owned())
            ]
        );
        assert_eq!(sent(1)[1].1, "3");
        assert_eq!(sent(2)[1].1, "8");
        assert_eq!(
            sent(9)[1].1,
            "8",
            "a region without counts has none of its own"
        );
    }
}
