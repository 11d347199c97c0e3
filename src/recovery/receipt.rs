//! The recovery receipt: what was found, every check with its result, and how long it took.
//! It is logged, kept for `/ready` and `/status`, and printed by `vigil recover --check`.

use super::State;
use crate::domain::{counted, Money, PositionStatus};
use crate::vocabulary::FailureKind;
use rust_decimal::Decimal;
use serde::Serialize;
use std::collections::BTreeSet;
use std::fmt;

/// How many of what recovery found.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
pub struct Counts {
    /// Open positions.
    pub open_positions: usize,
    /// Open base positions.
    pub base_positions: usize,
    /// Open pyramids.
    pub pyramids: usize,
    /// Instruments with an open position.
    pub instruments: usize,
    /// Pyramiding state rows.
    pub pyramiding_states: usize,
    /// Closed positions.
    pub closed_positions: usize,
}

impl Counts {
    /// Counts taken from rows that did not all decode: every row not marked closed counts
    /// as open.
    pub(super) fn of_rows(rows: &crate::store::RecoveryRows) -> Counts {
        let closed = PositionStatus::Closed.as_str();
        let open: Vec<_> = rows
            .positions
            .iter()
            .filter(|row| row.status.as_deref() != Some(closed))
            .collect();
        let base_positions = open.iter().filter(|row| row.is_base_position).count();
        Counts {
            open_positions: open.len(),
            base_positions,
            pyramids: open.len() - base_positions,
            instruments: open
                .iter()
                .map(|row| row.instrument.as_str())
                .collect::<BTreeSet<_>>()
                .len(),
            pyramiding_states: rows.pyramiding.len(),
            closed_positions: rows.positions.len() - open.len(),
        }
    }

    pub(super) fn of(state: &State) -> Counts {
        let open: Vec<_> = state
            .positions
            .iter()
            .filter(|p| p.status == PositionStatus::Open)
            .collect();
        let base_positions = open.iter().filter(|p| p.is_base_position).count();
        Counts {
            open_positions: open.len(),
            base_positions,
            pyramids: open.len() - base_positions,
            instruments: open
                .iter()
                .map(|p| p.instrument.as_str())
                .collect::<BTreeSet<_>>()
                .len(),
            pyramiding_states: state.pyramiding.len(),
            closed_positions: state.closed.count,
        }
    }
}

/// The name of the snapshot witness's check.
pub const WITNESS_CHECK: &str = "not behind the newest snapshot";

/// The newest valid snapshot, as recovery's witness of how far the stored state had come.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Witness {
    /// Its file.
    pub file: String,
    /// When it was written, RFC 3339.
    pub written_at: String,
    /// The portfolio version it holds.
    pub portfolio_version: i64,
    /// Newer snapshot files that did not read and were passed over.
    pub skipped: usize,
    /// How old it is, when that is longer than the policy's `[recovery] snapshot_max_age`
    /// (in whole seconds), with that bound: the receipt flags it.
    pub stale: Option<(u64, u64)>,
}

/// One check and its result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Check {
    /// What was checked.
    pub name: &'static str,
    /// Whether it held.
    pub passed: bool,
    /// The failure kind a failed check is answered with.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kind: Option<FailureKind>,
    /// The stored value, for sum checks.
    #[serde(
        skip_serializing_if = "Option::is_none",
        with = "rust_decimal::serde::str_option"
    )]
    pub expected: Option<Decimal>,
    /// The value recomputed from open positions, for sum checks.
    #[serde(
        skip_serializing_if = "Option::is_none",
        with = "rust_decimal::serde::str_option"
    )]
    pub actual: Option<Decimal>,
    /// `actual − expected`, in account currency, for sum checks.
    #[serde(
        skip_serializing_if = "Option::is_none",
        with = "rust_decimal::serde::str_option"
    )]
    pub difference: Option<Decimal>,
    /// The allowed difference, for sum checks.
    #[serde(
        skip_serializing_if = "Option::is_none",
        with = "rust_decimal::serde::str_option"
    )]
    pub tolerance: Option<Decimal>,
    /// What was found, in words.
    pub detail: String,
    /// Not run, for the reason in `detail`.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub skipped: bool,
    /// Passed, with something an operator should see in `detail` (a stale witness).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub warned: bool,
    /// What the stored value is compared with, for sum checks.
    #[serde(skip)]
    pub basis: Option<Basis>,
}

/// What a sum check compares a stored total with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Basis {
    /// The sum over open positions.
    OpenPositions,
    /// The initial capital plus the closed positions' realized P&L.
    ClosedTrades,
}

impl fmt::Display for Basis {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Basis::OpenPositions => "open positions sum to",
            Basis::ClosedTrades => "initial capital plus closed P&L is",
        })
    }
}

