//! The row codec: stored rows, read as text wherever a value could be damaged, decoded into
//! the domain's types. Every value that does not decode, and every impossible one (lots not
//! positive, an open position carrying an exit), is a problem named by its row and column,
//! so that recovery can list them and a signal's transaction can refuse to build on them.

use super::{PortfolioRow, PositionRow, PyramidingRow};
use crate::domain::{parse_decimal, Portfolio, Position, PositionStatus, Pyramiding};
use chrono::{DateTime, Utc};
use rust_decimal::Decimal;

/// The most problems a receipt lists one by one; the rest are counted. A damaged table can
/// hold a problem per row, and a receipt of 100,000 lines helps nobody.
pub const MAX_LISTED_PROBLEMS: usize = 20;

/// Problems found while decoding, with the first few spelled out.
#[derive(Debug, Default)]
pub struct Problems {
    /// The first [`MAX_LISTED_PROBLEMS`], in the order found.
    listed: Vec<String>,
    /// How many more there were.
    more: usize,
}

impl Problems {
    /// Records `problem`; past [`MAX_LISTED_PROBLEMS`] it is only counted.
    pub fn push(&mut self, problem: String) {
        if self.listed.len() < MAX_LISTED_PROBLEMS {
            self.listed.push(problem);
        } else {
            self.more += 1;
        }
    }

    /// Whether nothing was found.
    pub fn is_empty(&self) -> bool {
        self.listed.is_empty()
    }

    /// The problems listed, `; `-separated, with how many more there were.
    pub fn joined(self) -> String {
        let mut detail = self.listed.join("; ");
        if self.more > 0 {
            detail.push_str(&format!("; and {} more", self.more));
        }
        detail
    }
}

/// What a stored amount must be, besides an exact decimal.
#[derive(Debug, Clone, Copy)]
enum Sign {
    Any,
    Positive,
    NotNegative,
}

/// Decodes `text` at `place`; a value that does not decode is reported once, not again for
/// its sign.
fn amount(problems: &mut Problems, place: &str, text: Option<&str>, sign: Sign) -> Decimal {
    let Some(text) = text else {
        problems.push(format!("{place} is NULL"));
        return Decimal::ZERO;
    };
    let Some(value) = parse_decimal(text) else {
        problems.push(format!("{place} = {text:?} is not an exact decimal number"));
        return Decimal::ZERO;
    };
    match sign {
        Sign::Positive if value <= Decimal::ZERO => {
            problems.push(format!("{place} = {value} is not positive"));
        }
        Sign::NotNegative if value < Decimal::ZERO => {
            problems.push(format!("{place} = {value} is negative"));
        }
        Sign::Any | Sign::Positive | Sign::NotNegative => {}
    }
    value
}

/// Decodes stored rows the way recovery does, for code that reads a few rows at a time
/// (a signal's transaction). Any problem makes the whole read corrupt.
pub fn decode_rows(
    positions: Vec<PositionRow>,
    portfolio: Option<&PortfolioRow>,
) -> Result<(Vec<Position>, Option<Portfolio>), String> {
    let mut problems = Problems::default();
    let portfolio = portfolio.map(|row| decode_portfolio(row, &mut problems));
    let positions = positions
        .into_iter()
        .map(|row| decode_position(row, &mut problems).0)
        .collect();
    if problems.is_empty() {
        Ok((positions, portfolio))
    } else {
        Err(problems.joined())
    }
}

