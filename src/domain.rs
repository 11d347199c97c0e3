//! Positions, portfolio totals and pyramiding state, with money as exact decimals.

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde::Serialize;

/// Whether a position is still held.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PositionStatus {
    /// Held: counts towards total risk and margin used.
    Open,
    /// Exited: its realized P&L is in closed equity.
    Closed,
}

impl PositionStatus {
    /// The name stored in the database.
    pub const fn as_str(self) -> &'static str {
        match self {
            PositionStatus::Open => "open",
            PositionStatus::Closed => "closed",
        }
    }

    /// Looks a status up by its stored name.
    pub fn parse(name: &str) -> Option<PositionStatus> {
        match name {
            "open" => Some(PositionStatus::Open),
            "closed" => Some(PositionStatus::Closed),
            _ => None,
        }
    }
}

/// One position: a base entry or a pyramid on an instrument.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Position {
    /// Unique id.
    pub id: String,
    /// The instrument traded.
    pub instrument: String,
    /// The TradingView position label.
    pub label: String,
    /// Open or closed.
    pub status: PositionStatus,
    /// Size in lots; always positive.
    pub lots: Decimal,
    /// Fill price.
    pub entry_price: Decimal,
    /// Protective stop.
    pub stop_price: Decimal,
    /// |entry − stop| × lots × point value, in account currency.
    pub risk_amount: Decimal,
    /// lots × margin per lot, in account currency.
    pub margin: Decimal,
    /// Whether this is the instrument's base position (pyramids hang off it).
    pub is_base_position: bool,
    /// For a pyramid, its base position; `None` for a base, or once the base row is deleted.
    pub base_position_id: Option<String>,
    /// When the position was opened.
    pub entry_time: DateTime<Utc>,
    /// Optimistic-concurrency version, bumped on every write.
    pub version: i64,
}

/// The portfolio totals, kept in step with the open positions in one transaction per signal.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Portfolio {
    /// Capital the account started with.
    pub initial_capital: Decimal,
    /// Initial capital plus all realized P&L.
    pub closed_equity: Decimal,
    /// Sum of the open positions' risk.
    pub total_risk: Decimal,
    /// Sum of the open positions' margin.
    pub margin_used: Decimal,
    /// Optimistic-concurrency version, bumped on every write.
    pub version: i64,
}

impl Portfolio {
    /// A new account with no positions.
    pub fn fresh(initial_capital: Decimal) -> Portfolio {
        Portfolio {
            initial_capital,
            closed_equity: initial_capital,
            total_risk: Decimal::ZERO,
            margin_used: Decimal::ZERO,
            version: 0,
        }
    }
}

/// Pyramiding state of one instrument.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Pyramiding {
    /// The instrument.
    pub instrument: String,
    /// Price of the last pyramid added.
    pub last_pyramid_price: Decimal,
    /// The base position pyramids are added to.
    pub base_position_id: Option<String>,
}

/// Contract terms of an instrument, from the deployment file.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Instrument {
    /// Units per lot.
    pub lot_size: Decimal,
    /// Account currency per point of price movement per lot.
    pub point_value: Decimal,
    /// Margin blocked per lot, in account currency.
    pub margin_per_lot: Decimal,
    /// Whether sizes such as 1.5 lots are traded. Exchange-traded futures trade whole lots;
    /// an alert for a fraction of one is a broken template, and is refused.
    pub fractional_lots: bool,
}

/// Decimal places kept in risk, margin and P&L. Every stored amount has at most this many,
/// so totals are exact sums that never run out of digits, and recovery recomputes exactly
/// what was stored.
pub const MONEY_DECIMAL_PLACES: u32 = 8;

/// Rounds an amount to [`MONEY_DECIMAL_PLACES`], half away from zero.
pub fn money(amount: Decimal) -> Decimal {
    amount
        .round_dp_with_strategy(
            MONEY_DECIMAL_PLACES,
            rust_decimal::RoundingStrategy::MidpointAwayFromZero,
        )
        .normalize()
}

