//! The instance lifecycle:
//!
//! ```text
//! starting -> recovering -> active | degraded     (active and degraded are both "serving")
//! degraded -> recovering -> active                (a lost dependency returned)
//! any running state -> stopping -> stopped        (graceful shutdown, exit 0)
//! active | degraded -> paused -> active | degraded (the operator's kill switch)
//! any running state -> crashed                    (halt, exit with the policy's code)
//! ```
//!
//! The lifecycle keeps the set of reasons it is degraded for. While degraded it accepts only
//! the signal types that every current reason allows (the policy's `[degraded]` table). While
//! the operator pauses trading (`vigil pause`) it is `paused`, and accepts at most what the
//! pause allows (nothing, or exits only) within what every reason allows.

use super::{Command, Level, MachineName, Outbox};
use crate::vocabulary::{FailureKind, SignalSet};
use statig::blocking::{InitializedStateMachine, IntoStateMachineExt};
use statig::prelude::*;
use std::fmt;

/// Events the lifecycle handles. Failure kinds arrive here only as the failure machines'
/// decisions (tolerate, clear, halt), never raw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LifecycleEvent {
    /// Start-up finished: configuration read, storage open.
    Started,
    /// Recovery finished and its checks passed.
    Recovered,
    /// `kind` is being retried: serve only what the policy allows while degraded for it.
    Suspected {
        /// The failure being retried.
        kind: FailureKind,
    },
    /// The policy tolerates `kind`: serve degraded.
    Tolerated {
        /// The failure tolerated.
        kind: FailureKind,
        /// The policy's warning.
        warning: String,
    },
    /// A tolerated failure resolved.
    Cleared {
        /// The failure that resolved.
        kind: FailureKind,
    },
    /// The policy halts on `kind`.
    Halt {
        /// The failure that halts the instance.
        kind: FailureKind,
        /// The process exit code.
        exit_code: u8,
    },
    /// Shutdown requested (SIGTERM, SIGINT).
    Stop,
    /// Every signal in flight has finished.
    Drained,
    /// The operator paused trading (`vigil pause`): nothing is applied beyond `allows`
    /// (nothing, or exits only) until resumed.
    Paused {
        /// What the pause still lets through.
        allows: SignalSet,
    },
    /// The operator lifted the pause (`vigil resume`).
    Resumed,
}

impl LifecycleEvent {
    /// Every event name, in spec order.
    pub const NAMES: [&'static str; 10] = [
        "started",
        "recovered",
        "suspected",
        "tolerated",
        "cleared",
        "halt",
        "stop",
        "drained",
        "paused",
        "resumed",
    ];

    /// The name used in specs and log fields.
    pub const fn name(&self) -> &'static str {
        match self {
            LifecycleEvent::Started => "started",
            LifecycleEvent::Recovered => "recovered",
            LifecycleEvent::Suspected { .. } => "suspected",
            LifecycleEvent::Tolerated { .. } => "tolerated",
            LifecycleEvent::Cleared { .. } => "cleared",
            LifecycleEvent::Halt { .. } => "halt",
            LifecycleEvent::Stop => "stop",
            LifecycleEvent::Drained => "drained",
            LifecycleEvent::Paused { .. } => "paused",
            LifecycleEvent::Resumed => "resumed",
        }
    }
}

/// A set of failure kinds: the reasons the instance is degraded for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Reasons(u8);

impl Reasons {
    /// No reason.
    pub const NONE: Reasons = Reasons(0);

    /// Adds `kind`.
    #[must_use]
    pub const fn with(self, kind: FailureKind) -> Reasons {
        Reasons(self.0 | 1 << kind.index())
    }

    /// Removes `kind`.
    #[must_use]
    pub const fn without(self, kind: FailureKind) -> Reasons {
        Reasons(self.0 & !(1 << kind.index()))
    }

    /// Whether `kind` is a reason.
    pub const fn contains(self, kind: FailureKind) -> bool {
        self.0 & (1 << kind.index()) != 0
    }

    /// Whether there is no reason.
    pub const fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// Whether any reason requires recovery to run again once it clears.
    pub fn needs_recovery(self) -> bool {
        self.iter().any(FailureKind::needs_recovery)
    }

