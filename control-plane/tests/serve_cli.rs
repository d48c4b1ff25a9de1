//! `control-plane serve` as an operator runs it: the example configuration validates, a bad
//! one is refused with every field named, and a running server stops cleanly on SIGTERM.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Mutex;

use testkit::{eventually, within};

fn binary() -> Command {
    Command::new(env!("CARGO_BIN_EXE_control-plane"))
}

fn examples() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples")
}

#[test]
fn the_example_configuration_is_valid() {
    let out = binary()
        .args(["serve", "--validate-config", "--config"])
        .arg(examples().join("control-plane.toml"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("valid — listen on 127.0.0.1:7070"),
        "{stdout}"
    );
    assert!(stdout.contains("seed catalog of 3 regions"), "{stdout}");
}

#[test]
fn a_bad_configuration_names_each_field() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cp.toml");
    std::fs::write(
        &path,
        "admin_token = \"short\"\nedge_token = \"edge-token-0123456789\"\nagent_token = \"edge-token-0123456789\"\nseed_catalog = \"missing.toml\"\n",
    )
    .unwrap();
    let out = binary()
        .args(["serve", "--validate-config", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    for field in [
        "admin_token:",
        "agent_token: is the same as edge_token",
        "seed_catalog:",
    ] {
        assert!(stderr.contains(field), "{field} in {stderr}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_answers_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("cp.toml");
    let seed = examples().join("catalog.toml");
    std::fs::write(
        &config,
        format!(
            "admin_token = \"admin-token-0123456789\"\nedge_token = \"edge-token-0123456789\"\nagent_token = \"agent-token-0123456789\"\nseed_catalog = {:?}\n[store]\nbackend = \"embedded\"\ndata_dir = \"data\"\n",
            seed.display().to_string()
        ),
    )
    .unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_control-plane"))
        .args(["serve", "--config"])
        .arg(&config)
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let http = reqwest::Client::new();
    // Ready once it answers: the port is free until the process binds it.
    let regions = Mutex::new(serde_json::Value::Null);
    eventually("serve answers", || async {
        let answer = http
            .get(format!("http://127.0.0.1:{port}/admin/v1/regions"))
            .bearer_auth("admin-token-0123456789")
            .send()
            .await;
        match answer {
            Ok(r) => {
                *regions.lock().unwrap() = r.json().await.unwrap();
                true
            }
            Err(_) => false,
        }
    })
    .await;
    let regions = regions.into_inner().unwrap();
    assert_eq!(regions["items"].as_array().unwrap().len(), 3, "{regions}");

    let killed = Command::new("kill")
        .args(["-TERM", &child.id().unwrap().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let status = within("serve to stop on SIGTERM", child.wait())
        .await
        .unwrap();
    assert!(status.success(), "{status}");
    assert!(
        dir.path().join("data").is_dir(),
        "the data directory is relative to the config"
    );
}
