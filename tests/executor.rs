//! The live executor and `vigil dry-run` tell the same story. Each case is one line: a
//! policy, the dependency lost while the instance is active, how many of its probes fail
//! before it answers (or that it never does), and the dry-run events that say the same.
//!
//! The live side is the real driver, live loop and executor under tokio's paused clock, with
//! ports that fail on cue: the database, Redis and the broker. Both sides must write the same
//! transition log lines at the same (virtual) times and end with the same exit code, and the
//! retries must probe exactly the lost dependency, at the times the dry-run shows.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use vigil::broker::{Broker, BrokerError, BrokerFuture, Fill, Order};
use vigil::driver::{live, Driver, Input};
use vigil::dry_run::{self, Format, Start, DRY_RUN_SEED};
use vigil::executor::ports::{Database, HealthCheck, PortFuture};
use vigil::executor::{Executor, ExecutorConfig, Ports, Until, WATCH_INTERVAL};
use vigil::logging::{self, Capture, VirtualTimer};
use vigil::machines::lifecycle;
use vigil::policy::Policy;
use vigil::shared::Shared;
use vigil::store::{PortfolioRow, RecoveryRows, StoreError};
use vigil::vocabulary::FailureKind;

/// How long the live side runs before it is stopped, in virtual time: far past every retry
/// schedule of the shipped policies.
const HORIZON: Duration = Duration::from_secs(600);

/// How a dependency answers: the first `failing` calls fail, then every call answers; `None`
/// fails every call. A failing call fails at once, or with `hangs` never answers at all.
/// Records when each call was made, in milliseconds since the run began.
#[derive(Debug)]
struct OnCue {
    /// Calls still to answer before the failing ones begin.
    answering_first: Mutex<u32>,
    /// Calls still to fail; `None` for all.
    failing: Mutex<Option<u32>>,
    /// Whether a failing call hangs rather than fails.
    hangs: bool,
    /// When each call came.
    calls: Mutex<Vec<u64>>,
    /// The run's time zero.
    started: tokio::time::Instant,
}

impl OnCue {
    fn new(failing: Option<u32>, hangs: bool) -> Arc<OnCue> {
        OnCue::after(0, failing, hangs)
    }

    /// Answers the first `answering` calls, then fails as [`OnCue::new`] says.
    fn after(answering: u32, failing: Option<u32>, hangs: bool) -> Arc<OnCue> {
        Arc::new(OnCue {
            answering_first: Mutex::new(answering),
            failing: Mutex::new(failing),
            hangs,
            calls: Mutex::new(Vec::new()),
            started: tokio::time::Instant::now(),
        })
    }

    /// Whether this call answers; a failing call that hangs never returns.
    async fn answers(&self) -> bool {
        let answers = self.count();
        if !answers && self.hangs {
            std::future::pending::<()>().await;
        }
        answers
    }

    fn count(&self) -> bool {
        let at = u64::try_from(self.started.elapsed().as_millis()).unwrap();
        self.calls.lock().unwrap().push(at);
        let mut answering = self.answering_first.lock().unwrap();
        if *answering > 0 {
            *answering -= 1;
            return true;
        }
        let mut failing = self.failing.lock().unwrap();
        match *failing {
            None => false,
            Some(0) => true,
            Some(left) => {
                *failing = Some(left - 1);
                false
            }
        }
    }

    fn calls(&self) -> Vec<u64> {
        self.calls.lock().unwrap().clone()
    }
}

/// A database whose pings and reads answer on cue, and whose recoveries read a consistent
/// empty portfolio or, while they fail on cue, a total risk no position accounts for.
#[derive(Debug)]
struct FakeDatabase {
    ping: Arc<OnCue>,
    reads: Arc<OnCue>,
    recovery: Arc<OnCue>,
}

