//! How the scheduler sees a model: [`Model`] checks and decodes a job's input and loads the
//! weights; the loaded model ([`LoadedModel`]) runs a batch and encodes the outputs.
//!
//! Adding a model to the agent means: implement [`Model`] (and [`LoadedModel`]) in a module
//! here that adapts a plain model from [`crate::models`], then list its id in
//! [`builtin::KNOWN`] and build it in [`builtin::build`]. Everything else — the queue,
//! batching, slots, timeouts, persistence, pricing, usage and the HTTP API — is the same for
//! all. A model says which unit it measures work in ([`Model::unit`]); the catalog must bill
//! it in that unit.

pub mod audio;
pub mod builtin;
pub mod esrgan;
pub mod silero_vad;
#[cfg(any(test, feature = "test-model"))]
pub mod test_model;
pub mod tiny_sd;
pub mod video_upscale;
pub mod whisper;

use std::any::Any;

use candle_core::Device;
use policy::PricingUnit;
use serde_json::{Map, Value};

pub use crate::models::stop::{StopSignal, Stopped};

/// A job's input, checked and decoded: what the model thread runs.
pub struct JobInput {
    /// Units of work the job is billed for, in the model's unit ([`Model::unit`], e.g.
    /// output megapixels), known before it runs.
    pub units: f64,
    /// Jobs with equal keys may run in one batch (e.g. images of one size); ignored when the
    /// model's `max_batch` is 1.
    pub batch_key: String,
    /// The decoded input; the model's [`LoadedModel::run`] downcasts it to its own type.
    pub payload: Box<dyn Any + Send>,
}

impl std::fmt::Debug for JobInput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JobInput")
            .field("units", &self.units)
            .field("batch_key", &self.batch_key)
            .finish_non_exhaustive()
    }
}

/// Why an input was refused (never the agent's fault).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InputError {
    /// A required field is missing or has the wrong JSON type (HTTP 400).
    #[error("input.{field}: {message}")]
    Field {
        /// The field, e.g. `image`.
        field: String,
        /// What is wrong.
        message: String,
    },
    /// The field is present but its content cannot be used (HTTP 422): undecodable media,
    /// sizes over the model's limits.
    #[error("{0}")]
    Unprocessable(String),
}

/// A file a job produced, served under `/v1/requests/{id}/files/{name}`.
#[derive(Debug, Clone)]
pub struct OutputFile {
    /// The output field that refers to it, e.g. `image`.
    pub field: String,
    /// File name, e.g. `image.png`.
    pub name: String,
    /// Its media type, e.g. `image/png`.
    pub content_type: String,
    /// Its content.
    pub bytes: Vec<u8>,
}

/// What a job produced: plain JSON fields and files (each becomes a file object in the
/// output at its field).
#[derive(Debug, Clone, Default)]
pub struct ModelOutput {
    /// JSON fields of the output.
    pub fields: Map<String, Value>,
    /// Files of the output.
    pub files: Vec<OutputFile>,
}

/// Why a model could not be loaded or could not run (the agent's problem, not the user's).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ModelError(pub String);

impl From<Stopped> for ModelError {
    fn from(stopped: Stopped) -> Self {
        Self(stopped.to_string())
    }
}

/// A model the agent serves, as the scheduler drives it.
pub trait Model: Send + Sync + 'static {
    /// The model id, `owner/name`.
    fn id(&self) -> &str;

    /// The unit the model measures a job's work in ([`JobInput::units`]). The agent serves
    /// the model only while the catalog bills it in the same unit.
    fn unit(&self) -> PricingUnit;

    /// Checks a job's `input` JSON and decodes it. Called before the job is accepted (so
    /// bad input is refused with 400/422) and again when a queued job is resumed after a
    /// restart. Runs on a blocking thread, never on the async runtime.
    fn prepare(&self, input: &Value) -> Result<JobInput, InputError>;

    /// Loads the weights on `device` (the cold start).
    fn load(&self, device: &Device) -> Result<Box<dyn LoadedModel>, ModelError>;
}

/// A loaded model, owned by its model thread.
pub trait LoadedModel: Send {
    /// Runs a batch of inputs that share a batch key (at most the model's `max_batch`),
    /// returning one result per input, in order. The model checks `stop` at its safe
    /// points (between denoising steps, batches of frames, audio windows) and, once it is
    /// raised, returns at the next one with an error for every job it did not finish; the
    /// caller reads [`StopSignal::reason`] to tell a timeout or a cancellation from a
    /// failure.
    fn run(
        &mut self,
        batch: Vec<JobInput>,
        stop: &StopSignal,
    ) -> Vec<Result<ModelOutput, ModelError>>;
}

/// The input fields that carry media (every model's): each holds base64, a `data:` URL, or
/// an `http(s)` URL that the agent fetches before the job is accepted ([`crate::inputs`]),
/// so a model only ever sees base64 or a `data:` URL ([`decode_base64`]).
pub const MEDIA_FIELDS: &[&str] = &["image", "video", "audio"];

/// The string field `field` of an input object.
pub fn string_field<'a>(input: &'a Value, field: &str) -> Result<&'a str, InputError> {
    match input.get(field) {
        Some(Value::String(s)) => Ok(s),
        Some(_) => Err(InputError::Field {
            field: field.to_owned(),
            message: "must be a string".to_owned(),
        }),
        None => Err(InputError::Field {
            field: field.to_owned(),
            message: "is missing".to_owned(),
        }),
    }
}

/// Decodes base64 media, accepting a `data:<type>;base64,` URL too.
pub fn decode_base64(field: &str, text: &str) -> Result<Vec<u8>, InputError> {
    use base64::Engine as _;
    let data = match text.strip_prefix("data:") {
        Some(rest) => match rest.split_once(";base64,") {
            Some((_, data)) => data,
            None => {
                return Err(InputError::Unprocessable(format!(
                    "input.{field}: a data: URL must be base64 (data:<type>;base64,<data>)"
                )));
            }
        },
        None => text,
    };
    let data: String = data.chars().filter(|c| !c.is_ascii_whitespace()).collect();
    base64::engine::general_purpose::STANDARD
        .decode(data.as_bytes())
        .map_err(|e| InputError::Unprocessable(format!("input.{field} is not base64: {e}")))
}