/// Decodes one position row; a closed one also gives its realized P&L. An open row must
/// carry no exit, and a closed one its whole exit: its price, time and P&L.
pub fn decode_position(row: PositionRow, problems: &mut Problems) -> (Position, Option<Decimal>) {
    let at = |column: &str| format!("position {} {column}", row.id);
    let status = match row
        .status
        .as_deref()
        .map(|text| (text, PositionStatus::parse(text)))
    {
        Some((_, Some(status))) => status,
        Some((text, None)) => {
            problems.push(format!("{} = {text:?} is not open or closed", at("status")));
            PositionStatus::Open
        }
        None => {
            problems.push(format!("{} is NULL", at("status")));
            PositionStatus::Open
        }
    };
    let lots = amount(problems, &at("lots"), row.lots.as_deref(), Sign::Positive);
    let entry_price = amount(
        problems,
        &at("entry_price"),
        row.entry_price.as_deref(),
        Sign::Positive,
    );
    let stop_price = amount(
        problems,
        &at("stop_price"),
        row.stop_price.as_deref(),
        Sign::NotNegative,
    );
    let risk_amount = amount(
        problems,
        &at("risk_amount"),
        row.risk_amount.as_deref(),
        Sign::NotNegative,
    );
    let margin = amount(
        problems,
        &at("margin"),
        row.margin.as_deref(),
        Sign::NotNegative,
    );
    let entry_time = timestamp(problems, &at("entry_time"), row.entry_time.as_deref());
    let exit = [
        ("exit_price", &row.exit_price),
        ("exit_time", &row.exit_time),
        ("realized_pnl", &row.realized_pnl),
    ];
    let realized_pnl = match status {
        PositionStatus::Open => {
            for (column, value) in exit {
                if let Some(value) = value {
                    problems.push(format!(
                        "{} = {value:?} is set on an open position",
                        at(column)
                    ));
                }
            }
            None
        }
        PositionStatus::Closed => {
            for (column, value) in exit {
                if value.is_none() {
                    problems.push(format!("{} is missing on a closed position", at(column)));
                }
            }
            if let Some(text) = &row.exit_price {
                amount(problems, &at("exit_price"), Some(text), Sign::Positive);
            }
            if let Some(text) = &row.exit_time {
                timestamp(problems, &at("exit_time"), Some(text));
            }
            Some(row.realized_pnl.as_deref().map_or(Decimal::ZERO, |text| {
                amount(problems, &at("realized_pnl"), Some(text), Sign::Any)
            }))
        }
    };
    let position = Position {
        id: row.id,
        instrument: row.instrument,
        label: row.label,
        status,
        lots,
        entry_price,
        stop_price,
        risk_amount,
        margin,
        is_base_position: row.is_base_position,
        base_position_id: row.base_position_id,
        entry_time,
        version: row.version,
    };
    (position, realized_pnl)
}

fn timestamp(problems: &mut Problems, place: &str, text: Option<&str>) -> DateTime<Utc> {
    let Some(text) = text else {
        problems.push(format!("{place} is NULL"));
        return DateTime::<Utc>::MIN_UTC;
    };
    DateTime::parse_from_rfc3339(text)
        .map(|time| time.with_timezone(&Utc))
        .unwrap_or_else(|_| {
            problems.push(format!("{place} = {text:?} is not a timestamp"));
            DateTime::<Utc>::MIN_UTC
        })
}

pub fn decode_portfolio(row: &PortfolioRow, problems: &mut Problems) -> Portfolio {
    let total_risk = amount(
        problems,
        "portfolio total_risk",
        row.total_risk.as_deref(),
        Sign::NotNegative,
    );
    let margin_used = amount(
        problems,
        "portfolio margin_used",
        row.margin_used.as_deref(),
        Sign::NotNegative,
    );
    Portfolio {
        initial_capital: amount(
            problems,
            "portfolio initial_capital",
            row.initial_capital.as_deref(),
            Sign::Any,
        ),
        closed_equity: amount(
            problems,
            "portfolio closed_equity",
            row.closed_equity.as_deref(),
            Sign::Any,
        ),
        total_risk,
        margin_used,
        version: row.version,
    }
}

pub fn decode_pyramiding(row: &PyramidingRow, problems: &mut Problems) -> Pyramiding {
    let place = format!("pyramiding {} last_pyramid_price", row.instrument);
    let last_pyramid_price = amount(
        problems,
        &place,
        row.last_pyramid_price.as_deref(),
        Sign::NotNegative,
    );
    Pyramiding {
        instrument: row.instrument.clone(),
        last_pyramid_price,
        base_position_id: row.base_position_id.clone(),
    }
}
