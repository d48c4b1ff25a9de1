//! Scheduler tests with the in-code test model ([`crate::serving::test_model`]); catalog
//! copies are installed directly, as the link or the catalog file would.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use control_plane_client::wire::AgentCatalog;
use policy::{Location, ModelSpec, PoolSpec, RegionSpec};
use serde_json::json;

use super::*;
use crate::config::{AgentConfig, Capacity};
use crate::serving::Stopped;
use crate::serving::test_model::{Gate, TestModel};

pub(super) fn config(dir: &std::path::Path, extra_model: &str) -> AgentConfig {
    AgentConfig::from_toml(&format!(
        r#"
region = "eu-west"
edge_token = "edge-token-0123456789"
data_dir = "{}"
catalog_file = "installed-by-the-test"
on_demand_start_ms = 50
[[models]]
id = "test/echo"
weights_dir = "unused"
{extra_model}
"#,
        dir.display()
    ))
    .unwrap()
}

/// A catalog copy for eu-west: one pool with `reserved` and `on_demand` slots, and `models`
/// as (id, unit, price per unit).
pub(super) fn catalog(
    revision: i64,
    (reserved, on_demand): (i64, i64),
    models: &[(&str, &str, f64)],
) -> AgentCatalog {
    AgentCatalog {
        schema: contract::schema::AGENT_CATALOG,
        revision,
        currency: "USD".into(),
        region: RegionSpec {
            id: "eu-west".into(),
            jurisdiction: "eu".into(),
            location: Location {
                lat: 53.35,
                lon: -6.26,
            },
            endpoint: "http://127.0.0.1:9102".into(),
            pools: vec![PoolSpec {
                id: "cpu".into(),
                gpu: "cpu".into(),
                reserved,
                reserved_price_per_hour: Some(2.2),
                on_demand_max: on_demand,
                on_demand_price_per_hour: Some(3.9),
            }],
        },
        models: models
            .iter()
            .map(|(id, unit, price)| ModelSpec {
                id: (*id).into(),
                kind: "image-to-image".into(),
                unit: (*unit).into(),
                price_per_unit: *price,
                gpu_seconds_per_unit: 0.1,
                regions: None,
                weights: None,
            })
            .collect(),
    }
}

/// One reserved slot; `test/echo` at 0.25 an image.
pub(super) fn one_slot() -> AgentCatalog {
    catalog(1, (1, 0), &[("test/echo", "image", 0.25)])
}

pub(super) fn start_with(
    config: &AgentConfig,
    models: Vec<TestModel>,
    catalog: Option<&AgentCatalog>,
) -> Scheduler {
    let models = models
        .into_iter()
        .map(|m| Arc::new(m) as Arc<dyn Model>)
        .collect();
    let s = Scheduler::start(config, models, Hardware::cpu()).unwrap();
    if let Some(catalog) = catalog {
        s.install_catalog(catalog).unwrap();
    }
    s
}

fn start(config: &AgentConfig, models: Vec<TestModel>) -> Scheduler {
    start_with(config, models, Some(&one_slot()))
}

pub(super) fn acme() -> TenantId {
    TenantId::new("acme").unwrap()
}

pub(super) async fn submit(s: &Scheduler, text: &str, priority: Priority) -> JobRecord {
    s.submit(&acme(), "test/echo", priority, json!({"text": text}))
        .await
        .unwrap()
}

async fn submit_grouped(s: &Scheduler, text: &str, group: &str) -> JobRecord {
    s.submit(
        &acme(),
        "test/echo",
        Priority::Normal,
        json!({"text": text, "group": group}),
    )
    .await
    .unwrap()
}

/// Waits until job `id` reaches `state`.
pub(super) async fn wait_state(s: &Scheduler, id: &str, state: JobState) -> JobRecord {
    let mut rx = s.watch("acme", id).unwrap();
    testkit::within(
        &format!("job {id} to reach {state:?}"),
        rx.wait_for(|r| r.state == state),
    )
    .await
    .unwrap()
    .clone()
}

