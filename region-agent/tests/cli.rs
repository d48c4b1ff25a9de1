//! The `region-agent` binary: `--validate-config` on good and bad files (including the shipped
//! example), and SIGTERM on a serving agent: it drains, finishes its queued work and exits 0.
//! Serves the real ESRGAN-slim weights (see `support::models_dir`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};

use base64::Engine as _;
use image::{ImageFormat, RgbImage};
use reqwest::Method;
use serde_json::{Value, json};

use support::{EDGE_TOKEN, catalog_toml, eventually, models_dir, patience};

const BIN: &str = env!("CARGO_BIN_EXE_region-agent");

fn write_config(dir: &Path, extra_model: &str) -> std::path::PathBuf {
    let catalog = catalog_toml(&[("meridian/esrgan-x2", "megapixel", 0.001)]);
    std::fs::write(dir.join("catalog.toml"), catalog).unwrap();
    let text = format!(
        r#"
region = "eu-west"
listen = "127.0.0.1:0"
edge_token = "{EDGE_TOKEN}"
data_dir = "data"
drain_timeout_s = 60
catalog_file = "catalog.toml"

[[models]]
id = "meridian/esrgan-x2"
weights_dir = "{}"
{extra_model}
"#,
        models_dir().display()
    );
    let path = dir.join("agent.toml");
    std::fs::write(&path, text).unwrap();
    path
}

fn validate(path: &Path) -> std::process::Output {
    Command::new(BIN)
        .args(["serve", "--validate-config", "--config"])
        .arg(path)
        .output()
        .unwrap()
}

#[test]
fn validate_config_accepts_good_files_and_names_each_problem() {
    let dir = tempfile::tempdir().unwrap();
    let good = validate(&write_config(dir.path(), ""));
    assert!(
        good.status.success(),
        "{}",
        String::from_utf8_lossy(&good.stderr)
    );
    let summary = String::from_utf8_lossy(&good.stdout);
    assert!(
        summary.contains("region eu-west")
            && summary.contains("meridian/esrgan-x2")
            && summary.contains("(1 slot(s))"),
        "{summary}"
    );
    assert!(!summary.contains("warning"), "{summary}");

    // A catalog that bills the model in another unit: valid, but the model is not served.
    let per_image = catalog_toml(&[("meridian/esrgan-x2", "image", 0.001)]);
    std::fs::write(dir.path().join("catalog.toml"), per_image).unwrap();
    let warned = validate(&dir.path().join("agent.toml"));
    let summary = String::from_utf8_lossy(&warned.stdout);
    assert!(warned.status.success());
    assert!(
        summary.contains("warning: meridian/esrgan-x2 would not be served")
            && summary.contains("per image"),
        "{summary}"
    );
    // Pools and prices belong to the catalog.
    let pools = validate(&write_config(dir.path(), "price_per_unit = 0.002"));
    let stderr = String::from_utf8_lossy(&pools.stderr);
    assert!(!pools.status.success());
    assert!(
        stderr.contains("models[0].price_per_unit") && stderr.contains("come from the catalog"),
        "{stderr}"
    );

    let bad = validate(&write_config(dir.path(), "max_batch = 0\nqueue_size = 3"));
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("queue_size"));

    let bad = validate(&write_config(dir.path(), "max_batch = 0"));
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert!(!bad.status.success());
    assert!(
        stderr.contains("models[0].max_batch") && stderr.contains("fix:"),
        "{stderr}"
    );

    let unknown = std::fs::read_to_string(dir.path().join("agent.toml"))
        .unwrap()
        .replace("meridian/esrgan-x2", "meridian/esrgan-x9")
        .replace("max_batch = 0", "");
    std::fs::write(dir.path().join("agent.toml"), unknown).unwrap();
    let bad = validate(&dir.path().join("agent.toml"));
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert!(
        stderr.contains("models[0].id") && stderr.contains("meridian/esrgan-x4"),
        "{stderr}"
    );
}

