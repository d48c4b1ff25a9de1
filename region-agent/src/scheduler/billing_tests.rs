//! The catalog copy in force and billing: slots and prices change live, an instance's share
//! of the pools, refusals before a catalog and for a unit mismatch, failed jobs recorded at
//! no cost, crash repair.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use contract::{Nanos, charge};
use control_plane_client::wire::{Capacity, Outcome};
use serde_json::json;

use super::tests::{acme, catalog, config, one_slot, start_with, submit, wait_state, wait_until};
use super::*;
use crate::serving::test_model::{Gate, TestModel};
use crate::usage::audit::RecordFilter;

fn journal(s: &Scheduler) -> Vec<control_plane_client::wire::UsageRecord> {
    s.ledger()
        .page(&RecordFilter::default(), None, 1000)
        .unwrap()
        .0
}

#[tokio::test]
async fn a_new_catalog_changes_slots_and_prices_without_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let gate = Gate::closed();
    let model = TestModel::new("test/echo").gated(&gate);
    let s = start_with(&config(dir.path(), ""), vec![model], Some(&one_slot()));
    let held = submit(&s, "held", Priority::Normal).await;
    wait_state(&s, &held.id, JobState::InProgress).await;
    assert_eq!(
        (s.report().free_reserved, s.report().catalog_revision),
        (0, Some(1))
    );

    // A reservation adds a GPU and the price doubles while the job runs.
    s.install_catalog(&catalog(2, (2, 0), &[("test/echo", "image", 0.5)]))
        .unwrap();
    let report = s.report();
    assert_eq!(
        (report.free_reserved, report.catalog_revision),
        (1, Some(2))
    );
    gate.open();
    let done = wait_state(&s, &held.id, JobState::Completed).await;
    let usage = done.usage.unwrap();
    assert_eq!(
        (
            usage.cost_nanos,
            usage.price_per_unit,
            usage.catalog_revision
        ),
        (Nanos(500_000_000), 0.5, 2),
        "priced by the copy in force when it finished"
    );

    // The reservation ends: the slots shrink back, and the new price holds.
    s.install_catalog(&catalog(3, (0, 1), &[("test/echo", "image", 0.125)]))
        .unwrap();
    wait_until("the slots follow the catalog", || {
        let r = s.report();
        (r.free_reserved, r.on_demand_startable) == (0, 1)
    })
    .await;
    let next = submit(&s, "next", Priority::Normal).await;
    let next = wait_state(&s, &next.id, JobState::Completed).await;
    let usage = next.usage.unwrap();
    assert_eq!(
        (usage.capacity, usage.cost_nanos),
        (Capacity::OnDemand, Nanos(125_000_000))
    );
    s.stop().await;
}

#[tokio::test]
async fn an_instance_serves_and_reports_its_share_of_the_pools() {
    let dir = tempfile::tempdir().unwrap();
    let share = "\n[pools]\ncpu = { reserved = 1, on_demand = 1 }";
    let s = start_with(
        &config(dir.path(), share),
        vec![TestModel::new("test/echo")],
        None,
    );
    let before = s.report();
    assert!(before.pools.is_empty(), "no slot before a catalog copy");
    assert_eq!(before.result_retention_s, 86_400);

    // The region's pool has 3 reserved and 2 on-demand slots; this instance serves 1 and 1.
    s.install_catalog(&catalog(2, (3, 2), &[("test/echo", "image", 0.25)]))
        .unwrap();
    let report = s.report();
    assert_eq!((report.free_reserved, report.on_demand_startable), (1, 1));
    let cpu = report.pools["cpu"];
    assert_eq!((cpu.reserved, cpu.on_demand), (1, 1));
    let job = submit(&s, "shared", Priority::Normal).await;
    let usage = wait_state(&s, &job.id, JobState::Completed)
        .await
        .usage
        .unwrap();
    assert_eq!(
        (usage.capacity, usage.cost_nanos),
        (Capacity::Reserved, Nanos(250_000_000)),
        "priced by the catalog"
    );

    // A smaller pool bounds the share.
    s.install_catalog(&catalog(3, (0, 2), &[("test/echo", "image", 0.25)]))
        .unwrap();
    let cpu = s.report().pools["cpu"];
    assert_eq!((cpu.reserved, cpu.on_demand), (0, 1));
    s.stop().await;

    // Without [pools], the instance serves and reports the whole pool.
    let whole = tempfile::tempdir().unwrap();
    let s = start_with(
        &config(whole.path(), ""),
        vec![TestModel::new("test/echo")],
        Some(&catalog(2, (3, 2), &[("test/echo", "image", 0.25)])),
    );
    let report = s.report();
    assert_eq!((report.free_reserved, report.on_demand_startable), (3, 2));
    let cpu = report.pools["cpu"];
    assert_eq!((cpu.reserved, cpu.on_demand), (3, 2));
    s.stop().await;
}

