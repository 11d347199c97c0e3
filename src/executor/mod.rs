//! The executor: carries out the machines' commands in the real world. It is one exhaustive
//! `match` over [`Command`] ([`Executor::execute`]) and holds no lifecycle state of its own:
//! what it keeps are resources (the status writer, the handles of the tasks it started) and
//! what it found (the last receipt, the last error), never where the instance is in its
//! life. Every decision, including when to retry, what to probe and when to stop probing, is
//! the machines'.
//!
//! Where each command is carried out:
//! - `publish`: at once, in memory ([`Shared::lifecycle`]), before any I/O of the step;
//! - `record_status`: by the status writer task, each write bounded by
//!   [`STATUS_WRITE_TIMEOUT`], newest status first; `exit` waits for it at most
//!   [`STATUS_FLUSH_TIMEOUT`];
//! - `connect`, `recover`: inline, bounded by [`OPEN_TIMEOUT`] and [`RECOVERY_TIMEOUT`];
//!   their outcome is the machines' next input;
//! - `probe`: inline, routed by failure kind: a database ping, a Redis ping, a broker
//!   health check, or a re-run of recovery, each but recovery bounded by [`PROBE_TIMEOUT`];
//! - `watch`/`unwatch`: a background task asking the same probe every [`WATCH_INTERVAL`];
//! - `serve`: starts the pulse (Redis heartbeat, leader lease) once, and the database
//!   heartbeat while the command asks for it;
//! - `drain`: stops the watches and the heartbeat, waits for the signals in flight
//!   ([`DRAIN_TIMEOUT`]) and the lease's release ([`LEASE_RELEASE_TIMEOUT`]), then reports
//!   `drained` through the input channel, behind any failure reported meanwhile;
//! - `exit`: waits for the lease's release and the final status write, each bounded;
//! - `schedule_retry`, `cancel_retry`: nothing here; the driver keeps the timers.

pub mod ports;

use crate::broker::Broker;
use crate::coordination::leader::{self, LeaderTasks};
use crate::domain::Instrument;
use crate::driver::live;
use crate::driver::{Input, Step};
use crate::machines::{lifecycle, Command};
use crate::recovery::{self, Receipt};
use crate::shared::{LifecycleView, RecentTransition, Shared};
use crate::store::StoreError;
use crate::supervisor::Supervisor;
use crate::vocabulary::FailureKind;
use chrono::Utc;
use ports::{Database, HealthCheck, Watched};
use rust_decimal::Decimal;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// How often a watch asks whether a tolerated failure has ended.
pub const WATCH_INTERVAL: Duration = Duration::from_secs(5);

/// How long a heartbeat may take before the database counts as unavailable.
pub const DB_PING_TIMEOUT: Duration = Duration::from_secs(1);

/// How long a probe of the database, Redis or the broker may take before it counts as
/// failed.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// How long opening and migrating the database may take before it counts as unavailable.
pub const OPEN_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a recovery (or a probe's re-run of it) may take before the database counts as
/// unavailable: it reads the whole state, 100,000 positions in well under a second.
pub const RECOVERY_TIMEOUT: Duration = Duration::from_secs(30);

/// How long one status write may take; past it the write is given up and logged.
pub const STATUS_WRITE_TIMEOUT: Duration = Duration::from_secs(1);

/// How long exiting waits for the final status to be written.
pub const STATUS_FLUSH_TIMEOUT: Duration = Duration::from_millis(500);

/// How long shutdown waits for signals in flight.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// How long shutdown waits for the pulse to give up the leader lease.
pub const LEASE_RELEASE_TIMEOUT: Duration = Duration::from_secs(1);

/// The `tracing` target of start-up and recovery log lines.
pub const STARTUP_TARGET: &str = "vigil::startup";

/// When a run ends by itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Until {
    /// Keep serving until asked to stop (`vigil run`).
    Stopped,
    /// Stop as soon as the instance would serve (`vigil recover --check`).
    Settled,
}

