//! The results: per path, the median over rounds of its max rate and of its p50 and p99 at
//! the fixed rate; then the ratios that docs/design.md §11 sets targets for.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use crate::load::{Latencies, percentile};

/// A way to the backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Path {
    Direct,
    Pingora,
    /// The edge, each region one instance.
    Edge,
    Nginx,
    /// The edge, each region 8 instances.
    Edge8,
    /// The edge, each region 64 instances.
    Edge64,
}

impl fmt::Display for Path {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(match self {
            Self::Direct => "direct",
            Self::Pingora => "pingora",
            Self::Edge => "edge",
            Self::Nginx => "nginx",
            Self::Edge8 => "edge×8",
            Self::Edge64 => "edge×64",
        })
    }
}

/// What one round measured.
#[derive(Debug, Default)]
pub struct Round {
    /// Requests per second, closed loop.
    pub max_rate: BTreeMap<Path, f64>,
    /// The rate of the fixed-rate runs, requests per second.
    pub fixed_rate: f64,
    pub latencies: BTreeMap<Path, Latencies>,
}

/// The median of `values` (0 when there are none).
pub fn median(values: impl Iterator<Item = f64>) -> f64 {
    let mut values: Vec<f64> = values.collect();
    values.sort_by(f64::total_cmp);
    match values.len() {
        0 => 0.0,
        n if n % 2 == 1 => values[n / 2],
        n => f64::midpoint(values[n / 2 - 1], values[n / 2]),
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// One fixed-rate run in a line.
pub fn latency_line(seen: &Latencies) -> String {
    let l = &seen.latency;
    format!(
        "p50 {:.3} ms, p99 {:.3} ms, max {:.3} ms over {} requests",
        ms(percentile(l, 50.0)),
        ms(percentile(l, 99.0)),
        ms(l.last().copied().unwrap_or_default()),
        l.len()
    )
}

/// One path's medians.
struct Row {
    max_rate: f64,
    p50: f64,
    p99: f64,
    worst: f64,
}

fn row(rounds: &[Round], path: Path) -> Row {
    let runs = || rounds.iter().map(move |r| &r.latencies[&path].latency);
    Row {
        max_rate: median(rounds.iter().map(|r| r.max_rate[&path])),
        p50: median(runs().map(|l| ms(percentile(l, 50.0)))),
        p99: median(runs().map(|l| ms(percentile(l, 99.0)))),
        worst: runs()
            .filter_map(|l| l.last().copied())
            .map(ms)
            .fold(0.0, f64::max),
    }
}

/// Prints the table and the ratios, with the targets when `measuring`.
pub fn print(plan: &str, rounds: &[Round], measuring: bool) {
    let rate = rounds.first().map_or(0.0, |r| r.fixed_rate);
    let [direct, pingora, edge, nginx, edge8, edge64] = [
        Path::Direct,
        Path::Pingora,
        Path::Edge,
        Path::Nginx,
        Path::Edge8,
        Path::Edge64,
    ]
    .map(|p| row(rounds, p));
    let late = |p: f64| {
        median(
            rounds
                .iter()
                .flat_map(|r| r.latencies.values())
                .map(|l| percentile(&l.pacer_late, p).as_secs_f64() * 1e6),
        )
    };
    println!();
    if !measuring {
        println!(
            "test mode: short runs of an unoptimised build, to check that every path answers 200"
        );
    }
    println!("loopback: {plan}");
    println!("fixed rate: {rate:.0} req/s, half of the edge's median max rate, for every path");
    println!();
    println!(
        "{:<8} {:>11} {:>10} {:>10} {:>10}",
        "path", "max req/s", "p50 ms", "p99 ms", "max ms"
    );
    for (path, r) in [
        (Path::Direct, &direct),
        (Path::Pingora, &pingora),
        (Path::Edge, &edge),
        (Path::Edge8, &edge8),
        (Path::Edge64, &edge64),
        (Path::Nginx, &nginx),
    ] {
        println!(
            "{path:<8} {:>11.0} {:>10.3} {:>10.3} {:>10.3}",
            r.max_rate, r.p50, r.p99, r.worst
        );
    }
    println!(
        "(medians over {} round(s); max ms: the largest in any round; latencies include the \
         pacer's wake-up lateness, p50 {:.0} µs, p99 {:.0} µs)",
        rounds.len(),
        late(50.0),
        late(99.0)
    );
    println!();
    let verdict = |met: bool, target: &str| {
        if !measuring {
            String::new()
        } else if met {
            format!("target {target}: met")
        } else {
            format!("target {target}: MISSED")
        }
    };
    let throughput = edge.max_rate / nginx.max_rate;
    println!(
        "edge / nginx throughput   {throughput:>8.2}     {}",
        verdict(throughput >= 1.0, "≥ 1")
    );
    println!(
        "edge / direct throughput  {:>8.2}",
        edge.max_rate / direct.max_rate
    );
    println!(
        "nginx / direct throughput {:>8.2}",
        nginx.max_rate / direct.max_rate
    );
    println!(
        "edge / pingora throughput {:>8.2}     (what Meridian's admission costs on top of pingora)",
        edge.max_rate / pingora.max_rate
    );
    println!(
        "pingora / nginx throughput{:>8.2}",
        pingora.max_rate / nginx.max_rate
    );
    for (what, more) in [("edge×8 ", &edge8), ("edge×64", &edge64)] {
        println!(
            "{what} / edge throughput {:>8.2}     (a region of that many instances; p50 {:+.3} ms, \
             p99 {:+.3} ms)",
            more.max_rate / edge.max_rate,
            more.p50 - edge.p50,
            more.p99 - edge.p99
        );
    }
    let overhead = [
        ("edge − direct, p50 ", edge.p50 - direct.p50, Some(0.15)),
        ("edge − direct, p99 ", edge.p99 - direct.p99, Some(1.0)),
        ("nginx − direct, p50", nginx.p50 - direct.p50, None),
        ("nginx − direct, p99", nginx.p99 - direct.p99, None),
        ("edge − pingora, p50", edge.p50 - pingora.p50, None),
        ("edge − pingora, p99", edge.p99 - pingora.p99, None),
    ];
    for (what, value, target) in overhead {
        let verdict =
            target.map_or_else(String::new, |t| verdict(value <= t, &format!("≤ {t} ms")));
        println!("{what}       {value:>8.3} ms  {verdict}");
    }
}
