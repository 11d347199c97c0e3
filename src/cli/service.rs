//! `vigil run`, `vigil recover --check` and `vigil migrate`: the commands that touch the
//! database. Settings come from flags, then environment variables, then the deployment file,
//! then defaults.

use super::Outcome;
use crate::broker::{Broker, PaperBroker};
use crate::coordination::{self, instance_views, Coordination, RedisCoordinator};
use crate::deployment::{Deployment, DeploymentError, OPERATOR_TOKEN_ENV};
use crate::domain::default_instruments;
use crate::domain::Instrument;
use crate::driver::live::{self, TokioClock};
use crate::driver::Driver;
use crate::executor::ports::{RedisCheck, StoreDatabase};
use crate::executor::{Executor, ExecutorConfig, Ports, Until};
use crate::http::signature::Signatures;
use crate::http::{self, Passphrase};
use crate::intake::{journal, Intake};
use crate::logging;
use crate::machines::lifecycle;
use crate::policy::{Policy, PolicyError};
use crate::recovery::Receipt;
use crate::shared::Shared;
use crate::store::operations::{Operations, Pause};
use crate::store::{self, Access, AnyStore, Footprint, InstanceRecord, Store};
use anyhow::Context;
use chrono::Utc;
use serde::Serialize;
use std::collections::BTreeMap;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::sync::Arc;

/// How long a graceful stop spends applying what the intake journal holds; what is left
/// is applied at the next start.
pub const JOURNAL_FLUSH_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// How long the listeners may take to close once the instance stopped, after in-flight
/// signals had their own bound; a connection still open then is dropped.
pub const LISTENERS_CLOSE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// How long the async runtime may take to wind down once `vigil run` has stopped.
pub const RUNTIME_SHUTDOWN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(1);

/// Exit code of `vigil recover --check` when recovery would end degraded rather than active.
pub const EXIT_DEGRADED: u8 = 5;

/// Exit code of `vigil run`: another live process holds this instance id
/// ([`crate::coordination::identity`]).
pub const EXIT_ID_HELD: u8 = 6;

/// `vigil run` refused to start: the deployment's instances have restarted after an unclean
/// end `[restarts] max` times within `window` ([`crate::restarts`]).
pub const EXIT_RESTARTS_SPENT: u8 = crate::restarts::EXIT_RESTARTS_SPENT;

/// How long a start waits for the database to say who holds its instance id before it
/// starts without knowing (the database then being the policy's to answer, as always).
const ID_CHECK_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3);

/// The environment variable holding the webhook passphrase.
pub const PASSPHRASE_ENV: &str = "VIGIL_WEBHOOK_PASSPHRASE";

/// The environment variable holding the webhook signing keys, comma-separated (two while
/// rotating); it overrides `webhook.signature_keys`.
pub const SIGNATURE_KEYS_ENV: &str = "VIGIL_WEBHOOK_SIGNATURE_KEYS";

/// Where a generated passphrase is kept, in the working directory, readable only by its owner.
pub const PASSPHRASE_FILE: &str = "vigil.passphrase";

/// The address the webhook listener binds by default: loopback only.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";

/// The address the operator listener (`/ready`, `/status`, `/metrics`) binds by default:
/// loopback only.
pub const DEFAULT_OPERATOR_LISTEN: &str = "127.0.0.1:8081";

/// Bytes of randomness in a generated passphrase (shown as twice as many hex digits).
const GENERATED_PASSPHRASE_BYTES: usize = 24;

/// Arguments of `vigil run`.
#[derive(Debug, Clone, clap::Args)]
pub struct RunArgs {
    /// The address to listen on [default: 127.0.0.1:8080]. Anything beyond loopback needs a
    /// configured webhook passphrase.
    #[arg(long, value_name = "ADDR", env = "VIGIL_LISTEN")]
    pub listen: Option<String>,
    /// The address the operator endpoints (/ready, /status, /metrics) listen on
    /// [default: 127.0.0.1:8081]. Anything beyond loopback needs an operator token
    /// (VIGIL_OPERATOR_TOKEN).
    #[arg(long, value_name = "ADDR", env = "VIGIL_OPERATOR_LISTEN")]
    pub operator_listen: Option<String>,
    /// Settings.
    #[command(flatten)]
    pub service: ServiceArgs,
}

/// Settings shared by the commands that use the database.
#[derive(Debug, Clone, clap::Args)]
pub struct ServiceArgs {
    /// The deployment file [default: ./vigil.toml, if it exists].
    #[arg(long, value_name = "FILE", env = "VIGIL_CONFIG")]
    pub config: Option<PathBuf>,
    /// The database: sqlite://FILE or postgres://USER@HOST/DB [default: sqlite://vigil.db].
    #[arg(long, value_name = "URL", env = "VIGIL_DATABASE_URL")]
    pub database_url: Option<String>,
    /// The Redis that several instances on one PostgreSQL database share, redis://HOST:PORT
    /// [default: none; instances coordinate through the database].
    #[arg(long, value_name = "URL", env = "VIGIL_REDIS_URL")]
    pub redis_url: Option<String>,
    /// The policy file [default: the built-in policy, policies/default.toml].
    #[arg(long, value_name = "FILE", env = "VIGIL_POLICY")]
    pub policy: Option<PathBuf>,
    /// The instance id [default: the host name].
    #[arg(long, value_name = "ID", env = "VIGIL_INSTANCE")]
    pub instance: Option<String>,
    /// The directory of the intake journal, INSTANCE.journal [default: the working directory].
    #[arg(long, value_name = "DIR", env = "VIGIL_JOURNAL_DIR")]
    pub journal_dir: Option<PathBuf>,
    /// The directory of this instance's state snapshots [default: the journal directory].
    #[arg(long, value_name = "DIR", env = "VIGIL_SNAPSHOT_DIR")]
    pub snapshot_dir: Option<PathBuf>,
    /// The most verbose level of vigil's log lines; libraries log warnings and errors.
    #[arg(
        long,
        value_enum,
        value_name = "LEVEL",
        env = "VIGIL_LOG_LEVEL",
        default_value_t
    )]
    pub log_level: logging::LogLevel,
    /// The format of the log lines on standard error.
    #[arg(
        long,
        value_enum,
        value_name = "FORMAT",
        env = "VIGIL_LOG_FORMAT",
        default_value_t
    )]
    pub log_format: logging::LogFormat,
}