impl Check {
    pub(super) fn passed(name: &'static str) -> Check {
        Check {
            name,
            passed: true,
            kind: None,
            expected: None,
            actual: None,
            difference: None,
            tolerance: None,
            detail: String::new(),
            skipped: false,
            warned: false,
            basis: None,
        }
    }

    pub(super) fn skipped(name: &'static str, why: &str) -> Check {
        Check {
            detail: why.to_string(),
            skipped: true,
            warned: false,
            ..Check::passed(name)
        }
    }

    pub(super) fn failed(name: &'static str, kind: FailureKind, detail: String) -> Check {
        Check {
            name,
            passed: false,
            kind: Some(kind),
            expected: None,
            actual: None,
            difference: None,
            tolerance: None,
            detail,
            skipped: false,
            warned: false,
            basis: None,
        }
    }

    /// A stored total against what `basis` gives.
    pub(super) fn sum(
        name: &'static str,
        basis: Basis,
        stored: Decimal,
        summed: Decimal,
        tolerance: Decimal,
    ) -> Check {
        let difference = summed - stored;
        let passed = difference.abs() <= tolerance;
        let detail = if passed {
            String::new()
        } else {
            format!(
                "stored {} but {basis} {}: off by {}, tolerance {}",
                Money(stored),
                Money(summed),
                Money(difference),
                tolerance.normalize()
            )
        };
        Check {
            name,
            passed,
            kind: (!passed).then_some(FailureKind::ValidationFailed),
            expected: Some(stored),
            actual: Some(summed),
            difference: Some(difference),
            tolerance: Some(tolerance),
            detail,
            skipped: false,
            warned: false,
            basis: Some(basis),
        }
    }
}

/// The receipt's verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(tag = "verdict", rename_all = "snake_case")]
pub enum Verdict {
    /// Every check passed: the instance may serve.
    Clean,
    /// A check failed; the policy answers `kind`.
    Failed {
        /// The failure kind of the first failed check.
        kind: FailureKind,
    },
}

/// What recovery found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Receipt {
    /// Clean or failed.
    #[serde(flatten)]
    pub verdict: Verdict,
    /// How many of what.
    pub counts: Counts,
    /// The stored closed equity, when the portfolio decoded.
    #[serde(with = "rust_decimal::serde::str_option")]
    pub closed_equity: Option<Decimal>,
    /// Every check, in order.
    pub checks: Vec<Check>,
    /// Alerts in the intake journal not yet applied: they are drained, in alert order per
    /// instrument, before any newer alert of their instrument.
    pub queued_alerts: usize,
    /// Fetch, rebuild and validate, in milliseconds.
    pub duration_ms: u64,
}

impl Receipt {
    pub(super) fn new(
        counts: Counts,
        closed_equity: Option<Decimal>,
        checks: Vec<Check>,
        duration_ms: u64,
    ) -> Receipt {
        let verdict = match checks.iter().find_map(|check| check.kind) {
            Some(kind) => Verdict::Failed { kind },
            None => Verdict::Clean,
        };
        Receipt {
            verdict,
            counts,
            closed_equity,
            checks,
            queued_alerts: 0,
            duration_ms,
        }
    }

    /// Adds what the intake journal holds: `queued` alerts not yet applied, and the check
    /// that every record could be read (`problem` says why not: corrupt data, under the
    /// policy).
    pub fn with_journal(mut self, queued: usize, problem: Option<&str>) -> Receipt {
        self.queued_alerts = queued;
        self.checks.push(match problem {
            None => Check::passed("intake journal readable"),
            Some(problem) => Check::failed(
                "intake journal readable",
                FailureKind::DataCorrupt,
                problem.to_string(),
            ),
        });
        if self.verdict == Verdict::Clean && problem.is_some() {
            self.verdict = Verdict::Failed {
                kind: FailureKind::DataCorrupt,
            };
        }
        self
    }

