//! `vigil run`, `vigil recover --check` and `vigil migrate`: the commands that touch the
//! database. Settings come from flags, then environment variables, then the deployment file,
//! then defaults.

use super::Outcome;
use crate::deployment::{Deployment, DeploymentError};
use crate::domain::Instrument;
use crate::driver::live::{self, TokioClock};
use crate::driver::{Driver, Input};
use crate::logging;
use crate::policy::{Policy, PolicyError};
use crate::recovery::Receipt;
use crate::shared::Shared;
use crate::startup::{Startup, StartupConfig, Until};
use crate::store::{self, Access, AnyStore, InstanceRecord, Store};
use anyhow::Context;
use chrono::Utc;
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

/// Exit code of `vigil recover --check` when recovery would end degraded rather than active.
pub const EXIT_DEGRADED: u8 = 5;

/// Settings shared by the commands that use the database.
#[derive(Debug, Clone, clap::Args)]
pub struct ServiceArgs {
    /// The deployment file [default: ./vigil.toml, if it exists].
    #[arg(long, value_name = "FILE", env = "VIGIL_CONFIG")]
    pub config: Option<PathBuf>,
    /// The database: sqlite://FILE or postgres://USER@HOST/DB [default: sqlite://vigil.db].
    #[arg(long, value_name = "URL", env = "VIGIL_DATABASE_URL")]
    pub database_url: Option<String>,
    /// The policy file [default: the built-in policy, policies/default.toml].
    #[arg(long, value_name = "FILE", env = "VIGIL_POLICY")]
    pub policy: Option<PathBuf>,
    /// The instance id [default: the host name].
    #[arg(long, value_name = "ID", env = "VIGIL_INSTANCE")]
    pub instance: Option<String>,
}

/// Settings after layering flags, environment, deployment file and defaults.
#[derive(Debug, Clone)]
struct Settings {
    database_url: String,
    policy: Policy,
    instance: String,
    instruments: BTreeMap<String, Instrument>,
}

