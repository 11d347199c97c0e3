//! `vigil dry-run`: drives the real machines through the real driver with virtual time, and
//! prints every transition, the commands it gives and the exact log lines the service would write.

use crate::diagnostic::{did_you_mean, Diagnostic, Diagnostics};
use crate::driver::virtual_time::{run_script, Ending};
use crate::driver::{Driver, Input, Step};
use crate::logging::{self, Capture, VirtualTimer};
use crate::machines::lifecycle::{self, Reasons};
use crate::machines::{format_seconds, MachineName};
use crate::policy::{Exhausted, Policy, Response};
use crate::vocabulary::{FailureKind, SignalSet};
use serde::{Deserialize, Serialize};
use std::io::{self, Write};
use std::path::Path;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use toml::Spanned;

/// The jitter seed of every dry-run, so that the same policy and script always print the
/// same times.
pub const DRY_RUN_SEED: u64 = 0x0076_6967_696c;

/// Output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Readable text.
    Text,
    /// One JSON document.
    Json,
}

/// Where a dry-run starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Start {
    /// The lifecycle state.
    pub state: lifecycle::State,
    /// The degraded reasons (only meaningful for `degraded`).
    pub reasons: Reasons,
}

impl Default for Start {
    fn default() -> Self {
        Start {
            state: lifecycle::State::initial(),
            reasons: Reasons::NONE,
        }
    }
}

impl Start {
    /// Parses `--from STATE` and `--reason KIND`, and checks that `policy` can reach that
    /// state. `degraded` needs a reason the policy tolerates (default `db_unavailable`);
    /// `crashed` needs one it halts on (default: the first it halts on), and exits with that
    /// reason's code.
    pub fn parse(state: &str, reason: Option<&str>, policy: &Policy) -> Result<Start, String> {
        let Some(parsed) = lifecycle::State::from_name(state) else {
            return Err(unknown("state", state, &lifecycle::State::NAMES));
        };
        let reason = match reason {
            None => None,
            Some(name) => match FailureKind::parse(name) {
                Some(kind) => Some(kind),
                None => {
                    return Err(unknown(
                        "failure kind",
                        name,
                        &FailureKind::ALL.map(FailureKind::as_str),
                    ))
                }
            },
        };
        let reason = match parsed {
            lifecycle::State::Degraded {} => {
                let kind = reason.unwrap_or(FailureKind::DbUnavailable);
                if !policy.tolerates(kind) {
                    return Err(format!(
                        "under {} an instance is never left degraded by {kind}: {}; it is \
                         degraded by it only while a retry is pending, so reach that with \
                         --events (for example --events started,recovered,{kind})",
                        policy.name,
                        describe(policy.response(kind))
                    ));
                }
                Some(kind)
            }
            lifecycle::State::Crashed {} => {
                let halting = |kind: &FailureKind| policy.halt_code(*kind).is_some();
                let kind = match reason {
                    Some(kind) if halting(&kind) => kind,
                    Some(kind) => {
                        return Err(format!(
                            "{} never halts on {kind}: {}; name a kind it halts on with --reason",
                            policy.name,
                            describe(policy.response(kind))
                        ))
                    }
                    None => FailureKind::ALL.into_iter().find(halting).ok_or_else(|| {
                        format!("{} never halts, so it never reaches crashed", policy.name)
                    })?,
                };
                Some(kind)
            }
            _ if reason.is_some() => {
                return Err(format!(
                    "--reason only applies to --from degraded or --from crashed, not --from {state}"
                ))
            }
            _ => None,
        };
        Ok(Start {
            state: parsed,
            reasons: reason.into_iter().collect(),
        })
    }
}

/// What a policy does with a failure, in a few words.
fn describe(response: &Response) -> String {
    match response {
        Response::Halt { exit_code } => format!("it halts at once with exit code {exit_code}"),
        Response::Continue { .. } => "it continues degraded at once".to_string(),
        Response::Retry {
            then: Exhausted::Halt { exit_code },
            schedule,
        } => format!(
            "it retries {} times, then halts with exit code {exit_code}",
            schedule.attempts
        ),
        Response::Retry { schedule, .. } => format!(
            "it retries {} times, then continues degraded",
            schedule.attempts
        ),
    }
}