    /// The reasons, in [`FailureKind::ALL`] order.
    pub fn iter(self) -> impl Iterator<Item = FailureKind> {
        FailureKind::ALL
            .into_iter()
            .filter(move |kind| self.contains(*kind))
    }
}

impl FromIterator<FailureKind> for Reasons {
    fn from_iter<I: IntoIterator<Item = FailureKind>>(iter: I) -> Self {
        iter.into_iter().fold(Reasons::NONE, Reasons::with)
    }
}

impl fmt::Display for Reasons {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = self.iter().map(FailureKind::as_str).collect();
        f.write_str(&names.join("+"))
    }
}

/// Shared storage of the lifecycle machine.
#[derive(Debug, Clone)]
pub struct Lifecycle {
    /// What each degraded reason still accepts, from the policy.
    accepts_while: [SignalSet; 6],
    /// Why the instance is degraded (also kept while starting or recovering, so that a
    /// failure tolerated then still degrades the instance once it serves).
    reasons: Reasons,
    /// The exit code of the halt that crashed the instance.
    exit_code: u8,
    /// Whether a recovery has read every stored position since the state was last in doubt
    /// (it passed, or it decoded everything and only a consistency check failed). Until one
    /// has, the positions are not known, so nothing is accepted whatever the policy's
    /// `[degraded]` table allows.
    loaded: bool,
    /// What the operator's pause still allows (nothing, or exits only); `None` while trading
    /// is not paused. Kept while starting, recovering or stopping, so that an instance that
    /// was paused serves paused once recovered, and never `active` in between.
    hold: Option<SignalSet>,
}

#[state_machine(
    initial = "State::starting()",
    visibility = "pub",
    state(derive(Debug, Clone, Copy, PartialEq, Eq)),
    superstate(derive(Debug)),
    after_transition = "Self::after_transition"
)]
impl Lifecycle {
    /// Every state that is not terminal: it can halt or be asked to stop.
    #[superstate]
    fn running(&mut self, context: &mut Outbox, event: &LifecycleEvent) -> Outcome<State> {
        match event {
            LifecycleEvent::Halt { kind, exit_code } => {
                self.exit_code = *exit_code;
                let message = format!("halting on {}; exit code {exit_code}", kind.code());
                context.note(Level::Error, Some(*kind), message);
                Transition(State::crashed())
            }
            LifecycleEvent::Stop => {
                let message = "stop requested; accepting no new signals, finishing those in flight"
                    .to_string();
                context.note(Level::Info, None, message);
                Transition(State::stopping())
            }
            // A reason that clears outside `degraded` is simply forgotten.
            LifecycleEvent::Cleared { kind } => {
                self.reasons = self.reasons.without(*kind);
                Handled
            }
            // Before serving nothing is accepted anyway: remember the reason, so that the
            // instance serves degraded if it is still being retried once recovery ends.
            LifecycleEvent::Suspected { kind } => {
                self.reasons = self.reasons.with(*kind);
                Handled
            }
            // Before serving, or while stopping: remember the pause (or its end), so that
            // the instance serves paused once recovered.
            LifecycleEvent::Paused { allows } => {
                self.hold = Some(*allows);
                Handled
            }
            LifecycleEvent::Resumed => {
                self.hold = None;
                Handled
            }
            _ => Handled,
        }
    }

    /// Booting: reading configuration and opening storage. Accepts no signals.
    #[state(superstate = "running", entry_action = "enter_starting")]
    fn starting(&mut self, context: &mut Outbox, event: &LifecycleEvent) -> Outcome<State> {
        match event {
            LifecycleEvent::Started => {
                context.note(
                    Level::Info,
                    None,
                    "instance started; recovering state".to_string(),
                );
                Transition(State::recovering())
            }
            LifecycleEvent::Tolerated { kind, warning } => {
                self.tolerate_before_serving(context, *kind, warning)
            }
            LifecycleEvent::Cleared { kind } if self.blocked_by(*kind) => {
                self.run_again(context, *kind, "starting again", State::starting())
            }
            _ => Super,
        }
    }

