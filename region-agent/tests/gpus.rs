//! The `region-agent` binary on a host without an NVIDIA driver (the management library it
//! opens is absent, so this holds on a GPU host too): with a CPU pool it starts, says there
//! is no driver and serves on the CPU; with a GPU pool it refuses to start, naming the
//! pool, what it found and the fix; with `[gpus] accept_mismatch` it starts anyway.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::Receiver;

use support::{EDGE_TOKEN, patience};
use testkit::catalog::{self, Catalog, Region};

const BIN: &str = env!("CARGO_BIN_EXE_region-agent");
const MODEL: &str = "meridian/tiny-sd";

/// A catalog placing the tiny-sd pipeline test model in eu-west with one pool.
fn catalog_with(pool: &str, gpu: &str, reserved: u32) -> String {
    Catalog::new()
        .region(
            Region::new("eu-west", "eu", (53.35, -6.26), "http://127.0.0.1:9102")
                .pool(pool, gpu)
                .reserved(reserved, 2.2),
        )
        .model(catalog::Model::new(
            MODEL,
            "text-to-image",
            "megapixel_step",
            0.001,
        ))
        .toml()
}

/// An agent configuration with `catalog` and `[gpus]` holding `gpus` (the management
/// library pointed at a file that does not exist).
fn write_config(dir: &Path, catalog: &str, gpus: &str) -> std::path::PathBuf {
    std::fs::write(dir.join("catalog.toml"), catalog).unwrap();
    let text = format!(
        r#"
region = "eu-west"
listen = "127.0.0.1:0"
edge_token = "{EDGE_TOKEN}"
data_dir = "data"
drain_timeout_s = 5
catalog_file = "catalog.toml"

[gpus]
nvml_library = "{}"
{gpus}

[[models]]
id = "{MODEL}"
pipeline_test = true
"#,
        dir.join("absent/libnvidia-ml.so.1").display()
    );
    let path = dir.join("agent.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// A started agent, its log lines as they come, killed when dropped.
struct Agent {
    child: Child,
    lines: Receiver<String>,
    log: Vec<String>,
}

impl Agent {
    fn start(config: &Path) -> Self {
        let mut child = Command::new(BIN)
            .args(["serve", "--config"])
            .arg(config)
            .env("MERIDIAN_LOG", "info")
            .env("MERIDIAN_LOG_FORMAT", "json")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        Self {
            child,
            lines,
            log: Vec::new(),
        }
    }

    /// Reads the log until a line contains `wanted` (true) or the agent exits (false).
    fn wait_for(&mut self, wanted: &str) -> bool {
        loop {
            match self.lines.recv_timeout(patience()) {
                Ok(line) => {
                    let found = line.contains(wanted);
                    self.log.push(line);
                    if found {
                        return true;
                    }
                }
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => return false,
                Err(e) => panic!("waiting for {wanted:?}: {e}; log:\n{}", self.text()),
            }
        }
    }

    fn text(&self) -> String {
        self.log.join("\n")
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn without_a_driver_a_cpu_pool_serves_on_the_cpu() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &catalog_with("cpu", "cpu", 1), "");
    let mut agent = Agent::start(&config);
    assert!(
        agent.wait_for("region agent serving"),
        "the agent exited; log:\n{}",
        agent.text()
    );
    let log = agent.text();
    assert!(
        log.contains("no NVIDIA driver") && log.contains("models run on the CPU"),
        "{log}"
    );
    assert!(log.contains("cpu reserved on the CPU"), "{log}");
    assert!(agent.child.try_wait().unwrap().is_none(), "still serving");
}

#[test]
fn without_a_driver_a_gpu_pool_refuses_to_start_naming_the_pool_and_the_fix() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &catalog_with("h100", "H100-80GB", 2), "");
    let mut agent = Agent::start(&config);
    assert!(
        !agent.wait_for("region agent serving"),
        "the agent started; log:\n{}",
        agent.text()
    );
    let status = agent.child.wait().unwrap();
    assert!(!status.success(), "{status}");
    let log = agent.text();
    for part in [
        "pool h100 has 2 slot(s) of H100-80GB",
        "need 2 H100-80GB GPU(s), and 0 of them were found",
        "this host has no usable GPU (no NVIDIA driver",
        "accept_mismatch = true",
    ] {
        assert!(log.contains(part), "{part:?} missing from:\n{log}");
    }
}

#[test]
fn an_accepted_mismatch_starts_with_the_gpu_slots_on_the_cpu() {
    let dir = tempfile::tempdir().unwrap();
    let catalog = catalog_with("h100", "H100-80GB", 2);
    let config = write_config(dir.path(), &catalog, "accept_mismatch = true");
    let mut agent = Agent::start(&config);
    assert!(
        agent.wait_for("region agent serving"),
        "the agent exited; log:\n{}",
        agent.text()
    );
    let log = agent.text();
    assert!(
        log.contains("pool h100 has 2 slot(s)") && log.contains("(accepted: [gpus]"),
        "{log}"
    );
    assert!(
        log.contains("h100 reserved on the CPU, h100 reserved on the CPU"),
        "{log}"
    );
}
