//! Admission under a tenant's job bound and with idempotency keys, against the scheduler
//! directly: the count is checked and raised at once, it falls as jobs finish or are
//! cancelled, it is in the heartbeat report, and keys survive a restart.
#![allow(clippy::unwrap_used)]

use serde_json::json;

use super::tests::{acme, config, one_slot, start_with, wait_state};
use super::*;
use crate::jobs::idempotency::IdempotencyKey;
use crate::serving::test_model::{Gate, TestModel};

fn bound(max: u32, elsewhere: u32) -> Terms {
    Terms {
        bound: Some(JobBound { max, elsewhere }),
        ..Terms::default()
    }
}

fn keyed(key: &str) -> Terms {
    Terms {
        bound: None,
        key: Some(IdempotencyKey::parse(key.as_bytes()).unwrap()),
        ..Terms::default()
    }
}

async fn submit(s: &Scheduler, text: &str, terms: Terms) -> Result<JobRecord, SubmitError> {
    s.submit_with(
        &acme(),
        "test/echo",
        Priority::Normal,
        json!({"text": text}),
        terms,
    )
    .await
}

#[tokio::test]
async fn concurrent_submissions_never_pass_the_tenants_bound() {
    let dir = tempfile::tempdir().unwrap();
    let gate = Gate::closed();
    let s = start_with(
        &config(dir.path(), ""),
        vec![TestModel::new("test/echo").gated(&gate)],
        Some(&one_slot()),
    );
    let attempts = (0..20).map(|i| {
        let s = s.clone();
        tokio::spawn(async move { submit(&s, &format!("j{i}"), bound(16, 0)).await })
    });
    let mut accepted = Vec::new();
    let mut over = 0;
    for attempt in attempts {
        match attempt.await.unwrap() {
            Ok(record) => accepted.push(record.id),
            Err(SubmitError::OverBound(e)) => {
                assert_eq!((e.max, e.elsewhere), (16, 0));
                over += 1;
            }
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!((accepted.len(), over), (16, 4));
    assert_eq!(s.report().tenant_jobs.get("acme"), Some(&16));
    // Jobs elsewhere count too; another tenant has its own count.
    let globex = TenantId::new("globex").unwrap();
    let other = s
        .submit_with(
            &globex,
            "test/echo",
            Priority::Normal,
            json!({"text": "g"}),
            bound(16, 15),
        )
        .await
        .unwrap();
    assert!(matches!(
        s.submit_with(
            &globex,
            "test/echo",
            Priority::Normal,
            json!({"text": "g2"}),
            bound(16, 15),
        )
        .await,
        Err(SubmitError::OverBound(_))
    ));
    let report = s.report().tenant_jobs;
    assert_eq!((report["acme"], report["globex"]), (16, 1));

    // A cancelled job frees its place; finished ones free theirs.
    let last = accepted.last().unwrap();
    s.cancel("acme", last).await.unwrap();
    assert_eq!(s.tenant_jobs("acme"), 15);
    submit(&s, "again", bound(16, 0)).await.unwrap();
    assert!(submit(&s, "over", bound(16, 0)).await.is_err());
    gate.open();
    wait_state(&s, &accepted[0], JobState::Completed).await;
    let mut rx = s.watch("globex", &other.id).unwrap();
    testkit::within("globex's job", rx.wait_for(|r| r.state.is_final()))
        .await
        .unwrap();
    testkit::eventually("every job finished", || {
        std::future::ready(s.report().tenant_jobs.is_empty())
    })
    .await;
    submit(&s, "room again", bound(16, 0)).await.unwrap();
    s.stop().await;
}

#[tokio::test]
async fn a_key_names_one_job_across_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path(), "");
    let gate = Gate::closed();
    let s = start_with(
        &config,
        vec![TestModel::new("test/echo").gated(&gate)],
        Some(&one_slot()),
    );
    let first = submit(&s, "a", keyed("order-1")).await.unwrap();
    let again = submit(&s, "a", keyed("order-1")).await.unwrap();
    assert_eq!(again.id, first.id);
    assert!(matches!(
        submit(&s, "b", keyed("order-1")).await,
        Err(SubmitError::KeyReused)
    ));
    // Concurrent submissions under one new key make one job.
    let racing: Vec<_> = (0..8)
        .map(|_| {
            let s = s.clone();
            tokio::spawn(async move { submit(&s, "c", keyed("order-2")).await.unwrap().id })
        })
        .collect();
    let mut ids = std::collections::BTreeSet::new();
    for task in racing {
        ids.insert(task.await.unwrap());
    }
    assert_eq!(ids.len(), 1, "{ids:?}");
    assert_eq!(s.tenant_jobs("acme"), 2, "two jobs, not ten");
    gate.open();
    wait_state(&s, &first.id, JobState::Completed).await;
    s.stop().await;
    drop(s);

    let s = start_with(
        &config,
        vec![TestModel::new("test/echo")],
        Some(&one_slot()),
    );
    let after = submit(&s, "a", keyed("order-1")).await.unwrap();
    assert_eq!(after.id, first.id);
    assert_eq!(after.state, JobState::Completed);
    let racing_id = ids.first().unwrap();
    assert_eq!(
        &submit(&s, "c", keyed("order-2")).await.unwrap().id,
        racing_id
    );
    let jobs = std::fs::read_dir(dir.path().join("jobs")).unwrap().count();
    assert_eq!(jobs, 2);
    s.stop().await;
}

#[tokio::test]
async fn a_disk_short_of_space_refuses_new_jobs_and_finishes_accepted_ones() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(dir.path(), "");
    // No slot: the job is accepted and waits.
    let no_slot = super::tests::catalog(1, (0, 0), &[("test/echo", "image", 0.25)]);
    let s = start_with(&config, vec![TestModel::new("test/echo")], Some(&no_slot));
    let accepted = submit(&s, "kept", Terms::default()).await.unwrap();
    s.stop().await;
    drop(s);

    // Restarted with more free space asked for than the disk has.
    config.min_free_disk_bytes = u64::MAX;
    let s = start_with(
        &config,
        vec![TestModel::new("test/echo")],
        Some(&one_slot()),
    );
    assert!(matches!(
        submit(&s, "new", Terms::default()).await,
        Err(SubmitError::Refused(Refusal::DiskFull))
    ));
    assert_eq!(s.refusal("test/echo"), Some(Refusal::DiskFull));
    let done = wait_state(&s, &accepted.id, JobState::Completed).await;
    assert_eq!(done.output.unwrap()["text"], "KEPT");
    s.stop().await;
}

#[tokio::test]
async fn jobs_queued_at_a_restart_count_for_their_tenant_again() {
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path(), "");
    // No slot: accepted jobs wait in the queue.
    let no_slot = super::tests::catalog(1, (0, 0), &[("test/echo", "image", 0.25)]);
    let s = start_with(&config, vec![TestModel::new("test/echo")], Some(&no_slot));
    for text in ["a", "b"] {
        submit(&s, text, bound(2, 0)).await.unwrap();
    }
    s.stop().await;
    drop(s);

    let s = start_with(&config, vec![TestModel::new("test/echo")], Some(&no_slot));
    assert_eq!(s.report().tenant_jobs.get("acme"), Some(&2));
    assert!(matches!(
        submit(&s, "c", bound(2, 0)).await,
        Err(SubmitError::OverBound(_))
    ));
    s.stop().await;
}
