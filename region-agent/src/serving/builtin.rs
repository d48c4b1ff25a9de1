//! The models this agent binary knows, by id, built from their configuration.

use std::path::Path;
use std::sync::Arc;

use super::Model;
use super::esrgan::EsrganModel;
use super::silero_vad::SileroVadModel;
use super::tiny_sd::{TinySdModel, TinySdWeights};
use super::video_upscale::VideoUpscaleModel;
use super::whisper::WhisperModel;
use contract::ConfigProblems;

use crate::config::{AgentConfig, ConfigError, ModelConfig, ModelWeights};

/// Model ids the agent can serve.
pub const KNOWN: &[&str] = &[
    "meridian/esrgan-x2",
    "meridian/esrgan-x4",
    "meridian/video-upscale-x2",
    "meridian/silero-vad",
    "meridian/tiny-sd",
    "meridian/whisper-tiny-en",
];

/// Models that have a pipeline test model (`pipeline_test = true`).
const WITH_PIPELINE_TEST: &[&str] = &["meridian/tiny-sd"];

/// What is wrong with one model's configuration: the field (under `models[i].`), the
/// problem and its fix.
type Problem = (&'static str, String, String);

/// Builds every configured model, checking that each is known and its weights exist.
pub fn build(config: &AgentConfig) -> Result<Vec<Arc<dyn Model>>, ConfigError> {
    let mut problems = ConfigProblems::new();
    let mut models: Vec<Arc<dyn Model>> = Vec::new();
    for (i, m) in config.models.iter().enumerate() {
        match model(m) {
            Ok(model) => models.push(model),
            Err((field, problem, fix)) => {
                problems.add(format!("models[{i}].{field}"), problem, fix)
            }
        }
    }
    problems.into_result(models).map_err(ConfigError::Invalid)
}

fn model(m: &ModelConfig) -> Result<Arc<dyn Model>, Problem> {
    if !KNOWN.contains(&m.id.as_str()) {
        return Err((
            "id",
            format!("this agent cannot serve {:?}", m.id),
            format!("use one of {}", KNOWN.join(", ")),
        ));
    }
    let esrgan = ["meridian/esrgan-x2", "meridian/esrgan-x4"];
    if m.max_output_pixels.is_some() && !esrgan.contains(&m.id.as_str()) {
        return Err((
            "max_output_pixels",
            format!("{} does not take max_output_pixels", m.id),
            format!("remove it (only {} take it)", esrgan.join(", ")),
        ));
    }
    let audio = ["meridian/silero-vad", "meridian/whisper-tiny-en"];
    if m.max_audio_seconds.is_some() && !audio.contains(&m.id.as_str()) {
        return Err((
            "max_audio_seconds",
            format!("{} does not take max_audio_seconds", m.id),
            format!("remove it (only {} take it)", audio.join(", ")),
        ));
    }
    let dir = match &m.weights {
        ModelWeights::Dir(dir) => dir.as_path(),
        ModelWeights::PipelineTest if WITH_PIPELINE_TEST.contains(&m.id.as_str()) => {
            return Ok(Arc::new(tiny_sd(
                m.id.as_str(),
                TinySdWeights::PipelineTest,
            )?));
        }
        ModelWeights::PipelineTest => {
            return Err((
                "pipeline_test",
                format!("{} has no pipeline test model", m.id),
                format!(
                    "remove pipeline_test and set weights_dir (only {} has one)",
                    WITH_PIPELINE_TEST.join(", ")
                ),
            ));
        }
    };
    let fetched = |name: &str| {
        format!("run scripts/fetch-models and point weights_dir at its {name} directory")
    };
    Ok(match m.id.as_str() {
        id if esrgan.contains(&id) => {
            let scale = if m.id.as_str().ends_with("x2") { 2 } else { 4 };
            let mut model = EsrganModel::new(m.id.as_str(), scale, dir);
            if let Some(max) = m.max_output_pixels {
                model = model.with_max_output_pixels(max);
            }
            weights_file(model.weights(), fetched("esrgan-slim"))?;
            Arc::new(model)
        }
        "meridian/video-upscale-x2" => {
            let model = VideoUpscaleModel::new(m.id.as_str(), dir);
            weights_file(model.weights(), fetched("esrgan-slim"))?;
            Arc::new(model)
        }
        "meridian/silero-vad" => {
            let mut model = SileroVadModel::new(m.id.as_str(), dir);
            if let Some(max) = m.max_audio_seconds {
                model = model.with_max_seconds(max);
            }
            weights_file(model.weights(), fetched("silero-vad"))?;
            Arc::new(model)
        }
        "meridian/whisper-tiny-en" => {
            let mut model = WhisperModel::new(m.id.as_str(), dir);
            if let Some(max) = m.max_audio_seconds {
                model = model.with_max_seconds(max);
            }
            weights_file(&model.weights(), fetched("whisper-tiny-en"))?;
            Arc::new(model)
        }
        _ => Arc::new(tiny_sd(
            m.id.as_str(),
            TinySdWeights::Dir(dir.to_path_buf()),
        )?),
    })
}

fn weights_file(path: &Path, fix: String) -> Result<(), Problem> {
    if path.is_file() {
        Ok(())
    } else {
        Err((
            "weights_dir",
            format!("{} does not exist", path.display()),
            fix,
        ))
    }
}

fn tiny_sd(id: &str, weights: TinySdWeights) -> Result<TinySdModel, Problem> {
    TinySdModel::new(id, weights).map_err(|e| {
        (
            "weights_dir",
            format!("not a usable diffusers model directory: {e}"),
            "point weights_dir at a diffusers-layout Stable Diffusion 1.x/2.x or SD-Turbo \
             directory (unet/, vae/, text_encoder/, tokenizer/, scheduler/), or set \
             pipeline_test = true (and no weights_dir) to serve the pipeline test model with \
             random weights"
                .to_owned(),
        )
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn problems(models: &str) -> Vec<contract::ConfigProblem> {
        let config = AgentConfig::from_toml(&format!(
            "region = \"eu-west\"\nedge_token = \"edge-token-0123456789\"\n\
             data_dir = \"/tmp/agent\"\ncatalog_file = \"catalog.toml\"\n{models}"
        ))
        .unwrap();
        match build(&config) {
            Ok(_) => Vec::new(),
            Err(ConfigError::Invalid(problems)) => problems.into_vec(),
            Err(e) => panic!("{e}"),
        }
    }

    #[test]
    fn the_pipeline_test_model_needs_no_weights() {
        let models = "[[models]]\nid = \"meridian/tiny-sd\"\npipeline_test = true\n";
        assert_eq!(problems(models), []);
    }

    #[test]
    fn missing_weights_are_named_with_their_field_and_fix() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing");
        let mut models = String::new();
        for id in KNOWN {
            models.push_str(&format!(
                "[[models]]\nid = \"{id}\"\nweights_dir = \"{}\"\n",
                missing.display()
            ));
        }
        let problems = problems(&models);
        let fields: Vec<_> = problems.iter().map(|p| p.place.as_str()).collect();
        assert_eq!(
            fields,
            [
                "models[0].weights_dir",
                "models[1].weights_dir",
                "models[2].weights_dir",
                "models[3].weights_dir",
                "models[4].weights_dir",
                "models[5].weights_dir",
            ]
        );
        for (p, expected) in problems.iter().zip([
            "x2.safetensors",
            "x4.safetensors",
            "x2.safetensors",
            "silero_vad_16k.safetensors",
            "missing",
            "model.safetensors",
        ]) {
            assert!(p.problem.contains(expected), "{p}");
        }
        assert!(problems[3].fix.contains("silero-vad"), "{}", problems[3]);
        assert!(problems[4].fix.contains("pipeline_test"), "{}", problems[4]);
        assert!(
            problems[5].fix.contains("whisper-tiny-en"),
            "{}",
            problems[5]
        );
    }

    #[test]
    fn unknown_models_and_pipeline_tests_of_models_without_one_are_refused() {
        let models = "[[models]]\nid = \"meridian/esrgan-x4\"\npipeline_test = true\n\
                      [[models]]\nid = \"meridian/whisper\"\nweights_dir = \"x\"\n";
        let problems = problems(models);
        let fields: Vec<_> = problems.iter().map(|p| p.place.as_str()).collect();
        assert_eq!(fields, ["models[0].pipeline_test", "models[1].id"]);
        assert!(
            problems[1].fix.contains("meridian/tiny-sd"),
            "{}",
            problems[1]
        );
    }

    #[test]
    fn audio_limits_are_taken_only_by_audio_models() {
        let dir = tempfile::tempdir().unwrap();
        let models = format!(
            "[[models]]\nid = \"meridian/esrgan-x2\"\nweights_dir = \"{0}\"\nmax_audio_seconds = 60\n\
             [[models]]\nid = \"meridian/tiny-sd\"\npipeline_test = true\nmax_audio_seconds = 60\n",
            dir.path().display()
        );
        let problems = problems(&models);
        let fields: Vec<_> = problems.iter().map(|p| p.place.as_str()).collect();
        assert_eq!(
            fields,
            ["models[0].max_audio_seconds", "models[1].max_audio_seconds"]
        );
        assert!(
            problems[0].fix.contains("meridian/whisper-tiny-en"),
            "{}",
            problems[0]
        );
    }

    #[test]
    fn a_diffusers_directory_without_its_configuration_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let models = format!(
            "[[models]]\nid = \"meridian/tiny-sd\"\nweights_dir = \"{}\"\n",
            dir.path().display()
        );
        let problems = problems(&models);
        assert_eq!(problems.len(), 1);
        assert!(problems[0].problem.contains("unet"), "{}", problems[0]);
    }
}