impl Database for FakeDatabase {
    fn open(&self) -> PortFuture<'_, Result<(), StoreError>> {
        Box::pin(async { Ok(()) })
    }

    fn ping(&self) -> PortFuture<'_, Result<(), StoreError>> {
        Box::pin(async {
            match self.ping.answers().await {
                true => Ok(()),
                false => Err(StoreError::Unavailable("connection refused".into())),
            }
        })
    }

    fn load_recovery_rows(&self) -> PortFuture<'_, Result<RecoveryRows, StoreError>> {
        Box::pin(async {
            if !self.reads.answers().await {
                return Err(StoreError::Unavailable("connection refused".into()));
            }
            let total_risk = if self.recovery.answers().await {
                "0"
            } else {
                "999"
            };
            Ok(RecoveryRows {
                portfolio: Some(PortfolioRow {
                    initial_capital: Some("0".into()),
                    closed_equity: Some("0".into()),
                    total_risk: Some(total_risk.into()),
                    margin_used: Some("0".into()),
                    version: 1,
                }),
                ..RecoveryRows::default()
            })
        })
    }

    fn record_status(&self, _: lifecycle::State) -> PortFuture<'_, Result<(), StoreError>> {
        Box::pin(async { Ok(()) })
    }

    fn heartbeat(&self) -> PortFuture<'_, Result<(), StoreError>> {
        self.ping()
    }

    fn close(&self) -> PortFuture<'_, ()> {
        Box::pin(async {})
    }
}

/// Redis answering its pings on cue.
#[derive(Debug)]
struct FakeRedis(Arc<OnCue>);

impl HealthCheck for FakeRedis {
    fn check(&self) -> PortFuture<'_, Result<(), String>> {
        Box::pin(async {
            match self.0.answers().await {
                true => Ok(()),
                false => Err("connection refused".into()),
            }
        })
    }
}

/// A broker whose health check answers on cue.
#[derive(Debug)]
struct FakeBroker(Arc<OnCue>);

impl Broker for FakeBroker {
    fn execute<'a>(&'a self, order: &'a Order) -> BrokerFuture<'a, Result<Fill, BrokerError>> {
        Box::pin(async move { Ok(Fill { price: order.price }) })
    }

    fn health(&self) -> BrokerFuture<'_, Result<(), BrokerError>> {
        Box::pin(async {
            match self.0.answers().await {
                true => Ok(()),
                false => Err(BrokerError("no answer".into())),
            }
        })
    }
}

/// How a story is compared.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum How {
    /// Every line at the dry-run's time.
    Exact,
    /// The lost dependency's failing calls hang: each probe ends at its time bound, so the
    /// lines are the dry-run's and their times are later.
    Hangs,
    /// Retries are spent and a watch finds the dependency back: the dry-run has the return
    /// as news at once, the service at the watch's next question; the lines are the same.
    WatchEnds,
    /// A stop is requested while a signal is in flight, which then reports `lost`: the
    /// machines hear it before `drained`, exactly as the dry-run has it.
    DuringDrain,
}

/// One story: under `policy`, `lost` is reported while active (none: nothing is, and it is
/// recovery that fails), its probes fail `failing` times before it answers (`None`: never),
/// and `events` tell the dry-run the same.
struct Case {
    name: &'static str,
    policy: &'static str,
    lost: Option<FailureKind>,
    failing: Option<u32>,
    how: How,
    events: &'static str,
}

const BROKER: Option<FailureKind> = Some(FailureKind::BrokerUnavailable);
const DATABASE: Option<FailureKind> = Some(FailureKind::DbUnavailable);
const REDIS: Option<FailureKind> = Some(FailureKind::RedisUnavailable);