/// The executor's settings.
#[derive(Debug, Clone)]
pub struct ExecutorConfig {
    /// The instance id, for log lines.
    pub instance: String,
    /// The policy's consistency tolerance.
    pub tolerance: Decimal,
    /// The deployment's instruments.
    pub instruments: BTreeMap<String, Instrument>,
    /// The deployment's initial capital: the portfolio row is created with it, and recovery
    /// holds the stored one to it.
    pub initial_capital: Option<Decimal>,
    /// When the run ends by itself.
    pub until: Until,
    /// How often a serving instance refreshes its database heartbeat (the policy's
    /// `ha.heartbeat_interval`); each refresh is also the check that the database answers.
    pub heartbeat_interval: Duration,
    /// This instance's state snapshots: the newest valid one is recovery's witness
    /// ([`crate::snapshot`]); `None`: no witness.
    pub snapshots: Option<Snapshots>,
}

/// Where the witness comes from, and how old it may be before the receipt flags it.
#[derive(Debug, Clone)]
pub struct Snapshots {
    /// The snapshot directory.
    pub dir: std::path::PathBuf,
    /// The policy's `[recovery] snapshot_max_age`.
    pub max_age: Duration,
}

/// What the executor carries commands out against.
#[derive(Debug, Clone)]
pub struct Ports {
    /// The database.
    pub database: Arc<dyn Database>,
    /// Redis (answers `Ok` when none is configured).
    pub redis: Arc<dyn HealthCheck>,
    /// The broker.
    pub broker: Arc<dyn Broker>,
    /// What the HTTP layer reads, and the machines' input channel.
    pub shared: Arc<Shared>,
}

/// A failure a command or probe found.
#[derive(Debug)]
struct Found {
    /// Its kind, as the machines hear it.
    kind: FailureKind,
    /// What happened, for the log and `recover --check`.
    message: String,
}

impl From<StoreError> for Found {
    fn from(error: StoreError) -> Found {
        Found {
            kind: error.kind(),
            message: error.to_string(),
        }
    }
}

/// Whether a command's findings are logged: yes when the machines asked, no for a watch
/// asking again every few seconds during a long outage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Loud {
    Yes,
    No,
}

/// What probes, watches and start-up share; spawned watches hold it too.
#[derive(Debug)]
struct Context {
    /// Settings.
    config: ExecutorConfig,
    /// What commands are carried out against.
    ports: Ports,
    /// The state the last clean recovery rebuilt.
    state: Mutex<Option<recovery::State>>,
    /// The last failure found, for reports when no receipt was produced.
    last_error: Mutex<Option<String>>,
}

impl Context {
    fn shared(&self) -> &Shared {
        &self.ports.shared
    }

    fn instance(&self) -> &str {
        &self.config.instance
    }

    /// Logs a failure (when loud), remembers it and turns it into the machines' input.
    fn failed(&self, found: Found, loud: Loud) -> Input {
        if loud == Loud::Yes {
            tracing::warn!(target: STARTUP_TARGET, instance = %self.instance(), kind = %found.kind, "{}", found.message);
        }
        *self
            .last_error
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(found.message);
        Input::Failure(found.kind)
    }

    async fn connect(&self) -> Input {
        match within(OPEN_TIMEOUT, self.ports.database.open()).await {
            Ok(()) => self.started().await,
            Err(found) => self.failed(found, Loud::Yes),
        }
    }

    /// Start-up finished. When the operator's switch holds trading, the machines hear the
    /// pause first (`starting` remembers it) and `started` right after, so the instance goes
    /// from recovery straight to `paused`, never `active` in between. A switch that cannot be
    /// read here is read again by recovery, which fails loudly on it.
    async fn started(&self) -> Input {
        if self.config.until == Until::Settled {
            return Input::Started;
        }
        match tokio::time::timeout(PROBE_TIMEOUT, self.ports.database.pause()).await {
            Ok(Ok(pause)) if pause != crate::store::operations::Pause::None => {
                self.shared().pause.send_replace(pause);
                match self.shared().inputs.try_send(Input::Started) {
                    Ok(()) => pause.input(),
                    // A full queue: start-up goes on, and recovery reads the switch again.
                    Err(_) => Input::Started,
                }
            }
            _ => Input::Started,
        }
    }

