//! `vigil-bench`: throughput and latency figures for vigil's machinery. It prints numbers and
//! never asserts on them: timings depend on the machine, so they are for people to compare.
//!
//! `vigil-bench machines` measures, one line each:
//! 1. transitions per second through the bare `statig` lifecycle machine (active <-> degraded
//!    on `redis_unavailable`) and the bare failure machine (idle <-> tolerating under the
//!    built-in policy's `continue` response to `redis_unavailable`);
//! 2. transitions per second through the [`Driver`] with virtual time, on a script that
//!    alternates `redis_unavailable` and `redis_restored` after `started, recovered`, once
//!    with no `tracing` subscriber installed and once with the dry-run's log subscriber
//!    formatting every line into `io::sink()`;
//! 3. events per second through a full text dry-run of that script, written to `io::sink()`.
//!
//! `vigil-bench recovery` measures crash recovery against real databases. For each backend
//! (SQLite always, as `bench-N.db` in a fresh temporary directory or `--sqlite-dir`;
//! PostgreSQL when `--postgres-url` or `VIGIL_TEST_DATABASE_URL` names an admin URL, in a
//! fresh database `vigil_bench_<pid>_<N>` created and dropped per size) and each size N, it
//! migrates, seeds N open positions over 50 instruments (one base each, the rest pyramids on
//! it, plus a portfolio row whose totals are the exact sums and one pyramiding row per
//! instrument) and prints how long seeding took. Then, best of `--runs`, it times:
//! 1. recovery: [`Store::load_recovery_rows`] plus [`recovery::recover`] (fetch, decode,
//!    rebuild, validate), failing if the receipt is not clean;
//! 2. the raw read limit: [`Store::raw_open_position_scan`], the same `SELECT` into rows
//!    with no decoding;
//!
//! and prints one line per backend and size with both times and their ratio, next to the
//! targets (recovery under 0.5 s, and under 3x the raw read).
//!
//! `vigil-bench load` measures the live webhook end to end. For each backend (SQLite always,
//! in a fresh temporary directory; PostgreSQL when `--postgres-url` or
//! `VIGIL_TEST_DATABASE_URL` names an admin URL, in fresh databases `vigil_load_<pid>_<n>`
//! created and dropped per run) it builds N signals over M instruments `INST00`, `INST01`,
//! ... (one `BASE_ENTRY` per instrument, then `PYRAMID`s at rising prices, each with its own
//! timestamp), writes a deployment file listing the instruments, and:
//! 1. starts the real `vigil run` binary (`--binary`, by default the `vigil` next to this
//!    executable) on a free loopback port with a fresh database, waits for `GET /ready`, and
//!    sends the signals to `POST /webhook` paced at `--rate` per second on a schedule fixed up
//!    front (at most `--concurrency` in flight), printing p50, p99 and max latency;
//! 2. does the same on another fresh instance and database, unpaced at `--concurrency` in
//!    flight, printing the throughput and latencies;
//! 3. applies the same signals in-process with [`Store::apply_signal`] and the same plan the
//!    webhook uses, at the same concurrency, on another fresh database: the raw transaction
//!    rate, which the unpaced HTTP throughput is printed as a percentage of.
//!
//! 4. on PostgreSQL only, the journaled run: starts another instance on another fresh
//!    database, makes the database refuse connections (`ALLOW_CONNECTIONS false`, its
//!    sessions ended) and waits for the instance to say `degraded`, sends the signals paced
//!    at `--rate`, each to be answered 202 `queued` from the intake journal, and prints the
//!    intake's p50, p99 and max; then lets the database back in, waits until no alert is
//!    `queued` in the signal log, and prints the drain rate (alerts applied over the time
//!    from the first to the last `processed_at`) as a percentage of the raw transaction
//!    rate of step 3.
//!
//! Before the runs it appends the same alerts, as the intake journal keeps them, to a fresh
//! journal file in the work directory, each fsynced, one after another: the raw append+fsync
//! rate and latencies, printed next to the journaled intake. Every run's alerts carry
//! timestamps from the moment it starts, so none is older than the policy's `[signals]`
//! ages, and the paced runs name their slowest signals with the time they were sent.
//!
//! Base entries all finish before the first pyramid is sent, so no pyramid races its base.
//! Every answer must be the one expected (200 `applied`, or 202 `queued` in the journaled
//! run) and every journaled alert must end `applied`: the command prints what did not, with
//! the service's warnings, and then fails. Each instance is stopped with SIGTERM (and killed if the command
//! fails first); the temporary directory, with the service logs, is kept when anything failed.
//!
//! `vigil-bench ha` measures several instances of the real `vigil run` sharing one PostgreSQL
//! database (fresh databases `vigil_load_<pid>_<n>` created from `--postgres-url` or
//! `VIGIL_TEST_DATABASE_URL` and dropped per run; without an admin URL it is skipped) and one
//! private `redis-server` (`--redis-server`), started on a free loopback port with no
//! persistence (`--save "" --appendonly no`). It writes a policy with only an `[ha]` table
//! (`--heartbeat`, `--lease`, instances stale after three heartbeats, `HEARTBEATS_BEFORE_STALE`;
//! the lease is renewed every min(heartbeat, lease / 3)), starts `--instances` instances
//! `ha-1`, `ha-2`, ... with it, and:
//! 1. leader takeover, `--rounds` times: finds the single leader through `GET /status`, kills
//!    it with SIGKILL, polls the survivors' `/status` every 10 ms (`HA_POLL_INTERVAL_MS`) until one
//!    reports `leader: true`, and prints the time and both fencing tokens next to the bound,
//!    the lease plus one renewal interval; the killed instance is restarted under its id and
//!    waited for before the next round; the longest takeover closes the list;
//! 2. Redis loss: kills the `redis-server` with SIGKILL, polls every instance's `GET /ready`
//!    at the same pace until each reports `redis: "down"`, and prints each detection time next
//!    to the heartbeat interval and the bound of two heartbeats
//!    (`REDIS_DETECTION_BOUND_HEARTBEATS`); then starts Redis again, empty, on the same port and prints how long after
//!    it answered `PING` each instance was `active` with Redis `up` again, against the same
//!    bound;
//! 3. throughput: the `load` signals (`--signals` over `--instruments`, bases first), unpaced
//!    at `--concurrency` in flight, through one instance and then through `--instances`
//!    instances (requests dealt round-robin), each run on a fresh database with Redis flushed
//!    first and the same policy, and the in-process raw transaction rate on another fresh
//!    database: the limit every instance shares.
//!
//! Nothing there asserts a time: each wait gives up only after its bound plus a slack of 10 s
//! (`HA_WAIT_SLACK_MS`), and then fails the command. Every instance and the `redis-server` are killed if the command
//! fails; the temporary directory `vigil-ha-<pid>`, with the logs, is kept when anything failed.
//!
//! Run it in release mode:
//!
//! ```text
//! cargo run --release --bin vigil-bench -- machines [--transitions N] [--events N]
//! cargo run --release --bin vigil-bench -- recovery [--sizes 10,10000,100000] \
//!     [--sqlite-dir DIR] [--postgres-url ADMIN_URL] [--runs 3]
//! cargo build --release && cargo run --release --bin vigil-bench -- load [--signals 1000] \
//!     [--instruments 50] [--concurrency 16] [--rate 50] [--postgres-url ADMIN_URL] \
//!     [--binary target/release/vigil]
//! cargo build --release && cargo run --release --bin vigil-bench -- ha [--instances 3] \
//!     [--lease 3s] [--heartbeat 500ms] [--rounds 3] [--signals 1000] [--instruments 50] \
//!     [--concurrency 16] [--postgres-url ADMIN_URL] [--redis-server redis-server] \
//!     [--binary target/release/vigil]
//! ```

// Rates are printed, not computed on money: dividing counts by seconds in `f64` is fine here.
#![allow(clippy::float_arithmetic)]

use anyhow::{bail, Context};
use chrono::{DateTime, TimeDelta, Utc};
use clap::{Parser, Subcommand};
use rust_decimal::Decimal;
use std::collections::BTreeMap;
use std::ffi::OsString;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;
use vigil::domain::{Instrument, Portfolio, Position, PositionStatus, Pyramiding};
use vigil::driver::virtual_time::run_script;
use vigil::driver::{Driver, Input};
use vigil::dry_run::{self, Format, Start};
use vigil::intake::journal::{Journal, Mode as JournalMode};
use vigil::intake::QueuedAlert;
use vigil::logging::{self, VirtualTimer};
use vigil::machines::failure::{self, FailureEvent, FailureResponse};
use vigil::machines::lifecycle::{self, Lifecycle, LifecycleEvent, Reasons};
use vigil::machines::Outbox;
use vigil::policy::{HaTimings, Policy, Response};
use vigil::recovery;
use vigil::store::{redact, Access, AnyStore, Applied, ApplyError, SignalClaim, StateWrite, Store};
use vigil::trading::plan::{plan, Refusal};
use vigil::trading::Signal;
use vigil::vocabulary::{FailureKind, SignalType};

/// The failure every benchmark cycles through: tolerated, then cleared, with no retries.
const REDIS: FailureKind = FailureKind::RedisUnavailable;

/// Throughput benchmarks for vigil.
#[derive(Debug, Parser)]
#[command(name = "vigil-bench", version)]
struct Cli {
    /// What to measure.
    #[command(subcommand)]
    command: Command,
}

/// The benchmarks.
#[derive(Debug, Subcommand)]
enum Command {
    /// Transitions per second through the bare machines and the driver, and events per
    /// second through a full dry-run.
    Machines(MachinesArgs),
    /// Crash recovery (fetch, rebuild, validate) against the raw read of the same rows, on
    /// SQLite and PostgreSQL, for several numbers of open positions.
    Recovery(RecoveryArgs),
    /// Webhook latency and throughput through the real `vigil run` binary, against the raw
    /// rate of the same signal transactions in-process, on SQLite and PostgreSQL.
    Load(LoadArgs),
    /// Several `vigil run` instances on one PostgreSQL database and a private Redis: leader
    /// takeover after kill -9, Redis-loss detection, and throughput against one instance.
    Ha(HaArgs),
}

/// Sizes of the `machines` benchmark.
#[derive(Debug, clap::Args)]
struct MachinesArgs {
    /// Transitions to take through each bare machine and through the driver.
    #[arg(long, default_value_t = 2_000_000)]
    transitions: usize,
    /// Events in the dry-run scenario.
    #[arg(long, default_value_t = 1_000_000)]
    events: usize,
}

/// Sizes and databases of the `recovery` benchmark.
#[derive(Debug, clap::Args)]
struct RecoveryArgs {
    /// Numbers of open positions to seed, one fresh database each.
    #[arg(long, value_delimiter = ',', default_values_t = [10, 10_000, 100_000])]
    sizes: Vec<usize>,
    /// Directory for the SQLite files `bench-N.db`; a fresh temporary directory, removed
    /// afterwards, when not given.
    #[arg(long, value_name = "DIR")]
    sqlite_dir: Option<PathBuf>,
    /// PostgreSQL admin URL: a fresh database is created from it, and dropped, per size.
    /// Without it (or the environment variable) PostgreSQL is skipped.
    #[arg(
        long,
        value_name = "ADMIN_URL",
        env = "VIGIL_TEST_DATABASE_URL",
        hide_env_values = true
    )]
    postgres_url: Option<String>,
    /// Measurements of each figure; the best is printed.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    runs: u32,
}

/// The signals sent, the database they go to and the binary that serves them: the part
/// `load` and `ha` share.
#[derive(Debug, clap::Args)]
struct Workload {
    /// Signals per run: one BASE_ENTRY per instrument first, then PYRAMIDs.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..))]
    signals: u32,
    /// Instruments the signals are spread over, INST00, INST01, ...
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..))]
    instruments: u32,
    /// Requests (or transactions) in flight at once, over all instances.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..))]
    concurrency: u32,
    /// PostgreSQL admin URL: a fresh database is created from it, and dropped, per run.
    /// Without it (or the environment variable) PostgreSQL is skipped.
    #[arg(
        long,
        value_name = "ADMIN_URL",
        env = "VIGIL_TEST_DATABASE_URL",
        hide_env_values = true
    )]
    postgres_url: Option<String>,
    /// The `vigil` binary to start [default: `vigil` next to this executable].
    #[arg(long, value_name = "FILE")]
    binary: Option<PathBuf>,
}

