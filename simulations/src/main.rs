//! `simulations`: compare routing strategies and plan reservations on a simulated world.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use simulations::{Scenario, StrategyKind, engine, report};

/// Deterministic discrete-event simulation of Meridian's global traffic. The same scenario,
/// seed and request count give the same results bit for bit.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Args, Clone)]
struct Common {
    /// Scenario file (TOML): catalog, demand and events; see simulations/scenarios/.
    #[arg(long)]
    scenario: PathBuf,
    /// Seed of every random choice; printed with the results so a run can be replayed.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Requests over the run (expected count; arrivals are random). Default: the
    /// scenario's `simulation.requests`, the load its capacity is sized for.
    #[arg(long)]
    requests: Option<u64>,
}

#[derive(Subcommand)]
enum Command {
    /// Run every strategy (or those chosen) on the same traffic: print the comparison
    /// table and write CSV files and SVG charts.
    Run {
        #[command(flatten)]
        common: Common,
        /// Folder for summary.csv, tenants.csv, regions.csv, timeline.csv, latency.csv and the
        /// SVG charts (latency.svg, cost_over_day.svg, utilisation_over_day.svg).
        #[arg(long, default_value = "sim-out")]
        out: PathBuf,
        /// Strategies to run, comma-separated: nearest, round-robin, least-loaded,
        /// cheapest, meridian. Default: all.
        #[arg(long, value_delimiter = ',', value_parser = parse_strategy)]
        strategies: Vec<StrategyKind>,
        /// Strategies run at once on separate threads. Default: the CPUs available.
        #[arg(long)]
        threads: Option<usize>,
        /// Check the invariants after every event (much slower): a broken one stops the
        /// run with its seed, strategy and time, to be kept as a regression test.
        #[arg(long)]
        check: bool,
    },
    /// Recommend reserved GPUs per region from the scenario's demand (or a usage trace)
    /// and report the saving against all on-demand and the current reservations.
    Plan {
        #[command(flatten)]
        common: Common,
        /// A usage trace to size reservations from, instead of simulating the scenario's
        /// demand: CSV (tenant,model,region,day,units,gpu_seconds), or the control plane's
        /// `GET /admin/v1/usage` answer saved as JSON (grouped by at least region and day).
        #[arg(long)]
        trace: Option<PathBuf>,
        /// Rounds of the newsvendor estimate, each sized from the previous run and re-simulated;
        /// two scaled tries of the best follow. Runs 4 + rounds simulations.
        #[arg(long, default_value_t = 2)]
        rounds: u32,
        /// How far, in percentage points, the share of requests meeting their latency goal
        /// may fall below today's for a cheaper plan to be recommended.
        #[arg(long, default_value_t = 0.5)]
        goal_tolerance: f64,
    },
    /// Time one strategy on one core and report simulated requests per second.
    Bench {
        #[command(flatten)]
        common: Common,
        /// The strategy to time.
        #[arg(long, default_value = "meridian", value_parser = parse_strategy)]
        strategy: StrategyKind,
    },
    /// Check a scenario file and print what it holds.
    Validate {
        /// Scenario file (TOML).
        scenario: PathBuf,
    },
}

fn parse_strategy(name: &str) -> Result<StrategyKind, String> {
    StrategyKind::parse(name).ok_or_else(|| {
        let names: Vec<_> = StrategyKind::ALL.iter().map(|k| k.name()).collect();
        format!("unknown strategy {name:?}; use one of {}", names.join(", "))
    })
}

fn load(common: &Common) -> anyhow::Result<(Scenario, u64)> {
    let scenario = Scenario::load(&common.scenario)
        .with_context(|| format!("load scenario {}", common.scenario.display()))?;
    let requests = common.requests.unwrap_or(scenario.spec.simulation.requests);
    Ok((scenario, requests))
}

#[allow(clippy::print_stdout)]
fn main() -> ExitCode {
    if let Err(e) = telemetry::init("simulations") {
        eprintln!("error: {e}");
        return ExitCode::FAILURE;
    }
    match execute(Cli::parse().command) {
        Ok(text) => {
            print!("{text}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn execute(command: Command) -> anyhow::Result<String> {
    match command {
        Command::Run {
            common,
            out,
            strategies,
            threads,
            check,
        } => run(&common, &out, strategies, threads, check),
        Command::Plan {
            common,
            trace,
            rounds,
            goal_tolerance,
        } => plan(&common, trace.as_deref(), rounds, goal_tolerance),
        Command::Bench { common, strategy } => bench(&common, strategy),
        Command::Validate { scenario } => validate(&scenario),
    }
}

fn run(
    common: &Common,
    out: &Path,
    strategies: Vec<StrategyKind>,
    threads: Option<usize>,
    check: bool,
) -> anyhow::Result<String> {
    let (scenario, requests) = load(common)?;
    let strategies = if strategies.is_empty() {
        StrategyKind::ALL.to_vec()
    } else {
        strategies
    };
    let threads =
        threads.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, usize::from));
    tracing::info!(scenario = %scenario.spec.name, seed = common.seed, requests, "running");
    let started = Instant::now();
    let base = engine::RunOptions {
        seed: common.seed,
        requests,
        strategy: StrategyKind::Meridian,
        check,
    };
    let results = engine::compare(&scenario, base, &strategies, threads)?;
    report::write_all(out, &scenario, &results)?;
    Ok(format!(
        "scenario {} · seed {} · {} requests · {:.1} s\n{}wrote CSV and SVG to {}\n",
        scenario.spec.name,
        common.seed,
        results.first().map_or(0, |r| r.summary.outcomes.arrived),
        started.elapsed().as_secs_f64(),
        report::table(scenario.catalog.currency(), &results),
        out.display()
    ))
}

fn plan(
    common: &Common,
    trace: Option<&Path>,
    rounds: u32,
    tolerance: f64,
) -> anyhow::Result<String> {
    let (scenario, requests) = load(common)?;
    let plan = match trace {
        Some(path) => simulations::plan::from_trace(&scenario, &simulations::trace::load(path)?)?,
        None => simulations::plan::plan(&scenario, common.seed, requests, rounds, tolerance)?,
    };
    Ok(plan.to_string())
}

fn bench(common: &Common, strategy: StrategyKind) -> anyhow::Result<String> {
    let (scenario, requests) = load(common)?;
    let started = Instant::now();
    let options = engine::RunOptions {
        seed: common.seed,
        requests,
        strategy,
        check: false,
    };
    let result = engine::run(&scenario, options)?;
    let secs = started.elapsed().as_secs_f64();
    let n = result.summary.outcomes.arrived;
    Ok(format!(
        "{} · {} · seed {} · {} requests over {} regions in {:.2} s = {:.0} simulated requests/s\n",
        scenario.spec.name,
        strategy.name(),
        common.seed,
        n,
        scenario.catalog.regions().len(),
        secs,
        n as f64 / secs
    ))
}

fn validate(path: &Path) -> anyhow::Result<String> {
    let s = Scenario::load(path).with_context(|| format!("load scenario {}", path.display()))?;
    let c = &s.catalog;
    let mut text = format!(
        "{}: valid — {} regions, {} models, {} tenants, {} cities, {} events, {} requests\n",
        s.spec.name,
        c.regions().len(),
        c.models().len(),
        c.tenants().len(),
        s.spec.demand.cities.len(),
        s.spec.events.len(),
        s.spec.simulation.requests
    );
    for w in c.warnings() {
        text.push_str(&format!("warning: {w}\n"));
    }
    Ok(text)
}
