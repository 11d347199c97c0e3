//! The machine specs in `machines/*.toml` and the compiled machines cannot drift apart.
//!
//! Every (state, event) pair of each machine is driven under every situation that matters
//! (policy responses, attempts left, degraded reasons). A pair the spec lists, whose `when`
//! holds, must reach the listed state and write the listed line at the listed level; any
//! other pair must leave the state unchanged and write nothing.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use regex::Regex;
use rust_decimal::Decimal;
use std::collections::BTreeSet;
use std::time::Duration;
use vigil::machines::failure::{self, FailureEvent, FailureResponse};
use vigil::machines::lifecycle::{self, Lifecycle, LifecycleEvent, Reasons};
use vigil::machines::{Command, MachineName, Outbox, Transition};
use vigil::policy::{Exhausted, Policy, Response, RetrySchedule};
use vigil::spec::MachineSpec;
use vigil::vocabulary::{FailureKind, SignalSet, SignalType};

fn spec(name: &str) -> MachineSpec {
    MachineSpec::shipped()
        .unwrap()
        .into_iter()
        .find(|spec| spec.machine == name)
        .unwrap()
}

/// A log template as a regex: `{name}` stands for any non-empty text.
fn template(log: &str) -> Regex {
    let pattern = Regex::new(r"\{[a-z_]+\}").unwrap();
    let mut regex = String::from("^");
    let mut last = 0;
    for placeholder in pattern.find_iter(log) {
        regex.push_str(&regex::escape(&log[last..placeholder.start()]));
        regex.push_str(".+");
        last = placeholder.end();
    }
    regex.push_str(&regex::escape(&log[last..]));
    regex.push('$');
    Regex::new(&regex).unwrap()
}

/// What a machine did with one event.
struct Taken<'a> {
    /// The state it reached.
    reached: &'a str,
    /// The transitions it logged.
    transitions: &'a [Transition],
    /// The commands it gave, when the transition itself lists them (not its target's entry).
    commands: Option<&'a [Command]>,
}

/// The one check every case goes through.
fn check(
    spec: &MachineSpec,
    situation: &str,
    state: &str,
    event: &str,
    holds: &dyn Fn(&str) -> bool,
    taken: Taken<'_>,
) {
    let Taken {
        reached,
        transitions,
        commands,
    } = taken;
    let expected: Vec<_> = spec
        .transitions_from(state, event)
        .filter(|transition| transition.when.as_deref().is_none_or(holds))
        .collect();
    assert!(
        expected.len() <= 1,
        "{situation}: the spec lists overlapping transitions for {state} --{event}-->"
    );
    let ours: Vec<&Transition> = transitions
        .iter()
        .filter(|t| t.machine.as_str() == spec.machine)
        .collect();
    match expected.first() {
        None => {
            assert_eq!(
                reached, state,
                "{situation}: unlisted {state} --{event}--> must not change state"
            );
            assert!(
                ours.is_empty(),
                "{situation}: unlisted {state} --{event}--> logged {ours:?}"
            );
            if let Some(commands) = commands {
                assert!(
                    commands.is_empty(),
                    "{situation}: unlisted {state} --{event}--> gave commands {commands:?}"
                );
            }
        }
        Some(listed) => {
            assert_eq!(
                reached, listed.to,
                "{situation}: {state} --{event}--> reached the wrong state"
            );
            assert_eq!(
                ours.len(),
                1,
                "{situation}: {state} --{event}--> must log exactly one line, got {ours:?}"
            );
            let taken = ours[0];
            assert_eq!(
                (taken.from, taken.to, taken.event),
                (state, listed.to.as_str(), event),
                "{situation}"
            );
            assert_eq!(
                taken.level.as_str(),
                listed.level,
                "{situation}: {state} --{event}--> level"
            );
            assert!(
                template(&listed.log).is_match(&taken.message),
                "{situation}: {state} --{event}--> wrote {:?}, the spec says {:?}",
                taken.message,
                listed.log
            );
            if let Some(commands) = commands {
                let given: Vec<&str> = commands.iter().map(Command::name).collect();
                assert_eq!(
                    given, listed.commands,
                    "{situation}: {state} --{event}--> commands"
                );
            }
        }
    }
}

fn names(items: impl IntoIterator<Item = impl ToString>) -> BTreeSet<String> {
    items.into_iter().map(|item| item.to_string()).collect()
}