#[rustfmt::skip]
const CASES: &[Case] = &[
    Case { name: "broker fails once", policy: "policies/default.toml", lost: BROKER, failing: Some(0), how: How::Exact,
           events: "started,recovered,broker_unavailable,broker_restored" },
    Case { name: "broker fails three times", policy: "policies/default.toml", lost: BROKER, failing: Some(2), how: How::Exact,
           events: "started,recovered,broker_unavailable,broker_unavailable,broker_unavailable,broker_restored" },
    Case { name: "broker fails for ever", policy: "policies/default.toml", lost: BROKER, failing: None, how: How::Exact,
           events: "started,recovered,broker_unavailable" },
    Case { name: "broker fails once, strict", policy: "policies/strict.toml", lost: BROKER, failing: Some(0), how: How::Exact,
           events: "started,recovered,broker_unavailable,broker_restored" },
    Case { name: "broker fails three times, strict", policy: "policies/strict.toml", lost: BROKER, failing: Some(2), how: How::Exact,
           events: "started,recovered,broker_unavailable,broker_unavailable,broker_unavailable" },
    Case { name: "broker fails for ever, strict", policy: "policies/strict.toml", lost: BROKER, failing: None, how: How::Exact,
           events: "started,recovered,broker_unavailable" },
    Case { name: "database lost, back on the third retry", policy: "policies/default.toml", lost: DATABASE, failing: Some(2), how: How::Exact,
           events: "started,recovered,db_unavailable,db_unavailable,db_unavailable,db_restored,recovered" },
    Case { name: "database lost for ever", policy: "policies/default.toml", lost: DATABASE, failing: None, how: How::Exact,
           events: "started,recovered,db_unavailable" },
    Case { name: "database lost for ever, strict", policy: "policies/strict.toml", lost: DATABASE, failing: None, how: How::Exact,
           events: "started,recovered,db_unavailable" },
    Case { name: "redis lost for ever", policy: "policies/default.toml", lost: REDIS, failing: None, how: How::Exact,
           events: "started,recovered,redis_unavailable" },
    Case { name: "redis lost for ever, strict", policy: "policies/strict.toml", lost: REDIS, failing: None, how: How::Exact,
           events: "started,recovered,redis_unavailable" },
    Case { name: "validation fails", policy: "policies/default.toml", lost: None, failing: Some(1), how: How::Exact,
           events: "started,validation_failed" },
    Case { name: "validation fails, tolerated", policy: "policies/paper.toml", lost: None, failing: None, how: How::Exact,
           events: "started,validation_failed" },
    Case { name: "validation fails once, retried", policy: "tests/data/valid_policies/retry_validation.toml", lost: None, failing: Some(1), how: How::Exact,
           events: "started,validation_failed,recovered" },
    Case { name: "broker fails for ever, the policy's own exit code", policy: "tests/data/valid_policies/broker_halts_9.toml", lost: BROKER, failing: None, how: How::Exact,
           events: "started,recovered,broker_unavailable" },
    Case { name: "broker hangs for ever, strict", policy: "policies/strict.toml", lost: BROKER, failing: None, how: How::Hangs,
           events: "started,recovered,broker_unavailable" },
    Case { name: "broker hangs twice, then answers", policy: "policies/default.toml", lost: BROKER, failing: Some(2), how: How::Hangs,
           events: "started,recovered,broker_unavailable,broker_unavailable,broker_unavailable,broker_restored" },
    Case { name: "broker back after every retry, found by the watch", policy: "policies/default.toml", lost: BROKER, failing: Some(3), how: How::WatchEnds,
           events: "started,recovered,broker_unavailable,broker_unavailable,broker_unavailable,broker_unavailable,broker_restored" },
    Case { name: "database back after every retry, found by the watch", policy: "policies/default.toml", lost: DATABASE, failing: Some(3), how: How::WatchEnds,
           events: "started,recovered,db_unavailable,db_unavailable,db_unavailable,db_unavailable,db_restored,recovered" },
    Case { name: "redis back, found by the watch", policy: "policies/default.toml", lost: REDIS, failing: Some(0), how: How::WatchEnds,
           events: "started,recovered,redis_unavailable,redis_restored" },
    Case { name: "corrupt data reported while draining halts", policy: "policies/default.toml", lost: Some(FailureKind::DataCorrupt), failing: None, how: How::DuringDrain,
           events: "started,recovered,stop,data_corrupt" },
    Case { name: "tolerated validation repaired, found by the watch", policy: "policies/paper.toml", lost: None, failing: Some(1), how: How::WatchEnds,
           events: "started,validation_failed,recovered" },
];

