//! A private `redis-server`: started on a free loopback port with no persistence, killed
//! with SIGKILL (no goodbye to its clients) and started again, empty, on the same port, as
//! the HA tests and the `ha` benchmark need. A server counts as started once it answers
//! with its own process id, so another server that took the port first is never mistaken
//! for it.

use crate::free_port;
use crate::process::Process;
use anyhow::bail;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::time::{Duration, Instant};

/// Free ports tried before [`RedisServer::start`] gives up: another process may take the
/// port between picking it and the server binding it.
pub const START_ATTEMPTS: usize = 5;

/// How long a started server may take to answer.
pub const START_TIMEOUT: Duration = Duration::from_secs(20);

/// How long one command may take, connecting included.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(5);

/// How often a starting server is asked whether it answers.
const POLL_INTERVAL: Duration = Duration::from_millis(10);

/// What messages call the process.
const NAME: &str = "redis-server";

/// A private `redis-server`; dropping it kills it.
#[derive(Debug)]
pub struct RedisServer {
    /// The `redis-server` binary, started again by [`RedisServer::resume`].
    binary: PathBuf,
    /// Its port, the same across restarts, so clients find it again.
    port: u16,
    /// Where its output is appended by every start, if anywhere.
    log: Option<PathBuf>,
    /// The process, while running.
    process: Option<Process>,
}

/// How one start ended.
enum Started {
    /// The server answered as itself, this long after it was started.
    Answered(Duration),
    /// It exited first: the port was taken, most likely.
    Exited(ExitStatus),
}

impl RedisServer {
    /// Starts `binary` on a free port, appending its output to `log` (or discarding it),
    /// and waits until it answers.
    pub async fn start(binary: &Path, log: Option<&Path>) -> anyhow::Result<RedisServer> {
        for _ in 0..START_ATTEMPTS {
            let mut server = RedisServer {
                binary: binary.to_path_buf(),
                port: free_port()?,
                log: log.map(Path::to_path_buf),
                process: None,
            };
            if let Started::Answered(_) = server.try_resume().await? {
                return Ok(server);
            }
        }
        bail!(
            "{} did not start on any of {START_ATTEMPTS} free ports",
            binary.display()
        )
    }

    /// Its port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `redis://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Starts the server again on its port, empty, and waits until it answers `PING`, at
    /// most [`START_TIMEOUT`]; how long after its start it answered.
    pub async fn resume(&mut self) -> anyhow::Result<Duration> {
        match self.try_resume().await? {
            Started::Answered(took) => Ok(took),
            Started::Exited(status) => bail!(
                "{NAME} on port {} exited with {status}; log tail:\n{}",
                self.port,
                self.log
                    .as_deref()
                    .map_or_else(String::new, crate::process::log_tail)
            ),
        }
    }

    /// Starts the server on its port and waits until it answers as itself.
    async fn try_resume(&mut self) -> anyhow::Result<Started> {
        if self.process.is_some() {
            bail!("{NAME} on port {} is already running", self.port);
        }
        let mut command = Command::new(&self.binary);
        command
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"]);
        let started = Instant::now();
        let mut process = Process::spawn(command, NAME, self.log.as_deref())?;
        let deadline = started + START_TIMEOUT;
        loop {
            if let Some(status) = process.try_exit()? {
                return Ok(Started::Exited(status));
            }
            if self.command(&["PING"]).await.is_ok() {
                let answered = started.elapsed();
                if self.process_id().await == Some(process.pid()) {
                    self.process = Some(process);
                    return Ok(Started::Answered(answered));
                }
            }
            if Instant::now() >= deadline {
                bail!(
                    "{NAME} on port {} did not answer within {} ms",
                    self.port,
                    START_TIMEOUT.as_millis()
                );
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    /// The process id of the server answering on the port, per `INFO server`.
    async fn process_id(&self) -> Option<u32> {
        let info: String = self.query(&["INFO", "server"]).await.ok()?;
        info.lines()
            .find_map(|line| line.trim().strip_prefix("process_id:"))
            .and_then(|pid| pid.parse().ok())
    }

    /// kill -9 (no goodbye to clients), and reaps the process; a stopped server stays
    /// stopped.
    pub fn kill(&mut self) -> anyhow::Result<()> {
        match self.process.take() {
            Some(mut process) => process.kill(),
            None => Ok(()),
        }
    }

    /// Runs one command (`FLUSHALL`, `SET key value`, ...), within [`COMMAND_TIMEOUT`].
    pub async fn command(&self, args: &[&str]) -> redis::RedisResult<redis::Value> {
        self.query(args).await
    }

    /// Runs one command and reads its answer as `T`, within [`COMMAND_TIMEOUT`].
    async fn query<T: redis::FromRedisValue>(&self, args: &[&str]) -> redis::RedisResult<T> {
        let Some((name, rest)) = args.split_first() else {
            return Err(std::io::Error::new(std::io::ErrorKind::InvalidInput, "no command").into());
        };
        let sent = tokio::time::timeout(COMMAND_TIMEOUT, async {
            let client = redis::Client::open(self.url())?;
            let mut connection = client.get_multiplexed_async_connection().await?;
            let mut command = redis::cmd(name);
            for arg in rest {
                command.arg(*arg);
            }
            command.query_async(&mut connection).await
        })
        .await;
        sent.unwrap_or_else(|_| {
            Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!(
                    "{name} to {} had no answer within {} ms",
                    self.url(),
                    COMMAND_TIMEOUT.as_millis()
                ),
            )
            .into())
        })
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        if let Err(error) = self.kill() {
            eprintln!("warning: stopping {NAME} on port {}: {error:#}", self.port);
        }
    }
}
