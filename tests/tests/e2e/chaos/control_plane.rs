//! The control plane SIGKILLed and started again under load, and etcd under a control plane
//! SIGKILLed and started again: jobs keep flowing (the edge routes on its snapshot, the
//! agents on their catalog copies), and usage ends up counted once.

use std::time::Duration;

use tests::chaos::{Call, Load, Plan, Store, Tally, World, follow, resend_unsettled, soak};
use tests::eventually;

use super::{NODE, TWO_REGIONS, add_usage, settle, spec};
use crate::LONDON_IP;

/// Which process dies.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Victim {
    ControlPlane,
    Etcd,
}

fn plan() -> Plan {
    Plan {
        rate: 20,
        duration: soak(Duration::from_secs(4)),
        from: LONDON_IP,
        image_size: 8,
        calls: &[Call::Run, Call::Queue],
    }
}

async fn kill_and_restart_under_load(victim: Victim) {
    let store = match victim {
        Victim::ControlPlane => Store::Embedded,
        Victim::Etcd => Store::Etcd,
    };
    let _turn = super::turn().await;
    let mut world = World::start(NODE, spec(store, TWO_REGIONS)).await;
    let key = world.key("acme");
    let plan = plan();
    let load = Load::start(&world.edge.base, &key, plan.clone());
    let served = || load.served_by("eu-west") + load.served_by("eu-central");
    eventually("the load is served", || async { served() >= 10 }).await;
    match victim {
        Victim::ControlPlane => world.kill_control_plane(),
        Victim::Etcd => world.kill_etcd().await,
    }
    let killed_at = load.elapsed();
    let before = served();
    // Jobs keep flowing with it down, for half of the load.
    let more = plan.requests() / 2;
    eventually(
        &format!("{more} more requests are served while it is down"),
        || async { served() >= before + more },
    )
    .await;
    let while_down = served() - before;
    match victim {
        Victim::ControlPlane => world.restart_control_plane().await,
        Victim::Etcd => world.restart_etcd().await,
    }
    let back_at = load.elapsed();
    let mut sent = load.finish().await;
    resend_unsettled(&world.edge.base, &key, &plan, &mut sent).await;
    follow(&world.edge.base, &key, &mut sent).await;

    let (name, fault) = match victim {
        Victim::ControlPlane => (
            "control plane SIGKILL, restarted",
            "SIGKILL the control plane (embedded store)",
        ),
        Victim::Etcd => (
            "etcd SIGKILL, restarted",
            "SIGKILL etcd under the control plane",
        ),
    };
    let failed_while_down: Vec<_> = sent
        .iter()
        .filter(|s| s.at >= killed_at && s.at < back_at && !s.completed())
        .collect();
    let mut tally = Tally::of(
        name,
        &plan,
        &format!(
            "{fault}; down {} ms",
            back_at.saturating_sub(killed_at).as_millis()
        ),
        &sent,
    );
    tally.figure(format!(
        "served while down: {while_down}; failed while down: {}",
        failed_while_down.len()
    ));
    let mut unseen = add_usage(&mut tally, &world, "eu-west", &sent).await;
    unseen.extend(add_usage(&mut tally, &world, "eu-central", &sent).await);
    settle(&tally, &unseen, &sent);
    assert!(
        failed_while_down.is_empty(),
        "requests failed while it was down: {failed_while_down:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_control_plane_killed_under_load_stops_no_job_and_usage_is_counted_once() {
    kill_and_restart_under_load(Victim::ControlPlane).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn etcd_killed_under_load_stops_no_job_and_usage_is_counted_once() {
    kill_and_restart_under_load(Victim::Etcd).await;
}
