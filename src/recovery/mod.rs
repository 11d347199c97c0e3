//! Crash recovery, the pure part: decode stored rows into positions, portfolio totals and
//! pyramiding state, check that they agree, and write a [`Receipt`]. No I/O and no clock:
//! the caller reads the rows and measures the duration.

mod receipt;

pub use receipt::{Basis, Check, Counts, Receipt, Verdict, Witness, WITNESS_CHECK};

use crate::domain::{checked_sum, Instrument, Portfolio, Position, PositionStatus, Pyramiding};
use crate::store::codec::{decode_portfolio, decode_position, decode_pyramiding, Problems};
use crate::store::{RecoveryRows, Schema};
use crate::vocabulary::FailureKind;
use rust_decimal::Decimal;
use std::collections::{BTreeMap, HashMap, HashSet};

/// The in-memory state recovery rebuilds.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct State {
    /// Open positions, by id order.
    pub positions: Vec<Position>,
    /// Portfolio totals; a fresh, empty portfolio when none was ever stored.
    pub portfolio: Option<Portfolio>,
    /// Pyramiding state per instrument.
    pub pyramiding: Vec<Pyramiding>,
    /// The closed positions: how many, and their realized P&L added up, which the closed
    /// equity must equal on top of the initial capital.
    pub closed: ClosedTrades,
}

/// What the closed positions add up to.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ClosedTrades {
    /// How many positions are closed.
    pub count: usize,
    /// Their realized P&L added up; `None` when the sum does not fit in a decimal.
    pub realized_pnl: Option<Decimal>,
}

/// What recovery holds the stored rows to, from the policy and the deployment file.
#[derive(Debug, Clone, Copy)]
pub struct Terms<'a> {
    /// The policy's consistency tolerance.
    pub tolerance: Decimal,
    /// The deployment's instrument table; checks that need it are skipped when it is empty.
    pub instruments: &'a BTreeMap<String, Instrument>,
    /// The deployment's initial capital; its check is skipped when it is not set.
    pub initial_capital: Option<Decimal>,
}

/// Runs recovery on `rows`: decode, rebuild, validate against `terms`. The receipt's
/// duration is the caller's to set.
pub fn recover(rows: RecoveryRows, terms: &Terms<'_>) -> (Option<State>, Receipt) {
    let duration_ms = 0;
    let mut problems = Problems::default();
    let counted = Counts::of_rows(&rows);
    let schema = rows.schema.as_ref().map(schema_check);
    let mut state = decode(rows, &mut problems);
    // Backends return rows in their own order; receipts and listings must not depend on it.
    state.positions.sort_unstable_by(|a, b| a.id.cmp(&b.id));
    if !problems.is_empty() {
        let mut checks: Vec<Check> = schema.into_iter().collect();
        checks.push(into_check(
            problems,
            "stored values decode",
            FailureKind::DataCorrupt,
        ));
        return (None, Receipt::new(counted, None, checks, duration_ms));
    }
    let mut checks: Vec<Check> = schema.into_iter().collect();
    checks.extend(validate(&state, terms));
    let counts = Counts::of(&state);
    let closed_equity = state
        .portfolio
        .as_ref()
        .map(|portfolio| portfolio.closed_equity);
    (
        Some(state),
        Receipt::new(counts, closed_equity, checks, duration_ms),
    )
}

fn decode(rows: RecoveryRows, problems: &mut Problems) -> State {
    let portfolio = rows
        .portfolio
        .as_ref()
        .map(|row| decode_portfolio(row, problems));
    let mut positions = Vec::new();
    let mut realized = Vec::new();
    for row in rows.positions {
        let (position, realized_pnl) = decode_position(row, problems);
        match realized_pnl {
            Some(pnl) => realized.push(pnl),
            None => positions.push(position),
        }
    }
    if portfolio.is_none() && !positions.is_empty() {
        problems.push("open positions exist but no portfolio state is stored".to_string());
    }
    let pyramiding = rows
        .pyramiding
        .iter()
        .map(|row| decode_pyramiding(row, problems))
        .collect();
    State {
        positions,
        portfolio,
        pyramiding,
        closed: ClosedTrades {
            count: realized.len(),
            realized_pnl: checked_sum(realized),
        },
    }
}