    /// Rebuilding state from storage and validating it. Accepts no signals.
    #[state(superstate = "running", entry_action = "enter_recovering")]
    fn recovering(&mut self, context: &mut Outbox, event: &LifecycleEvent) -> Outcome<State> {
        match event {
            LifecycleEvent::Recovered => self.recovered(context),
            LifecycleEvent::Tolerated { kind, warning } => {
                self.tolerate_before_serving(context, *kind, warning)
            }
            LifecycleEvent::Cleared { kind } if self.blocked_by(*kind) => self.run_again(
                context,
                *kind,
                "recovering state again",
                State::recovering(),
            ),
            _ => Super,
        }
    }

    /// Active, degraded and paused: the webhook listener is open.
    #[superstate(superstate = "running")]
    fn serving() -> Outcome<State> {
        Super
    }

    /// Serving normally: every signal type is accepted.
    #[state(superstate = "serving", entry_action = "enter_active")]
    fn active(&mut self, context: &mut Outbox, event: &LifecycleEvent) -> Outcome<State> {
        match event {
            LifecycleEvent::Tolerated { kind, warning } => {
                self.degrade(context, *kind, warning, "serving degraded")
            }
            LifecycleEvent::Suspected { kind } => {
                self.degrade(context, *kind, "retrying", "serving degraded")
            }
            LifecycleEvent::Paused { allows } => self.pause(context, *allows),
            _ => Super,
        }
    }

    /// Serving with failures tolerated: only what every reason allows is accepted.
    #[state(superstate = "serving", entry_action = "enter_degraded")]
    fn degraded(&mut self, context: &mut Outbox, event: &LifecycleEvent) -> Outcome<State> {
        if let Some(outcome) = self.reason_changed(context, event) {
            return outcome;
        }
        match event {
            LifecycleEvent::Paused { allows } => self.pause(context, *allows),
            _ => Super,
        }
    }

    /// Paused by the operator: accepts at most what the pause allows, within what every
    /// reason allows; failures still come and go underneath.
    #[state(superstate = "serving", entry_action = "enter_paused")]
    fn paused(&mut self, context: &mut Outbox, event: &LifecycleEvent) -> Outcome<State> {
        if let Some(outcome) = self.reason_changed(context, event) {
            return outcome;
        }
        match event {
            LifecycleEvent::Paused { allows } if self.hold != Some(*allows) => {
                self.hold = Some(*allows);
                let message = format!(
                    "pause changed by the operator; accepting {}",
                    self.accepts(self.reasons)
                );
                context.note(Level::Warn, None, message);
                Transition(State::paused())
            }
            LifecycleEvent::Paused { .. } => Handled,
            LifecycleEvent::Resumed => {
                self.hold = None;
                if self.reasons.is_empty() {
                    let message = "resumed by the operator; accepting all signals".to_string();
                    context.note(Level::Info, None, message);
                    Transition(State::active())
                } else {
                    let message = format!(
                        "resumed by the operator; still degraded by {}; accepting {}",
                        self.reasons,
                        self.accepts(self.reasons)
                    );
                    context.note(Level::Warn, None, message);
                    Transition(State::degraded())
                }
            }
            _ => Super,
        }
    }

    /// Shutting down: no new signals; those in flight finish.
    #[state(superstate = "running", entry_action = "enter_stopping")]
    fn stopping(&mut self, context: &mut Outbox, event: &LifecycleEvent) -> Outcome<State> {
        match event {
            LifecycleEvent::Drained => {
                context.note(
                    Level::Info,
                    None,
                    "signals in flight finished; stopped".to_string(),
                );
                Transition(State::stopped())
            }
            // Already stopping: a second request and failures that would only narrow intake
            // change nothing, since nothing new is accepted.
            LifecycleEvent::Stop
            | LifecycleEvent::Tolerated { .. }
            | LifecycleEvent::Suspected { .. } => Handled,
            // `running` remembers a pause or its end; nothing new is accepted either way.
            _ => Super,
        }
    }

    /// Shut down cleanly. Terminal: the process exits 0.
    #[state(entry_action = "enter_stopped")]
    fn stopped() -> Outcome<State> {
        Handled
    }

    /// Halted by policy. Terminal: the process exits with the policy's code.
    #[state(entry_action = "enter_crashed")]
    fn crashed() -> Outcome<State> {
        Handled
    }

    #[action]
    fn enter_starting(&mut self, context: &mut Outbox) {
        self.publish(context, State::starting(), SignalSet::NONE);
        context.commands.push(Command::Connect);
    }

