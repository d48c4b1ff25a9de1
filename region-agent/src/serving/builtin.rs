//! The models this agent binary knows, by id, built from their configuration.

use std::sync::Arc;

use super::Model;
use super::esrgan::EsrganModel;
use crate::config::{AgentConfig, ConfigError, ConfigProblem};

/// Model ids the agent can serve.
pub const KNOWN: &[&str] = &["meridian/esrgan-x2", "meridian/esrgan-x4"];

/// Builds every configured model, checking that each is known and its weights exist.
pub fn build(config: &AgentConfig) -> Result<Vec<Arc<dyn Model>>, ConfigError> {
    let mut problems = Vec::new();
    let mut models: Vec<Arc<dyn Model>> = Vec::new();
    for (i, m) in config.models.iter().enumerate() {
        let esrgan = match m.id.as_str() {
            "meridian/esrgan-x2" => EsrganModel::new(&m.id, 2, &m.weights_dir),
            "meridian/esrgan-x4" => EsrganModel::new(&m.id, 4, &m.weights_dir),
            other => {
                problems.push(ConfigProblem {
                    field: format!("models[{i}].id"),
                    problem: format!("this agent cannot serve {other:?}"),
                    fix: format!("use one of {}", KNOWN.join(", ")),
                });
                continue;
            }
        };
        if !esrgan.weights().is_file() {
            problems.push(ConfigProblem {
                field: format!("models[{i}].weights_dir"),
                problem: format!("{} does not exist", esrgan.weights().display()),
                fix: "run scripts/fetch-models and point weights_dir at its esrgan-slim directory"
                    .to_owned(),
            });
        }
        models.push(Arc::new(esrgan));
    }
    if problems.is_empty() {
        Ok(models)
    } else {
        Err(ConfigError::Invalid(problems))
    }
}
