//! Counters the scheduler and the API keep, rendered as Prometheus text with the live gauges
//! (queue depth, slots, loaded models).

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;

use crate::config::Capacity;

/// Accumulated counters.
#[derive(Debug, Default)]
struct Counters {
    jobs: BTreeMap<(String, &'static str), u64>,
    cold_starts: BTreeMap<String, (u64, f64)>,
    batches: BTreeMap<String, (u64, u64)>,
    gpu_seconds: BTreeMap<(String, &'static str), f64>,
    charged: BTreeMap<String, f64>,
    capacity_cost: BTreeMap<&'static str, f64>,
    refusals: BTreeMap<&'static str, u64>,
    responses: BTreeMap<u16, u64>,
}

/// Thread-safe counters.
#[derive(Debug, Default)]
pub struct Metrics(Mutex<Counters>);

/// The label of a capacity class.
pub fn capacity_label(capacity: Capacity) -> &'static str {
    match capacity {
        Capacity::Reserved => "reserved",
        Capacity::OnDemand => "on_demand",
    }
}

/// Live values rendered beside the counters.
#[derive(Debug, Default)]
pub struct Gauges {
    /// Per model: queued, in progress, loaded.
    pub models: Vec<(String, usize, usize, bool)>,
    /// Busy slots, free reserved, free on-demand, startable on-demand.
    pub slots: (u32, u32, u32, u32),
    /// Finished jobs not billed yet (their usage record is not in the journal).
    pub unbilled: usize,
    /// Whether a usage batch waits in the outbox.
    pub usage_batch_pending: bool,
    /// Revision of the catalog copy in force.
    pub catalog_revision: Option<i64>,
    /// Whether the agent is draining.
    pub draining: bool,
}

impl Metrics {
    fn with(&self, f: impl FnOnce(&mut Counters)) {
        f(&mut self.0.lock().unwrap_or_else(|e| e.into_inner()));
    }

    /// A job reached a final state.
    pub fn job_finished(&self, model: &str, state: &'static str) {
        self.with(|c| *c.jobs.entry((model.to_owned(), state)).or_default() += 1);
    }

    /// A model was loaded in `seconds`.
    pub fn cold_start(&self, model: &str, seconds: f64) {
        self.with(|c| {
            let e = c.cold_starts.entry(model.to_owned()).or_default();
            e.0 += 1;
            e.1 += seconds;
        });
    }

    /// A batch of `jobs` ran on `capacity` for `seconds` at `price_per_hour`.
    pub fn batch(&self, model: &str, jobs: usize, capacity: Capacity, seconds: f64, price: f64) {
        self.with(|c| {
            let e = c.batches.entry(model.to_owned()).or_default();
            e.0 += 1;
            e.1 += jobs as u64;
            let label = capacity_label(capacity);
            *c.gpu_seconds.entry((model.to_owned(), label)).or_default() += seconds;
            *c.capacity_cost.entry(label).or_default() += seconds * price / 3600.0;
        });
    }

    /// A tenant was charged `cost` for a job of `model`.
    pub fn charged(&self, model: &str, cost: f64) {
        self.with(|c| *c.charged.entry(model.to_owned()).or_default() += cost);
    }

    /// A job was refused before acceptance.
    pub fn refused(&self, reason: &'static str) {
        self.with(|c| *c.refusals.entry(reason).or_default() += 1);
    }

    /// The API answered with `status`.
    pub fn response(&self, status: u16) {
        self.with(|c| *c.responses.entry(status).or_default() += 1);
    }