impl Workload {
    /// The binary to start, the signals to send, and a work directory named `prefix-PID`
    /// that must not exist yet (it is not created).
    fn prepare(&self, prefix: &str) -> anyhow::Result<(PathBuf, Load, PathBuf)> {
        let binary = vigil_binary(self.binary.as_deref())?;
        let load = Load::new(self.signals, self.instruments, self.concurrency)?;
        let dir = std::env::temp_dir().join(format!("{prefix}-{}", std::process::id()));
        if dir.exists() {
            bail!("{} already exists; remove it first", dir.display());
        }
        Ok((binary, load, dir))
    }
}

/// Pace and workload of the `load` benchmark.
#[derive(Debug, clap::Args)]
struct LoadArgs {
    /// Signals per second in the paced run.
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..))]
    rate: u32,
    /// Signals, database and binary.
    #[command(flatten)]
    workload: Workload,
}

/// Instances, timings, workload and servers of the `ha` benchmark.
#[derive(Debug, clap::Args)]
struct HaArgs {
    /// Instances started for the takeover and Redis-loss measurements and the several-instance
    /// throughput run.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(2..=16))]
    instances: u32,
    /// The policy's `leader_lease`.
    #[arg(long, default_value = "3s", value_parser = humantime::parse_duration)]
    lease: Duration,
    /// The policy's `heartbeat_interval`.
    #[arg(long, default_value = "500ms", value_parser = humantime::parse_duration)]
    heartbeat: Duration,
    /// Takeovers measured: the leader is killed, and restarted afterwards, once per round.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    rounds: u32,
    /// The `redis-server` binary started, privately, on a free port.
    #[arg(long, value_name = "FILE", default_value = "redis-server")]
    redis_server: PathBuf,
    /// Signals, database and binary.
    #[command(flatten)]
    workload: Workload,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Machines(args) => machines(&args),
        Command::Recovery(args) => tokio_runtime()?.block_on(recovery_bench(&args)),
        Command::Load(args) => tokio_runtime()?.block_on(load_bench(&args)),
        Command::Ha(args) => tokio_runtime()?.block_on(ha_bench(&args)),
    }
}

fn tokio_runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the tokio runtime")
}

fn machines(args: &MachinesArgs) -> anyhow::Result<()> {
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

/// Instruments the seeded positions are spread over (fewer when there are fewer positions).
const INSTRUMENTS: usize = 50;

/// The `recovery` benchmark: every size on SQLite, then on PostgreSQL when configured.
async fn recovery_bench(args: &RecoveryArgs) -> anyhow::Result<()> {
    let tolerance = Policy::builtin_default().recovery.tolerance;

    let (dir, temporary) = match &args.sqlite_dir {
        Some(dir) => (dir.clone(), false),
        None => (
            std::env::temp_dir().join(format!("vigil-bench-{}", std::process::id())),
            true,
        ),
    };
    std::fs::create_dir_all(&dir)
        .with_context(|| format!("cannot create the SQLite directory {}", dir.display()))?;
    let outcome = sqlite_sizes(args, &dir, tolerance).await;
    if temporary {
        if let Err(error) = std::fs::remove_dir_all(&dir) {
            eprintln!("warning: cannot remove {}: {error}", dir.display());
        }
    }
    outcome?;

    match &args.postgres_url {
        Some(admin) => {
            for &size in &args.sizes {
                postgres_size(admin, size, args.runs, tolerance).await?;
            }
        }
        None => println!(
            "postgres skipped: give --postgres-url ADMIN_URL or set VIGIL_TEST_DATABASE_URL"
        ),
    }
    Ok(())
}

/// Every size on SQLite, one file `bench-N.db` in `dir` each, removed afterwards.
async fn sqlite_sizes(args: &RecoveryArgs, dir: &Path, tolerance: Decimal) -> anyhow::Result<()> {
    for &size in &args.sizes {
        let file = dir.join(format!("bench-{size}.db"));
        if file.exists() {
            bail!(
                "{} already exists; remove it or choose another --sqlite-dir",
                file.display()
            );
        }
        let url = format!("sqlite://{}", file.display());
        let outcome = bench_database("sqlite", &url, size, args.runs, tolerance).await;
        for suffix in ["", "-wal", "-shm"] {
            let mut path = OsString::from(file.as_os_str());
            path.push(suffix);
            match std::fs::remove_file(&path) {
                Err(error) if error.kind() != io::ErrorKind::NotFound => {
                    eprintln!(
                        "warning: cannot remove {}: {error}",
                        Path::new(&path).display()
                    );
                }
                _ => {}
            }
        }
        outcome?;
    }
    Ok(())
}

/// One size on PostgreSQL, in a fresh database created from `admin` and dropped afterwards.
async fn postgres_size(
    admin: &str,
    size: usize,
    runs: u32,
    tolerance: Decimal,
) -> anyhow::Result<()> {
    let name = format!("vigil_bench_{}_{size}", std::process::id());
    let url = database_url(admin, &name)?;
    let pool = sqlx::PgPool::connect(admin)
        .await
        .with_context(|| format!("cannot connect to PostgreSQL at {}", redact(admin)))?;
    let create = sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&pool)
        .await
        .with_context(|| format!("cannot create the database {name}"));
    let outcome = match create {
        Ok(_) => bench_database("postgres", &url, size, runs, tolerance).await,
        Err(error) => {
            pool.close().await;
            return Err(error);
        }
    };
    let dropped = sqlx::query(sqlx::AssertSqlSafe(format!(
        "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
    )))
    .execute(&pool)
    .await
    .with_context(|| format!("cannot drop the database {name}"));
    pool.close().await;
    outcome?;
    dropped?;
    Ok(())
}

/// `admin` with its database replaced by `name`, keeping any `?parameters`.
fn database_url(admin: &str, name: &str) -> anyhow::Result<String> {
    let (address, parameters) = match admin.split_once('?') {
        Some((address, parameters)) => (address, Some(parameters)),
        None => (admin, None),
    };
    let host_start = address
        .find("://")
        .map(|at| at + 3)
        .with_context(|| format!("`{}` is not a PostgreSQL URL", redact(admin)))?;
    let server = match address[host_start..].find('/') {
        Some(slash) => &address[..host_start + slash],
        None => address,
    };
    Ok(match parameters {
        Some(parameters) => format!("{server}/{name}?{parameters}"),
        None => format!("{server}/{name}"),
    })
}

/// Connects to `url`, seeds `size` open positions and measures; closes the store either way.
async fn bench_database(
    backend: &str,
    url: &str,
    size: usize,
    runs: u32,
    tolerance: Decimal,
) -> anyhow::Result<()> {
    let store = AnyStore::connect(url, Access::ReadWrite)
        .await
        .with_context(|| format!("cannot connect to {}", redact(url)))?;
    let outcome = seed_and_measure(&store, backend, size, runs, tolerance).await;
    store.close().await;
    outcome.with_context(|| format!("{backend} with {size} open positions"))
}

async fn seed_and_measure(
    store: &AnyStore,
    backend: &str,
    size: usize,
    runs: u32,
    tolerance: Decimal,
) -> anyhow::Result<()> {
    let label = format!("N={size}");
    store.migrate().await.context("migrations failed")?;
    let state = seeded_state(size)?;
    let instruments = state.pyramiding.len();
    let started = Instant::now();
    store
        .write_state(&state)
        .await
        .context("seeding the open positions failed")?;
    let seeding = started.elapsed();
    drop(state);
    println!(
        "{backend:<8} {label:<9} seeded {size} open positions on {instruments} instruments in {:.3}s (not measured)",
        seeding.as_secs_f64()
    );

    let mut best_recovery = Duration::MAX;
    let mut best_raw = Duration::MAX;
    for _ in 0..runs {
        // Recovery: fetch, decode, rebuild, validate, and free the rows and the state, as the
        // raw scan frees its rows.
        let started = Instant::now();
        let rows = store
            .load_recovery_rows()
            .await
            .context("reading the recovery rows failed")?;
        let (state, receipt) = recovery::recover(
            rows,
            &recovery::Terms {
                tolerance,
                instruments: &BTreeMap::new(),
                initial_capital: None,
            },
        );
        let restored = state.map(|state| state.positions.len());
        let elapsed = started.elapsed();
        if receipt.failure().is_some() {
            bail!("recovery of the seeded state is not clean:\n{receipt}");
        }
        if restored != Some(size) || receipt.counts.open_positions != size {
            bail!(
                "recovery restored {restored:?} positions ({} counted), not the {size} seeded",
                receipt.counts.open_positions
            );
        }
        best_recovery = best_recovery.min(elapsed);

        let started = Instant::now();
        let scanned = store
            .raw_open_position_scan()
            .await
            .context("the raw open-position scan failed")?;
        let elapsed = started.elapsed();
        if scanned != size {
            bail!("the raw scan read {scanned} positions, not the {size} seeded");
        }
        best_raw = best_raw.min(elapsed);
    }

    let recovered = best_recovery.as_secs_f64();
    let raw = best_raw.as_secs_f64();
    let ratio = if raw > 0.0 {
        format!("{:.2}x", recovered / raw)
    } else {
        String::from("inf")
    };
    println!(
        "{backend:<8} {label:<9} recovery {recovered:.3}s  raw select {raw:.3}s  ratio {ratio}  (target: < 0.5s and < 3x)"
    );
    Ok(())
}

