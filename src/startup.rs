//! The service's start-up, carried out for the machines: connect and migrate while
//! `starting`, run recovery while `recovering`, record every status the lifecycle enters.
//! This is the [`Executor`] of the live loop; it is the one place where the machines'
//! effects meet storage.

use crate::coordination::leader::{self, LeaderTasks};
use crate::domain::Instrument;
use crate::driver::live::Executor;
use crate::driver::Input;
use crate::driver::Step;
use crate::machines::{Effect, MachineName};
use crate::recovery::{self, Receipt};
use crate::shared::{LifecycleView, RecentTransition, Shared};
use crate::store::{Access, AnyStore, InstanceRecord, Store, StoreError};
use crate::vocabulary::{FailureKind, SignalSet};
use chrono::Utc;
use rust_decimal::Decimal;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use std::time::Instant;

/// How often a degraded instance checks whether its lost database answers again.
pub const DB_PROBE_INTERVAL: Duration = Duration::from_secs(5);

/// How long a ping of the database may take before the database counts as unavailable.
pub const DB_PING_TIMEOUT: Duration = Duration::from_secs(1);

/// How long shutdown waits for signals in flight.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// How long shutdown waits for the pulse to give up the leader lease.
pub const LEASE_RELEASE_TIMEOUT: Duration = Duration::from_secs(2);

/// The `tracing` target of start-up and recovery log lines.
pub const STARTUP_TARGET: &str = "vigil::startup";

/// What the instance is doing, so that a retry re-runs the right step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Connecting to the database (and migrating it).
    Connecting,
    /// Running recovery.
    Recovering,
    /// Past start-up.
    Serving,
}

/// When a start-up run ends by itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Until {
    /// Keep serving until asked to stop (`vigil run`).
    Stopped,
    /// Stop as soon as start-up has settled on active or degraded (`vigil recover --check`).
    Settled,
}

/// Start-up settings.
#[derive(Debug, Clone)]
pub struct StartupConfig {
    /// The database URL.
    pub database_url: String,
    /// Read-write for the service; read-only for `recover --check`.
    pub access: Access,
    /// Who is starting.
    pub instance: InstanceRecord,
    /// The policy's consistency tolerance.
    pub tolerance: Decimal,
    /// The deployment's instruments.
    pub instruments: BTreeMap<String, Instrument>,
    /// When the run ends by itself.
    pub until: Until,
    /// How often an active instance refreshes its heartbeat (the policy's
    /// `ha.heartbeat_interval`); each refresh is also the check that the database answers.
    pub heartbeat_interval: Duration,
}

/// Carries out start-up effects and remembers what it found.
#[derive(Debug)]
pub struct Startup {
    /// Settings.
    config: StartupConfig,
    /// The store, once connected.
    store: Option<AnyStore>,
    /// The step a retry re-runs.
    phase: Phase,
    /// The last recovery receipt, kept for `/ready`, `/status` and `recover --check`.
    pub receipt: Option<Receipt>,
    /// The state the last clean recovery rebuilt.
    pub state: Option<recovery::State>,
    /// The last store error, for reports when no receipt was produced.
    pub last_error: Option<StoreError>,
    /// The state start-up settled on, with `Until::Settled`.
    pub settled: Option<&'static str>,
    /// What the HTTP layer reads.
    shared: Arc<Shared>,
    /// The background check that waits for a lost database, while one runs.
    probe: Option<tokio::task::JoinHandle<()>>,
    /// The background check that pings the database while the instance is active, so that
    /// an idle instance notices a lost database before the next signal does.
    watch: Option<tokio::task::JoinHandle<()>>,
    /// The pulse: Redis heartbeats and the leader lease, from the first time the instance
    /// serves until it stops.
    pulse: Option<tokio::task::JoinHandle<()>>,
    /// Whether the database is lost now (its failure machine is not idle); the heartbeat
    /// watch runs only while it is not.
    db_lost: bool,
}

impl Startup {
    /// A start-up that has not connected yet.
    pub fn new(config: StartupConfig, shared: Arc<Shared>) -> Startup {
        Startup {
            config,
            store: None,
            phase: Phase::Connecting,
            receipt: None,
            state: None,
            last_error: None,
            settled: None,
            shared,
            probe: None,
            watch: None,
            pulse: None,
            db_lost: false,
        }
    }

    /// Follows the lifecycle as start-up records it.
    pub fn watch_lifecycle(&self) -> tokio::sync::watch::Receiver<LifecycleView> {
        self.shared.lifecycle.subscribe()
    }

    /// The store, once connected.
    pub fn store(&self) -> Option<&AnyStore> {
        self.store.as_ref()
    }

    fn failed(&mut self, error: StoreError) -> Input {
        tracing::warn!(target: STARTUP_TARGET, instance = %self.config.instance.instance_id, kind = %error.kind(), "{error}");
        let kind = error.kind();
        self.last_error = Some(error);
        Input::Failure(kind)
    }