/// Settings after layering flags, environment, deployment file and defaults.
#[derive(Debug, Clone)]
pub(super) struct Settings {
    pub(super) database_url: String,
    /// Only with PostgreSQL.
    pub(super) redis_url: Option<String>,
    pub(super) policy: Policy,
    pub(super) instance: String,
    pub(super) instruments: BTreeMap<String, Instrument>,
    /// From the deployment file.
    pub(super) initial_capital: Option<rust_decimal::Decimal>,
    /// The host this process runs on, read once.
    pub(super) hostname: String,
    /// From the deployment file; the flag and environment variable are layered by `run`.
    pub(super) listen: Option<String>,
    /// From the deployment file, layered like `listen`.
    pub(super) operator_listen: Option<String>,
    /// From the environment or the deployment file.
    pub(super) operator_token: Option<String>,
    /// From the environment or the deployment file.
    pub(super) passphrase: Option<String>,
    /// The `[webhook]` table, with signing keys from the environment when set there.
    pub(super) webhook: crate::deployment::WebhookSettings,
    /// The intake journal's directory.
    pub(super) journal_dir: PathBuf,
    /// Where notifications go, secrets not yet read (`vigil run` reads them).
    pub(super) notify: Vec<crate::notify::SinkSpec>,
    /// The directory of this instance's state snapshots.
    pub(super) snapshot_dir: PathBuf,
}

impl Settings {
    /// The intake journal of this instance: `INSTANCE.journal` in the journal directory, the
    /// id written with only letters, digits, `.`, `-` and `_`.
    fn journal_path(&self) -> PathBuf {
        self.journal_dir.join(format!(
            "{}.journal",
            coordination::identity::file_name_part(&self.instance)
        ))
    }
}

/// Layers the settings; `None` when a file was invalid (its diagnostics are printed).
pub(super) fn settings(args: &ServiceArgs) -> anyhow::Result<Option<Settings>> {
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
    let database_url = args
        .database_url
        .clone()
        .or(deployment.database_url)
        .unwrap_or_else(|| store::DEFAULT_DATABASE_URL.to_string());
    if let Err(error) = store::check_url(&database_url) {
        eprintln!(
            "error: {error}; set it with --database-url, VIGIL_DATABASE_URL or database_url in the deployment file"
        );
        return Ok(None);
    }
    let redis_url = args
        .redis_url
        .clone()
        .or(deployment.redis_url)
        .filter(|url| !url.is_empty());
    if let Some(redis_url) = &redis_url {
        if let Err(error) = RedisCoordinator::check_url(redis_url) {
            eprintln!("error: {error}; set it with --redis-url, VIGIL_REDIS_URL or redis_url in the deployment file");
            return Ok(None);
        }
        if database_url.starts_with("sqlite:") {
            eprintln!(
                "error: a Redis URL ({}) configures several instances, but the database {} is SQLite, which \
                 serves one instance only; use a postgres:// database for several instances, or remove \
                 --redis-url / VIGIL_REDIS_URL / redis_url to run one instance on SQLite",
                store::redact(redis_url),
                store::redact(&database_url)
            );
            return Ok(None);
        }
    }
    let mut webhook = deployment.webhook;
    let notify = deployment.notify;
    // An empty variable is no setting, as for the passphrase: the file's keys stay.
    let from_env: Vec<String> = std::env::var(SIGNATURE_KEYS_ENV)
        .unwrap_or_default()
        .split(',')
        .map(str::trim)
        .filter(|key| !key.is_empty())
        .map(str::to_string)
        .collect();
    if !from_env.is_empty() {
        if !from_env
            .iter()
            .all(|key| crate::deployment::secret_is_long_enough(key))
        {
            eprintln!(
                "error: a key in {SIGNATURE_KEYS_ENV} is shorter than {} bytes; use random keys of 32 \
                 bytes or more, for example `openssl rand -hex 32`",
                crate::deployment::MIN_SECRET_BYTES
            );
            return Ok(None);
        }
        webhook.signature_keys = from_env;
    }
    if webhook.require_signature && webhook.signature_keys.is_empty() {
        eprintln!(
            "error: [webhook] require_signature = true, but no signing key is configured; set \
             {SIGNATURE_KEYS_ENV} or webhook.signature_keys, or remove require_signature"
        );
        return Ok(None);
    }
    let operator_token = match std::env::var(OPERATOR_TOKEN_ENV) {
        Ok(token) if !token.trim().is_empty() => {
            if !crate::deployment::secret_is_long_enough(token.trim()) {
                eprintln!(
                    "error: {OPERATOR_TOKEN_ENV} is shorter than {} bytes; use a random token of 32 bytes \
                     or more, for example `openssl rand -hex 32`",
                    crate::deployment::MIN_SECRET_BYTES
                );
                return Ok(None);
            }
            Some(token.trim().to_string())
        }
        // An empty variable is no setting: the file's token stays.
        _ => deployment.operator_token,
    };
    Ok(Some(Settings {
        notify,
        database_url,
        redis_url,
        policy,
        instance: args
            .instance
            .clone()
            .or(deployment.instance)
            .unwrap_or_else(|| hostname.clone()),
        hostname,
        instruments: deployment.instruments,
        initial_capital: deployment.initial_capital,
        snapshot_dir: args
            .snapshot_dir
            .clone()
            .or(deployment.snapshot_dir)
            .or_else(|| args.journal_dir.clone())
            .or_else(|| deployment.journal_dir.clone())
            .unwrap_or_else(|| PathBuf::from(".")),
        journal_dir: args
            .journal_dir
            .clone()
            .or(deployment.journal_dir)
            .unwrap_or_else(|| PathBuf::from(".")),
        listen: deployment.listen,
        operator_listen: deployment.operator_listen,
        operator_token,
        webhook,
        passphrase: std::env::var(PASSPHRASE_ENV)
            .ok()
            .filter(|p| !p.is_empty())
            .or(deployment.webhook_passphrase),
    }))
}

