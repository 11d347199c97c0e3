//! What a signal changes, decided from what the signal's transaction read. Pure: the store
//! reads the [`Book`], calls [`plan`], and writes the [`Plan`] in the same transaction, so
//! positions, totals and pyramiding state always change together.

use super::Signal;
use crate::domain::{Instrument, Portfolio, Position, PositionStatus, Pyramiding};
use crate::vocabulary::SignalType;
use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde::Serialize;

pub use crate::domain::MONEY_DECIMAL_PLACES;

/// Totals with no trailing zeros, so that an emptied book stores `0` rather than `0.00`.
fn tidy(mut portfolio: Portfolio) -> Portfolio {
    portfolio.closed_equity = portfolio.closed_equity.normalize();
    portfolio.total_risk = portfolio.total_risk.normalize();
    portfolio.margin_used = portfolio.margin_used.normalize();
    portfolio
}

/// What the signal's transaction read about its instrument and the portfolio.
#[derive(Debug, Clone, PartialEq)]
pub struct Book {
    /// The instrument's open positions.
    pub open: Vec<Position>,
    /// The portfolio totals.
    pub portfolio: Portfolio,
    /// The alert time of the latest signal recorded on the instrument (applied, rejected,
    /// expired or superseded): an older alert arrived too late and is superseded, so that an
    /// entry resent after its own exit opens nothing.
    pub latest_recorded_at: Option<DateTime<Utc>>,
}

/// A position closed by an EXIT.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Closed {
    /// The position.
    pub id: String,
    /// Fill price of the exit.
    pub exit_price: Decimal,
    /// (exit − entry) × lots × point value.
    pub realized_pnl: Decimal,
}

/// What happens to the instrument's pyramiding row.
#[derive(Debug, Clone, PartialEq)]
pub enum PyramidingChange {
    /// Insert or replace it.
    Upsert(Pyramiding),
    /// Delete it: the instrument has no open position left.
    Delete,
    /// Leave it.
    Keep,
}

/// Everything one signal writes.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// A position opened by an entry.
    pub opened: Option<Position>,
    /// Positions closed by an exit.
    pub closed: Vec<Closed>,
    /// The new totals, with the version the write must replace.
    pub portfolio: Portfolio,
    /// The pyramiding row.
    pub pyramiding: PyramidingChange,
}

impl Plan {
    /// The ids of the positions opened or closed.
    pub fn position_ids(&self) -> Vec<String> {
        self.opened
            .iter()
            .map(|p| p.id.clone())
            .chain(self.closed.iter().map(|c| c.id.clone()))
            .collect()
    }
}

/// Why a well-formed signal cannot be applied to the current state: HTTP 422.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct Rejection {
    /// The field at fault.
    pub field: &'static str,
    /// What is wrong.
    pub message: String,
}

/// Why a signal was recorded without trading: each is an outcome in the signal log, so a
/// resend or a second drain of the same alert finds it and changes nothing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// It does not fit the positions (HTTP 422 when answered at once).
    #[error(transparent)]
    Rejected(Rejection),
    /// It is older, by its own timestamp, than the policy's `[signals]` max age.
    #[error("expired: the alert is {age_s} s old, over the {max_age_s} s the policy allows")]
    Expired {
        /// How old it was when applied, in whole seconds.
        age_s: i64,
        /// The policy's bound for its kind, in whole seconds.
        max_age_s: u64,
    },
    /// An alert with a later timestamp was already recorded on its instrument.
    #[error(
        "superseded: a later alert ({latest_recorded_at}) was already recorded on this instrument"
    )]
    Superseded {
        /// The alert time of that later alert, RFC 3339.
        latest_recorded_at: String,
    },
    /// It arrived while the operator paused trading (`vigil pause`), and the pause holds
    /// its type back.
    #[error("{}", paused_reason(*exits_only))]
    Paused {
        /// Whether the pause lets exits through (`vigil pause --exits-only`).
        exits_only: bool,
    },
}

/// The reason recorded for an alert the operator's pause held back.
fn paused_reason(exits_only: bool) -> &'static str {
    match exits_only {
        true => "refused by the operator: only exits are taken while trading is paused (vigil pause --exits-only); vigil resume lifts the pause",
        false => "refused by the operator: trading is paused (vigil pause); vigil resume lifts the pause",
    }
}

impl Refusal {
    /// The outcome stored in the signal log.
    pub fn status(&self) -> &'static str {
        match self {
            Refusal::Rejected(_) => "rejected",
            Refusal::Expired { .. } => "expired",
            Refusal::Superseded { .. } => "superseded",
            Refusal::Paused { .. } => "refused",
        }
    }
}

