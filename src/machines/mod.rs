//! The two state machines at the heart of vigil, written with `statig`.
//!
//! Invariant: the machines are pure. They never do I/O, never read the clock and never
//! sleep. They take events and write what should happen into an [`Outbox`]: transitions (each
//! becomes one log line) and [`Command`]s, which the [executor](crate::executor) carries out.

pub mod failure;
pub mod lifecycle;

use crate::vocabulary::{FailureKind, SignalSet};
use rust_decimal::Decimal;
use serde::Serialize;
use std::fmt;
use std::time::Duration;

/// The log level of a transition: info for normal progress, warn for continuing with a
/// warning, error for halting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    /// Normal progress.
    Info,
    /// Continuing, but something is wrong.
    Warn,
    /// Halting.
    Error,
}

impl Level {
    /// The lowercase name used in machine specs.
    pub const fn as_str(self) -> &'static str {
        match self {
            Level::Info => "info",
            Level::Warn => "warn",
            Level::Error => "error",
        }
    }
}

/// Which machine a transition belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum MachineName {
    /// The instance lifecycle.
    Lifecycle,
    /// A failure-response machine (one per failure kind).
    Failure,
}

impl MachineName {
    /// The name used in specs, log fields and the CLI.
    pub const fn as_str(self) -> &'static str {
        match self {
            MachineName::Lifecycle => "lifecycle",
            MachineName::Failure => "failure",
        }
    }
}

/// One state change, with everything its log line carries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Transition {
    /// The machine that changed state.
    pub machine: MachineName,
    /// The state it left.
    pub from: &'static str,
    /// The state it entered (may equal `from` for a self-transition).
    pub to: &'static str,
    /// The machine event that caused it.
    pub event: &'static str,
    /// The failure kind involved, if any.
    pub reason: Option<FailureKind>,
    /// How loudly it is logged.
    pub level: Level,
    /// The human-readable log message.
    pub message: String,
}

/// Something a machine tells the executor to do. The machines decide every step; the
/// executor carries commands out, one exhaustive `match`, and reports each command's outcome
/// (if it has one) back to the machines as an input.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "command", rename_all = "snake_case")]
pub enum Command {
    /// Publish the lifecycle state and what it accepts, in memory, at once: `/ready` and the
    /// webhook read it. Never waits on I/O.
    Publish {
        /// The lifecycle state.
        #[serde(serialize_with = "serialize_state")]
        state: lifecycle::State,
        /// The signal types accepted from now on (none stops the webhook's intake).
        signals: SignalSet,
    },
    /// Record the instance status in storage: bounded, and carried out after publishing, so a
    /// dead database delays nothing.
    RecordStatus {
        /// The lifecycle state.
        #[serde(serialize_with = "serialize_state")]
        status: lifecycle::State,
    },
    /// Open the database and, read-write, apply migrations. Outcome: `started` or a failure.
    Connect,
    /// Run recovery: read, rebuild and validate the stored state. Outcome: `recovered` or a
    /// failure.
    Recover,
    /// The instance serves: run the serving tasks (the pulse: Redis heartbeat and leader
    /// lease), and the database heartbeat while `heartbeat` holds.
    Serve {
        /// Whether to refresh the database heartbeat, which also notices a lost database.
        /// Off while the database is what the instance lost: its retries and watch ask.
        heartbeat: bool,
    },
    /// Stop every watch, wait (bounded) for the signals in flight and give up the leader
    /// lease. Outcome: `drained`.
    Drain,
    /// Run the retry after `delay` (jitter already applied); the driver keeps the timer.
    ScheduleRetry {
        /// The failure being retried.
        kind: FailureKind,
        /// 1-based retry number.
        attempt: u32,
        /// Retries allowed in all.
        attempts: u32,
        /// The wait, jitter included.
        #[serde(serialize_with = "serialize_duration_ms")]
        delay: Duration,
    },
    /// Drop a scheduled retry: the failure resolved before it was due.
    CancelRetry {
        /// The failure whose retry is dropped.
        kind: FailureKind,
    },
    /// The retry is due: ask the probe of `kind` (a database ping, a Redis ping, a broker
    /// health check, a re-run of recovery) and report what it found. Outcome: the kind
    /// restored (`recovered` for a re-run of recovery) or the failure again.
    Probe {
        /// The failure being retried.
        kind: FailureKind,
        /// 1-based retry number.
        attempt: u32,
        /// Retries allowed in all.
        attempts: u32,
    },
    /// The failure is tolerated: ask the probe of `kind` every watch interval, in the
    /// background, and report once it answers. The way back from a tolerated failure.
    Watch {
        /// The failure tolerated.
        kind: FailureKind,
    },
    /// The tolerated failure resolved: stop its watch.
    Unwatch {
        /// The failure that resolved.
        kind: FailureKind,
    },
    /// Exit the process with this code, once the final status is recorded (bounded).
    Exit {
        /// The process exit code.
        code: u8,
    },
}

