//! The policy file as written: every value keeps its position in the file so that each
//! validation error can name file:line:column.

use super::{
    Exhausted, HaTimings, Policy, RecoverySettings, Response, RestartBudget, RetrySchedule,
    SignalAges, HEARTBEATS_BEFORE_STALE, MAX_HA_TIMING, MAX_RESTART_WINDOW, MAX_RETRY_ATTEMPTS,
    MAX_RETRY_DELAY, MAX_SIGNAL_AGE, MIN_HA_TIMING, MIN_RESTART_WINDOW, MIN_RETRY_DELAY,
    MIN_SIGNAL_AGE,
};
use crate::diagnostic::{did_you_mean, Collector, Diagnostics};
use crate::intake::DRAIN_STORE_DEADLINE;
use crate::vocabulary::{FailureKind, SignalSet, SignalType};
use rust_decimal::Decimal;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::Path;
use std::str::FromStr;
use std::time::Duration;
use toml::Spanned;

type Value = Spanned<toml::Value>;

/// The top level of a policy file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    #[serde(default)]
    failures: BTreeMap<Spanned<String>, Spanned<RawFailure>>,
    recovery: Option<RawRecovery>,
    #[serde(default)]
    degraded: BTreeMap<Spanned<String>, Spanned<Vec<Spanned<String>>>>,
    ha: Option<RawHa>,
    restarts: Option<RawRestarts>,
    signals: Option<RawSignals>,
}

/// `[signals]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSignals {
    entry_max_age: Option<Value>,
    exit_max_age: Option<Value>,
}

/// `[failures.<kind>]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFailure {
    response: Spanned<String>,
    attempts: Option<Value>,
    initial_delay: Option<Value>,
    multiplier: Option<Value>,
    max_delay: Option<Value>,
    jitter: Option<Value>,
    then: Option<Spanned<String>>,
    warning: Option<Spanned<String>>,
    exit_code: Option<Value>,
}

/// `[recovery]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRecovery {
    tolerance: Option<Value>,
    snapshot_max_age: Option<Value>,
}

/// `[ha]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHa {
    heartbeat_interval: Option<Value>,
    instance_stale_after: Option<Value>,
    leader_lease: Option<Value>,
    signal_lock_ttl: Option<Value>,
    dedup_window: Option<Value>,
    leader_task_interval: Option<Value>,
}

/// `[restarts]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRestarts {
    max: Option<Value>,
    window: Option<Value>,
}

/// Parses `source`; values the file leaves out come from `base`. With no base (the default
/// policy itself), every value must be present.
pub(super) fn parse(
    path: &Path,
    source: &str,
    base: Option<&Policy>,
) -> Result<Policy, Diagnostics> {
    let mut check = Checker {
        file: Collector::new(path, source),
        corrupt_data_tolerated: None,
    };
    let raw: RawPolicy = match toml::from_str(source) {
        Ok(raw) => raw,
        Err(error) => {
            let (message, hint) = explain_toml_error(error.message());
            check.report(error.span(), message, hint);
            return check.file.finish(None);
        }
    };
    let policy = check.policy(raw, base);
    check.file.finish(policy)
}

/// Rewords serde's messages into what a policy author needs to hear.
fn explain_toml_error(message: &str) -> (String, Option<String>) {
    let message = message.trim().to_string();
    if message.starts_with("unknown field") {
        let hint = "remove the key, or correct its spelling; the README's policy reference lists every key";
        return (message, Some(hint.to_string()));
    }
    if message.contains("missing field `response`") {
        let hint =
            r#"every [failures.<kind>] table needs response = "halt", "continue" or "retry""#;
        return (message, Some(hint.to_string()));
    }
    (message, None)
}

struct Checker<'a> {
    /// What is found wrong with the file.
    file: Collector<'a>,
    /// Where the file makes `[failures.data_corrupt]` continue degraded: the span of
    /// `response = "continue"`, or of `then = "continue"` after retries (`true`).
    corrupt_data_tolerated: Option<(std::ops::Range<usize>, bool)>,
}

