//! Arrivals: who calls, from where, when, for which model and how much work.
//!
//! Each city's traffic follows a daily cycle in its own time zone (a cosine between the
//! scenario's `trough` and the peak at `peak_hour`, local time), times its weight and any
//! spike. The rate is held constant for one minute at a time, and arrivals within a minute
//! form a Poisson process, so the expected number of requests over the run is the
//! scenario's `requests`. The same seed gives the same arrivals to every strategy, so
//! strategies are compared on identical traffic.

use crate::rng::Rng;
use crate::scenario::{Scenario, US_PER_HOUR};

/// One request as it reaches an edge.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Arrival {
    /// When, µs of virtual time.
    pub time_us: u64,
    /// City index in the scenario's demand.
    pub city: u16,
    /// Tenant index in the catalog.
    pub tenant: u16,
    /// Model index in the catalog.
    pub model: u16,
    /// Units of work.
    pub units: f64,
    /// What the job will take on a GPU, µs (GPU-seconds with jitter).
    pub service_us: u64,
}

const STEP_US: f64 = 60_000_000.0;

/// Generates the run's arrivals in time order.
#[derive(Debug, Clone)]
pub struct Demand<'a> {
    scenario: &'a Scenario,
    rng: Rng,
    /// Arrivals per µs in each one-minute step.
    rates: Vec<f64>,
    /// Per step, cumulative city rates (`cities` entries each).
    city_cumulative: Vec<f64>,
    cities: usize,
    step: usize,
    t_us: f64,
    jitter: f64,
}

/// A city's relative traffic at `utc_hour`.
fn diurnal(utc_hour: f64, offset: f64, trough: f64, peak_hour: f64) -> f64 {
    let local = (utc_hour + offset).rem_euclid(24.0);
    let phase = 2.0 * std::f64::consts::PI * (local - peak_hour) / 24.0;
    trough + (1.0 - trough) * (0.5 + 0.5 * phase.cos())
}

impl<'a> Demand<'a> {
    /// The arrivals of `scenario` for `seed`, about `requests` of them.
    pub fn new(scenario: &'a Scenario, seed: u64, requests: u64) -> Self {
        let demand = &scenario.spec.demand;
        let cities = demand.cities.len();
        let steps = (scenario.duration_us() as f64 / STEP_US).ceil() as usize;
        let mut city_cumulative = Vec::with_capacity(steps * cities);
        let mut rates = Vec::with_capacity(steps);
        for s in 0..steps {
            let mid_us = (s as f64 + 0.5) * STEP_US;
            let mut total = 0.0;
            for (c, city) in demand.cities.iter().enumerate() {
                let spike: f64 = scenario
                    .spikes
                    .iter()
                    .filter(|k| (k.start_us as f64) <= mid_us && mid_us < k.end_us as f64)
                    .filter(|k| k.cities.is_empty() || k.cities.contains(&c))
                    .map(|k| k.factor)
                    .product();
                let utc_hour = mid_us / US_PER_HOUR;
                total += city.weight
                    * spike
                    * diurnal(
                        utc_hour,
                        city.utc_offset_hours,
                        demand.trough,
                        demand.peak_hour,
                    );
                city_cumulative.push(total);
            }
            rates.push(total);
        }
        let sum: f64 = rates.iter().sum::<f64>() * STEP_US;
        let scale = if sum > 0.0 {
            requests as f64 / sum
        } else {
            0.0
        };
        rates.iter_mut().for_each(|r| *r *= scale);
        Self {
            scenario,
            rng: Rng::new(seed, 1),
            rates,
            city_cumulative,
            cities,
            step: 0,
            t_us: 0.0,
            jitter: scenario.spec.simulation.service_jitter,
        }
    }

    /// The next arrival, or `None` when the run is over.
    pub fn next_arrival(&mut self) -> Option<Arrival> {
        let end_us = self.scenario.duration_us() as f64;
        loop {
            let rate = *self.rates.get(self.step)?;
            let step_end = ((self.step + 1) as f64 * STEP_US).min(end_us);
            if rate > 0.0 {
                let t = self.t_us + self.rng.exponential(1.0 / rate);
                if t < step_end {
                    self.t_us = t;
                    return Some(self.draw(t));
                }
            }
            self.t_us = step_end;
            self.step += 1;
        }
    }

    fn draw(&mut self, t: f64) -> Arrival {
        let row = &self.city_cumulative[self.step * self.cities..(self.step + 1) * self.cities];
        let city = self.rng.pick(row);
        let (tenants, shares) = &self.scenario.city_tenants[city];
        let tenant = tenants[self.rng.pick(shares)];
        let (entries, shares) = &self.scenario.tenant_models[tenant];
        let (model, lo, hi) = self.scenario.model_units[entries[self.rng.pick(shares)]];
        let units = lo + (hi - lo) * self.rng.uniform();
        let gpu_s = self.scenario.catalog.models()[model].gpu_seconds_per_unit * units;
        let jitter = 1.0 + self.jitter * (2.0 * self.rng.uniform() - 1.0);
        Arrival {
            time_us: t as u64,
            city: city as u16,
            tenant: tenant as u16,
            model: model as u16,
            units,
            service_us: ((gpu_s * jitter * 1e6) as u64).max(1),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peak_and_trough_fall_at_local_times() {
        // Tokyo (UTC+9) peaks at 15:00 local = 06:00 UTC.
        assert!((diurnal(6.0, 9.0, 0.25, 15.0) - 1.0).abs() < 1e-12);
        assert!((diurnal(18.0, 9.0, 0.25, 15.0) - 0.25).abs() < 1e-12);
    }
}