impl Instrument {
    /// |entry − stop| × lots × point value, as [`money`]; `None` if it does not fit in a
    /// decimal.
    pub fn risk(&self, entry: Decimal, stop: Decimal, lots: Decimal) -> Option<Decimal> {
        let risk = entry
            .checked_sub(stop)?
            .abs()
            .checked_mul(lots)?
            .checked_mul(self.point_value)?;
        Some(money(risk))
    }

    /// lots × margin per lot, as [`money`]; `None` if it does not fit in a decimal.
    pub fn margin(&self, lots: Decimal) -> Option<Decimal> {
        lots.checked_mul(self.margin_per_lot).map(money)
    }

    /// (exit − entry) × lots × point value of a long position, as [`money`]; `None` if it
    /// does not fit in a decimal.
    pub fn realized_pnl(&self, entry: Decimal, exit: Decimal, lots: Decimal) -> Option<Decimal> {
        let pnl = exit
            .checked_sub(entry)?
            .checked_mul(lots)?
            .checked_mul(self.point_value)?;
        Some(money(pnl))
    }
}

/// The instruments a deployment trades when its file lists none, so that a bare `vigil run`
/// accepts signals: NIFTY and BANKNIFTY index futures.
pub fn default_instruments() -> std::collections::BTreeMap<String, Instrument> {
    let terms = |lot_size: i64, margin_per_lot: i64| Instrument {
        lot_size: Decimal::from(lot_size),
        point_value: Decimal::from(lot_size),
        margin_per_lot: Decimal::from(margin_per_lot),
        fractional_lots: false,
    };
    std::collections::BTreeMap::from([
        ("NIFTY".to_string(), terms(75, 150_000)),
        ("BANKNIFTY".to_string(), terms(35, 160_000)),
    ])
}

/// Parses a stored or configured decimal exactly: plain digits with an optional sign and
/// point, no padding, no separators, and no digits beyond what a decimal holds (a value that
/// would be rounded is refused, not rounded).
pub fn parse_decimal(text: &str) -> Option<Decimal> {
    if text.is_empty()
        || text.contains(|c: char| !(c.is_ascii_digit() || c == '.' || c == '-' || c == '+'))
    {
        return None;
    }
    Decimal::from_str_exact(text).ok()
}

/// Adds amounts, or `None` if the sum does not fit in a decimal.
pub fn checked_sum(amounts: impl IntoIterator<Item = Decimal>) -> Option<Decimal> {
    amounts
        .into_iter()
        .try_fold(Decimal::ZERO, Decimal::checked_add)
}

/// An amount as receipts and listings show it: without trailing zeros beyond the cents, so that a stored
/// `14500.00` and a sum of `14500.0` read alike.
#[derive(Debug, Clone, Copy)]
pub struct Money(pub Decimal);

impl std::fmt::Display for Money {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut amount = self.0.normalize();
        if amount.scale() < 2 {
            amount.rescale(2);
        }
        write!(f, "{amount}")
    }
}

/// `1 pyramid`, `2 pyramids`: a count with its noun.
pub fn counted(count: usize, noun: &str) -> String {
    match count {
        1 => format!("1 {noun}"),
        many => format!("{many} {noun}s"),
    }
}

#[cfg(test)]
mod tests {
    use super::Money;
    use rust_decimal::Decimal;

    #[test]
    fn amounts_are_shown_in_one_scale() {
        for (amount, shown) in [
            ("14500.00", "14500.00"),
            ("14500.0", "14500.00"),
            ("0", "0.00"),
            ("7999368.0555510", "7999368.055551"),
            ("-985499.990", "-985499.99"),
            ("0.00000001", "0.00000001"),
        ] {
            let amount: Decimal = amount.parse().unwrap_or_default();
            assert_eq!(Money(amount).to_string(), shown);
        }
    }
}