pub(super) fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

/// Log lines go to standard error with wall-clock time, at the level and in the format
/// `args` choose; as text, in the format the dry-run shows.
fn init_logging(args: &ServiceArgs) {
    let options = logging::LogOptions {
        level: args.log_level.into(),
        format: args.log_format,
    };
    let subscriber = logging::subscriber_with(
        std::io::stderr,
        tracing_subscriber::fmt::time::SystemTime,
        options,
    );
    // A second call (tests running commands in one process) keeps the first subscriber.
    let _ = tracing::subscriber::set_global_default(subscriber);
}

/// `vigil migrate`.
pub fn migrate(args: &ServiceArgs) -> anyhow::Result<Outcome> {
    let Some(settings) = settings(args)? else {
        return Ok(Outcome::Invalid);
    };
    super::operate::with_store(&settings, async |_, shown| {
        super::write_stdout(format!("{shown}: schema up to date\n").as_bytes())?;
        Ok(Outcome::Ok)
    })
}

/// What a run found, for `recover --check`.
struct RunReport {
    /// The state the instance would have served in, with [`Until::Settled`].
    settled: Option<lifecycle::State>,
    /// The last recovery receipt.
    receipt: Option<Receipt>,
    /// The last failure found.
    last_error: Option<String>,
}

/// The two bound listeners of `vigil run`, and the passphrase alerts carry.
#[derive(Debug)]
struct Listeners {
    /// `POST /webhook` and `GET /health`: the one TradingView reaches.
    webhook: tokio::net::TcpListener,
    /// `/ready`, `/status`, `/metrics`: the one operators, probes and Prometheus reach.
    operator: tokio::net::TcpListener,
    /// The webhook passphrase.
    passphrase: Passphrase,
}