#[test]
fn specs_list_exactly_the_states_and_events_of_the_code() {
    let lifecycle_spec = spec("lifecycle");
    assert_eq!(
        names(lifecycle_spec.states.iter().map(|s| &s.name)),
        names(lifecycle::State::NAMES)
    );
    assert_eq!(
        names(lifecycle_spec.events.iter().map(|e| &e.name)),
        names(LifecycleEvent::NAMES)
    );
    assert_eq!(lifecycle_spec.initial, lifecycle::State::initial().name());
    let terminal: Vec<&str> = lifecycle::State::NAMES
        .into_iter()
        .filter(|name| lifecycle::State::from_name(name).unwrap().is_terminal())
        .collect();
    assert_eq!(
        names(
            lifecycle_spec
                .states
                .iter()
                .filter(|s| s.terminal)
                .map(|s| &s.name)
        ),
        names(terminal)
    );

    let failure_spec = spec("failure");
    assert_eq!(
        names(failure_spec.states.iter().map(|s| &s.name)),
        names(failure::State::NAMES)
    );
    assert_eq!(
        names(failure_spec.events.iter().map(|e| &e.name)),
        names(FailureEvent::ALL.map(FailureEvent::as_str))
    );
    assert_eq!(failure_spec.initial, failure::State::at_rest(false).name());
}

#[test]
fn initial_entry_writes_the_listed_line() {
    let spec = spec("lifecycle");
    let (_, init) = vigil::driver::Driver::new(
        &Policy::builtin_default(),
        "vigil",
        fastrand::Rng::with_seed(0),
    );
    let logged = &init.transitions[0];
    assert_eq!(
        (logged.machine, logged.to),
        (MachineName::Lifecycle, spec.initial.as_str())
    );
    assert!(
        template(spec.initial_log.as_deref().unwrap()).is_match(&logged.message),
        "{}",
        logged.message
    );
}

/// The responses a failure machine is driven under.
fn responses() -> Vec<(&'static str, Response)> {
    let schedule = RetrySchedule {
        attempts: 2,
        initial_delay: Duration::from_secs(1),
        multiplier: Decimal::TWO,
        max_delay: Duration::from_secs(30),
        jitter: Decimal::ZERO,
    };
    vec![
        ("halt", Response::Halt { exit_code: 7 }),
        (
            "continue",
            Response::Continue {
                warning: "w".into(),
            },
        ),
        (
            "retry-then-halt",
            Response::Retry {
                schedule: schedule.clone(),
                then: Exhausted::Halt { exit_code: 7 },
            },
        ),
        (
            "retry-then-continue",
            Response::Retry {
                schedule,
                then: Exhausted::Continue {
                    warning: "w".into(),
                },
            },
        ),
    ]
}

#[test]
fn failure_machine_conforms() {
    let spec = spec("failure");
    for (policy, response) in responses() {
        let retries = matches!(response, Response::Retry { .. });
        // (state, attempt number when in a retry state)
        let mut states = vec![
            (failure::State::at_rest(false), 0),
            (failure::State::at_rest(true), 0),
            (failure::State::terminal(), 0),
        ];
        if retries {
            for attempt in [1, 2] {
                states.push((failure::State::in_retry(false, attempt), attempt));
                states.push((failure::State::in_retry(true, attempt), attempt));
            }
        }
        for (state, attempt) in states {
            for event in FailureEvent::ALL {
                let mut machine =
                    FailureResponse::new(FailureKind::DbUnavailable, response.clone())
                        .machine_at(state);
                let mut outbox = Outbox::default();
                outbox.begin(event.as_str());
                machine.handle_with_context(&event, &mut outbox);
                let holds = |when: &str| -> bool {
                    let then_halt = matches!(
                        &response,
                        Response::Retry {
                            then: Exhausted::Halt { .. },
                            ..
                        }
                    );
                    match when {
                        "response = halt" => matches!(response, Response::Halt { .. }),
                        "response = continue" => matches!(response, Response::Continue { .. }),
                        "response = retry" => retries,
                        "attempts left" => attempt < 2,
                        "attempts spent, then = halt" => attempt >= 2 && then_halt,
                        "attempts spent, then = continue" => attempt >= 2 && retries && !then_halt,
                        other => panic!("machines/failure.toml: the conformance test does not know the condition {other:?}"),
                    }
                };
                let situation = format!("failure under {policy}, attempt {attempt}");
                check(
                    &spec,
                    &situation,
                    state.name(),
                    event.as_str(),
                    &holds,
                    Taken {
                        reached: machine.state().name(),
                        transitions: &outbox.transitions,
                        commands: Some(&outbox.commands),
                    },
                );
            }
        }
    }
}

/// Every subset of `kinds`.
fn subsets(kinds: &[FailureKind]) -> Vec<Reasons> {
    (0..1u32 << kinds.len())
        .map(|mask| {
            kinds
                .iter()
                .enumerate()
                .filter(|(i, _)| mask & (1 << i) != 0)
                .map(|(_, kind)| *kind)
                .collect()
        })
        .collect()
}

