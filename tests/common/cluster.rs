//! Several real `vigil` instances on one PostgreSQL database and one private Redis, as an
//! operator runs them: each its own process, port, instance id and log file.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::time::Duration;
use vigil_testkit::process::Process;

/// The webhook passphrase every instance is given.
pub const PASSPHRASE: &str = "ha-passphrase";

/// How often conditions are polled.
pub const POLL_INTERVAL: Duration = Duration::from_millis(25);

/// How long an instance may take to become ready, or Redis to start, before the test fails.
pub const START_TIMEOUT: Duration = Duration::from_secs(20);

/// How many instruments the deployment lists, so that many independent signals can flow.
pub const INSTRUMENTS: usize = 60;

/// HA timings short enough for tests, yet long enough that a busy two-core machine does not
/// miss them: a heartbeat every 400 ms, a 2.4 s lease renewed at every heartbeat, a 1 s signal lock, and background tasks every 500 ms.
pub const POLICY: &str = r#"# Short HA timings for tests; everything else is the built-in policy.
[ha]
heartbeat_interval = "400ms"
instance_stale_after = "1200ms"
leader_lease = "2400ms"
signal_lock_ttl = "1s"
leader_task_interval = "500ms"

# Tests kill their instances again and again on one database: vigil's own restart budget
# would refuse the eleventh restart within the hour (tests/operations.rs tests it).
[restarts]
max = 1000
"#;

/// The lease [`POLICY`] sets.
pub const LEASE: Duration = Duration::from_millis(2400);
/// How often the lease is renewed under [`POLICY`]: the heartbeat interval, which is
/// shorter than a third of the lease.
pub const RENEWAL: Duration = Duration::from_millis(400);
/// The heartbeat interval [`POLICY`] sets.
pub const HEARTBEAT: Duration = Duration::from_millis(400);
/// The signal lock TTL [`POLICY`] sets.
pub const LOCK_TTL: Duration = Duration::from_secs(1);

/// A free TCP port on loopback (the kit's).
pub fn free_port() -> u16 {
    vigil_testkit::free_port().unwrap()
}

/// A private `redis-server` that a test may stop and start again on the same port: the
/// kit's, failing the test where it fails.
#[derive(Debug)]
pub struct RedisServer {
    /// Its port.
    pub port: u16,
    /// The server.
    server: vigil_testkit::redis_server::RedisServer,
}

impl RedisServer {
    /// Starts a server on a free port and waits until it answers.
    pub async fn start() -> RedisServer {
        let server =
            vigil_testkit::redis_server::RedisServer::start(Path::new("redis-server"), None)
                .await
                .expect("redis-server did not start (.ci/services installs it)");
        RedisServer {
            port: server.port(),
            server,
        }
    }

    /// Its URL.
    pub fn url(&self) -> String {
        self.server.url()
    }

    /// Starts the server again on its port, empty, and waits until it answers.
    pub async fn resume(&mut self) {
        self.server
            .resume()
            .await
            .expect("redis-server did not start again on its port");
    }

    /// Kills the server (SIGKILL: no goodbye to clients).
    pub fn stop(&mut self) {
        let _ = self.server.kill();
    }

    /// Runs one command.
    pub async fn command(&self, args: &[&str]) -> redis::RedisResult<redis::Value> {
        self.server.command(args).await
    }
}

/// A running instance; killed when dropped, so a failing test leaves nothing behind.
pub struct Instance {
    /// Its instance id.
    pub id: String,
    /// The base URL of its webhook listener.
    pub url: String,
    /// The base URL of its operator listener (`/ready`, `/status`, `/metrics`).
    pub operator_url: String,
    /// Its log file (standard output and error).
    pub log: PathBuf,
    /// The process.
    process: Process,
}

impl Drop for Instance {
    fn drop(&mut self) {
        self.kill();
    }
}

impl Instance {
    /// kill -9.
    pub fn kill(&mut self) {
        let _ = self.process.kill();
    }

    /// Sends SIGTERM, as a supervisor stopping the service does.
    pub fn terminate(&self) {
        self.signal("TERM");
    }

