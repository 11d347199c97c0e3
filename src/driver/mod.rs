//! The driver feeds events to the machines, routes the failure machines' decisions to the
//! lifecycle, keeps the retry timers, and writes one `tracing` event per transition.
//!
//! The driver never sleeps and never reads the clock: every call says what time it is, in
//! milliseconds since the driver started. [`virtual_time`] runs it against a virtual clock
//! (dry-runs); [`live`] carries out effects for real, waiting on tokio's clock (the service). Both share
//! this code, so a dry-run shows exactly what the service does.

pub mod live;
pub mod virtual_time;

use crate::machines::failure::{self, FailureEvent, FailureResponse};
use crate::machines::lifecycle::{self, Lifecycle, LifecycleEvent, Reasons};
use crate::machines::{Command, Escalation, Level, MachineName, Outbox, Transition};
use crate::policy::Policy;
use crate::vocabulary::{FailureKind, SignalSet, SignalType};
use rust_decimal::Decimal;
use serde::Serialize;
use statig::blocking::InitializedStateMachine;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Jitter draws are whole numbers below this, divided by it: a fraction in `0..1`.
const JITTER_DRAWS: u64 = 1 << 32;

/// The `tracing` target of transition log lines, so operators can filter on it.
pub const TRANSITION_TARGET: &str = "vigil::transition";

/// Something that happened to the instance, as the outside world reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(into = "String")]
pub enum Input {
    /// Start-up finished (`started`).
    Started,
    /// Recovery succeeded (`recovered`).
    Recovered,
    /// A failure of this kind happened (`db_unavailable`, `data_corrupt`, ...).
    Failure(FailureKind),
    /// A lost dependency is back (`db_restored`, `redis_restored`, `broker_restored`).
    Restored(FailureKind),
    /// Shutdown was requested (`stop`).
    Stop,
    /// Every signal in flight has finished (`drained`).
    Drained,
    /// The operator paused trading (`pause`), or everything but exits (`pause_exits_only`).
    Pause {
        /// Whether exits still go through.
        exits_only: bool,
    },
    /// The operator lifted the pause (`resume`).
    Resume,
}

/// Failure kinds that are a dependency which can come back, with the name of its input.
const RESTORABLE: [(FailureKind, &str); 3] = [
    (FailureKind::DbUnavailable, "db_restored"),
    (FailureKind::RedisUnavailable, "redis_restored"),
    (FailureKind::BrokerUnavailable, "broker_restored"),
];

impl Input {
    /// Every input, in the order the README documents them.
    pub fn all() -> Vec<Input> {
        let mut inputs = vec![Input::Started, Input::Recovered];
        inputs.extend(FailureKind::ALL.map(Input::Failure));
        inputs.extend(RESTORABLE.map(|(kind, _)| Input::Restored(kind)));
        inputs.extend([
            Input::Stop,
            Input::Drained,
            Input::Pause { exits_only: false },
            Input::Pause { exits_only: true },
            Input::Resume,
        ]);
        inputs
    }

    /// The name used on the command line and in scenario files.
    pub fn name(self) -> &'static str {
        match self {
            Input::Started => "started",
            Input::Recovered => "recovered",
            Input::Failure(kind) => kind.as_str(),
            Input::Restored(kind) => RESTORABLE
                .iter()
                .find(|(restorable, _)| *restorable == kind)
                .map_or("restored", |(_, name)| name),
            Input::Stop => "stop",
            Input::Drained => "drained",
            Input::Pause { exits_only: false } => "pause",
            Input::Pause { exits_only: true } => "pause_exits_only",
            Input::Resume => "resume",
        }
    }

    /// Whether the input reports what a step found (a failure, or a recovery that
    /// succeeded), as opposed to news from outside (a dependency back, a shutdown).
    pub fn is_outcome(self) -> bool {
        matches!(self, Input::Failure(_) | Input::Recovered)
    }

    /// Looks an input up by name.
    pub fn parse(name: &str) -> Option<Input> {
        Input::all().into_iter().find(|input| input.name() == name)
    }
}

impl From<Input> for String {
    fn from(input: Input) -> String {
        input.name().to_string()
    }
}

impl fmt::Display for Input {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What made the driver take a step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(tag = "cause", rename_all = "snake_case")]
pub enum Cause {
    /// The machines were initialised.
    Init,
    /// An input arrived.
    Input {
        /// The input.
        input: Input,
    },
    /// A retry timer fired.
    RetryDue {
        /// The failure being retried.
        kind: FailureKind,
    },
    /// A retry ran and nothing had changed: the failure is still there.
    StillFailing {
        /// The failure that persists.
        kind: FailureKind,
    },
}

