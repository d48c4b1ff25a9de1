//! Jobs stop at the models' safe points: a job past its model's timeout ends `FAILED` with
//! the `timeout` reason long before its work would be done, having run no step after the
//! deadline was seen; a running job cancelled over HTTP (`202`) ends `CANCELLED` after at
//! most one more step, unbilled, and its slot runs the next job; text-to-image stops between
//! denoising steps when cancelled or late.
//! Steps are counted through the models' own hooks (the test model's probe, the stop
//! signal's safe points), never by timing.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use candle_core::Device;
use region_agent::models::stop::{StopSignal, Stopped};
use region_agent::models::tiny_sd::{GenerateError, Request, TextToImage};
use region_agent::serving::Model;
use region_agent::serving::test_model::TestModel;
use reqwest::Method;
use serde_json::{Value, json};

use support::{Agent, config};

/// Steps of the long job, 1 ms each: at least ten seconds of work.
const STEPS: usize = 10_000;

#[tokio::test]
async fn a_job_past_its_timeout_stops_at_the_next_step_and_fails_with_the_timeout_reason() {
    let dir = tempfile::tempdir().unwrap();
    let mut model = TestModel::new("test/echo");
    model.steps = STEPS;
    model.step_time = Duration::from_millis(1);
    let probe = model.probe.clone();
    let models = "[[models]]\nid = \"test/echo\"\nweights_dir = \"unused\"\ntimeout_s = 1\n";
    let config = config(dir.path(), models, "", &[("test/echo", "image", 0.25)]);
    let agent = Agent::start(config, vec![Arc::new(model) as Arc<dyn Model>]).await;

    let id = agent
        .queue("test/echo", json!({"input": {"text": "long"}}))
        .await;
    let status = agent.wait_status(&id, "FAILED").await;
    assert_eq!(status["error"]["type"], "timeout", "{status}");
    let (ran, stopped) = {
        let probe = probe.lock().unwrap();
        (probe.steps_run, probe.stopped.clone())
    };
    // It stopped at a safe point because of the deadline, far from its last step.
    assert_eq!(stopped, vec![Stopped::TimedOut]);
    assert!(ran < STEPS / 2, "{ran} of {STEPS} steps ran");
    agent.stop().await;
}

#[tokio::test]
async fn a_running_job_cancelled_stops_at_the_next_step_unbilled_and_frees_its_slot() {
    let dir = tempfile::tempdir().unwrap();
    let mut long = TestModel::new("test/echo");
    long.steps = STEPS;
    long.step_time = Duration::from_millis(1);
    let probe = long.probe.clone();
    let quick = TestModel::new("test/quick");
    let models = "[[models]]\nid = \"test/echo\"\nweights_dir = \"unused\"\n\
                  [[models]]\nid = \"test/quick\"\nweights_dir = \"unused\"\n";
    let prices = [("test/echo", "image", 0.25), ("test/quick", "image", 0.25)];
    let config = config(dir.path(), models, "", &prices);
    let models: Vec<Arc<dyn Model>> = vec![Arc::new(long), Arc::new(quick)];
    let agent = Agent::start(config, models).await;

    let id = agent
        .queue("test/echo", json!({"input": {"text": "long"}}))
        .await;
    support::eventually("the job runs its steps", || async {
        probe.lock().unwrap().steps_run > 0
    })
    .await;
    // The only slot is busy: the next job waits for it.
    let next = agent
        .queue("test/quick", json!({"input": {"text": "next"}}))
        .await;
    assert_eq!(agent.status(&next).await["status"], "IN_QUEUE");

    let cancel = || {
        agent
            .call(Method::PUT, &format!("/v1/requests/{id}/cancel"))
            .send()
    };
    let asked = cancel().await.unwrap();
    assert_eq!(asked.status(), 202);
    let steps_when_asked = probe.lock().unwrap().steps_run;
    assert_eq!(
        asked.json::<Value>().await.unwrap()["status"],
        "IN_PROGRESS"
    );
    // Asking twice is harmless.
    let again = cancel().await.unwrap().status();
    assert!(again == 202 || again == 200, "{again}");

    agent.wait_status(&id, "CANCELLED").await;
    let (ran, stopped) = {
        let probe = probe.lock().unwrap();
        (probe.steps_run, probe.stopped.clone())
    };
    assert_eq!(stopped, vec![Stopped::Cancelled]);
    assert!(
        ran <= steps_when_asked + 1,
        "{ran} steps, {steps_when_asked} when asked"
    );

    // No output and no charge.
    let result = agent
        .call(Method::GET, &format!("/v1/requests/{id}"))
        .send()
        .await
        .unwrap();
    assert_eq!(result.status(), 200);
    let charged = result.headers()["x-meridian-cost"].to_str().unwrap();
    assert_eq!(charged.parse::<f64>().unwrap(), 0.0, "{charged}");
    let result: Value = result.json().await.unwrap();
    assert_eq!(result["status"], "CANCELLED", "{result}");
    assert!(
        result["output"].is_null() && result["cost"].is_null(),
        "{result}"
    );

    // The freed slot ran the next job; cancelling a finished job keeps its answers.
    agent.wait_status(&next, "COMPLETED").await;
    let done = agent
        .call(Method::PUT, &format!("/v1/requests/{next}/cancel"))
        .send()
        .await
        .unwrap();
    assert_eq!(done.status(), 409);
    assert_eq!(
        done.json::<Value>().await.unwrap()["error"]["type"],
        "not_cancellable"
    );
    let cancelled_again = cancel().await.unwrap();
    assert_eq!(cancelled_again.status(), 200);
    assert_eq!(
        cancelled_again.json::<Value>().await.unwrap()["status"],
        "CANCELLED"
    );
    agent.stop().await;
}

/// 50 denoising steps at the model's default size.
fn long_request() -> Request {
    Request::new("a lighthouse at dusk", 50, 7)
}

#[test]
fn text_to_image_stops_between_denoising_steps_when_cancelled() {
    let model = TextToImage::pipeline_test(42, &Device::Cpu).unwrap();
    // Cancelled at the third safe point (before the third of 50 steps): two steps ran.
    let stop = StopSignal::never().with_hook(Arc::new(|stop, n| {
        if n == 3 {
            stop.cancel();
        }
    }));
    let result = model.generate_batch_until(&[long_request()], &stop);
    assert!(
        matches!(result, Err(GenerateError::Stopped(Stopped::Cancelled))),
        "{result:?}"
    );
    assert_eq!(stop.safe_points(), 3);
}

#[test]
fn text_to_image_past_its_deadline_runs_no_step() {
    let model = TextToImage::pipeline_test(42, &Device::Cpu).unwrap();
    let late = StopSignal::until(Instant::now());
    let result = model.generate_batch_until(&[long_request()], &late);
    assert!(
        matches!(result, Err(GenerateError::Stopped(Stopped::TimedOut))),
        "{result:?}"
    );
    assert_eq!(late.safe_points(), 1);
    // Unstopped, the same request passes all 50 steps and the decoder's safe point.
    let free = StopSignal::never();
    model
        .generate_batch_until(&[long_request()], &free)
        .unwrap();
    assert_eq!(free.safe_points(), 51);
}