    /// SIGTERM, and the graceful stop's exit code 0 (its log shown otherwise).
    pub async fn stop_gracefully(&mut self) {
        self.terminate();
        let code = self.exit_code().await;
        assert_eq!(
            code,
            Some(0),
            "{} did not stop cleanly:\n{}",
            self.id,
            self.log_text()
        );
    }

    /// Sends the signal `name` (`STOP`, `CONT`, `TERM`) to the process.
    pub fn signal(&self, name: &str) {
        self.process.signal(name).unwrap();
    }

    /// Waits for the process to end by itself; its exit code.
    pub async fn exit_code(&mut self) -> Option<i32> {
        let deadline = tokio::time::Instant::now() + START_TIMEOUT;
        loop {
            if let Ok(Some(status)) = self.process.try_exit() {
                return status.code();
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{} did not exit; its log:\n{}",
                self.id,
                self.log_text()
            );
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    /// Its log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Posts a webhook body; the status and the JSON answer.
    pub async fn post(&self, body: &str) -> (u16, serde_json::Value) {
        post(self.url.clone(), body.to_string()).await
    }

    /// GETs an operator page (JSON), or `None` when the instance does not answer.
    pub async fn get(&self, path: &str) -> Option<serde_json::Value> {
        let response = reqwest::Client::new()
            .get(format!("{}{path}", self.operator_url))
            .timeout(Duration::from_secs(2))
            .send()
            .await
            .ok()?;
        serde_json::from_slice(&response.bytes().await.ok()?).ok()
    }
}

/// Posts a webhook body to the instance at `url`; the status and the JSON answer (null when
/// the body is not JSON).
pub async fn post(url: String, body: String) -> (u16, serde_json::Value) {
    let response = reqwest::Client::new()
        .post(format!("{url}/webhook"))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    let bytes = response.bytes().await.unwrap();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null),
    )
}

/// One database, one private Redis, a directory with the policy and deployment files.
pub struct Cluster {
    /// The database URL.
    pub database_url: String,
    /// The Redis every instance is given.
    pub redis: RedisServer,
    /// Where files and logs live.
    pub dir: PathBuf,
    /// Whether instances are given the Redis; without it they coordinate through the
    /// database alone.
    pub use_redis: bool,
}