/// Runs the instance under the live loop until it ends and returns the exit code and what it
/// found. With `http`, both listeners serve while the instance runs.
async fn start_up(
    settings: &Settings,
    access: Access,
    until: Until,
    http: Option<Listeners>,
    redis: Option<RedisCoordinator>,
    notifier: crate::notify::Notifier,
) -> (u8, RunReport) {
    let config = ExecutorConfig {
        instance: settings.instance.clone(),
        tolerance: settings.policy.recovery.tolerance,
        instruments: settings.instruments.clone(),
        initial_capital: settings.initial_capital,
        until,
        heartbeat_interval: settings.policy.ha.heartbeat_interval,
        snapshots: Some(crate::executor::Snapshots {
            dir: settings.snapshot_dir.clone(),
            max_age: settings.policy.recovery.snapshot_max_age,
        }),
    };
    // The sender stays alive until the loop ends: a closed channel would mean "stop now".
    let (sender, mut inputs) = live::channel();
    let coordination = Coordination::new(
        redis,
        settings.policy.ha.clone(),
        &settings.instance,
        sender.clone(),
    );
    let shared = Arc::new(
        Shared::with_coordination(&settings.instance, sender.clone(), coordination)
            .with_notifier(notifier),
    );
    let broker: Arc<dyn Broker> = Arc::new(PaperBroker);
    // With no instruments listed, the built-in ones trade; recovery then recomputes nothing,
    // as it only checks terms an operator wrote down.
    let traded = if settings.instruments.is_empty() {
        default_instruments()
    } else {
        settings.instruments.clone()
    };
    let journal_mode = match access {
        Access::ReadWrite => journal::Mode::ReadWrite,
        Access::ReadOnly => journal::Mode::ReadOnly,
    };
    let journal_path = settings.journal_path();
    // The intake publishes its journal's depth as it opens: the recorder must be there.
    let _ = http::prometheus();
    let intake = Arc::new(Intake::new(
        Arc::clone(&shared),
        Arc::clone(&broker),
        traded.clone(),
        settings.policy.signals.clone(),
        journal::Journal::open(&journal_path, journal_mode),
    ));
    let database = StoreDatabase::new(
        &settings.database_url,
        access,
        InstanceRecord {
            instance_id: settings.instance.clone(),
            hostname: settings.hostname.clone(),
            started_at: Utc::now(),
        },
        Arc::clone(&shared),
    );
    let ports = Ports {
        database: Arc::new(database),
        redis: Arc::new(RedisCheck(Arc::clone(&shared))),
        broker: Arc::clone(&broker),
        shared: Arc::clone(&shared),
    };
    let mut executor = Executor::new(config, ports);
    if until == Until::Stopped {
        let supervisor = crate::supervisor::Supervisor::from_environment();
        if let Some(interval) = supervisor.watchdog_interval() {
            tracing::info!(target: "vigil::startup", "the driver loop pings systemd's watchdog every {interval:?}");
        }
        executor = executor.supervised(supervisor);
    }
    // Both listeners stop when this says `true`.
    let (stop_serving, serving_stopped) = tokio::sync::watch::channel(false);
    let servers = http.map(|listeners| {
        let Listeners {
            webhook,
            operator,
            passphrase,
        } = listeners;
        let state = Arc::new(http::AppState {
            shared: Arc::clone(&shared),
            passphrase,
            instruments: traded,
            intake: Arc::clone(&intake),
            sources: settings.webhook.sources.clone(),
            throttle: http::throttle::Throttle::for_sources(&settings.webhook.sources),
            signatures: (!settings.webhook.signature_keys.is_empty()).then(|| {
                Signatures::new(
                    settings
                        .webhook
                        .signature_keys
                        .iter()
                        .map(|key| key.as_bytes().to_vec())
                        .collect(),
                    settings.webhook.signature_tolerance,
                    settings.webhook.require_signature,
                )
            }),
            recent: std::sync::Mutex::default(),
            operator_token: settings.operator_token.as_deref().map(http::Secret::new),
        });
        let stopped = |mut stop: tokio::sync::watch::Receiver<bool>| async move {
            let _ = stop.wait_for(|stop| *stop).await;
        };
        [
            tokio::spawn(Arc::clone(&intake).run_drainer()),
            tokio::spawn(http::serve(
                webhook,
                http::webhook_app(Arc::clone(&state)),
                stopped(serving_stopped.clone()),
            )),
            tokio::spawn(http::serve(
                operator,
                http::operator_app(state),
                stopped(serving_stopped.clone()),
            )),
        ]
    });
    let (mut driver, init) =
        Driver::new(&settings.policy, &settings.instance, fastrand::Rng::new());
    if until == Until::Stopped {
        let shared = Arc::clone(&shared);
        crate::shutdown::listen(sender.clone(), settings.instance.clone(), move || {
            crate::shutdown::Left {
                in_flight: shared.in_flight.count(),
                journaled: shared.journal.borrow().pending,
            }
        })
        .await;
    }
    // A snapshot every SNAPSHOT_INTERVAL while the instance serves.
    let snapshots = (until == Until::Stopped).then(|| {
        let (shared, dir, instance) = (
            Arc::clone(&shared),
            settings.snapshot_dir.clone(),
            settings.instance.clone(),
        );
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(crate::snapshot::SNAPSHOT_INTERVAL).await;
                if let (true, Some(store)) = (shared.view().state.is_serving(), shared.store()) {
                    write_snapshot(&store, &dir, &instance).await;
                }
            }
        })
    });
    let code = live::run(
        &mut driver,
        &init,
        &mut inputs,
        &mut executor,
        &mut TokioClock::start(),
    )
    .await;
    if let Some(snapshots) = snapshots {
        snapshots.abort();
    }
    drop(sender);
    let _ = stop_serving.send(true);
    let mut servers = servers.into_iter().flatten();
    // The drainer runs until the process ends; the listeners end with `stop_serving`.
    if let Some(drainer) = servers.next() {
        drainer.abort();
    }
    // A connection that never finishes (a request stuck in flight) must not keep the process
    // alive after the stop: the listeners get a bounded time to close, then are ended.
    for mut server in servers {
        if tokio::time::timeout(LISTENERS_CLOSE_TIMEOUT, &mut server)
            .await
            .is_err()
        {
            tracing::warn!(target: "vigil::startup", instance = %settings.instance, "a listener did not close within {LISTENERS_CLOSE_TIMEOUT:?}; its connections are dropped");
            server.abort();
        }
    }
    // A graceful stop applies what the journal holds while the database still answers, and
    // leaves a snapshot of the state it stops with.
    if until == Until::Stopped && code == crate::cli::EXIT_OK {
        intake.flush(JOURNAL_FLUSH_TIMEOUT).await;
        if let Some(store) = shared.store() {
            write_snapshot(&store, &settings.snapshot_dir, &settings.instance).await;
        }
    }
    executor.close().await;
    let report = RunReport {
        settled: executor.settled(),
        receipt: executor.receipt(),
        last_error: executor.last_error(),
    };
    (code, report)
}

/// Writes a snapshot of the state, logging what became of it.
async fn write_snapshot(store: &AnyStore, dir: &std::path::Path, instance: &str) {
    match crate::snapshot::take(store, dir, instance).await {
        Ok((path, snapshot)) => tracing::info!(
            target: crate::executor::STARTUP_TARGET,
            instance = %instance,
            "wrote snapshot {} (portfolio version {})",
            path.display(),
            snapshot.portfolio_version
        ),
        Err(problem) => tracing::warn!(
            target: crate::executor::STARTUP_TARGET,
            instance = %instance,
            "no snapshot written: {problem}"
        ),
    }
}