/// `size` open positions over up to [`INSTRUMENTS`] instruments: the first position of each
/// instrument is its base and every later one a pyramid on that base. The portfolio's totals
/// are the exact sums and every instrument has a pyramiding row, so recovery is clean.
fn seeded_state(size: usize) -> anyhow::Result<StateWrite> {
    let instruments = size.min(INSTRUMENTS);
    let opened = DateTime::<Utc>::from_timestamp(1_795_680_000, 0)
        .context("the seeding start time is out of range")?;
    let mut positions = Vec::with_capacity(size);
    let mut last_price = vec![Decimal::ZERO; instruments];
    let mut total_risk = Decimal::ZERO;
    let mut margin_used = Decimal::ZERO;
    for index in 0..size {
        let slot = index % instruments;
        let instrument = format!("INST{slot:02}");
        let base_id = format!("{instrument}-base");
        let is_base_position = index < instruments;
        let id = if is_base_position {
            base_id.clone()
        } else {
            format!("{instrument}-pyramid-{:06}", index / instruments)
        };
        let lots = Decimal::from(1 + index % 4);
        // 22000.00, 22000.05, ... in steps of 0.05.
        let entry_price =
            Decimal::new(2_200_000, 2) + Decimal::from(index % 1000) * Decimal::new(5, 2);
        let stop_price = entry_price - Decimal::new(10_000, 2);
        // 1234.50 plus up to 9.96, so the sums carry cents.
        let risk_amount =
            Decimal::new(123_450, 2) + Decimal::from(index % 997) * Decimal::new(1, 2);
        let margin = Decimal::new(15_000_000, 2) * lots;
        let seconds = u32::try_from(index % 86_400).context("seconds in a day fit in u32")?;
        let entry_time = opened
            .checked_add_signed(TimeDelta::seconds(i64::from(seconds)))
            .context("a seeded entry time is out of range")?;
        total_risk += risk_amount;
        margin_used += margin;
        if let Some(last) = last_price.get_mut(slot) {
            *last = entry_price;
        }
        positions.push(Position {
            id,
            instrument,
            label: String::from("long"),
            status: PositionStatus::Open,
            lots,
            entry_price,
            stop_price,
            risk_amount,
            margin,
            is_base_position,
            base_position_id: (!is_base_position).then_some(base_id),
            entry_time,
            version: 1,
        });
    }
    let pyramiding = last_price
        .into_iter()
        .enumerate()
        .map(|(slot, last_pyramid_price)| Pyramiding {
            instrument: format!("INST{slot:02}"),
            last_pyramid_price,
            base_position_id: Some(format!("INST{slot:02}-base")),
        })
        .collect();
    Ok(StateWrite {
        positions,
        portfolio: Some(Portfolio {
            initial_capital: Decimal::new(1_000_000_000, 2),
            closed_equity: Decimal::new(1_012_345_678, 2),
            total_risk,
            margin_used,
            version: 1,
        }),
        pyramiding,
    })
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

/// The environment variable `vigil run` reads the webhook passphrase from.
const PASSPHRASE_ENV: &str = "VIGIL_WEBHOOK_PASSPHRASE";

/// The environment variable `vigil run` reads a Redis URL from: removed from every started
/// service, so that only `--redis-url` decides whether it uses Redis.
const REDIS_URL_ENV: &str = "VIGIL_REDIS_URL";

/// The environment variable `vigil run` reads a policy file from: removed likewise, so that
/// only `--policy` (or the deployment file) decides.
const POLICY_ENV: &str = "VIGIL_POLICY";

/// The environment variable `vigil run` reads the operator token from: removed likewise, so
/// that the benchmark's `/ready` and `/status` polls need none.
const OPERATOR_TOKEN_ENV: &str = "VIGIL_OPERATOR_TOKEN";

/// The passphrase every load signal carries.
const LOAD_PASSPHRASE: &str = "vigil-load-benchmark";

/// The instance id of the started services and of the in-process claims.
const LOAD_INSTANCE: &str = "vigil-load";

/// Price of every base entry; the k-th pyramid on an instrument is this plus k.
const BASE_PRICE: u32 = 1000;

/// How far below the price every stop is.
const STOP_DISTANCE: u32 = 10;

/// How far apart the load signals' timestamps are, so that no two share a fingerprint. The
/// first is the moment the run starts, so none is older than the policy's `[signals]` ages.
const LOAD_SPACING_MS: i64 = 1;

/// `GET /ready` attempts before the service counts as not starting.
const READY_TRIES: u32 = 100;

/// Pause between `GET /ready` attempts.
const READY_INTERVAL: Duration = Duration::from_millis(100);

/// How long one `GET /ready` may take.
const READY_REQUEST_TIMEOUT: Duration = Duration::from_secs(1);

/// How long one webhook request may take before it counts as failed. The service answers
/// 503 itself after 2.5 s.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// How long the journaled run waits, after the database returns, for every alert to be
/// settled in the signal log.
const SETTLE_WAIT: Duration = Duration::from_secs(120);

/// Pause between the journaled run's reads of the signal log.
const SETTLE_POLL: Duration = Duration::from_millis(200);

/// Checks for the service's exit after SIGTERM before it is killed.
const STOP_TRIES: u32 = 200;

/// Pause between those checks.
const STOP_INTERVAL: Duration = Duration::from_millis(50);

/// Lines of the service log shown when it fails to start or stop.
const LOG_TAIL_LINES: usize = 20;

/// Warning and error lines of the service log shown after each run.
const LOG_FINDINGS_SHOWN: usize = 5;

/// Signals listed as the slowest of a paced run.
const SLOWEST_SHOWN: usize = 3;

/// Characters of a refused answer's body shown.
const ANSWER_SHOWN_CHARS: usize = 300;

/// The `load` benchmark's inputs, shared by every run.
#[derive(Debug)]
struct Load {
    /// The signals, bases first.
    signals: Arc<Vec<Signal>>,
    /// The webhook body of each signal.
    bodies: Arc<Vec<Vec<u8>>>,
    /// How many of the signals are base entries (they come first).
    bases: usize,
    /// The instruments' contract terms, as the deployment file lists them.
    instruments: BTreeMap<String, Instrument>,
    /// Requests or transactions in flight at once.
    concurrency: usize,
    /// What [`Load::new`] was given, so that [`Load::restamped`] can build it again.
    sizes: (u32, u32, u32),
}

impl Load {
    /// `count` signals over `instruments` instruments (see [`load_signals`]), their webhook
    /// bodies, and the instruments' terms, sent `concurrency` at a time.
    fn new(count: u32, instruments: u32, concurrency: u32) -> anyhow::Result<Load> {
        let signals = load_signals(count, instruments, Utc::now())?;
        let bodies = signals
            .iter()
            .map(webhook_body)
            .collect::<anyhow::Result<Vec<_>>>()?;
        let bases = signals
            .iter()
            .take_while(|signal| signal.kind == SignalType::BaseEntry)
            .count();
        let terms = Instrument {
            lot_size: Decimal::ONE,
            point_value: Decimal::ONE,
            margin_per_lot: Decimal::from(1000),
        };
        let sizes = (count, instruments, concurrency);
        let instruments = (0..instruments)
            .map(|slot| (instrument_name(slot), terms.clone()))
            .collect();
        Ok(Load {
            signals: Arc::new(signals),
            bodies: Arc::new(bodies),
            bases,
            instruments,
            concurrency: usize::try_from(concurrency).context("--concurrency is too large")?,
            sizes,
        })
    }

    /// The same load with timestamps starting now: every run sends alerts that are fresh
    /// when it starts, however long the runs before it took.
    fn restamped(&self) -> anyhow::Result<Load> {
        let (count, instruments, concurrency) = self.sizes;
        Load::new(count, instruments, concurrency)
    }
}

/// How `vigil run` is started: the binary, files and flags every instance of a run shares.
#[derive(Debug, Clone)]
struct Launch {
    /// The `vigil` binary.
    binary: PathBuf,
    /// The deployment file (`--config`).
    config: PathBuf,
    /// The working directory, where the logs go too.
    work: PathBuf,
    /// `--redis-url`, for several instances on one PostgreSQL database.
    redis_url: Option<String>,
    /// `--policy` [default: none, the deployment file's or the built-in policy].
    policy: Option<PathBuf>,
}

/// `binary`, or the `vigil` next to this executable; it must exist.
fn vigil_binary(binary: Option<&Path>) -> anyhow::Result<PathBuf> {
    let binary = match binary {
        Some(binary) => binary.to_path_buf(),
        None => std::env::current_exe()
            .context("cannot find this executable")?
            .parent()
            .context("this executable has no directory")?
            .join("vigil"),
    };
    if !binary.is_file() {
        bail!(
            "{} does not exist: build it with `cargo build --release`, or name it with --binary",
            binary.display()
        );
    }
    Ok(binary)
}

/// A free TCP port on loopback (free when asked: it is bound and released at once).
fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .context("cannot find a free port")?
        .port())
}

/// Where the databases of one backend come from.
#[derive(Debug)]
enum Backend {
    /// Files in a directory.
    Sqlite,
    /// Fresh databases created from an admin URL.
    Postgres {
        /// The admin URL.
        admin: String,
    },
}

impl Backend {
    fn name(&self) -> &'static str {
        match self {
            Backend::Sqlite => "sqlite",
            Backend::Postgres { .. } => "postgres",
        }
    }
}

/// A fresh database for one run.
#[derive(Debug)]
struct Database {
    /// Its URL.
    url: String,
    /// For PostgreSQL: the admin URL and the name to drop afterwards.
    drop: Option<(String, String)>,
}

impl Database {
    /// A fresh database named after `run`: a file in `dir`, or a new PostgreSQL database.
    async fn fresh(backend: &Backend, dir: &Path, run: usize) -> anyhow::Result<Database> {
        match backend {
            Backend::Sqlite => {
                let file = dir.join(format!("load-{run}.db"));
                if file.exists() {
                    bail!("{} already exists", file.display());
                }
                Ok(Database {
                    url: format!("sqlite://{}", file.display()),
                    drop: None,
                })
            }
            Backend::Postgres { admin } => {
                let name = format!("vigil_load_{}_{run}", std::process::id());
                let url = database_url(admin, &name)?;
                let pool = sqlx::PgPool::connect(admin).await.with_context(|| {
                    format!("cannot connect to PostgreSQL at {}", redact(admin))
                })?;
                let created = sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
                    .execute(&pool)
                    .await
                    .with_context(|| format!("cannot create the database {name}"));
                pool.close().await;
                created?;
                Ok(Database {
                    url,
                    drop: Some((admin.clone(), name)),
                })
            }
        }
    }

    /// Drops a PostgreSQL database (`WITH (FORCE)`); SQLite files go with their directory.
    /// Runs `measure` on a fresh database, which is removed afterwards whatever `measure`
    /// answered; `measure`'s error comes first.
    async fn scoped<T>(
        backend: &Backend,
        dir: &Path,
        run: usize,
        measure: impl AsyncFnOnce(&Database) -> anyhow::Result<T>,
    ) -> anyhow::Result<T> {
        let database = Database::fresh(backend, dir, run).await?;
        let measured = measure(&database).await;
        let removed = database.remove().await;
        let measured = measured?;
        removed?;
        Ok(measured)
    }

    async fn remove(self) -> anyhow::Result<()> {
        let Some((admin, name)) = self.drop else {
            return Ok(());
        };
        let pool = sqlx::PgPool::connect(&admin)
            .await
            .with_context(|| format!("cannot connect to PostgreSQL at {}", redact(&admin)))?;
        let dropped = sqlx::query(sqlx::AssertSqlSafe(format!(
            "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
        )))
        .execute(&pool)
        .await
        .with_context(|| format!("cannot drop the database {name}"));
        pool.close().await;
        dropped.map(|_| ())
    }
}

/// The `load` benchmark: SQLite, then PostgreSQL when configured. Fails at the end if any
/// signal was not accepted or a service did not stop cleanly.
async fn load_bench(args: &LoadArgs) -> anyhow::Result<()> {
    let (binary, load, dir) = args.workload.prepare("vigil-load")?;
    let mut problems = Vec::new();
    let outcome = async {
        let mut backends = vec![Backend::Sqlite];
        match &args.workload.postgres_url {
            Some(admin) => backends.push(Backend::Postgres {
                admin: admin.clone(),
            }),
            None => println!(
                "postgres skipped: give --postgres-url ADMIN_URL or set VIGIL_TEST_DATABASE_URL"
            ),
        }
        for backend in &backends {
            let work = dir.join(backend.name());
            std::fs::create_dir_all(&work)
                .with_context(|| format!("cannot create {}", work.display()))?;
            load_backend(&load, &binary, backend, &work, args.rate, &mut problems)
                .await
                .with_context(|| format!("{} load benchmark", backend.name()))?;
        }
        anyhow::Ok(())
    }
    .await;
    finish(&dir, outcome, &problems)
}

/// Removes the work directory `dir` when `outcome` is fine and there are no problems, and
/// keeps it (saying so) otherwise; then fails with the outcome's error, or the problems.
fn finish(dir: &Path, outcome: anyhow::Result<()>, problems: &[String]) -> anyhow::Result<()> {
    if outcome.is_ok() && problems.is_empty() {
        if let Err(error) = std::fs::remove_dir_all(dir) {
            eprintln!("warning: cannot remove {}: {error}", dir.display());
        }
    } else {
        eprintln!("kept the databases and service logs in {}", dir.display());
    }
    outcome?;
    if !problems.is_empty() {
        bail!(
            "{} problem(s):\n  {}",
            problems.len(),
            problems.join("\n  ")
        );
    }
    Ok(())
}

/// `INST00`, `INST01`, ...
fn instrument_name(slot: u32) -> String {
    format!("INST{slot:02}")
}

/// `count` signals over `instruments` instruments: a base entry on each first (at
/// [`BASE_PRICE`]), then round after round of pyramids one point higher each round, the
/// first at `epoch` and every later one [`LOAD_SPACING_MS`] after the one before.
fn load_signals(count: u32, instruments: u32, epoch: DateTime<Utc>) -> anyhow::Result<Vec<Signal>> {
    (0..count)
        .map(|index| {
            let round = index / instruments;
            let price = Decimal::from(BASE_PRICE) + Decimal::from(round);
            let timestamp = epoch
                .checked_add_signed(TimeDelta::milliseconds(i64::from(index) * LOAD_SPACING_MS))
                .context("a load signal's timestamp is out of range")?;
            Ok(Signal {
                kind: if round == 0 {
                    SignalType::BaseEntry
                } else {
                    SignalType::Pyramid
                },
                instrument: instrument_name(index % instruments),
                position: Some(String::from("long")),
                price,
                stop: Some(price - Decimal::from(STOP_DISTANCE)),
                lots: Some(Decimal::ONE),
                timestamp,
                alert_id: None,
            })
        })
        .collect()
}

