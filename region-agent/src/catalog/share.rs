//! An instance's share of its region's pools (`[pools]`) applied to a catalog copy: each
//! pool keeps `min(share, catalog's)` reserved and on-demand slots, a pool the share does not
//! name keeps none, and prices stay the catalog's. What the share asks for that the copy
//! does not have is said, not refused: the control plane checks that a region's instances
//! add up to its pools.

use std::collections::BTreeMap;
use std::fmt;

use control_plane_client::wire::PoolShare;

use super::RegionCatalog;
use crate::config::PoolShares;

/// Something in the share that the catalog copy does not cover.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ShareProblem {
    /// The share names a pool the region does not have.
    UnknownPool {
        /// The pool id in `[pools]`.
        pool: String,
    },
    /// The share asks for more slots of a kind than the pool has.
    MoreThanPool {
        /// The pool id.
        pool: String,
        /// `reserved` or `on_demand`.
        kind: &'static str,
        /// Slots the share asks for.
        share: u32,
        /// Slots the pool has.
        catalog: u32,
    },
}

impl fmt::Display for ShareProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::UnknownPool { pool } => write!(
                f,
                "[pools] names pool {pool}, which the catalog's region does not have: this \
                 instance serves none of it (fix the pool id in [pools])"
            ),
            Self::MoreThanPool {
                pool,
                kind,
                share,
                catalog,
            } => write!(
                f,
                "[pools] gives this instance {share} {kind} slots of pool {pool}, which has \
                 {catalog} in the catalog: it serves {catalog} (lower pools.{pool}.{kind})"
            ),
        }
    }
}

impl RegionCatalog {
    /// Cuts each pool to this instance's `shares`; returns what they ask for that the copy
    /// does not have.
    pub fn share(&mut self, shares: &PoolShares) -> Vec<ShareProblem> {
        let mut problems: Vec<ShareProblem> = shares
            .keys()
            .filter(|id| !self.pools.iter().any(|p| p.id == id.as_str()))
            .map(|id| ShareProblem::UnknownPool {
                pool: id.to_string(),
            })
            .collect();
        for pool in &mut self.pools {
            let share = shares.get(pool.id.as_str()).copied().unwrap_or_default();
            let mut cut = |kind, share: u32, catalog: &mut u32| {
                if share > *catalog {
                    problems.push(ShareProblem::MoreThanPool {
                        pool: pool.id.clone(),
                        kind,
                        share,
                        catalog: *catalog,
                    });
                }
                *catalog = share.min(*catalog);
            };
            cut("reserved", share.reserved, &mut pool.reserved);
            cut("on_demand", share.on_demand, &mut pool.on_demand_max);
        }
        problems
    }

    /// The slots this copy gives, per pool: reserved, and on-demand that may be started.
    pub fn served(&self) -> BTreeMap<String, PoolShare> {
        self.pools
            .iter()
            .map(|p| {
                let share = PoolShare {
                    reserved: p.reserved,
                    on_demand: p.on_demand_max,
                };
                (p.id.clone(), share)
            })
            .collect()
    }
}