#[test]
fn the_shipped_examples_parse_and_name_no_price_or_slot_count() {
    // Their weights live in ./models after scripts/fetch-models; only the syntax and the
    // rules are checked here, so a missing-weights problem is the only one allowed.
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
    let mut files = vec![examples.join("region-agent.toml")];
    for entry in std::fs::read_dir(examples.join("dev")).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if name.starts_with("agent-") {
            files.push(path);
        }
    }
    assert!(files.len() >= 4, "{files:?}");
    for example in files {
        let out = validate(&example);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success()
                || stderr
                    .lines()
                    .filter(|l| l.contains("  - "))
                    .all(|l| l.contains("weights_dir")),
            "{}: {stderr}",
            example.display()
        );
        // One truth per fact: no price, pool or slot count in an agent's configuration,
        // beyond an instance's share of a pool (`h100 = { reserved = 1, on_demand = 0 }`).
        let text = std::fs::read_to_string(&example).unwrap().to_lowercase();
        for line in text.lines().filter(|l| !is_pool_share(l)) {
            for word in ["price", "[[pools]]", "reserved", "on_demand_max"] {
                assert!(
                    !line.contains(word),
                    "{} names {word}: {line}",
                    example.display()
                );
            }
        }
    }
}

/// Whether `line` (perhaps commented out) is one pool's entry in `[pools]`:
/// `<pool id> = { reserved = N, on_demand = M }`.
fn is_pool_share(line: &str) -> bool {
    let line = line.trim_start_matches(['#', ' ']);
    let Some((pool, share)) = line.split_once('=') else {
        return false;
    };
    let fields = share
        .trim()
        .strip_prefix('{')
        .and_then(|s| s.trim_end().strip_suffix('}'));
    contract::ids::PoolId::new(pool.trim()).is_ok()
        && fields.is_some_and(|fields| {
            fields.split(',').all(|field| {
                let name = field.split_once('=').map_or("", |(name, _)| name.trim());
                matches!(name, "reserved" | "on_demand")
            })
        })
}

/// Kills the agent if the test fails before it exits by itself.
struct KillOnDrop(u32);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-KILL", &self.0.to_string()])
            .status();
    }
}

/// A log line without terminal colour codes.
fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

fn png_base64() -> String {
    let image = RgbImage::from_fn(96, 96, |x, y| {
        image::Rgb([(x * 2) as u8, (y * 2) as u8, 90])
    });
    let mut bytes = Vec::new();
    image
        .write_to(&mut std::io::Cursor::new(&mut bytes), ImageFormat::Png)
        .unwrap();
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

#[tokio::test]
async fn sigterm_drains_queued_work_and_exits_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "");
    let mut child = Command::new(BIN)
        .args(["serve", "--config"])
        .arg(&config)
        .env("MERIDIAN_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let guard = KillOnDrop(child.id());
    // The agent logs its address; read it (and keep the rest of the log).
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut log = Vec::new();
    let address = loop {
        let line = match rx.recv_timeout(patience()) {
            Ok(line) => strip_ansi(&line),
            Err(e) => panic!("no address logged ({e}); log:\n{}", log.join("\n")),
        };
        log.push(line.clone());
        if line.contains("region agent serving")
            && let Some(rest) = line.split("address=").nth(1)
        {
            break rest.split_whitespace().next().unwrap().to_owned();
        }
    };
    let http = reqwest::Client::new();
    let call = |method: Method, path: &str| {
        http.request(method, format!("http://{address}{path}"))
            .header("x-meridian-edge-token", EDGE_TOKEN)
            .header("x-meridian-tenant", "acme")
    };
    let mut ids = Vec::new();
    for _ in 0..3 {
        let response = call(Method::POST, "/v1/queue/meridian/esrgan-x2")
            .json(&json!({"input": {"image": png_base64()}}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 202);
        ids.push(
            response.json::<Value>().await.unwrap()["request_id"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
    }
    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let mut exited = None;
    eventually("the agent exits after SIGTERM", || {
        exited = child.try_wait().unwrap();
        std::future::ready(exited.is_some())
    })
    .await;
    let status = exited.unwrap();
    std::mem::forget(guard);
    log.extend(rx.try_iter().map(|l| strip_ansi(&l)));
    assert!(
        status.success(),
        "exit status {status}; log:\n{}",
        log.join("\n")
    );
    assert!(
        log.iter().any(|l| l.contains("draining")),
        "{}",
        log.join("\n")
    );
    // Every accepted job finished before the agent exited.
    for id in ids {
        let record =
            std::fs::read(dir.path().join("data/jobs").join(&id).join("record.json")).unwrap();
        let record: Value = serde_json::from_slice(&record).unwrap();
        assert_eq!(record["state"], "COMPLETED", "{record}");
    }
}
