//! Policy files: how an instance answers each kind of failure, what it still accepts while
//! degraded, and the timings it coordinates with. Parsing and validation are pure
//! ([`Policy::parse`]); [`Policy::load`] is the one function that reads a file.
//!
//! A policy is parsed from TOML into a raw, span-carrying form ([`raw`]), then validated into
//! [`Policy`], whose values are always usable: a retry has at least one attempt, a maximum
//! delay is never below the initial delay, and so on.

mod raw;

use crate::diagnostic::{Diagnostic, Diagnostics, ReadText};
use crate::vocabulary::{FailureKind, SignalSet};
use rust_decimal::Decimal;
use std::path::Path;
use std::time::Duration;

/// The most retry attempts a policy may ask for. A longer schedule is an outage, and the
/// policy should say `continue` or `halt` instead of retrying for ever.
pub const MAX_RETRY_ATTEMPTS: u32 = 100;

/// The longest single retry delay a policy may ask for.
pub const MAX_RETRY_DELAY: Duration = Duration::from_secs(3600);

/// The shortest retry delay: a retry needs at least a moment for anything to change.
pub const MIN_RETRY_DELAY: Duration = Duration::from_millis(1);

/// The shortest HA timing (heartbeat, lease, lock, dedup window): anything shorter turns
/// coordination into a busy loop against Redis and the database.
pub const MIN_HA_TIMING: Duration = Duration::from_millis(100);

/// The longest HA timing: a week. Longer leases or locks would outlive any outage worth
/// waiting for.
pub const MAX_HA_TIMING: Duration = Duration::from_secs(7 * 24 * 3600);

/// The shortest `[signals]` max age: TradingView's own resends span about 15 s.
pub const MIN_SIGNAL_AGE: Duration = Duration::from_secs(30);

/// The longest `[signals]` max age.
pub const MAX_SIGNAL_AGE: Duration = Duration::from_secs(7 * 24 * 3600);

/// An instance is declared gone only after this many heartbeat intervals without one, so a
/// single late heartbeat never declares a healthy instance gone.
pub const HEARTBEATS_BEFORE_STALE: u32 = 2;

/// The shortest restart window.
pub const MIN_RESTART_WINDOW: Duration = Duration::from_secs(1);

/// The default `[recovery] snapshot_max_age`: a day.
pub const DEFAULT_SNAPSHOT_MAX_AGE: Duration = Duration::from_secs(24 * 3600);

/// The shortest `[recovery] snapshot_max_age`: snapshots are written every 5 minutes.
pub const MIN_SNAPSHOT_MAX_AGE: Duration = Duration::from_secs(600);

/// The longest `[recovery] snapshot_max_age`: a year.
pub const MAX_SNAPSHOT_MAX_AGE: Duration = Duration::from_secs(366 * 24 * 3600);

/// The longest restart window: a week.
pub const MAX_RESTART_WINDOW: Duration = Duration::from_secs(7 * 24 * 3600);

/// The default policy, shipped as `policies/default.toml` and compiled in so that an
/// instance started with no policy file behaves exactly as that file says.
pub const DEFAULT_POLICY_TOML: &str = include_str!("../../policies/default.toml");

/// A validated policy.
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    /// Where the policy came from, for logs and reports.
    pub name: String,
    /// The response to each failure kind, indexed by [`FailureKind::index`].
    pub failures: [Response; 6],
    /// Settings for crash recovery.
    pub recovery: RecoverySettings,
    /// What a degraded instance still accepts, per degraded reason, indexed by
    /// [`FailureKind::index`]. A reason not named in the file accepts nothing.
    pub degraded_accepts: [SignalSet; 6],
    /// Timings for running several instances together.
    pub ha: HaTimings,
    /// How often the instance may be restarted before the supervisor should give up.
    pub restarts: RestartBudget,
    /// How old an alert may be when it is applied (`[signals]`).
    pub signals: SignalAges,
    /// Settings that work but do not do what they seem to say; `vigil check` prints them.
    pub warnings: Vec<Diagnostic>,
}

/// The exit codes vigil's command line uses for itself (2: a bad command line, 3: an invalid
/// file, 4: a run-time failure, 5: `recover --check` would end degraded, 6: another live
/// process holds the instance id, 7: the restart budget is spent, 130: a stop forced by a
/// second stop signal), which a halt may not use, so a supervisor can tell a policy's halt
/// from them.
pub const RESERVED_EXIT_CODES: [u8; 7] = [2, 3, 4, 5, 6, 7, crate::shutdown::EXIT_FORCED];

impl Response {
    /// The exit code it halts with, at once or once its retries are spent; `None` when it
    /// never halts (it continues degraded).
    pub fn halt_code(&self) -> Option<u8> {
        match self {
            Response::Halt { exit_code }
            | Response::Retry {
                then: Exhausted::Halt { exit_code },
                ..
            } => Some(*exit_code),
            _ => None,
        }
    }
}