/// Whether the database holds the schema this version of vigil writes: the same migrations,
/// none changed after it was applied, and the columns recovery decodes of the types it
/// gave them. Migrations not applied yet are `vigil run`'s to apply; until they are, the
/// column types are not held to this version's.
fn schema_check(schema: &Schema) -> Check {
    const NAME: &str = "schema is the one vigil wrote";
    let mut problems = Problems::default();
    let mut pending = false;
    match &schema.applied {
        None => problems.push(
            "the migration history (the _sqlx_migrations table) is missing, so nothing says which schema this is".into(),
        ),
        Some(applied) => {
            for migration in applied {
                let version = migration.version;
                let description = &migration.description;
                match schema.shipped.iter().find(|shipped| shipped.version == version) {
                    None => problems.push(format!(
                        "migration {version} ({description}) is applied here but this version of vigil does not ship it"
                    )),
                    Some(shipped) if shipped.checksum != migration.checksum => problems.push(format!(
                        "migration {version} ({description}) was changed after it was applied: its checksum differs from the one this version ships"
                    )),
                    Some(_) if !migration.success => problems.push(format!(
                        "migration {version} ({description}) did not finish"
                    )),
                    Some(_) => {}
                }
            }
            pending = schema
                .shipped
                .iter()
                .any(|shipped| applied.iter().all(|migration| migration.version != shipped.version));
        }
    }
    if !pending {
        for expected in &schema.expected {
            let found = schema.found.iter().find(|found| {
                found.table_name == expected.table_name && found.column_name == expected.column_name
            });
            let place = format!("{}.{}", expected.table_name, expected.column_name);
            match found {
                None => problems.push(format!("{place} is missing")),
                Some(found) if !found.data_type.eq_ignore_ascii_case(&expected.data_type) => {
                    problems.push(format!(
                        "{place} is {}, not {}",
                        found.data_type, expected.data_type
                    ));
                }
                Some(_) => {}
            }
        }
    }
    if problems.is_empty() {
        Check::passed(NAME)
    } else {
        into_check(problems, NAME, FailureKind::DataCorrupt)
    }
}