/// The passphrase from settings, or the one generated at first start (kept in
/// [`PASSPHRASE_FILE`]). Returns whether it was configured rather than generated.
fn passphrase(settings: &Settings) -> anyhow::Result<(Passphrase, bool)> {
    if let Some(configured) = &settings.passphrase {
        return Ok((Passphrase::new(configured), true));
    }
    if let Ok(kept) = std::fs::read_to_string(PASSPHRASE_FILE) {
        if !kept.trim().is_empty() {
            return Ok((Passphrase::new(kept.trim()), false));
        }
    }
    let mut bytes = [0_u8; GENERATED_PASSPHRASE_BYTES];
    getrandom::fill(&mut bytes)
        .map_err(|error| anyhow::anyhow!("cannot generate a passphrase: {error}"))?;
    let generated = hex::encode(bytes);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(PASSPHRASE_FILE)
        .with_context(|| format!("cannot create {PASSPHRASE_FILE}"))?;
    std::io::Write::write_all(&mut file, format!("{generated}\n").as_bytes())
        .with_context(|| format!("cannot write {PASSPHRASE_FILE}"))?;
    eprintln!(
        "vigil: no webhook passphrase was configured, so one was generated and saved in ./{PASSPHRASE_FILE} \
         (readable only by you). Put it in your TradingView alerts as \"passphrase\", or configure your own with \
         {PASSPHRASE_ENV} or webhook_passphrase in the deployment file."
    );
    Ok((Passphrase::new(&generated), false))
}

/// `vigil run`.
pub fn run(args: &RunArgs) -> anyhow::Result<Outcome> {
    let Some(settings) = settings(&args.service)? else {
        return Ok(Outcome::Invalid);
    };
    let Some(address) = listen_address(
        args.listen.as_ref().or(settings.listen.as_ref()),
        DEFAULT_LISTEN,
        "listen",
    ) else {
        return Ok(Outcome::Invalid);
    };
    let Some(operator_address) = listen_address(
        args.operator_listen
            .as_ref()
            .or(settings.operator_listen.as_ref()),
        DEFAULT_OPERATOR_LISTEN,
        "operator listen",
    ) else {
        return Ok(Outcome::Invalid);
    };
    if !address.ip().is_loopback() && settings.passphrase.is_none() {
        eprintln!(
            "error: refusing to listen on {address} without a configured webhook passphrase; set {PASSPHRASE_ENV} \
             or webhook_passphrase in the deployment file, or listen on 127.0.0.1"
        );
        return Ok(Outcome::Invalid);
    }
    if !operator_address.ip().is_loopback() && settings.operator_token.is_none() {
        eprintln!(
            "error: refusing to serve the operator endpoints on {operator_address} without an operator token; \
             set {OPERATOR_TOKEN_ENV} (for example to the output of `openssl rand -hex 32`) or operator_token in \
             the deployment file, or use --operator-listen 127.0.0.1:8081"
        );
        return Ok(Outcome::Invalid);
    }
    if operator_address == address && address.port() != 0 {
        eprintln!(
            "error: the webhook and the operator endpoints cannot share {address}; give --operator-listen \
             (VIGIL_OPERATOR_LISTEN, operator_listen) another port, for example {DEFAULT_OPERATOR_LISTEN}"
        );
        return Ok(Outcome::Invalid);
    }
    let (passphrase, _) = passphrase(&settings)?;
    init_logging(&args.service);
    tracing::info!(
        target: crate::executor::STARTUP_TARGET,
        instance = %settings.instance,
        "starting with database {}, {} and policy {}",
        store::redact(&settings.database_url),
        settings.redis_url.as_deref().map_or("no redis".to_string(), |url| format!("redis {}", store::redact(url))),
        settings.policy.name
    );
    for parameter in store::ignored_url_parameters(&settings.database_url) {
        tracing::warn!(
            target: crate::executor::STARTUP_TARGET,
            instance = %settings.instance,
            "the database URL's parameter {parameter:?} is not one the PostgreSQL driver reads; it is ignored"
        );
    }
    for warning in &settings.policy.warnings {
        tracing::warn!(
            target: crate::executor::STARTUP_TARGET,
            instance = %settings.instance,
            "policy {}:{}:{}: {}",
            warning.path.display(),
            warning.line,
            warning.column,
            warning.message
        );
    }
    let runtime = runtime()?;
    let mut sinks = Vec::new();
    for spec in &settings.notify {
        match spec.resolve(&|name| std::env::var(name).ok()) {
            Ok(sink) => sinks.push(sink),
            Err(problem) => {
                eprintln!("error: {problem}; set it, or remove the sink from the deployment file");
                return Ok(Outcome::Invalid);
            }
        }
    }
    let notifier = {
        let _inside = runtime.enter();
        crate::notify::Notifier::start(&settings.instance, sinks)
    };
    // The connection is made lazily, so Redis being down at start is the policy's to answer;
    // only a URL that cannot be used stops the start here.
    let redis = match &settings.redis_url {
        None => None,
        Some(url) => match runtime
            .block_on(async { RedisCoordinator::connect(url, coordination::DEFAULT_NAMESPACE) })
        {
            Ok(redis) => Some(redis),
            Err(error) => {
                eprintln!("error: {error}");
                return Ok(Outcome::Invalid);
            }
        },
    };
    // Before the journal is opened and before anything listens: a second process under a
    // live instance's id would share its journal, heartbeat and leadership row.
    // The host lock is held until the process ends.
    let lock_path = coordination::identity::host_lock_path(
        &std::env::temp_dir(),
        &settings.instance,
        &store::database_identity(&settings.database_url),
    );
    let refuse = |held: coordination::identity::Held| {
        tracing::error!(target: crate::executor::STARTUP_TARGET, instance = %settings.instance, "{held}");
        eprintln!("error: {held}");
        Ok(Outcome::Exit(EXIT_ID_HELD))
    };
    let host_lock = match coordination::identity::lock_on_this_host(&settings.instance, &lock_path)
    {
        Ok(lock) => lock,
        Err(held) => return refuse(held),
    };
    if host_lock.is_none() {
        tracing::warn!(
            target: crate::executor::STARTUP_TARGET,
            instance = %settings.instance,
            "cannot lock {}: a second process under this id on this host would not be refused",
            lock_path.display()
        );
    }
    if let Some(held) = runtime.block_on(id_held(&settings)) {
        return refuse(held);
    }
    if !runtime.block_on(start_admitted(&settings, &notifier)) {
        return Ok(Outcome::Exit(EXIT_RESTARTS_SPENT));
    }
    let bind = |address: std::net::SocketAddr| {
        runtime
            .block_on(tokio::net::TcpListener::bind(address))
            .with_context(|| format!("cannot listen on {address}"))
    };
    let webhook = bind(address)?;
    let operator = bind(operator_address)?;
    // The bound addresses, which differ from the asked ones for port 0.
    let bound = webhook.local_addr().unwrap_or(address);
    let operator_bound = operator.local_addr().unwrap_or(operator_address);
    tracing::info!(target: crate::executor::STARTUP_TARGET, instance = %settings.instance, "listening on http://{bound} for webhooks");
    tracing::info!(
        target: crate::executor::STARTUP_TARGET,
        instance = %settings.instance,
        "operator endpoints on http://{operator_bound} ({})",
        if settings.operator_token.is_some() { "bearer token required" } else { "no token" }
    );
    let listeners = Listeners {
        webhook,
        operator,
        passphrase,
    };
    let (code, _) = runtime.block_on(start_up(
        &settings,
        Access::ReadWrite,
        Until::Stopped,
        Some(listeners),
        redis,
        notifier,
    ));
    // The stop is done; a task still stuck (a request wedged in flight) must not hold the
    // process: the runtime gets a bound to wind down, then is left behind.
    runtime.shutdown_timeout(RUNTIME_SHUTDOWN_TIMEOUT);
    drop(host_lock);
    Ok(Outcome::Exit(code))
}