impl fmt::Display for Cause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Cause::Init => f.write_str("init"),
            Cause::Input { input } => write!(f, "event {input}"),
            Cause::RetryDue { kind } => write!(f, "timer: retry of {kind} due"),
            Cause::StillFailing { kind } => write!(f, "retry outcome: {kind} persists"),
        }
    }
}

/// Everything one input or timer caused.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Step {
    /// Driver time of the step, in milliseconds since start.
    pub at_ms: u64,
    /// What caused the step.
    #[serde(flatten)]
    pub cause: Cause,
    /// Transitions of both machines, in order.
    pub transitions: Vec<Transition>,
    /// Commands to carry out, in order.
    pub commands: Vec<Command>,
}

/// Runs the lifecycle machine and one failure machine per failure kind.
#[derive(Debug)]
pub struct Driver {
    /// The instance id written into every log line.
    instance: String,
    /// The instance lifecycle.
    lifecycle: InitializedStateMachine<Lifecycle>,
    /// One failure-response machine per kind, indexed by [`FailureKind::index`].
    failures: Vec<InitializedStateMachine<FailureResponse>>,
    /// When each kind's scheduled retry is due, in driver milliseconds. At most one retry per
    /// kind is ever pending, so the timer queue is bounded by the number of kinds.
    retry_due_ms: [Option<u64>; 6],
    /// Source of retry jitter. Seeded, so a dry-run is repeatable.
    rng: fastrand::Rng,
    /// Driver time of the step being taken.
    now_ms: u64,
    /// The same time, readable from outside (a dry-run's log timer shows it).
    shared_now_ms: Arc<AtomicU64>,
    /// Scratch space the machines write into, reused across steps.
    outbox: Outbox,
}

impl Driver {
    /// A driver whose lifecycle starts in `starting`. Returns the initial step, which logs the
    /// initial state (statig fires no transition hook for it).
    pub fn new(policy: &Policy, instance: &str, rng: fastrand::Rng) -> (Driver, Step) {
        Driver::at(
            policy,
            instance,
            rng,
            lifecycle::State::initial(),
            Reasons::NONE,
        )
    }

    /// A driver whose lifecycle starts in `state`, degraded for `reasons` (whose failure
    /// machines start `tolerating`), or crashed by the one kind in `reasons` (whose failure
    /// machine starts `halted`, and whose halt code the process exits with). Used by
    /// dry-runs that examine one transition.
    pub fn at(
        policy: &Policy,
        instance: &str,
        rng: fastrand::Rng,
        state: lifecycle::State,
        reasons: Reasons,
    ) -> (Driver, Step) {
        let mut outbox = Outbox::default();
        let crashed = matches!(state, lifecycle::State::Crashed {});
        let mut machine = Lifecycle::new(policy.degraded_accepts);
        if let Some(code) = reasons.iter().find_map(|kind| policy.halt_code(kind)) {
            machine = machine.with_exit_code(code);
        }
        let lifecycle_reasons = if crashed { Reasons::NONE } else { reasons };
        let lifecycle = machine.machine_at(state, lifecycle_reasons, &mut outbox);
        let failures = FailureKind::ALL
            .iter()
            .map(|kind| {
                let initial = match (crashed, reasons.contains(*kind)) {
                    (true, true) => failure::State::terminal(),
                    (_, found) => failure::State::at_rest(found),
                };
                FailureResponse::new(*kind, policy.response(*kind).clone()).machine_at(initial)
            })
            .collect();
        let mut driver = Driver {
            instance: instance.to_string(),
            lifecycle,
            failures,
            retry_due_ms: [None; 6],
            rng,
            now_ms: 0,
            shared_now_ms: Arc::default(),
            outbox,
        };
        let message = match reasons.is_empty() {
            true => format!("lifecycle initialised in {}", state.name()),
            false => format!("lifecycle initialised in {} ({reasons})", state.name()),
        };
        driver.outbox.transitions.push(Transition {
            machine: MachineName::Lifecycle,
            from: "none",
            to: state.name(),
            event: "init",
            reason: None,
            level: Level::Info,
            message,
        });
        let step = driver.finish(Cause::Init);
        (driver, step)
    }

    /// Reports that the running retry of `kind` failed again because nothing changed.
    pub fn still_failing(&mut self, now_ms: u64, kind: FailureKind) -> Step {
        self.advance(now_ms);
        if !self.is_terminal() {
            self.send_failure(kind, FailureEvent::Failed);
        }
        self.finish(Cause::StillFailing { kind })
    }