/// How an instance answers one kind of failure.
#[derive(Debug, Clone, PartialEq)]
pub enum Response {
    /// Stop the instance: it becomes `crashed` and the process exits with `exit_code`.
    Halt {
        /// The process exit code, so supervisors can tell failures apart.
        exit_code: u8,
    },
    /// Keep serving in the `degraded` state and log `warning`.
    Continue {
        /// The warning logged, and shown by `/ready`, while the failure lasts.
        warning: String,
    },
    /// Try again on a backoff schedule; once the attempts are spent, do `then`.
    Retry {
        /// When to try again.
        schedule: RetrySchedule,
        /// What to do once every attempt has failed.
        then: Exhausted,
    },
}

/// What a retry does once its attempts are spent.
#[derive(Debug, Clone, PartialEq)]
pub enum Exhausted {
    /// Stop with this exit code.
    Halt {
        /// The process exit code.
        exit_code: u8,
    },
    /// Serve degraded and log this warning.
    Continue {
        /// The warning logged while the failure lasts.
        warning: String,
    },
}

/// An exponential backoff schedule.
#[derive(Debug, Clone, PartialEq)]
pub struct RetrySchedule {
    /// How many times to try again after the first failure (1..=[`MAX_RETRY_ATTEMPTS`]).
    pub attempts: u32,
    /// The wait before the first retry.
    pub initial_delay: Duration,
    /// Each wait is the previous one times this (at least 1).
    pub multiplier: Decimal,
    /// No wait is longer than this (at least `initial_delay`).
    pub max_delay: Duration,
    /// Spread of each wait as a fraction in 0..=1: a wait `d` becomes a uniform pick in
    /// `d × (1 − jitter) ..= d`, so that instances restarted together do not retry together.
    pub jitter: Decimal,
}

impl RetrySchedule {
    /// The wait before retry `attempt` (1-based): the nominal delay shortened by
    /// `jitter × unit`, where `unit` in `0..1` is the random draw the driver supplies.
    /// Rounded to whole milliseconds, half away from zero.
    pub fn jittered_delay(&self, attempt: u32, unit: Decimal) -> Duration {
        assert!(
            (Decimal::ZERO..Decimal::ONE).contains(&unit),
            "jitter unit {unit} is outside 0..1"
        );
        let nominal_ms = duration_ms(self.delay(attempt));
        let waited_ms = nominal_ms - nominal_ms * self.jitter * unit;
        Duration::from_millis(u64::try_from(round_half_away(waited_ms)).unwrap_or(0))
    }

    /// The nominal wait before retry `attempt` (1-based), before jitter.
    ///
    /// Computed in exact decimal milliseconds, so `1s × 2^n` never drifts.
    pub fn delay(&self, attempt: u32) -> Duration {
        assert!(attempt >= 1, "retry attempts are counted from 1");
        let max_ms = duration_ms(self.max_delay);
        let mut delay_ms = duration_ms(self.initial_delay);
        for _ in 1..attempt {
            if delay_ms >= max_ms {
                break;
            }
            delay_ms = delay_ms.checked_mul(self.multiplier).unwrap_or(max_ms);
        }
        let capped_ms = round_half_away(delay_ms.min(max_ms));
        Duration::from_millis(u64::try_from(capped_ms).unwrap_or(u64::MAX))
    }
}

fn duration_ms(duration: Duration) -> Decimal {
    Decimal::from(duration.as_millis())
}

fn round_half_away(ms: Decimal) -> Decimal {
    ms.round_dp_with_strategy(0, rust_decimal::RoundingStrategy::MidpointAwayFromZero)
}

/// Settings for crash recovery.
#[derive(Debug, Clone, PartialEq)]
pub struct RecoverySettings {
    /// The largest difference, in account currency, allowed between a stored total and the
    /// sum over open positions.
    pub tolerance: Decimal,
    /// How old the newest state snapshot may be before the receipt flags it.
    pub snapshot_max_age: Duration,
}

/// Timings for several instances sharing one database and one Redis.
#[derive(Debug, Clone, PartialEq)]
pub struct HaTimings {
    /// How often an instance refreshes its heartbeat.
    pub heartbeat_interval: Duration,
    /// An instance whose heartbeat is older than this is considered gone.
    pub instance_stale_after: Duration,
    /// How long a leader lease lasts unless renewed.
    pub leader_lease: Duration,
    /// How long a per-instrument signal lock lasts unless released.
    pub signal_lock_ttl: Duration,
    /// How long a signal fingerprint is remembered by the fast dedup layers.
    pub dedup_window: Duration,
    /// How often the leader snapshots statistics and checks the portfolio's consistency.
    pub leader_task_interval: Duration,
}