/// Which other live process holds the instance id (`None`: none, or the database
/// could not tell within [`ID_CHECK_TIMEOUT`], which is logged).
async fn id_held(settings: &Settings) -> Option<coordination::identity::Held> {
    use coordination::identity;
    // A new SQLite file holds no rows; it is created by the start itself.
    if store::missing_sqlite_file(&settings.database_url).is_some() {
        return None;
    }
    let heartbeat_interval = settings.policy.ha.heartbeat_interval;
    let verdict = async {
        let store = tokio::time::timeout(
            ID_CHECK_TIMEOUT,
            AnyStore::connect(&settings.database_url, Access::ReadOnly),
        )
        .await
        .map_err(|_| {
            format!(
                "no connection within {}",
                humantime::format_duration(ID_CHECK_TIMEOUT)
            )
        })?
        .map_err(|error| error.to_string())?;
        let verdict = identity::check(
            &store,
            &settings.instance,
            &settings.hostname,
            heartbeat_interval,
            Utc::now(),
        )
        .await
        .map_err(|error| error.to_string());
        store.close().await;
        verdict
    }
    .await;
    match verdict {
        Ok(held) => held,
        Err(why) => {
            tracing::warn!(
                target: crate::executor::STARTUP_TARGET,
                instance = %settings.instance,
                "could not check that no other live process holds instance id {:?} ({why}); starting",
                settings.instance
            );
            None
        }
    }
}

/// Records this start against the restart budget; `false` when the budget is spent and the
/// start must not go on (logged, with what to do). A database that does not answer within
/// [`ID_CHECK_TIMEOUT`] cannot be asked: the start goes on, and says so.
async fn start_admitted(settings: &Settings, notifier: &crate::notify::Notifier) -> bool {
    let instance = &settings.instance;
    let admission = async {
        let store = tokio::time::timeout(
            ID_CHECK_TIMEOUT,
            AnyStore::connect(&settings.database_url, Access::ReadWrite),
        )
        .await
        .map_err(|_| "no connection in time".to_string())?
        .map_err(|error| error.to_string())?;
        let admitted = tokio::time::timeout(ID_CHECK_TIMEOUT, async {
            store.migrate().await?;
            crate::restarts::admit(
                &store,
                instance,
                &settings.hostname,
                &settings.policy.restarts,
                Utc::now(),
            )
            .await
        })
        .await
        .map_err(|_| "no answer in time".to_string())
        .and_then(|admitted| admitted.map_err(|error| error.to_string()));
        store.close().await;
        admitted
    }
    .await;
    match admission {
        Ok(crate::restarts::Admission::Admitted { previous, usage }) => {
            let budget = crate::restarts::describe(&usage);
            match previous.is_unclean() {
                true => {
                    tracing::warn!(target: crate::executor::STARTUP_TARGET, instance = %instance, "restarting after the previous run {}; restart budget: {budget}", previous.as_str())
                }
                false => {
                    tracing::info!(target: crate::executor::STARTUP_TARGET, instance = %instance, "restart budget: {budget}")
                }
            }
            true
        }
        Ok(crate::restarts::Admission::Refused { previous, usage }) => {
            let message = crate::restarts::refusal(previous, &usage);
            tracing::error!(target: crate::executor::STARTUP_TARGET, instance = %instance, "{message}");
            eprintln!("error: {message}");
            notifier.notify(crate::notify::Event::RestartBudgetSpent, message);
            notifier.flush(crate::notify::NOTIFY_FLUSH_TIMEOUT).await;
            false
        }
        Err(why) => {
            tracing::warn!(target: crate::executor::STARTUP_TARGET, instance = %instance, "could not check the restart budget ({why}); starting");
            true
        }
    }
}