    /// Handles `input` at driver time `now_ms`.
    pub fn deliver(&mut self, now_ms: u64, input: Input) -> Step {
        self.advance(now_ms);
        if !self.is_terminal() {
            match input {
                Input::Started => self.send_lifecycle(&LifecycleEvent::Started),
                Input::Recovered => {
                    // The lifecycle hears first, so that it moves on with this recovery rather
                    // than run another for each failure it answers.
                    self.send_lifecycle(&LifecycleEvent::Recovered);
                    // A successful recovery answers every failure that recovery can hit.
                    for kind in FailureKind::ALL
                        .into_iter()
                        .filter(|kind| kind.needs_recovery())
                    {
                        self.send_failure(kind, FailureEvent::Succeeded);
                    }
                }
                Input::Failure(kind) => self.send_failure(kind, FailureEvent::Failed),
                Input::Restored(kind) => self.send_failure(kind, FailureEvent::Succeeded),
                Input::Stop => self.send_lifecycle(&LifecycleEvent::Stop),
                Input::Drained => self.send_lifecycle(&LifecycleEvent::Drained),
                Input::Pause { exits_only } => {
                    let allows = match exits_only {
                        true => SignalSet::NONE.with(SignalType::Exit),
                        false => SignalSet::NONE,
                    };
                    self.send_lifecycle(&LifecycleEvent::Paused { allows });
                }
                Input::Resume => self.send_lifecycle(&LifecycleEvent::Resumed),
            }
        }
        self.finish(Cause::Input { input })
    }

    /// Whether `input` reports what a step found, now: a failure or a recovery always does;
    /// a dependency's return does while that dependency's retry is pending, when only its
    /// probe can find it (see [`FailureKind::return_heard_by_heartbeat`]).
    pub fn is_outcome(&self, input: Input) -> bool {
        match input {
            Input::Restored(kind) if kind.return_heard_by_heartbeat() => false,
            Input::Restored(kind) => matches!(
                self.failure_state(kind),
                failure::State::BackingOff { .. } | failure::State::Retrying { .. }
            ),
            other => other.is_outcome(),
        }
    }

    /// When the earliest pending retry is due, if any.
    pub fn next_due_ms(&self) -> Option<u64> {
        self.retry_due_ms.iter().flatten().min().copied()
    }

    /// Fires the earliest retry due at or before `now_ms`, if any.
    pub fn fire_due(&mut self, now_ms: u64) -> Option<Step> {
        let (index, due_ms) = self
            .retry_due_ms
            .iter()
            .enumerate()
            .filter_map(|(index, due)| due.map(|due| (index, due)))
            .min_by_key(|(_, due)| *due)?;
        if due_ms > now_ms {
            return None;
        }
        self.advance(now_ms);
        self.retry_due_ms[index] = None;
        let kind = FailureKind::ALL[index];
        self.send_failure(kind, FailureEvent::RetryDue);
        Some(self.finish(Cause::RetryDue { kind }))
    }

