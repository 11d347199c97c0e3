//! The failure-response machine: one instance per failure kind, configured by that kind's
//! policy entry. It decides, failure by failure, whether to retry (and when), to continue
//! degraded, or to halt, and hands the last two to the lifecycle as [`Escalation`]s.
//!
//! ```text
//! idle --failed--> backing_off --retry_due--> retrying --failed--> backing_off | tolerating | halted
//!   \--failed--> tolerating | halted          retrying --succeeded--> idle
//! ```

use super::{format_duration, Command, Escalation, Level, MachineName, Outbox};
use crate::policy::{Exhausted, Response, RetrySchedule};
use crate::vocabulary::FailureKind;
use statig::blocking::{InitializedStateMachine, IntoStateMachineExt};
use statig::prelude::*;

/// Events the failure machine handles.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureEvent {
    /// The step failed with this machine's failure kind.
    Failed,
    /// The scheduled retry is due.
    RetryDue,
    /// The step succeeded, or the dependency is back.
    Succeeded,
}

impl FailureEvent {
    /// Every event, for conformance checks and rendering.
    pub const ALL: [FailureEvent; 3] = [
        FailureEvent::Failed,
        FailureEvent::RetryDue,
        FailureEvent::Succeeded,
    ];

    /// The name used in specs and log fields.
    pub const fn as_str(self) -> &'static str {
        match self {
            FailureEvent::Failed => "failed",
            FailureEvent::RetryDue => "retry_due",
            FailureEvent::Succeeded => "succeeded",
        }
    }
}

/// Shared storage: the kind this machine answers for and the policy's answer.
#[derive(Debug, Clone)]
pub struct FailureResponse {
    /// The failure kind this instance of the machine handles.
    kind: FailureKind,
    /// The policy's response to that kind.
    response: Response,
}

#[state_machine(
    initial = "State::idle()",
    visibility = "pub",
    state(derive(Debug, Clone, Copy, PartialEq, Eq)),
    superstate(derive(Debug)),
    after_transition = "Self::after_transition"
)]
impl FailureResponse {
    /// No failure of this kind is being handled.
    #[state]
    fn idle(&mut self, context: &mut Outbox, event: &FailureEvent) -> Outcome<State> {
        match event {
            FailureEvent::Failed => match &self.response {
                Response::Halt { exit_code } => self.halt(context, *exit_code, String::new()),
                Response::Continue { warning } => {
                    let warning = warning.clone();
                    self.tolerate(context, warning, String::new())
                }
                Response::Retry { .. } => {
                    let (delay, attempts) = self.schedule(context, 1);
                    let message = format!(
                        "{}: retry 1/{attempts} in {}",
                        self.kind,
                        format_duration(delay)
                    );
                    context.note(Level::Warn, Some(self.kind), message);
                    context
                        .escalations
                        .push(Escalation::Suspect { kind: self.kind });
                    Transition(State::backing_off(1))
                }
            },
            // Nothing is being handled, so there is no retry to run and nothing to resolve.
            FailureEvent::RetryDue | FailureEvent::Succeeded => Handled,
        }
    }

    /// A retry is scheduled; waiting for it to be due.
    #[state]
    fn backing_off(
        &mut self,
        attempt: &mut u32,
        context: &mut Outbox,
        event: &FailureEvent,
    ) -> Outcome<State> {
        let attempts = self.schedule_ref().attempts;
        match event {
            FailureEvent::RetryDue => {
                let message = format!("{}: retry {attempt}/{attempts} now", self.kind);
                context.note(Level::Info, Some(self.kind), message);
                context.commands.push(Command::Probe {
                    kind: self.kind,
                    attempt: *attempt,
                    attempts,
                });
                Transition(State::retrying(*attempt))
            }
            FailureEvent::Succeeded => {
                let message = format!(
                    "{}: resolved before retry {attempt}/{attempts}; retry cancelled",
                    self.kind
                );
                context.note(Level::Info, Some(self.kind), message);
                context
                    .commands
                    .push(Command::CancelRetry { kind: self.kind });
                context
                    .escalations
                    .push(Escalation::Clear { kind: self.kind });
                Transition(State::idle())
            }
            // A further report of the same failure while waiting changes nothing: the retry
            // that is already scheduled will find out whether it persists.
            FailureEvent::Failed => Handled,
        }
    }

    /// The failed step is being tried again; waiting for its outcome.
    #[state]
    fn retrying(
        &mut self,
        attempt: &mut u32,
        context: &mut Outbox,
        event: &FailureEvent,
    ) -> Outcome<State> {
        let attempts = self.schedule_ref().attempts;
        match event {
            FailureEvent::Failed if *attempt < attempts => {
                let next = *attempt + 1;
                let (delay, _) = self.schedule(context, next);
                let message = format!(
                    "{}: retry {attempt}/{attempts} failed; retry {next}/{attempts} in {}",
                    self.kind,
                    format_duration(delay)
                );
                context.note(Level::Warn, Some(self.kind), message);
                Transition(State::backing_off(next))
            }
            FailureEvent::Failed => {
                let spent = format!("{attempts} retries failed; ");
                match self.exhausted() {
                    Exhausted::Halt { exit_code } => {
                        let exit_code = *exit_code;
                        self.halt(context, exit_code, spent)
                    }
                    Exhausted::Continue { warning } => {
                        let warning = warning.clone();
                        self.tolerate(context, warning, spent)
                    }
                }
            }
            FailureEvent::Succeeded => {
                let message = format!("{}: retry {attempt}/{attempts} succeeded", self.kind);
                context.note(Level::Info, Some(self.kind), message);
                context
                    .escalations
                    .push(Escalation::Clear { kind: self.kind });
                Transition(State::idle())
            }
            // The retry is already running; its outcome will arrive as failed or succeeded.
            FailureEvent::RetryDue => Handled,
        }
    }

