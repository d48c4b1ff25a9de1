//! An agent SIGKILLed mid-job and started again: every job it had accepted — queued or
//! synchronous — completes, fails with a reason, or is cancelled; none vanishes, and each
//! is billed once.

use std::time::Duration;

use tests::chaos::{Call, Load, Plan, Store, Tally, World, follow, resend_unsettled, soak};
use tests::eventually;

use super::{DUBLIN_ONLY, NODE, add_usage, settle, spec};
use crate::LONDON_IP;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_agent_killed_mid_job_and_restarted_ends_every_accepted_job_and_bills_it_once() {
    let _turn = super::turn().await;
    let mut world = World::start(NODE, spec(Store::Embedded, DUBLIN_ONLY)).await;
    let key = world.key("acme");
    let plan = Plan {
        rate: 10,
        duration: soak(Duration::from_secs(4)),
        from: LONDON_IP,
        // Jobs long enough that some are running, and more queued, at the kill.
        image_size: 48,
        calls: &[Call::Queue, Call::Run, Call::Queue],
    };
    let load = Load::start(&world.edge.base, &key, plan.clone());
    eventually("eu-west runs a job with more queued", || async {
        load.served_by("eu-west") >= 5
            && world
                .agent_metric("eu-west", "meridian_agent_jobs_in_progress")
                .await
                > 0.0
    })
    .await;
    let running = world
        .agent_metric("eu-west", "meridian_agent_jobs_in_progress")
        .await;
    let queued = world
        .agent_metric("eu-west", "meridian_agent_queue_depth")
        .await;
    world.kill_agent("eu-west").await;
    let killed_at = load.elapsed();
    // Down long enough that new requests find no region.
    let answered = load.answered();
    eventually("five more answers while eu-west is down", || async {
        load.answered() >= answered + 5
    })
    .await;
    // Back while the load still runs: new jobs are taken again.
    world.restart_agent("eu-west").await;
    let back_at = load.elapsed();
    let mut sent = load.finish().await;
    // A client whose answer was cut by the kill sends the same request again with its
    // Idempotency-Key: the job the dead agent had accepted answers, nothing new is made.
    resend_unsettled(&world.edge.base, &key, &plan, &mut sent).await;
    follow(&world.edge.base, &key, &mut sent).await;

    let mut tally = Tally::of(
        "agent SIGKILL mid-job, restarted",
        &plan,
        &format!(
            "SIGKILL eu-west (only region) with {running} running, {queued} queued; down {} ms",
            back_at.saturating_sub(killed_at).as_millis()
        ),
        &sent,
    );
    let unseen = add_usage(&mut tally, &world, "eu-west", &sent).await;
    settle(&tally, &unseen, &sent);
    assert!(
        sent.iter().any(|s| s.at > back_at && s.completed()),
        "jobs are taken again after the restart"
    );
}
