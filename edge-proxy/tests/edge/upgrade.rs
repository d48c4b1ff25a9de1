//! Upgrading the edge binary: a new process started with `--upgrade` takes the running
//! edge's listening sockets when it gets `SIGQUIT`; the old one finishes what it holds and
//! exits. Real processes, so the handoff of file descriptors is the real one.

use crate::support::{AGENT_EDGE, Answer, ESRGAN, World, client, eventually};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use testkit::tokens::EDGE;

/// A loopback port nothing listens on right now.
fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

/// Writes an edge configuration listening on `http` (and `admin`, if given) with an upgrade
/// socket beside it, reaching the control plane at `url`.
fn write_config(dir: &Path, http: u16, admin: Option<u16>, url: &str) -> std::path::PathBuf {
    let admin = admin.map_or(String::new(), |port| {
        format!("admin = \"127.0.0.1:{port}\"")
    });
    let path = dir.join("edge.toml");
    std::fs::write(
        &path,
        format!(
            r#"
            [listen]
            http = ["127.0.0.1:{http}"]
            {admin}
            upgrade_socket = "upgrade.sock"
            [control_plane]
            url = "{url}"
            edge_token = "{EDGE}"
            snapshot_cache = "edge-snapshot.json"
            poll_wait_secs = 5
            [geoip]
            location = {{ lat = 50.11, lon = 8.68 }}
            [agents]
            edge_token = "{AGENT_EDGE}"
            "#
        ),
    )
    .unwrap();
    path
}

/// An edge process, killed if the test ends without stopping it.
struct EdgeProcess(tokio::process::Child);

fn start_edge(config: &Path, log: &Path, upgrade: bool) -> EdgeProcess {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_edge-proxy"));
    command.arg("--config").arg(config);
    if upgrade {
        command.arg("--upgrade");
    }
    command
        .env_remove("MERIDIAN_EDGE_TOKEN")
        .env_remove("MERIDIAN_AGENT_TOKEN")
        .env("MERIDIAN_LOG", "info")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap())
        .kill_on_drop(true)
        .spawn()
        .map(EdgeProcess)
        .unwrap()
}

fn signal(edge: &EdgeProcess, name: &str) {
    let status = Command::new("kill")
        .arg(format!("-{name}"))
        .arg(edge.0.id().expect("a running edge").to_string())
        .status()
        .unwrap();
    assert!(status.success(), "kill -{name} failed");
}

