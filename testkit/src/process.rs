//! A child process with a log, stopped as a supervisor stops it: SIGTERM, then SIGKILL if
//! it outlasts its grace. Dropping one kills it (SIGKILL), so a failing test or benchmark
//! leaves nothing running.

use anyhow::{bail, Context};
use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// Lines of a log shown when a process fails to start or stop.
pub const LOG_TAIL_LINES: usize = 20;

/// How often a process asked to stop is checked on.
const STOP_POLL: Duration = Duration::from_millis(50);

/// A started process; killed when dropped.
#[derive(Debug)]
pub struct Process {
    /// The process; reaped once it has been waited for.
    child: Child,
    /// What messages call it: an instance id, `redis-server`.
    name: String,
    /// Where its standard output and error are appended, if anywhere: read back for
    /// [`Process::log_tail`].
    log: Option<PathBuf>,
}

impl Process {
    /// Spawns `command` as `name`, appending its standard output and error to `log` (or
    /// discarding them); its standard input is closed.
    pub fn spawn(mut command: Command, name: &str, log: Option<&Path>) -> anyhow::Result<Process> {
        let (stdout, stderr) = match log {
            Some(log) => {
                let file = OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(log)
                    .with_context(|| format!("cannot open {}", log.display()))?;
                let shared = file
                    .try_clone()
                    .with_context(|| format!("cannot share {}", log.display()))?;
                (Stdio::from(shared), Stdio::from(file))
            }
            None => (Stdio::null(), Stdio::null()),
        };
        let child = command
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
            .with_context(|| {
                format!(
                    "cannot start {}",
                    Path::new(command.get_program()).display()
                )
            })?;
        Ok(Process {
            child,
            name: name.to_string(),
            log: log.map(Path::to_path_buf),
        })
    }

    /// What messages call it.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Its exit status, if it has exited (and is then reaped).
    pub fn try_exit(&mut self) -> anyhow::Result<Option<ExitStatus>> {
        self.child
            .try_wait()
            .with_context(|| format!("cannot check on {}", self.name))
    }

    /// kill -9 (no goodbye, no lease given up), and reaps the process.
    pub fn kill(&mut self) -> anyhow::Result<()> {
        let killed = self.child.kill();
        let reaped = self.child.wait();
        killed.with_context(|| format!("cannot kill {}", self.name))?;
        reaped.with_context(|| format!("cannot reap {}", self.name))?;
        Ok(())
    }

    /// Sends the signal `signal` (`TERM`, `STOP`, `CONT`, ...) to the process.
    pub fn signal(&self, signal: &str) -> anyhow::Result<()> {
        send_signal(self.pid(), signal)
    }

    /// Sends SIGTERM and waits up to `grace` for the process to exit, as a supervisor stops
    /// a service; one that outlasts it is killed, and that is an error. A process that has
    /// exited already is not signalled: its status is returned.
    pub fn stop(&mut self, grace: Duration) -> anyhow::Result<ExitStatus> {
        if let Some(status) = self.try_exit()? {
            return Ok(status);
        }
        self.signal("TERM")?;
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if let Some(status) = self.try_exit()? {
                return Ok(status);
            }
            std::thread::sleep(STOP_POLL);
        }
        self.child
            .kill()
            .with_context(|| format!("cannot kill {}", self.name))?;
        let status = self
            .child
            .wait()
            .with_context(|| format!("cannot reap {}", self.name))?;
        bail!(
            "{} did not stop within {} ms of SIGTERM and was killed ({status}); log tail:\n{}",
            self.name,
            grace.as_millis(),
            self.log_tail()
        )
    }

    /// The last [`LOG_TAIL_LINES`] lines of its log.
    pub fn log_tail(&self) -> String {
        match &self.log {
            Some(log) => log_tail(log),
            None => String::from("(its output was not kept)"),
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        // Killing a process that has exited and been reaped already does nothing.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Sends the signal `signal` (`TERM`, `STOP`, `CONT`, ...) to the process `pid`, with
/// `kill`, as an operator or a supervisor would.
pub fn send_signal(pid: u32, signal: &str) -> anyhow::Result<()> {
    let pid = pid.to_string();
    let sent = Command::new("kill")
        .args([&format!("-{signal}"), &pid])
        .status()
        .with_context(|| format!("cannot run kill -{signal}"))?;
    if !sent.success() {
        bail!("kill -{signal} {pid} failed with {sent}");
    }
    Ok(())
}

/// The last [`LOG_TAIL_LINES`] lines of the file `log`.
pub fn log_tail(log: &Path) -> String {
    match std::fs::read_to_string(log) {
        Ok(text) => {
            let lines: Vec<&str> = text.lines().collect();
            let from = lines.len().saturating_sub(LOG_TAIL_LINES);
            lines.get(from..).unwrap_or_default().join("\n")
        }
        Err(error) => format!("(cannot read {}: {error})", log.display()),
    }
}