#[tokio::test]
async fn without_a_catalog_jobs_are_refused_with_no_catalog() {
    let dir = tempfile::tempdir().unwrap();
    let s = start_with(
        &config(dir.path(), ""),
        vec![TestModel::new("test/echo")],
        None,
    );
    let refused = s
        .submit(&acme(), "test/echo", Priority::Normal, json!({"text": "x"}))
        .await;
    assert!(
        matches!(refused, Err(SubmitError::Refused(Refusal::NoCatalog))),
        "{refused:?}"
    );
    assert_eq!(s.refusal("test/echo"), Some(Refusal::NoCatalog));
    let report = s.report();
    assert_eq!((report.catalog_revision, report.free_reserved), (None, 0));
    assert!(report.models.is_empty());
    assert_eq!(
        std::fs::read_dir(dir.path().join("jobs")).unwrap().count(),
        0
    );
    s.install_catalog(&one_slot()).unwrap();
    let job = submit(&s, "now", Priority::Normal).await;
    wait_state(&s, &job.id, JobState::Completed).await;
    s.stop().await;
}

#[tokio::test]
async fn a_model_billed_in_another_unit_is_not_served() {
    let dir = tempfile::tempdir().unwrap();
    // The test model measures images; this catalog bills it per megapixel.
    let megapixels = catalog(4, (1, 0), &[("test/echo", "megapixel", 0.25)]);
    let s = start_with(
        &config(dir.path(), ""),
        vec![TestModel::new("test/echo")],
        Some(&megapixels),
    );
    let refused = s
        .submit(&acme(), "test/echo", Priority::Normal, json!({"text": "x"}))
        .await;
    assert!(
        matches!(refused, Err(SubmitError::Refused(Refusal::ModelNotServed))),
        "{refused:?}"
    );
    assert!(
        !s.report().models.contains_key("test/echo"),
        "not reported as served"
    );
    // Nor is a model the catalog does not place here.
    s.install_catalog(&catalog(5, (1, 0), &[("test/other", "image", 0.25)]))
        .unwrap();
    assert_eq!(s.refusal("test/echo"), Some(Refusal::ModelNotServed));
    s.stop().await;
}

#[tokio::test]
async fn failed_and_timed_out_jobs_are_recorded_failed_at_no_cost() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path(), "");
    let mut slow_config = cfg.models[0].clone();
    slow_config.id = contract::ModelId::new("test/slow").unwrap();
    slow_config.timeout = Duration::from_secs(1);
    cfg.models.push(slow_config);
    let mut echo = TestModel::new("test/echo");
    echo.fail_on = Some("bad".into());
    let mut slow = TestModel::new("test/slow");
    slow.run_delay = Duration::from_millis(1100);
    let prices = [("test/echo", "image", 0.25), ("test/slow", "image", 0.25)];
    let s = start_with(&cfg, vec![echo, slow], Some(&catalog(6, (2, 0), &prices)));

    let bad = submit(&s, "bad", Priority::Normal).await;
    let slow_job = s
        .submit(
            &acme(),
            "test/slow",
            Priority::Normal,
            json!({"text": "zzz"}),
        )
        .await
        .unwrap();
    let good = submit(&s, "good", Priority::Normal).await;
    let bad = wait_state(&s, &bad.id, JobState::Failed).await;
    let slow_job = wait_state(&s, &slow_job.id, JobState::Failed).await;
    wait_state(&s, &good.id, JobState::Completed).await;
    assert_eq!(slow_job.error.as_ref().unwrap().kind, "timeout");
    for (job, error) in [(&bad, "model_error"), (&slow_job, "timeout")] {
        let usage = job.usage.as_ref().unwrap();
        assert_eq!(usage.outcome, Outcome::Failed);
        assert_eq!(usage.error.as_deref(), Some(error));
        assert_eq!(
            (usage.cost_nanos, usage.units_nanos),
            (Nanos::ZERO, Nanos::ZERO)
        );
        assert_eq!(job.cost(), Nanos::ZERO);
    }
    assert!(
        slow_job.usage.as_ref().unwrap().gpu_nanos >= Nanos(1_100_000_000),
        "its GPU time counts as used capacity"
    );
    let journal = journal(&s);
    assert_eq!(journal.len(), 3, "failed jobs are journaled too");
    let outcomes: Vec<_> = journal.iter().map(|r| r.outcome).collect();
    assert_eq!(
        outcomes.iter().filter(|o| **o == Outcome::Failed).count(),
        2
    );
    s.stop().await;
}