    /// Opens (or reopens) the store and, read-write, migrates it.
    async fn open_store(&mut self) -> Result<(), Input> {
        if let Some(store) = self.store.take() {
            self.shared.store.send_replace(None);
            store.close().await;
        }
        let store = match AnyStore::connect(&self.config.database_url, self.config.access).await {
            Ok(store) => store,
            Err(error) => return Err(self.failed(error)),
        };
        if self.config.access == Access::ReadWrite {
            if let Err(error) = store.migrate().await {
                return Err(self.failed(error));
            }
        }
        self.shared.store.send_replace(Some(store.clone()));
        self.store = Some(store);
        Ok(())
    }

    async fn connect(&mut self) -> Input {
        if let Err(failure) = self.open_store().await {
            return failure;
        }
        self.record("starting").await;
        Input::Started
    }

    /// While serving, a retry asks whether the database answers again.
    async fn probe(&mut self) -> Input {
        let answered = match self.store.clone() {
            Some(store) => store.ping().await.map_err(|error| self.failed(error)),
            None => self.open_store().await,
        };
        match answered {
            Ok(()) => Input::Restored(FailureKind::DbUnavailable),
            Err(failure) => failure,
        }
    }

    /// Refreshes the heartbeat every `heartbeat_interval` while active; the first refresh
    /// that fails or takes longer than [`DB_PING_TIMEOUT`] is reported as `db_unavailable`,
    /// and the policy takes over.
    fn keep_watch_on_database(&mut self) {
        let Some(store) = self.store.clone() else {
            return;
        };
        let inputs = self.shared.inputs.clone();
        let (instance, interval) = (
            self.config.instance.instance_id.clone(),
            self.config.heartbeat_interval,
        );
        let access = self.config.access;
        self.watch = Some(tokio::spawn(async move {
            loop {
                tokio::time::sleep(interval).await;
                let beat = async {
                    match access {
                        Access::ReadWrite => store.heartbeat(&instance, Utc::now()).await,
                        Access::ReadOnly => store.ping().await,
                    }
                };
                let answered = tokio::time::timeout(DB_PING_TIMEOUT, beat).await;
                if !matches!(answered, Ok(Ok(()))) {
                    // The loop may have ended; then nobody needs to know.
                    let _ = inputs
                        .send(Input::Failure(FailureKind::DbUnavailable))
                        .await;
                    return;
                }
            }
        }));
    }

    /// Starts a background check that reports when the database answers again, so a
    /// degraded instance recovers without a restart.
    fn watch_for_database(&mut self) {
        if self
            .probe
            .as_ref()
            .is_some_and(|probe| !probe.is_finished())
        {
            return;
        }
        let (url, access, inputs) = (
            self.config.database_url.clone(),
            self.config.access,
            self.shared.inputs.clone(),
        );
        let instance = self.config.instance.instance_id.clone();
        self.probe = Some(tokio::spawn(async move {
            loop {
                tokio::time::sleep(DB_PROBE_INTERVAL).await;
                let Ok(store) = AnyStore::connect(&url, access).await else {
                    continue;
                };
                let answered = store.ping().await.is_ok();
                store.close().await;
                if answered {
                    tracing::info!(target: STARTUP_TARGET, instance = %instance, "the database answers again");
                    // The loop may have ended; then nobody needs to know.
                    let _ = inputs
                        .send(Input::Restored(FailureKind::DbUnavailable))
                        .await;
                    return;
                }
            }
        }));
    }

    async fn recover(&mut self) -> Input {
        if self.store.is_none() {
            if let Err(failure) = self.open_store().await {
                return failure;
            }
        }
        let Some(store) = self.store.as_ref() else {
            unreachable!("the store was just opened");
        };
        let started = Instant::now();
        let rows = match store.load_recovery_rows().await {
            Ok(rows) => rows,
            Err(error) => return self.failed(error),
        };
        let (state, mut receipt) =
            recovery::recover(rows, self.config.tolerance, &self.config.instruments, 0);
        receipt.duration_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        let instance = &self.config.instance.instance_id;
        match receipt.failure() {
            None => {
                tracing::info!(target: STARTUP_TARGET, instance = %instance, "{}", receipt.summary())
            }
            Some(_) => {
                tracing::error!(target: STARTUP_TARGET, instance = %instance, "{}", receipt.summary());
                for check in receipt.checks.iter().filter(|check| !check.passed) {
                    tracing::error!(target: STARTUP_TARGET, instance = %instance, check = check.name, "{}", check.detail);
                }
            }
        }
        let outcome = match receipt.failure() {
            None => Input::Recovered,
            Some(kind) => Input::Failure(kind),
        };
        if outcome == Input::Recovered {
            self.last_error = None;
        }
        self.shared.receipt.send_replace(Some(receipt.clone()));
        self.receipt = Some(receipt);
        self.state = state;
        outcome
    }

    /// Records `status` when the store can be written; a failure to record is logged, not
    /// fatal: the lifecycle, not the status row, decides what the instance does.
    async fn record(&mut self, status: &str) {
        let (Access::ReadWrite, Some(store)) = (self.config.access, self.store.as_ref()) else {
            return;
        };
        if let Err(error) = store
            .record_status(&self.config.instance, status, Utc::now())
            .await
        {
            tracing::warn!(target: STARTUP_TARGET, instance = %self.config.instance.instance_id, "cannot record status {status}: {error}");
        }
    }
}

