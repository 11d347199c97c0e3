//! Property tests over every parser that reads what someone else wrote: webhook bodies, the
//! fingerprint's canonical form, policy and deployment files, the rows recovery decodes, and
//! the intake journal's records.
//! None may panic, and every error names its field or its file:line:column. And what the
//! planner accepts, recovery accepts: at a tolerance of 0, under any instrument terms.
//!
//! Each property runs 256 cases by default (the CI budget); `PROPTEST_CASES=N` runs more
//! (the README's "Properties" section has the long-run command and figures). A failing case
//! is shrunk and kept in `tests/proptest-regressions/properties.txt`, which is committed, so
//! it is tried first on every later run.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use proptest::prelude::*;
use rust_decimal::Decimal;
use std::collections::BTreeMap;
use std::path::Path;
use vigil::deployment::Deployment;
use vigil::diagnostic::Diagnostics;
use vigil::intake::journal;
use vigil::policy::Policy;
use vigil::store::{PortfolioRow, PositionRow, PyramidingRow, RecoveryRows};
use vigil::trading::{parse, SignalError};

/// The fields a webhook body may name; an error names one of these or `body`.
const FIELDS: [&str; 10] = [
    "body",
    "passphrase",
    "signal",
    "instrument",
    "position",
    "price",
    "stop",
    "lots",
    "timestamp",
    "id",
];

fn names_a_field(error: &SignalError) -> bool {
    match error {
        SignalError::Malformed(message) => !message.is_empty(),
        SignalError::Invalid { field, message } => FIELDS.contains(field) && !message.is_empty(),
    }
}

/// A JSON value of the kinds a careless or hostile sender writes.
fn json_value() -> impl Strategy<Value = serde_json::Value> {
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::Bool),
        any::<i64>().prop_map(|n| serde_json::json!(n)),
        "[-+0-9.eE ]{0,30}".prop_map(serde_json::Value::String),
        ".{0,40}".prop_map(serde_json::Value::String),
        prop_oneof![
            Just("BASE_ENTRY"),
            Just("PYRAMID"),
            Just("EXIT"),
            Just("NIFTY")
        ]
        .prop_map(|s| serde_json::Value::String(s.to_string())),
    ];
    leaf.prop_recursive(2, 8, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::Array),
            prop::collection::btree_map(".{0,8}", inner, 0..4)
                .prop_map(|map| serde_json::Value::Object(map.into_iter().collect())),
        ]
    })
}

/// A body with the webhook's own keys, each holding anything.
fn webhook_object() -> impl Strategy<Value = String> {
    prop::collection::btree_map(
        prop::sample::select(FIELDS[1..].to_vec()),
        json_value(),
        0..9,
    )
    .prop_map(|map| {
        let object: serde_json::Map<String, serde_json::Value> =
            map.into_iter().map(|(k, v)| (k.to_string(), v)).collect();
        serde_json::Value::Object(object).to_string()
    })
}

/// A price, stop or size with up to 8 decimals, as digits.
fn decimal_text() -> impl Strategy<Value = (u64, u32)> {
    (1u64..10_000_000_000, 0u32..=8)
}

fn render(units: u64, scale: u32, trailing_zeros: usize) -> String {
    let text = Decimal::new(i64::try_from(units).unwrap(), scale).to_string();
    if trailing_zeros == 0 {
        return text;
    }
    let dotted = if text.contains('.') {
        text
    } else {
        format!("{text}.")
    };
    format!("{dotted}{}", "0".repeat(trailing_zeros))
}

/// One entry of a trade: price as (units, scale), the stop as a percentage of the price, and
/// lots as (units, scale).
type Entry = ((u64, u32), u8, (u64, u32));

fn entries() -> impl Strategy<Value = Vec<Entry>> {
    prop::collection::vec(
        (
            (1u64..100_000_000, 0u32..=8),
            1u8..100,
            (1u64..1_000, 0u32..=2),
        ),
        1..6,
    )
}

/// Instrument terms: (point value, margin per lot), each as (units, scale).
fn terms() -> impl Strategy<Value = ((u64, u32), (u64, u32))> {
    ((1u64..100_000, 0u32..=4), (1u64..10_000_000, 0u32..=3))
}

