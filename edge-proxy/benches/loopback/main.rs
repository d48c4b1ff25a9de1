//! The edge on loopback, side by side with the same backend reached directly and through an
//! nginx reverse proxy (docs/design.md §11: edge overhead vs direct ≤ 0.15 ms p50 and ≤ 1 ms p99
//! at half of the edge's max rate; edge throughput with one worker ≥ nginx's).
//!
//! Six paths, one backend, the same request bytes (`POST /v1/run/meridian/esrgan-x4` with
//! the tenant's `Authorization: Key …` and an `X-Forwarded-For`, which the backend and nginx
//! ignore):
//!
//! - **direct**: the load generator → the backend, a stand-in for a region agent (see
//!   `backend`; it answers a fixed result and runs no model).
//! - **edge**: → Meridian's edge in-process with the real control plane (see `edge`): key,
//!   quotas, geo-IP, route, proxy, on one single-threaded tokio runtime.
//! - **nginx**: → Debian's nginx, `worker_processes 1`, a minimal `proxy_pass` (see `nginx`).
//! - **pingora**: → pingora alone, forwarding without any of the edge's work, run as the edge
//!   runs it (see `bare`): the floor under the edge, to tell pingora's cost from Meridian's.
//! - **edge×8**, **edge×64**: → the edge again, each region served by 8 or 64 instances
//!   (the edge path has one): what ranking a region's instances costs per request.
//!
//! For each path: the max rate (closed loop, 32 keep-alive connections), then latency at a
//! fixed rate — half of the edge's median max rate, the same for every path — in an
//! open loop that counts queueing from each request's timetable slot (see `load`). Each
//! measure is taken in several rounds, the paths in a rotating order, and the medians are
//! reported. Any answer other than 200 fails the run.
//!
//! Everything shares the machine's cores: the generator (this thread and its pacer), the
//! backend's thread, and the proxy (the edge's worker thread, or nginx's worker process).
//! On two cores, a proxied path runs three busy threads on two cores while the direct path
//! runs two, so the overheads include the proxy's share of the CPU, not only its work; the
//! edge and nginx are measured under the same conditions. Core count is printed.
//!
//! `cargo bench -p edge-proxy --bench loopback` measures (3 rounds; `MERIDIAN_BENCH_ROUNDS`
//! sets another count). Without `--bench` (as `cargo test --all-targets` runs it) each run
//! lasts a fraction of a second, to check that every path answers 200. nginx must be
//! installed (scripts/bootstrap installs it).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

mod backend;
mod bare;
mod edge;
mod http1;
mod load;
mod nginx;
mod report;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use crate::backend::Backend;
use crate::bare::BarePingora;
use crate::edge::EdgeUnderTest;
use crate::nginx::Nginx;
use crate::report::{Path, Round};

/// How many paths are measured.
const PATHS: usize = 6;

/// A path, where it listens, and the request it gets (the same but for the tenant's key).
type Target = (Path, SocketAddr, Arc<[u8]>);

/// How long a path may take to first answer 200 (the edge waits for its first snapshot).
const PATIENCE: Duration = Duration::from_secs(30);

/// How long and how hard to load each path.
struct Plan {
    rounds: usize,
    connections: usize,
    warm_up: Duration,
    max_rate_for: Duration,
    fixed_rate_for: Duration,
}

impl Plan {
    fn new(measuring: bool) -> Self {
        if measuring {
            Self {
                rounds: std::env::var("MERIDIAN_BENCH_ROUNDS")
                    .ok()
                    .and_then(|v| v.parse().ok())
                    .filter(|r| *r > 0)
                    .unwrap_or(3),
                connections: 32,
                warm_up: Duration::from_secs(1),
                max_rate_for: Duration::from_secs(3),
                fixed_rate_for: Duration::from_secs(5),
            }
        } else {
            Self {
                rounds: 1,
                connections: 8,
                warm_up: Duration::from_millis(50),
                max_rate_for: Duration::from_millis(200),
                fixed_rate_for: Duration::from_millis(200),
            }
        }
    }
}