/// The alert TradingView would send for `signal`, numbers as strings.
fn webhook_body(signal: &Signal) -> anyhow::Result<Vec<u8>> {
    let number = |value: Option<Decimal>| value.map(|value| value.to_string());
    serde_json::to_vec(&serde_json::json!({
        "passphrase": LOAD_PASSPHRASE,
        "signal": signal.kind.as_str(),
        "instrument": signal.instrument,
        "position": signal.position,
        "price": signal.price.to_string(),
        "stop": number(signal.stop),
        "lots": number(signal.lots),
        "timestamp": signal.timestamp,
    }))
    .context("cannot encode a webhook body")
}

/// The deployment file listing the load instruments.
fn deployment_file(load: &Load) -> String {
    let mut text = format!("instance = \"{LOAD_INSTANCE}\"\n");
    for (name, terms) in &load.instruments {
        text.push_str(&format!(
            "\n[instruments.{name}]\nlot_size = \"{}\"\npoint_value = \"{}\"\nmargin_per_lot = \"{}\"\n",
            terms.lot_size, terms.point_value, terms.margin_per_lot
        ));
    }
    text
}

/// The three runs on one backend, each on a fresh database, and their lines; the paced run
/// sends `rate` signals per second.
async fn load_backend(
    load: &Load,
    binary: &Path,
    backend: &Backend,
    work: &Path,
    rate: u32,
    problems: &mut Vec<String>,
) -> anyhow::Result<()> {
    let name = backend.name();
    let config = work.join("vigil.toml");
    std::fs::write(&config, deployment_file(load))
        .with_context(|| format!("cannot write {}", config.display()))?;
    let launch = Launch {
        binary: binary.to_path_buf(),
        config,
        work: work.to_path_buf(),
        redis_url: None,
        policy: None,
    };

    let fsync = fsync_run(load, work).await?;
    println!(
        "{name:<8} raw journal append+fsync: {} records in {:.2}s = {:.0}/s, {}",
        fsync.count,
        fsync.elapsed.as_secs_f64(),
        fsync.rate(),
        fsync.latencies(),
    );

    let paced_label = format!("paced {rate}/s");
    let paced = Database::scoped(backend, work, 1, async |database| {
        http_run(load, database, &launch, "paced", Some(rate), 1).await
    })
    .await?;
    println!(
        "{name:<8} {paced_label}: {} signals in {:.2}s = {:.0} signals/s, {}, sent up to {:.1} ms behind schedule",
        paced.stats.count,
        paced.stats.elapsed.as_secs_f64(),
        paced.stats.rate(),
        paced.stats.latencies(),
        millis(paced.stats.max_lag),
    );
    println!(
        "{name:<8} {paced_label}: intake p99 {:.1} ms with the database up (target < 5 ms); slowest {}",
        millis(paced.stats.percentile(99)),
        paced.stats.slowest(),
    );
    paced.report(&format!("{name} {paced_label}"), problems);

    let unpaced_label = format!("unpaced c={}", load.concurrency);
    let unpaced = Database::scoped(backend, work, 2, async |database| {
        http_run(load, database, &launch, "unpaced", None, 1).await
    })
    .await?;
    println!(
        "{name:<8} {unpaced_label}: {} signals in {:.2}s = {:.0} signals/s, {}",
        unpaced.stats.count,
        unpaced.stats.elapsed.as_secs_f64(),
        unpaced.stats.rate(),
        unpaced.stats.latencies(),
    );
    unpaced.report(&format!("{name} {unpaced_label}"), problems);

    let raw = Database::scoped(backend, work, 3, async |database| {
        raw_run(load, database).await
    })
    .await?;
    println!(
        "{name:<8} raw c={}: {} transactions in {:.2}s = {:.0}/s, {}",
        load.concurrency,
        raw.count,
        raw.elapsed.as_secs_f64(),
        raw.rate(),
        raw.latencies(),
    );
    let share = if raw.rate() > 0.0 {
        format!("{:.0}%", unpaced.stats.rate() / raw.rate() * 100.0)
    } else {
        String::from("n/a")
    };
    println!(
        "{name:<8} {unpaced_label}: {:.0} signals/s; raw transactions {:.0}/s; HTTP reaches {share} (target >= 50%)",
        unpaced.stats.rate(),
        raw.rate(),
    );
    if let Some(summary) = raw.refusals() {
        println!(
            "{name:<8} raw c={}: not applied: {summary}",
            load.concurrency
        );
        problems.push(format!("{name} raw transactions: not applied: {summary}"));
    }
    if matches!(backend, Backend::Sqlite) {
        println!("{name:<8} journaled: skipped (it needs a database whose connections can be refused: PostgreSQL)");
        return Ok(());
    }
    let journaled = Database::scoped(backend, work, 4, async |database| {
        journaled_run(load, database, &launch, rate).await
    })
    .await?;
    let intake = &journaled.intake.stats;
    println!(
        "{name:<8} journaled {paced_label}, database refusing connections: {} alerts in {:.2}s, {}; intake p99 {:.1} ms (target < 5 ms) against raw append+fsync p99 {:.1} ms",
        intake.count,
        intake.elapsed.as_secs_f64(),
        intake.latencies(),
        millis(intake.percentile(99)),
        millis(fsync.percentile(99)),
    );
    journaled
        .intake
        .report(&format!("{name} journaled {paced_label}"), problems);
    let (applied, span) = journaled.applied;
    let drain_rate = if span.is_zero() {
        0.0
    } else {
        applied as f64 / span.as_secs_f64()
    };
    let drain_share = if raw.rate() > 0.0 {
        format!("{:.0}%", drain_rate / raw.rate() * 100.0)
    } else {
        String::from("n/a")
    };
    println!(
        "{name:<8} journaled drain: {applied} applied in {:.2}s = {drain_rate:.0}/s, all settled {:.2}s after the database returned; raw transactions {:.0}/s; the drain reaches {drain_share} (target >= 80%)",
        span.as_secs_f64(),
        journaled.settled_after.as_secs_f64(),
        raw.rate(),
    );
    if !journaled.others.is_empty() {
        let summary = journaled
            .others
            .iter()
            .map(|(status, count)| format!("{status} x{count}"))
            .collect::<Vec<_>>()
            .join(", ");
        println!("  not applied: {summary}");
        problems.push(format!("{name} journaled drain: not applied: {summary}"));
    }
    Ok(())
}

/// What became of one signal.
#[derive(Debug)]
enum Answer {
    /// The answer the run expected (200 `applied`, or 202 `queued`), or applied in-process.
    Accepted,
    /// Anything else: a category (`HTTP 503`, `rejected`, ...) and what was said.
    Refused {
        /// Groups refusals in the summary.
        category: String,
        /// The body or error, for the first of each category.
        detail: String,
    },
}

/// One signal's answer and how long it took.
#[derive(Debug)]
struct Sample {
    answer: Answer,
    latency: Duration,
    /// When it was sent (or, in-process, started).
    started: Instant,
}

/// Figures of one run.
#[derive(Debug)]
struct Stats {
    /// Signals sent.
    count: usize,
    /// From the first send to the last answer.
    elapsed: Duration,
    /// Latencies, sorted.
    latencies: Vec<Duration>,
    /// How far the latest send started behind its schedule (paced runs only).
    max_lag: Duration,
    /// Refusals per category: how many, and the first one's detail.
    refused: BTreeMap<String, (usize, String)>,
    /// The [`SLOWEST_SHOWN`] slowest: index, when sent after the first, latency.
    slowest: Vec<(usize, Duration, Duration)>,
}

impl Stats {
    fn new(samples: Vec<Sample>, elapsed: Duration, max_lag: Duration) -> Stats {
        let count = samples.len();
        let first = samples.iter().map(|sample| sample.started).min();
        let mut slowest: Vec<(usize, Duration, Duration)> = samples
            .iter()
            .enumerate()
            .map(|(index, sample)| {
                let after = first.map_or(Duration::ZERO, |first| {
                    sample.started.saturating_duration_since(first)
                });
                (index, after, sample.latency)
            })
            .collect();
        slowest.sort_unstable_by_key(|sample| std::cmp::Reverse(sample.2));
        slowest.truncate(SLOWEST_SHOWN);
        let mut latencies = Vec::with_capacity(count);
        let mut refused: BTreeMap<String, (usize, String)> = BTreeMap::new();
        for sample in samples {
            latencies.push(sample.latency);
            if let Answer::Refused { category, detail } = sample.answer {
                refused.entry(category).or_insert((0, detail)).0 += 1;
            }
        }
        latencies.sort_unstable();
        Stats {
            count,
            elapsed,
            latencies,
            max_lag,
            refused,
            slowest,
        }
    }

    /// `#957 at 19.14s: 34.6 ms, ...`: the slowest signals, when they were sent.
    fn slowest(&self) -> String {
        self.slowest
            .iter()
            .map(|(index, after, latency)| {
                format!(
                    "#{index} at {:.2}s: {:.1} ms",
                    after.as_secs_f64(),
                    millis(*latency)
                )
            })
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// Signals per second.
    fn rate(&self) -> f64 {
        let seconds = self.elapsed.as_secs_f64();
        if seconds > 0.0 {
            self.count as f64 / seconds
        } else {
            0.0
        }
    }

    /// The latency at `percent` (nearest rank).
    fn percentile(&self, percent: usize) -> Duration {
        let rank = (self.latencies.len() * percent).div_ceil(100).max(1);
        self.latencies
            .get(rank - 1)
            .copied()
            .unwrap_or(Duration::ZERO)
    }

    /// `p50 1.2 ms, p99 3.4 ms, max 9.8 ms, not accepted 0`.
    fn latencies(&self) -> String {
        let max = self.latencies.last().copied().unwrap_or(Duration::ZERO);
        format!(
            "p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms, not accepted {}",
            millis(self.percentile(50)),
            millis(self.percentile(99)),
            millis(max),
            self.refused.values().map(|(count, _)| count).sum::<usize>()
        )
    }

    /// `HTTP 503 x3 (first: ...); ...`, or `None` when everything was accepted.
    fn refusals(&self) -> Option<String> {
        if self.refused.is_empty() {
            return None;
        }
        Some(
            self.refused
                .iter()
                .map(|(category, (count, detail))| format!("{category} x{count} (first: {detail})"))
                .collect::<Vec<_>>()
                .join("; "),
        )
    }
}

fn millis(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1e3
}

/// The outcome of one HTTP run.
#[derive(Debug)]
struct HttpRun {
    /// Figures.
    stats: Stats,
    /// Each service's log and its warning and error lines.
    logs: Vec<(PathBuf, Vec<String>)>,
    /// Why services did not stop cleanly, if any did not.
    stop_problems: Vec<String>,
}

impl HttpRun {
    /// Prints refusals, the services' warnings and bad stops, and records problems.
    fn report(&self, label: &str, problems: &mut Vec<String>) {
        if let Some(summary) = self.stats.refusals() {
            println!("  not accepted: {summary}");
            problems.push(format!("{label}: not accepted: {summary}"));
        }
        for (log, findings) in &self.logs {
            if findings.is_empty() {
                continue;
            }
            println!(
                "  service log {}: {} WARN/ERROR line(s), first {}:",
                log.display(),
                findings.len(),
                findings.len().min(LOG_FINDINGS_SHOWN)
            );
            for line in findings.iter().take(LOG_FINDINGS_SHOWN) {
                println!("    {line}");
            }
        }
        for problem in &self.stop_problems {
            println!("  {problem}");
            problems.push(format!("{label}: {problem}"));
        }
    }
}

/// Starts `instances` services on `database` (one is [`LOAD_INSTANCE`] and logs to
/// `<label>.log`; several are `vigil-load-1`, ... logging to `<label>-1.log`, ...), sends
/// every signal (paced at `rate` per second, or unpaced), dealing them round-robin over the
/// services, and stops them.
async fn http_run(
    load: &Load,
    database: &Database,
    launch: &Launch,
    label: &str,
    rate: Option<u32>,
    instances: usize,
) -> anyhow::Result<HttpRun> {
    if instances == 0 {
        bail!("an HTTP run needs at least one instance");
    }
    let load = &load.restamped()?;
    let mut services = Vec::with_capacity(instances);
    for n in 1..=instances {
        let (instance, log) = if instances == 1 {
            (LOAD_INSTANCE.to_string(), format!("{label}.log"))
        } else {
            (format!("{LOAD_INSTANCE}-{n}"), format!("{label}-{n}.log"))
        };
        let address = format!("127.0.0.1:{}", free_port()?);
        let log = launch.work.join(log);
        services.push(Service::start(
            launch,
            &database.url,
            &instance,
            &address,
            &log,
        )?);
    }
    for service in &mut services {
        service.wait_ready().await?;
    }

    let client = webhook_client(load)?;
    let urls: Arc<Vec<String>> = Arc::new(
        services
            .iter()
            .map(|service| format!("{}/webhook", service.base))
            .collect(),
    );
    let bodies = Arc::clone(&load.bodies);
    let sent = drive(load, rate, |index| {
        let client = client.clone();
        let url = urls.get(index % urls.len()).cloned().unwrap_or_default();
        let body = bodies.get(index).cloned().unwrap_or_default();
        async move { post(&client, &url, body, Expect::Applied).await }
    })
    .await;
    let mut stop_problems = Vec::new();
    let mut logs = Vec::with_capacity(services.len());
    for service in &mut services {
        stop_problems.extend(service.stop_problem());
        logs.push((service.log.clone(), log_findings(&service.log)));
    }
    let (samples, elapsed, max_lag) = sent?;
    Ok(HttpRun {
        stats: Stats::new(samples, elapsed, max_lag),
        logs,
        stop_problems,
    })
}

/// The client that sends a run's alerts: up to `load.concurrency` connections kept open.
fn webhook_client(load: &Load) -> anyhow::Result<reqwest::Client> {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(REQUEST_TIMEOUT)
        .pool_max_idle_per_host(load.concurrency)
        .tcp_nodelay(true)
        .build()
        .context("cannot build the HTTP client")
}

/// The answer a run expects for every alert.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    /// 200 `applied`: the database took it within the request.
    Applied,
    /// 202 `queued`: recorded durably, to be applied later (the intake journal, while the
    /// database is down).
    Queued,
}

