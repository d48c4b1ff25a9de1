//! One bounded run of a media program, and the private scratch directory its files live in.
//!
//! The program runs under `prlimit --as=<bytes>` (the cap is set before it starts) in a
//! process group of its own, with standard input closed. Its standard output is read by a
//! thread that stops at the cap; its error output is kept up to a few KiB (the rest is read
//! and dropped so the program never blocks on it). When the timeout expires or the cap is
//! reached, the whole process group is killed and reaped.

use std::io::Read;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use rustix::process::{Pid, Signal};

/// The program that sets the address-space cap before starting the media program
/// (util-linux, on every Debian system).
pub const PRLIMIT: &str = "prlimit";

/// The most bytes of a run's error output kept for its error message.
const MAX_STDERR: u64 = 4 << 10;

/// The bounds of one run.
#[derive(Debug, Clone, Copy)]
pub struct Bounds {
    /// Wall-clock limit.
    pub timeout: Duration,
    /// Most bytes read from standard output.
    pub max_stdout: usize,
    /// Address-space cap, in bytes.
    pub memory_bytes: u64,
}

/// Why a run gave no output.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The program could not be started.
    #[error("start: {0}")]
    Spawn(#[source] std::io::Error),
    /// The timeout expired; the process group was killed.
    #[error("timed out")]
    TimedOut,
    /// Standard output passed the cap; the process group was killed.
    #[error("output over the cap")]
    OutputTooLarge,
    /// The program exited with an error (its last error output).
    #[error("{0}")]
    Failed(String),
}