#[tokio::test]
async fn a_queued_job_whose_model_leaves_the_catalog_is_priced_as_accepted() {
    let dir = tempfile::tempdir().unwrap();
    let gate = Gate::closed();
    let model = TestModel::new("test/echo").gated(&gate);
    let s = start_with(&config(dir.path(), ""), vec![model], Some(&one_slot()));
    let running = submit(&s, "running", Priority::Normal).await;
    wait_state(&s, &running.id, JobState::InProgress).await;
    let queued = submit(&s, "queued", Priority::Normal).await;
    s.install_catalog(&catalog(7, (1, 0), &[])).unwrap();
    assert_eq!(s.refusal("test/echo"), Some(Refusal::ModelNotServed));
    gate.open();
    for id in [&running.id, &queued.id] {
        let done = wait_state(&s, id, JobState::Completed).await;
        let usage = done.usage.unwrap();
        assert_eq!(
            (usage.catalog_revision, usage.cost_nanos),
            (1, charge(1.0, 0.25))
        );
    }
    s.stop().await;
}

#[tokio::test]
async fn a_job_left_unbilled_by_a_crash_is_billed_exactly_once_at_restart() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), "");
    let s = start_with(&cfg, vec![TestModel::new("test/echo")], Some(&one_slot()));
    let lost = submit(&s, "lost", Priority::Normal).await;
    let kept = submit(&s, "kept", Priority::Normal).await;
    wait_state(&s, &lost.id, JobState::Completed).await;
    wait_state(&s, &kept.id, JobState::Completed).await;
    s.stop().await;
    drop(s);
    let jobs = dir.path().join("jobs");
    assert!(
        !jobs.join(&lost.id).join("input.json").exists(),
        "billed jobs drop their input"
    );
    // A crash after each job's final record: one before its journal append (its line is
    // missing), one after it (only the input is still there).
    for id in [&lost.id, &kept.id] {
        std::fs::write(jobs.join(id).join("input.json"), br#"{"text": "x"}"#).unwrap();
    }
    let journal_dir = dir.path().join("usage/journal");
    for entry in std::fs::read_dir(&journal_dir).unwrap() {
        let path = entry.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap();
        let left: String = text
            .lines()
            .filter(|l| !l.contains(&lost.id))
            .map(|l| format!("{l}\n"))
            .collect();
        std::fs::write(&path, left).unwrap();
    }

    let s = start_with(&cfg, vec![TestModel::new("test/echo")], Some(&one_slot()));
    let records = journal(&s);
    let count = |id: &str| records.iter().filter(|r| r.job_id == id).count();
    assert_eq!((count(&lost.id), count(&kept.id)), (1, 1));
    let billed = records.iter().find(|r| r.job_id == lost.id).unwrap();
    assert_eq!(billed.cost_nanos, charge(1.0, 0.25));
    for id in [&lost.id, &kept.id] {
        assert!(
            !jobs.join(id).join("input.json").exists(),
            "{id}'s input is deleted once billed"
        );
    }
    s.stop().await;
}