/// What one side did: its transition log lines, when it probed the lost dependency (for
/// the dry-run, its probe commands; live, the calls the dependency saw), its exit code
/// (`None`: still running at the horizon).
#[derive(Debug, PartialEq)]
struct Story {
    lines: Vec<String>,
    probes: Vec<u64>,
    exit_code: Option<u8>,
}

/// The lines without their times.
fn untimed(lines: &[String]) -> Vec<&str> {
    lines
        .iter()
        .map(|line| line.split_once(' ').map_or(line.as_str(), |(_, rest)| rest))
        .collect()
}

fn transition_lines(lines: Vec<String>) -> Vec<String> {
    lines
        .into_iter()
        .filter(|line| line.contains(" vigil::transition: "))
        .collect()
}

fn policy(path: &str) -> Policy {
    let full = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(path);
    Policy::parse(
        std::path::Path::new(path),
        &std::fs::read_to_string(full).unwrap(),
    )
    .unwrap()
}

fn dry(case: &Case) -> Story {
    let events = dry_run::parse_events(case.events).unwrap();
    let mut out = Vec::new();
    let summary = dry_run::run(
        &policy(case.policy),
        "vigil",
        Start::default(),
        &events,
        Format::Json,
        &mut out,
    )
    .unwrap();
    let json: serde_json::Value = serde_json::from_slice(&out).unwrap();
    let mut lines = Vec::new();
    let mut probes = Vec::new();
    for step in json["steps"].as_array().unwrap() {
        for line in step["log"].as_array().unwrap() {
            lines.push(line.as_str().unwrap().to_string());
        }
        for command in step["commands"].as_array().unwrap() {
            if command["command"] == "probe" {
                probes.push(step["at_ms"].as_u64().unwrap());
            }
        }
    }
    Story {
        lines: transition_lines(lines),
        probes,
        exit_code: summary.exit_code,
    }
}

/// The dependencies a live run works against.
struct Fakes {
    ping: Arc<OnCue>,
    reads: Arc<OnCue>,
    recovery: Arc<OnCue>,
    redis: Arc<OnCue>,
    broker: Arc<OnCue>,
}

impl Fakes {
    /// Every dependency healthy but the one `case` loses, which answers on its cue; with
    /// nothing lost, recovery's checks fail on the cue.
    fn for_case(case: &Case) -> (Fakes, Arc<OnCue>) {
        let healthy = || OnCue::new(Some(0), false);
        let cue = OnCue::new(case.failing, case.how == How::Hangs);
        let pick = |kind| match case.lost == Some(kind) {
            true => Arc::clone(&cue),
            false => healthy(),
        };
        let fakes = Fakes {
            ping: pick(FailureKind::DbUnavailable),
            reads: healthy(),
            recovery: match case.lost {
                None => Arc::clone(&cue),
                Some(_) => healthy(),
            },
            redis: pick(FailureKind::RedisUnavailable),
            broker: pick(FailureKind::BrokerUnavailable),
        };
        (fakes, cue)
    }

    /// How often each dependency was asked.
    fn calls(&self) -> BTreeMap<&'static str, usize> {
        BTreeMap::from([
            ("database pings", self.ping.calls().len()),
            ("redis pings", self.redis.calls().len()),
            ("broker health checks", self.broker.calls().len()),
            ("recoveries", self.recovery.calls().len()),
        ])
    }
}

/// What a live run ended with: its log lines (up to the stop, when it was stopped), its
/// exit code (`None`: still running at the horizon, then stopped), and the state it
/// published at the horizon.
struct Ending {
    lines: Vec<String>,
    exit_code: Option<u8>,
    at_horizon: Option<vigil::shared::LifecycleView>,
}

