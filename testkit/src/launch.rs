//! How the real `vigil` binary is started: in a directory of its own, with only the
//! settings its caller names. Every `VIGIL_*` variable of this process's environment is
//! removed from the child's, so a setting left out is vigil's default, not whatever the
//! shell that ran the tests or the benchmark happened to export.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The prefix of every environment variable vigil reads its settings from.
const SETTINGS_PREFIX: &str = "VIGIL_";

/// The environment variable `vigil run` reads the webhook passphrase from.
const PASSPHRASE_ENV: &str = "VIGIL_WEBHOOK_PASSPHRASE";

/// Where `vigil run` listens unless told otherwise: a loopback port the system picks (the
/// instance logs the address it got).
pub const ANY_PORT: &str = "127.0.0.1:0";

/// The `vigil` binary at `binary`, to be run in `dir`, with no setting from the environment.
pub fn vigil(binary: &Path, dir: &Path) -> Command {
    let mut command = Command::new(binary);
    command.current_dir(dir);
    for name in settings_in_environment() {
        command.env_remove(name);
    }
    command
}

/// The names of the `VIGIL_*` variables set in this process's environment.
fn settings_in_environment() -> Vec<OsString> {
    std::env::vars_os()
        .map(|(name, _)| name)
        .filter(|name| name.to_string_lossy().starts_with(SETTINGS_PREFIX))
        .collect()
}

/// One `vigil run`: the binary, where it runs, and every setting it is given. A template
/// too: clone it and add what differs per instance.
#[derive(Debug, Clone)]
pub struct Run {
    /// The `vigil` binary.
    binary: PathBuf,
    /// Its working directory, where relative paths in its flags and files are read from.
    dir: PathBuf,
    /// `--database-url`; without it, vigil's default (a SQLite file in `dir`).
    database_url: Option<String>,
    /// `--listen`: where webhooks are heard.
    listen: String,
    /// `--operator-listen`: where `/ready`, `/status` and `/metrics` are.
    operator_listen: String,
    /// `--instance`, when given.
    instance: Option<String>,
    /// `--config`, the deployment file, when given.
    config: Option<PathBuf>,
    /// `--redis-url`, when given: several instances on one PostgreSQL database.
    redis_url: Option<String>,
    /// `--policy`, when given; otherwise the deployment file's or the built-in policy.
    policy: Option<PathBuf>,
    /// The webhook passphrase, when given; without one the instance makes its own.
    passphrase: Option<String>,
    /// Further environment, set last (a failpoint, say).
    env: Vec<(String, String)>,
}

impl Run {
    /// `vigil run` of `binary` in `dir`, listening on loopback ports the system picks.
    pub fn new(binary: &Path, dir: &Path) -> Run {
        Run {
            binary: binary.to_path_buf(),
            dir: dir.to_path_buf(),
            database_url: None,
            listen: ANY_PORT.to_string(),
            operator_listen: ANY_PORT.to_string(),
            instance: None,
            config: None,
            redis_url: None,
            policy: None,
            passphrase: None,
            env: Vec::new(),
        }
    }

    /// Its working directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// On the database at `url`.
    pub fn database_url(mut self, url: &str) -> Run {
        self.database_url = Some(url.to_string());
        self
    }

    /// Webhooks on `webhook`, the operator endpoints on `operator` (`127.0.0.1:PORT`).
    pub fn listen(mut self, webhook: &str, operator: &str) -> Run {
        self.listen = webhook.to_string();
        self.operator_listen = operator.to_string();
        self
    }

    /// As the instance `id`.
    pub fn instance(mut self, id: &str) -> Run {
        self.instance = Some(id.to_string());
        self
    }

    /// With the deployment file at `path` (relative to the working directory).
    pub fn config(mut self, path: impl Into<PathBuf>) -> Run {
        self.config = Some(path.into());
        self
    }

    /// Coordinating through the Redis at `url`.
    pub fn redis_url(mut self, url: &str) -> Run {
        self.redis_url = Some(url.to_string());
        self
    }

    /// Under the policy file at `path`.
    pub fn policy(mut self, path: impl Into<PathBuf>) -> Run {
        self.policy = Some(path.into());
        self
    }

    /// Taking webhooks that carry `passphrase`.
    pub fn passphrase(mut self, passphrase: &str) -> Run {
        self.passphrase = Some(passphrase.to_string());
        self
    }

    /// With the environment variable `name` set to `value` (after every other setting).
    pub fn env(mut self, name: &str, value: &str) -> Run {
        self.env.push((name.to_string(), value.to_string()));
        self
    }

    /// The command that starts it.
    pub fn command(&self) -> Command {
        let mut command = vigil(&self.binary, &self.dir);
        command.arg("run");
        if let Some(config) = &self.config {
            command.arg("--config").arg(config);
        }
        if let Some(url) = &self.database_url {
            command.arg("--database-url").arg(url);
        }
        command
            .arg("--listen")
            .arg(&self.listen)
            .arg("--operator-listen")
            .arg(&self.operator_listen);
        if let Some(instance) = &self.instance {
            command.arg("--instance").arg(instance);
        }
        if let Some(url) = &self.redis_url {
            command.arg("--redis-url").arg(url);
        }
        if let Some(policy) = &self.policy {
            command.arg("--policy").arg(policy);
        }
        if let Some(passphrase) = &self.passphrase {
            command.env(PASSPHRASE_ENV, passphrase);
        }
        for (name, value) in &self.env {
            command.env(name, value);
        }
        command
    }
}