impl Command {
    /// The command's name, as `machines/*.toml` lists it.
    pub const fn name(&self) -> &'static str {
        match self {
            Command::Publish { .. } => "publish",
            Command::RecordStatus { .. } => "record_status",
            Command::Connect => "connect",
            Command::Recover => "recover",
            Command::Serve { .. } => "serve",
            Command::Drain => "drain",
            Command::ScheduleRetry { .. } => "schedule_retry",
            Command::CancelRetry { .. } => "cancel_retry",
            Command::Probe { .. } => "probe",
            Command::Watch { .. } => "watch",
            Command::Unwatch { .. } => "unwatch",
            Command::Exit { .. } => "exit",
        }
    }

    /// Every command name, in the order the README lists them.
    pub const NAMES: [&'static str; 12] = [
        "publish",
        "record_status",
        "connect",
        "recover",
        "serve",
        "drain",
        "schedule_retry",
        "cancel_retry",
        "probe",
        "watch",
        "unwatch",
        "exit",
    ];
}

impl fmt::Display for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Command::Publish { state, signals } => {
                write!(f, "publish {}, accepting {signals}", state.name())
            }
            Command::RecordStatus { status } => write!(f, "record status {}", status.name()),
            Command::Connect => f.write_str("connect and migrate"),
            Command::Recover => f.write_str("recover"),
            Command::Serve { heartbeat: true } => f.write_str("serve, with database heartbeat"),
            Command::Serve { heartbeat: false } => f.write_str("serve, without database heartbeat"),
            Command::Drain => f.write_str("drain"),
            Command::ScheduleRetry {
                kind,
                attempt,
                attempts,
                delay,
            } => {
                write!(
                    f,
                    "schedule retry {attempt}/{attempts} of {kind} in {}",
                    format_duration(*delay)
                )
            }
            Command::CancelRetry { kind } => write!(f, "cancel retry of {kind}"),
            Command::Probe {
                kind,
                attempt,
                attempts,
            } => {
                write!(f, "probe {kind} ({attempt}/{attempts})")
            }
            Command::Watch { kind } => write!(f, "watch for the end of {kind}"),
            Command::Unwatch { kind } => write!(f, "stop watching {kind}"),
            Command::Exit { code } => write!(f, "exit {code}"),
        }
    }
}

/// Serialises a lifecycle state as its name.
pub fn serialize_state<S: serde::Serializer>(
    state: &lifecycle::State,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(state.name())
}

fn serialize_duration_ms<S: serde::Serializer>(
    delay: &Duration,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    serializer.serialize_u64(u64::try_from(delay.as_millis()).unwrap_or(u64::MAX))
}

/// Formats a duration the way policies write it: `1s`, `500ms`, `1.5s`, `2m`.
pub fn format_duration(duration: Duration) -> String {
    let ms = duration.as_millis();
    if ms == 0 {
        return "0s".to_string();
    }
    if ms < 1000 {
        return format!("{ms}ms");
    }
    if ms.is_multiple_of(60_000) && ms >= 60_000 {
        return format!("{}m", ms / 60_000);
    }
    format_seconds(ms)
}