impl Expect {
    /// The HTTP status and the body's `status` word of the expected answer.
    fn answer(self) -> (reqwest::StatusCode, &'static str) {
        match self {
            Expect::Applied => (reqwest::StatusCode::OK, "applied"),
            Expect::Queued => (reqwest::StatusCode::ACCEPTED, "queued"),
        }
    }
}

/// Sends one alert and reads the whole answer, which should be `expect`.
async fn post(client: &reqwest::Client, url: &str, body: Vec<u8>, expect: Expect) -> Sample {
    let started = Instant::now();
    let answer = async {
        let response = client
            .post(url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body)
            .send()
            .await?;
        let status = response.status();
        let bytes = response.bytes().await?;
        Ok::<_, reqwest::Error>((status, bytes))
    }
    .await;
    let latency = started.elapsed();
    let answer = match answer {
        Ok((status, bytes)) => {
            let (expected_status, expected_word) = expect.answer();
            let word = serde_json::from_slice::<serde_json::Value>(&bytes)
                .ok()
                .and_then(|value| {
                    value
                        .get("status")
                        .and_then(serde_json::Value::as_str)
                        .map(str::to_owned)
                });
            if status == expected_status && word.as_deref() == Some(expected_word) {
                Answer::Accepted
            } else {
                Answer::Refused {
                    category: format!(
                        "HTTP {} {}",
                        status.as_u16(),
                        word.as_deref().unwrap_or("(no status)")
                    ),
                    detail: shorten(&String::from_utf8_lossy(&bytes)),
                }
            }
        }
        Err(error) => Answer::Refused {
            category: String::from("request failed"),
            detail: shorten(&error_chain(&error)),
        },
    };
    Sample {
        answer,
        latency,
        started,
    }
}

/// An error with its sources: `a: b: c`.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    text
}

/// At most [`ANSWER_SHOWN_CHARS`] characters of `text`, on one line.
fn shorten(text: &str) -> String {
    let line = text.trim().replace('\n', " ");
    if line.chars().count() > ANSWER_SHOWN_CHARS {
        let kept: String = line.chars().take(ANSWER_SHOWN_CHARS).collect();
        format!("{kept}...")
    } else {
        line
    }
}

/// Applies every signal in-process with the webhook's plan, at the load's concurrency.
async fn raw_run(load: &Load, database: &Database) -> anyhow::Result<Stats> {
    let load = &load.restamped()?;
    let store = AnyStore::connect(&database.url, Access::ReadWrite)
        .await
        .with_context(|| format!("cannot connect to {}", redact(&database.url)))?;
    let outcome = async {
        store.migrate().await.context("migrations failed")?;
        let signals = Arc::clone(&load.signals);
        let instruments = Arc::new(load.instruments.clone());
        let (samples, elapsed, max_lag) = drive(load, None, |index| {
            let store = store.clone();
            let signals = Arc::clone(&signals);
            let instruments = Arc::clone(&instruments);
            async move { apply(&store, signals.get(index), &instruments).await }
        })
        .await?;
        anyhow::Ok(Stats::new(samples, elapsed, max_lag))
    }
    .await;
    store.close().await;
    outcome
}

/// Appends every load alert, encoded as the intake journal keeps it, to a fresh journal
/// file in `dir` one after another, each fsynced: the raw rate the journal's disk allows.
async fn fsync_run(load: &Load, dir: &Path) -> anyhow::Result<Stats> {
    let load = load.restamped()?;
    let path = dir.join("raw-fsync.journal");
    let payloads = load
        .signals
        .iter()
        .map(|signal| {
            serde_json::to_vec(&QueuedAlert {
                fingerprint: signal.fingerprint(),
                signal: signal.clone(),
                received_at: Utc::now(),
            })
        })
        .collect::<Result<Vec<_>, _>>()
        .context("cannot encode a journal record")?;
    tokio::task::spawn_blocking(move || {
        let journal = Journal::open(&path, JournalMode::ReadWrite)
            .with_context(|| format!("cannot open {}", path.display()))?
            .journal;
        let mut samples = Vec::with_capacity(payloads.len());
        let started = Instant::now();
        for payload in &payloads {
            let appended = Instant::now();
            let answer = match journal.append(payload) {
                Ok(_) => Answer::Accepted,
                Err(error) => Answer::Refused {
                    category: String::from("append failed"),
                    detail: shorten(&error.to_string()),
                },
            };
            samples.push(Sample {
                answer,
                latency: appended.elapsed(),
                started: appended,
            });
        }
        let elapsed = started.elapsed();
        drop(journal);
        std::fs::remove_file(&path).with_context(|| format!("cannot remove {}", path.display()))?;
        anyhow::Ok(Stats::new(samples, elapsed, Duration::ZERO))
    })
    .await
    .context("the fsync run panicked")?
}

/// What the journaled run measured.
#[derive(Debug)]
struct JournaledRun {
    /// Intake while the database refused connections: every answer should be 202 `queued`.
    intake: HttpRun,
    /// From the database's return to the last alert settled (out of `queued`).
    settled_after: Duration,
    /// How many were applied, and the time from the first apply to the last (the signal
    /// log's `processed_at`): the drain itself.
    applied: (i64, Duration),
    /// Outcomes other than `applied`, with their counts.
    others: Vec<(String, i64)>,
}

/// The journaled run on PostgreSQL: starts `vigil run` on `database`, makes the database
/// refuse connections (and ends its sessions) and waits for the instance to be `degraded`;
/// sends every alert paced at `rate`, each to be answered 202 `queued` from the intake
/// journal; lets the database back in and waits until every alert is settled in the signal
/// log, then reads how fast they were applied.
async fn journaled_run(
    load: &Load,
    database: &Database,
    launch: &Launch,
    rate: u32,
) -> anyhow::Result<JournaledRun> {
    let load = &load.restamped()?;
    let Some((admin, name)) = &database.drop else {
        bail!("the journaled run needs PostgreSQL, whose connections can be refused");
    };
    let address = format!("127.0.0.1:{}", free_port()?);
    let log = launch.work.join("journaled.log");
    let mut service = Service::start(launch, &database.url, LOAD_INSTANCE, &address, &log)?;
    service.wait_ready().await?;
    let sent = async {
        refuse_connections(admin, name, true).await?;
        service.wait_state("degraded").await?;
        let client = webhook_client(load)?;
        let url = format!("{}/webhook", service.base);
        let bodies = Arc::clone(&load.bodies);
        let sent = drive(load, Some(rate), |index| {
            let (client, url) = (client.clone(), url.clone());
            let body = bodies.get(index).cloned().unwrap_or_default();
            async move { post(&client, &url, body, Expect::Queued).await }
        })
        .await;
        refuse_connections(admin, name, false).await?;
        sent
    }
    .await;
    let restored = Instant::now();
    let settled = match &sent {
        Ok(_) => wait_settled(&database.url, load.signals.len(), &service).await,
        Err(_) => Ok(()),
    };
    let settled_after = restored.elapsed();
    let stop_problems: Vec<String> = service.stop_problem().into_iter().collect();
    let (samples, elapsed, max_lag) = sent?;
    settled?;
    let (applied, others) = drain_figures(&database.url).await?;
    Ok(JournaledRun {
        intake: HttpRun {
            stats: Stats::new(samples, elapsed, max_lag),
            logs: vec![(log.clone(), log_findings(&log))],
            stop_problems,
        },
        settled_after,
        applied,
        others,
    })
}

/// Makes the database `name` refuse new connections and ends its sessions (`refuse`), or
/// lets connections in again.
async fn refuse_connections(admin: &str, name: &str, refuse: bool) -> anyhow::Result<()> {
    let pool = sqlx::PgPool::connect(admin)
        .await
        .with_context(|| format!("cannot connect to PostgreSQL at {}", redact(admin)))?;
    let mut statements = vec![format!(
        "ALTER DATABASE {name} ALLOW_CONNECTIONS {}",
        !refuse
    )];
    if refuse {
        statements.push(format!(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'"
        ));
    }
    let mut outcome = Ok(());
    for statement in statements {
        if let Err(error) = sqlx::query(sqlx::AssertSqlSafe(statement.clone()))
            .execute(&pool)
            .await
        {
            outcome = Err(error).with_context(|| format!("{statement} failed"));
            break;
        }
    }
    pool.close().await;
    outcome
}

/// Polls the signal log every [`SETTLE_POLL`] until `count` alerts are recorded and none is
/// `queued`, for at most [`SETTLE_WAIT`].
async fn wait_settled(url: &str, count: usize, service: &Service) -> anyhow::Result<()> {
    let expected = i64::try_from(count).context("too many alerts")?;
    let deadline = Instant::now() + SETTLE_WAIT;
    let mut last = String::from("the database did not answer");
    while Instant::now() < deadline {
        if let Ok(pool) = sqlx::PgPool::connect(url).await {
            let counted: Result<(i64, i64), _> = sqlx::query_as(
                "SELECT COUNT(*), COUNT(*) FILTER (WHERE status = 'queued') FROM signal_log",
            )
            .fetch_one(&pool)
            .await;
            pool.close().await;
            match counted {
                Ok((recorded, 0)) if recorded == expected => return Ok(()),
                Ok((recorded, queued)) => {
                    last = format!("{recorded} of {expected} recorded, {queued} still queued");
                }
                Err(error) => last = error.to_string(),
            }
        }
        tokio::time::sleep(SETTLE_POLL).await;
    }
    bail!(
        "the alerts were not all settled {} s after the database returned ({last}); log tail:\n{}",
        SETTLE_WAIT.as_secs(),
        log_tail(&service.log)
    )
}