impl Cluster {
    /// Writes the files into a fresh directory named for `test`.
    pub async fn new(test: &str, database_url: &str) -> Cluster {
        let dir = std::env::temp_dir().join(format!("vigil-ha-{}-{test}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("policy.toml"), POLICY).unwrap();
        let mut deployment = String::from("policy = \"policy.toml\"\n");
        for slot in 0..INSTRUMENTS {
            deployment.push_str(&format!(
                "\n[instruments.{}]\nlot_size = \"1\"\npoint_value = \"1\"\nmargin_per_lot = \"100\"\n",
                instrument(slot)
            ));
        }
        std::fs::write(dir.join("vigil.toml"), deployment).unwrap();
        Cluster {
            database_url: database_url.to_string(),
            redis: RedisServer::start().await,
            dir,
            use_redis: true,
        }
    }

    /// Starts instance `id` on a port the system picks, and waits until it listens (not
    /// until it is ready). A restarted instance appends to the same log.
    pub async fn spawn(&self, id: &str) -> Instance {
        self.spawn_with(id, &[]).await
    }

    /// Starts instance `id` without waiting for anything: for a start that is expected to
    /// end by itself ([`Instance::exit_code`]).
    pub async fn spawn_until_exit(&self, id: &str) -> Instance {
        self.launch(id, &[])
    }

    /// [`Cluster::spawn_until_exit`], with `env` set for the process.
    pub async fn spawn_until_exit_with(&self, id: &str, env: &[(&str, &str)]) -> Instance {
        self.launch(id, env)
    }

    /// Starts the process of instance `id`, appending to its log.
    fn launch(&self, id: &str, env: &[(&str, &str)]) -> Instance {
        let log = self.dir.join(format!("{id}.log"));
        let mut run = super::vigil_run(&self.dir)
            .config("vigil.toml")
            .instance(id)
            .database_url(&self.database_url)
            .passphrase(PASSPHRASE);
        if self.use_redis {
            run = run.redis_url(&self.redis.url());
        }
        for (name, value) in env {
            run = run.env(name, value);
        }
        let process = Process::spawn(run.command(), id, Some(&log)).unwrap();
        Instance {
            id: id.to_string(),
            url: String::new(),
            operator_url: String::new(),
            log,
            process,
        }
    }

    /// [`Cluster::spawn`], with `env` set for the process (a failpoint, say).
    pub async fn spawn_with(&self, id: &str, env: &[(&str, &str)]) -> Instance {
        let earlier =
            std::fs::metadata(self.dir.join(format!("{id}.log"))).map_or(0, |meta| meta.len());
        let mut instance = self.launch(id, env);
        let deadline = tokio::time::Instant::now() + START_TIMEOUT;
        loop {
            let text = std::fs::read(&instance.log).unwrap_or_default();
            let fresh =
                String::from_utf8_lossy(&text[usize::try_from(earlier).unwrap()..]).to_string();
            let address = |after: &str| {
                let (_, rest) = fresh.split_once(after)?;
                Some(format!("http://{}", rest.split_whitespace().next()?))
            };
            if let (Some(url), Some(operator_url)) = (
                address("listening on http://"),
                address("operator endpoints on http://"),
            ) {
                instance.url = url;
                instance.operator_url = operator_url;
                return instance;
            }
            if let Ok(Some(exit)) = instance.process.try_exit() {
                panic!("{id} exited ({exit}) before listening:\n{fresh}");
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{id} never listened:\n{fresh}"
            );
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    /// Runs a `vigil` command in the cluster's directory with its deployment file (and the
    /// rest of `args`); its exit code and what it printed, standard output first.
    pub async fn vigil(&self, args: &[&str]) -> (i32, String) {
        let mut command = super::vigil(&self.dir);
        command.args(args).args(["--config", "vigil.toml"]);
        let output = tokio::task::spawn_blocking(move || command.output().unwrap())
            .await
            .unwrap();
        (
            output.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&output.stdout).to_string()
                + &String::from_utf8_lossy(&output.stderr),
        )
    }

    /// Starts instance `id` and waits until it is ready.
    pub async fn start(&self, id: &str) -> Instance {
        let instance = self.spawn(id).await;
        wait_ready(&instance).await;
        instance
    }

    /// Starts `count` instances, `ha-1` to `ha-{count}`, and waits until all are ready.
    pub async fn start_all(&self, count: usize) -> Vec<Instance> {
        let mut instances = Vec::new();
        for n in 1..=count {
            instances.push(self.spawn(&format!("ha-{n}")).await);
        }
        for instance in &instances {
            wait_ready(instance).await;
        }
        instances
    }
}

/// Waits until `instance` answers `/ready` with 200.
pub async fn wait_ready(instance: &Instance) {
    wait_for(instance, "/ready", |ready| ready["ready"] == true).await;
}

/// Polls `path` on `instance` until `condition` holds; fails the test after
/// [`START_TIMEOUT`], showing the instance's log.
pub async fn wait_for(
    instance: &Instance,
    path: &str,
    condition: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = tokio::time::Instant::now() + START_TIMEOUT;
    loop {
        if let Some(page) = instance.get(path).await {
            if condition(&page) {
                return page;
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} never reached the awaited condition on {path}; its log:\n{}",
            instance.id,
            instance.log_text()
        );
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// The name of instrument `slot`.
pub fn instrument(slot: usize) -> String {
    format!("INS{slot:02}")
}

/// A BASE_ENTRY on instrument `slot`: each slot's signal is distinct.
pub fn entry(slot: usize) -> String {
    format!(
        r#"{{"passphrase":"{PASSPHRASE}","signal":"BASE_ENTRY","instrument":"{}","position":"long","price":"1000","stop":"990","lots":"1","timestamp":"{}"}}"#,
        instrument(slot),
        super::at("09:15")
    )
}

/// The lines of `log` from `target`, without their timestamps.
pub fn lines_of(log: &str, target: &str) -> Vec<String> {
    let needle = format!(" {target}: ");
    log.lines()
        .filter(|line| line.contains(&needle))
        .map(|line| {
            line.split_once(' ')
                .map_or(line, |(_, rest)| rest)
                .trim()
                .to_string()
        })
        .collect()
}

/// Removes the files of a passed test.
pub fn clean(dir: &Path) {
    let _ = std::fs::remove_dir_all(dir);
}