/// The consistency checks, in the order the receipt lists them.
fn validate(state: &State, terms: &Terms<'_>) -> Vec<Check> {
    let Terms {
        tolerance,
        instruments,
        initial_capital,
    } = *terms;
    let open: Vec<&Position> = state
        .positions
        .iter()
        .filter(|p| p.status == PositionStatus::Open)
        .collect();
    let by_id: HashMap<&str, &Position> = open.iter().map(|p| (p.id.as_str(), *p)).collect();
    let fresh = Portfolio::fresh(Decimal::ZERO);
    let portfolio = state.portfolio.as_ref().unwrap_or(&fresh);
    let sum =
        |name: &'static str, stored: Decimal, amounts: Vec<Decimal>| match checked_sum(amounts) {
            Some(summed) => Check::sum(name, Basis::OpenPositions, stored, summed, tolerance),
            None => Check::failed(
                name,
                FailureKind::DataCorrupt,
                "the open positions' amounts do not fit in a decimal when added".into(),
            ),
        };
    let mut checks = vec![
        sum(
            "total risk",
            portfolio.total_risk,
            open.iter().map(|p| p.risk_amount).collect(),
        ),
        sum(
            "margin used",
            portfolio.margin_used,
            open.iter().map(|p| p.margin).collect(),
        ),
    ];

    let mut seen = HashSet::new();
    let mut problems = Problems::default();
    for position in &open {
        if !seen.insert(position.id.as_str()) {
            problems.push(format!("position id {} appears twice", position.id));
        }
    }
    checks.push(into_check_or_pass(problems, "position ids are unique"));

    let mut problems = Problems::default();
    let mut bases: BTreeMap<&str, &str> = BTreeMap::new();
    for base in open.iter().filter(|p| p.is_base_position) {
        if let Some(other) = bases.insert(base.instrument.as_str(), base.id.as_str()) {
            problems.push(format!(
                "{} has two open base positions, {other} and {}",
                base.instrument, base.id
            ));
        }
        if let Some(id) = &base.base_position_id {
            problems.push(format!(
                "base position {} names a base of its own ({id})",
                base.id
            ));
        }
    }
    checks.push(into_check_or_pass(problems, "one open base per instrument"));

    let mut problems = Problems::default();
    for pyramid in open.iter().filter(|p| !p.is_base_position) {
        match pyramid
            .base_position_id
            .as_deref()
            .map(|id| (id, by_id.get(id)))
        {
            None => problems.push(format!("pyramid {} has no base position", pyramid.id)),
            Some((id, None)) => problems.push(format!(
                "pyramid {} names base {id}, which is not an open position",
                pyramid.id
            )),
            Some((id, Some(base)))
                if !base.is_base_position || base.instrument != pyramid.instrument =>
            {
                problems.push(format!(
                    "pyramid {} names {id}, which is not the base of {}",
                    pyramid.id, pyramid.instrument
                ))
            }
            Some(_) => {}
        }
    }
    checks.push(into_check_or_pass(
        problems,
        "every pyramid has an open base",
    ));

    let mut problems = Problems::default();
    for position in &open {
        if position.stop_price >= position.entry_price {
            problems.push(format!(
                "position {}: stop {} is not below its entry {}, and vigil trades long positions",
                position.id, position.stop_price, position.entry_price
            ));
        }
    }
    checks.push(into_check_or_pass(
        problems,
        "every stop is below its entry",
    ));

    let mut problems = Problems::default();
    let traded: HashSet<&str> = open.iter().map(|p| p.instrument.as_str()).collect();
    for pyramiding in &state.pyramiding {
        let instrument = pyramiding.instrument.as_str();
        if !instruments.is_empty() && !instruments.contains_key(instrument) {
            problems.push(format!(
                "pyramiding state of {instrument}, which the deployment does not configure"
            ));
        }
        if !traded.contains(instrument) {
            problems.push(format!(
                "pyramiding state of {instrument}, which has no open position"
            ));
            continue;
        }
        match pyramiding.base_position_id.as_deref() {
            None => {
                if let Some(base) = bases.get(instrument) {
                    problems.push(format!(
                        "pyramiding state of {instrument} names no base, but {base} is its open base"
                    ));
                }
            }
            Some(id)
                if by_id
                    .get(id)
                    .is_some_and(|base| base.is_base_position && base.instrument == instrument) => {}
            Some(id) => problems.push(format!(
                "pyramiding state of {instrument} names {id}, which is not an open base position of that instrument"
            )),
        }
    }
    checks.push(into_check_or_pass(
        problems,
        "pyramiding state points at open bases",
    ));

    checks.push(match (initial_capital, &state.portfolio) {
        (None, _) => Check::skipped("initial capital", "no initial_capital in the deployment file"),
        // Written with the deployment's capital once recovery passes.
        (Some(_), None) => Check::passed("initial capital"),
        (Some(configured), Some(stored)) if stored.initial_capital == configured => {
            Check::passed("initial capital")
        }
        (Some(configured), Some(stored)) => Check::failed(
            "initial capital",
            FailureKind::ValidationFailed,
            format!(
                "stored {} but the deployment file sets initial_capital = \"{configured}\"; set it to the stored value, or correct the portfolio row",
                stored.initial_capital
            ),
        ),
    });

    let expected_equity = state
        .closed
        .realized_pnl
        .and_then(|realized| portfolio.initial_capital.checked_add(realized));
    checks.push(match expected_equity {
        Some(expected) => Check::sum(
            "closed equity",
            Basis::ClosedTrades,
            portfolio.closed_equity,
            expected,
            tolerance,
        ),
        None => Check::failed(
            "closed equity",
            FailureKind::DataCorrupt,
            "the initial capital and the closed positions' P&L do not fit in a decimal when added"
                .into(),
        ),
    });

    if instruments.is_empty() {
        checks.push(Check::skipped(
            "position risk and margin match their instrument",
            "no instruments configured",
        ));
    } else {
        let mut problems = Problems::default();
        for position in &open {
            let Some(instrument) = instruments.get(&position.instrument) else {
                problems.push(format!(
                    "position {} trades {}, which the deployment does not configure",
                    position.id, position.instrument
                ));
                continue;
            };
            let (Some(risk), Some(margin)) = (
                instrument.risk(position.entry_price, position.stop_price, position.lots),
                instrument.margin(position.lots),
            ) else {
                problems.push(format!(
                    "position {}: risk or margin does not fit in a decimal",
                    position.id
                ));
                continue;
            };
            let off = |a: Decimal, b: Decimal| {
                a.checked_sub(b)
                    .is_none_or(|difference| difference.abs() > tolerance)
            };
            if off(risk, position.risk_amount) || off(margin, position.margin) {
                problems.push(format!(
                    "position {}: stored risk {} and margin {}, recomputed {risk} and {margin}",
                    position.id, position.risk_amount, position.margin
                ));
            }
        }
        checks.push(into_check_or_pass(
            problems,
            "position risk and margin match their instrument",
        ));
    }
    checks
}