fn unknown(what: &str, name: &str, known: &[&str]) -> String {
    let hint = did_you_mean(name, known, &format!("the {what}s"));
    format!("unknown {what} `{name}`; {hint}")
}

/// Parses one input name, as given to `--event`.
pub fn parse_event(name: &str) -> Result<Input, String> {
    let known: Vec<&str> = Input::all().into_iter().map(Input::name).collect();
    Input::parse(name.trim()).ok_or_else(|| unknown("event", name.trim(), &known))
}

/// Parses a comma-separated list of input names, as given to `--events`.
pub fn parse_events(list: &str) -> Result<Vec<Input>, String> {
    let known: Vec<&str> = Input::all().into_iter().map(Input::name).collect();
    list.split(',')
        .map(str::trim)
        .filter(|name| !name.is_empty())
        .map(|name| Input::parse(name).ok_or_else(|| unknown("event", name, &known)))
        .collect()
}

/// A scenario file: a named sequence of events.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawScenario {
    /// What the scenario shows, for people reading it.
    #[allow(dead_code)]
    description: Option<String>,
    /// The events, in order.
    events: Vec<Spanned<String>>,
}

/// Reads a scenario file. Errors name file:line:column.
pub fn load_scenario(path: &Path, source: &str) -> Result<Vec<Input>, Diagnostics> {
    let raw: RawScenario = toml::from_str(source).map_err(|error| {
        Diagnostics(vec![Diagnostic::at(
            path,
            source,
            error.span(),
            error.message().trim(),
            Some(r#"a scenario is `events = ["started", "recovered", ...]`"#.into()),
        )])
    })?;
    let known: Vec<&str> = Input::all().into_iter().map(Input::name).collect();
    let mut diagnostics = Vec::new();
    let mut inputs = Vec::with_capacity(raw.events.len());
    for event in raw.events {
        match Input::parse(event.get_ref()) {
            Some(input) => inputs.push(input),
            None => diagnostics.push(Diagnostic::at(
                path,
                source,
                Some(event.span()),
                format!("unknown event `{}`", event.get_ref()),
                Some(did_you_mean(event.get_ref(), &known, "the events")),
            )),
        }
    }
    if diagnostics.is_empty() {
        Ok(inputs)
    } else {
        Err(Diagnostics(diagnostics))
    }
}

/// How the dry-run ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Summary {
    /// The final lifecycle state.
    pub state: &'static str,
    /// Why the instance is degraded; empty in any other state.
    pub reasons: Vec<FailureKind>,
    /// The signal types the instance accepts at the end.
    pub accepts: SignalSet,
    /// The process exit code, if the process ended.
    pub exit_code: Option<u8>,
    /// Events not delivered because the process had already ended.
    pub undelivered: usize,
    /// Virtual time at the end, in milliseconds.
    pub end_ms: u64,
}

/// Runs `script` from `start` under `policy` and writes the transcript to `out`.
pub fn run(
    policy: &Policy,
    instance: &str,
    start: Start,
    script: &[Input],
    format: Format,
    out: &mut dyn Write,
) -> io::Result<Summary> {
    let now_ms = Arc::new(AtomicU64::new(0));
    let timer = VirtualTimer::new(Arc::clone(&now_ms));
    let capture = Capture::default();
    let subscriber = logging::subscriber(capture.clone(), timer.clone());
    tracing::subscriber::with_default(subscriber, || {
        let mut printer = Printer {
            out,
            format,
            capture,
            steps: 0,
            error: None,
        };
        printer.header(policy, instance, script.len())?;
        let rng = fastrand::Rng::with_seed(DRY_RUN_SEED);
        let (mut driver, init) = Driver::at(policy, instance, rng, start.state, start.reasons);
        driver.publish_time(now_ms);
        printer.step(&driver, &init);
        let Ending { undelivered } =
            run_script(&mut driver, script.iter().copied(), |driver, step| {
                printer.step(driver, step);
            });
        if let Some(error) = printer.error.take() {
            return Err(error);
        }
        let summary = Summary {
            state: driver.state().name(),
            // Reasons only mean something while the instance serves degraded or paused.
            reasons: match driver.state() {
                lifecycle::State::Degraded {} | lifecycle::State::Paused {} => {
                    driver.reasons().iter().collect()
                }
                _ => Vec::new(),
            },
            accepts: driver.accepts(),
            exit_code: driver.exit_code(),
            undelivered,
            end_ms: driver.now_ms(),
        };
        printer.footer(&summary)?;
        Ok(summary)
    })
}