/// How many alerts were applied and over how long (first to last `processed_at`), and the
/// count of every other outcome.
async fn drain_figures(url: &str) -> anyhow::Result<((i64, Duration), Vec<(String, i64)>)> {
    let pool = sqlx::PgPool::connect(url)
        .await
        .context("cannot connect to the benchmark database")?;
    let read = async {
        let (applied, span): (i64, f64) = sqlx::query_as(
            "SELECT COUNT(*), COALESCE(EXTRACT(EPOCH FROM MAX(processed_at) - MIN(processed_at)), 0)::float8 \
             FROM signal_log WHERE status = 'applied'",
        )
        .fetch_one(&pool)
        .await?;
        let others: Vec<(String, i64)> = sqlx::query_as(
            "SELECT status, COUNT(*) FROM signal_log WHERE status <> 'applied' GROUP BY status ORDER BY status",
        )
        .fetch_all(&pool)
        .await?;
        Ok::<_, sqlx::Error>(((applied, Duration::from_secs_f64(span.max(0.0))), others))
    }
    .await;
    pool.close().await;
    read.context("cannot read the signal log")
}

/// Claims and applies one signal as the webhook does, minus HTTP and the broker.
async fn apply(
    store: &AnyStore,
    signal: Option<&Signal>,
    instruments: &BTreeMap<String, Instrument>,
) -> Sample {
    let started = Instant::now();
    let refused = |category: &str, detail: String| Answer::Refused {
        category: category.to_string(),
        detail: shorten(&detail),
    };
    let Some(signal) = signal else {
        return Sample {
            answer: refused("missing", String::from("no signal at this index")),
            latency: started.elapsed(),
            started,
        };
    };
    let Some(instrument) = instruments.get(&signal.instrument) else {
        return Sample {
            answer: refused("unknown instrument", signal.instrument.clone()),
            latency: started.elapsed(),
            started,
        };
    };
    let fingerprint = signal.fingerprint();
    let claim = SignalClaim {
        signal,
        fingerprint: &fingerprint,
        instance_id: LOAD_INSTANCE,
        received_at: Utc::now(),
    };
    let now = Utc::now();
    let applied = store
        .apply_signal(&claim, |book| {
            plan(signal, &fingerprint, instrument, signal.price, now, book)
                .map_err(Refusal::Rejected)
        })
        .await;
    let answer = match applied {
        Ok(Applied::Done(_)) => Answer::Accepted,
        Ok(Applied::Duplicate) => refused("duplicate", fingerprint.clone()),
        Ok(Applied::Refused(refusal)) => refused(refusal.status(), refusal.to_string()),
        Ok(Applied::Queued) => refused("queued", fingerprint.clone()),
        Err(ApplyError::Store(error)) => refused("store error", error.to_string()),
    };
    Sample {
        answer,
        latency: started.elapsed(),
        started,
    }
}

/// Runs `task(index)` for every signal, at most `load.concurrency` at once, base entries all
/// finished before the first pyramid starts. With `rate`, signal `i` starts no earlier than
/// `i / rate` seconds after the first (a schedule fixed up front). Returns the samples in
/// signal order, the time from the first start to the last answer, and how far the latest
/// start was behind its schedule.
async fn drive<F, Fut>(
    load: &Load,
    rate: Option<u32>,
    task: F,
) -> anyhow::Result<(Vec<Sample>, Duration, Duration)>
where
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = Sample> + Send + 'static,
{
    let count = load.signals.len();
    let permits = Arc::new(Semaphore::new(load.concurrency));
    let mut samples = Vec::with_capacity(count);
    let mut pending: Vec<tokio::task::JoinHandle<Sample>> = Vec::with_capacity(count);
    let mut max_lag = Duration::ZERO;
    let started = Instant::now();
    for index in 0..count {
        if index == load.bases {
            for handle in pending.drain(..) {
                samples.push(handle.await.context("a load task panicked")?);
            }
        }
        let due = match rate {
            Some(rate) => {
                let offset = u32::try_from(index)
                    .ok()
                    .and_then(|index| Duration::from_secs(1).checked_mul(index))
                    .and_then(|offset| offset.checked_div(rate))
                    .context("the paced schedule is too long")?;
                let due = started + offset;
                tokio::time::sleep_until(due.into()).await;
                Some(due)
            }
            None => None,
        };
        let permit = Arc::clone(&permits)
            .acquire_owned()
            .await
            .context("the concurrency limit closed")?;
        if let Some(due) = due {
            max_lag = max_lag.max(Instant::now().saturating_duration_since(due));
        }
        let future = task(index);
        pending.push(tokio::spawn(async move {
            let sample = future.await;
            drop(permit);
            sample
        }));
    }
    for handle in pending {
        samples.push(handle.await.context("a load task panicked")?);
    }
    Ok((samples, started.elapsed(), max_lag))
}

/// A running `vigil run`; dropping it stops the process (SIGTERM, then SIGKILL).
#[derive(Debug)]
struct Service {
    /// The process.
    child: std::process::Child,
    /// Its instance id.
    instance: String,
    /// Its standard output and error.
    log: PathBuf,
    /// `http://127.0.0.1:PORT`: the webhook listener.
    base: String,
    /// `http://127.0.0.1:PORT`: the operator listener (`/ready`, `/status`).
    operator: String,
}

impl Service {
    /// Starts `vigil run` as `instance` on `database_url`, listening for webhooks on
    /// `address` (and for operators on a free port) and appending to `log`. Settings the launch leaves out are not taken from the environment.
    fn start(
        launch: &Launch,
        database_url: &str,
        instance: &str,
        address: &str,
        log: &Path,
    ) -> anyhow::Result<Service> {
        let stderr = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .with_context(|| format!("cannot open {}", log.display()))?;
        let stdout = stderr
            .try_clone()
            .with_context(|| format!("cannot share {}", log.display()))?;
        let operator = format!("127.0.0.1:{}", free_port()?);
        let mut command = std::process::Command::new(&launch.binary);
        command
            .arg("run")
            .arg("--config")
            .arg(&launch.config)
            .arg("--database-url")
            .arg(database_url)
            .arg("--listen")
            .arg(address)
            .arg("--operator-listen")
            .arg(&operator)
            .arg("--instance")
            .arg(instance)
            .env(PASSPHRASE_ENV, LOAD_PASSPHRASE)
            .env_remove(REDIS_URL_ENV)
            .env_remove(POLICY_ENV)
            .env_remove(OPERATOR_TOKEN_ENV);
        if let Some(redis_url) = &launch.redis_url {
            command.arg("--redis-url").arg(redis_url);
        }
        if let Some(policy) = &launch.policy {
            command.arg("--policy").arg(policy);
        }
        let child = command
            .current_dir(&launch.work)
            .stdin(std::process::Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
            .with_context(|| format!("cannot start {}", launch.binary.display()))?;
        Ok(Service {
            child,
            instance: instance.to_string(),
            log: log.to_path_buf(),
            base: format!("http://{address}"),
            operator: format!("http://{operator}"),
        })
    }

    /// kill -9: no goodbye, no lease given up. Reaps the process.
    fn kill(&mut self) -> anyhow::Result<()> {
        self.child
            .kill()
            .with_context(|| format!("cannot kill {}", self.instance))?;
        self.child
            .wait()
            .with_context(|| format!("cannot reap {}", self.instance))?;
        Ok(())
    }

    /// Polls `GET /ready` until it answers 200, at most [`READY_TRIES`] times.
    async fn wait_ready(&mut self) -> anyhow::Result<()> {
        self.poll_ready("answer 200", |status, _| status == reqwest::StatusCode::OK)
            .await
    }

    /// Polls `GET /ready` until its `state` is `state`, at most [`READY_TRIES`] times.
    async fn wait_state(&mut self, state: &str) -> anyhow::Result<()> {
        self.poll_ready(&format!("say {state}"), |_, body| {
            body.get("state").and_then(serde_json::Value::as_str) == Some(state)
        })
        .await
    }

    /// Polls `GET /ready` every [`READY_INTERVAL`] until `done` holds for its status and
    /// body, at most [`READY_TRIES`] times; fails early if the service exits. `wanted` says
    /// what was waited for.
    async fn poll_ready(
        &mut self,
        wanted: &str,
        done: impl Fn(reqwest::StatusCode, &serde_json::Value) -> bool,
    ) -> anyhow::Result<()> {
        let client = reqwest::Client::builder()
            .no_proxy()
            .timeout(READY_REQUEST_TIMEOUT)
            .build()
            .context("cannot build the HTTP client")?;
        let url = format!("{}/ready", self.operator);
        let mut last = String::from("no answer");
        for _ in 0..READY_TRIES {
            if let Some(status) = self
                .child
                .try_wait()
                .context("cannot check on the service")?
            {
                bail!(
                    "{} exited with {status} while waiting for /ready to {wanted}; log tail:\n{}",
                    self.instance,
                    log_tail(&self.log)
                );
            }
            match client.get(&url).send().await {
                Ok(response) => {
                    let status = response.status();
                    let body = response
                        .bytes()
                        .await
                        .ok()
                        .and_then(|bytes| serde_json::from_slice(&bytes).ok())
                        .unwrap_or(serde_json::Value::Null);
                    if done(status, &body) {
                        return Ok(());
                    }
                    last = format!("HTTP {}, state {}", status.as_u16(), body["state"]);
                }
                Err(error) => last = error_chain(&error),
            }
            tokio::time::sleep(READY_INTERVAL).await;
        }
        bail!(
            "{url} ({}) did not {wanted} after {READY_TRIES} tries {} ms apart (last: {last}); log tail:\n{}",
            self.instance,
            READY_INTERVAL.as_millis(),
            log_tail(&self.log)
        )
    }

    /// Stops the service (see [`Service::stop`]) and says what went wrong, if anything did:
    /// an exit other than success is a problem.
    fn stop_problem(&mut self) -> Option<String> {
        match self.stop() {
            Ok(status) if status.success() => None,
            Ok(status) => Some(format!(
                "{} exited with {status} after SIGTERM; log tail:\n{}",
                self.instance,
                log_tail(&self.log)
            )),
            Err(error) => Some(format!("{error:#}")),
        }
    }

    /// Sends SIGTERM and waits for the exit, killing the process if it outlasts
    /// [`STOP_TRIES`] checks.
    fn stop(&mut self) -> anyhow::Result<std::process::ExitStatus> {
        if let Some(status) = self
            .child
            .try_wait()
            .context("cannot check on the service")?
        {
            return Ok(status);
        }
        let pid = self.child.id().to_string();
        let sent = std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .context("cannot run kill -TERM")?;
        if !sent.success() {
            bail!("kill -TERM {pid} failed with {sent}");
        }
        for _ in 0..STOP_TRIES {
            if let Some(status) = self
                .child
                .try_wait()
                .context("cannot check on the service")?
            {
                return Ok(status);
            }
            std::thread::sleep(STOP_INTERVAL);
        }
        self.child.kill().context("cannot kill the service")?;
        let status = self.child.wait().context("cannot reap the service")?;
        bail!(
            "{} did not stop within {} ms of SIGTERM and was killed ({status}); log tail:\n{}",
            self.instance,
            STOP_INTERVAL.as_millis() * u128::from(STOP_TRIES),
            log_tail(&self.log)
        )
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        if let Err(error) = self.stop() {
            eprintln!("warning: stopping {}: {error:#}", self.instance);
        }
    }
}

/// The last [`LOG_TAIL_LINES`] lines of `log`.
fn log_tail(log: &Path) -> String {
    match std::fs::read_to_string(log) {
        Ok(text) => {
            let lines: Vec<&str> = text.lines().collect();
            let from = lines.len().saturating_sub(LOG_TAIL_LINES);
            lines.get(from..).unwrap_or_default().join("\n")
        }
        Err(error) => format!("(cannot read {}: {error})", log.display()),
    }
}

/// The warning and error lines of `log`.
fn log_findings(log: &Path) -> Vec<String> {
    match std::fs::read_to_string(log) {
        Ok(text) => text
            .lines()
            .filter(|line| line.contains(" WARN ") || line.contains(" ERROR "))
            .map(str::to_string)
            .collect(),
        Err(error) => vec![format!("(cannot read {}: {error})", log.display())],
    }
}

/// The `ha` benchmark's name: the first column of its lines, and its instances' id prefix.
const HA: &str = "ha";

/// How often the `ha` benchmark polls `/status` and `/ready`: with one loopback round trip,
/// the resolution of its takeover and detection times.
const HA_POLL_INTERVAL_MS: u64 = 10;

/// How long one `/status` or `/ready` poll may take before it counts as no answer.
const HA_PROBE_TIMEOUT_MS: u64 = 1000;

/// Slack on top of each bound the `ha` benchmark waits against (one leader, a takeover, Redis
/// seen lost or back) before it gives up and fails: scheduling, reconnection back-off and a
/// busy machine. Generous, because times are printed, never asserted: only a wait that would
/// otherwise never end fails.
const HA_WAIT_SLACK_MS: u64 = 10_000;

/// Heartbeats after which the written policy declares an instance stale: the policy requires
/// at least two, and a third keeps a busy machine from declaring a healthy instance gone.
const HEARTBEATS_BEFORE_STALE: u32 = 3;

/// Heartbeat intervals within which every instance should see Redis lost (or back): each
/// instance checks Redis once per heartbeat, and the check itself may take up to another.
const REDIS_DETECTION_BOUND_HEARTBEATS: u32 = 2;

/// How long the private `redis-server` may take to answer `PING` after it is started.
const REDIS_START_TIMEOUT_MS: u64 = 10_000;

/// How long one command to the private `redis-server` may take, connecting included.
const REDIS_COMMAND_TIMEOUT_MS: u64 = 1000;

/// The takeover and Redis-loss run: every run of the `ha` benchmark has its own fresh
/// database, `vigil_load_<pid>_<n>` with `n` one of these.
const HA_RUN_FAILOVER: usize = 1;
/// The one-instance throughput run.
const HA_RUN_ONE: usize = 2;
/// The several-instance throughput run.
const HA_RUN_SEVERAL: usize = 3;
/// The in-process raw transaction run.
const HA_RUN_RAW: usize = 4;

/// The `ha` benchmark: takeovers and Redis loss on one set of instances, then throughput.
/// Needs PostgreSQL; fails at the end if any signal was not accepted or an instance did not
/// stop cleanly.
async fn ha_bench(args: &HaArgs) -> anyhow::Result<()> {
    let Some(admin) = &args.workload.postgres_url else {
        println!(
            "{HA} skipped: several instances need PostgreSQL: give --postgres-url ADMIN_URL or set VIGIL_TEST_DATABASE_URL"
        );
        return Ok(());
    };
    let (binary, load, dir) = args.workload.prepare("vigil-ha")?;
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let mut problems = Vec::new();
    let outcome = ha_runs(args, admin, &binary, &load, &dir, &mut problems).await;
    finish(&dir, outcome, &problems)
}

/// Writes the files, starts the private Redis, and runs the three measurements in `dir`.
async fn ha_runs(
    args: &HaArgs,
    admin: &str,
    binary: &Path,
    load: &Load,
    dir: &Path,
    problems: &mut Vec<String>,
) -> anyhow::Result<()> {
    let config = dir.join("vigil.toml");
    std::fs::write(&config, deployment_file(load))
        .with_context(|| format!("cannot write {}", config.display()))?;
    let policy = dir.join("policy.toml");
    let timings = write_ha_policy(&policy, args.lease, args.heartbeat)?;
    // As `vigil::coordination::leader::tick`: every heartbeat, and at least three times a lease.
    let renewal = timings.heartbeat_interval.min(timings.leader_lease / 3);
    let instances = usize::try_from(args.instances).context("--instances is too large")?;
    println!(
        "{HA:<8} policy: heartbeat {}, lease {} renewed every {}, stale after {}; {instances} instances, private redis-server",
        humantime::format_duration(timings.heartbeat_interval),
        humantime::format_duration(timings.leader_lease),
        humantime::format_duration(renewal),
        humantime::format_duration(timings.instance_stale_after),
    );

    let mut redis = RedisServer::start(&args.redis_server, dir).await?;
    let launch = Launch {
        binary: binary.to_path_buf(),
        config,
        work: dir.to_path_buf(),
        redis_url: Some(redis.url()),
        policy: Some(policy),
    };
    let backend = Backend::Postgres {
        admin: admin.to_string(),
    };

    Database::scoped(&backend, dir, HA_RUN_FAILOVER, async |database| {
        let mut cluster = HaCluster::start(&launch, &database.url, instances).await?;
        takeovers(&mut cluster, &timings, renewal, args.rounds).await?;
        redis_loss(&cluster, &mut redis, &timings).await?;
        problems.extend(cluster.stop());
        anyhow::Ok(())
    })
    .await?;

    ha_throughput(load, &backend, &launch, &redis, instances, problems).await
}

/// Writes a policy with only an `[ha]` table to `path` and loads it back as `vigil run`
/// will, so that an invalid combination fails here and the printed bounds are those in force.
/// Durations are written in whole milliseconds.
fn write_ha_policy(path: &Path, lease: Duration, heartbeat: Duration) -> anyhow::Result<HaTimings> {
    let stale = heartbeat
        .checked_mul(HEARTBEATS_BEFORE_STALE)
        .context("--heartbeat is too long")?;
    let text = format!(
        "# Written by vigil-bench ha; everything else is the built-in policy.\n\
         [ha]\n\
         heartbeat_interval = \"{}ms\"\n\
         instance_stale_after = \"{}ms\"\n\
         leader_lease = \"{}ms\"\n",
        heartbeat.as_millis(),
        stale.as_millis(),
        lease.as_millis(),
    );
    std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))?;
    let policy = Policy::load(path)
        .with_context(|| format!("the written policy {} is not valid", path.display()))?;
    Ok(policy.ha)
}

