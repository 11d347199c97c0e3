//! `vigil-bench machines` measures, one line each:
//! 1. transitions per second through the bare `statig` lifecycle machine (active <-> degraded
//!    on `redis_unavailable`) and the bare failure machine (idle <-> tolerating under the
//!    built-in policy's `continue` response to `redis_unavailable`);
//! 2. transitions per second through the [`Driver`] with virtual time, on a script that
//!    alternates `redis_unavailable` and `redis_restored` after `started, recovered`, once
//!    with no `tracing` subscriber installed and once with the dry-run's log subscriber
//!    formatting every line into `io::sink()`;
//! 3. events per second through a full text dry-run of that script, written to `io::sink()`.

use anyhow::{bail, Context};
use std::io;
use std::time::{Duration, Instant};
use vigil::driver::virtual_time::run_script;
use vigil::driver::{Driver, Input};
use vigil::dry_run::{self, Format, Start};
use vigil::logging::{self, VirtualTimer};
use vigil::machines::failure::{self, FailureEvent, FailureResponse};
use vigil::machines::lifecycle::{self, Lifecycle, LifecycleEvent, Reasons};
use vigil::machines::Outbox;
use vigil::policy::{Policy, Response};
use vigil::vocabulary::FailureKind;

/// The failure every benchmark cycles through: tolerated, then cleared, with no retries.
const REDIS: FailureKind = FailureKind::RedisUnavailable;

/// Sizes of the `machines` benchmark.
#[derive(Debug, clap::Args)]
pub struct MachinesArgs {
    /// Transitions to take through each bare machine and through the driver.
    #[arg(long, default_value_t = 2_000_000)]
    transitions: usize,
    /// Events in the dry-run scenario.
    #[arg(long, default_value_t = 1_000_000)]
    events: usize,
}

/// The `machines` benchmark: the bare machines, the driver without and with the log
/// subscriber, and the full dry-run, one line each.
pub fn machines(args: &MachinesArgs) -> anyhow::Result<()> {
    let policy = Policy::builtin_default();

    let (count, elapsed) = bare_lifecycle(&policy, args.transitions)?;
    report(
        "lifecycle machine (bare statig):",
        count,
        "transitions",
        elapsed,
    );

    let (count, elapsed) = bare_failure(&policy, args.transitions)?;
    report(
        "failure machine (bare statig):",
        count,
        "transitions",
        elapsed,
    );

    // Measured before any subscriber exists: once a scoped subscriber has been set, every
    // `tracing` event has to look up the thread's current dispatcher.
    let (count, elapsed) = driver(&policy, args.transitions)?;
    report(
        "driver, virtual time, no subscriber:",
        count,
        "transitions",
        elapsed,
    );

    let subscriber = logging::subscriber(io::sink, VirtualTimer::default());
    let (count, elapsed) =
        tracing::subscriber::with_default(subscriber, || driver(&policy, args.transitions))?;
    report(
        "driver, virtual time, log subscriber to sink:",
        count,
        "transitions",
        elapsed,
    );

    let (count, elapsed) = full_dry_run(&policy, args.events)?;
    report("dry-run, text to sink:", count, "events", elapsed);
    Ok(())
}

/// Cycles the lifecycle machine active -> degraded -> active on `redis_unavailable` until it
/// has taken `target` transitions.
fn bare_lifecycle(policy: &Policy, target: usize) -> anyhow::Result<(usize, Duration)> {
    let warning = match policy.response(REDIS) {
        Response::Continue { warning } => warning.clone(),
        _ => String::from("benchmark"),
    };
    let events = [
        LifecycleEvent::Tolerated {
            kind: REDIS,
            warning,
        },
        LifecycleEvent::Cleared { kind: REDIS },
    ];
    let mut outbox = Outbox::default();
    let mut machine = Lifecycle::new(policy.degraded_accepts).machine_at(
        lifecycle::State::Active {},
        Reasons::NONE,
        &mut outbox,
    );
    outbox.clear();

    cycle(
        &events,
        target,
        &mut outbox,
        |event| event.name(),
        |event, outbox| {
            machine.handle_with_context(event, outbox);
            machine.state().name()
        },
    )
}