/// Runs `program args…` within `bounds`, returning its standard output.
pub fn run_bounded(program: &Path, args: &[String], bounds: &Bounds) -> Result<Vec<u8>, RunError> {
    let mut child = Command::new(PRLIMIT)
        .arg(format!("--as={}", bounds.memory_bytes))
        .arg("--")
        .arg(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .map_err(RunError::Spawn)?;
    let group = Pid::from_child(&child);
    let stderr = child.stderr.take().map(|pipe| {
        std::thread::spawn(move || {
            let mut kept = Vec::new();
            let mut pipe = pipe;
            let _ = (&mut pipe).take(MAX_STDERR).read_to_end(&mut kept);
            let _ = std::io::copy(&mut pipe, &mut std::io::sink());
            String::from_utf8_lossy(&kept).into_owned()
        })
    });
    let (done, finished) = mpsc::channel();
    let max_stdout = bounds.max_stdout;
    std::thread::spawn(move || {
        let _ = done.send(read_and_reap(&mut child, group, max_stdout));
    });
    let outcome = match finished.recv_timeout(bounds.timeout) {
        Ok(outcome) => outcome,
        Err(_) => {
            kill_group(group);
            // The reader ends once the group is dead and the pipe closed.
            let _ = finished.recv();
            Err(RunError::TimedOut)
        }
    };
    let message = stderr.and_then(|t| t.join().ok()).unwrap_or_default();
    match outcome {
        Err(RunError::Failed(status)) => Err(RunError::Failed(last_lines(&message, &status))),
        other => other,
    }
}

/// Reads standard output up to the cap (killing the group past it), then reaps the child.
fn read_and_reap(child: &mut Child, group: Pid, max_stdout: usize) -> Result<Vec<u8>, RunError> {
    let mut output = Vec::new();
    let read = match child.stdout.take() {
        Some(pipe) => pipe
            .take(max_stdout as u64 + 1)
            .read_to_end(&mut output)
            .map(|_| ()),
        None => Ok(()),
    };
    let over = output.len() > max_stdout;
    if over {
        kill_group(group);
    }
    let status = child.wait();
    if over {
        return Err(RunError::OutputTooLarge);
    }
    let status = status.map_err(RunError::Spawn)?;
    read.map_err(RunError::Spawn)?;
    if !status.success() {
        return Err(RunError::Failed(status.to_string()));
    }
    Ok(output)
}

fn kill_group(group: Pid) {
    // Fails only when the group is gone already.
    let _ = rustix::process::kill_process_group(group, Signal::KILL);
}

/// The last few lines of `stderr`, or the exit status when it said nothing.
fn last_lines(stderr: &str, status: &str) -> String {
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    let tail = lines[lines.len().saturating_sub(3)..].join("; ");
    if tail.is_empty() {
        status.to_owned()
    } else {
        tail
    }
}

/// A directory only this process can read, removed with everything in it on drop.
#[derive(Debug)]
pub struct ScratchDir {
    path: PathBuf,
}

impl ScratchDir {
    /// Creates a fresh directory (mode 0700) under the system's temporary directory.
    pub fn new() -> std::io::Result<Self> {
        use std::os::unix::fs::DirBuilderExt as _;
        let path = std::env::temp_dir().join(format!(
            "meridian-media-{}-{:016x}",
            std::process::id(),
            rand::random::<u64>()
        ));
        std::fs::DirBuilder::new().mode(0o700).create(&path)?;
        Ok(Self { path })
    }

    /// Writes `parts`, one after another, to a new file `name` (mode 0600) in the directory,
    /// returning its path.
    pub fn write(&self, name: &str, parts: &[&[u8]]) -> std::io::Result<PathBuf> {
        use std::io::Write as _;
        use std::os::unix::fs::OpenOptionsExt as _;
        let path = self.path.join(name);
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)?;
        for part in parts {
            file.write_all(part)?;
        }
        Ok(path)
    }

    /// The path of `name` in the directory.
    pub fn join(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bounds(timeout_ms: u64, max_stdout: usize) -> Bounds {
        Bounds {
            timeout: Duration::from_millis(timeout_ms),
            max_stdout,
            memory_bytes: 1 << 30,
        }
    }

    fn sh(script: &str, bounds: &Bounds) -> Result<Vec<u8>, RunError> {
        run_bounded(
            Path::new("sh"),
            &["-c".to_owned(), script.to_owned()],
            bounds,
        )
    }

    /// Whether `pid` still runs (a zombie waiting for init counts as gone).
    fn alive(pid: &str) -> bool {
        std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
            !stat
                .rsplit(')')
                .next()
                .unwrap_or("")
                .trim_start()
                .starts_with('Z')
        })
    }

    #[test]
    fn output_comes_back_and_failures_carry_the_error_output() {
        assert_eq!(sh("printf hello", &bounds(10_000, 5)).unwrap(), b"hello");
        let err = sh(
            "echo first >&2; echo broken input >&2; exit 3",
            &bounds(10_000, 5),
        )
        .unwrap_err();
        assert_eq!(err.to_string(), "first; broken input");
    }

    #[test]
    fn output_over_the_cap_stops_the_run() {
        let err = sh("yes", &bounds(60_000, 1 << 16)).unwrap_err();
        assert!(matches!(err, RunError::OutputTooLarge), "{err}");
    }

    #[test]
    fn a_run_past_its_timeout_is_killed_with_its_whole_process_group() {
        let dir = ScratchDir::new().unwrap();
        let pids = dir.join("pids");
        // The shell starts a sleeping grandchild and writes both ids before waiting.
        let script = format!(
            "sleep 600 & echo $$ $! > {p}.tmp; mv {p}.tmp {p}; wait",
            p = pids.display()
        );
        let err = sh(&script, &bounds(3_000, 1024)).unwrap_err();
        assert!(matches!(err, RunError::TimedOut), "{err}");
        let pids = std::fs::read_to_string(&pids).unwrap();
        for pid in pids.split_whitespace() {
            // SIGKILL is delivered asynchronously: give a dying process a moment to exit.
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            while alive(pid) && std::time::Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            assert!(!alive(pid), "process {pid} outlived the timeout: {stat}");
        }
    }

    #[test]
    fn the_memory_cap_applies_to_the_program() {
        let err = sh(
            "exec python3 -c 'x = bytearray(512 << 20)'",
            &Bounds {
                memory_bytes: 256 << 20,
                ..bounds(60_000, 1024)
            },
        )
        .unwrap_err();
        assert!(err.to_string().contains("MemoryError"), "{err}");
    }

    #[test]
    fn the_scratch_directory_is_private_and_removed() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = ScratchDir::new().unwrap();
        let file = dir.write("input", &[b"med", b"ia"]).unwrap();
        let mode = std::fs::metadata(dir.join(""))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o700);
        assert_eq!(
            std::fs::metadata(&file).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(std::fs::read(&file).unwrap(), b"media");
        drop(dir);
        assert!(!file.exists());
    }
}