#[test]
fn lifecycle_machine_conforms() {
    let spec = spec("lifecycle");
    // What each reason allows while degraded: different per kind, so intersections show.
    let mut accepts_while = [SignalSet::ALL; 6];
    accepts_while[FailureKind::DbUnavailable.index()] = SignalSet::NONE;
    accepts_while[FailureKind::ValidationFailed.index()] = SignalSet::NONE.with(SignalType::Exit);
    let kinds = [
        FailureKind::DbUnavailable,
        FailureKind::RedisUnavailable,
        FailureKind::ValidationFailed,
    ];
    let mut events = vec![
        LifecycleEvent::Started,
        LifecycleEvent::Recovered,
        LifecycleEvent::Stop,
        LifecycleEvent::Drained,
        LifecycleEvent::Resumed,
    ];
    let exits = SignalSet::NONE.with(SignalType::Exit);
    for allows in [SignalSet::NONE, exits] {
        events.push(LifecycleEvent::Paused { allows });
    }
    for kind in kinds {
        events.push(LifecycleEvent::Suspected { kind });
        events.push(LifecycleEvent::Tolerated {
            kind,
            warning: "w".into(),
        });
        events.push(LifecycleEvent::Cleared { kind });
        events.push(LifecycleEvent::Halt { kind, exit_code: 5 });
    }
    for state_name in lifecycle::State::NAMES {
        let state = lifecycle::State::from_name(state_name).unwrap();
        for (reasons, hold) in subsets(&kinds).into_iter().flat_map(|reasons| {
            [None, Some(SignalSet::NONE), Some(exits)].map(|hold| (reasons, hold))
        }) {
            // Only situations the machine can be in: active has no reason, degraded has one;
            // only paused is paused once serving.
            let possible = match state_name {
                "active" => reasons.is_empty() && hold.is_none(),
                "degraded" => !reasons.is_empty() && hold.is_none(),
                "paused" => hold.is_some(),
                _ => true,
            };
            if !possible {
                continue;
            }
            for event in &events {
                let mut outbox = Outbox::default();
                let mut machine = Lifecycle::new(accepts_while).with_hold(hold).machine_at(
                    state,
                    reasons,
                    &mut outbox,
                );
                outbox.clear();
                outbox.begin(event.name());
                machine.handle_with_context(event, &mut outbox);
                let kind = match event {
                    LifecycleEvent::Suspected { kind }
                    | LifecycleEvent::Tolerated { kind, .. }
                    | LifecycleEvent::Cleared { kind }
                    | LifecycleEvent::Halt { kind, .. } => Some(*kind),
                    _ => None,
                };
                let holds = |when: &str| -> bool {
                    let kind = kind.unwrap_or(FailureKind::Unexpected);
                    let rest = reasons.without(kind);
                    let recovery_due =
                        reasons.contains(kind) && kind.needs_recovery() && !rest.needs_recovery();
                    let paused = hold.is_some();
                    match when {
                        "it leaves stored state in doubt, and trading is not paused" => kind.needs_recovery() && !paused,
                        "it leaves stored state in doubt, and the operator paused trading" => kind.needs_recovery() && paused,
                        "trading is not paused, and every reason is one recovery answers" => !paused && reasons.iter().all(FailureKind::needs_recovery),
                        "trading is not paused, and a reason recovery cannot answer remains" => !paused && !reasons.iter().all(FailureKind::needs_recovery),
                        "the operator paused trading" => paused,
                        "a reason needs recovery" => reasons.needs_recovery(),
                        "it changes what the pause lets through" => matches!(event, LifecycleEvent::Paused { allows } if hold != Some(*allows)),
                        "no reason remains" => reasons.is_empty(),
                        "reasons remain" => !reasons.is_empty(),
                        "it is a reason, and recovery is not due" => reasons.contains(kind) && !recovery_due,
                        "it is a reason that needs recovery" => reasons.contains(kind) && kind.needs_recovery(),
                        "a reason needs recovery, and every reason is one recovery answers" => reasons.needs_recovery() && reasons.iter().all(FailureKind::needs_recovery),
                        "a reason needs recovery, and a reason recovery cannot answer remains" => reasons.needs_recovery() && !reasons.iter().all(FailureKind::needs_recovery),
                        "it is not yet a reason" => !reasons.contains(kind),
                        "it needs recovery and no remaining reason does" => recovery_due,
                        "it needs no recovery and was the only reason" => {
                            reasons.contains(kind) && !kind.needs_recovery() && rest.is_empty()
                        }
                        "reasons remain and recovery is not due" => reasons.contains(kind) && !rest.is_empty() && !recovery_due,
                        other => panic!("machines/lifecycle.toml: the conformance test does not know the condition {other:?}"),
                    }
                };
                let situation =
                    format!("lifecycle degraded by [{reasons}], paused {hold:?}, event {event:?}");
                check(
                    &spec,
                    &situation,
                    state_name,
                    event.name(),
                    &holds,
                    Taken {
                        reached: machine.state().name(),
                        transitions: &outbox.transitions,
                        // A lifecycle transition's commands are its target's entry, checked
                        // below.
                        commands: None,
                    },
                );
                // The positions are known once served, after a recovery, or after one whose
                // only finding was a failed consistency check.
                let loaded = matches!(state_name, "active" | "degraded" | "paused")
                    || *event == LifecycleEvent::Recovered
                    || matches!(
                        event,
                        LifecycleEvent::Tolerated {
                            kind: FailureKind::ValidationFailed,
                            ..
                        }
                    );
                check_commands(
                    &spec,
                    &situation,
                    &machine,
                    event,
                    &accepts_while,
                    loaded,
                    &outbox,
                );
            }
        }
    }
}