/// How old an alert may be, by its own timestamp, when it is applied; an older one is
/// recorded `expired` and trades nothing. Exits get longer: a stale entry opens risk, a stale
/// exit closes it.
#[derive(Debug, Clone, PartialEq)]
pub struct SignalAges {
    /// The oldest BASE_ENTRY or PYRAMID applied.
    pub entry_max_age: Duration,
    /// The oldest EXIT applied.
    pub exit_max_age: Duration,
}

impl SignalAges {
    /// The oldest alert of `kind` that is applied.
    pub fn max_age(&self, kind: crate::vocabulary::SignalType) -> Duration {
        match kind {
            crate::vocabulary::SignalType::Exit => self.exit_max_age,
            crate::vocabulary::SignalType::BaseEntry | crate::vocabulary::SignalType::Pyramid => {
                self.entry_max_age
            }
        }
    }
}

/// At most `max_restarts` restarts within `window`.
#[derive(Debug, Clone, PartialEq)]
pub struct RestartBudget {
    /// Restarts allowed in one window.
    pub max_restarts: u32,
    /// The sliding window the restarts are counted in.
    pub window: Duration,
}

/// Why a policy could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// The file could not be read.
    #[error("cannot read policy file {path}: {reason}")]
    Read {
        /// The file named by the user.
        path: String,
        /// The operating system's reason, shown in the message itself.
        reason: std::io::Error,
    },
    /// The file was read but is not a valid policy.
    #[error("{0}")]
    Invalid(Diagnostics),
}

impl Policy {
    /// Parses and validates policy text; `path` is used only to locate errors.
    ///
    /// Anything the file leaves out takes its value from the built-in default policy.
    pub fn parse(path: &Path, source: &str) -> Result<Policy, Diagnostics> {
        raw::parse(path, source, Some(&Policy::builtin_default()))
    }

    /// Reads and validates a policy file.
    pub fn load(path: &Path) -> Result<Policy, PolicyError> {
        let source = match crate::diagnostic::read_text(path) {
            Ok(source) => source,
            Err(ReadText::Io(reason)) => {
                return Err(PolicyError::Read {
                    path: path.display().to_string(),
                    reason,
                })
            }
            Err(ReadText::NotText(diagnostics)) => return Err(PolicyError::Invalid(diagnostics)),
        };
        Policy::parse(path, &source).map_err(PolicyError::Invalid)
    }

    /// The built-in policy, identical to `policies/default.toml`.
    pub fn builtin_default() -> Policy {
        match raw::parse(
            Path::new("policies/default.toml"),
            DEFAULT_POLICY_TOML,
            None,
        ) {
            Ok(policy) => policy,
            Err(diagnostics) => panic!("the compiled-in default policy is invalid:\n{diagnostics}"),
        }
    }

    /// The response to `kind`.
    pub fn response(&self, kind: FailureKind) -> &Response {
        &self.failures[kind.index()]
    }

    /// The exit code the policy halts `kind` with, at once or once its retries are spent;
    /// `None` when it never halts on it.
    pub fn halt_code(&self, kind: FailureKind) -> Option<u8> {
        self.response(kind).halt_code()
    }

    /// Whether the policy ever tolerates `kind` (continues degraded), at once or once its
    /// retries are spent.
    pub fn tolerates(&self, kind: FailureKind) -> bool {
        self.halt_code(kind).is_none()
    }