/// Layers the settings; `None` when a file was invalid (its diagnostics are printed).
fn settings(args: &ServiceArgs) -> anyhow::Result<Option<Settings>> {
    let deployment = match Deployment::load(args.config.as_deref()) {
        Ok(deployment) => deployment,
        Err(DeploymentError::Invalid(diagnostics)) => {
            eprintln!("{diagnostics}");
            return Ok(None);
        }
        Err(error) => return Err(error.into()),
    };
    let policy = match args.policy.clone().or(deployment.policy.clone()) {
        None => Policy::builtin_default(),
        Some(path) => match Policy::load(&path) {
            Ok(policy) => policy,
            Err(PolicyError::Invalid(diagnostics)) => {
                eprintln!("{diagnostics}");
                return Ok(None);
            }
            Err(error) => return Err(error.into()),
        },
    };
    let hostname = gethostname::gethostname().to_string_lossy().into_owned();
    Ok(Some(Settings {
        database_url: args
            .database_url
            .clone()
            .or(deployment.database_url)
            .unwrap_or_else(|| store::DEFAULT_DATABASE_URL.to_string()),
        policy,
        instance: args
            .instance
            .clone()
            .or(deployment.instance)
            .unwrap_or(hostname),
        instruments: deployment.instruments,
    }))
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

/// Log lines go to standard error with wall-clock time, in the format the dry-run shows.
fn init_logging() {
    let subscriber =
        logging::subscriber(std::io::stderr, tracing_subscriber::fmt::time::SystemTime);
    // A second call (tests running commands in one process) keeps the first subscriber.
    let _ = tracing::subscriber::set_global_default(subscriber);
}

/// `vigil migrate`.
pub fn migrate(args: &ServiceArgs) -> anyhow::Result<Outcome> {
    let Some(settings) = settings(args)? else {
        return Ok(Outcome::Invalid);
    };
    let shown = store::redact(&settings.database_url);
    runtime()?.block_on(async {
        let store = AnyStore::connect(&settings.database_url, Access::ReadWrite)
            .await
            .with_context(|| format!("cannot open {shown}"))?;
        store
            .migrate()
            .await
            .with_context(|| format!("cannot migrate {shown}"))?;
        store.close().await;
        super::write_stdout(format!("{shown}: schema up to date\n").as_bytes())?;
        Ok(Outcome::Ok)
    })
}

/// Runs start-up to its end under the live loop and returns the exit code and what it found.
async fn start_up(settings: &Settings, access: Access, until: Until) -> (u8, Startup) {
    let config = StartupConfig {
        database_url: settings.database_url.clone(),
        access,
        instance: InstanceRecord {
            instance_id: settings.instance.clone(),
            hostname: gethostname::gethostname().to_string_lossy().into_owned(),
            started_at: Utc::now(),
        },
        tolerance: settings.policy.recovery.tolerance,
        instruments: settings.instruments.clone(),
        until,
    };
    // The sender stays alive until the loop ends: a closed channel would mean "stop now".
    let (sender, mut inputs) = live::channel();
    let shared = Arc::new(Shared::new(&settings.instance, sender.clone()));
    let mut startup = Startup::new(config, shared);
    let (mut driver, init) =
        Driver::new(&settings.policy, &settings.instance, fastrand::Rng::new());
    if until == Until::Stopped {
        tokio::spawn(stop_on_signal(sender.clone()));
    }
    let code = live::run(
        &mut driver,
        &init,
        &mut inputs,
        &mut startup,
        &mut TokioClock::start(),
    )
    .await;
    drop(sender);
    if let Some(store) = startup.store() {
        store.close().await;
    }
    (code, startup)
}

/// Sends `stop` on SIGTERM or SIGINT.
async fn stop_on_signal(sender: tokio::sync::mpsc::Sender<Input>) {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(error) => {
                tracing::error!("cannot listen for SIGTERM: {error}");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = terminate => {}
    }
    // The loop may already have ended; then there is nobody left to tell.
    let _ = sender.send(Input::Stop).await;
    std::future::pending::<()>().await;
}

/// `vigil run`.
pub fn run(args: &ServiceArgs) -> anyhow::Result<Outcome> {
    let Some(settings) = settings(args)? else {
        return Ok(Outcome::Invalid);
    };
    init_logging();
    tracing::info!(
        target: crate::startup::STARTUP_TARGET,
        instance = %settings.instance,
        "starting with database {} and policy {}",
        store::redact(&settings.database_url),
        settings.policy.name
    );
    let (code, _) = runtime()?.block_on(start_up(&settings, Access::ReadWrite, Until::Stopped));
    Ok(Outcome::Exit(code))
}

/// What `vigil recover --check --format json` prints.
#[derive(Debug, Serialize)]
struct CheckReport<'a> {
    /// The state recovery would settle on: active, degraded or crashed.
    state: &'a str,
    /// The exit code of this command.
    exit_code: u8,
    /// The receipt, when the database could be read.
    receipt: Option<&'a Receipt>,
    /// Why there is no receipt.
    error: Option<String>,
}

/// `vigil recover --check`.
pub fn recover_check(
    args: &ServiceArgs,
    format: crate::dry_run::Format,
) -> anyhow::Result<Outcome> {
    let Some(settings) = settings(args)? else {
        return Ok(Outcome::Invalid);
    };
    init_logging();
    let (code, startup) =
        runtime()?.block_on(start_up(&settings, Access::ReadOnly, Until::Settled));
    let (state, exit_code) = match startup.settled {
        Some("active") => ("active", 0),
        Some(state) => (state, EXIT_DEGRADED),
        None => ("crashed", code),
    };
    let error = match (&startup.receipt, &startup.last_error) {
        (None, Some(error)) => Some(error.to_string()),
        _ => None,
    };
    let report = CheckReport {
        state,
        exit_code,
        receipt: startup.receipt.as_ref(),
        error,
    };
    let text = match format {
        crate::dry_run::Format::Json => {
            serde_json::to_string_pretty(&report).context("cannot encode the report")? + "\n"
        }
        crate::dry_run::Format::Text => {
            let mut text = match (&report.receipt, &report.error) {
                (Some(receipt), _) => format!("{receipt}\n"),
                (None, Some(error)) => format!("no receipt: {error}\n"),
                (None, None) => "no receipt\n".to_string(),
            };
            text.push_str(&format!(
                "recovery would end {state}; exit code {exit_code}\n"
            ));
            text
        }
    };
    super::write_stdout(text.as_bytes())?;
    Ok(Outcome::Exit(exit_code))
}