/// Writes steps as they happen, so a long scenario needs no memory for its transcript.
struct Printer<'a> {
    out: &'a mut dyn Write,
    format: Format,
    capture: Capture,
    steps: usize,
    /// The first write error; later steps are skipped once one happened.
    error: Option<io::Error>,
}

/// A step as the JSON format shows it.
#[derive(Serialize)]
struct JsonStep<'a> {
    t: String,
    #[serde(flatten)]
    step: &'a Step,
    log: Vec<String>,
}

impl Printer<'_> {
    fn header(&mut self, policy: &Policy, instance: &str, events: usize) -> io::Result<()> {
        match self.format {
            Format::Text => writeln!(
                self.out,
                "dry-run of {} (instance {instance}, events: {events}, virtual time)",
                policy.name
            ),
            Format::Json => write!(
                self.out,
                "{{\"policy\":{},\"instance\":{},\"steps\":[",
                serde_json::to_string(&policy.name).map_err(io::Error::other)?,
                serde_json::to_string(instance).map_err(io::Error::other)?
            ),
        }
    }

    fn step(&mut self, driver: &Driver, step: &Step) {
        if self.error.is_some() {
            return;
        }
        // The log lines were written while the driver took the step, at the step's time;
        // the driver itself is not needed to print the step.
        let _ = driver;
        if let Err(error) = self.write_step(step) {
            self.error = Some(error);
        }
        self.steps += 1;
    }

    fn write_step(&mut self, step: &Step) -> io::Result<()> {
        let log = self.capture.take_lines();
        let t = format!("t={}", format_seconds(u128::from(step.at_ms)));
        match self.format {
            Format::Text => {
                writeln!(self.out, "\n{t} {}", step.cause)?;
                for transition in &step.transitions {
                    let machine = match (transition.machine, transition.reason) {
                        (MachineName::Failure, Some(kind)) => format!("failure[{kind}]"),
                        (machine, _) => machine.as_str().to_string(),
                    };
                    writeln!(
                        self.out,
                        "  {machine}: {} -> {}",
                        transition.from, transition.to
                    )?;
                }
                for command in &step.commands {
                    writeln!(self.out, "  command: {command}")?;
                }
                for line in &log {
                    writeln!(self.out, "  log: {line}")?;
                }
                if step.transitions.is_empty() && step.commands.is_empty() {
                    writeln!(
                        self.out,
                        "  (no transition: the event changes nothing in this state)"
                    )?;
                }
                Ok(())
            }
            Format::Json => {
                if self.steps > 0 {
                    self.out.write_all(b",")?;
                }
                serde_json::to_writer(&mut *self.out, &JsonStep { t, step, log })
                    .map_err(io::Error::other)
            }
        }
    }

    fn footer(&mut self, summary: &Summary) -> io::Result<()> {
        match self.format {
            Format::Text => {
                let reasons: Vec<&str> = summary.reasons.iter().map(|kind| kind.as_str()).collect();
                let state = match reasons.is_empty() {
                    true => summary.state.to_string(),
                    false => format!("{} ({})", summary.state, reasons.join(", ")),
                };
                writeln!(
                    self.out,
                    "\nfinal state: {state} at t={}",
                    format_seconds(u128::from(summary.end_ms))
                )?;
                writeln!(self.out, "accepts: {}", summary.accepts)?;
                match summary.exit_code {
                    Some(code) => writeln!(self.out, "exit code: {code}")?,
                    None => writeln!(self.out, "exit code: none (the instance keeps running)")?,
                }
                if summary.undelivered > 0 {
                    writeln!(
                        self.out,
                        "not delivered: {} events after the process ended",
                        summary.undelivered
                    )?;
                }
                Ok(())
            }
            Format::Json => {
                let summary = serde_json::to_string(summary).map_err(io::Error::other)?;
                writeln!(self.out, "],\"final\":{summary}}}")
            }
        }
    }
}