/// `rounds` times: kills the single leader with SIGKILL, times how long until a survivor
/// leads, and restarts the killed instance.
async fn takeovers(
    cluster: &mut HaCluster,
    timings: &HaTimings,
    renewal: Duration,
    rounds: u32,
) -> anyhow::Result<()> {
    let bound = timings.leader_lease + renewal;
    let timeout = bound + Duration::from_millis(HA_WAIT_SLACK_MS);
    let bound_text = format!(
        "lease {} + one renewal {} = {:.3}s",
        humantime::format_duration(timings.leader_lease),
        humantime::format_duration(renewal),
        bound.as_secs_f64()
    );
    let mut longest = Duration::ZERO;
    for round in 1..=rounds {
        let (leader, token) = cluster.single_leader(timeout).await?;
        let survivors: Vec<usize> = cluster
            .everyone()
            .into_iter()
            .filter(|&index| index != leader)
            .collect();
        let killed = cluster.id(leader).to_string();
        let killed_at = Instant::now();
        cluster.kill(leader)?;
        let deadline = killed_at + timeout;
        let (successor, successor_token, took) = loop {
            let probes = cluster.probe(&survivors, "/status").await;
            let first = probes
                .iter()
                .filter(|probe| probe.page.as_ref().is_some_and(leads))
                .min_by_key(|probe| probe.at);
            if let Some(probe) = first {
                break (
                    probe.index,
                    probe.page.as_ref().and_then(fencing_token),
                    probe.at.saturating_duration_since(killed_at),
                );
            }
            if Instant::now() >= deadline {
                bail!(
                    "takeover {round}: no survivor of {killed} led within {:.3}s of its kill",
                    timeout.as_secs_f64()
                );
            }
            tokio::time::sleep(Duration::from_millis(HA_POLL_INTERVAL_MS)).await;
        };
        longest = longest.max(took);
        println!(
            "{HA:<8} takeover {round}/{rounds}: SIGKILL to leader {killed} (token {token}), {} leads (token {}) after {:.3}s (bound: {bound_text})",
            cluster.id(successor),
            successor_token.map_or_else(|| String::from("?"), |token| token.to_string()),
            took.as_secs_f64(),
        );
        cluster
            .restart(leader)
            .await
            .with_context(|| format!("restarting {killed} after takeover {round}"))?;
    }
    println!(
        "{HA:<8} takeover max over {rounds} round(s): {:.3}s (bound: {bound_text})",
        longest.as_secs_f64()
    );
    Ok(())
}

/// Kills the private Redis with SIGKILL and times how long each instance takes to report it
/// down; then starts it again and times how long each takes to be active with it again.
async fn redis_loss(
    cluster: &HaCluster,
    redis: &mut RedisServer,
    timings: &HaTimings,
) -> anyhow::Result<()> {
    let heartbeat = timings.heartbeat_interval;
    let bound = heartbeat * REDIS_DETECTION_BOUND_HEARTBEATS;
    let timeout = bound + Duration::from_millis(HA_WAIT_SLACK_MS);
    let bound_text = format!(
        "heartbeat {}, bound {REDIS_DETECTION_BOUND_HEARTBEATS}x = {}",
        humantime::format_duration(heartbeat),
        humantime::format_duration(bound)
    );
    let everyone = cluster.everyone();
    let count = everyone.len();
    cluster
        .first_times(
            &everyone,
            Instant::now(),
            timeout,
            "state active and redis up before Redis is killed",
            active_with_redis,
        )
        .await?;

    let killed_at = Instant::now();
    redis.kill()?;
    let lost = cluster
        .first_times(&everyone, killed_at, timeout, "redis down", |page| {
            text_field(page, "redis") == Some("down")
        })
        .await?;
    for (index, took, page) in &lost {
        println!(
            "{HA:<8} redis lost: {} reports redis down after {:.0} ms, state {} ({bound_text})",
            cluster.id(*index),
            millis(*took),
            text_field(page, "state").unwrap_or("?"),
        );
    }
    let slowest = lost.iter().map(|(_, took, _)| *took).max();
    println!(
        "{HA:<8} redis lost: all {count} report it within {:.0} ms ({bound_text})",
        millis(slowest.unwrap_or_default())
    );

    let answered = redis.resume().await?;
    let answered_at = Instant::now();
    let back = cluster
        .first_times(
            &everyone,
            answered_at,
            timeout,
            "state active and redis up after Redis returned",
            active_with_redis,
        )
        .await?;
    for (index, took, _) in &back {
        println!(
            "{HA:<8} redis back: {} active with redis up {:.0} ms after redis-server answered PING ({bound_text})",
            cluster.id(*index),
            millis(*took),
        );
    }
    let slowest = back.iter().map(|(_, took, _)| *took).max();
    println!(
        "{HA:<8} redis back: all {count} active within {:.0} ms of PING; redis-server took {:.0} ms to answer (not measured) ({bound_text})",
        millis(slowest.unwrap_or_default()),
        millis(answered),
    );
    Ok(())
}

/// The load signals through one instance and through `instances`, each on a fresh database
/// after `FLUSHALL` (the signals would otherwise be duplicates in Redis), and the raw
/// transaction rate on another.
async fn ha_throughput(
    load: &Load,
    backend: &Backend,
    launch: &Launch,
    redis: &RedisServer,
    instances: usize,
    problems: &mut Vec<String>,
) -> anyhow::Result<()> {
    let concurrency = load.concurrency;
    let mut rates = Vec::with_capacity(2);
    for (run, count) in [(HA_RUN_ONE, 1), (HA_RUN_SEVERAL, instances)] {
        redis.command("FLUSHALL").await?;
        let label = if count == 1 {
            format!("1 instance c={concurrency}")
        } else {
            format!("{count} instances c={concurrency}")
        };
        let sent = Database::scoped(backend, &launch.work, run, async |database| {
            http_run(
                load,
                database,
                launch,
                &format!("throughput-{count}"),
                None,
                count,
            )
            .await
            .with_context(|| format!("{HA} {label}"))
        })
        .await?;
        println!(
            "{HA:<8} {label}: {} signals in {:.2}s = {:.0} signals/s, {}",
            sent.stats.count,
            sent.stats.elapsed.as_secs_f64(),
            sent.stats.rate(),
            sent.stats.latencies(),
        );
        sent.report(&format!("{HA} {label}"), problems);
        rates.push(sent.stats.rate());
    }

    let raw = Database::scoped(backend, &launch.work, HA_RUN_RAW, async |database| {
        raw_run(load, database).await
    })
    .await?;
    println!(
        "{HA:<8} raw c={concurrency}: {} transactions in {:.2}s = {:.0}/s, {}",
        raw.count,
        raw.elapsed.as_secs_f64(),
        raw.rate(),
        raw.latencies(),
    );
    if let Some(summary) = raw.refusals() {
        println!("{HA:<8} raw c={concurrency}: not applied: {summary}");
        problems.push(format!("{HA} raw transactions: not applied: {summary}"));
    }
    if let [one, several] = rates[..] {
        let share = if one > 0.0 {
            format!("{:.0}%", several / one * 100.0)
        } else {
            String::from("n/a")
        };
        println!(
            "{HA:<8} {instances} instances c={concurrency}: {several:.0} signals/s = {share} of 1 instance ({one:.0} signals/s); limit: raw transactions {:.0}/s on the one database",
            raw.rate(),
        );
    }
    Ok(())
}