    /// Runs recovery: open (and migrate) if needed, read, rebuild, validate, publish the
    /// receipt.
    async fn recover(&self, loud: Loud) -> Input {
        if let Err(found) = within(OPEN_TIMEOUT, self.ports.database.open()).await {
            return self.failed(found, loud);
        }
        let started = Instant::now();
        let rows = match within(RECOVERY_TIMEOUT, self.ports.database.load_recovery_rows()).await {
            Ok(rows) => rows,
            Err(found) => return self.failed(found, loud),
        };
        let stored_version = rows.portfolio.as_ref().map(|row| row.version);
        let terms = recovery::Terms {
            tolerance: self.config.tolerance,
            instruments: &self.config.instruments,
            initial_capital: self.config.initial_capital,
        };
        let (mut state, receipt) = recovery::recover(rows, &terms);
        let witness = self.witness(loud);
        // A database behind the witness (a wrong, new one) is left as it is found.
        let behind = witness
            .as_ref()
            .is_some_and(|witness| stored_version.unwrap_or(0) < witness.portfolio_version);
        if let (Some(capital), Some(recovered)) = (self.config.initial_capital, &mut state) {
            if receipt.failure().is_none() && recovered.portfolio.is_none() && !behind {
                // A new database: its portfolio starts from the deployment's capital.
                if let Err(found) =
                    within(OPEN_TIMEOUT, self.ports.database.create_portfolio(capital)).await
                {
                    return self.failed(found, loud);
                }
                recovered.portfolio = Some(crate::domain::Portfolio::fresh(capital));
            }
        }
        let journal = self.shared().journal.borrow().clone();
        let mut receipt = receipt
            .with_journal(journal.pending, journal.problem.as_deref())
            .with_witness(stored_version, witness.as_ref());
        receipt.duration_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        let instance = self.instance();
        let failure = receipt.failure();
        if loud == Loud::Yes {
            match failure {
                None => {
                    tracing::info!(target: STARTUP_TARGET, instance = %instance, "{}", receipt.summary())
                }
                Some(_) => {
                    tracing::error!(target: STARTUP_TARGET, instance = %instance, "{}", receipt.summary());
                    self.shared()
                        .notifier
                        .notify(crate::notify::Event::ReceiptFailed, receipt.summary());
                    for check in receipt.checks.iter().filter(|check| !check.passed) {
                        tracing::error!(target: STARTUP_TARGET, instance = %instance, check = check.name, "{}", check.detail);
                    }
                }
            }
        }
        self.shared().receipt.send_replace(Some(receipt));
        // Before the instance serves: an instance the operator paused never applies an alert
        // it holds back, whatever the lifecycle has heard yet. A read-only check predicts
        // recovery, not the switch.
        if failure.is_none() && self.config.until == Until::Stopped {
            match within(PROBE_TIMEOUT, self.ports.database.pause()).await {
                Ok(pause) => self.shared().heard_pause(pause),
                Err(found) => return self.failed(found, loud),
            }
        }
        match failure {
            None => {
                *self
                    .last_error
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner) = None;
                *self.state.lock().unwrap_or_else(PoisonError::into_inner) = state;
                Input::Recovered
            }
            Some(kind) => Input::Failure(kind),
        }
    }

    /// The newest valid snapshot of this instance, recovery's witness; newer files that do
    /// not read are logged (when loud) and passed over.
    fn witness(&self, loud: Loud) -> Option<recovery::Witness> {
        let snapshots = self.config.snapshots.as_ref()?;
        match crate::snapshot::newest_valid(&snapshots.dir, self.instance()) {
            Ok(crate::snapshot::Found {
                newest: found,
                skipped,
            }) => {
                if loud == Loud::Yes {
                    for problem in &skipped {
                        tracing::warn!(target: STARTUP_TARGET, instance = %self.instance(), "snapshot passed over: {problem}");
                    }
                }
                found.map(|(path, snapshot)| {
                    // A time that does not parse (a file from elsewhere) is not flagged.
                    let age_s = chrono::DateTime::parse_from_rfc3339(&snapshot.written_at)
                        .ok()
                        .and_then(|at| (Utc::now() - at.with_timezone(&Utc)).to_std().ok())
                        .map(|age| age.as_secs());
                    let max_age_s = snapshots.max_age.as_secs();
                    recovery::Witness {
                        file: path.display().to_string(),
                        written_at: snapshot.written_at,
                        portfolio_version: snapshot.portfolio_version,
                        skipped: skipped.len(),
                        stale: age_s
                            .filter(|age_s| *age_s > max_age_s)
                            .map(|age_s| (age_s, max_age_s)),
                    }
                })
            }
            Err(problem) => {
                if loud == Loud::Yes {
                    tracing::warn!(target: STARTUP_TARGET, instance = %self.instance(), "no snapshot witness: {problem}");
                }
                None
            }
        }
    }

    /// Asks whether `kind` has ended, of the one probe that can tell. The outcome always
    /// answers `kind`: a probe that finds another failure (a re-run of recovery finding the
    /// database gone) fails for `kind`, and, when the machines asked, reports the other
    /// failure besides, after this outcome.
    async fn probe(&self, kind: FailureKind, loud: Loud) -> Input {
        match self.ask(kind, loud).await {
            Input::Failure(found) if found != kind => {
                if loud == Loud::Yes {
                    // A full queue means the machines have news already; the failure is
                    // found again by the next probe that meets it.
                    let _ = self.shared().inputs.try_send(Input::Failure(found));
                }
                Input::Failure(kind)
            }
            outcome => outcome,
        }
    }

    async fn ask(&self, kind: FailureKind, loud: Loud) -> Input {
        let answer = match kind {
            FailureKind::DbUnavailable => within(PROBE_TIMEOUT, self.ports.database.ping()).await,
            FailureKind::RedisUnavailable => {
                bounded(PROBE_TIMEOUT, kind, self.ports.redis.check(), |message| {
                    Found { kind, message }
                })
                .await
            }
            FailureKind::BrokerUnavailable => {
                bounded(PROBE_TIMEOUT, kind, self.ports.broker.health(), |error| {
                    Found {
                        kind,
                        message: error.to_string(),
                    }
                })
                .await
            }
            // Only recovery can tell whether stored state is sound again.
            FailureKind::DataCorrupt | FailureKind::ValidationFailed | FailureKind::Unexpected => {
                return self.recover(loud).await
            }
        };
        match answer {
            Ok(()) => Input::Restored(kind),
            Err(found) => self.failed(found, loud),
        }
    }
}