fn main() {
    let measuring = std::env::args().any(|a| a == "--bench");
    let plan = Plan::new(measuring);
    let backend = Backend::start();
    let nginx = Nginx::start(backend.address);
    let edge = EdgeUnderTest::start(backend.address, 1);
    let edge8 = EdgeUnderTest::start(backend.address, 8);
    let edge64 = EdgeUnderTest::start(backend.address, 64);
    let bare = BarePingora::start(backend.address);
    let paths = [
        (Path::Direct, backend.address, &edge.key),
        (Path::Pingora, bare.address, &edge.key),
        (Path::Edge, edge.address, &edge.key),
        (Path::Nginx, nginx.address, &edge.key),
        (Path::Edge8, edge8.address, &edge8.key),
        (Path::Edge64, edge64.address, &edge64.key),
    ]
    .map(|(path, address, key)| (path, address, Arc::<[u8]>::from(request(key))));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let rounds = runtime.block_on(measure(&plan, &paths, &backend));
    report::print(&plan_line(&plan), &rounds, measuring);
}

/// Runs every round: max rates first, then every path at half the edge's median max rate.
async fn measure(plan: &Plan, paths: &[Target; PATHS], backend: &Backend) -> Vec<Round> {
    for (path, address, request) in paths {
        load::wait_until_ok(*address, request, PATIENCE)
            .await
            .unwrap_or_else(|e| panic!("{path} never answered 200: {e}"));
    }
    let mut rounds: Vec<Round> = (0..plan.rounds).map(|_| Round::default()).collect();
    for (r, round) in rounds.iter_mut().enumerate() {
        for (path, address, request) in rotated(paths, r) {
            let answered = backend.answered();
            let rate = load::max_rate(
                address,
                request,
                plan.connections,
                plan.warm_up,
                plan.max_rate_for,
            )
            .await
            .unwrap_or_else(|e| panic!("{path}, max rate: {e}"));
            assert!(
                backend.answered() > answered,
                "{path}: the backend answered nothing, so the 200s came from elsewhere"
            );
            println!("round {}: {path:>6} max {rate:>8.0} req/s", r + 1);
            round.max_rate.insert(path, rate);
        }
    }
    let rate = report::median(rounds.iter().map(|r| r.max_rate[&Path::Edge])) / 2.0;
    for (r, round) in rounds.iter_mut().enumerate() {
        round.fixed_rate = rate;
        for (path, address, request) in rotated(paths, r) {
            let seen = load::fixed_rate(
                address,
                request,
                plan.connections,
                rate,
                plan.warm_up,
                plan.fixed_rate_for,
            )
            .await
            .unwrap_or_else(|e| panic!("{path}, fixed rate: {e}"));
            println!(
                "round {}: {path:>6} at {rate:.0} req/s: {}",
                r + 1,
                report::latency_line(&seen)
            );
            round.latencies.insert(path, seen);
        }
    }
    rounds
}

/// The paths, starting at the `round`th, so each path goes first in some round.
fn rotated(paths: &[Target; PATHS], round: usize) -> Vec<Target> {
    let mut order = paths.to_vec();
    order.rotate_left(round % paths.len());
    order
}

/// The request every path gets.
fn request(key: &str) -> Vec<u8> {
    let body = r#"{"input":{"image":"aGVsbG8="}}"#;
    format!(
        "POST /v1/run/meridian/esrgan-x4 HTTP/1.1\r\nhost: api.meridian.test\r\n\
         authorization: Key {key}\r\ncontent-type: application/json\r\n\
         x-forwarded-for: 81.2.69.142\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

fn plan_line(plan: &Plan) -> String {
    let cores = std::thread::available_parallelism().map_or(0, std::num::NonZero::get);
    format!(
        "{cores} cores; {} round(s); {} connections; max rate: closed loop, {} ms per run; \
         fixed rate: open loop, {} ms per run; each after {} ms of warm-up",
        plan.rounds,
        plan.connections,
        plan.max_rate_for.as_millis(),
        plan.fixed_rate_for.as_millis(),
        plan.warm_up.as_millis(),
    )
}
