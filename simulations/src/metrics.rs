//! What a run measures: a ledger of GPU time and spend over the run, a latency histogram
//! and the fate of every request, summed up in a [`Summary`].

/// GPU time and on-demand spend per region and time bucket.
#[derive(Debug, Clone)]
pub struct Ledger {
    bucket_us: u64,
    /// Buckets per region.
    pub buckets: usize,
    /// Reserved slot-µs spent running jobs, `[region * buckets + bucket]`.
    pub reserved_busy_us: Vec<f64>,
    /// On-demand slot-µs spent running jobs.
    pub on_demand_busy_us: Vec<f64>,
    /// On-demand slot-µs paid for (starting, idle or busy).
    pub on_demand_billed_us: Vec<f64>,
    /// On-demand spend.
    pub on_demand_cost: Vec<f64>,
    /// Requests completed, per bucket (all regions).
    pub completed: Vec<u64>,
}

impl Ledger {
    /// An empty ledger for `regions` regions over `duration_us` in buckets of `bucket_us`.
    pub fn new(regions: usize, duration_us: u64, bucket_us: u64) -> Self {
        let buckets = duration_us.div_ceil(bucket_us).max(1) as usize;
        let cells = regions * buckets;
        Self {
            bucket_us,
            buckets,
            reserved_busy_us: vec![0.0; cells],
            on_demand_busy_us: vec![0.0; cells],
            on_demand_billed_us: vec![0.0; cells],
            on_demand_cost: vec![0.0; cells],
            completed: vec![0; buckets],
        }
    }

    /// Bucket of a moment; time after the run falls in the last bucket.
    pub fn bucket(&self, t_us: u64) -> usize {
        ((t_us / self.bucket_us) as usize).min(self.buckets - 1)
    }

    /// Width of a bucket, µs.
    pub fn bucket_us(&self) -> u64 {
        self.bucket_us
    }

    /// Calls `add(cell, overlap_us)` for each bucket `[from, to)` overlaps.
    fn spread(&self, region: usize, from: u64, to: u64, mut add: impl FnMut(usize, f64)) {
        let mut t = from;
        while t < to {
            let b = self.bucket(t);
            let end = if b + 1 == self.buckets {
                to
            } else {
                ((b as u64 + 1) * self.bucket_us).min(to)
            };
            add(region * self.buckets + b, (end - t) as f64);
            t = end;
        }
    }

    /// A reserved slot ran a job during `[from, to)`.
    pub fn reserved_busy(&mut self, region: usize, from: u64, to: u64) {
        let mut cells = std::mem::take(&mut self.reserved_busy_us);
        self.spread(region, from, to, |c, us| cells[c] += us);
        self.reserved_busy_us = cells;
    }

    /// An on-demand slot ran a job during `[from, to)`.
    pub fn on_demand_busy(&mut self, region: usize, from: u64, to: u64) {
        let mut cells = std::mem::take(&mut self.on_demand_busy_us);
        self.spread(region, from, to, |c, us| cells[c] += us);
        self.on_demand_busy_us = cells;
    }

    /// An on-demand slot was paid for during `[from, to)` at `price_per_us`.
    pub fn on_demand_billed(&mut self, region: usize, from: u64, to: u64, price_per_us: f64) {
        let mut billed = std::mem::take(&mut self.on_demand_billed_us);
        let mut cost = std::mem::take(&mut self.on_demand_cost);
        self.spread(region, from, to, |c, us| {
            billed[c] += us;
            cost[c] += us * price_per_us;
        });
        self.on_demand_billed_us = billed;
        self.on_demand_cost = cost;
    }

    /// Sum of a per-cell series over regions, per bucket.
    pub fn per_bucket(&self, cells: &[f64]) -> Vec<f64> {
        let mut out = vec![0.0; self.buckets];
        for (i, v) in cells.iter().enumerate() {
            out[i % self.buckets] += v;
        }
        out
    }

    /// Sum of a per-cell series over buckets, for one region.
    pub fn region_total(&self, cells: &[f64], region: usize) -> f64 {
        cells[region * self.buckets..(region + 1) * self.buckets]
            .iter()
            .sum()
    }
}

/// Latencies in buckets 1 % wide, from 0.1 ms to about 10⁷ ms.
#[derive(Debug, Clone, PartialEq)]
pub struct Histogram {
    counts: Vec<u64>,
    total: u64,
}

const FLOOR_MS: f64 = 0.1;
const BUCKETS: usize = 1900;