proptest! {
    #![proptest_config(ProptestConfig {
        // Cases found are kept in the repository (tests run from the package root).
        failure_persistence: Some(Box::new(proptest::test_runner::FileFailurePersistence::Direct(
            "tests/proptest-regressions/properties.txt",
        ))),
        ..ProptestConfig::default()
    })]

    #[test]
    fn webhook_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        if let Err(error) = parse(&bytes) {
            prop_assert!(names_a_field(&error), "{error:?}");
        }
    }

    #[test]
    fn webhook_objects_never_panic_and_errors_name_their_field(body in webhook_object()) {
        if let Err(error) = parse(body.as_bytes()) {
            prop_assert!(names_a_field(&error), "{error:?} for {body}");
        }
    }

    /// Equal signals have equal fingerprints, however their numbers, instrument and time are
    /// spelled; a signal that differs in its price does not.
    #[test]
    fn fingerprints_are_the_canonical_form(
        kind in prop::sample::select(vec!["BASE_ENTRY", "PYRAMID"]),
        (price, price_scale) in decimal_text(),
        (stop_units, stop_scale) in decimal_text(),
        zeros in 0usize..3,
        as_number in any::<bool>(),
        minute in 0u32..60,
    ) {
        let stop_units = stop_units.min(price.saturating_sub(1)).max(1);
        // Trailing zeros are written decimals: a respelling stays within the 8 read.
        let zeros = zeros.min((8 - price_scale) as usize);
        let spell = |units: u64, scale: u32, zeros: usize, number: bool| {
            let text = render(units, scale, zeros);
            if number { text } else { format!("\"{text}\"") }
        };
        let body = |price: String, instrument: &str, time: String| format!(
            r#"{{"passphrase":"p","signal":"{kind}","instrument":"{instrument}","price":{price},"stop":{},"lots":"1","timestamp":"{time}"}}"#,
            spell(stop_units, stop_scale, 0, false)
        );
        let utc = format!("2026-11-21T09:{minute:02}:00Z");
        let plain = body(spell(price, price_scale, 0, false), "NIFTY", utc.clone());
        let respelt = body(spell(price, price_scale, zeros, as_number), "nifty", utc.replace('Z', ".000Z"));
        let (a, b) = (parse(plain.as_bytes()), parse(respelt.as_bytes()));
        match (a, b) {
            (Ok(a), Ok(b)) => {
                prop_assert_eq!(a.signal.fingerprint(), b.signal.fingerprint(), "{} vs {}", plain, respelt);
                let moved = body(spell(price + 1, price_scale, 0, false), "NIFTY", utc);
                if let Ok(moved) = parse(moved.as_bytes()) {
                    prop_assert_ne!(a.signal.fingerprint(), moved.signal.fingerprint());
                }
            }
            (Err(a), Err(b)) => prop_assert_eq!(a.to_string(), b.to_string()),
            (a, b) => prop_assert!(false, "one spelling parsed and the other did not: {a:?} / {b:?}"),
        }
    }

    #[test]
    fn policy_files_never_panic_and_errors_locate_themselves(source in policy_text()) {
        located(Policy::parse(Path::new("fuzz.toml"), &source).err())?;
    }

    #[test]
    fn deployment_files_never_panic_and_errors_locate_themselves(source in deployment_text()) {
        located(Deployment::parse(Path::new("vigil.toml"), &source).err())?;
    }

    /// Whatever the stored rows hold, recovery answers with a receipt and never panics; a
    /// receipt that is not clean names a failure kind recovery can find.
    #[test]
    fn recovery_decodes_any_rows(rows in recovery_rows()) {
        let (state, receipt) = vigil::recovery::recover(rows, &vigil::recovery::Terms {
            tolerance: Decimal::new(1, 2),
            instruments: &BTreeMap::new(),
            initial_capital: None,
        });
        match receipt.failure() {
            None => prop_assert!(state.is_some()),
            Some(kind) => prop_assert!(kind.needs_recovery(), "{kind}"),
        }
    }

    /// Any bytes decode as a journal without a panic: a corruption names a byte offset inside
    /// the file, and whole valid records never extend past it.
    #[test]
    fn journal_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        match journal::decode(&bytes) {
            Ok(scan) => prop_assert!(scan.valid_bytes + scan.torn_tail_bytes == bytes.len() as u64),
            Err(corrupt) => {
                prop_assert!(corrupt.offset < bytes.len() as u64, "{corrupt}");
                prop_assert!(!corrupt.reason.is_empty());
            }
        }
    }

    /// Valid records with damage: cut anywhere, the records before the cut survive; a flipped
    /// byte never yields a record that was not written: what decodes is a prefix of what was
    /// written (a damaged length near the end can look torn), or a corruption at a record's
    /// offset.
    #[test]
    fn journals_cut_or_flipped_keep_what_is_before_the_damage(
        payloads in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..40), 1..5),
        cut in any::<prop::sample::Index>(),
        flip in any::<prop::sample::Index>(),
    ) {
        let records: Vec<journal::Record> = payloads
            .into_iter()
            .enumerate()
            .map(|(n, payload)| journal::Record::Appended { seq: n as u64 + 1, payload })
            .collect();
        let encoded: Vec<Vec<u8>> = records.iter().map(journal::encode).collect();
        let bytes: Vec<u8> = encoded.concat();
        let mut starts = vec![0usize];
        for record in &encoded {
            starts.push(starts.last().copied().unwrap_or(0) + record.len());
        }
        let cut_at = cut.index(bytes.len() + 1);
        let scan = journal::decode(&bytes[..cut_at]).unwrap();
        let whole = starts.iter().skip(1).filter(|&&end| end <= cut_at).count();
        prop_assert_eq!(&scan.records[..], &records[..whole]);
        let at = flip.index(bytes.len());
        let mut flipped = bytes.clone();
        flipped[at] ^= 0x01;
        match journal::decode(&flipped) {
            Ok(scan) => prop_assert_eq!(&scan.records[..], &records[..scan.records.len()]),
            Err(corrupt) => prop_assert!(starts.contains(&(corrupt.offset as usize)), "{corrupt}"),
        }
    }

    #[test]
    fn every_accepted_plan_recovers_clean_at_tolerance_zero(
        trades in prop::collection::vec((entries(), prop::option::of((1u64..100_000_000, 0u32..=8))), 1..4),
        ((point_units, point_scale), (margin_units, margin_scale)) in terms(),
    ) {
        let instrument = vigil::domain::Instrument {
            lot_size: Decimal::ONE,
            point_value: decimal(point_units, point_scale),
            margin_per_lot: decimal(margin_units, margin_scale),
            fractional_lots: true,
        };
        let mut book = Book::new(instrument.clone());
        for (entries, exit) in trades {
            for (index, ((units, scale), stop_percent, (lots, lots_scale))) in entries.iter().enumerate() {
                let price = decimal(*units, *scale);
                let stop = price * Decimal::from(*stop_percent) / Decimal::ONE_HUNDRED;
                let kind = if index == 0 { "BASE_ENTRY" } else { "PYRAMID" };
                book.signal(&format!(
                    r#"{{"signal":"{kind}","instrument":"NIFTY","price":"{price}","stop":"{}","lots":"{}"}}"#,
                    stop.round_dp(8).normalize(),
                    decimal(*lots, *lots_scale)
                ));
            }
            if let Some((units, scale)) = exit {
                let exit = decimal(units, scale);
                book.signal(&format!(r#"{{"signal":"EXIT","instrument":"NIFTY","price":"{exit}"}}"#));
            }
        }
        prop_assert!(book.accepted > 0, "no signal was accepted");
        let instruments = BTreeMap::from([("NIFTY".to_string(), instrument)]);
        let (_, receipt) = vigil::recovery::recover(book.rows(), &vigil::recovery::Terms {
            tolerance: Decimal::ZERO,
            instruments: &instruments,
            initial_capital: Some(Decimal::from(1_000_000)),
        });
        prop_assert_eq!(receipt.failure(), None, "{}", receipt);
    }
}

fn decimal(units: u64, scale: u32) -> Decimal {
    Decimal::new(i64::try_from(units).unwrap(), scale)
}

/// What the store holds after the planner's plans, written the way a signal's transaction
/// writes them: every opened and closed position, the totals and the pyramiding row.
struct Book {
    instrument: vigil::domain::Instrument,
    /// Closed positions' rows.
    closed: Vec<PositionRow>,
    book: vigil::trading::plan::Book,
    pyramiding: Option<PyramidingRow>,
    signals: i64,
    accepted: usize,
}

impl Book {
    fn new(instrument: vigil::domain::Instrument) -> Book {
        Book {
            instrument,
            closed: Vec::new(),
            book: vigil::trading::plan::Book {
                open: Vec::new(),
                portfolio: vigil::domain::Portfolio::fresh(Decimal::from(1_000_000)),
                latest_recorded_at: None,
            },
            pyramiding: None,
            signals: 0,
            accepted: 0,
        }
    }

    /// Plans the alert in `body` (its time is added) and, when the service would take it and
    /// the planner accepts it, applies the plan.
    fn signal(&mut self, body: &str) {
        self.signals += 1;
        let at = chrono::DateTime::from_timestamp(1_795_000_000 + self.signals * 60, 0).unwrap();
        let body = format!(
            "{},\"timestamp\":\"{}\"}}",
            body.trim_end_matches('}'),
            at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
        );
        let Ok(parsed) = parse(body.as_bytes()) else {
            return;
        };
        let fingerprint = format!("{:016x}{:048x}", self.signals, 0);
        let signal = &parsed.signal;
        let Ok(plan) = vigil::trading::plan::plan(
            signal,
            &fingerprint,
            &self.instrument,
            signal.price,
            at,
            &self.book,
        ) else {
            return;
        };
        self.accepted += 1;
        if let Some(opened) = &plan.opened {
            self.book.open.push(opened.clone());
        }
        for closed in &plan.closed {
            let index = self
                .book
                .open
                .iter()
                .position(|p| p.id == closed.id)
                .unwrap();
            let position = self.book.open.remove(index);
            self.closed.push(PositionRow {
                status: Some("closed".into()),
                exit_price: Some(closed.exit_price.to_string()),
                exit_time: Some(at.to_rfc3339()),
                realized_pnl: Some(closed.realized_pnl.to_string()),
                ..row(&position)
            });
        }
        self.book.portfolio = plan.portfolio;
        match plan.pyramiding {
            vigil::trading::plan::PyramidingChange::Upsert(p) => {
                self.pyramiding = Some(PyramidingRow {
                    instrument: p.instrument,
                    last_pyramid_price: Some(p.last_pyramid_price.to_string()),
                    base_position_id: p.base_position_id,
                });
            }
            vigil::trading::plan::PyramidingChange::Delete => self.pyramiding = None,
            vigil::trading::plan::PyramidingChange::Keep => {}
        }
    }

    fn rows(&self) -> RecoveryRows {
        let portfolio = &self.book.portfolio;
        let mut positions = self.closed.clone();
        positions.extend(self.book.open.iter().map(row));
        RecoveryRows {
            positions,
            portfolio: Some(PortfolioRow {
                initial_capital: Some(portfolio.initial_capital.to_string()),
                closed_equity: Some(portfolio.closed_equity.to_string()),
                total_risk: Some(portfolio.total_risk.to_string()),
                margin_used: Some(portfolio.margin_used.to_string()),
                version: portfolio.version,
            }),
            pyramiding: self.pyramiding.iter().cloned().collect(),
            schema: None,
        }
    }
}

/// An open position's row, as the store writes it.
fn row(position: &vigil::domain::Position) -> PositionRow {
    PositionRow {
        id: position.id.clone(),
        instrument: position.instrument.clone(),
        label: position.label.clone(),
        status: Some("open".into()),
        lots: Some(position.lots.to_string()),
        entry_price: Some(position.entry_price.to_string()),
        stop_price: Some(position.stop_price.to_string()),
        risk_amount: Some(position.risk_amount.to_string()),
        margin: Some(position.margin.to_string()),
        is_base_position: position.is_base_position,
        base_position_id: position.base_position_id.clone(),
        entry_time: Some(position.entry_time.to_rfc3339()),
        version: position.version,
        exit_price: None,
        exit_time: None,
        realized_pnl: None,
    }
}

/// A refused file has at least one problem, each with a message at a line and column.
fn located(refused: Option<Diagnostics>) -> Result<(), TestCaseError> {
    let Some(diagnostics) = refused else {
        return Ok(());
    };
    prop_assert!(!diagnostics.0.is_empty());
    for diagnostic in &diagnostics.0 {
        prop_assert!(
            diagnostic.line >= 1 && diagnostic.column >= 1,
            "{diagnostic}"
        );
        prop_assert!(!diagnostic.message.is_empty(), "{diagnostic}");
    }
    Ok(())
}

/// A shipped policy with a few bytes changed, dropped or doubled, or any text at all.
fn policy_text() -> impl Strategy<Value = String> {
    let shipped = [
        "policies/default.toml",
        "policies/strict.toml",
        "policies/paper.toml",
    ]
    .map(|path| std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(path)).unwrap());
    prop_oneof![mutated(shipped.to_vec()), ".{0,200}",]
}

