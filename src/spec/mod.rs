//! Machine specs (`machines/*.toml`): each machine's states, events and transitions with the
//! log line each writes. They are compiled in, so `vigil machines` works anywhere, and a
//! conformance test holds the code to them.

mod render;

pub use render::{render, RenderFormat};

use crate::machines::Command;
use serde::Deserialize;

/// The shipped specs, in the order `vigil machines` prints them.
pub const SHIPPED: [(&str, &str); 2] = [
    ("lifecycle", include_str!("../../machines/lifecycle.toml")),
    ("failure", include_str!("../../machines/failure.toml")),
];

/// One machine's spec.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MachineSpec {
    /// The machine's name.
    pub machine: String,
    /// What the machine is for, in one sentence.
    pub summary: String,
    /// The state a new machine starts in.
    pub initial: String,
    /// The log line written on entering the initial state, if the machine writes one.
    #[serde(default)]
    pub initial_log: Option<String>,
    /// Groups of states that share behaviour.
    #[serde(default, rename = "superstate")]
    pub superstates: Vec<SuperstateSpec>,
    /// The states.
    #[serde(rename = "state")]
    pub states: Vec<StateSpec>,
    /// The events.
    #[serde(rename = "event")]
    pub events: Vec<EventSpec>,
    /// The transitions.
    #[serde(rename = "transition")]
    pub transitions: Vec<TransitionSpec>,
}

/// A superstate.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SuperstateSpec {
    /// Its name.
    pub name: String,
    /// The superstate it belongs to, if any.
    pub parent: Option<String>,
    /// What it means, in a sentence.
    pub doc: String,
}

/// A state.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StateSpec {
    /// Its name, as in log fields.
    pub name: String,
    /// The superstate it belongs to, if any.
    pub superstate: Option<String>,
    /// Whether the machine never leaves it.
    #[serde(default)]
    pub terminal: bool,
    /// What it means, in a sentence.
    pub doc: String,
    /// The commands entering it gives the executor, in order.
    #[serde(default)]
    pub commands: Vec<String>,
}

/// An event.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventSpec {
    /// Its name, as in log fields.
    pub name: String,
    /// What it means, in a sentence.
    pub doc: String,
}

/// One or several source states.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Sources {
    /// One state.
    One(String),
    /// Several states with the same transition.
    Many(Vec<String>),
}

impl Sources {
    /// The states, in order.
    pub fn iter(&self) -> impl Iterator<Item = &str> {
        let states: &[String] = match self {
            Sources::One(state) => std::slice::from_ref(state),
            Sources::Many(states) => states,
        };
        states.iter().map(String::as_str)
    }
}

/// A transition.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TransitionSpec {
    /// The state(s) it leaves.
    pub from: Sources,
    /// The event that causes it.
    pub event: String,
    /// The condition under which it happens; none means always.
    pub when: Option<String>,
    /// The state it enters.
    pub to: String,
    /// The level of its log line: info, warn or error.
    pub level: String,
    /// Its log line; `{name}` stands for a value filled in at run time.
    pub log: String,
    /// The commands it gives the executor, in order (besides those of entering `to`).
    #[serde(default)]
    pub commands: Vec<String>,
}

/// A spec that cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("machine spec {machine}: {problem}")]
pub struct SpecError {
    /// The spec's name.
    pub machine: String,
    /// What is wrong.
    pub problem: String,
}

impl MachineSpec {
    /// Parses and checks a spec: every transition names known states and events and a level.
    pub fn parse(name: &str, source: &str) -> Result<MachineSpec, SpecError> {
        let error = |problem: String| SpecError {
            machine: name.to_string(),
            problem,
        };
        let spec: MachineSpec = toml::from_str(source).map_err(|e| error(e.to_string()))?;
        let state_known = |state: &str| spec.states.iter().any(|known| known.name == state);
        if !state_known(&spec.initial) {
            return Err(error(format!(
                "initial state `{}` is not listed",
                spec.initial
            )));
        }
        for state in &spec.states {
            if let Some(superstate) = &state.superstate {
                if !spec
                    .superstates
                    .iter()
                    .any(|known| &known.name == superstate)
                {
                    return Err(error(format!(
                        "state `{}` names unknown superstate `{superstate}`",
                        state.name
                    )));
                }
            }
        }
        let commands = spec
            .states
            .iter()
            .flat_map(|state| &state.commands)
            .chain(spec.transitions.iter().flat_map(|t| &t.commands));
        for command in commands {
            if !Command::NAMES.contains(&command.as_str()) {
                return Err(error(format!(
                    "unknown command `{command}`; the commands are {}",
                    Command::NAMES.join(", ")
                )));
            }
        }
        for transition in &spec.transitions {
            for state in transition.from.iter().chain([transition.to.as_str()]) {
                if !state_known(state) {
                    return Err(error(format!(
                        "transition on `{}` names unknown state `{state}`",
                        transition.event
                    )));
                }
            }
            if !spec
                .events
                .iter()
                .any(|event| event.name == transition.event)
            {
                return Err(error(format!(
                    "transition names unknown event `{}`",
                    transition.event
                )));
            }
            if !["info", "warn", "error"].contains(&transition.level.as_str()) {
                return Err(error(format!(
                    "level `{}` is not info, warn or error",
                    transition.level
                )));
            }
        }
        Ok(spec)
    }

    /// The shipped specs.
    pub fn shipped() -> Result<Vec<MachineSpec>, SpecError> {
        SHIPPED
            .iter()
            .map(|(name, source)| MachineSpec::parse(name, source))
            .collect()
    }

    /// The transitions that leave `state` on `event`, each with its condition.
    pub fn transitions_from<'a>(
        &'a self,
        state: &'a str,
        event: &'a str,
    ) -> impl Iterator<Item = &'a TransitionSpec> {
        self.transitions.iter().filter(move |transition| {
            transition.event == event && transition.from.iter().any(|from| from == state)
        })
    }
}