/// Runs a database step within `bound`; past it the database counts as unavailable.
async fn within<T>(
    bound: Duration,
    step: impl std::future::Future<Output = Result<T, StoreError>>,
) -> Result<T, Found> {
    bounded(bound, FailureKind::DbUnavailable, step, Found::from).await
}

/// Runs `step` within `bound`; an error becomes a [`Found`] through `found`, and no answer
/// in time is a failure of `kind`.
async fn bounded<T, E>(
    bound: Duration,
    kind: FailureKind,
    step: impl std::future::Future<Output = Result<T, E>>,
    found: impl FnOnce(E) -> Found,
) -> Result<T, Found> {
    match tokio::time::timeout(bound, step).await {
        Ok(answer) => answer.map_err(found),
        Err(_) => Err(Found {
            kind,
            message: format!("{kind}: no answer within {bound:?}"),
        }),
    }
}

/// Writes statuses in the background, newest first, each write bounded: a dead database
/// delays no step.
#[derive(Debug)]
struct StatusWriter {
    /// The status wanted, with a generation that grows with every request.
    wanted: watch::Sender<(u64, Option<lifecycle::State>)>,
    /// The generation last written (or given up).
    written: watch::Receiver<u64>,
    /// The writer task.
    task: JoinHandle<()>,
}

impl StatusWriter {
    fn start(database: Arc<dyn Database>, instance: String) -> StatusWriter {
        let (wanted, mut requests) = watch::channel((0, None));
        let (done, written) = watch::channel(0);
        let task = tokio::spawn(async move {
            while requests.changed().await.is_ok() {
                let (generation, status) = *requests.borrow_and_update();
                if let Some(status) = status {
                    let write =
                        tokio::time::timeout(STATUS_WRITE_TIMEOUT, database.record_status(status));
                    let problem = match write.await {
                        Ok(Ok(())) => None,
                        Ok(Err(error)) => Some(error.to_string()),
                        Err(_) => Some(format!("no answer within {STATUS_WRITE_TIMEOUT:?}")),
                    };
                    if let Some(problem) = problem {
                        tracing::warn!(target: STARTUP_TARGET, instance = %instance, "cannot record status {}: {problem}", status.name());
                    }
                }
                done.send_replace(generation);
            }
        });
        StatusWriter {
            wanted,
            written,
            task,
        }
    }

