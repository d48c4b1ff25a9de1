//! A region agent killed under load: requests it had not accepted move to the next region
//! with no client-visible failure, its circuit opens, and traffic returns when it does.

use tests::{Backend, RegionDef, Stack, eventually};

use crate::{DUBLIN, FRANKFURT, LONDON_IP, NEW_YORK, TENANTS};

/// Frankfurt with on-demand GPUs only: while Dublin has an idle reserved GPU, Dublin wins
/// whatever either region's latency estimate.
const FRANKFURT_ON_DEMAND: RegionDef = RegionDef {
    reserved: 0,
    on_demand: 2,
    on_demand_price: 3.0,
    ..FRANKFURT
};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_killed_region_is_routed_around_and_comes_back() {
    let mut stack = Stack::start(
        Backend::Etcd,
        &[DUBLIN, FRANKFURT_ON_DEMAND],
        TENANTS,
        NEW_YORK,
    )
    .await;
    let acme = stack.key("acme").to_owned();
    // One at a time, London's requests go to Dublin's reserved GPUs. (At once, they spread:
    // this edge counts its own requests in flight against Dublin's free slots.)
    for _ in 0..3 {
        let a = stack.submit("run", &acme, Some(LONDON_IP)).await;
        assert_eq!(
            (a.status, a.region.as_deref()),
            (200, Some("eu-west")),
            "{}",
            a.body
        );
    }

    stack.kill_agent("eu-west").await;
    let during = stack.run_many(16, &acme, LONDON_IP).await;
    for a in &during {
        assert_eq!(
            (a.status, a.region.as_deref()),
            (200, Some("eu-central")),
            "{}",
            a.body
        );
    }
    // Its circuit opened: open (1), or half-open (2) once the one-second cool-down passed.
    let metrics = stack.metrics().await;
    let state = metrics
        .lines()
        .find_map(|l| l.strip_prefix("meridian_edge_circuit_state{region=\"eu-west\"} "))
        .unwrap_or_else(|| panic!("no circuit state for eu-west:\n{metrics}"));
    assert!(
        matches!(state, "1" | "2"),
        "eu-west's circuit is {state}, never opened"
    );

    // Dublin returns (same address, same data): once its circuit half-opens, traffic
    // from London goes back to its reserved GPUs.
    stack.start_agent("eu-west");
    eventually("London's traffic is back in eu-west", || async {
        let a = stack.submit("run", &acme, Some(LONDON_IP)).await;
        assert_eq!(a.status, 200, "{}", a.body);
        a.region.as_deref() == Some("eu-west")
    })
    .await;
}