impl Default for Histogram {
    fn default() -> Self {
        Self {
            counts: vec![0; BUCKETS],
            total: 0,
        }
    }
}

impl Histogram {
    fn index(ms: f64) -> usize {
        if ms <= FLOOR_MS {
            return 0;
        }
        (((ms / FLOOR_MS).ln() / 1.01f64.ln()) as usize + 1).min(BUCKETS - 1)
    }

    /// Upper edge of bucket `i`, ms.
    pub fn upper_ms(i: usize) -> f64 {
        FLOOR_MS * 1.01f64.powi(i as i32)
    }

    /// Records one latency.
    pub fn record(&mut self, ms: f64) {
        self.counts[Self::index(ms)] += 1;
        self.total += 1;
    }

    /// Latencies recorded.
    pub fn total(&self) -> u64 {
        self.total
    }

    /// The `q` quantile (0–1), ms (the upper edge of its bucket); 0 when empty.
    pub fn quantile(&self, q: f64) -> f64 {
        if self.total == 0 {
            return 0.0;
        }
        let rank = ((q * self.total as f64).ceil() as u64).clamp(1, self.total);
        let mut seen = 0;
        for (i, c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return Self::upper_ms(i);
            }
        }
        Self::upper_ms(BUCKETS - 1)
    }

    /// Non-empty buckets as (upper edge ms, count).
    pub fn buckets(&self) -> impl Iterator<Item = (f64, u64)> + '_ {
        self.counts
            .iter()
            .enumerate()
            .filter(|(_, c)| **c > 0)
            .map(|(i, c)| (Self::upper_ms(i), *c))
    }
}

/// How every request ended, and the run's totals.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Outcomes {
    /// Requests that arrived.
    pub arrived: u64,
    /// Requests that completed.
    pub completed: u64,
    /// Refused by the strategy: no allowed region (451) or none available (503).
    pub refused: u64,
    /// Every region tried was down or full.
    pub dropped: u64,
    /// Lost when their region went down.
    pub failed: u64,
    /// Completed within their tenant's latency goal (or without one).
    pub met_goal: u64,
    /// Jobs placed outside their tenant's residency.
    pub residency_violations: u64,
    /// Attempts that failed over to the next region.
    pub failovers: u64,
    /// Per tenant (catalog index): (arrived, completed, met goal).
    pub tenants: Vec<(u64, u64, u64)>,
}

/// One strategy's results.
#[derive(Debug, Clone, PartialEq)]
pub struct Summary {
    /// Strategy name.
    pub strategy: String,
    /// Request fates.
    pub outcomes: Outcomes,
    /// Reserved capacity cost over the run (paid whether used or not).
    pub reserved_cost: f64,
    /// On-demand spend.
    pub on_demand_cost: f64,
    /// Reserved slot time spent on jobs / reserved slot time, 0–1.
    pub reserved_utilisation: f64,
    /// Latency quantiles, ms.
    pub p50_ms: f64,
    /// 95th percentile, ms.
    pub p95_ms: f64,
    /// 99th percentile, ms.
    pub p99_ms: f64,
}

impl Summary {
    /// Total cost per 1000 completed outputs.
    pub fn cost_per_1000(&self) -> f64 {
        if self.outcomes.completed == 0 {
            return 0.0;
        }
        (self.reserved_cost + self.on_demand_cost) * 1000.0 / self.outcomes.completed as f64
    }

    /// Share of all arrived requests that completed within their latency goal, 0–1.
    pub fn goal_share(&self) -> f64 {
        if self.outcomes.arrived == 0 {
            return 1.0;
        }
        self.outcomes.met_goal as f64 / self.outcomes.arrived as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_are_within_a_bucket() {
        let mut h = Histogram::default();
        for ms in 1..=1000 {
            h.record(ms as f64);
        }
        let p50 = h.quantile(0.5);
        assert!((p50 - 500.0).abs() / 500.0 < 0.011, "{p50}");
        assert!((h.quantile(0.99) - 990.0).abs() / 990.0 < 0.011);
        assert_eq!(h.total(), 1000);
    }

    #[test]
    fn intervals_spread_over_buckets() {
        let mut l = Ledger::new(2, 100, 10);
        l.reserved_busy(1, 5, 25);
        assert_eq!(l.region_total(&l.reserved_busy_us, 1), 20.0);
        assert_eq!(l.reserved_busy_us[10], 5.0);
        assert_eq!(l.reserved_busy_us[11], 10.0);
        l.on_demand_billed(0, 95, 130, 2.0);
        assert_eq!(l.on_demand_cost[9], 70.0);
    }
}
