//! Each tenant's jobs queued or running in this agent, and the bound an edge passes with a
//! submission ([`contract::headers::TENANT_MAX_JOBS`], the tenant's `max_concurrent`): a job
//! is admitted only while the tenant's jobs here plus those the edge counts elsewhere
//! ([`contract::headers::TENANT_JOBS_ELSEWHERE`]) stay under it. The check and the count's
//! increase happen under one lock, so concurrent submissions cannot overshoot the bound. A
//! job counts from its admission until it finishes (completed, failed or cancelled); the
//! counts go into every heartbeat (`AgentReport.tenant_jobs`).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Mutex, MutexGuard};

/// The bound a submission carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JobBound {
    /// The most jobs the tenant may have queued or running in all regions.
    pub max: u32,
    /// The tenant's jobs queued or running in other regions, as the edge last heard.
    pub elsewhere: u32,
}

/// A job refused because the tenant is at its bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error(
    "the tenant has {here} jobs queued or running here and {elsewhere} in other regions; \
     its most is {max} at once: wait for one to finish"
)]
pub struct OverBound {
    /// Jobs here.
    pub here: u32,
    /// Jobs elsewhere.
    pub elsewhere: u32,
    /// The bound.
    pub max: u32,
}

/// Jobs queued or running, per tenant.
#[derive(Debug, Default)]
pub struct TenantJobs(Mutex<HashMap<String, u32>>);

impl TenantJobs {
    fn lock(&self) -> MutexGuard<'_, HashMap<String, u32>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Counts a new job of `tenant` unless it would reach `bound`.
    pub fn admit(&self, tenant: &str, bound: Option<JobBound>) -> Result<(), OverBound> {
        let mut counts = self.lock();
        let here = counts.get(tenant).copied().unwrap_or(0);
        if let Some(bound) = bound
            && here.saturating_add(bound.elsewhere) >= bound.max
        {
            return Err(OverBound {
                here,
                elsewhere: bound.elsewhere,
                max: bound.max,
            });
        }
        *counts.entry(tenant.to_owned()).or_insert(0) += 1;
        Ok(())
    }

    /// Counts a job of `tenant` without a bound (a job found queued at restart).
    pub fn add(&self, tenant: &str) {
        *self.lock().entry(tenant.to_owned()).or_insert(0) += 1;
    }

    /// A job of `tenant` finished (or was not accepted after all).
    pub fn finished(&self, tenant: &str) {
        let mut counts = self.lock();
        if let Some(count) = counts.get_mut(tenant) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                counts.remove(tenant);
            }
        }
    }

    /// Jobs queued or running of `tenant`.
    pub fn count(&self, tenant: &str) -> u32 {
        self.lock().get(tenant).copied().unwrap_or(0)
    }

    /// Every tenant with a job queued or running, and how many.
    pub fn counts(&self) -> BTreeMap<String, u32> {
        self.lock()
            .iter()
            .filter(|(_, n)| **n > 0)
            .map(|(t, n)| (t.clone(), *n))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bound_counts_jobs_here_and_elsewhere() {
        let jobs = TenantJobs::default();
        let bound = Some(JobBound {
            max: 3,
            elsewhere: 1,
        });
        assert_eq!(jobs.admit("acme", bound), Ok(()));
        assert_eq!(jobs.admit("acme", bound), Ok(()));
        assert_eq!(
            jobs.admit("acme", bound),
            Err(OverBound {
                here: 2,
                elsewhere: 1,
                max: 3
            })
        );
        // Another tenant and an unbounded submission are not held back.
        assert_eq!(jobs.admit("globex", bound), Ok(()));
        assert_eq!(jobs.admit("acme", None), Ok(()));
        assert_eq!(jobs.count("acme"), 3);
        jobs.finished("acme");
        jobs.finished("acme");
        assert_eq!(jobs.admit("acme", bound), Ok(()));
        jobs.finished("globex");
        let counts = jobs.counts();
        assert_eq!(counts.get("acme"), Some(&2));
        assert!(
            !counts.contains_key("globex"),
            "tenants with 0 are left out"
        );
    }

    #[test]
    fn a_bound_of_zero_admits_nothing() {
        let jobs = TenantJobs::default();
        let bound = Some(JobBound {
            max: 0,
            elsewhere: 0,
        });
        assert!(jobs.admit("acme", bound).is_err());
        assert_eq!(jobs.count("acme"), 0);
    }
}