/// Cycles a failure machine idle -> tolerating -> idle under the built-in policy's response
/// to `redis_unavailable` until it has taken `target` transitions.
fn bare_failure(policy: &Policy, target: usize) -> anyhow::Result<(usize, Duration)> {
    let response = policy.response(REDIS).clone();
    if !matches!(response, Response::Continue { .. }) {
        bail!("the built-in policy no longer answers {REDIS} with `continue`: {response:?}");
    }
    let mut machine =
        FailureResponse::new(REDIS, response).machine_at(failure::State::at_rest(false));
    let mut outbox = Outbox::default();

    let events = [FailureEvent::Failed, FailureEvent::Succeeded];
    cycle(
        &events,
        target,
        &mut outbox,
        |event| event.as_str(),
        |event, outbox| {
            machine.handle_with_context(event, outbox);
            machine.state().name()
        },
    )
}

/// Feeds `events` round and round to a machine (through `handle`, which returns the state
/// it is in) until `target` transitions are taken, and times it. An event that takes no
/// transition is an error: the loop would never end.
fn cycle<E>(
    events: &[E],
    target: usize,
    outbox: &mut Outbox,
    name: impl Fn(&E) -> &'static str,
    mut handle: impl FnMut(&E, &mut Outbox) -> &'static str,
) -> anyhow::Result<(usize, Duration)> {
    let mut transitions = 0;
    let started = Instant::now();
    for event in events.iter().cycle() {
        if transitions >= target {
            break;
        }
        outbox.begin(name(event));
        let state = handle(event, outbox);
        let taken = outbox.transitions.len();
        if taken == 0 {
            bail!("event `{}` in {state} took no transition", name(event));
        }
        transitions += taken;
        outbox.clear();
    }
    Ok((transitions, started.elapsed()))
}

/// Runs the redis script through a fresh driver with virtual time, sized to take about
/// `target` transitions (every input takes two: one per machine).
fn driver(policy: &Policy, target: usize) -> anyhow::Result<(usize, Duration)> {
    let inputs = 2 + target.saturating_sub(2) / 2;
    let (mut driver, _init) = Driver::new(policy, "bench", fastrand::Rng::with_seed(1));

    let mut transitions = 0;
    let started = Instant::now();
    let ending = run_script(&mut driver, redis_script(inputs), |_, step| {
        transitions += step.transitions.len();
    });
    let elapsed = started.elapsed();
    if ending.undelivered > 0 {
        bail!(
            "the driver ended in {} with {} inputs undelivered",
            driver.state().name(),
            ending.undelivered
        );
    }
    Ok((transitions, elapsed))
}

/// A full text dry-run of an `events`-long redis script, written to `io::sink()`.
fn full_dry_run(policy: &Policy, events: usize) -> anyhow::Result<(usize, Duration)> {
    let script: Vec<Input> = redis_script(events).collect();
    let started = Instant::now();
    let summary = dry_run::run(
        policy,
        "bench",
        Start::default(),
        &script,
        Format::Text,
        &mut io::sink(),
    )
    .context("dry-run failed")?;
    let elapsed = started.elapsed();
    if summary.undelivered > 0 {
        bail!(
            "the dry-run ended in {} with {} events undelivered",
            summary.state,
            summary.undelivered
        );
    }
    Ok((script.len(), elapsed))
}

/// `started, recovered`, then `redis_unavailable, redis_restored` repeated, `len` inputs in all.
fn redis_script(len: usize) -> impl Iterator<Item = Input> {
    let outage = [Input::Failure(REDIS), Input::Restored(REDIS)];
    [Input::Started, Input::Recovered]
        .into_iter()
        .chain(outage.into_iter().cycle())
        .take(len)
}

/// Prints one measurement: `label  count unit in 0.41s = 4.9M unit/s`.
fn report(label: &str, count: usize, unit: &str, elapsed: Duration) {
    let seconds = elapsed.as_secs_f64();
    let rate = if seconds > 0.0 {
        human(count as f64 / seconds)
    } else {
        String::from("inf")
    };
    println!("{label:<46} {count:>8} {unit} in {seconds:.2}s = {rate} {unit}/s");
}

/// A rate with a metric suffix: `4.9M`, `812.3k`, `950`.
fn human(rate: f64) -> String {
    if rate >= 1e6 {
        format!("{:.1}M", rate / 1e6)
    } else if rate >= 1e3 {
        format!("{:.1}k", rate / 1e3)
    } else {
        format!("{rate:.0}")
    }
}
