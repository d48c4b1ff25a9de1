//! Scheduler tests with the in-code test model ([`crate::serving::test_model`]).
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use candle_core::Device;
use serde_json::json;

use super::*;
use crate::config::{AgentConfig, Capacity};
use crate::serving::test_model::{Gate, TestModel};

const PATIENCE: Duration = Duration::from_secs(30);

fn config(dir: &std::path::Path, extra_model: &str, pools: &str) -> AgentConfig {
    AgentConfig::from_toml(&format!(
        r#"
region = "eu-west"
edge_token = "edge-token-0123456789"
data_dir = "{}"
{pools}
[[models]]
id = "test/echo"
weights_dir = "unused"
{extra_model}
"#,
        dir.display()
    ))
    .unwrap()
}

const ONE_SLOT: &str = "[[pools]]\nid = \"cpu\"\nreserved = 1\n";

fn start(config: &AgentConfig, models: Vec<TestModel>) -> Scheduler {
    let models = models
        .into_iter()
        .map(|m| Arc::new(m) as Arc<dyn Model>)
        .collect();
    Scheduler::start(config, models, Device::Cpu).unwrap()
}

async fn submit(s: &Scheduler, text: &str, priority: Priority) -> JobRecord {
    s.submit("acme", "test/echo", priority, json!({"text": text}))
        .await
        .unwrap()
}

async fn submit_grouped(s: &Scheduler, text: &str, group: &str) -> JobRecord {
    s.submit(
        "acme",
        "test/echo",
        Priority::Normal,
        json!({"text": text, "group": group}),
    )
    .await
    .unwrap()
}

/// Waits until job `id` reaches `state`.
async fn wait_state(s: &Scheduler, id: &str, state: JobState) -> JobRecord {
    let mut rx = s.watch("acme", id).unwrap();
    tokio::time::timeout(PATIENCE, rx.wait_for(|r| r.state == state))
        .await
        .unwrap_or_else(|_| panic!("job {id} never reached {state:?}"))
        .unwrap()
        .clone()
}

async fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    let start = Instant::now();
    while !condition() {
        assert!(start.elapsed() < PATIENCE, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn priorities_run_first_and_fifo_within_one() {
    let dir = tempfile::tempdir().unwrap();
    let gate = Gate::closed();
    let model = TestModel::new("test/echo").gated(&gate);
    let probe = model.probe.clone();
    let s = start(&config(dir.path(), "", ONE_SLOT), vec![model]);
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
    let s = start(&config(dir.path(), "max_batch = 3", ONE_SLOT), vec![model]);
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

#[tokio::test]
async fn queued_jobs_can_be_cancelled_running_ones_cannot() {
    let dir = tempfile::tempdir().unwrap();
    let gate = Gate::closed();
    let model = TestModel::new("test/echo").gated(&gate);
    let probe = model.probe.clone();
    let s = start(&config(dir.path(), "", ONE_SLOT), vec![model]);
    let running = submit(&s, "running", Priority::Normal).await;
    wait_state(&s, &running.id, JobState::InProgress).await;
    let queued = submit(&s, "queued", Priority::Normal).await;
    assert!(matches!(
        s.cancel("other", &queued.id).await,
        Err(CancelError::NotFound)
    ));
    let cancelled = s.cancel("acme", &queued.id).await.unwrap();
    assert_eq!(cancelled.state, JobState::Cancelled);
    assert!(matches!(
        s.cancel("acme", &running.id).await,
        Err(CancelError::NotCancellable(_))
    ));
    gate.open();
    wait_state(&s, &running.id, JobState::Completed).await;
    assert_eq!(
        s.get("acme", &queued.id).unwrap().state,
        JobState::Cancelled
    );
    assert_eq!(probe.lock().unwrap().order, ["running"]);
    s.stop().await;
}

#[tokio::test]
async fn a_full_queue_refuses_and_creates_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let gate = Gate::closed();
    let model = TestModel::new("test/echo").gated(&gate);
    let s = start(
        &config(dir.path(), "queue_bound = 1", ONE_SLOT),
        vec![model],
    );
    let running = submit(&s, "a", Priority::Normal).await;
    wait_state(&s, &running.id, JobState::InProgress).await;
    let bad = s
        .submit("acme", "test/echo", Priority::Normal, json!({"txt": "x"}))
        .await;
    assert!(
        matches!(bad, Err(SubmitError::Input(InputError::Field { .. }))),
        "{bad:?}"
    );
    submit(&s, "b", Priority::Normal).await;
    let refused = s
        .submit("acme", "test/echo", Priority::High, json!({"text": "c"}))
        .await;
    assert!(
        matches!(refused, Err(SubmitError::Refused(Refusal::QueueFull))),
        "{refused:?}"
    );
    assert_eq!(s.report().models["test/echo"].queue_room, 0);
    let jobs = std::fs::read_dir(dir.path().join("jobs")).unwrap().count();
    assert_eq!(jobs, 2, "the refused job left nothing on disk");
    let unknown = s
        .submit("acme", "test/other", Priority::Normal, json!({"text": "x"}))
        .await;
    assert!(matches!(
        unknown,
        Err(SubmitError::Refused(Refusal::ModelNotServed))
    ));
    gate.open();
    s.stop().await;
}

#[tokio::test]
async fn a_job_over_its_timeout_fails_with_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let mut model = TestModel::new("test/echo");
    model.run_delay = Duration::from_millis(1100);
    let s = start(&config(dir.path(), "timeout_s = 1", ONE_SLOT), vec![model]);
    let job = submit(&s, "slow", Priority::Normal).await;
    let record = wait_state(&s, &job.id, JobState::Failed).await;
    assert_eq!(record.error.unwrap().kind, "timeout");
    assert_eq!(record.cost, Some(0.0));
    s.stop().await;
}

#[tokio::test]
async fn idle_models_are_unloaded_and_loaded_again_on_demand() {
    let dir = tempfile::tempdir().unwrap();
    let model = TestModel::new("test/echo");
    let probe = model.probe.clone();
    let s = start(
        &config(dir.path(), "keep_alive_s = 0", ONE_SLOT),
        vec![model],
    );
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
    let pools = "[[pools]]\nid = \"p\"\nreserved = 1\non_demand_max = 1\non_demand_start_ms = 50\n";
    let mut cfg = config(dir.path(), "price_per_unit = 0.5", pools);
    let mut second = cfg.models[0].clone();
    second.id = "test/other".into();
    cfg.models.push(second);
    let gate = Gate::closed();
    let s = start(
        &cfg,
        vec![
            TestModel::new("test/echo").gated(&gate),
            TestModel::new("test/other"),
        ],
    );
    let held = submit(&s, "held", Priority::Normal).await;
    wait_state(&s, &held.id, JobState::InProgress).await;
    assert_eq!(s.report().free_reserved, 0);
    let other = s
        .submit("acme", "test/other", Priority::Normal, json!({"text": "x"}))
        .await
        .unwrap();
    let other = wait_state(&s, &other.id, JobState::Completed).await;
    assert_eq!(other.capacity, Some(Capacity::OnDemand));
    gate.open();
    let held = wait_state(&s, &held.id, JobState::Completed).await;
    assert_eq!(held.capacity, Some(Capacity::Reserved));
    assert_eq!(held.cost, Some(0.5));
    assert!(held.gpu_seconds.unwrap() > 0.0);
    assert_eq!(held.output.unwrap()["text"], "HELD");
    assert_eq!(
        s.usage().pending(10).len(),
        2,
        "each completed job left a usage record"
    );
    s.stop().await;
}

#[tokio::test]
async fn restart_resumes_queued_and_interrupted_jobs_and_keeps_results() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), "", ONE_SLOT);
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
    let mut cfg = config(dir.path(), "", ONE_SLOT);
    cfg.result_retention = Duration::from_millis(1);
    let s = start(&cfg, vec![TestModel::new("test/echo")]);
    let job = submit(&s, "a", Priority::Normal).await;
    wait_state(&s, &job.id, JobState::Completed).await;
    tokio::time::sleep(Duration::from_millis(5)).await;
    assert_eq!(s.sweep_expired().await, 1);
    assert!(s.get("acme", &job.id).is_none());
    assert!(!dir.path().join("jobs").join(&job.id).exists());
    s.stop().await;
}