    #[action]
    fn enter_recovering(&mut self, context: &mut Outbox) {
        self.loaded = false;
        self.publish(context, State::recovering(), SignalSet::NONE);
        context.commands.push(Command::RecordStatus {
            status: State::recovering(),
        });
        context.commands.push(Command::Recover);
    }

    #[action]
    fn enter_active(&mut self, context: &mut Outbox) {
        assert!(
            self.reasons.is_empty(),
            "active with degraded reasons {}",
            self.reasons
        );
        assert!(self.hold.is_none(), "active while paused");
        self.enter(context, State::active(), SignalSet::ALL);
        context.commands.push(Command::Serve { heartbeat: true });
    }

    #[action]
    fn enter_degraded(&mut self, context: &mut Outbox) {
        assert!(!self.reasons.is_empty(), "degraded without a reason");
        assert!(self.hold.is_none(), "degraded while paused");
        self.enter(context, State::degraded(), self.accepts(self.reasons));
        context.commands.push(Command::Serve {
            heartbeat: !self.reasons.contains(FailureKind::DbUnavailable),
        });
    }

    #[action]
    fn enter_paused(&mut self, context: &mut Outbox) {
        assert!(self.hold.is_some(), "paused without a pause");
        self.enter(context, State::paused(), self.accepts(self.reasons));
        context.commands.push(Command::Serve {
            heartbeat: !self.reasons.contains(FailureKind::DbUnavailable),
        });
    }

    #[action]
    fn enter_stopping(&mut self, context: &mut Outbox) {
        self.enter(context, State::stopping(), SignalSet::NONE);
        context.commands.push(Command::Drain);
    }

    #[action]
    fn enter_stopped(&mut self, context: &mut Outbox) {
        self.enter(context, State::stopped(), SignalSet::NONE);
        context.commands.push(Command::Exit { code: 0 });
    }

    #[action]
    fn enter_crashed(&mut self, context: &mut Outbox) {
        self.enter(context, State::crashed(), SignalSet::NONE);
        context.commands.push(Command::Exit {
            code: self.exit_code,
        });
    }
}

impl Lifecycle {
    /// A lifecycle whose degraded states accept what `accepts_while` says per reason.
    pub fn new(accepts_while: [SignalSet; 6]) -> Lifecycle {
        Lifecycle {
            accepts_while,
            reasons: Reasons::NONE,
            exit_code: 1,
            loaded: false,
            hold: None,
        }
    }

    /// The same lifecycle, paused by the operator with `hold` let through (`None`: not
    /// paused); for dry-runs and tests that start mid-way.
    #[must_use]
    pub fn with_hold(mut self, hold: Option<SignalSet>) -> Lifecycle {
        self.hold = hold;
        self
    }

    /// The same lifecycle, crashing with `exit_code` (for dry-runs that start crashed).
    #[must_use]
    pub fn with_exit_code(mut self, exit_code: u8) -> Lifecycle {
        self.exit_code = exit_code;
        self
    }

    /// Builds the machine in `state` with `reasons` (for dry-runs that start mid-way) and
    /// initialises it, which runs the state's entry action.
    pub fn machine_at(
        mut self,
        state: State,
        reasons: Reasons,
        context: &mut Outbox,
    ) -> InitializedStateMachine<Lifecycle> {
        self.reasons = reasons;
        // A serving state is only reached through a recovery that read the positions.
        self.loaded = state.is_serving();
        // A paused start with no pause named holds everything back.
        if matches!(state, State::Paused {}) && self.hold.is_none() {
            self.hold = Some(SignalSet::NONE);
        }
        let mut machine = self.uninitialized_state_machine();
        *machine.state_mut() = state;
        machine.init_with_context(context)
    }

    /// The reasons the instance is degraded for.
    pub fn reasons(&self) -> Reasons {
        self.reasons
    }

    /// The exit code a crash exits with.
    pub fn exit_code(&self) -> u8 {
        self.exit_code
    }

    /// What the operator's pause lets through; `None` while trading is not paused.
    pub fn hold(&self) -> Option<SignalSet> {
        self.hold
    }

    /// What is accepted while degraded for all of `reasons`: only what each allows, within
    /// what the operator's pause allows, and nothing before a recovery has read the positions.
    pub fn accepts(&self, reasons: Reasons) -> SignalSet {
        if !self.loaded {
            return SignalSet::NONE;
        }
        reasons
            .iter()
            .fold(self.hold.unwrap_or(SignalSet::ALL), |set, kind| {
                set.intersect(self.accepts_while[kind.index()])
            })
    }