/// Waits for `edge` to exit, failing after the test kit's patience.
async fn exit_of(edge: &mut EdgeProcess, log: &Path) -> std::process::ExitStatus {
    let status = tokio::time::timeout(testkit::patience(), edge.0.wait()).await;
    match status {
        Ok(status) => status.unwrap(),
        Err(_) => panic!(
            "the edge did not exit: {}",
            std::fs::read_to_string(log).unwrap_or_default()
        ),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgrade_hands_the_sockets_over_without_refusing_a_connection() {
    let world = World::start(&[]).await;
    let dir = tempfile::tempdir().unwrap();
    let (http, admin) = (free_port(), free_port());
    let config = write_config(dir.path(), http, Some(admin), world.url());
    let base = format!("http://127.0.0.1:{http}");
    let key = world.key("euro").to_owned();
    let (old_log, new_log) = (dir.path().join("old.log"), dir.path().join("new.log"));
    let mut old = start_edge(&config, &old_log, false);
    let models = format!("{base}/v1/models");
    let http_client = client();
    eventually("the first edge serves", || async {
        let sent = http_client
            .get(&models)
            .header("authorization", format!("Key {key}"))
            .send()
            .await;
        matches!(sent, Ok(r) if r.status() == 200)
    })
    .await;

    // A job in flight through the old edge across the handoff (from Frankfurt, `euro`
    // goes to eu-central).
    let held_agent = world.agent("eu-central");
    held_agent.hold();
    let submit = {
        let (base, key) = (base.clone(), key.clone());
        move || {
            let (base, key) = (base.clone(), key.clone());
            async move {
                let response = client()
                    .post(format!("{base}/v1/run/{ESRGAN}"))
                    .header("authorization", format!("Key {key}"))
                    .json(&serde_json::json!({"input": {"image": "aGVsbG8="}}))
                    .send()
                    .await
                    .unwrap();
                Answer::of(response).await
            }
        }
    };
    let held = tokio::spawn(submit());
    eventually("the held job reaches its agent", || async {
        held_agent.seen().iter().any(|s| s.method == "POST")
    })
    .await;

    // Clients keep connecting (a new connection per request) all through the upgrade.
    let stop = Arc::new(AtomicBool::new(false));
    let served = Arc::new(AtomicU64::new(0));
    let load = {
        let (stop, served, key) = (Arc::clone(&stop), Arc::clone(&served), key.clone());
        tokio::spawn(async move {
            let fresh = reqwest::Client::builder()
                .no_proxy()
                .pool_max_idle_per_host(0)
                .timeout(testkit::patience())
                .build()
                .unwrap();
            let mut failures = Vec::new();
            while !stop.load(Ordering::SeqCst) {
                match fresh
                    .get(&models)
                    .header("authorization", format!("Key {key}"))
                    .send()
                    .await
                {
                    Ok(r) if r.status() == 200 => {
                        served.fetch_add(1, Ordering::SeqCst);
                    }
                    Ok(r) => failures.push(format!("status {}", r.status())),
                    Err(e) => failures.push(format!("{e:?}")),
                }
            }
            failures
        })
    };
    let before = served.load(Ordering::SeqCst);
    eventually("load runs", || async {
        served.load(Ordering::SeqCst) > before + 20
    })
    .await;

    let mut new = start_edge(&config, &new_log, true);
    // The new edge is ready for the handoff once it listens on the upgrade socket.
    let socket = dir.path().join("upgrade.sock");
    eventually("the new edge waits on the upgrade socket", || async {
        socket.exists()
    })
    .await;
    signal(&old, "QUIT");
    let log = || std::fs::read_to_string(&new_log).unwrap_or_default();
    eventually("the new edge took the sockets", || async {
        log().contains("listening socket taken over")
    })
    .await;

    // The old edge stopped accepting but still finishes the job it holds.
    let handed = served.load(Ordering::SeqCst);
    eventually("requests are served after the handoff", || async {
        served.load(Ordering::SeqCst) > handed + 20
    })
    .await;
    held_agent.release();
    let answer = held.await.unwrap();
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_eq!(answer.header("x-meridian-region"), Some("eu-central"));
    let status = exit_of(&mut old, &old_log).await;
    assert!(
        status.success(),
        "{status}: {}",
        std::fs::read_to_string(&old_log).unwrap_or_default()
    );

    // Only the new edge is left, on the same ports.
    let after = served.load(Ordering::SeqCst);
    eventually("the new edge serves alone", || async {
        served.load(Ordering::SeqCst) > after + 20
    })
    .await;
    held_agent.release();
    let answer = submit().await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    let metrics = http_client
        .get(format!("http://127.0.0.1:{admin}/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(metrics.status(), 200);
    stop.store(true, Ordering::SeqCst);
    let failures = load.await.unwrap();
    assert!(
        failures.is_empty(),
        "{} of {} requests failed during the upgrade: {:?}",
        failures.len(),
        served.load(Ordering::SeqCst) + failures.len() as u64,
        &failures[..failures.len().min(5)]
    );
    signal(&new, "TERM");
    assert!(exit_of(&mut new, &new_log).await.success(), "{}", log());
}

#[test]
fn an_upgrade_with_no_running_edge_fails_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), free_port(), None, "http://127.0.0.1:9");
    let output = Command::new(env!("CARGO_BIN_EXE_edge-proxy"))
        .arg("--config")
        .arg(&config)
        .arg("--upgrade")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(text.contains("no listening sockets received"), "{text}");
    assert!(text.contains("SIGQUIT"), "{text}");
}