fn deployment_text() -> impl Strategy<Value = String> {
    let shipped = vec![
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/vigil.toml")).unwrap(),
        "[webhook]\nallow = [\"tradingview\", \"10.0.0.0/8\"]\ntrusted_proxies = [\"127.0.0.1\"]\nsignature_tolerance = \"5m\"\n".to_string(),
    ];
    prop_oneof![mutated(shipped), ".{0,200}"]
}

/// One of `texts` with up to 8 edits: a character replaced, removed or repeated.
fn mutated(texts: Vec<String>) -> impl Strategy<Value = String> {
    (
        prop::sample::select(texts),
        prop::collection::vec((any::<prop::sample::Index>(), 0u8..3, any::<char>()), 1..8),
    )
        .prop_map(|(text, edits)| {
            let mut chars: Vec<char> = text.chars().collect();
            for (at, edit, with) in edits {
                if chars.is_empty() {
                    break;
                }
                let at = at.index(chars.len());
                match edit {
                    0 => chars[at] = with,
                    1 => {
                        chars.remove(at);
                    }
                    _ => chars.insert(at, chars[at]),
                }
            }
            chars.into_iter().collect()
        })
}

/// Rows as a damaged database might hold them: numbers that are not numbers, statuses
/// nobody wrote, missing or dangling links.
fn recovery_rows() -> impl Strategy<Value = RecoveryRows> {
    let number = prop_oneof![
        "[0-9]{1,6}(\\.[0-9]{1,8})?",
        "-[0-9]{1,4}",
        Just("0".to_string()),
        Just("NaN".to_string()),
        Just("1e400".to_string()),
        Just("99999999999999999999999999999999".to_string()),
        ".{0,12}",
    ];
    // A value, or now and then NULL (which vigil never writes).
    let number = prop::option::weighted(0.9, number);
    let position = (
        "[a-c]{1,2}",
        prop::sample::select(vec!["NIFTY", "BANKNIFTY", "X"]),
        prop::option::weighted(
            0.95,
            prop::sample::select(vec!["open", "closed", "OPEN", ""]),
        ),
        (
            number.clone(),
            number.clone(),
            number.clone(),
            number.clone(),
            number.clone(),
        ),
        any::<bool>(),
        prop::option::of("[a-c]{1,2}"),
        prop::option::weighted(
            0.95,
            prop_oneof![Just("2026-11-21T09:15:00Z".to_string()), ".{0,10}"],
        ),
    )
        .prop_map(
            |(id, instrument, status, (lots, entry, stop, risk, margin), base, base_id, time)| {
                PositionRow {
                    id,
                    instrument: instrument.to_string(),
                    label: "long".to_string(),
                    status: status.map(str::to_string),
                    lots,
                    entry_price: entry,
                    stop_price: stop,
                    risk_amount: risk,
                    margin,
                    is_base_position: base,
                    base_position_id: base_id,
                    entry_time: time,
                    version: 1,
                    exit_price: None,
                    exit_time: None,
                    realized_pnl: None,
                }
            },
        );
    let portfolio = (
        number.clone(),
        number.clone(),
        number.clone(),
        number.clone(),
    )
        .prop_map(
            |(initial_capital, closed_equity, total_risk, margin_used)| PortfolioRow {
                initial_capital,
                closed_equity,
                total_risk,
                margin_used,
                version: 1,
            },
        );
    let pyramiding = (
        prop::sample::select(vec!["NIFTY", "X"]),
        number,
        prop::option::of("[a-c]{1,2}"),
    )
        .prop_map(|(instrument, price, base)| PyramidingRow {
            instrument: instrument.to_string(),
            last_pyramid_price: price,
            base_position_id: base,
        });
    (
        prop::collection::vec(position, 0..6),
        prop::option::of(portfolio),
        prop::collection::vec(pyramiding, 0..3),
    )
        .prop_map(|(positions, portfolio, pyramiding)| RecoveryRows {
            positions,
            portfolio,
            pyramiding,
            schema: None,
        })
}