    fn want(&self, status: lifecycle::State) {
        self.wanted.send_modify(|(generation, wanted)| {
            *generation += 1;
            *wanted = Some(status);
        });
    }

    /// Waits, at most `bound`, until the newest status wanted has been written.
    async fn flush(&self, bound: Duration) {
        let target = self.wanted.borrow().0;
        let mut written = self.written.clone();
        let _ = tokio::time::timeout(bound, written.wait_for(|done| *done >= target)).await;
    }
}

impl Drop for StatusWriter {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Aborts a background task when dropped, so none outlives the executor.
#[derive(Debug)]
struct Task(JoinHandle<()>);

impl Task {
    fn is_running(&self) -> bool {
        !self.0.is_finished()
    }
}

impl Drop for Task {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Carries out the machines' commands. See the module documentation.
#[derive(Debug)]
pub struct Executor {
    /// What probes and watches share.
    context: Arc<Context>,
    /// Writes statuses in the background.
    status: StatusWriter,
    /// The database heartbeat, while one runs.
    heartbeat: Option<Task>,
    /// The pulse (Redis heartbeat, leader lease), from the first `serve` on.
    pulse: Option<JoinHandle<()>>,
    /// One watch per tolerated failure kind, indexed by [`FailureKind::index`].
    watches: [Option<Task>; 6],
    /// The state published when the instance first served, with [`Until::Settled`].
    settled: Option<lifecycle::State>,
    /// The service manager, told of lifecycle transitions and pinged by the driver loop.
    supervisor: Supervisor,
    /// Whether the operator's sinks were told the instance is degraded and not yet that it
    /// recovered: a degradation is announced once, however many reasons it gathers.
    degraded_announced: bool,
}

impl Executor {
    /// An executor carrying commands out against `ports`. Starts the status writer, so it
    /// must be called inside a tokio runtime.
    pub fn new(config: ExecutorConfig, ports: Ports) -> Executor {
        let status = StatusWriter::start(Arc::clone(&ports.database), config.instance.clone());
        Executor {
            context: Arc::new(Context {
                config,
                ports,
                state: Mutex::new(None),
                last_error: Mutex::new(None),
            }),
            status,
            heartbeat: None,
            pulse: None,
            watches: Default::default(),
            settled: None,
            supervisor: Supervisor::none(),
            degraded_announced: false,
        }
    }

    /// The same executor, reporting to `supervisor` (systemd) as the lifecycle moves.
    #[must_use]
    pub fn supervised(mut self, supervisor: Supervisor) -> Executor {
        self.supervisor = supervisor;
        self
    }

    /// Follows the lifecycle as the machines publish it.
    pub fn watch_lifecycle(&self) -> watch::Receiver<LifecycleView> {
        self.context.shared().lifecycle.subscribe()
    }

    /// The last recovery receipt.
    pub fn receipt(&self) -> Option<Receipt> {
        self.context.shared().receipt.borrow().clone()
    }