/// The address a listener binds: `given`, or `default`; `None` (with the error printed) when
/// it is not HOST:PORT with a numeric host. `what` names the setting in the error.
fn listen_address(
    given: Option<&String>,
    default: &str,
    what: &str,
) -> Option<std::net::SocketAddr> {
    let text = given.map_or(default, String::as_str);
    match text.parse() {
        Ok(address) => Some(address),
        Err(_) => {
            eprintln!(
                "error: {what} address {text:?} is not HOST:PORT with a numeric host, for example {default}"
            );
            None
        }
    }
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
    /// What `vigil run` would do first, when that decides the outcome (a database file it
    /// would create).
    #[serde(skip_serializing_if = "Option::is_none")]
    note: Option<String>,
}

/// `vigil recover --check`.
pub fn recover_check(
    args: &ServiceArgs,
    format: crate::dry_run::Format,
) -> anyhow::Result<Outcome> {
    let Some(settings) = settings(args)? else {
        return Ok(Outcome::Invalid);
    };
    let journal_readable =
        journal::Journal::open(&settings.journal_path(), journal::Mode::ReadOnly).is_ok();
    if let (Some(file), true) = (
        store::missing_sqlite_file(&settings.database_url),
        journal_readable,
    ) {
        // `vigil run` creates the file and recovers an empty database clean; its journal's
        // alerts are then applied like any others.
        let report = CheckReport {
            state: "active",
            exit_code: 0,
            receipt: None,
            error: None,
            note: Some(format!(
                "no database file at {}: `vigil run` would create it, empty, and an empty database recovers clean",
                file.display()
            )),
        };
        return print_check(&report, format);
    }
    if journal_readable && database_is_blank(&settings.database_url)? {
        // `vigil run` migrates a new database, and an empty one recovers clean.
        let report = CheckReport {
            state: "active",
            exit_code: 0,
            receipt: None,
            error: None,
            note: Some(
                "the database holds nothing of vigil's yet: `vigil run` would create its tables, and an empty database recovers clean"
                    .into(),
            ),
        };
        return print_check(&report, format);
    }
    init_logging(args);
    let (code, found) = runtime()?.block_on(start_up(
        &settings,
        Access::ReadOnly,
        Until::Settled,
        None,
        None,
        crate::notify::Notifier::none(),
    ));
    let (state, exit_code) = match found.settled {
        Some(lifecycle::State::Active {}) => ("active", 0),
        Some(state) => (state.name(), EXIT_DEGRADED),
        None => ("crashed", code),
    };
    let error = match (&found.receipt, &found.last_error) {
        (None, Some(error)) => Some(error.clone()),
        _ => None,
    };
    let report = CheckReport {
        state,
        exit_code,
        receipt: found.receipt.as_ref(),
        error,
        note: None,
    };
    print_check(&report, format)
}

/// Whether the database at `url` answers and holds nothing of vigil's; a database that
/// cannot be asked is left to the start-up to report.
fn database_is_blank(url: &str) -> anyhow::Result<bool> {
    Ok(runtime()?.block_on(async {
        let Ok(store) = AnyStore::connect(url, Access::ReadOnly).await else {
            return false;
        };
        let blank = store.footprint().await.is_ok_and(Footprint::is_blank);
        store.close().await;
        blank
    }))
}

