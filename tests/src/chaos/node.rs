//! A component as a child process: started, SIGKILLed (or left to exit by itself), started
//! again with the same command.

use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Mutex;

/// A child process that can be killed outright and started again.
pub struct Node {
    name: String,
    program: PathBuf,
    args: Vec<String>,
    log: PathBuf,
    child: Mutex<Option<Child>>,
}

impl Node {
    /// Starts `program args…`, its output appended to `log`.
    pub fn start(name: &str, program: &Path, args: &[&str], log: &Path) -> Self {
        let node = Self {
            name: name.to_owned(),
            program: program.to_owned(),
            args: args.iter().map(|&a| a.to_owned()).collect(),
            log: log.to_owned(),
            child: Mutex::new(None),
        };
        node.spawn();
        node
    }

    /// Starts it again with the same command (after [`Node::kill`]).
    pub fn spawn(&self) {
        let mut slot = self.child.lock().unwrap();
        assert!(slot.is_none(), "{} is running", self.name);
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let child = Command::new(&self.program)
            .args(&self.args)
            .env("MERIDIAN_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", self.name));
        *slot = Some(child);
    }

    /// Kills it with SIGKILL, as when its machine dies, and reaps it.
    pub fn kill(&self) {
        if let Some(mut child) = self.child.lock().unwrap().take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Its pid while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.lock().unwrap().as_ref().map(Child::id)
    }

    /// Its exit status once it has exited on its own (reaped: it can be started again);
    /// `None` while it runs.
    pub fn exited(&self) -> Option<ExitStatus> {
        let mut slot = self.child.lock().unwrap();
        let status = slot.as_mut()?.try_wait().ok().flatten()?;
        *slot = None;
        Some(status)
    }

    /// Fails the test, with its log, when it has exited on its own.
    pub fn assert_running(&self) {
        let exited = match self.child.lock().unwrap().as_mut() {
            Some(child) => child.try_wait().ok().flatten(),
            None => None,
        };
        if let Some(status) = exited {
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(30).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            panic!("{} exited ({status}):\n{}", self.name, tail.join("\n"));
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
    }
}