    /// The state the last clean recovery rebuilt.
    pub fn recovered_state(&self) -> Option<recovery::State> {
        self.context
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The last failure found, when recovery produced no receipt after it.
    pub fn last_error(&self) -> Option<String> {
        self.context
            .last_error
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The state the instance would have served in, with [`Until::Settled`].
    pub fn settled(&self) -> Option<lifecycle::State> {
        self.settled
    }

    /// Waits, at most [`STATUS_WRITE_TIMEOUT`], until the newest status is written.
    pub async fn flush_status(&self) {
        self.status.flush(STATUS_WRITE_TIMEOUT).await;
    }

    /// Closes the database.
    pub async fn close(&self) {
        self.context.ports.database.close().await;
    }

    /// `serve`: the pulse once; the database heartbeat while asked for.
    fn serve(&mut self, heartbeat: bool) -> Option<Input> {
        if self.context.config.until == Until::Settled {
            self.settled = Some(self.context.shared().view().state);
            return Some(Input::Stop);
        }
        if self.pulse.is_none() {
            let tasks = LeaderTasks {
                tolerance: self.context.config.tolerance,
                instruments: self.context.config.instruments.clone(),
                initial_capital: self.context.config.initial_capital,
            };
            let shared = Arc::clone(&self.context.ports.shared);
            self.pulse = Some(tokio::spawn(leader::run(shared, tasks)));
        }
        if !heartbeat {
            self.heartbeat = None;
        } else if !self.heartbeat.as_ref().is_some_and(Task::is_running) {
            let database = Arc::clone(&self.context.ports.database);
            let shared = Arc::clone(&self.context.ports.shared);
            let inputs = self.context.shared().inputs.clone();
            let interval = self.context.config.heartbeat_interval;
            self.heartbeat = Some(Task(tokio::spawn(async move {
                loop {
                    tokio::time::sleep(interval).await;
                    let beat = tokio::time::timeout(DB_PING_TIMEOUT, database.heartbeat()).await;
                    if matches!(beat, Ok(Ok(()))) {
                        // Every heartbeat reads the operator's kill switch: every instance
                        // obeys a pause within one heartbeat. A reading that fails is left
                        // to the next beat.
                        match tokio::time::timeout(DB_PING_TIMEOUT, database.pause()).await {
                            Ok(Ok(pause)) => shared.heard_pause(pause),
                            Ok(Err(error)) => {
                                tracing::debug!(target: STARTUP_TARGET, "the kill switch cannot be read: {error}")
                            }
                            Err(_) => {
                                tracing::debug!(target: STARTUP_TARGET, "the kill switch did not answer within {DB_PING_TIMEOUT:?}")
                            }
                        }
                    } else {
                        // Reported once; the machines' retries and watch ask from here on, and
                        // the next `serve` with a heartbeat starts a new one. The loop may have
                        // ended; then nobody needs to know.
                        let _ = inputs
                            .send(Input::Failure(FailureKind::DbUnavailable))
                            .await;
                        return;
                    }
                }
            })));
        }
        None
    }

    /// `watch`: asks the probe of `kind` every [`WATCH_INTERVAL`] until it answers.
    fn watch(&mut self, kind: FailureKind) {
        if self.context.config.until == Until::Settled
            || self.watches[kind.index()]
                .as_ref()
                .is_some_and(Task::is_running)
        {
            return;
        }
        let context = Arc::clone(&self.context);
        self.watches[kind.index()] = Some(Task(tokio::spawn(async move {
            loop {
                tokio::time::sleep(WATCH_INTERVAL).await;
                let outcome = match kind {
                    // Redis reports its own return, in order with its losses.
                    FailureKind::RedisUnavailable => match context.ports.redis.watch().await {
                        Watched::Reported => None,
                        Watched::Answered => Some(Input::Restored(kind)),
                        Watched::Failed => continue,
                    },
                    _ => match context.probe(kind, Loud::No).await {
                        Input::Failure(_) => continue,
                        outcome => Some(outcome),
                    },
                };
                tracing::info!(target: STARTUP_TARGET, instance = %context.instance(), "{kind}: the watch found it ended");
                if let Some(outcome) = outcome {
                    let _ = context.shared().inputs.send(outcome).await;
                }
                return;
            }
        })));
    }

    /// `drain`: stop watching, let the signals in flight finish, give up the lease. Its
    /// outcome goes through the input channel, after any failure a signal in flight
    /// reported meanwhile, so the machines hear it first (a failure they halt on still
    /// halts a stopping instance).
    async fn drain(&mut self) -> Option<Input> {
        self.watches = Default::default();
        self.heartbeat = None;
        let shared = Arc::clone(&self.context.ports.shared);
        let instance = self.context.instance();
        // Signals already inside finish; the bound keeps a stuck one from holding shutdown
        // for ever.
        if tokio::time::timeout(DRAIN_TIMEOUT, shared.in_flight.drained())
            .await
            .is_err()
        {
            tracing::warn!(
                target: STARTUP_TARGET,
                instance = %instance,
                "signals still in flight after {DRAIN_TIMEOUT:?}: {}; stopping anyway",
                shared.in_flight.count()
            );
        }
        release_lease(self.pulse.take(), instance).await;
        match shared.inputs.try_send(Input::Drained) {
            Ok(()) => None,
            // A full queue: the loop is not reading it now, so the outcome goes straight in.
            Err(_) => Some(Input::Drained),
        }
    }
}

impl Executor {
    /// Tells the operator's sinks about lifecycle transitions that matter to them: a halt,
    /// the first step into `degraded`, and the way back to `active`.
    fn announce(&mut self, transitions: &[crate::machines::Transition]) {
        use crate::notify::Event;
        let notifier = &self.context.ports.shared.notifier;
        for transition in transitions
            .iter()
            .filter(|transition| transition.machine == crate::machines::MachineName::Lifecycle)
        {
            match transition.to {
                "crashed" => notifier.notify(Event::Halted, transition.message.clone()),
                // Into degraded, or a failure that narrows a paused instance.
                "degraded" | "paused"
                    if !self.degraded_announced
                        && (transition.to == "degraded"
                            || (transition.reason.is_some()
                                && transition.level == crate::machines::Level::Warn)) =>
                {
                    self.degraded_announced = true;
                    notifier.notify(Event::Degraded, transition.message.clone());
                }
                "active" if self.degraded_announced => {
                    self.degraded_announced = false;
                    notifier.notify(Event::Recovered, transition.message.clone());
                }
                _ => {}
            }
        }
    }
}

/// Waits, at most [`LEASE_RELEASE_TIMEOUT`], for the pulse to end: it saw the lifecycle
/// leave `serving` and gives up the lease, so another instance leads at once rather than
/// after the lease expires. Past the bound it is stopped and the lease expires by itself.
async fn release_lease(pulse: Option<JoinHandle<()>>, instance: &str) {
    let Some(pulse) = pulse else {
        return;
    };
    let abort = pulse.abort_handle();
    if tokio::time::timeout(LEASE_RELEASE_TIMEOUT, pulse)
        .await
        .is_err()
    {
        abort.abort();
        tracing::warn!(target: STARTUP_TARGET, instance = %instance, "the leader lease was not released within {LEASE_RELEASE_TIMEOUT:?}; it expires by itself");
    }
}

impl live::Executor for Executor {
    async fn execute(&mut self, command: &Command) -> Option<Input> {
        match command {
            Command::Publish { state, signals } => {
                self.context.shared().lifecycle.send_replace(LifecycleView {
                    state: *state,
                    accepts: *signals,
                });
                None
            }
            Command::RecordStatus { status } => {
                self.status.want(*status);
                None
            }
            Command::Connect => Some(self.context.connect().await),
            Command::Recover => Some(self.context.recover(Loud::Yes).await),
            Command::Serve { heartbeat } => self.serve(*heartbeat),
            Command::Drain => self.drain().await,
            // The driver keeps the retry timers.
            Command::ScheduleRetry { .. } | Command::CancelRetry { .. } => None,
            Command::Probe { kind, .. } => Some(self.context.probe(*kind, Loud::Yes).await),
            Command::Watch { kind } => {
                self.watch(*kind);
                None
            }
            Command::Unwatch { kind } => {
                self.watches[kind.index()] = None;
                None
            }
            Command::Exit { .. } => {
                self.watches = Default::default();
                self.heartbeat = None;
                // A crash gives the lease up too, while the final status is written and the
                // operator is told (a halt's notice goes out before the process ends).
                let release = release_lease(self.pulse.take(), self.context.instance());
                let notified = self
                    .context
                    .shared()
                    .notifier
                    .flush(crate::notify::NOTIFY_FLUSH_TIMEOUT);
                tokio::join!(release, self.status.flush(STATUS_FLUSH_TIMEOUT), notified);
                None
            }
        }
    }

    fn liveness_interval_ms(&self) -> Option<u64> {
        self.supervisor.watchdog_interval_ms()
    }

    fn alive(&mut self) {
        self.supervisor.alive();
    }

    fn observe(&mut self, step: &Step) {
        self.supervisor.observe(&step.transitions);
        self.announce(&step.transitions);
        let at = crate::store::timestamp_text(Utc::now());
        for transition in &step.transitions {
            self.context.shared().remember(RecentTransition {
                at: at.clone(),
                transition: transition.clone(),
            });
        }
    }
}