    /// The failure kinds whose retry is running and waiting for its outcome.
    /// None once the instance is winding down: their outcomes no longer matter.
    pub fn awaiting_outcome(&self) -> impl Iterator<Item = FailureKind> + '_ {
        let winding_down = self.is_winding_down();
        self.failures
            .iter()
            .filter(move |_| !winding_down)
            .filter(|machine| matches!(machine.state(), failure::State::Retrying { .. }))
            .map(|machine| machine.inner().kind())
    }

    /// The lifecycle state.
    pub fn state(&self) -> lifecycle::State {
        *self.lifecycle.state()
    }

    /// Why the instance is degraded.
    pub fn reasons(&self) -> Reasons {
        self.lifecycle.inner().reasons()
    }

    /// The signal types accepted now.
    pub fn accepts(&self) -> SignalSet {
        match self.state() {
            lifecycle::State::Active {} => SignalSet::ALL,
            lifecycle::State::Degraded {} | lifecycle::State::Paused {} => {
                self.lifecycle.inner().accepts(self.reasons())
            }
            _ => SignalSet::NONE,
        }
    }

    /// The state of the failure machine for `kind`.
    pub fn failure_state(&self, kind: FailureKind) -> failure::State {
        *self.failures[kind.index()].state()
    }

    /// Whether the instance is stopping or has ended: retries no longer run.
    pub fn is_winding_down(&self) -> bool {
        matches!(self.state(), lifecycle::State::Stopping {}) || self.is_terminal()
    }

    /// Whether the process has reached its end (stopped or crashed).
    pub fn is_terminal(&self) -> bool {
        self.state().is_terminal()
    }

    /// The process exit code, once terminal.
    pub fn exit_code(&self) -> Option<u8> {
        match self.state() {
            lifecycle::State::Stopped {} => Some(0),
            lifecycle::State::Crashed {} => Some(self.lifecycle.inner().exit_code()),
            _ => None,
        }
    }

    /// Driver time of the last step.
    pub fn now_ms(&self) -> u64 {
        self.now_ms
    }

    /// Publishes the driver's time, in milliseconds since start, into `now_ms` from now on
    /// (a dry-run's log timer reads it).
    pub fn publish_time(&mut self, now_ms: Arc<AtomicU64>) {
        now_ms.store(self.now_ms, Ordering::Relaxed);
        self.shared_now_ms = now_ms;
    }

    fn advance(&mut self, now_ms: u64) {
        assert!(
            now_ms >= self.now_ms,
            "driver time went backwards: {now_ms} < {}",
            self.now_ms
        );
        self.now_ms = now_ms;
        self.shared_now_ms.store(now_ms, Ordering::Relaxed);
    }

    fn send_lifecycle(&mut self, event: &LifecycleEvent) {
        self.outbox.begin(event.name());
        self.lifecycle.handle_with_context(event, &mut self.outbox);
    }

    fn send_failure(&mut self, kind: FailureKind, event: FailureEvent) {
        self.outbox.begin(event.as_str());
        self.outbox.jitter_unit = Decimal::from(self.rng.u32(..)) / Decimal::from(JITTER_DRAWS);
        self.failures[kind.index()].handle_with_context(&event, &mut self.outbox);
        // A failure machine escalates at most once per event (each of its transitions
        // escalates at most once), so this loop is bounded.
        let escalations = std::mem::take(&mut self.outbox.escalations);
        assert!(
            escalations.len() <= 1,
            "{kind} escalated {} times on one event",
            escalations.len()
        );
        for escalation in escalations {
            let event = match escalation {
                Escalation::Tolerate { kind, warning } => {
                    LifecycleEvent::Tolerated { kind, warning }
                }
                Escalation::Clear { kind } => LifecycleEvent::Cleared { kind },
                Escalation::Suspect { kind } => LifecycleEvent::Suspected { kind },
                Escalation::Halt { kind, exit_code } => LifecycleEvent::Halt { kind, exit_code },
            };
            self.send_lifecycle(&event);
        }
    }

    /// Applies timer commands, logs the transitions, and hands the step out.
    fn finish(&mut self, cause: Cause) -> Step {
        let mut commands = std::mem::take(&mut self.outbox.commands);
        if self.is_winding_down() {
            // The process is ending: no retry will run, so none can turn a requested stop
            // into a crash. A retry asked for now is cancelled at once, visibly; a watch
            // would outlive the drain, so none starts.
            for command in &mut commands {
                if let Command::ScheduleRetry { kind, .. } = *command {
                    *command = Command::CancelRetry { kind };
                }
            }
            commands.retain(|command| !matches!(command, Command::Watch { .. }));
        }
        for command in &commands {
            match command {
                Command::ScheduleRetry { kind, delay, .. } => {
                    let delay_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX);
                    self.retry_due_ms[kind.index()] = Some(self.now_ms.saturating_add(delay_ms));
                }
                Command::CancelRetry { kind } => self.retry_due_ms[kind.index()] = None,
                _ => {}
            }
        }
        if self.is_winding_down() {
            self.retry_due_ms = [None; 6];
        }
        let transitions = std::mem::take(&mut self.outbox.transitions);
        for transition in &transitions {
            log_transition(&self.instance, transition);
        }
        self.outbox.clear();
        Step {
            at_ms: self.now_ms,
            cause,
            transitions,
            commands,
        }
    }
}

/// Writes the transition's log line. The level is fixed per call site because `tracing`
/// needs it at compile time.
fn log_transition(instance: &str, transition: &Transition) {
    let reason = transition.reason.map_or("-", FailureKind::as_str);
    macro_rules! emit {
        ($level:expr) => {
            tracing::event!(
                target: TRANSITION_TARGET,
                $level,
                instance = %instance,
                machine = %transition.machine.as_str(),
                from = %transition.from,
                to = %transition.to,
                event = %transition.event,
                reason = %reason,
                "{}",
                transition.message
            )
        };
    }
    match transition.level {
        Level::Info => emit!(tracing::Level::INFO),
        Level::Warn => emit!(tracing::Level::WARN),
        Level::Error => emit!(tracing::Level::ERROR),
    }
}
