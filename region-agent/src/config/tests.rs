//! Configuration parsing and validation cases.
#![allow(clippy::unwrap_used)]

use super::*;

const GOOD: &str = r#"
region = "eu-west"
listen = "127.0.0.1:0"
edge_token = "edge-token-0123456789"
data_dir = "/tmp/agent"

[control_plane]
url = "http://127.0.0.1:7070"
agent_token = "agent-token-0123456789"

[[pools]]
id = "h100"
gpu = "H100"
reserved = 2
reserved_price_per_hour = 2.2
on_demand_max = 1
on_demand_price_per_hour = 3.9
on_demand_start_ms = 250

[[models]]
id = "meridian/esrgan-x2"
weights_dir = "models/esrgan-slim"
max_batch = 4
"#;

#[test]
fn a_complete_file_gets_its_values_and_defaults() {
    let config = AgentConfig::from_toml(GOOD).unwrap();
    assert_eq!(config.region, "eu-west");
    assert_eq!(config.result_retention, Duration::from_secs(86_400));
    assert_eq!(config.max_body_bytes, 32 << 20);
    assert_eq!(config.sync_timeout, Duration::from_secs(60));
    let cp = config.control_plane.as_ref().unwrap();
    assert_eq!(cp.heartbeat_interval, Duration::from_secs(1));
    let classes: Vec<_> = config.slots.iter().map(|s| s.capacity).collect();
    assert_eq!(
        classes,
        [Capacity::Reserved, Capacity::Reserved, Capacity::OnDemand]
    );
    assert_eq!(config.slots[2].start_delay, Duration::from_millis(250));
    assert_eq!(config.slots[0].start_delay, Duration::ZERO);
    let model = config.model("meridian/esrgan-x2").unwrap();
    assert_eq!((model.max_batch, model.queue_bound), (4, 64));
    assert_eq!(model.keep_alive, Duration::from_secs(300));
}

#[test]
fn the_control_plane_is_optional() {
    let text = GOOD.replace("[control_plane]", "[unused]");
    // An unknown table is refused …
    let err = AgentConfig::from_toml(&text).unwrap_err();
    assert!(matches!(err, ConfigError::Parse(_)), "{err}");
    // … and without the table the agent serves alone.
    let start = GOOD.find("[control_plane]").unwrap();
    let end = GOOD.find("[[pools]]").unwrap();
    let text = format!("{}{}", &GOOD[..start], &GOOD[end..]);
    assert!(
        AgentConfig::from_toml(&text)
            .unwrap()
            .control_plane
            .is_none()
    );
}

#[test]
fn unknown_fields_are_rejected_with_their_name() {
    let text = GOOD.replace("max_batch = 4", "max_batch = 4\nbatch_size = 3");
    let err = AgentConfig::from_toml(&text).unwrap_err().to_string();
    assert!(err.contains("batch_size"), "{err}");
}

#[test]
fn every_problem_is_named_with_its_fix() {
    let text = GOOD
        .replace("edge-token-0123456789", "short")
        .replace("reserved = 2", "reserved = 0")
        .replace("on_demand_max = 1", "on_demand_max = 0")
        .replace("max_batch = 4", "max_batch = 0\nprice_per_unit = -1.0")
        .replace("\"eu-west\"", "\"EU West\"");
    let ConfigError::Invalid(problems) = AgentConfig::from_toml(&text).unwrap_err() else {
        panic!("expected validation problems");
    };
    let fields: Vec<_> = problems.iter().map(|p| p.field.as_str()).collect();
    assert_eq!(
        fields,
        [
            "region",
            "edge_token",
            "pools",
            "models[0].max_batch",
            "models[0].price_per_unit"
        ]
    );
    assert!(problems.iter().all(|p| !p.fix.is_empty()));
}

#[test]
fn duplicate_models_and_bad_ids_are_refused() {
    let text = format!(
        "{GOOD}\n[[models]]\nid = \"meridian/esrgan-x2\"\nweights_dir = \"x\"\n\n[[models]]\nid = \"esrgan\"\nweights_dir = \"x\"\n"
    );
    let ConfigError::Invalid(problems) = AgentConfig::from_toml(&text).unwrap_err() else {
        panic!("expected validation problems");
    };
    let fields: Vec<_> = problems.iter().map(|p| p.field.as_str()).collect();
    assert_eq!(fields, ["models[1].id", "models[2].id"]);
}

#[test]
fn weights_come_from_a_directory_or_the_pipeline_test_model() {
    let config = AgentConfig::from_toml(GOOD).unwrap();
    assert_eq!(
        config.models[0].weights,
        ModelWeights::Dir(PathBuf::from("models/esrgan-slim"))
    );
    let text = GOOD.replace(
        "weights_dir = \"models/esrgan-slim\"",
        "pipeline_test = true",
    );
    let config = AgentConfig::from_toml(&text).unwrap();
    assert_eq!(config.models[0].weights, ModelWeights::PipelineTest);
}

#[test]
fn weights_must_be_named_once() {
    let neither = GOOD.replace("weights_dir = \"models/esrgan-slim\"\n", "");
    let both = GOOD.replace(
        "weights_dir = \"models/esrgan-slim\"",
        "weights_dir = \"models/esrgan-slim\"\npipeline_test = true",
    );
    let empty = GOOD.replace("\"models/esrgan-slim\"", "\"\"");
    for (text, field) in [
        (neither, "models[0].weights_dir"),
        (both, "models[0].pipeline_test"),
        (empty, "models[0].weights_dir"),
    ] {
        let ConfigError::Invalid(problems) = AgentConfig::from_toml(&text).unwrap_err() else {
            panic!("expected validation problems for {field}");
        };
        let fields: Vec<_> = problems.iter().map(|p| p.field.as_str()).collect();
        assert_eq!(fields, [field]);
        assert!(!problems[0].fix.is_empty());
    }
}