    /// Publishes `state` and what it accepts: always the first command of an entry, so
    /// intake narrows or widens before any I/O.
    fn publish(&self, context: &mut Outbox, state: State, signals: SignalSet) {
        context.commands.push(Command::Publish { state, signals });
    }

    /// Publishes `state`, then records it.
    fn enter(&self, context: &mut Outbox, state: State, signals: SignalSet) {
        self.publish(context, state, signals);
        context
            .commands
            .push(Command::RecordStatus { status: state });
    }

    /// A recovery passed: it answers every reason a recovery can answer; what is left (Redis,
    /// the broker) does not touch stored state.
    fn recovered(&mut self, context: &mut Outbox) -> Outcome<State> {
        self.loaded = true;
        self.reasons = self
            .reasons
            .iter()
            .filter(|kind| !kind.needs_recovery())
            .collect();
        if self.hold.is_some() {
            let message = format!(
                "recovery complete; paused by the operator; accepting {}",
                self.accepts(self.reasons)
            );
            context.note(Level::Warn, None, message);
            Transition(State::paused())
        } else if self.reasons.is_empty() {
            context.note(
                Level::Info,
                None,
                "recovery complete; accepting all signals".to_string(),
            );
            Transition(State::active())
        } else {
            let message = format!(
                "recovery complete; still degraded by {}; accepting {}",
                self.reasons,
                self.accepts(self.reasons)
            );
            context.note(Level::Warn, None, message);
            Transition(State::degraded())
        }
    }

    /// `kind`, which held up the step of `state`, cleared: enter `state` again, which gives
    /// its step's command again.
    fn run_again(
        &mut self,
        context: &mut Outbox,
        kind: FailureKind,
        what: &str,
        state: State,
    ) -> Outcome<State> {
        self.reasons = self.reasons.without(kind);
        context.note(Level::Info, Some(kind), format!("{kind} cleared; {what}"));
        Transition(state)
    }

    /// Whether start-up or recovery was waiting on `kind`: it is a reason, and one whose
    /// step (connect, recover) must run again now that it cleared.
    fn blocked_by(&self, kind: FailureKind) -> bool {
        self.reasons.contains(kind) && kind.needs_recovery()
    }

    /// A failure event while serving `degraded` or `paused`: a new reason narrows what is
    /// accepted; one that clears widens it, or runs recovery again when it was the last that
    /// left stored state in doubt; a watch's re-run of recovery that passed answers the
    /// reasons it can. A repeated report changes nothing. `None`: not such an event.
    fn reason_changed(
        &mut self,
        context: &mut Outbox,
        event: &LifecycleEvent,
    ) -> Option<Outcome<State>> {
        let lead = match self.hold {
            Some(_) => "still paused, now also",
            None => "still degraded, now also",
        };
        Some(match event {
            LifecycleEvent::Tolerated { kind, warning } if !self.reasons.contains(*kind) => {
                self.degrade(context, *kind, warning, lead)
            }
            LifecycleEvent::Suspected { kind } if !self.reasons.contains(*kind) => {
                self.degrade(context, *kind, "retrying", lead)
            }
            // Already a reason (a retry that ran out and is now tolerated, or a repeated
            // report): what is accepted does not change.
            LifecycleEvent::Tolerated { .. } | LifecycleEvent::Suspected { .. } => Handled,
            LifecycleEvent::Cleared { kind } if self.reasons.contains(*kind) => {
                self.clear(context, *kind)
            }
            LifecycleEvent::Cleared { .. } => Handled,
            LifecycleEvent::Recovered if self.reasons.needs_recovery() => self.recovered(context),
            _ => return None,
        })
    }