/// The refusal of `signal` when at `now` it is older, by its own timestamp, than `max_age`.
pub fn expired(
    signal: &Signal,
    now: DateTime<Utc>,
    max_age: std::time::Duration,
) -> Option<Refusal> {
    let age = now.signed_duration_since(signal.timestamp);
    let limit_ms = i64::try_from(max_age.as_millis()).unwrap_or(i64::MAX);
    (age.num_milliseconds() > limit_ms).then(|| Refusal::Expired {
        age_s: age.num_seconds(),
        max_age_s: max_age.as_secs(),
    })
}

/// Decides what `signal` does: superseded when a later alert was recorded on its instrument,
/// expired when it is older than `max_age` at `now`, else what [`plan`] says (a plan or a
/// rejection).
pub fn decide(
    signal: &Signal,
    fingerprint: &str,
    instrument: &Instrument,
    fill_price: Decimal,
    now: DateTime<Utc>,
    max_age: std::time::Duration,
    book: &Book,
) -> Result<Plan, Refusal> {
    if let Some(last) = book.latest_recorded_at {
        if signal.timestamp < last {
            return Err(Refusal::Superseded {
                latest_recorded_at: last.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true),
            });
        }
    }
    if let Some(refusal) = expired(signal, now, max_age) {
        return Err(refusal);
    }
    plan(signal, fingerprint, instrument, fill_price, now, book).map_err(Refusal::Rejected)
}

fn reject(field: &'static str, message: impl Into<String>) -> Rejection {
    Rejection {
        field,
        message: message.into(),
    }
}