/// Runs the real loop and executor against `fakes` under `policy`: `lost` is reported once
/// the instance is active (or, with [`How::DuringDrain`], while it drains a signal), until
/// the process ends or the horizon passes and it is stopped.
async fn run(policy: &Policy, fakes: &Fakes, lost: Option<FailureKind>, how: How) -> Ending {
    let now_ms = Arc::new(AtomicU64::new(0));
    let capture = Capture::default();
    let subscriber = logging::subscriber(capture.clone(), VirtualTimer::new(Arc::clone(&now_ms)));
    let _guard = tracing::subscriber::set_default(subscriber);
    let (sender, mut inputs) = live::channel();
    let shared = Arc::new(Shared::new("vigil", sender.clone()));
    let ports = Ports {
        database: Arc::new(FakeDatabase {
            ping: Arc::clone(&fakes.ping),
            reads: Arc::clone(&fakes.reads),
            recovery: Arc::clone(&fakes.recovery),
        }),
        redis: Arc::new(FakeRedis(Arc::clone(&fakes.redis))),
        broker: Arc::new(FakeBroker(Arc::clone(&fakes.broker))),
        shared: Arc::clone(&shared),
    };
    let config = ExecutorConfig {
        instance: "vigil".into(),
        tolerance: policy.recovery.tolerance,
        instruments: BTreeMap::new(),
        initial_capital: None,
        until: Until::Stopped,
        // No heartbeat during the story: the loss is reported once, at t=0, as a signal's
        // failure would report it.
        heartbeat_interval: HORIZON * 2,
        snapshots: None,
    };
    let mut executor = Executor::new(config, ports);
    let mut lifecycle = executor.watch_lifecycle();
    let (mut driver, init) = Driver::new(policy, "vigil", fastrand::Rng::with_seed(DRY_RUN_SEED));
    driver.publish_time(now_ms);
    let before_stop = Mutex::new(None);
    let story = async {
        if let (How::DuringDrain, Some(kind)) = (how, lost) {
            lifecycle
                .wait_for(|view| view.state.name() == "active")
                .await
                .unwrap();
            let in_flight = shared.in_flight.enter();
            sender.send(Input::Stop).await.unwrap();
            lifecycle
                .wait_for(|view| view.state.name() == "stopping")
                .await
                .unwrap();
            sender.send(Input::Failure(kind)).await.unwrap();
            drop(in_flight);
            std::future::pending::<()>().await;
        }
        if let Some(kind) = lost {
            lifecycle
                .wait_for(|view| view.state.name() == "active")
                .await
                .unwrap();
            sender.send(Input::Failure(kind)).await.unwrap();
        }
        tokio::time::sleep(HORIZON).await;
        *before_stop.lock().unwrap() = Some((capture.take_lines(), shared.view()));
        sender.send(Input::Stop).await.unwrap();
        std::future::pending::<()>().await;
    };
    let mut clock = live::TokioClock::start();
    let code = tokio::select! {
        code = live::run(&mut driver, &init, &mut inputs, &mut executor, &mut clock) => code,
        () = story => unreachable!("the story never ends"),
    };
    match before_stop.into_inner().unwrap() {
        Some((lines, view)) => Ending {
            lines,
            exit_code: None,
            at_horizon: Some(view),
        },
        None => Ending {
            lines: capture.take_lines(),
            exit_code: Some(code),
            at_horizon: None,
        },
    }
}

/// Runs `case` live. Also returns how often each dependency was asked.
async fn live(case: &Case) -> (Story, BTreeMap<&'static str, usize>) {
    let (fakes, cue) = Fakes::for_case(case);
    let ending = run(&policy(case.policy), &fakes, case.lost, case.how).await;
    let story = Story {
        lines: transition_lines(ending.lines),
        probes: cue.calls(),
        exit_code: ending.exit_code,
    };
    (story, fakes.calls())
}