pub(super) async fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    testkit::eventually(what, || std::future::ready(condition())).await;
}

#[tokio::test]
async fn priorities_run_first_and_fifo_within_one() {
    let dir = tempfile::tempdir().unwrap();
    let gate = Gate::closed();
    let model = TestModel::new("test/echo").gated(&gate);
    let probe = model.probe.clone();
    let s = start(&config(dir.path(), ""), vec![model]);
    let first = submit(&s, "first", Priority::Normal).await;
    wait_state(&s, &first.id, JobState::InProgress).await;
    let mut ids = Vec::new();
    for (text, priority) in [
        ("n1", Priority::Normal),
        ("l1", Priority::Low),
        ("h1", Priority::High),
        ("n2", Priority::Normal),
    ] {
        ids.push(submit(&s, text, priority).await.id);
    }
    let (_, position) = s.status("acme", &ids[2]).unwrap();
    assert_eq!(position, Some(0), "the high-priority job is next");
    gate.open();
    for id in &ids {
        wait_state(&s, id, JobState::Completed).await;
    }
    assert_eq!(
        probe.lock().unwrap().order,
        ["first", "h1", "n1", "n2", "l1"]
    );
    s.stop().await;
}

#[tokio::test]
async fn same_key_jobs_run_in_one_batch() {
    let dir = tempfile::tempdir().unwrap();
    let gate = Gate::closed();
    let model = TestModel::new("test/echo").gated(&gate);
    let probe = model.probe.clone();
    let s = start(&config(dir.path(), "max_batch = 3"), vec![model]);
    let first = submit_grouped(&s, "x", "big").await;
    wait_state(&s, &first.id, JobState::InProgress).await;
    let mut ids = Vec::new();
    for (text, group) in [
        ("a", "small"),
        ("b", "big"),
        ("c", "small"),
        ("d", "small"),
        ("e", "small"),
    ] {
        ids.push(submit_grouped(&s, text, group).await.id);
    }
    gate.open();
    for id in &ids {
        wait_state(&s, id, JobState::Completed).await;
    }
    {
        let probe = probe.lock().unwrap();
        assert_eq!(probe.batches, [1, 3, 1, 1]);
        assert_eq!(probe.order, ["x", "a", "c", "d", "b", "e"]);
    }
    s.stop().await;
}

/// Steps of a long job, 1 ms each: seconds of work, far more than a test waits.
const LONG: usize = 10_000;

/// The test model with `steps` steps of 1 ms a run, each after a safe point.
fn stepped(steps: usize) -> TestModel {
    let mut model = TestModel::new("test/echo");
    model.steps = steps;
    model.step_time = Duration::from_millis(1);
    model
}

fn journaled(s: &Scheduler, id: &str) -> bool {
    let ids = std::collections::HashSet::from([id.to_owned()]);
    !s.ledger().journaled(&ids, 0).unwrap().is_empty()
}

