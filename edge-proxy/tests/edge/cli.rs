//! The `edge-proxy` binary's `--validate-config`.

use std::process::Command;

fn validate(path: &std::path::Path) -> (bool, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_edge-proxy"))
        .arg("--config")
        .arg(path)
        .arg("--validate-config")
        .env_remove("MERIDIAN_EDGE_TOKEN")
        .env_remove("MERIDIAN_AGENT_TOKEN")
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text)
}

#[test]
fn the_example_configuration_is_valid() {
    let example = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/edge.toml");
    let (ok, text) = validate(&example);
    assert!(ok, "{text}");
    assert!(
        text.contains("valid") && text.contains("http://127.0.0.1:8080"),
        "{text}"
    );
}

#[test]
fn a_broken_configuration_names_each_field_and_fails() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("edge.toml");
    std::fs::write(
        &path,
        r#"
        [listen]
        http = ["nowhere"]
        [control_plane]
        url = "127.0.0.1:7070"
        edge_token = "edge-token-0123456789"
        [geoip]
        location = { lat = 51.5, lon = -0.12 }
        [agents]
        edge_token = "agent-token-0123456789"
        [breaker]
        failures = 0
        "#,
    )
    .unwrap();
    let (ok, text) = validate(&path);
    assert!(!ok, "{text}");
    for field in ["listen.http[0]", "control_plane.url", "breaker.failures"] {
        assert!(text.contains(field), "{field} missing from: {text}");
    }
}
