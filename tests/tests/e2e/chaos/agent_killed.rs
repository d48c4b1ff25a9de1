//! A region's agent SIGKILLed while an open-loop load is in flight: requests not yet
//! accepted move to the other allowed region, with no client-visible failure; jobs the dead
//! agent had accepted end once it is back.

use std::time::Duration;

use tests::chaos::{Call, Load, Plan, Store, Tally, World, follow, resend_unsettled, soak};
use tests::eventually;

use super::{NODE, TWO_REGIONS, add_usage, settle, spec};
use crate::LONDON_IP;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_agent_killed_under_load_fails_over_with_no_client_visible_failure() {
    let _turn = super::turn().await;
    let mut world = World::start(NODE, spec(Store::Embedded, TWO_REGIONS)).await;
    let key = world.key("acme");
    let plan = Plan {
        rate: 20,
        duration: soak(Duration::from_secs(4)),
        from: LONDON_IP,
        image_size: 8,
        calls: &[Call::Run, Call::Queue],
    };
    let load = Load::start(&world.edge.base, &key, plan.clone());
    eventually("eu-west serves part of the load", || async {
        load.served_by("eu-west") >= 10
    })
    .await;
    let killed_at = load.elapsed();
    world.kill_agent("eu-west").await;
    let mut sent = load.finish().await;
    // Jobs eu-west accepted before it died wait on its disk: they end once it is back.
    world.restart_agent("eu-west").await;
    // Answers cut by the kill: the job may exist; the client asks again with its key.
    let cut = sent.iter().filter(|s| s.status == Some(502)).count();
    resend_unsettled(&world.edge.base, &key, &plan, &mut sent).await;
    follow(&world.edge.base, &key, &mut sent).await;

    let after: Vec<_> = sent.iter().filter(|s| s.at >= killed_at).collect();
    let refused: Vec<_> = after.iter().filter(|s| s.refused()).collect();
    let first_served = after
        .iter()
        .filter(|s| matches!(s.first_status(), Some(200 | 202)))
        .filter_map(|s| s.answered)
        .min()
        .expect("a request sent after the kill was served");
    let last_failure = sent
        .iter()
        .filter(|s| !matches!(s.first_status(), Some(200 | 202)))
        .filter_map(|s| s.answered)
        .filter(|&t| t >= killed_at)
        .max();
    let mut tally = Tally::of(
        "agent SIGKILL under load",
        &plan,
        "SIGKILL eu-west's agent, restart after the load",
        &sent,
    );
    let failover = first_served.saturating_sub(killed_at);
    tally.figure(format!(
        "failover {} ms (kill → first answer served elsewhere; target ≤ 1000)",
        failover.as_millis()
    ));
    tally.figure(format!(
        "last failure {}",
        last_failure.map_or("none".to_owned(), |t| format!(
            "{} ms after the kill",
            t.saturating_sub(killed_at).as_millis()
        ))
    ));
    tally.figure(format!(
        "client-visible failures of not-yet-accepted requests: {} (target 0); cut mid-answer: {cut}",
        refused.len()
    ));
    let mut unseen = add_usage(&mut tally, &world, "eu-west", &sent).await;
    unseen.extend(add_usage(&mut tally, &world, "eu-central", &sent).await);
    settle(&tally, &unseen, &sent);
    assert!(
        refused.is_empty(),
        "requests not yet accepted failed: {refused:#?}"
    );
    assert!(
        after
            .iter()
            .filter(|s| s.at >= killed_at + failover)
            .all(|s| s.region.as_deref() == Some("eu-central")),
        "after the failover, only eu-central serves"
    );
}