/// A retry whose probe finds a different failure (an unexpected failure's re-run of
/// recovery finding the database gone) still ends its own retry, and reports the other
/// failure besides: once the database answers again, no machine is left waiting and the
/// instance is active.
#[tokio::test(start_paused = true)]
async fn a_probe_that_finds_another_failure_leaves_no_machine_waiting() {
    common::keep_call_sites_interesting();
    let healthy = || OnCue::new(Some(0), false);
    // The database answers start-up's recovery, refuses the next three reads or pings,
    // then answers.
    let database = OnCue::after(1, Some(3), false);
    let fakes = Fakes {
        ping: Arc::clone(&database),
        reads: Arc::clone(&database),
        recovery: healthy(),
        redis: healthy(),
        broker: healthy(),
    };
    let ending = run(
        &policy("policies/paper.toml"),
        &fakes,
        Some(FailureKind::Unexpected),
        How::Exact,
    )
    .await;
    let lines = transition_lines(ending.lines).join("\n");
    let view = ending.at_horizon.expect("the instance runs until stopped");
    assert_eq!(view.state.name(), "active", "{lines}");
    assert!(
        lines.contains("reason=db_unavailable") && lines.contains("unexpected: retry 1/2 failed"),
        "the re-run of recovery found the database gone, and said so for both kinds:\n{lines}"
    );
}

#[tokio::test(start_paused = true)]
async fn the_live_executor_tells_the_dry_runs_story() {
    common::keep_call_sites_interesting();
    for case in CASES {
        let expected = dry(case);
        let (story, calls) = live(case).await;
        let name = case.name;
        match case.how {
            How::Exact | How::DuringDrain => {
                assert_eq!(story.lines, expected.lines, "{name}: transition log lines");
            }
            How::Hangs | How::WatchEnds => assert_eq!(
                untimed(&story.lines),
                untimed(&expected.lines),
                "{name}: transition log lines"
            ),
        }
        assert_eq!(story.exit_code, expected.exit_code, "{name}: exit code");
        if case.how == How::Hangs {
            // Each hanging probe ends at its bound, and the next retry is scheduled from then.
            let bound = u64::try_from(vigil::executor::PROBE_TIMEOUT.as_millis()).unwrap();
            let shifted: Vec<u64> = expected
                .probes
                .iter()
                .enumerate()
                .map(|(hung, at)| at + bound * u64::try_from(hung).unwrap())
                .collect();
            assert_eq!(
                story.probes[..shifted.len()],
                shifted[..],
                "{name}: probe times"
            );
            continue;
        }

        // The retries asked the lost dependency, at the dry-run's times; a recovery failure
        // is asked by re-running recovery, after the recovery that found it.
        let asked: Vec<u64> = match case.lost {
            Some(_) => story.probes.clone(),
            None => story.probes.iter().skip(1).copied().collect(),
        };
        assert!(
            asked.len() >= expected.probes.len()
                && asked[..expected.probes.len()] == expected.probes[..],
            "{name}: probes at {asked:?}, the dry-run probes at {:?}",
            expected.probes
        );
        // Beyond the retries, only a watch asks: first one WATCH_INTERVAL after the policy
        // tolerates the failure (at the last retry, or at once), then every WATCH_INTERVAL.
        let watch_ms = u64::try_from(WATCH_INTERVAL.as_millis()).unwrap();
        if let Some(first_watch) = asked.get(expected.probes.len()) {
            let tolerated_at = expected.probes.last().copied().unwrap_or(0);
            assert_eq!(
                *first_watch,
                tolerated_at + watch_ms,
                "{name}: the watch's first probe"
            );
        }
        for pair in asked[expected.probes.len()..].windows(2) {
            assert_eq!(
                pair[1] - pair[0],
                watch_ms,
                "{name}: watch probes at {asked:?}"
            );
        }
        // No other dependency was asked anything (recovery runs once at start).
        for (what, count) in &calls {
            let lost = match case.lost {
                Some(FailureKind::DbUnavailable) => "database pings",
                Some(FailureKind::RedisUnavailable) => "redis pings",
                Some(FailureKind::BrokerUnavailable) => "broker health checks",
                _ => "recoveries",
            };
            let recovered_again = case.lost == DATABASE && case.failing.is_some();
            let recovered_by_watch = case.lost.is_none() && case.how == How::WatchEnds;
            let expected = match *what {
                what if what == lost => continue,
                "recoveries" if recovered_again => 2,
                "recoveries" if recovered_by_watch => 2,
                "recoveries" => 1,
                _ => 0,
            };
            assert_eq!(*count, expected, "{name}: {what}");
        }
    }
}