#[tokio::test]
async fn a_running_job_cancelled_stops_at_its_next_step_unbilled_and_frees_its_slot() {
    let dir = tempfile::tempdir().unwrap();
    let model = stepped(LONG);
    let probe = model.probe.clone();
    let s = start(&config(dir.path(), ""), vec![model]);
    let running = submit(&s, "running", Priority::Normal).await;
    wait_until("the job runs its steps", || {
        probe.lock().unwrap().steps_run > 0
    })
    .await;
    let next = submit(&s, "next", Priority::Normal).await;
    let queued = submit(&s, "queued", Priority::Normal).await;
    assert_eq!(s.tenant_jobs("acme"), 3);

    // Another tenant cannot; a queued job is cancelled at once.
    assert!(matches!(
        s.cancel("other", &running.id).await,
        Err(CancelError::NotFound)
    ));
    let Ok(Cancellation::Cancelled(cancelled)) = s.cancel("acme", &queued.id).await else {
        panic!("a queued job is cancelled at once");
    };
    assert_eq!(cancelled.state, JobState::Cancelled);
    assert_eq!(s.tenant_jobs("acme"), 2);

    // A running one is asked to stop, and stops at its next safe point.
    let Ok(Cancellation::Requested(asked)) = s.cancel("acme", &running.id).await else {
        panic!("a running job is asked to stop");
    };
    assert_eq!(asked.state, JobState::InProgress);
    let steps_when_asked = probe.lock().unwrap().steps_run;
    assert!(matches!(
        s.cancel("acme", &running.id).await,
        Ok(Cancellation::Requested(_) | Cancellation::Cancelled(_))
    ));
    let ended = wait_state(&s, &running.id, JobState::Cancelled).await;
    {
        let probe = probe.lock().unwrap();
        // At most the step under way when the flag was raised ran after it.
        assert!(
            probe.steps_run <= steps_when_asked + 1,
            "{} steps ran, {steps_when_asked} when it was asked to stop",
            probe.steps_run
        );
        assert_eq!(probe.stopped, [Stopped::Cancelled]);
        assert!(probe.order.is_empty(), "no output was made");
    }
    assert!(ended.output.is_none() && ended.error.is_none());
    assert!(ended.usage.is_none(), "not billed: {:?}", ended.usage);
    assert!(ended.finished_at_ms.is_some());
    assert!(!journaled(&s, &running.id));

    // Its slot went to the next job; only that one counts for the tenant now.
    wait_state(&s, &next.id, JobState::InProgress).await;
    assert_eq!(s.tenant_jobs("acme"), 1);
    // Asked again, a cancelled job answers as cancelled.
    assert!(matches!(
        s.cancel("acme", &running.id).await,
        Ok(Cancellation::Cancelled(_))
    ));
    s.cancel("acme", &next.id).await.unwrap();
    wait_state(&s, &next.id, JobState::Cancelled).await;
    assert_eq!(s.tenant_jobs("acme"), 0);
    s.stop().await;

    // The cancellation is on disk: after a restart the job is still cancelled, not rerun.
    let s = start(&config(dir.path(), ""), vec![stepped(LONG)]);
    assert_eq!(
        s.get("acme", &running.id).unwrap().state,
        JobState::Cancelled
    );
    assert!(s.is_idle());
    s.stop().await;
}

#[tokio::test]
async fn cancelling_one_job_of_a_running_batch_leaves_the_others_to_finish() {
    let dir = tempfile::tempdir().unwrap();
    let gate = Gate::closed();
    let model = stepped(3_000).gated(&gate);
    let probe = model.probe.clone();
    let s = start(&config(dir.path(), "max_batch = 2"), vec![model]);
    // The first job holds the slot at the gate until it is cancelled; the two behind it
    // form a batch.
    let first = submit_grouped(&s, "first", "g").await;
    wait_state(&s, &first.id, JobState::InProgress).await;
    let kept = submit_grouped(&s, "kept", "g").await;
    let dropped = submit_grouped(&s, "dropped", "g").await;
    let Ok(Cancellation::Requested(_)) = s.cancel("acme", &first.id).await else {
        panic!("a running job is asked to stop");
    };
    gate.open();
    wait_state(&s, &first.id, JobState::Cancelled).await;
    wait_state(&s, &dropped.id, JobState::InProgress).await;
    let Ok(Cancellation::Requested(_)) = s.cancel("acme", &dropped.id).await else {
        panic!("a running job is asked to stop");
    };

    let done = wait_state(&s, &kept.id, JobState::Completed).await;
    assert_eq!(done.output.unwrap()["text"], "KEPT");
    let ended = wait_state(&s, &dropped.id, JobState::Cancelled).await;
    assert!(ended.output.is_none() && ended.usage.is_none());
    assert!(journaled(&s, &kept.id));
    assert!(!journaled(&s, &dropped.id));
    {
        let probe = probe.lock().unwrap();
        // Only the lone first job was stopped; the batch ran to its end.
        assert_eq!(probe.stopped, [Stopped::Cancelled]);
        assert_eq!(probe.batches, [2]);
    }
    assert_eq!(s.tenant_jobs("acme"), 0);
    s.stop().await;
}