/// Formats milliseconds as seconds with no trailing zeros: `0s`, `1s`, `1.5s`, `7.25s`.
pub fn format_seconds(ms: u128) -> String {
    let (seconds, fraction) = (ms / 1000, ms % 1000);
    if fraction == 0 {
        return format!("{seconds}s");
    }
    let fraction = format!("{fraction:03}");
    format!("{seconds}.{}s", fraction.trim_end_matches('0'))
}

/// The accept set a log message names (`accepting EXIT`, `accepting all signals`,
/// `accepting none`, `accepting no new signals`), rendered as [`SignalSet`] renders, or
/// `None` when it names none. Tests hold every such line to the set actually published.
pub fn named_accept_set(message: &str) -> Option<String> {
    let (_, rest) = message.split_once("accepting ")?;
    if rest.starts_with("all signals") {
        return Some(SignalSet::ALL.to_string());
    }
    if rest.starts_with("no new signals") {
        return Some(SignalSet::NONE.to_string());
    }
    let named = rest
        .split(|c: char| c.is_whitespace() || c == ';' || c == ',')
        .next()
        .unwrap_or_default();
    Some(named.to_string())
}

/// Decisions a failure machine hands to the lifecycle machine.
#[derive(Debug, Clone, PartialEq)]
pub enum Escalation {
    /// `kind` is being retried: until it resolves, serve only what the policy allows while
    /// degraded for it.
    Suspect {
        /// The failure being retried.
        kind: FailureKind,
    },
    /// Serve degraded because of `kind`.
    Tolerate {
        /// The failure tolerated.
        kind: FailureKind,
        /// The policy's warning.
        warning: String,
    },
    /// A suspected or tolerated failure has resolved.
    Clear {
        /// The failure that resolved.
        kind: FailureKind,
    },
    /// Stop the instance.
    Halt {
        /// The failure that caused the halt.
        kind: FailureKind,
        /// The process exit code.
        exit_code: u8,
    },
}

/// What a machine writes while it handles one event: passed to `statig` as the context.
#[derive(Debug, Default)]
pub struct Outbox {
    /// The machine event being handled, for the transition's `event` field.
    pub event: &'static str,
    /// Level, reason and message the handler chose for the transition it is about to take;
    /// the `after_transition` hook pairs it with the source and target states.
    pub note: Option<(Level, Option<FailureKind>, String)>,
    /// Transitions taken, in order.
    pub transitions: Vec<Transition>,
    /// Commands to carry out, in order.
    pub commands: Vec<Command>,
    /// Decisions for the lifecycle machine.
    pub escalations: Vec<Escalation>,
    /// A random draw in `0..1` for retry jitter, supplied by the driver before each event so
    /// that the machine itself stays deterministic.
    pub jitter_unit: Decimal,
}

impl Outbox {
    /// Starts handling `event`.
    pub fn begin(&mut self, event: &'static str) {
        self.event = event;
        self.note = None;
    }

    /// Describes the transition the handler is about to return.
    pub fn note(&mut self, level: Level, reason: Option<FailureKind>, message: String) {
        self.note = Some((level, reason, message));
    }

    /// Records a completed transition; called from the machines' `after_transition` hooks.
    pub(crate) fn record(&mut self, machine: MachineName, from: &'static str, to: &'static str) {
        let Some((level, reason, message)) = self.note.take() else {
            panic!(
                "{} transition {from} -> {to} on `{}` has no log line",
                machine.as_str(),
                self.event
            );
        };
        self.transitions.push(Transition {
            machine,
            from,
            to,
            event: self.event,
            reason,
            level,
            message,
        });
    }

    /// Empties the outbox for the next step, keeping its allocations.
    pub fn clear(&mut self) {
        self.note = None;
        self.transitions.clear();
        self.commands.clear();
        self.escalations.clear();
    }
}
