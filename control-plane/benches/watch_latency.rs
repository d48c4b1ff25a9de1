//! Write → watcher notified, end to end through the HTTP API, on each store backend.
//!
//! For every change an edge is already long-polling (`poll_snapshot` from the revision it
//! has); an admin writes a catalog record (`PUT /admin/v1/jurisdictions/bench`, validated
//! against the whole catalog and written compare-and-set); the time measured runs from
//! just before the write is sent until the edge's poll has returned the snapshot that
//! holds it. The admin write's own time to acknowledgement is reported beside it.
//!
//! `cargo bench -p control-plane --bench watch_latency` measures 1,000 changes per backend
//! (`MERIDIAN_BENCH_CHANGES` sets another count) against the embedded store and a real
//! etcd started for the run; without `--bench` (as `cargo test --all-targets` runs it) it
//! makes a handful of changes only, to check that it works.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

use std::time::{Duration, Instant};

use policy::spec::JurisdictionSpec;
use testkit::{Backend, TestControlPlane};

/// How long an edge's poll may wait for one change before the run fails.
const POLL_WAIT: Duration = Duration::from_secs(20);
/// Pause between starting a poll and writing, so the poll is waiting when the write lands.
const SETTLE: Duration = Duration::from_millis(3);

fn main() {
    let measuring = std::env::args().any(|a| a == "--bench");
    let changes = if measuring {
        std::env::var("MERIDIAN_BENCH_CHANGES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(1000)
    } else {
        5
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime");
    runtime.block_on(async {
        report("embedded", measure(Backend::Embedded, changes).await);
        report("etcd", measure(Backend::Etcd, changes).await);
    });
}

/// Per change: (write sent → edge has it, write sent → write acknowledged).
async fn measure(backend: Backend, changes: usize) -> Vec<(Duration, Duration)> {
    let mut server = TestControlPlane::builder(backend)
        .seed(testkit::catalog::eu_west("http://127.0.0.1:9102").build())
        .start()
        .await;
    let (admin, edge) = (server.admin(), server.edge());
    let mut revision = edge.snapshot().await.expect("a snapshot").revision;

    let mut samples = Vec::with_capacity(changes);
    for i in 0..changes {
        let poll = {
            let edge = edge.clone();
            tokio::spawn(async move { edge.poll_snapshot(revision, POLL_WAIT).await })
        };
        tokio::time::sleep(SETTLE).await;
        let record = JurisdictionSpec {
            id: "bench".into(),
            name: Some(format!("change {i}")),
        };
        let start = Instant::now();
        let written = admin
            .put("jurisdictions", "bench", &record, None)
            .await
            .expect("the admin write");
        let acknowledged = start.elapsed();
        let mut snapshot = poll.await.unwrap().expect("the edge's poll");
        // A poll can only return older news if something else changed; poll on then.
        while snapshot.as_ref().is_none_or(|s| s.revision < written) {
            snapshot = edge.poll_snapshot(revision, POLL_WAIT).await.unwrap();
        }
        let notified = start.elapsed();
        let snapshot = snapshot.expect("a snapshot");
        assert!(
            snapshot
                .catalog
                .jurisdictions
                .iter()
                .any(|j| j.id == "bench" && j.name == record.name),
            "the snapshot holds the write"
        );
        revision = snapshot.revision;
        samples.push((notified, acknowledged));
    }
    server.stop().await;
    samples
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    #[allow(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        clippy::cast_precision_loss
    )]
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn report(backend: &str, samples: Vec<(Duration, Duration)>) {
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let (mut notified, mut acknowledged): (Vec<_>, Vec<_>) = samples.into_iter().unzip();
    notified.sort();
    acknowledged.sort();
    println!(
        "{backend:>8}: write -> edge notified over {n} changes: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms \
         (write acknowledged: p50 {:.2} ms, p99 {:.2} ms)",
        ms(percentile(&notified, 50.0)),
        ms(percentile(&notified, 99.0)),
        ms(notified[notified.len() - 1]),
        ms(percentile(&acknowledged, 50.0)),
        ms(percentile(&acknowledged, 99.0)),
        n = notified.len(),
    );
}