    /// The failure is tolerated: the lifecycle serves degraded until it resolves.
    #[state]
    fn tolerating(&mut self, context: &mut Outbox, event: &FailureEvent) -> Outcome<State> {
        match event {
            FailureEvent::Succeeded => {
                context.note(
                    Level::Info,
                    Some(self.kind),
                    format!("{}: resolved; no longer tolerated", self.kind),
                );
                context.commands.push(Command::Unwatch { kind: self.kind });
                context
                    .escalations
                    .push(Escalation::Clear { kind: self.kind });
                Transition(State::idle())
            }
            // Already tolerated: a further report changes nothing, and no retry is pending.
            FailureEvent::Failed | FailureEvent::RetryDue => Handled,
        }
    }

    /// The failure halted the instance. Terminal.
    #[state]
    fn halted() -> Outcome<State> {
        Handled
    }
}

impl FailureResponse {
    /// A machine for `kind`, answering as `response` says.
    pub fn new(kind: FailureKind, response: Response) -> FailureResponse {
        FailureResponse { kind, response }
    }

    /// The kind this machine handles.
    pub fn kind(&self) -> FailureKind {
        self.kind
    }

    /// Builds the machine in `state` (for dry-runs that start mid-way) and initialises it.
    pub fn machine_at(self, state: State) -> InitializedStateMachine<FailureResponse> {
        let mut machine = self.uninitialized_state_machine();
        *machine.state_mut() = state;
        machine.init_with_context(&mut Outbox::default())
    }

    /// The retry schedule; only called from the retry states, which exist only under a
    /// retry response.
    fn schedule_ref(&self) -> &RetrySchedule {
        match &self.response {
            Response::Retry { schedule, .. } => schedule,
            other => panic!(
                "{} is in a retry state under a {other:?} response",
                self.kind
            ),
        }
    }

    fn exhausted(&self) -> &Exhausted {
        match &self.response {
            Response::Retry { then, .. } => then,
            other => panic!("{} exhausted retries under a {other:?} response", self.kind),
        }
    }

    /// Schedules retry `attempt` and returns its wait (jitter applied) and the number of
    /// attempts allowed.
    fn schedule(&self, context: &mut Outbox, attempt: u32) -> (std::time::Duration, u32) {
        let schedule = self.schedule_ref();
        let delay = schedule.jittered_delay(attempt, context.jitter_unit);
        context.commands.push(Command::ScheduleRetry {
            kind: self.kind,
            attempt,
            attempts: schedule.attempts,
            delay,
        });
        (delay, schedule.attempts)
    }

    fn halt(&self, context: &mut Outbox, exit_code: u8, spent: String) -> Outcome<State> {
        let message = format!("{}: {spent}halting with exit code {exit_code}", self.kind);
        context.note(Level::Error, Some(self.kind), message);
        context.escalations.push(Escalation::Halt {
            kind: self.kind,
            exit_code,
        });
        Transition(State::halted())
    }

    fn tolerate(&self, context: &mut Outbox, warning: String, spent: String) -> Outcome<State> {
        let message = format!("{}: {spent}continuing degraded: {warning}", self.kind);
        context.note(Level::Warn, Some(self.kind), message);
        context.commands.push(Command::Watch { kind: self.kind });
        context.escalations.push(Escalation::Tolerate {
            kind: self.kind,
            warning,
        });
        Transition(State::tolerating())
    }

    fn after_transition(&mut self, source: &State, target: &State, context: &mut Outbox) {
        context.record(MachineName::Failure, source.name(), target.name());
    }
}

impl State {
    /// Every state name, in spec order.
    pub const NAMES: [&'static str; 5] =
        ["idle", "backing_off", "retrying", "tolerating", "halted"];

    /// The resting state: `tolerating` when the failure is already tolerated, else `idle`.
    pub fn at_rest(tolerating: bool) -> State {
        if tolerating {
            State::tolerating()
        } else {
            State::idle()
        }
    }

    /// A retry state with its attempt number (for conformance tests and dry-runs).
    pub fn in_retry(retrying: bool, attempt: u32) -> State {
        if retrying {
            State::retrying(attempt)
        } else {
            State::backing_off(attempt)
        }
    }

    /// The terminal state.
    pub fn terminal() -> State {
        State::halted()
    }

    /// The name used in specs and log fields.
    pub const fn name(&self) -> &'static str {
        match self {
            State::Idle {} => "idle",
            State::BackingOff { .. } => "backing_off",
            State::Retrying { .. } => "retrying",
            State::Tolerating {} => "tolerating",
            State::Halted {} => "halted",
        }
    }
}