impl Checker<'_> {
    fn report(
        &mut self,
        span: Option<std::ops::Range<usize>>,
        message: impl Into<String>,
        hint: Option<String>,
    ) {
        self.file.report(span, message, hint);
    }

    fn policy(&mut self, raw: RawPolicy, base: Option<&Policy>) -> Option<Policy> {
        let failures = self.failures(raw.failures, base);
        let recovery = self.recovery(raw.recovery, base);
        let degraded_spans: Vec<(FailureKind, std::ops::Range<usize>)> = raw
            .degraded
            .iter()
            .filter_map(|(name, signals)| {
                Some((FailureKind::parse(name.get_ref())?, signals.span()))
            })
            .collect();
        let degraded_accepts = self.degraded(raw.degraded, base);
        let ha = self.ha(raw.ha, base);
        let restarts = self.restarts(raw.restarts, base);
        let signals = self.signals(raw.signals, base);
        let failures = failures?;
        for (kind, span) in degraded_spans {
            let set = degraded_accepts[kind.index()];
            if set != SignalSet::NONE
                && failures[kind.index()].halt_code().is_none()
                && kind.needs_recovery()
                && !kind.found_with_positions_read()
            {
                self.file.warn(
                    Some(span),
                    format!(
                        "degraded.{kind} accepts {set} only once a recovery has read the positions: \
                         an instance that meets {kind} at start-up, before any recovery, accepts nothing"
                    ),
                    Some(format!(
                        "this set applies only when {kind} is reported while the instance serves, \
                         after a recovery read the positions; to accept nothing in either case, \
                         set degraded.{kind} = []"
                    )),
                );
            }
        }
        if let Some((span, after_retries)) = self.corrupt_data_tolerated.take() {
            self.warn_corrupt_data_tolerated(span, after_retries, degraded_accepts);
        }
        // In file order, as errors are.
        self.file
            .warnings
            .sort_by_key(|diagnostic| (diagnostic.line, diagnostic.column));
        Some(Policy {
            name: self.file.path.display().to_string(),
            failures,
            recovery: recovery?,
            degraded_accepts,
            ha: ha?,
            restarts: restarts?,
            signals: signals?,
            warnings: std::mem::take(&mut self.file.warnings),
        })
    }

    fn failures(
        &mut self,
        raw: BTreeMap<Spanned<String>, Spanned<RawFailure>>,
        base: Option<&Policy>,
    ) -> Option<[Response; 6]> {
        let mut found: [Option<Response>; 6] = Default::default();
        for (name, failure) in raw {
            let Some(kind) = self.failure_kind(&name) else {
                continue;
            };
            let table = failure.span();
            found[kind.index()] = self.response(kind, table, failure.into_inner());
        }
        let mut complete = true;
        for kind in FailureKind::ALL {
            if found[kind.index()].is_some() {
                continue;
            }
            match base {
                Some(base) => found[kind.index()] = Some(base.response(kind).clone()),
                None => {
                    complete = false;
                    self.report(
                        None,
                        format!("the default policy must set [failures.{kind}]"),
                        Some(
                            "every failure kind needs an explicit response in the default policy"
                                .into(),
                        ),
                    );
                }
            }
        }
        if !complete {
            return None;
        }
        let [a, b, c, d, e, f] = found;
        Some([a?, b?, c?, d?, e?, f?])
    }

    fn failure_kind(&mut self, name: &Spanned<String>) -> Option<FailureKind> {
        let kind = FailureKind::parse(name.get_ref());
        if kind.is_none() {
            let known = FailureKind::ALL.map(FailureKind::as_str);
            let hint = did_you_mean(name.get_ref(), &known, "the failure kinds");
            self.report(
                Some(name.span()),
                format!("unknown failure kind `{}`", name.get_ref()),
                Some(hint),
            );
        }
        kind
    }

    fn response(
        &mut self,
        kind: FailureKind,
        table: std::ops::Range<usize>,
        raw: RawFailure,
    ) -> Option<Response> {
        let response = raw.response.get_ref().as_str();
        let retry_keys = [
            ("attempts", raw.attempts.as_ref().map(Spanned::span)),
            (
                "initial_delay",
                raw.initial_delay.as_ref().map(Spanned::span),
            ),
            ("multiplier", raw.multiplier.as_ref().map(Spanned::span)),
            ("max_delay", raw.max_delay.as_ref().map(Spanned::span)),
            ("jitter", raw.jitter.as_ref().map(Spanned::span)),
            ("then", raw.then.as_ref().map(Spanned::span)),
        ];
        match response {
            "halt" | "continue" => {
                for (key, span) in retry_keys {
                    if let Some(span) = span {
                        self.report(
                            Some(span),
                            format!("`{key}` only applies to response = \"retry\", but [failures.{kind}] says response = \"{response}\""),
                            Some(format!("remove `{key}`, or set response = \"retry\"")),
                        );
                    }
                }
                if response == "halt" {
                    self.forbid(
                        kind,
                        "warning",
                        raw.warning.as_ref().map(Spanned::span),
                        "continue",
                    );
                    let exit_code = self.exit_code(raw.exit_code.as_ref())?;
                    Some(Response::Halt { exit_code })
                } else {
                    self.forbid(
                        kind,
                        "exit_code",
                        raw.exit_code.as_ref().map(Spanned::span),
                        "halt",
                    );
                    if kind == FailureKind::DataCorrupt {
                        self.corrupt_data_tolerated = Some((raw.response.span(), false));
                    }
                    Some(Response::Continue {
                        warning: warning_text(kind, raw.warning),
                    })
                }
            }
            "retry" => {
                let schedule = self.schedule(kind, table, &raw);
                let then = match raw
                    .then
                    .as_ref()
                    .map(|then| (then.get_ref().as_str(), then.span()))
                {
                    None | Some(("halt", _)) => {
                        if let Some(warning) = raw.warning.as_ref() {
                            self.report(
                                Some(warning.span()),
                                format!("`warning` is never shown: [failures.{kind}] halts once its retries are spent"),
                                Some("add then = \"continue\" to serve degraded with this warning, or remove `warning`".into()),
                            );
                        }
                        Exhausted::Halt {
                            exit_code: self.exit_code(raw.exit_code.as_ref())?,
                        }
                    }
                    Some(("continue", span)) => {
                        if kind == FailureKind::DataCorrupt {
                            self.corrupt_data_tolerated = Some((span, true));
                        }
                        self.forbid(
                            kind,
                            "exit_code",
                            raw.exit_code.as_ref().map(Spanned::span),
                            "halt",
                        );
                        Exhausted::Continue {
                            warning: warning_text(kind, raw.warning),
                        }
                    }
                    Some((other, span)) => {
                        self.report(
                            Some(span),
                            format!("unknown `then` value \"{other}\" in [failures.{kind}]"),
                            Some(r#"once retries are spent an instance can only "halt" or "continue""#.into()),
                        );
                        return None;
                    }
                };
                Some(Response::Retry {
                    schedule: schedule?,
                    then,
                })
            }
            other => {
                let hint = did_you_mean(other, &["halt", "continue", "retry"], "the responses");
                self.report(
                    Some(raw.response.span()),
                    format!("unknown response \"{other}\" in [failures.{kind}]"),
                    Some(hint),
                );
                None
            }
        }
    }

    /// Reports `key` when it is set but only means something for `meaningful_for`.
    fn forbid(
        &mut self,
        kind: FailureKind,
        key: &str,
        span: Option<std::ops::Range<usize>>,
        meaningful_for: &str,
    ) {
        if let Some(span) = span {
            self.report(
                Some(span),
                format!("`{key}` only applies when [failures.{kind}] ends in \"{meaningful_for}\""),
                Some(format!("remove `{key}`")),
            );
        }
    }

    fn schedule(
        &mut self,
        kind: FailureKind,
        table: std::ops::Range<usize>,
        raw: &RawFailure,
    ) -> Option<RetrySchedule> {
        let attempts = self.required(kind, &table, "attempts", raw.attempts.as_ref(), "attempts = 3").and_then(|value| {
            let attempts = self.integer(value)?;
            if attempts < 1 || attempts > i64::from(MAX_RETRY_ATTEMPTS) {
                self.report(
                    Some(value.span()),
                    format!("retry needs between 1 and {MAX_RETRY_ATTEMPTS} attempts, found {attempts}"),
                    Some(r#"set attempts to 1 or more; to give up at once, use response = "halt" or "continue""#.into()),
                );
                return None;
            }
            u32::try_from(attempts).ok()
        });
        let initial_delay = self
            .required(
                kind,
                &table,
                "initial_delay",
                raw.initial_delay.as_ref(),
                r#"initial_delay = "1s""#,
            )
            .and_then(|value| self.duration(value, MIN_RETRY_DELAY, MAX_RETRY_DELAY));
        let multiplier = match raw.multiplier.as_ref() {
            None => Some(Decimal::TWO),
            Some(value) => self
                .decimal(value, r#"multiplier = "2""#)
                .and_then(|multiplier| {
                    if multiplier < Decimal::ONE {
                        self.report(
                            Some(value.span()),
                            format!("multiplier must be at least 1, found {multiplier}"),
                            Some(
                                r#"use "1" for a constant delay or "2" to double it each time"#
                                    .into(),
                            ),
                        );
                        return None;
                    }
                    Some(multiplier)
                }),
        };
        let max_delay = match raw.max_delay.as_ref() {
            None => initial_delay.map(|initial| initial.max(Duration::from_secs(30))),
            Some(value) => self
                .duration(value, MIN_RETRY_DELAY, MAX_RETRY_DELAY)
                .and_then(|max_delay| {
                    let initial = initial_delay?;
                    if max_delay < initial {
                        self.report(
                            Some(value.span()),
                            format!(
                                "max_delay ({}) is below initial_delay ({})",
                                humantime::format_duration(max_delay),
                                humantime::format_duration(initial)
                            ),
                            Some("raise max_delay to at least initial_delay".into()),
                        );
                        return None;
                    }
                    Some(max_delay)
                }),
        };
        let jitter = match raw.jitter.as_ref() {
            None => Some(Decimal::ZERO),
            Some(value) => self.decimal(value, r#"jitter = "0.2""#).and_then(|jitter| {
                if jitter < Decimal::ZERO || jitter > Decimal::ONE {
                    self.report(
                        Some(value.span()),
                        format!("jitter is a fraction between 0 and 1, found {jitter}"),
                        Some(
                            r#"for example jitter = "0.2" spreads each wait over its last 20%"#
                                .into(),
                        ),
                    );
                    return None;
                }
                Some(jitter)
            }),
        };
        Some(RetrySchedule {
            attempts: attempts?,
            initial_delay: initial_delay?,
            multiplier: multiplier?,
            max_delay: max_delay?,
            jitter: jitter?,
        })
    }

    fn required<'v>(
        &mut self,
        kind: FailureKind,
        table: &std::ops::Range<usize>,
        key: &str,
        value: Option<&'v Value>,
        example: &str,
    ) -> Option<&'v Value> {
        if value.is_none() {
            self.report(
                Some(table.clone()),
                format!("[failures.{kind}] retries but does not set `{key}`"),
                Some(format!("add {example} to [failures.{kind}]")),
            );
        }
        value
    }

    fn exit_code(&mut self, value: Option<&Value>) -> Option<u8> {
        let Some(value) = value else { return Some(1) };
        let code = self.integer(value)?;
        match u8::try_from(code) {
            Ok(code) if super::RESERVED_EXIT_CODES.contains(&code) => {
                self.report(
                    Some(value.span()),
                    format!("exit_code {code} is one of vigil's own exit codes (2 to 7, and 130)"),
                    Some(
                        "2 to 7 tell a bad command line, an invalid file, a run-time failure, a degraded \
                         `recover --check`, an instance id held elsewhere and a spent restart budget apart, \
                         and 130 a stop forced by a second signal; use 1, or 8 to 255 but 130"
                            .into(),
                    ),
                );
                None
            }
            Ok(code) if code >= 1 => Some(code),
            _ => {
                let hint = match code {
                    0 => "0 means success to supervisors; a halt must exit non-zero",
                    _ => "process exit codes run from 0 to 255, and a halt must not use 0",
                };
                self.report(
                    Some(value.span()),
                    format!("exit_code must be 1, or 8 to 255 but 130, found {code}"),
                    Some(hint.into()),
                );
                None
            }
        }
    }

    fn integer(&mut self, value: &Value) -> Option<i64> {
        if let toml::Value::Integer(number) = value.get_ref() {
            return Some(*number);
        }
        self.report(
            Some(value.span()),
            format!(
                "expected a whole number, found {}",
                describe(value.get_ref())
            ),
            Some("write the number without quotes, for example 3".into()),
        );
        None
    }

    fn duration(&mut self, value: &Value, min: Duration, max: Duration) -> Option<Duration> {
        let toml::Value::String(text) = value.get_ref() else {
            self.report(
                Some(value.span()),
                format!(
                    "expected a duration string, found {}",
                    describe(value.get_ref())
                ),
                Some(
                    r#"durations are quoted with a unit, for example "500ms", "1s", "30s" or "1h""#
                        .into(),
                ),
            );
            return None;
        };
        let duration = match humantime::parse_duration(text) {
            Ok(duration) => duration,
            Err(error) => {
                self.report(
                    Some(value.span()),
                    format!("\"{text}\" is not a duration: {error}"),
                    Some(
                        r#"durations have a unit, for example "500ms", "1s", "30s" or "1h""#.into(),
                    ),
                );
                return None;
            }
        };
        // Counted in whole milliseconds; a finer part is rounded half away from zero.
        let millis = duration.as_nanos().saturating_add(500_000) / 1_000_000;
        let duration = Duration::from_millis(u64::try_from(millis).unwrap_or(u64::MAX));
        if duration < min || duration > max {
            let (bound, side) = match duration < min {
                true => (min, "or more"),
                false => (max, "or less"),
            };
            self.report(
                Some(value.span()),
                format!(
                    "duration \"{text}\" is out of range: it must be between {} and {}",
                    humantime::format_duration(min),
                    humantime::format_duration(max)
                ),
                Some(format!(
                    "set it to \"{}\" {side}",
                    humantime::format_duration(bound)
                )),
            );
            return None;
        }
        Some(duration)
    }

    fn decimal(&mut self, value: &Value, example: &str) -> Option<Decimal> {
        let toml::Value::String(text) = value.get_ref() else {
            self.report(
                Some(value.span()),
                format!(
                    "expected a decimal string, found {}",
                    describe(value.get_ref())
                ),
                Some(format!(
                    "decimals are quoted so they stay exact, for example {example}"
                )),
            );
            return None;
        };
        match Decimal::from_str(text.trim()) {
            Ok(decimal) => Some(decimal),
            Err(error) => {
                self.report(
                    Some(value.span()),
                    format!("\"{text}\" is not a decimal number: {error}"),
                    Some(format!(
                        "write digits with an optional point, for example {example}"
                    )),
                );
                None
            }
        }
    }

    fn recovery(
        &mut self,
        raw: Option<RawRecovery>,
        base: Option<&Policy>,
    ) -> Option<RecoverySettings> {
        let fallback = base.map_or_else(
            || RecoverySettings {
                tolerance: Decimal::new(1, 2),
                snapshot_max_age: super::DEFAULT_SNAPSHOT_MAX_AGE,
            },
            |base| base.recovery.clone(),
        );
        let (tolerance, max_age) =
            raw.map_or((None, None), |raw| (raw.tolerance, raw.snapshot_max_age));
        let snapshot_max_age = match max_age {
            None => Some(fallback.snapshot_max_age),
            Some(value) => self.duration(
                &value,
                super::MIN_SNAPSHOT_MAX_AGE,
                super::MAX_SNAPSHOT_MAX_AGE,
            ),
        };
        let tolerance = match tolerance {
            None => Some(fallback.tolerance),
            Some(value) => self.tolerance(&value),
        };
        Some(RecoverySettings {
            tolerance: tolerance?,
            snapshot_max_age: snapshot_max_age?,
        })
    }

    fn tolerance(&mut self, value: &Value) -> Option<Decimal> {
        let tolerance = self.decimal(value, r#"tolerance = "0.01""#)?;
        if tolerance < Decimal::ZERO {
            self.report(
                Some(value.span()),
                format!("tolerance cannot be negative, found {tolerance}"),
                Some(
                    r#"use "0" to require exact equality, or a small amount such as "0.01""#.into(),
                ),
            );
            return None;
        }
        Some(tolerance)
    }

    fn degraded(
        &mut self,
        raw: BTreeMap<Spanned<String>, Spanned<Vec<Spanned<String>>>>,
        base: Option<&Policy>,
    ) -> [SignalSet; 6] {
        let mut accepts = base.map_or([SignalSet::NONE; 6], |base| base.degraded_accepts);
        for (name, signals) in raw {
            let Some(kind) = self.failure_kind(&name) else {
                continue;
            };
            let mut set = SignalSet::NONE;
            for signal in signals.into_inner() {
                match SignalType::parse(signal.get_ref()) {
                    Some(parsed) => set = set.with(parsed),
                    None => {
                        let known = SignalType::ALL.map(SignalType::as_str);
                        let hint = did_you_mean(signal.get_ref(), &known, "the signal types");
                        self.report(
                            Some(signal.span()),
                            format!(
                                "unknown signal type \"{}\" in degraded.{kind}",
                                signal.get_ref()
                            ),
                            Some(hint),
                        );
                    }
                }
            }
            accepts[kind.index()] = set;
        }
        accepts
    }

    fn ha(&mut self, raw: Option<RawHa>, base: Option<&Policy>) -> Option<HaTimings> {
        let fallback = base.map_or(
            HaTimings {
                heartbeat_interval: Duration::from_secs(5),
                instance_stale_after: Duration::from_secs(15),
                leader_lease: Duration::from_secs(15),
                signal_lock_ttl: Duration::from_secs(3),
                dedup_window: Duration::from_secs(24 * 3600),
                leader_task_interval: Duration::from_secs(60),
            },
            |base| base.ha.clone(),
        );
        let Some(raw) = raw else {
            return Some(fallback);
        };
        let (min, max) = (MIN_HA_TIMING, MAX_HA_TIMING);
        let mut field = |value: Option<Value>, fallback: Duration| match value {
            None => Some((fallback, None)),
            Some(value) => self
                .duration(&value, min, max)
                .map(|duration| (duration, Some(value.span()))),
        };
        let heartbeat = field(raw.heartbeat_interval, fallback.heartbeat_interval);
        let stale = field(raw.instance_stale_after, fallback.instance_stale_after);
        let lease = field(raw.leader_lease, fallback.leader_lease);
        let lock = field(raw.signal_lock_ttl, fallback.signal_lock_ttl);
        let dedup = field(raw.dedup_window, fallback.dedup_window);
        let tasks = field(raw.leader_task_interval, fallback.leader_task_interval);
        let (heartbeat, stale, lease, lock, dedup, tasks) =
            (heartbeat?, stale?, lease?, lock?, dedup?, tasks?);
        // A heartbeat may be missed once without the instance being declared gone.
        if stale.0 < heartbeat.0 * HEARTBEATS_BEFORE_STALE {
            self.report(
                stale.1.or(heartbeat.1),
                format!(
                    "instance_stale_after ({}) must be at least twice heartbeat_interval ({})",
                    humantime::format_duration(stale.0),
                    humantime::format_duration(heartbeat.0)
                ),
                Some("otherwise one late heartbeat declares a healthy instance gone".into()),
            );
            return None;
        }
        self.warn_lock_outlasts_signals(lock.0, lock.1.clone());
        self.warn_lease_outlasts_heartbeat(
            (lease.0, lease.1.clone()),
            (heartbeat.0, heartbeat.1.clone()),
        );
        Some(HaTimings {
            heartbeat_interval: heartbeat.0,
            instance_stale_after: stale.0,
            leader_lease: lease.0,
            signal_lock_ttl: lock.0,
            dedup_window: dedup.0,
            leader_task_interval: tasks.0,
        })
    }

    /// Warns when a signal's instrument lock can lapse while the signal still trades: it is
    /// held through the broker and the signal's transaction, and a transaction of an alert
    /// drained from the intake journal may take [`DRAIN_STORE_DEADLINE`], the longest any
    /// signal's is allowed. Each signal still applies once (the database sees to that), so
    /// the file works; the lock just stops keeping one instrument's signals apart.
    fn warn_lock_outlasts_signals(&mut self, ttl: Duration, span: Option<std::ops::Range<usize>>) {
        if ttl > DRAIN_STORE_DEADLINE {
            return;
        }
        let deadline = humantime::format_duration(DRAIN_STORE_DEADLINE);
        self.file.warn(
            span,
            format!(
                "signal_lock_ttl ({}) is not longer than a signal's transaction may take \
                 ({deadline} for an alert drained from the intake journal): the lock can lapse \
                 while its holder still trades, and another signal of the same instrument \
                 can then take it and trade alongside",
                humantime::format_duration(ttl)
            ),
            Some(format!(
                "set signal_lock_ttl above {deadline} plus the broker's time, for example \
                 \"3s\" as the shipped policies do; each signal still applies once, but signals \
                 of one instrument may interleave their orders and transactions"
            )),
        );
    }

    /// Warns when the leader lease is no longer than the heartbeat interval. Renewal never
    /// waits for a heartbeat (the pulse wakes every heartbeat and at least three times a
    /// lease), so the file works; but a leader that misses a single heartbeat, which
    /// `instance_stale_after` tolerates, has already lost its lease, and every instance asks
    /// for it more often than it heartbeats. The span is the lease's when the file sets it,
    /// else the heartbeat's.
    fn warn_lease_outlasts_heartbeat(
        &mut self,
        (lease, lease_span): (Duration, Option<std::ops::Range<usize>>),
        (heartbeat, heartbeat_span): (Duration, Option<std::ops::Range<usize>>),
    ) {
        if lease > heartbeat {
            return;
        }
        self.file.warn(
            lease_span.or(heartbeat_span),
            format!(
                "leader_lease ({}) is not longer than heartbeat_interval ({}): a leader that \
                 misses one heartbeat, which instance_stale_after tolerates, has already lost \
                 its lease, and every instance renews or asks for the lease every third of it, \
                 more often than it heartbeats",
                humantime::format_duration(lease),
                humantime::format_duration(heartbeat)
            ),
            Some(format!(
                "set leader_lease above heartbeat_interval; at three times heartbeat_interval \
                 ({}), as in the shipped policies, it is renewed at every heartbeat",
                humantime::format_duration(heartbeat.saturating_mul(3))
            )),
        );
    }

    /// Warns when the file makes corrupt data something to serve through: stored state that
    /// cannot be decoded stops being a reason to stop. The file works (the instance serves
    /// degraded, accepting what `[degraded]` allows), but on data known to be wrong.
    fn warn_corrupt_data_tolerated(
        &mut self,
        span: std::ops::Range<usize>,
        after_retries: bool,
        degraded_accepts: [SignalSet; 6],
    ) {
        let kind = FailureKind::DataCorrupt;
        let set = degraded_accepts[kind.index()];
        let when = if after_retries {
            ", once its retries are spent"
        } else {
            ""
        };
        let what = if set == SignalSet::NONE {
            "the instance stays up on data known to be corrupt, accepting nothing".to_string()
        } else {
            format!("the instance goes on applying {set} signals to data known to be corrupt")
        };
        let hint = if after_retries {
            "set then = \"halt\", as every shipped policy halts on data_corrupt, so that the \
             instance stops with its exit code and an operator reads the recovery receipt"
        } else {
            "set response = \"halt\", as every shipped policy does, so that the instance stops \
             with its exit code and an operator reads the recovery receipt"
        };
        self.file.warn(
            Some(span),
            format!(
                "[failures.{kind}] continues degraded on stored state that cannot be \
                 decoded{when}: {what}, instead of stopping for an operator to repair it"
            ),
            Some(hint.to_string()),
        );
    }

    fn signals(&mut self, raw: Option<RawSignals>, base: Option<&Policy>) -> Option<SignalAges> {
        let fallback = base.map_or(
            SignalAges {
                entry_max_age: Duration::from_secs(5 * 60),
                exit_max_age: Duration::from_secs(12 * 3600),
            },
            |base| base.signals.clone(),
        );
        let Some(raw) = raw else {
            return Some(fallback);
        };
        let mut field = |value: Option<Value>, fallback: Duration| match value {
            None => Some(fallback),
            Some(value) => self.duration(&value, MIN_SIGNAL_AGE, MAX_SIGNAL_AGE),
        };
        let entry_max_age = field(raw.entry_max_age, fallback.entry_max_age);
        let exit_max_age = field(raw.exit_max_age, fallback.exit_max_age);
        Some(SignalAges {
            entry_max_age: entry_max_age?,
            exit_max_age: exit_max_age?,
        })
    }

    fn restarts(
        &mut self,
        raw: Option<RawRestarts>,
        base: Option<&Policy>,
    ) -> Option<RestartBudget> {
        let fallback = base.map_or(
            RestartBudget {
                max_restarts: 10,
                window: Duration::from_secs(3600),
            },
            |base| base.restarts.clone(),
        );
        let Some(raw) = raw else {
            return Some(fallback);
        };
        let max_restarts = match raw.max {
            None => Some(fallback.max_restarts),
            Some(value) => self
                .integer(&value)
                .and_then(|max| match u32::try_from(max) {
                    Ok(max) if max >= 1 => Some(max),
                    _ => {
                        self.report(
                            Some(value.span()),
                            format!("restarts.max must be a positive whole number, found {max}"),
                            Some("allow at least one restart, for example max = 10".into()),
                        );
                        None
                    }
                }),
        };
        let window = match raw.window {
            None => Some(fallback.window),
            Some(value) => self.duration(&value, MIN_RESTART_WINDOW, MAX_RESTART_WINDOW),
        };
        Some(RestartBudget {
            max_restarts: max_restarts?,
            window: window?,
        })
    }
}

fn warning_text(kind: FailureKind, warning: Option<Spanned<String>>) -> String {
    warning.map_or_else(
        || format!("{} tolerated; serving degraded", kind.code()),
        Spanned::into_inner,
    )
}

fn describe(value: &toml::Value) -> String {
    match value {
        toml::Value::String(text) => format!("the string \"{text}\""),
        toml::Value::Integer(number) => format!("the number {number}"),
        toml::Value::Float(number) => format!("the number {number}"),
        toml::Value::Boolean(flag) => format!("the boolean {flag}"),
        toml::Value::Datetime(datetime) => format!("the date {datetime}"),
        toml::Value::Array(_) => "a list".to_string(),
        toml::Value::Table(_) => "a table".to_string(),
    }
}