/// Whether a `/status` page says the instance leads.
fn leads(page: &serde_json::Value) -> bool {
    page.get("leader").and_then(serde_json::Value::as_bool) == Some(true)
}

/// The fencing token on a `/status` page.
fn fencing_token(page: &serde_json::Value) -> Option<i64> {
    page.get("fencing_token")
        .and_then(serde_json::Value::as_i64)
}

/// A string field of a page.
fn text_field<'a>(page: &'a serde_json::Value, name: &str) -> Option<&'a str> {
    page.get(name).and_then(serde_json::Value::as_str)
}

/// Whether a `/ready` page says `active` with Redis `up`.
fn active_with_redis(page: &serde_json::Value) -> bool {
    text_field(page, "state") == Some("active") && text_field(page, "redis") == Some("up")
}

/// One poll's answer from one instance.
#[derive(Debug)]
struct Probe {
    /// The instance's index in its cluster.
    index: usize,
    /// The JSON page, or `None` when it did not answer with JSON in time.
    page: Option<serde_json::Value>,
    /// When the answer (or its absence) was known.
    at: Instant,
}

/// The instances of the takeover and Redis-loss measurements, `ha-1`, `ha-2`, ..., on one
/// database and one Redis; dropping it stops them all.
#[derive(Debug)]
struct HaCluster {
    /// How each is started.
    launch: Launch,
    /// The database they share.
    database_url: String,
    /// The instances, in id order.
    services: Vec<Service>,
    /// For the polls, with [`HA_PROBE_TIMEOUT_MS`].
    client: reqwest::Client,
}

impl HaCluster {
    /// Starts `count` instances and waits until each is ready.
    async fn start(launch: &Launch, database_url: &str, count: usize) -> anyhow::Result<HaCluster> {
        let client = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_millis(HA_PROBE_TIMEOUT_MS))
            .build()
            .context("cannot build the HTTP client")?;
        let mut cluster = HaCluster {
            launch: launch.clone(),
            database_url: database_url.to_string(),
            services: Vec::with_capacity(count),
            client,
        };
        for n in 1..=count {
            let service = cluster.spawn(&format!("{HA}-{n}"))?;
            cluster.services.push(service);
        }
        for service in &mut cluster.services {
            service.wait_ready().await?;
        }
        Ok(cluster)
    }

    /// Starts `instance` on a free port, appending to its log.
    fn spawn(&self, instance: &str) -> anyhow::Result<Service> {
        let address = format!("127.0.0.1:{}", free_port()?);
        let log = self.launch.work.join(format!("{instance}.log"));
        Service::start(&self.launch, &self.database_url, instance, &address, &log)
    }

    /// Every instance's index.
    fn everyone(&self) -> Vec<usize> {
        (0..self.services.len()).collect()
    }

    /// The id of the instance at `index`.
    fn id(&self, index: usize) -> &str {
        self.services
            .get(index)
            .map_or("?", |service| service.instance.as_str())
    }

    /// kill -9 to the instance at `index`.
    fn kill(&mut self, index: usize) -> anyhow::Result<()> {
        self.services
            .get_mut(index)
            .with_context(|| format!("there is no instance {index}"))?
            .kill()
    }

    /// Starts the (killed) instance at `index` again under its id and waits until it is ready.
    async fn restart(&mut self, index: usize) -> anyhow::Result<()> {
        let instance = self.id(index).to_string();
        let mut service = self.spawn(&instance)?;
        service.wait_ready().await?;
        let slot = self
            .services
            .get_mut(index)
            .with_context(|| format!("there is no instance {index}"))?;
        // The old process is reaped already; dropping it finds it gone.
        *slot = service;
        Ok(())
    }

    /// `GET path` on the instances `indices`, all at once; answers in index order.
    async fn probe(&self, indices: &[usize], path: &str) -> Vec<Probe> {
        let mut polls = tokio::task::JoinSet::new();
        for &index in indices {
            let Some(service) = self.services.get(index) else {
                continue;
            };
            let client = self.client.clone();
            let url = format!("{}{path}", service.operator);
            polls.spawn(async move {
                let page = match client.get(&url).send().await {
                    Ok(response) => response
                        .bytes()
                        .await
                        .ok()
                        .and_then(|bytes| serde_json::from_slice(&bytes).ok()),
                    Err(_) => None,
                };
                Probe {
                    index,
                    page,
                    at: Instant::now(),
                }
            });
        }
        let mut probes = Vec::with_capacity(indices.len());
        while let Some(joined) = polls.join_next().await {
            // A poll that panicked is a poll without an answer.
            if let Ok(probe) = joined {
                probes.push(probe);
            }
        }
        probes.sort_by_key(|probe| probe.index);
        probes
    }

    /// The instance that leads and its fencing token, once exactly one reports
    /// `leader: true` on `/status`; fails after `timeout`.
    async fn single_leader(&self, timeout: Duration) -> anyhow::Result<(usize, i64)> {
        let everyone = self.everyone();
        let deadline = Instant::now() + timeout;
        loop {
            let leaders: Vec<(usize, Option<i64>)> = self
                .probe(&everyone, "/status")
                .await
                .into_iter()
                .filter_map(|probe| {
                    let page = probe.page?;
                    leads(&page).then(|| (probe.index, fencing_token(&page)))
                })
                .collect();
            if let [(index, Some(token))] = leaders[..] {
                return Ok((index, token));
            }
            if Instant::now() >= deadline {
                let names: Vec<&str> = leaders.iter().map(|&(index, _)| self.id(index)).collect();
                bail!(
                    "no single leader with a fencing token within {:.3}s (leading: [{}])",
                    timeout.as_secs_f64(),
                    names.join(", ")
                );
            }
            tokio::time::sleep(Duration::from_millis(HA_POLL_INTERVAL_MS)).await;
        }
    }

    /// Polls `/ready` on the instances `indices` every [`HA_POLL_INTERVAL_MS`] until
    /// `condition` has held on each; returns, in index order, when it first held (counted from
    /// `since`) and the page it held on. Fails `timeout` after `since`, naming `what`.
    async fn first_times(
        &self,
        indices: &[usize],
        since: Instant,
        timeout: Duration,
        what: &str,
        condition: impl Fn(&serde_json::Value) -> bool,
    ) -> anyhow::Result<Vec<(usize, Duration, serde_json::Value)>> {
        let deadline = since + timeout;
        let mut seen: BTreeMap<usize, (Duration, serde_json::Value)> = BTreeMap::new();
        loop {
            let pending: Vec<usize> = indices
                .iter()
                .copied()
                .filter(|index| !seen.contains_key(index))
                .collect();
            if pending.is_empty() {
                break;
            }
            for probe in self.probe(&pending, "/ready").await {
                if let Some(page) = probe.page.filter(|page| condition(page)) {
                    seen.insert(
                        probe.index,
                        (probe.at.saturating_duration_since(since), page),
                    );
                }
            }
            if seen.len() < indices.len() {
                if Instant::now() >= deadline {
                    let names: Vec<&str> = pending
                        .iter()
                        .filter(|index| !seen.contains_key(index))
                        .map(|&index| self.id(index))
                        .collect();
                    bail!(
                        "{} did not report {what} within {:.3}s",
                        names.join(", "),
                        timeout.as_secs_f64()
                    );
                }
                tokio::time::sleep(Duration::from_millis(HA_POLL_INTERVAL_MS)).await;
            }
        }
        Ok(seen
            .into_iter()
            .map(|(index, (took, page))| (index, took, page))
            .collect())
    }

    /// Stops every instance with SIGTERM; what went wrong, if anything did.
    fn stop(&mut self) -> Vec<String> {
        self.services
            .iter_mut()
            .filter_map(Service::stop_problem)
            .map(|problem| format!("{HA}: {problem}"))
            .collect()
    }
}

/// A private `redis-server` on a free loopback port with no persistence, which the benchmark
/// kills and starts again, empty, on the same port; dropping it kills it.
#[derive(Debug)]
struct RedisServer {
    /// The `redis-server` binary.
    binary: PathBuf,
    /// Its port.
    port: u16,
    /// Its standard output and error, appended to by every start.
    log: PathBuf,
    /// The process, while running.
    child: Option<std::process::Child>,
}

impl RedisServer {
    /// Starts a server on a free port, logging into `work`, and waits until it answers.
    async fn start(binary: &Path, work: &Path) -> anyhow::Result<RedisServer> {
        let mut server = RedisServer {
            binary: binary.to_path_buf(),
            port: free_port()?,
            log: work.join("redis.log"),
            child: None,
        };
        server.resume().await?;
        Ok(server)
    }

    /// `redis://127.0.0.1:PORT`.
    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Starts the server on its port and waits until it answers `PING`, at most
    /// [`REDIS_START_TIMEOUT_MS`]; how long that took.
    async fn resume(&mut self) -> anyhow::Result<Duration> {
        if self.child.is_some() {
            bail!("redis-server on port {} is already running", self.port);
        }
        let stdout = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .with_context(|| format!("cannot open {}", self.log.display()))?;
        let stderr = stdout
            .try_clone()
            .with_context(|| format!("cannot share {}", self.log.display()))?;
        let started = Instant::now();
        let child = std::process::Command::new(&self.binary)
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdin(std::process::Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
            .with_context(|| format!("cannot start {}", self.binary.display()))?;
        self.child = Some(child);
        let deadline = started + Duration::from_millis(REDIS_START_TIMEOUT_MS);
        loop {
            let answered = self.command("PING").await;
            let elapsed = started.elapsed();
            let error = match answered {
                Ok(()) => return Ok(elapsed),
                Err(error) => error,
            };
            if let Some(child) = &mut self.child {
                if let Some(status) = child.try_wait().context("cannot check on redis-server")? {
                    self.child = None;
                    bail!(
                        "redis-server on port {} exited with {status}; log tail:\n{}",
                        self.port,
                        log_tail(&self.log)
                    );
                }
            }
            if Instant::now() >= deadline {
                bail!(
                    "redis-server on port {} did not answer PING within {REDIS_START_TIMEOUT_MS} ms: {error:#}",
                    self.port
                );
            }
            tokio::time::sleep(Duration::from_millis(HA_POLL_INTERVAL_MS)).await;
        }
    }

    /// kill -9 (no goodbye to clients), and reaps the process.
    fn kill(&mut self) -> anyhow::Result<()> {
        if let Some(child) = &mut self.child {
            child.kill().context("cannot kill redis-server")?;
            child.wait().context("cannot reap redis-server")?;
        }
        self.child = None;
        Ok(())
    }

    /// Runs one argument-less command (`PING`, `FLUSHALL`) that answers a status, within
    /// [`REDIS_COMMAND_TIMEOUT_MS`].
    async fn command(&self, name: &str) -> anyhow::Result<()> {
        let url = self.url();
        let sent = tokio::time::timeout(Duration::from_millis(REDIS_COMMAND_TIMEOUT_MS), async {
            let client = redis::Client::open(url.as_str())?;
            let mut connection = client.get_multiplexed_async_connection().await?;
            redis::cmd(name)
                .query_async::<String>(&mut connection)
                .await
        })
        .await;
        match sent {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(error)) => Err(error).with_context(|| format!("{name} to {url} failed")),
            Err(_) => bail!("{name} to {url} had no answer within {REDIS_COMMAND_TIMEOUT_MS} ms"),
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        if let Err(error) = self.kill() {
            eprintln!(
                "warning: stopping redis-server on port {}: {error:#}",
                self.port
            );
        }
    }
}
