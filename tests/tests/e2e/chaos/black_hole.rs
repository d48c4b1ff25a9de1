//! A link between the edge and an agent that stops answering (accepts and reads, never
//! answers) rather than refusing: the edge answers every request clearly within its read
//! timeout, its breaker takes the region out, and the other region serves.

use std::time::Duration;

use tests::chaos::{
    BREAKER_COOL_DOWN, Call, Load, Plan, Store, Tally, World, follow, resend_unsettled, soak,
};
use tests::eventually;

use super::{NODE, TWO_REGIONS, add_usage, settle, spec};
use crate::LONDON_IP;

const READ_TIMEOUT: Duration = Duration::from_secs(1);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_black_holed_link_is_answered_within_the_read_timeout_and_routed_around() {
    black_hole(false).await;
}

/// Once the region's circuit opened, the dark link should see one probe per cool-down, not
/// every request that arrives while a half-open circuit waits for its probe's timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_black_holed_region_gets_one_probe_per_cool_down_once_its_circuit_opened() {
    black_hole(true).await;
}

/// The scenario; `strict` also bounds the timeouts after the circuit opened.
async fn black_hole(strict: bool) {
    let _turn = super::turn().await;
    let world = World::start(
        NODE,
        tests::chaos::WorldSpec {
            proxied: Some("eu-west"),
            read_timeout: READ_TIMEOUT,
            ..spec(Store::Embedded, TWO_REGIONS)
        },
    )
    .await;
    let key = world.key("acme");
    let plan = Plan {
        rate: 20,
        duration: soak(Duration::from_secs(4)),
        from: LONDON_IP,
        image_size: 8,
        calls: &[Call::Run, Call::Queue],
    };
    let load = Load::start(&world.edge.base, &key, plan.clone());
    eventually("eu-west serves through the link", || async {
        load.served_by("eu-west") >= 10
    })
    .await;
    let proxy = world.proxy.as_ref().unwrap();
    proxy.black_hole();
    let dark_at = load.elapsed();
    let mut sent = load.finish().await;
    let slowest = sent
        .iter()
        .filter_map(|s| Some(s.answered? - s.at))
        .max()
        .unwrap();
    let timed_out = sent.iter().filter(|s| s.status == Some(504)).count();
    let slowest_timeout = sent
        .iter()
        .filter(|s| s.status == Some(504))
        .filter_map(|s| Some(s.answered? - s.at))
        .max()
        .unwrap_or_default();
    // The first timeout opens the region's circuit (with the second); requests that left
    // later and still timed out went to the dark link through a half-open circuit.
    let opened = sent
        .iter()
        .filter(|s| s.status == Some(504))
        .filter_map(|s| s.answered)
        .min();
    let after_open = opened.map_or(0, |opened| {
        sent.iter()
            .filter(|s| s.at > opened && s.status == Some(504))
            .count()
    });
    let routed_around = sent
        .iter()
        .filter(|s| s.at >= dark_at && s.region.as_deref() == Some("eu-central"))
        .filter(|s| matches!(s.status, Some(200 | 202)))
        .count();
    // Over a good link again: clients whose answers timed out send again with their keys,
    // and the jobs eu-west queued before the link went dark are followed.
    proxy.heal();
    resend_unsettled(&world.edge.base, &key, &plan, &mut sent).await;
    follow(&world.edge.base, &key, &mut sent).await;

    let mut tally = Tally::of(
        "black-holed edge→agent link",
        &plan,
        &format!(
            "eu-west's link accepts and reads, never answers (read timeout {} ms)",
            READ_TIMEOUT.as_millis()
        ),
        &sent,
    );
    tally.figure(format!(
        "slowest answer {} ms (slowest 504 {} ms); 504 timeout: {timed_out} ({after_open} sent \
         after the first timeout); served by eu-central after: {routed_around}",
        slowest.as_millis(),
        slowest_timeout.as_millis()
    ));
    let mut unseen = add_usage(&mut tally, &world, "eu-west", &sent).await;
    unseen.extend(add_usage(&mut tally, &world, "eu-central", &sent).await);
    settle(&tally, &unseen, &sent);
    // Every request that met the dark link was answered once its read timeout passed, not
    // held: within the timeout and the time to answer (generous on a loaded machine).
    let bound = READ_TIMEOUT * 3;
    assert!(
        slowest_timeout <= bound,
        "a timed-out request took {slowest_timeout:?} (bound {bound:?})"
    );
    assert!(routed_around > 0, "nothing was served elsewhere");
    if let (true, Some(opened)) = (strict, opened) {
        // The timeout that opened it, one in flight beside it, and a probe per cool-down.
        let left = plan.duration.saturating_sub(opened);
        let probes = usize::try_from(left.as_millis() / BREAKER_COOL_DOWN.as_millis()).unwrap();
        assert!(
            after_open <= 2 + probes,
            "{after_open} requests sent after the circuit opened timed out on the dark link \
             (at most {} expected)",
            2 + probes
        );
    }
}