impl Executor for Startup {
    async fn execute(&mut self, effect: &Effect) -> Option<Input> {
        match effect {
            Effect::RecordStatus { status } => self.enter(status).await,
            Effect::Accept { signals } => {
                self.shared
                    .lifecycle
                    .send_modify(|view| view.accepts = *signals);
                None
            }
            // A Redis retry asks Redis, whatever step the instance is in; every other retry
            // re-runs the step that failed.
            Effect::Reattempt { kind, .. } => Some(match (kind, self.phase) {
                (FailureKind::RedisUnavailable, _) => {
                    match self.shared.coordination.check_redis().await {
                        Some(Err(_)) => Input::Failure(FailureKind::RedisUnavailable),
                        Some(Ok(())) | None => Input::Restored(FailureKind::RedisUnavailable),
                    }
                }
                (_, Phase::Connecting) => self.connect().await,
                (_, Phase::Recovering) => self.recover().await,
                (_, Phase::Serving) => self.probe().await,
            }),
            Effect::ScheduleRetry { .. } | Effect::CancelRetry { .. } | Effect::Exit { .. } => None,
        }
    }

    fn observe(&mut self, step: &Step) {
        let at = crate::store::timestamp_text(Utc::now());
        for transition in &step.transitions {
            if transition.machine == MachineName::Failure
                && transition.reason == Some(FailureKind::DbUnavailable)
            {
                self.db_lost = transition.to != "idle";
            }
            // Once the policy tolerates a lost database (retries spent, or no retries), only
            // a background check can tell when it is back.
            if transition.machine == MachineName::Failure
                && transition.reason == Some(FailureKind::DbUnavailable)
                && transition.to == "tolerating"
                && self.config.until == Until::Stopped
            {
                self.watch_for_database();
            }
            self.shared.remember(RecentTransition {
                at: at.clone(),
                transition: transition.clone(),
            });
        }
    }
}

impl Startup {
    /// The lifecycle entered `status`: publish it, record it, and run what the state needs.
    async fn enter(&mut self, status: &'static str) -> Option<Input> {
        if let Some(watch) = self.watch.take() {
            watch.abort();
        }
        if !matches!(status, "active" | "degraded") {
            // Intake narrows at once; it widens only through the accept effect that follows.
            self.shared.lifecycle.send_modify(|view| {
                view.state = status;
                view.accepts = SignalSet::NONE;
            });
        }
        match status {
            // Nothing to record until connected; connecting records it.
            "starting" => {
                self.phase = Phase::Connecting;
                return Some(self.connect().await);
            }
            "recovering" => {
                self.record(status).await;
                self.phase = Phase::Recovering;
                return Some(self.recover().await);
            }
            _ => self.record(status).await,
        }
        match status {
            "active" | "degraded" => {
                // Recorded first, so a watcher never sees a status storage lacks.
                self.shared
                    .lifecycle
                    .send_modify(|view| view.state = status);
                self.phase = Phase::Serving;
                if self.config.until == Until::Stopped {
                    // A degraded instance keeps its heartbeat too, unless the database is
                    // what it lost: other instances must not take it for gone.
                    if !self.db_lost {
                        self.keep_watch_on_database();
                    }
                    self.start_pulse();
                }

                match self.config.until {
                    Until::Settled => {
                        self.settled = Some(status);
                        Some(Input::Stop)
                    }
                    Until::Stopped => None,
                }
            }
            "stopping" => {
                if let Some(probe) = self.probe.take() {
                    probe.abort();
                }
                // Signals already inside finish; the bound keeps a stuck one from holding
                // shutdown for ever.
                if tokio::time::timeout(DRAIN_TIMEOUT, self.shared.in_flight.drained())
                    .await
                    .is_err()
                {
                    tracing::warn!(
                        target: STARTUP_TARGET,
                        instance = %self.config.instance.instance_id,
                        "{} signals still in flight after {DRAIN_TIMEOUT:?}; stopping anyway",
                        self.shared.in_flight.count()
                    );
                }
                // The pulse saw `stopping` and gives up the lease; waiting for it lets
                // another instance lead at once rather than after the lease expires.
                if let Some(pulse) = self.pulse.take() {
                    if tokio::time::timeout(LEASE_RELEASE_TIMEOUT, pulse)
                        .await
                        .is_err()
                    {
                        tracing::warn!(target: STARTUP_TARGET, instance = %self.config.instance.instance_id, "the leader lease was not released within {LEASE_RELEASE_TIMEOUT:?}; it expires by itself");
                    }
                }
                Some(Input::Drained)
            }
            _ => None,
        }
    }

    /// Starts the pulse (Redis heartbeats, the leader lease) once.
    fn start_pulse(&mut self) {
        if self.pulse.is_some() {
            return;
        }
        let tasks = LeaderTasks {
            tolerance: self.config.tolerance,
            instruments: self.config.instruments.clone(),
        };
        self.pulse = Some(tokio::spawn(leader::run(Arc::clone(&self.shared), tasks)));
    }
}