    /// What a degraded instance accepts while `reason` lasts.
    pub fn accepts_while(&self, reason: FailureKind) -> SignalSet {
        self.degraded_accepts[reason.index()]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schedule(multiplier: &str, max_delay_s: u64) -> RetrySchedule {
        RetrySchedule {
            attempts: 5,
            initial_delay: Duration::from_secs(1),
            multiplier: multiplier.parse().unwrap_or(Decimal::ONE),
            max_delay: Duration::from_secs(max_delay_s),
            jitter: Decimal::ZERO,
        }
    }

    #[test]
    fn delays_grow_and_cap() {
        let cases: &[(&str, u64, [u64; 5])] = &[
            ("2", 30, [1000, 2000, 4000, 8000, 16000]),
            ("2", 5, [1000, 2000, 4000, 5000, 5000]),
            ("1", 30, [1000, 1000, 1000, 1000, 1000]),
            ("1.5", 30, [1000, 1500, 2250, 3375, 5063]),
        ];
        for (multiplier, max_delay_s, expected_ms) in cases {
            let schedule = schedule(multiplier, *max_delay_s);
            let actual: Vec<u64> = (1..=5)
                .map(|n| schedule.delay(n).as_millis() as u64)
                .collect();
            assert_eq!(
                actual, expected_ms,
                "multiplier {multiplier}, max {max_delay_s}s"
            );
        }
    }

    #[test]
    fn jitter_shortens_within_bounds() {
        let mut schedule = schedule("2", 30);
        schedule.jitter = Decimal::new(2, 1);
        let cases: &[(&str, u64)] = &[
            ("0", 1000),
            ("0.5", 900),
            ("0.999", 800),
            ("0.0025", 1000),
            ("0.0075", 999),
        ];
        for (unit, expected_ms) in cases {
            let delay = schedule.jittered_delay(1, unit.parse().unwrap_or(Decimal::ZERO));
            assert_eq!(delay.as_millis() as u64, *expected_ms, "unit {unit}");
        }
    }

    #[test]
    fn the_longest_schedule_stays_capped() {
        let mut schedule = schedule("1000", 3600);
        schedule.attempts = MAX_RETRY_ATTEMPTS;
        assert_eq!(
            schedule.delay(MAX_RETRY_ATTEMPTS),
            Duration::from_secs(3600)
        );
        schedule.multiplier = Decimal::MAX;
        assert_eq!(
            schedule.delay(MAX_RETRY_ATTEMPTS),
            Duration::from_secs(3600)
        );
    }

    /// The warnings `source` draws, as `line:column message`.
    fn warnings(source: &str) -> Vec<String> {
        match Policy::parse(Path::new("p.toml"), source) {
            Ok(policy) => policy
                .warnings
                .iter()
                .map(|w| format!("{}:{} {}", w.line, w.column, w.message))
                .collect(),
            Err(diagnostics) => panic!("{source} is invalid:\n{diagnostics}"),
        }
    }

    #[test]
    fn a_signal_lock_must_outlast_the_longest_signal_transaction() {
        let ttl = |ms: u128| format!("[ha]\nsignal_lock_ttl = \"{ms}ms\"\n");
        let deadline = crate::intake::DRAIN_STORE_DEADLINE.as_millis();
        let at = warnings(&ttl(deadline));
        assert_eq!(at.len(), 1, "{at:?}");
        assert!(at[0].starts_with("2:19 signal_lock_ttl"), "{at:?}");
        assert!(warnings(&ttl(deadline + 1)).is_empty());
    }

    #[test]
    fn a_leader_lease_must_outlast_a_heartbeat() {
        let ha = |lease_ms: u64| {
            format!("[ha]\nheartbeat_interval = \"1s\"\nleader_lease = \"{lease_ms}ms\"\n")
        };
        let at = warnings(&ha(1000));
        assert_eq!(at.len(), 1, "{at:?}");
        assert!(at[0].starts_with("3:16 leader_lease (1s)"), "{at:?}");
        assert!(warnings(&ha(1001)).is_empty());
        // Only the heartbeat is written: the warning points at it.
        let at = warnings("[ha]\nheartbeat_interval = \"15s\"\ninstance_stale_after = \"30s\"\n");
        assert_eq!(at.len(), 1, "{at:?}");
        assert!(at[0].starts_with("2:22 leader_lease (15s)"), "{at:?}");
    }

    #[test]
    fn tolerating_corrupt_data_warns_and_halting_on_it_does_not() {
        let continues = warnings("[failures.data_corrupt]\nresponse = \"continue\"\n");
        assert_eq!(continues.len(), 1, "{continues:?}");
        assert!(continues[0].starts_with("2:12 [failures.data_corrupt] continues degraded on"));
        let retried = warnings(
            "[failures.data_corrupt]\nresponse = \"retry\"\nattempts = 1\n\
             initial_delay = \"1s\"\nthen = \"continue\"\n",
        );
        assert_eq!(retried.len(), 1, "{retried:?}");
        assert!(retried[0].starts_with("5:8 [failures.data_corrupt] continues degraded on stored state that cannot be decoded, once"));
        for halts in [
            "[failures.data_corrupt]\nresponse = \"halt\"\n",
            "[failures.data_corrupt]\nresponse = \"retry\"\nattempts = 1\ninitial_delay = \"1s\"\n",
            // Another kind may continue.
            "[failures.unexpected]\nresponse = \"continue\"\n",
        ] {
            assert!(warnings(halts).is_empty(), "{halts}");
        }
    }

    #[test]
    fn the_shipped_policies_draw_no_warning() {
        for name in ["default", "strict", "paper"] {
            let path = format!("{}/policies/{name}.toml", env!("CARGO_MANIFEST_DIR"));
            let policy = Policy::load(Path::new(&path)).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(policy.warnings, Vec::new(), "{name}");
        }
    }

    #[test]
    fn builtin_default_parses() {
        let policy = Policy::builtin_default();
        assert!(matches!(
            policy.response(FailureKind::DataCorrupt),
            Response::Halt { exit_code: 1 }
        ));
    }
}