/// The check `problems` make: failed with `kind`, listing them, unless there are none.
fn into_check(problems: Problems, name: &'static str, kind: FailureKind) -> Check {
    Check::failed(name, kind, problems.joined())
}

/// The validation check `problems` make: passed when there are none.
fn into_check_or_pass(problems: Problems, name: &'static str) -> Check {
    if problems.is_empty() {
        Check::passed(name)
    } else {
        into_check(problems, name, FailureKind::ValidationFailed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{PortfolioRow, PositionRow, PyramidingRow};

    fn row(
        id: &str,
        instrument: &str,
        base: Option<&str>,
        risk: &str,
        margin: &str,
    ) -> PositionRow {
        PositionRow {
            id: id.into(),
            instrument: instrument.into(),
            label: "long".into(),
            status: Some("open".into()),
            lots: Some("1".into()),
            entry_price: Some("100".into()),
            stop_price: Some("90".into()),
            risk_amount: Some(risk.into()),
            margin: Some(margin.into()),
            is_base_position: base.is_none(),
            base_position_id: base.map(str::to_string),
            entry_time: Some("2026-11-20T09:00:00.000000Z".into()),
            version: 1,
            exit_price: None,
            exit_time: None,
            realized_pnl: None,
        }
    }

    /// The terms the tests recover under: a tolerance of 0.01 and `instruments`, with an
    /// initial capital of 1000.
    fn terms(instruments: &BTreeMap<String, Instrument>) -> Terms<'_> {
        Terms {
            tolerance: Decimal::new(1, 2),
            instruments,
            initial_capital: Some(Decimal::from(1000)),
        }
    }

    /// One witness case: the stored version, the witness's version, its age over the bound,
    /// the receipt's verdict and the check as printed.
    struct WitnessCase {
        stored: Option<i64>,
        version: i64,
        stale: Option<(u64, u64)>,
        verdict: Option<FailureKind>,
        shown: &'static str,
    }

    #[test]
    fn the_witness_refuses_a_database_behind_it_and_flags_a_stale_one() {
        let case = |stored, version, stale, verdict, shown| WitnessCase {
            stored,
            version,
            stale,
            verdict,
            shown,
        };
        let corrupt = Some(FailureKind::DataCorrupt);
        #[rustfmt::skip]
        let cases = [
            case(Some(7), 7, None, None, "[ok  ] not behind the newest snapshot"),
            case(Some(9), 7, None, None, "[ok  ] not behind the newest snapshot"),
            case(Some(6), 7, None, corrupt, "[FAIL] not behind the newest snapshot: the portfolio is at version 6, behind FILE (version 7"),
            case(None, 7, None, corrupt, "the portfolio is at version 0, behind FILE"),
            case(Some(7), 7, Some((90_000, 86_400)), None, "[warn] not behind the newest snapshot: the portfolio is at version 7, not behind FILE (version 7, written AT); the snapshot is 1day 1h old, older than the policy's [recovery] snapshot_max_age of 1day"),
        ];
        let instruments = BTreeMap::new();
        for WitnessCase {
            stored,
            version,
            stale,
            verdict,
            shown,
        } in cases
        {
            let witness = Witness {
                file: "FILE".into(),
                written_at: "AT".into(),
                portfolio_version: version,
                skipped: 0,
                stale,
            };
            let (_, receipt) = recover(RecoveryRows::default(), &terms(&instruments));
            let receipt = receipt.with_witness(stored, Some(&witness));
            assert_eq!(receipt.failure(), verdict, "{stored:?} against {version}");
            let printed = receipt.to_string();
            assert!(
                printed.contains(shown),
                "{stored:?} against {version}: {printed}"
            );
        }
        let (_, receipt) = recover(RecoveryRows::default(), &terms(&instruments));
        let without = receipt.clone().with_witness(Some(1), None);
        assert_eq!(
            without.checks.len(),
            receipt.checks.len(),
            "no snapshot, no check"
        );
    }

    #[test]
    fn the_initial_capital_is_the_deployments() {
        let instruments = BTreeMap::new();
        let capital = |initial_capital: Option<i64>| {
            let terms = Terms {
                initial_capital: initial_capital.map(Decimal::from),
                ..terms(&instruments)
            };
            let (_, receipt) = recover(rows(), &terms);
            let check = receipt
                .checks
                .iter()
                .find(|check| check.name == "initial capital")
                .cloned();
            check.map(|check| (check.passed, check.skipped, check.detail))
        };
        assert_eq!(capital(Some(1000)), Some((true, false, String::new())));
        assert_eq!(
            capital(None),
            Some((
                true,
                true,
                "no initial_capital in the deployment file".into()
            ))
        );
        let Some((passed, _, detail)) = capital(Some(5000)) else {
            panic!("no initial capital check");
        };
        assert!(!passed);
        assert!(
            detail
                .starts_with("stored 1000 but the deployment file sets initial_capital = \"5000\""),
            "{detail}"
        );
    }

    /// A schema as this version writes it: migrations 1 and 2, `positions.lots` numeric.
    fn schema() -> Schema {
        use crate::store::{ColumnRow, MigrationRow};
        let migration = |version: i64| MigrationRow {
            version,
            description: format!("step {version}"),
            checksum: vec![u8::try_from(version).unwrap_or_default(); 4],
            success: true,
        };
        let lots = ColumnRow {
            table_name: "positions".into(),
            column_name: "lots".into(),
            data_type: "numeric".into(),
        };
        Schema {
            shipped: vec![migration(1), migration(2)],
            applied: Some(vec![migration(1), migration(2)]),
            expected: vec![lots.clone()],
            found: vec![lots],
        }
    }

    #[test]
    fn schemas() {
        // (what is changed, the problem the check reports; `None` when it passes)
        #[allow(clippy::type_complexity)]
        let cases: &[(&str, fn(&mut Schema), Option<&str>)] = &[
            ("nothing", |_| {}, None),
            ("a type in other letters", |s| s.found[0].data_type = "NUMERIC".into(), None),
            (
                "no history",
                |s| s.applied = None,
                Some("the migration history (the _sqlx_migrations table) is missing"),
            ),
            (
                "a changed migration",
                |s| {
                    if let Some(applied) = &mut s.applied {
                        applied[0].checksum = vec![9];
                    }
                },
                Some("migration 1 (step 1) was changed after it was applied"),
            ),
            (
                "an unknown migration",
                |s| s.shipped.pop().map_or((), drop),
                Some("migration 2 (step 2) is applied here but this version of vigil does not ship it"),
            ),
            (
                "a failed migration",
                |s| {
                    if let Some(applied) = &mut s.applied {
                        applied[1].success = false;
                    }
                },
                Some("migration 2 (step 2) did not finish"),
            ),
            ("lots as text", |s| s.found[0].data_type = "text".into(), Some("positions.lots is text, not numeric")),
            ("lots missing", |s| s.found.clear(), Some("positions.lots is missing")),
            (
                "a migration still to apply, before which lots was text",
                |s| {
                    if let Some(applied) = &mut s.applied {
                        applied.pop();
                    }
                    s.found[0].data_type = "text".into();
                },
                None,
            ),
        ];
        for (what, change, problem) in cases {
            let mut schema = schema();
            change(&mut schema);
            let check = schema_check(&schema);
            match problem {
                None => assert!(check.passed, "{what}: {}", check.detail),
                Some(problem) => {
                    assert_eq!(check.kind, Some(FailureKind::DataCorrupt), "{what}");
                    assert!(
                        check.detail.starts_with(problem),
                        "{what}: {}",
                        check.detail
                    );
                }
            }
        }
    }

    /// A closed position on A with its whole exit and `pnl`.
    fn closed(id: &str, pnl: &str) -> PositionRow {
        PositionRow {
            status: Some("closed".into()),
            exit_price: Some("105".into()),
            exit_time: Some("2026-11-20T09:30:00.000000Z".into()),
            realized_pnl: Some(pnl.into()),
            ..row(id, "A", None, "10", "100")
        }
    }

    #[test]
    fn a_value_that_does_not_decode_is_reported_once() {
        let mut rows = rows();
        rows.positions[0].lots = Some("two".into());
        let (_, receipt) = recover(rows, &terms(&BTreeMap::new()));
        let detail = &receipt.checks[0].detail;
        assert_eq!(
            detail, "position a-base lots = \"two\" is not an exact decimal number",
            "{receipt}"
        );
    }

    /// A base and a pyramid on A, totals 20 risk and 200 margin, and A's pyramiding row.
    fn rows() -> RecoveryRows {
        RecoveryRows {
            positions: vec![
                row("a-base", "A", None, "10", "100"),
                row("a-pyr", "A", Some("a-base"), "10", "100"),
            ],
            portfolio: Some(PortfolioRow {
                initial_capital: Some("1000".into()),
                closed_equity: Some("1000".into()),
                total_risk: Some("20".into()),
                margin_used: Some("200".into()),
                version: 1,
            }),
            pyramiding: vec![PyramidingRow {
                instrument: "A".into(),
                last_pyramid_price: Some("100".into()),
                base_position_id: Some("a-base".into()),
            }],
            schema: None,
        }
    }

    /// (what is changed, how, the failing check and its kind; `None` when clean)
    type Case = (
        &'static str,
        fn(&mut RecoveryRows),
        Option<(&'static str, FailureKind)>,
    );

    #[test]
    fn receipts() {
        let cases: &[Case] = &[
            ("nothing", |_| {}, None),
            (
                "unknown status",
                |r| r.positions[0].status = Some("opn".into()),
                Some(("stored values decode", FailureKind::DataCorrupt)),
            ),
            (
                "no portfolio",
                |r| r.portfolio = None,
                Some(("stored values decode", FailureKind::DataCorrupt)),
            ),
            (
                "NULL lots",
                |r| r.positions[0].lots = None,
                Some(("stored values decode", FailureKind::DataCorrupt)),
            ),
            (
                "NULL status",
                |r| r.positions[1].status = None,
                Some(("stored values decode", FailureKind::DataCorrupt)),
            ),
            (
                "NULL closed equity",
                |r| {
                    if let Some(p) = &mut r.portfolio {
                        p.closed_equity = None;
                    }
                },
                Some(("stored values decode", FailureKind::DataCorrupt)),
            ),
            (
                "padded money",
                |r| r.positions[0].risk_amount = Some(" 10".into()),
                Some(("stored values decode", FailureKind::DataCorrupt)),
            ),
            (
                "separators",
                |r| r.positions[0].margin = Some("1_00".into()),
                Some(("stored values decode", FailureKind::DataCorrupt)),
            ),
            (
                "too precise",
                |r| r.positions[0].risk_amount = Some("0.0000000000000000000000000000001".into()),
                Some(("stored values decode", FailureKind::DataCorrupt)),
            ),
            (
                "negative lots",
                |r| r.positions[1].lots = Some("-1".into()),
                Some(("stored values decode", FailureKind::DataCorrupt)),
            ),
            (
                "sum overflows",
                |r| {
                    r.positions[0].risk_amount = Some("79228162514264337593543950335".into());
                    r.positions[1].risk_amount = Some("79228162514264337593543950335".into());
                },
                Some(("total risk", FailureKind::DataCorrupt)),
            ),
            (
                "risk off by 0.02",
                |r| r.positions[0].risk_amount = Some("10.02".into()),
                Some(("total risk", FailureKind::ValidationFailed)),
            ),
            (
                "risk off by 0.01",
                |r| r.positions[0].risk_amount = Some("10.01".into()),
                None,
            ),
            (
                "margin tampered",
                |r| {
                    if let Some(p) = &mut r.portfolio {
                        p.margin_used = Some("999".into())
                    }
                },
                Some(("margin used", FailureKind::ValidationFailed)),
            ),
            (
                "two bases",
                |r| r.positions.push(row("a-base-2", "A", None, "0", "0")),
                Some((
                    "one open base per instrument",
                    FailureKind::ValidationFailed,
                )),
            ),
            (
                "pyramid without base",
                |r| r.positions[1].base_position_id = None,
                Some((
                    "every pyramid has an open base",
                    FailureKind::ValidationFailed,
                )),
            ),
            (
                "base gone",
                |r| {
                    r.positions.remove(0);
                    if let Some(p) = &mut r.portfolio {
                        p.total_risk = Some("10".into());
                        p.margin_used = Some("100".into());
                    }
                },
                Some((
                    "every pyramid has an open base",
                    FailureKind::ValidationFailed,
                )),
            ),
            (
                "pyramiding names another instrument's base",
                |r| r.pyramiding[0].instrument = "B".into(),
                Some((
                    "pyramiding state points at open bases",
                    FailureKind::ValidationFailed,
                )),
            ),
            (
                "open position with an exit time",
                |r| r.positions[0].exit_time = Some("2026-11-20T10:00:00Z".into()),
                Some(("stored values decode", FailureKind::DataCorrupt)),
            ),
            (
                "open position with an exit price",
                |r| r.positions[1].exit_price = Some("101".into()),
                Some(("stored values decode", FailureKind::DataCorrupt)),
            ),
            (
                "open position with a realized P&L",
                |r| r.positions[0].realized_pnl = Some("0".into()),
                Some(("stored values decode", FailureKind::DataCorrupt)),
            ),
            (
                "closed position and equity agree",
                |r| {
                    r.positions.push(closed("a-old", "50"));
                    if let Some(p) = &mut r.portfolio {
                        p.closed_equity = Some("1050".into());
                    }
                },
                None,
            ),
            (
                "closed equity without its closed P&L",
                |r| r.positions.push(closed("a-old", "50")),
                Some(("closed equity", FailureKind::ValidationFailed)),
            ),
            (
                "closed equity off its initial capital",
                |r| {
                    if let Some(p) = &mut r.portfolio {
                        p.closed_equity = Some("0".into());
                    }
                },
                Some(("closed equity", FailureKind::ValidationFailed)),
            ),
            (
                "closed position without a P&L",
                |r| {
                    let mut old = closed("a-old", "0");
                    old.realized_pnl = None;
                    r.positions.push(old);
                },
                Some(("stored values decode", FailureKind::DataCorrupt)),
            ),
            (
                "closed position with garbage",
                |r| r.positions.push(closed("a-old", "fifty")),
                Some(("stored values decode", FailureKind::DataCorrupt)),
            ),
            (
                "closed position without an exit time",
                |r| {
                    let mut old = closed("a-old", "0");
                    old.exit_time = Some("yesterday".into());
                    r.positions.push(old);
                },
                Some(("stored values decode", FailureKind::DataCorrupt)),
            ),
            (
                "stop at its entry",
                |r| r.positions[0].stop_price = Some("100".into()),
                Some((
                    "every stop is below its entry",
                    FailureKind::ValidationFailed,
                )),
            ),
            (
                "stop above its entry",
                |r| r.positions[1].stop_price = Some("100.5".into()),
                Some((
                    "every stop is below its entry",
                    FailureKind::ValidationFailed,
                )),
            ),
            (
                "pyramiding names no base while one is open",
                |r| r.pyramiding[0].base_position_id = None,
                Some((
                    "pyramiding state points at open bases",
                    FailureKind::ValidationFailed,
                )),
            ),
            (
                "pyramiding of an instrument with nothing open",
                |r| {
                    r.pyramiding.push(PyramidingRow {
                        instrument: "C".into(),
                        last_pyramid_price: Some("5".into()),
                        base_position_id: None,
                    });
                },
                Some((
                    "pyramiding state points at open bases",
                    FailureKind::ValidationFailed,
                )),
            ),
        ];
        for (name, change, expected) in cases {
            let mut rows = rows();
            change(&mut rows);
            let (state, receipt) = recover(rows, &terms(&BTreeMap::new()));
            let failed = receipt
                .checks
                .iter()
                .find(|check| !check.passed)
                .map(|check| (check.name, check.kind));
            match expected {
                None => {
                    assert_eq!(failed, None, "{name}: {receipt}");
                    assert!(state.is_some(), "{name}");
                }
                Some((check, kind)) => {
                    assert_eq!(failed, Some((*check, Some(*kind))), "{name}: {receipt}");
                    assert_eq!(receipt.failure(), Some(*kind), "{name}");
                }
            }
        }
    }

    #[test]
    fn instruments_recompute_risk_and_margin() {
        let instrument = Instrument {
            lot_size: Decimal::ONE,
            point_value: Decimal::ONE,
            margin_per_lot: Decimal::from(100),
            fractional_lots: false,
        };
        let mut instruments = BTreeMap::from([("A".to_string(), instrument)]);
        let (_, receipt) = recover(rows(), &terms(&instruments));
        assert_eq!(receipt.failure(), None, "{receipt}");
        instruments.insert(
            "A".into(),
            Instrument {
                lot_size: Decimal::ONE,
                point_value: Decimal::TWO,
                margin_per_lot: Decimal::from(100),
                fractional_lots: false,
            },
        );
        let (_, receipt) = recover(rows(), &terms(&instruments));
        let failed: Vec<&str> = receipt
            .checks
            .iter()
            .filter(|c| !c.passed)
            .map(|c| c.name)
            .collect();
        assert_eq!(
            failed,
            ["position risk and margin match their instrument"],
            "{receipt}"
        );
        let (_, receipt) = recover(
            rows(),
            &terms(&BTreeMap::from([("B".to_string(), instrument_b())])),
        );
        let unconfigured: Vec<&str> = receipt
            .checks
            .iter()
            .filter(|c| !c.passed && c.detail.contains("does not configure"))
            .map(|c| c.name)
            .collect();
        assert_eq!(
            unconfigured,
            [
                "pyramiding state points at open bases",
                "position risk and margin match their instrument"
            ],
            "{receipt}"
        );
        let (_, receipt) = recover(rows(), &terms(&BTreeMap::new()));
        let skipped: Vec<(&str, &str)> = receipt
            .checks
            .iter()
            .filter(|c| c.skipped)
            .map(|c| (c.name, c.detail.as_str()))
            .collect();
        assert_eq!(
            skipped,
            [(
                "position risk and margin match their instrument",
                "no instruments configured"
            )],
            "{receipt}"
        );
    }

    fn instrument_b() -> Instrument {
        Instrument {
            lot_size: Decimal::ONE,
            point_value: Decimal::ONE,
            margin_per_lot: Decimal::ONE,
            fractional_lots: false,
        }
    }
}
