//! A test model for exercising the scheduler and the API without weights: it echoes its
//! `text` input back (upper-cased) as a field and as a `text/plain` file, one unit per job.
//!
//! Tests control it: a [`Gate`] holds every run until opened (to keep jobs queued or in
//! progress), `run_delay` makes each run take a while, `steps` makes each run a series of
//! `step_time` steps with a safe point before each (where it stops when the job times out
//! or is cancelled), `fail_on` makes inputs fail, and [`TestModelProbe`] counts loads,
//! records batch sizes and counts the steps run. It is not a real model; it is
//! never in [`super::builtin`].

use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use candle_core::Device;
use policy::PricingUnit;
use serde_json::Value;

use super::{
    InputError, JobInput, LoadedModel, Model, ModelError, ModelOutput, OutputFile, StopSignal,
    Stopped, string_field,
};

/// Holds runs until opened.
#[derive(Debug, Clone, Default)]
pub struct Gate(Arc<(Mutex<bool>, Condvar)>);

impl Gate {
    /// A closed gate.
    pub fn closed() -> Self {
        Self::default()
    }

    /// Opens it for good.
    pub fn open(&self) {
        let (open, changed) = &*self.0;
        *open.lock().unwrap_or_else(|e| e.into_inner()) = true;
        changed.notify_all();
    }

    fn wait(&self) {
        let (open, changed) = &*self.0;
        let mut guard = open.lock().unwrap_or_else(|e| e.into_inner());
        while !*guard {
            guard = changed.wait(guard).unwrap_or_else(|e| e.into_inner());
        }
    }
}

/// What the test model saw.
#[derive(Debug, Default)]
pub struct Probe {
    /// Times the model was loaded.
    pub loads: usize,
    /// Times it was unloaded (dropped).
    pub unloads: usize,
    /// Size of every batch run, in order.
    pub batches: Vec<usize>,
    /// The `text` inputs in the order they ran.
    pub order: Vec<String>,
    /// Steps run, over all runs.
    pub steps_run: usize,
    /// Why runs stopped early, in order.
    pub stopped: Vec<Stopped>,
}

/// Shared view of a test model's [`Probe`].
pub type TestModelProbe = Arc<Mutex<Probe>>;

/// The test model (see the module docs).
#[derive(Debug, Clone)]
pub struct TestModel {
    id: String,
    /// Runs wait for this gate when set.
    pub gate: Option<Gate>,
    /// Each run takes at least this long.
    pub run_delay: Duration,
    /// Steps of each run (0: none), each with a safe point before it.
    pub steps: usize,
    /// How long each step takes.
    pub step_time: Duration,
    /// Inputs whose text equals this fail.
    pub fail_on: Option<String>,
    /// What happened.
    pub probe: TestModelProbe,
}

impl TestModel {
    /// A test model called `id` that runs at once.
    pub fn new(id: &str) -> Self {
        Self {
            id: id.to_owned(),
            gate: None,
            run_delay: Duration::ZERO,
            steps: 0,
            step_time: Duration::ZERO,
            fail_on: None,
            probe: TestModelProbe::default(),
        }
    }

    /// The same model held at `gate`.
    pub fn gated(mut self, gate: &Gate) -> Self {
        self.gate = Some(gate.clone());
        self
    }
}

impl Model for TestModel {
    fn id(&self) -> &str {
        &self.id
    }

    fn unit(&self) -> PricingUnit {
        PricingUnit::Image
    }

    fn prepare(&self, input: &Value) -> Result<JobInput, InputError> {
        let text = string_field(input, "text")?;
        if text.is_empty() {
            return Err(InputError::Unprocessable("input.text is empty".to_owned()));
        }
        Ok(JobInput {
            units: 1.0,
            batch_key: input
                .get("group")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned(),
            payload: Box::new(text.to_owned()),
        })
    }

    fn load(&self, _device: &Device) -> Result<Box<dyn LoadedModel>, ModelError> {
        self.probe.lock().unwrap_or_else(|e| e.into_inner()).loads += 1;
        Ok(Box::new(LoadedTestModel(self.clone())))
    }
}

struct LoadedTestModel(TestModel);

impl Drop for LoadedTestModel {
    fn drop(&mut self) {
        self.0
            .probe
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .unloads += 1;
    }
}

impl LoadedModel for LoadedTestModel {
    fn run(
        &mut self,
        batch: Vec<JobInput>,
        stop: &StopSignal,
    ) -> Vec<Result<ModelOutput, ModelError>> {
        if let Some(gate) = &self.0.gate {
            gate.wait();
        }
        std::thread::sleep(self.0.run_delay);
        if let Err(stopped) = self.steps(stop) {
            return vec![Err(stopped.into()); batch.len()];
        }
        let texts: Vec<String> = batch
            .into_iter()
            .map(|job| {
                job.payload
                    .downcast::<String>()
                    .map(|b| *b)
                    .unwrap_or_default()
            })
            .collect();
        {
            let mut probe = self.0.probe.lock().unwrap_or_else(|e| e.into_inner());
            probe.batches.push(texts.len());
            probe.order.extend(texts.iter().cloned());
        }
        texts.iter().map(|text| self.echo(text)).collect()
    }
}

impl LoadedTestModel {
    /// The run's steps, each after a safe point.
    fn steps(&self, stop: &StopSignal) -> Result<(), Stopped> {
        for _ in 0..self.0.steps {
            if let Err(stopped) = stop.check() {
                self.0
                    .probe
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .stopped
                    .push(stopped);
                return Err(stopped);
            }
            std::thread::sleep(self.0.step_time);
            self.0
                .probe
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .steps_run += 1;
        }
        Ok(())
    }

    fn echo(&self, text: &str) -> Result<ModelOutput, ModelError> {
        if self.0.fail_on.as_deref() == Some(text) {
            return Err(ModelError(format!("test model told to fail on {text:?}")));
        }
        let upper = text.to_uppercase();
        let mut fields = serde_json::Map::new();
        fields.insert("text".to_owned(), Value::String(upper.clone()));
        Ok(ModelOutput {
            fields,
            files: vec![OutputFile {
                field: "file".to_owned(),
                name: "echo.txt".to_owned(),
                content_type: "text/plain".to_owned(),
                bytes: upper.into_bytes(),
            }],
        })
    }
}