/// The commands of entering a state: exactly its spec's entry commands; the state and what
/// it accepts published first, the status recorded, and for a terminal state the exit code.
/// A log line that names an accept set names the one published.
fn check_commands(
    spec: &MachineSpec,
    situation: &str,
    machine: &statig::blocking::InitializedStateMachine<Lifecycle>,
    event: &LifecycleEvent,
    accepts_while: &[SignalSet; 6],
    loaded: bool,
    outbox: &Outbox,
) {
    let (state, machine) = (machine.state(), machine.inner());
    let commands = &outbox.commands;
    if outbox.transitions.is_empty() {
        assert!(
            commands.is_empty(),
            "{situation}: commands without a transition: {commands:?}"
        );
        return;
    }
    let entry = &spec
        .states
        .iter()
        .find(|listed| listed.name == state.name())
        .unwrap()
        .commands;
    let given: Vec<&str> = commands.iter().map(Command::name).collect();
    assert_eq!(
        &given,
        entry,
        "{situation}: commands entering {}",
        state.name()
    );
    let accepted = match commands[0] {
        Command::Publish {
            state: published,
            signals,
        } => {
            assert_eq!(published, *state, "{situation}");
            signals
        }
        ref other => panic!("{situation}: expected publish first, got {other:?}"),
    };
    if let Some(Command::RecordStatus { status }) = commands.get(1) {
        assert_eq!(status, state, "{situation}");
    }
    let expected = match state.name() {
        "active" => SignalSet::ALL,
        "degraded" | "paused" => machine.accepts(machine.reasons()),
        _ => SignalSet::NONE,
    };
    assert_eq!(accepted, expected, "{situation}");
    if !loaded {
        assert_eq!(
            accepted,
            SignalSet::NONE,
            "{situation}: accepts signals before a recovery read the positions"
        );
    }
    if matches!(state.name(), "degraded" | "paused") && accepted != SignalSet::NONE {
        let hold = machine.hold().unwrap_or(SignalSet::ALL);
        let intersection = machine
            .reasons()
            .iter()
            .fold(hold, |set, kind| set.intersect(accepts_while[kind.index()]));
        assert_eq!(
            accepted,
            intersection,
            "{situation}: {} accepts more than every reason and the pause allow",
            state.name()
        );
    }
    assert_eq!(
        state.name() == "paused",
        machine.hold().is_some() && state.is_serving(),
        "{situation}: serving paused exactly while the operator's pause holds"
    );
    for transition in &outbox.transitions {
        if let Some(named) = vigil::machines::named_accept_set(&transition.message) {
            assert_eq!(
                named,
                accepted.to_string(),
                "{situation}: the log line {:?} names an accept set that is not the one published",
                transition.message
            );
        }
    }
    match (state.name(), event, commands.last()) {
        ("crashed", LifecycleEvent::Halt { exit_code, .. }, last) => {
            assert_eq!(
                last,
                Some(&Command::Exit { code: *exit_code }),
                "{situation}"
            )
        }
        ("stopped", _, last) => assert_eq!(last, Some(&Command::Exit { code: 0 }), "{situation}"),
        ("degraded" | "paused", _, Some(Command::Serve { heartbeat })) => assert_eq!(
            *heartbeat,
            !machine.reasons().contains(FailureKind::DbUnavailable),
            "{situation}: the database heartbeat runs unless the database is a reason"
        ),
        _ => {}
    }
}