#[tokio::test]
async fn a_finished_job_cannot_be_cancelled() {
    let dir = tempfile::tempdir().unwrap();
    let model = TestModel::new("test/echo");
    let s = start(&config(dir.path(), ""), vec![model]);
    let job = submit(&s, "done", Priority::Normal).await;
    let done = wait_state(&s, &job.id, JobState::Completed).await;
    let Err(CancelError::NotCancellable(record)) = s.cancel("acme", &job.id).await else {
        panic!("a completed job is not cancellable");
    };
    assert_eq!(record.state, JobState::Completed);
    let after = s.get("acme", &job.id).unwrap();
    assert_eq!(after.state, JobState::Completed);
    assert_eq!(after.usage, done.usage);
    assert!(journaled(&s, &job.id));
    s.stop().await;
}

#[tokio::test]
async fn a_full_queue_refuses_and_creates_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let gate = Gate::closed();
    let model = TestModel::new("test/echo").gated(&gate);
    let s = start(&config(dir.path(), "queue_bound = 1"), vec![model]);
    let running = submit(&s, "a", Priority::Normal).await;
    wait_state(&s, &running.id, JobState::InProgress).await;
    let bad = s
        .submit(&acme(), "test/echo", Priority::Normal, json!({"txt": "x"}))
        .await;
    assert!(
        matches!(bad, Err(SubmitError::Input(InputError::Field { .. }))),
        "{bad:?}"
    );
    submit(&s, "b", Priority::Normal).await;
    let refused = s
        .submit(&acme(), "test/echo", Priority::High, json!({"text": "c"}))
        .await;
    assert!(
        matches!(refused, Err(SubmitError::Refused(Refusal::QueueFull))),
        "{refused:?}"
    );
    assert_eq!(s.report().models["test/echo"].queue_room, 0);
    let jobs = std::fs::read_dir(dir.path().join("jobs")).unwrap().count();
    assert_eq!(jobs, 2, "the refused job left nothing on disk");
    let unknown = s
        .submit(
            &acme(),
            "test/other",
            Priority::Normal,
            json!({"text": "x"}),
        )
        .await;
    assert!(matches!(
        unknown,
        Err(SubmitError::Refused(Refusal::ModelNotServed))
    ));
    gate.open();
    s.stop().await;
}

#[tokio::test]
async fn idle_models_are_unloaded_and_loaded_again_on_demand() {
    let dir = tempfile::tempdir().unwrap();
    let model = TestModel::new("test/echo");
    let probe = model.probe.clone();
    let s = start(&config(dir.path(), "keep_alive_s = 0"), vec![model]);
    assert!(
        !s.report().models["test/echo"].loaded,
        "nothing is loaded before the first job"
    );
    let a = submit(&s, "a", Priority::Normal).await;
    wait_state(&s, &a.id, JobState::Completed).await;
    wait_until("the idle model is unloaded", || {
        probe.lock().unwrap().unloads == 1
    })
    .await;
    wait_until("the report says unloaded", || {
        !s.report().models["test/echo"].loaded
    })
    .await;
    let b = submit(&s, "b", Priority::Normal).await;
    wait_state(&s, &b.id, JobState::Completed).await;
    assert_eq!(probe.lock().unwrap().loads, 2);
    s.stop().await;
}