    /// Prometheus text exposition of the counters and `gauges` (each family one group).
    pub fn render(&self, region: &str, gauges: &Gauges) -> String {
        let c = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let mut out = String::new();
        let o = &mut out;
        family(o, "meridian_agent_info", "gauge", "The agent's region.");
        line(o, "meridian_agent_info", &[("region", region)], 1.0);
        family(
            o,
            "meridian_agent_jobs_total",
            "counter",
            "Jobs finished, by model and final status.",
        );
        for ((model, state), n) in &c.jobs {
            line(
                o,
                "meridian_agent_jobs_total",
                &[("model", model), ("status", state)],
                *n as f64,
            );
        }
        family(
            o,
            "meridian_agent_queue_depth",
            "gauge",
            "Jobs waiting, by model.",
        );
        for (model, queued, _, _) in &gauges.models {
            line(
                o,
                "meridian_agent_queue_depth",
                &[("model", model)],
                *queued as f64,
            );
        }
        family(
            o,
            "meridian_agent_jobs_in_progress",
            "gauge",
            "Jobs running, by model.",
        );
        for (model, _, running, _) in &gauges.models {
            line(
                o,
                "meridian_agent_jobs_in_progress",
                &[("model", model)],
                *running as f64,
            );
        }
        family(
            o,
            "meridian_agent_model_loaded",
            "gauge",
            "1 when the model is loaded.",
        );
        for (model, _, _, loaded) in &gauges.models {
            line(
                o,
                "meridian_agent_model_loaded",
                &[("model", model)],
                f64::from(u8::from(*loaded)),
            );
        }
        family(
            o,
            "meridian_agent_cold_starts_total",
            "counter",
            "Model loads, by model.",
        );
        for (model, (n, _)) in &c.cold_starts {
            line(
                o,
                "meridian_agent_cold_starts_total",
                &[("model", model)],
                *n as f64,
            );
        }
        family(
            o,
            "meridian_agent_cold_start_seconds_total",
            "counter",
            "Time spent loading models.",
        );
        for (model, (_, secs)) in &c.cold_starts {
            line(
                o,
                "meridian_agent_cold_start_seconds_total",
                &[("model", model)],
                *secs,
            );
        }
        family(
            o,
            "meridian_agent_batches_total",
            "counter",
            "Batches run, by model.",
        );
        for (model, (batches, _)) in &c.batches {
            line(
                o,
                "meridian_agent_batches_total",
                &[("model", model)],
                *batches as f64,
            );
        }
        family(
            o,
            "meridian_agent_batched_jobs_total",
            "counter",
            "Jobs run in batches, by model.",
        );
        for (model, (_, jobs)) in &c.batches {
            line(
                o,
                "meridian_agent_batched_jobs_total",
                &[("model", model)],
                *jobs as f64,
            );
        }
        family(
            o,
            "meridian_agent_gpu_seconds_total",
            "counter",
            "Slot time spent running batches.",
        );
        for ((model, capacity), secs) in &c.gpu_seconds {
            line(
                o,
                "meridian_agent_gpu_seconds_total",
                &[("model", model), ("capacity", capacity)],
                *secs,
            );
        }
        family(
            o,
            "meridian_agent_capacity_cost_total",
            "counter",
            "Slot time priced at the pool's hourly price.",
        );
        for (capacity, cost) in &c.capacity_cost {
            line(
                o,
                "meridian_agent_capacity_cost_total",
                &[("capacity", capacity)],
                *cost,
            );
        }
        family(
            o,
            "meridian_agent_charged_total",
            "counter",
            "What tenants were charged, by model.",
        );
        for (model, cost) in &c.charged {
            line(
                o,
                "meridian_agent_charged_total",
                &[("model", model)],
                *cost,
            );
        }
        family(
            o,
            "meridian_agent_refusals_total",
            "counter",
            "Jobs refused before acceptance, by reason.",
        );
        for (reason, n) in &c.refusals {
            line(
                o,
                "meridian_agent_refusals_total",
                &[("reason", reason)],
                *n as f64,
            );
        }
        family(
            o,
            "meridian_agent_http_responses_total",
            "counter",
            "API answers, by status.",
        );
        for (status, n) in &c.responses {
            line(
                o,
                "meridian_agent_http_responses_total",
                &[("status", &status.to_string())],
                *n as f64,
            );
        }
        let (busy, free_reserved, free_on_demand, startable) = gauges.slots;
        family(o, "meridian_agent_slots", "gauge", "Slots by state.");
        for (state, n) in [
            ("busy", busy),
            ("free_reserved", free_reserved),
            ("free_on_demand", free_on_demand),
            ("on_demand_startable", startable),
        ] {
            line(o, "meridian_agent_slots", &[("state", state)], f64::from(n));
        }
        family(
            o,
            "meridian_agent_unbilled_jobs",
            "gauge",
            "Finished jobs whose usage record is not in the journal yet.",
        );
        line(
            o,
            "meridian_agent_unbilled_jobs",
            &[],
            gauges.unbilled as f64,
        );
        family(
            o,
            "meridian_agent_usage_batch_pending",
            "gauge",
            "1 while a usage batch waits in the outbox for the control plane's receipt.",
        );
        line(
            o,
            "meridian_agent_usage_batch_pending",
            &[],
            f64::from(u8::from(gauges.usage_batch_pending)),
        );
        family(
            o,
            "meridian_agent_catalog_revision",
            "gauge",
            "Revision of the catalog copy in force (-1 before the first).",
        );
        line(
            o,
            "meridian_agent_catalog_revision",
            &[],
            gauges.catalog_revision.map_or(-1.0, |r| r as f64),
        );
        family(
            o,
            "meridian_agent_draining",
            "gauge",
            "1 while the agent drains.",
        );
        line(
            o,
            "meridian_agent_draining",
            &[],
            f64::from(u8::from(gauges.draining)),
        );
        out
    }
}

fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

fn line(out: &mut String, name: &str, labels: &[(&str, &str)], value: f64) {
    let labels: Vec<String> = labels
        .iter()
        .map(|(k, v)| format!("{k}=\"{}\"", v.replace('\\', "\\\\").replace('"', "\\\"")))
        .collect();
    if labels.is_empty() {
        let _ = writeln!(out, "{name} {value}");
    } else {
        let _ = writeln!(out, "{name}{{{}}} {value}", labels.join(","));
    }
}