    /// The reason `kind` cleared while serving: recover again if it was the last that left
    /// stored state in doubt; otherwise stay paused, serve everything, or stay degraded by
    /// what remains.
    fn clear(&mut self, context: &mut Outbox, kind: FailureKind) -> Outcome<State> {
        let remaining = self.reasons.without(kind);
        self.reasons = remaining;
        let (message, target) = if kind.needs_recovery() && !remaining.needs_recovery() {
            (
                format!("{kind} cleared; recovering state again"),
                State::recovering(),
            )
        } else if self.hold.is_some() {
            (
                format!(
                    "{kind} cleared; still paused; accepting {}",
                    self.accepts(remaining)
                ),
                State::paused(),
            )
        } else if remaining.is_empty() {
            (
                format!("{kind} cleared; accepting all signals"),
                State::active(),
            )
        } else {
            (
                format!(
                    "{kind} cleared; still degraded by {remaining}; accepting {}",
                    self.accepts(remaining)
                ),
                State::degraded(),
            )
        };
        context.note(Level::Info, Some(kind), message);
        Transition(target)
    }

    /// `kind` narrows what is accepted: degraded, or still paused while the operator's
    /// pause holds.
    fn degrade(
        &mut self,
        context: &mut Outbox,
        kind: FailureKind,
        warning: &str,
        lead: &str,
    ) -> Outcome<State> {
        self.reasons = self.reasons.with(kind);
        let message = format!(
            "{lead} {kind}: {warning}; accepting {}",
            self.accepts(self.reasons)
        );
        context.note(Level::Warn, Some(kind), message);
        match self.hold {
            Some(_) => Transition(State::paused()),
            None => Transition(State::degraded()),
        }
    }

    /// The operator paused trading: serve paused, letting through at most `allows`.
    fn pause(&mut self, context: &mut Outbox, allows: SignalSet) -> Outcome<State> {
        self.hold = Some(allows);
        let message = format!(
            "paused by the operator; accepting {}",
            self.accepts(self.reasons)
        );
        context.note(Level::Warn, None, message);
        Transition(State::paused())
    }

    /// A failure tolerated before the instance serves: if it leaves stored state in doubt
    /// the instance serves degraded now; otherwise it is remembered and start-up goes on.
    fn tolerate_before_serving(
        &mut self,
        context: &mut Outbox,
        kind: FailureKind,
        warning: &str,
    ) -> Outcome<State> {
        if kind.needs_recovery() {
            if kind.found_with_positions_read() {
                self.loaded = true;
            }
            let lead = match self.hold {
                Some(_) => "serving paused, and degraded",
                None => "serving degraded",
            };
            return self.degrade(context, kind, warning, lead);
        }
        self.reasons = self.reasons.with(kind);
        Handled
    }

    fn after_transition(&mut self, source: &State, target: &State, context: &mut Outbox) {
        context.record(MachineName::Lifecycle, source.name(), target.name());
    }
}

impl State {
    /// Every state name, in spec order.
    pub const NAMES: [&'static str; 8] = [
        "starting",
        "recovering",
        "active",
        "degraded",
        "paused",
        "stopping",
        "stopped",
        "crashed",
    ];

    /// The name used in specs, log fields and recorded statuses.
    pub const fn name(&self) -> &'static str {
        match self {
            State::Starting {} => "starting",
            State::Recovering {} => "recovering",
            State::Active {} => "active",
            State::Degraded {} => "degraded",
            State::Paused {} => "paused",
            State::Stopping {} => "stopping",
            State::Stopped {} => "stopped",
            State::Crashed {} => "crashed",
        }
    }

    /// The state a new instance starts in.
    pub fn initial() -> State {
        State::starting()
    }

    /// The state with this name.
    pub fn from_name(name: &str) -> Option<State> {
        Some(match name {
            "starting" => State::starting(),
            "recovering" => State::recovering(),
            "active" => State::active(),
            "degraded" => State::degraded(),
            "paused" => State::paused(),
            "stopping" => State::stopping(),
            "stopped" => State::stopped(),
            "crashed" => State::crashed(),
            _ => return None,
        })
    }

    /// Whether the process ends in this state.
    pub const fn is_terminal(&self) -> bool {
        matches!(self, State::Stopped {} | State::Crashed {})
    }

    /// Whether the instance serves (the `serving` superstate: active, degraded or paused).
    pub const fn is_serving(&self) -> bool {
        matches!(
            self,
            State::Active {} | State::Degraded {} | State::Paused {}
        )
    }

    /// Whether the instance is ending: stopping, stopped or crashed.
    pub const fn is_ending(&self) -> bool {
        matches!(self, State::Stopping {}) || self.is_terminal()
    }
}