#[tokio::test]
async fn reserved_slots_fill_before_on_demand_and_jobs_record_their_class() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path(), "");
    let mut second = cfg.models[0].clone();
    second.id = contract::ModelId::new("test/other").unwrap();
    cfg.models.push(second);
    let gate = Gate::closed();
    let prices = [("test/echo", "image", 0.5), ("test/other", "image", 0.125)];
    let s = start_with(
        &cfg,
        vec![
            TestModel::new("test/echo").gated(&gate),
            TestModel::new("test/other"),
        ],
        Some(&catalog(3, (1, 1), &prices)),
    );
    let held = submit(&s, "held", Priority::Normal).await;
    wait_state(&s, &held.id, JobState::InProgress).await;
    assert_eq!(s.report().free_reserved, 0);
    let other = s
        .submit(
            &acme(),
            "test/other",
            Priority::Normal,
            json!({"text": "x"}),
        )
        .await
        .unwrap();
    let other = wait_state(&s, &other.id, JobState::Completed).await;
    assert_eq!(other.usage.unwrap().capacity, Capacity::OnDemand);
    gate.open();
    let held = wait_state(&s, &held.id, JobState::Completed).await;
    let usage = held.usage.clone().unwrap();
    assert_eq!(usage.capacity, Capacity::Reserved);
    assert_eq!(usage.cost_nanos, contract::Nanos(500_000_000));
    assert_eq!((usage.price_per_unit, usage.catalog_revision), (0.5, 3));
    assert!(usage.gpu_nanos.0 > 0);
    assert_eq!(held.output.unwrap()["text"], "HELD");
    let (records, _) = s.ledger().page(&Default::default(), None, 10).unwrap();
    assert_eq!(records.len(), 2, "each completed job is in the journal");
    s.stop().await;
}

#[tokio::test]
async fn restart_resumes_queued_and_interrupted_jobs_and_keeps_results() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), "");
    let gate = Gate::closed();
    let s = start(&cfg, vec![TestModel::new("test/echo").gated(&gate)]);
    let done = submit(&s, "done", Priority::Normal).await;
    wait_state(&s, &done.id, JobState::InProgress).await;
    let queued = submit(&s, "queued", Priority::Normal).await;
    let interrupted = submit(&s, "interrupted", Priority::Low).await;
    // Stopping lets the running job finish; queued jobs stay on disk.
    let stopping = tokio::spawn({
        let s = s.clone();
        async move { s.stop().await }
    });
    gate.open();
    stopping.await.unwrap();
    drop(s);
    // Make one queued job look as if the agent crashed while running it.
    let path = dir
        .path()
        .join("jobs")
        .join(&interrupted.id)
        .join("record.json");
    let mut record: JobRecord = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    record.state = JobState::InProgress;
    record.attempts = 1;
    std::fs::write(&path, serde_json::to_vec(&record).unwrap()).unwrap();

    let model = TestModel::new("test/echo");
    let probe = model.probe.clone();
    let s = start(&cfg, vec![model]);
    let finished = s.get("acme", &done.id).unwrap();
    assert_eq!(
        finished.state,
        JobState::Completed,
        "results survive a restart"
    );
    assert_eq!(finished.output.unwrap()["text"], "DONE");
    wait_state(&s, &queued.id, JobState::Completed).await;
    let again = wait_state(&s, &interrupted.id, JobState::Completed).await;
    assert_eq!(again.attempts, 2);
    assert_eq!(probe.lock().unwrap().order, ["queued", "interrupted"]);
    s.stop().await;
}

#[tokio::test]
async fn expired_results_are_swept() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path(), "");
    cfg.result_retention = Duration::from_millis(1);
    let s = start(&cfg, vec![TestModel::new("test/echo")]);
    let job = submit(&s, "a", Priority::Normal).await;
    wait_state(&s, &job.id, JobState::Completed).await;
    testkit::eventually("the result expires and is swept", || async {
        s.sweep_expired().await == 1
    })
    .await;
    assert!(s.get("acme", &job.id).is_none());
    assert!(!dir.path().join("jobs").join(&job.id).exists());
    s.stop().await;
}