    /// Adds the snapshot witness: the stored portfolio's version (`stored`, `None` for a
    /// database with no portfolio row) must not be behind the newest valid snapshot's. A
    /// database behind it lost history (an old backup restored, a WAL lost after `kill -9`):
    /// corrupt data, under the policy. With no snapshot there is no witness and no check.
    pub fn with_witness(mut self, stored: Option<i64>, witness: Option<&Witness>) -> Receipt {
        let Some(witness) = witness else {
            return self;
        };
        let stored = stored.unwrap_or(0);
        let skipped = match witness.skipped {
            0 => String::new(),
            n => format!(
                "; {} that do not read were skipped",
                counted(n, "newer snapshot")
            ),
        };
        let check = if stored >= witness.portfolio_version {
            let mut check = Check::passed(WITNESS_CHECK);
            check.detail = format!(
                "the portfolio is at version {stored}, not behind {} (version {}, written {}){skipped}",
                witness.file, witness.portfolio_version, witness.written_at
            );
            if let Some((age_s, max_age_s)) = witness.stale {
                check.warned = true;
                check.detail.push_str(&format!(
                    "; the snapshot is {} old, older than the policy's [recovery] snapshot_max_age \
                     of {}, so it witnesses little: write one with `vigil snapshot`",
                    humantime::format_duration(std::time::Duration::from_secs(age_s)),
                    humantime::format_duration(std::time::Duration::from_secs(max_age_s))
                ));
            }
            check
        } else {
            Check::failed(
                WITNESS_CHECK,
                FailureKind::DataCorrupt,
                format!(
                    "the portfolio is at version {stored}, behind {} (version {}, written {}){skipped}: \
                     the database lost history (an old backup restored, or a WAL lost after a crash); \
                     restore the newest backup, or load the snapshot into an empty database with \
                     `vigil restore {}`; if the database is right, move the snapshot aside",
                    witness.file, witness.portfolio_version, witness.written_at, witness.file
                ),
            )
        };
        self.checks.push(check);
        if self.verdict == Verdict::Clean && !self.checks.last().is_some_and(|c| c.passed) {
            self.verdict = Verdict::Failed {
                kind: FailureKind::DataCorrupt,
            };
        }
        self
    }

    /// The failure the policy must answer, if any.
    pub fn failure(&self) -> Option<FailureKind> {
        match self.verdict {
            Verdict::Clean => None,
            Verdict::Failed { kind } => Some(kind),
        }
    }

    /// One line for the log.
    pub fn summary(&self) -> String {
        let failed: Vec<&str> = self
            .checks
            .iter()
            .filter(|c| !c.passed)
            .map(|c| c.name)
            .collect();
        let verdict = match self.verdict {
            Verdict::Clean => "clean".to_string(),
            Verdict::Failed { kind } => format!("{} ({})", kind.code(), failed.join(", ")),
        };
        format!(
            "recovery receipt: {verdict}; {} ({} base, {}) on {}; {} of {} checks passed; {} ms",
            counted(self.counts.open_positions, "open position"),
            self.counts.base_positions,
            counted(self.counts.pyramids, "pyramid"),
            counted(self.counts.instruments, "instrument"),
            self.checks.len() - failed.len(),
            self.checks.len(),
            self.duration_ms
        )
    }
}

impl fmt::Display for Receipt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.verdict {
            Verdict::Clean => writeln!(f, "recovery receipt: clean")?,
            Verdict::Failed { kind } => writeln!(f, "recovery receipt: FAILED, {}", kind.code())?,
        }
        let counts = &self.counts;
        writeln!(
            f,
            "  open positions: {} ({} base, {}) on {}; {}",
            counts.open_positions,
            counts.base_positions,
            counted(counts.pyramids, "pyramid"),
            counted(counts.instruments, "instrument"),
            counted(counts.pyramiding_states, "pyramiding state")
        )?;
        if let Some(equity) = self.closed_equity {
            writeln!(
                f,
                "  closed equity: {} after {}",
                Money(equity),
                counted(counts.closed_positions, "closed position")
            )?;
        }
        if self.queued_alerts > 0 {
            writeln!(
                f,
                "  queued alerts: {} in the intake journal, applied before newer alerts of their instruments",
                self.queued_alerts
            )?;
        }
        writeln!(f, "  checks:")?;
        for check in &self.checks {
            let mark = match (check.passed, check.skipped) {
                (_, true) => "skip",
                (true, false) if check.warned => "warn",
                (true, false) => "ok  ",
                (false, false) => "FAIL",
            };
            write!(f, "    [{mark}] {}", check.name)?;
            match (
                check.expected,
                check.actual,
                check.difference,
                check.tolerance,
            ) {
                (Some(expected), Some(actual), Some(difference), Some(tolerance)) => {
                    let basis = check.basis.unwrap_or(Basis::OpenPositions);
                    write!(
                        f,
                        ": stored {}, {basis} {}, difference {}",
                        Money(expected),
                        Money(actual),
                        Money(difference)
                    )?;
                    if !check.passed {
                        write!(f, ", more than the tolerance of {}", tolerance.normalize())?;
                    }
                }
                _ if !check.passed || check.skipped || check.warned => {
                    write!(f, ": {}", check.detail)?
                }
                _ => {}
            }
            writeln!(f)?;
        }
        write!(f, "  duration: {} ms", self.duration_ms)
    }
}