/// Decides what `signal` changes. `fill_price` is what the broker filled at, `now` when the
/// signal was processed, `fingerprint` names the new position.
pub fn plan(
    signal: &Signal,
    fingerprint: &str,
    instrument: &Instrument,
    fill_price: Decimal,
    now: DateTime<Utc>,
    book: &Book,
) -> Result<Plan, Rejection> {
    let base = book.open.iter().find(|p| p.is_base_position);
    let mut portfolio = book.portfolio.clone();
    portfolio.version += 1;
    match signal.kind {
        SignalType::BaseEntry | SignalType::Pyramid => {
            let (stop, lots) = match (signal.stop, signal.lots) {
                (Some(stop), Some(lots)) => (stop, lots),
                _ => return Err(reject("stop", "an entry needs a stop and lots")),
            };
            let base_position_id = match (signal.kind, base) {
                (SignalType::BaseEntry, Some(open)) => {
                    return Err(reject(
                        "signal",
                        format!(
                            "{} already has an open base position ({}); send EXIT first",
                            signal.instrument, open.id
                        ),
                    ))
                }
                (SignalType::BaseEntry, None) => None,
                (_, Some(open)) => Some(open.id.clone()),
                (_, None) => {
                    return Err(reject(
                        "signal",
                        format!(
                            "PYRAMID needs an open base position on {}; send BASE_ENTRY first",
                            signal.instrument
                        ),
                    ))
                }
            };
            let too_large = || {
                reject(
                    "lots",
                    "price, stop and lots give an amount too large to hold",
                )
            };
            let risk_amount = instrument
                .risk(fill_price, stop, lots)
                .ok_or_else(too_large)?;
            let margin = instrument.margin(lots).ok_or_else(too_large)?;
            let position = Position {
                id: format!("pos-{}", &fingerprint[..fingerprint.len().min(16)]),
                instrument: signal.instrument.clone(),
                label: signal.entry_label().to_string(),
                status: PositionStatus::Open,
                lots,
                entry_price: fill_price,
                stop_price: stop,
                risk_amount,
                margin,
                is_base_position: base_position_id.is_none(),
                base_position_id: base_position_id.clone(),
                entry_time: now,
                version: 1,
            };
            portfolio.total_risk = portfolio
                .total_risk
                .checked_add(risk_amount)
                .ok_or_else(too_large)?;
            portfolio.margin_used = portfolio
                .margin_used
                .checked_add(margin)
                .ok_or_else(too_large)?;
            let pyramiding = Pyramiding {
                instrument: signal.instrument.clone(),
                last_pyramid_price: fill_price,
                base_position_id: Some(base_position_id.unwrap_or_else(|| position.id.clone())),
            };
            portfolio = tidy(portfolio);
            Ok(Plan {
                opened: Some(position),
                closed: Vec::new(),
                portfolio,
                pyramiding: PyramidingChange::Upsert(pyramiding),
            })
        }
        SignalType::Exit => {
            if book.open.is_empty() {
                return Err(reject(
                    "instrument",
                    format!("{} has no open position to exit", signal.instrument),
                ));
            }
            // No label, or the base's label, closes the whole instrument, so a pyramid never
            // outlives its base; a pyramid label closes those pyramids; any other label is a
            // mistake, not a reason to guess.
            let targets: Vec<&Position> = match signal.position.as_deref() {
                None => book.open.iter().collect(),
                Some(label) if base.is_some_and(|b| b.label == label) => book.open.iter().collect(),
                Some(label) => {
                    let labelled: Vec<&Position> =
                        book.open.iter().filter(|p| p.label == label).collect();
                    if labelled.is_empty() {
                        let labels: Vec<&str> =
                            book.open.iter().map(|p| p.label.as_str()).collect();
                        return Err(reject(
                            "position",
                            format!(
                                "no open position on {} is labelled {label:?}; open labels: {}",
                                signal.instrument,
                                labels.join(", ")
                            ),
                        ));
                    }
                    labelled
                }
            };
            let too_large = || reject("price", "the exit gives an amount too large to hold");
            let mut closed = Vec::with_capacity(targets.len());
            for position in &targets {
                let realized_pnl = instrument
                    .realized_pnl(position.entry_price, fill_price, position.lots)
                    .ok_or_else(too_large)?;
                portfolio.total_risk = portfolio
                    .total_risk
                    .checked_sub(position.risk_amount)
                    .ok_or_else(too_large)?;
                portfolio.margin_used = portfolio
                    .margin_used
                    .checked_sub(position.margin)
                    .ok_or_else(too_large)?;
                portfolio.closed_equity = portfolio
                    .closed_equity
                    .checked_add(realized_pnl)
                    .ok_or_else(too_large)?;
                closed.push(Closed {
                    id: position.id.clone(),
                    exit_price: fill_price,
                    realized_pnl,
                });
            }
            let closed_ids: Vec<&str> = targets.iter().map(|p| p.id.as_str()).collect();
            let latest = book
                .open
                .iter()
                .filter(|p| !closed_ids.contains(&p.id.as_str()))
                .max_by_key(|p| p.entry_time);
            // The last pyramid price is that of the newest position still open.
            let pyramiding = match (latest, base) {
                (None, _) => PyramidingChange::Delete,
                (Some(latest), Some(base)) => PyramidingChange::Upsert(Pyramiding {
                    instrument: signal.instrument.clone(),
                    last_pyramid_price: latest.entry_price,
                    base_position_id: Some(base.id.clone()),
                }),
                (Some(_), None) => PyramidingChange::Keep,
            };
            portfolio = tidy(portfolio);
            Ok(Plan {
                opened: None,
                closed,
                portfolio,
                pyramiding,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::trading::parse;

    fn signal(body: &str) -> Signal {
        match parse(body.as_bytes()) {
            Ok(parsed) => parsed.signal,
            Err(error) => panic!("{body}: {error}"),
        }
    }

    fn nifty() -> Instrument {
        Instrument {
            lot_size: Decimal::from(75),
            point_value: Decimal::from(75),
            margin_per_lot: Decimal::from(150_000),
            fractional_lots: false,
        }
    }

    /// Applies `bodies` in order to an empty book, as the store would, and returns the book.
    fn run(bodies: &[&str]) -> Result<Book, Rejection> {
        let mut book = Book {
            latest_recorded_at: None,
            open: Vec::new(),
            portfolio: Portfolio::fresh(Decimal::from(1_000_000)),
        };
        let mut pyramiding = None;
        for (index, body) in bodies.iter().enumerate() {
            let signal = signal(body);
            let fingerprint = format!("{index:016}");
            let plan = plan(
                &signal,
                &fingerprint,
                &nifty(),
                signal.price,
                signal.timestamp,
                &book,
            )?;
            book.open
                .retain(|p| !plan.closed.iter().any(|c| c.id == p.id));
            book.open.extend(plan.opened.clone());
            book.portfolio = plan.portfolio.clone();
            match plan.pyramiding {
                PyramidingChange::Upsert(row) => pyramiding = Some(row),
                PyramidingChange::Delete => pyramiding = None,
                PyramidingChange::Keep => {}
            }
            let expected = book
                .open
                .iter()
                .max_by_key(|p| p.entry_time)
                .map(|p| p.entry_price);
            assert_eq!(
                pyramiding.as_ref().map(|row| row.last_pyramid_price),
                expected,
                "after {body}"
            );
        }
        Ok(book)
    }

    fn body(kind: &str, label: &str, price: &str, stop: &str, lots: &str, minute: u32) -> String {
        format!(
            r#"{{"signal":"{kind}","instrument":"NIFTY","position":"{label}","price":"{price}","stop":"{stop}","lots":"{lots}","timestamp":"2026-11-21T09:{minute:02}:00Z"}}"#
        )
    }

    /// Open positions, total risk, margin used and closed equity; or the field refused.
    type Expected = Result<(usize, &'static str, &'static str, &'static str), &'static str>;

    #[test]
    fn books() {
        let base = body("BASE_ENTRY", "long", "22000", "21900", "2", 0);
        let pyramid = body("PYRAMID", "p1", "22100.5", "22000", "1", 1);
        let exit_pyramid = body("EXIT", "p1", "22200", "0", "1", 2);
        let exit_all = body("EXIT", "long", "22300", "0", "1", 3);
        // (signals, open positions, total risk, margin used, closed equity), or the field refused
        let cases: &[(&[&str], Expected)] = &[
            (&[&base], Ok((1, "15000", "300000", "1000000"))),
            (&[&base, &pyramid], Ok((2, "22537.5", "450000", "1000000"))),
            (
                &[&base, &pyramid, &exit_pyramid],
                Ok((1, "15000", "300000", "1007462.5")),
            ),
            (
                &[&base, &pyramid, &exit_all],
                Ok((0, "0", "0", "1059962.5")),
            ),
            (&[&pyramid], Err("signal")),
            (&[&base, &base.replace("09:00", "09:05")], Err("signal")),
            (&[&exit_all], Err("instrument")),
            (
                &[&base, &body("EXIT", "nope", "1", "0", "1", 9)],
                Err("position"),
            ),
            (
                &[&body(
                    "BASE_ENTRY",
                    "long",
                    "79228162514264337593543950",
                    "1",
                    "79228162514264337593543950",
                    0,
                )],
                Err("lots"),
            ),
        ];
        for (signals, expected) in cases {
            match (run(signals), expected) {
                (Ok(book), Ok((open, risk, margin, equity))) => {
                    let totals = (
                        book.open.len(),
                        book.portfolio.total_risk.to_string(),
                        book.portfolio.margin_used.to_string(),
                        book.portfolio.closed_equity.to_string(),
                    );
                    assert_eq!(
                        totals,
                        (
                            *open,
                            risk.to_string(),
                            margin.to_string(),
                            equity.to_string()
                        ),
                        "{signals:?}"
                    );
                    let pyramids_point_at_the_base =
                        book.open.iter().filter(|p| !p.is_base_position).all(|p| {
                            book.open.iter().any(|b| {
                                b.is_base_position && Some(&b.id) == p.base_position_id.as_ref()
                            })
                        });
                    assert!(pyramids_point_at_the_base, "{signals:?}");
                }
                (Err(rejection), Err(field)) => {
                    assert_eq!(rejection.field, *field, "{signals:?}: {rejection}")
                }
                (got, expected) => panic!("{signals:?}: got {got:?}, expected {expected:?}"),
            }
        }
    }

    /// (what, last applied alert time on the instrument, seconds from the alert to `now`,
    /// max age in seconds, the outcome: applied or the refusal's status)
    #[test]
    fn decisions() {
        #[rustfmt::skip]
        let cases: &[(&str, Option<&str>, i64, u64, &str)] = &[
            ("fresh, nothing applied before", None, 1, 300, "applied"),
            ("exactly at the max age", None, 300, 300, "applied"),
            ("past the max age", None, 301, 300, "expired"),
            ("a later alert was applied", Some("2026-11-21T09:00:01Z"), 1, 300, "superseded"),
            ("the same second as the last one", Some("2026-11-21T09:00:00Z"), 1, 300, "applied"),
            ("an earlier alert was applied", Some("2026-11-21T08:59:59Z"), 1, 300, "applied"),
            ("superseded wins over expired", Some("2026-11-21T09:00:01Z"), 9999, 300, "superseded"),
        ];
        let alert = signal(&body("BASE_ENTRY", "long", "22000", "21900", "1", 0));
        for (what, last, age_s, max_age_s, expected) in cases {
            let book = Book {
                open: Vec::new(),
                portfolio: Portfolio::fresh(Decimal::from(1_000_000)),
                latest_recorded_at: last.map(|t| t.parse().unwrap()),
            };
            let now = alert.timestamp + chrono::Duration::seconds(*age_s);
            let max_age = std::time::Duration::from_secs(*max_age_s);
            let got = decide(
                &alert,
                "0000000000000000",
                &nifty(),
                alert.price,
                now,
                max_age,
                &book,
            );
            let status = got.as_ref().map_or_else(Refusal::status, |_| "applied");
            assert_eq!(status, *expected, "{what}: {got:?}");
        }
    }
}
