//! What a signal changes, decided from what the signal's transaction read. Pure: the store
//! reads the [`Book`], calls [`plan`], and writes the [`Plan`] in the same transaction, so
//! positions, totals and pyramiding state always change together.

use super::Signal;
use crate::domain::{Instrument, Portfolio, Position, PositionStatus, Pyramiding};
use crate::vocabulary::SignalType;
use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde::Serialize;

/// Decimal places kept in risk, margin and P&L. Every stored amount has at most this many,
/// so totals are exact sums that never run out of digits.
pub const MONEY_DECIMAL_PLACES: u32 = 8;

/// Rounds an amount to [`MONEY_DECIMAL_PLACES`], half away from zero.
fn money(amount: Decimal) -> Decimal {
    amount
        .round_dp_with_strategy(
            MONEY_DECIMAL_PLACES,
            rust_decimal::RoundingStrategy::MidpointAwayFromZero,
        )
        .normalize()
}

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
                .map(money)
                .ok_or_else(too_large)?;
            let margin = instrument.margin(lots).map(money).ok_or_else(too_large)?;
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
                let realized_pnl = fill_price
                    .checked_sub(position.entry_price)
                    .and_then(|move_| move_.checked_mul(position.lots))
                    .and_then(|pnl| pnl.checked_mul(instrument.point_value))
                    .map(money)
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
