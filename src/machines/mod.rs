//! The two state machines at the heart of vigil, written with `statig`.
//!
//! Invariant: the machines are pure. They never do I/O, never read the clock and never
//! sleep. They take events and write what should happen into an [`Outbox`]: transitions (each
//! becomes one log line) and [`Effect`]s, which the [driver](crate::driver) carries out.

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

/// The instance status recorded in storage and shown by `/ready` and `/status`.
pub type Status = &'static str;

/// Something the driver must do because a machine said so.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "effect", rename_all = "snake_case")]
pub enum Effect {
    /// Record the instance status (database, and Redis with HA).
    RecordStatus {
        /// The lifecycle state name.
        status: Status,
    },
    /// From now on accept exactly these signal types (none stops the listener's intake).
    Accept {
        /// The accepted signal types.
        signals: SignalSet,
    },
    /// Try the failed step again after `delay` (jitter already applied).
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
    /// The retry is due: run the failed step again and report its outcome.
    Reattempt {
        /// The failure being retried.
        kind: FailureKind,
        /// 1-based retry number.
        attempt: u32,
        /// Retries allowed in all.
        attempts: u32,
    },
    /// Exit the process with this code.
    Exit {
        /// The process exit code.
        code: u8,
    },
}

impl fmt::Display for Effect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Effect::RecordStatus { status } => write!(f, "record status {status}"),
            Effect::Accept { signals } => write!(f, "accept {signals}"),
            Effect::ScheduleRetry {
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
            Effect::CancelRetry { kind } => write!(f, "cancel retry of {kind}"),
            Effect::Reattempt {
                kind,
                attempt,
                attempts,
            } => {
                write!(f, "reattempt {kind} ({attempt}/{attempts})")
            }
            Effect::Exit { code } => write!(f, "exit {code}"),
        }
    }
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
    /// Effects to carry out, in order.
    pub effects: Vec<Effect>,
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
        self.effects.clear();
        self.escalations.clear();
    }
}