/// Prints `report` in `format`; the outcome is its exit code.
fn print_check(
    report: &CheckReport<'_>,
    format: crate::dry_run::Format,
) -> anyhow::Result<Outcome> {
    let CheckReport {
        state, exit_code, ..
    } = *report;
    let text = match format {
        crate::dry_run::Format::Json => {
            serde_json::to_string_pretty(&report).context("cannot encode the report")? + "\n"
        }
        crate::dry_run::Format::Text => {
            let mut text = match (&report.receipt, &report.error, &report.note) {
                (Some(receipt), _, _) => format!("{receipt}\n"),
                (None, Some(error), _) => format!("no receipt: {error}\n"),
                (None, None, Some(note)) => format!("{note}\n"),
                (None, None, None) => "no receipt\n".to_string(),
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

/// This host's intake journal of the instance, as `vigil status` shows it.
#[derive(Debug, serde::Serialize)]
struct HostJournal {
    /// The journal file.
    path: String,
    /// Alerts recorded there and not yet moved into the database.
    pending: usize,
    /// Why it cannot be read (a damaged record), if it cannot.
    #[serde(skip_serializing_if = "Option::is_none")]
    problem: Option<String>,
}

/// `vigil positions`: the open positions, as `GET /positions` lists them.
pub fn positions(args: &ServiceArgs, format: crate::dry_run::Format) -> anyhow::Result<Outcome> {
    let Some(settings) = settings(args)? else {
        return Ok(Outcome::Invalid);
    };
    let shown = store::redact(&settings.database_url);
    let (positions, truncated) = runtime()?.block_on(async {
        let store = AnyStore::connect(&settings.database_url, Access::ReadOnly)
            .await
            .with_context(|| format!("cannot open {shown}"))?;
        let listed = store::open_positions(&store).await.with_context(|| {
            format!("cannot list the open positions in {shown}; `vigil recover --check` reports what is wrong")
        });
        store.close().await;
        listed
    })?;
    let page = crate::positions::PositionsPage::new(positions, truncated);
    let text = match format {
        crate::dry_run::Format::Json => {
            serde_json::to_string_pretty(&page).context("cannot encode the positions")? + "\n"
        }
        crate::dry_run::Format::Text => page.text(),
    };
    super::write_stdout(text.as_bytes())?;
    Ok(Outcome::Ok)
}

/// `vigil status`: the instances the database knows, with their last status and heartbeat,
/// and this host's intake journal of the instance.
pub fn status(args: &ServiceArgs, format: crate::dry_run::Format) -> anyhow::Result<Outcome> {
    let Some(settings) = settings(args)? else {
        return Ok(Outcome::Invalid);
    };
    let shown = store::redact(&settings.database_url);
    let (rows, switch, budget) = runtime()?.block_on(async {
        let store = AnyStore::connect(&settings.database_url, Access::ReadOnly)
            .await
            .with_context(|| format!("cannot open {shown}"))?;
        let rows = store
            .instances(Utc::now())
            .await
            .with_context(|| format!("cannot read the instances in {shown}"));
        // A database an older vigil wrote has neither yet: `vigil migrate` adds them.
        let switch = store
            .pause_switch()
            .await
            .map_err(|error| error.to_string());
        let budget = crate::restarts::usage(&store, &settings.policy.restarts, Utc::now())
            .await
            .map_err(|error| error.to_string());
        store.close().await;
        rows.map(|rows| (rows, switch, budget))
    })?;
    let views = instance_views(rows, Utc::now(), settings.policy.ha.instance_stale_after);
    // This host's journal of the instance.
    let path = settings.journal_path();
    let journal = match journal::Journal::open(&path, journal::Mode::ReadOnly) {
        Ok(opened) => HostJournal {
            path: path.display().to_string(),
            pending: opened.pending.len(),
            problem: None,
        },
        Err(error) => HostJournal {
            path: path.display().to_string(),
            pending: 0,
            problem: Some(error.to_string()),
        },
    };
    let text = match format {
        crate::dry_run::Format::Json => {
            let status = serde_json::json!({
                "instances": views,
                "journal": journal,
                "pause": switch.as_ref().ok(),
                "restarts": budget.as_ref().ok().map(|usage| serde_json::json!({
                    "counted": usage.counted,
                    "max": usage.max,
                    "window_s": usage.window_s,
                    "spent": usage.spent(),
                    "by_instance": usage.by_instance,
                })),
            });
            serde_json::to_string_pretty(&status).context("cannot encode the instances")? + "\n"
        }
        crate::dry_run::Format::Text => {
            let mut text = format!(
                "{:<20} {:<11} {:<6} {:<20} {:>14}\n",
                "INSTANCE", "STATUS", "LEADER", "HOST", "HEARTBEAT AGE"
            );
            for view in &views {
                let age = view.heartbeat_age_ms.map_or("unknown".to_string(), |ms| {
                    crate::machines::format_seconds(u128::try_from(ms).unwrap_or(0))
                });
                let stale = if view.stale { "  stale" } else { "" };
                text.push_str(&format!(
                    "{:<20} {:<11} {:<6} {:<20} {:>14}{stale}\n",
                    view.row.instance_id,
                    view.row.status,
                    if view.row.leader { "yes" } else { "no" },
                    view.row.hostname,
                    age
                ));
            }
            if views.is_empty() {
                text.push_str("(no instance has started against this database)\n");
            }
            text.push_str(&match &switch {
                Ok(switch) if switch.pause == Pause::None => {
                    "kill switch: off (trading)\n".to_string()
                }
                Ok(switch) => format!(
                    "kill switch: {} since {} by {}{}; `vigil resume` lifts it\n",
                    match switch.pause {
                        Pause::ExitsOnly => "paused except exits",
                        _ => "paused",
                    },
                    switch.changed_at.as_deref().unwrap_or("?"),
                    switch.changed_by,
                    match switch.reason.is_empty() {
                        true => String::new(),
                        false => format!(" ({})", switch.reason),
                    }
                ),
                Err(why) => format!("kill switch: cannot be read ({why})\n"),
            });
            text.push_str(&match &budget {
                Ok(usage) if usage.spent() => format!(
                    "restart budget: spent, {}; the next start after an unclean end is refused (exit {EXIT_RESTARTS_SPENT}) until `vigil restarts reset`\n",
                    crate::restarts::describe(usage)
                ),
                Ok(usage) => format!("restart budget: {}\n", crate::restarts::describe(usage)),
                Err(why) => format!("restart budget: cannot be read ({why})\n"),
            });
            // The journal, when it holds anything.
            match (&journal.problem, journal.pending) {
                (Some(problem), _) => {
                    text.push_str(&format!("journal {}: {problem}\n", journal.path));
                }
                (None, 0) => {}
                (None, pending) => text.push_str(&format!(
                    "journal {}: {pending} alerts not yet in the database; the instance moves them there once it runs and the database answers\n",
                    journal.path,
                )),
            }
            text
        }
    };
    super::write_stdout(text.as_bytes())?;
    Ok(Outcome::Ok)
}
