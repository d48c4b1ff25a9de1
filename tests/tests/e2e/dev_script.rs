//! `scripts/dev` keeps the rest of the local stack serving when one component dies: it says
//! which one died (name, pid, how it ended, its log), and `scripts/dev restart NAME` starts
//! it again inside the running supervisor; SIGTERM still stops everything.
//!
//! The whole local stack needs fixed ports, the bootstrap and a build, so this drives the
//! script's own supervisor (sourced from scripts/dev) over three small real processes in a
//! state directory of the test's, and its real `restart` and `status` commands.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use tests::eventually;

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/dev")
}

/// `scripts/dev ARGS…` against the stack whose state is in `state`.
fn dev(state: &Path, args: &[&str]) -> (bool, String) {
    let out = Command::new("bash")
        .arg(script())
        .args(args)
        .env("MERIDIAN_DEV_STATE", state)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

fn pid(state: &Path, name: &str) -> Option<u32> {
    std::fs::read_to_string(state.join(format!("run/{name}.pid")))
        .ok()
        .and_then(|s| s.trim().parse().ok())
}

fn alive(pid: u32) -> bool {
    Command::new("kill")
        .args(["-0", &pid.to_string()])
        .stderr(Stdio::null())
        .status()
        .unwrap()
        .success()
}

fn signal(pid: u32, name: &str) {
    let sent = Command::new("kill")
        .args([&format!("-{name}"), &pid.to_string()])
        .status()
        .unwrap();
    assert!(sent.success());
}

/// The supervisor, stopped with everything it started if the test fails half-way.
struct Supervisor(Option<std::process::Child>);

impl Drop for Supervisor {
    fn drop(&mut self) {
        if let Some(child) = &mut self.0 {
            signal(child.id(), "TERM");
            let _ = child.wait();
        }
    }
}

#[tokio::test]
async fn a_dead_component_is_reported_the_rest_keeps_running_and_one_line_restarts_it() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let output = dir.path().join("supervisor.out");
    // Three components, each a real process that logs a line and serves until stopped.
    let driver = r#"
        script=$1
        shift
        source "$script"
        trap 'stop; exit 130' INT TERM
        trap stop EXIT
        for name in control-plane agent-eu-west edge; do
          start "$name" bash -c "echo $name up; exec sleep 300"
        done
        supervise
    "#;
    let supervisor = Command::new("bash")
        .args(["-c", driver, "bash"])
        .arg(script())
        .env("MERIDIAN_DEV_STATE", &state)
        .stdout(std::fs::File::create(&output).unwrap())
        .stderr(std::fs::File::create(dir.path().join("supervisor.err")).unwrap())
        .spawn()
        .unwrap();
    let mut supervisor = Supervisor(Some(supervisor));
    let said = || {
        let mut text = std::fs::read_to_string(&output).unwrap_or_default();
        text += &std::fs::read_to_string(dir.path().join("supervisor.err")).unwrap_or_default();
        text
    };
    eventually("the supervisor runs its three components", || async {
        dev(&state, &["status"]).1.matches("running (pid").count() == 3
    })
    .await;
    let control_plane = pid(&state, "control-plane").unwrap();
    let edge = pid(&state, "edge").unwrap();
    let agent = pid(&state, "agent-eu-west").unwrap();

    // kill -9 of one agent.
    signal(agent, "KILL");
    eventually("the supervisor reports the dead agent", || async {
        said().contains("start it again with: scripts/dev restart agent-eu-west")
    })
    .await;
    let report = said();
    assert!(
        report.contains(&format!(
            "agent-eu-west (pid {agent}) killed by SIGKILL (status 137); its log: {}",
            state.join("logs/agent-eu-west.log").display()
        )),
        "{report}"
    );
    assert!(
        report.contains("agent-eu-west up"),
        "the log's tail: {report}"
    );
    // The others keep running: the same processes.
    assert!(alive(control_plane) && alive(edge), "{report}");
    assert_eq!(pid(&state, "control-plane"), Some(control_plane));
    let (_, status) = dev(&state, &["status"]);
    assert!(
        status.contains("agent-eu-west    stopped: killed by SIGKILL (status 137)"),
        "{status}"
    );

    // One line starts it again, inside the running supervisor.
    let (ok, said_restart) = dev(&state, &["restart", "agent-eu-west"]);
    assert!(ok, "{said_restart}");
    let again = pid(&state, "agent-eu-west").unwrap();
    assert_ne!(again, agent);
    assert!(alive(again), "{said_restart}");
    assert_eq!(
        dev(&state, &["status"]).1.matches("running (pid").count(),
        3
    );
    // A running component is not started twice; an unknown one is named.
    let (ok, twice) = dev(&state, &["restart", "agent-eu-west"]);
    assert!(!ok && twice.contains("is running"), "{twice}");
    let (ok, unknown) = dev(&state, &["restart", "agent-mars"]);
    assert!(
        !ok && unknown.contains("no component agent-mars"),
        "{unknown}"
    );

    // SIGTERM (as Ctrl-C) still stops everything.
    let mut supervisor = supervisor.0.take().unwrap();
    signal(supervisor.id(), "TERM");
    let stopped = tokio::task::spawn_blocking(move || supervisor.wait().unwrap());
    let stopped = tests::within("the supervisor to stop", stopped)
        .await
        .unwrap();
    assert!(!stopped.success());
    for pid in [control_plane, edge, again] {
        assert!(!alive(pid), "pid {pid} outlived the supervisor: {}", said());
    }
    let (ok, after) = dev(&state, &["restart", "agent-eu-west"]);
    assert!(
        !ok && after.contains("no scripts/dev is running"),
        "{after}"
    );
}
