//! The service's start-up, carried out for the machines: connect and migrate while
//! `starting`, run recovery while `recovering`, record every status the lifecycle enters.
//! This is the [`Executor`] of the live loop; it is the one place where the machines'
//! effects meet storage.

use crate::domain::Instrument;
use crate::driver::live::Executor;
use crate::driver::Input;
use crate::machines::Effect;
use crate::recovery::{self, Receipt};
use crate::store::{Access, AnyStore, InstanceRecord, Store, StoreError};
use chrono::Utc;
use rust_decimal::Decimal;
use std::collections::BTreeMap;
use std::time::Instant;

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
    /// Every status the lifecycle enters, for whoever watches (readiness, tests).
    status: tokio::sync::watch::Sender<&'static str>,
}

impl Startup {
    /// A start-up that has not connected yet.
    pub fn new(config: StartupConfig) -> Startup {
        let (status, _) = tokio::sync::watch::channel("starting");
        Startup {
            config,
            store: None,
            phase: Phase::Connecting,
            receipt: None,
            state: None,
            last_error: None,
            settled: None,
            status,
        }
    }

    /// Follows the lifecycle status as start-up records it.
    pub fn watch_status(&self) -> tokio::sync::watch::Receiver<&'static str> {
        self.status.subscribe()
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

    async fn connect(&mut self) -> Input {
        if let Some(store) = self.store.take() {
            store.close().await;
        }
        let store = match AnyStore::connect(&self.config.database_url, self.config.access).await {
            Ok(store) => store,
            Err(error) => return self.failed(error),
        };
        if self.config.access == Access::ReadWrite {
            if let Err(error) = store.migrate().await {
                return self.failed(error);
            }
        }
        self.store = Some(store);
        self.record("starting").await;
        Input::Started
    }

    async fn recover(&mut self) -> Input {
        let Some(store) = self.store.as_ref() else {
            return self.connect().await;
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
            Effect::RecordStatus { status } => {
                match *status {
                    // Nothing to record until connected; connecting records it.
                    "starting" => {
                        self.status.send_replace(status);
                        self.phase = Phase::Connecting;
                        return Some(self.connect().await);
                    }
                    "recovering" => {
                        self.record(status).await;
                        self.status.send_replace(status);
                        self.phase = Phase::Recovering;
                        return Some(self.recover().await);
                    }
                    _ => {
                        // Recorded first, so a watcher never sees a status storage lacks.
                        self.record(status).await;
                        self.status.send_replace(status);
                    }
                }
                match (*status, self.config.until) {
                    ("active" | "degraded", Until::Settled) => {
                        self.phase = Phase::Serving;
                        self.settled = Some(status);
                        Some(Input::Stop)
                    }
                    ("active" | "degraded", Until::Stopped) => {
                        self.phase = Phase::Serving;
                        None
                    }
                    // No signal can be in flight: the webhook listener is not open.
                    ("stopping", _) => Some(Input::Drained),
                    _ => None,
                }
            }
            Effect::Reattempt { .. } => match self.phase {
                Phase::Connecting => Some(self.connect().await),
                Phase::Recovering => Some(self.recover().await),
                Phase::Serving => None,
            },
            Effect::Accept { .. }
            | Effect::ScheduleRetry { .. }
            | Effect::CancelRetry { .. }
            | Effect::Exit { .. } => None,
        }
    }
}
