//! The real `vigil run` the `load` and `ha` benchmarks send to: the binary (`--binary`, by
//! default the `vigil` next to this executable), started on free loopback ports through the
//! test kit's launcher (no setting from the environment), polled on `GET /ready` until it
//! serves, and stopped with SIGTERM, then SIGKILL if it outlasts [`STOP_GRACE`].

use crate::workload::LOAD_PASSPHRASE;
use anyhow::{bail, Context};
use std::path::{Path, PathBuf};
use std::time::Duration;
use vigil_testkit::free_port;
use vigil_testkit::launch::Run;
use vigil_testkit::process::Process;

/// `GET /ready` attempts before the service counts as not starting.
const READY_TRIES: u32 = 100;

/// Pause between `GET /ready` attempts.
const READY_INTERVAL: Duration = Duration::from_millis(100);

/// How long one `GET /ready` may take.
const READY_REQUEST_TIMEOUT: Duration = Duration::from_secs(1);

/// How long the service may take to exit after SIGTERM before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(10);

/// `binary`, or the `vigil` next to this executable; it must exist.
pub fn vigil_binary(binary: Option<&Path>) -> anyhow::Result<PathBuf> {
    let binary = match binary {
        Some(binary) => binary.to_path_buf(),
        None => std::env::current_exe()
            .context("cannot find this executable")?
            .parent()
            .context("this executable has no directory")?
            .join("vigil"),
    };
    if !binary.is_file() {
        bail!(
            "{} does not exist: build it with `cargo build --release`, or name it with --binary",
            binary.display()
        );
    }
    Ok(binary)
}

/// How every instance of a run is started: `binary` in `work` with the deployment file
/// `config`, taking the load's passphrase. Add `--redis-url` and `--policy` for several
/// instances; [`Service::start`] adds the rest.
pub fn launch(binary: &Path, work: &Path, config: &Path) -> Run {
    Run::new(binary, work)
        .config(config)
        .passphrase(LOAD_PASSPHRASE)
}

/// A running `vigil run`; dropping it stops the process (SIGTERM, then SIGKILL).
#[derive(Debug)]
pub struct Service {
    /// The process, named by its instance id.
    process: Process,
    /// Its standard output and error.
    pub log: PathBuf,
    /// `http://127.0.0.1:PORT`: the webhook listener.
    pub base: String,
    /// `http://127.0.0.1:PORT`: the operator listener (`/ready`, `/status`).
    pub operator: String,
}

impl Service {
    /// Starts `launch` as `instance` on `database_url`, listening for webhooks on `address`
    /// (and for operators on a free port) and appending to `log`.
    pub fn start(
        launch: &Run,
        database_url: &str,
        instance: &str,
        address: &str,
        log: &Path,
    ) -> anyhow::Result<Service> {
        let operator = format!("127.0.0.1:{}", free_port()?);
        // Each run starts from a fresh database on purpose: its snapshots go beside its log,
        // so that an earlier run's snapshot is not taken for the witness of lost history.
        let snapshots = log.with_extension("snapshots");
        let command = launch
            .clone()
            .database_url(database_url)
            .instance(instance)
            .listen(address, &operator)
            .env("VIGIL_SNAPSHOT_DIR", &snapshots.display().to_string())
            .command();
        Ok(Service {
            process: Process::spawn(command, instance, Some(log))?,
            log: log.to_path_buf(),
            base: format!("http://{address}"),
            operator: format!("http://{operator}"),
        })
    }

    /// Its instance id.
    pub fn instance(&self) -> &str {
        self.process.name()
    }

    /// The last lines of its log.
    pub fn log_tail(&self) -> String {
        self.process.log_tail()
    }

    /// kill -9: no goodbye, no lease given up. Reaps the process.
    pub fn kill(&mut self) -> anyhow::Result<()> {
        self.process.kill()
    }

    /// Polls `GET /ready` until it answers 200, at most [`READY_TRIES`] times.
    pub async fn wait_ready(&mut self) -> anyhow::Result<()> {
        self.poll_ready("answer 200", |status, _| status == reqwest::StatusCode::OK)
            .await
    }

    /// Polls `GET /ready` until its `state` is `state`, at most [`READY_TRIES`] times.
    pub async fn wait_state(&mut self, state: &str) -> anyhow::Result<()> {
        self.poll_ready(&format!("say {state}"), |_, body| {
            body.get("state").and_then(serde_json::Value::as_str) == Some(state)
        })
        .await
    }

    /// Polls `GET /ready` every [`READY_INTERVAL`] until `done` holds for its status and
    /// body, at most [`READY_TRIES`] times; fails early if the service exits. `wanted` says
    /// what was waited for.
    async fn poll_ready(
        &mut self,
        wanted: &str,
        done: impl Fn(reqwest::StatusCode, &serde_json::Value) -> bool,
    ) -> anyhow::Result<()> {
        let client = reqwest::Client::builder()
            .no_proxy()
            .timeout(READY_REQUEST_TIMEOUT)
            .build()
            .context("cannot build the HTTP client")?;
        let url = format!("{}/ready", self.operator);
        let mut last = String::from("no answer");
        for _ in 0..READY_TRIES {
            if let Some(status) = self.process.try_exit()? {
                bail!(
                    "{} exited with {status} while waiting for /ready to {wanted}; log tail:\n{}",
                    self.instance(),
                    self.log_tail()
                );
            }
            match client.get(&url).send().await {
                Ok(response) => {
                    let status = response.status();
                    let body = response
                        .bytes()
                        .await
                        .ok()
                        .and_then(|bytes| serde_json::from_slice(&bytes).ok())
                        .unwrap_or(serde_json::Value::Null);
                    if done(status, &body) {
                        return Ok(());
                    }
                    last = format!("HTTP {}, state {}", status.as_u16(), body["state"]);
                }
                Err(error) => last = crate::stats::error_chain(&error),
            }
            tokio::time::sleep(READY_INTERVAL).await;
        }
        bail!(
            "{url} ({}) did not {wanted} after {READY_TRIES} tries {} ms apart (last: {last}); log tail:\n{}",
            self.instance(),
            READY_INTERVAL.as_millis(),
            self.log_tail()
        )
    }

    /// Stops the service (SIGTERM, then SIGKILL after [`STOP_GRACE`]) and says what went
    /// wrong, if anything did: an exit other than success is a problem.
    pub fn stop_problem(&mut self) -> Option<String> {
        match self.process.stop(STOP_GRACE) {
            Ok(status) if status.success() => None,
            Ok(status) => Some(format!(
                "{} exited with {status} after SIGTERM; log tail:\n{}",
                self.instance(),
                self.log_tail()
            )),
            Err(error) => Some(format!("{error:#}")),
        }
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        if let Err(error) = self.process.stop(STOP_GRACE) {
            eprintln!("warning: stopping {}: {error:#}", self.instance());
        }
    }
}

/// The warning and error lines of `log`.
pub fn log_findings(log: &Path) -> Vec<String> {
    match std::fs::read_to_string(log) {
        Ok(text) => text
            .lines()
            .filter(|line| line.contains(" WARN ") || line.contains(" ERROR "))
            .map(str::to_string)
            .collect(),
        Err(error) => vec![format!("(cannot read {}: {error})", log.display())],
    }
}
