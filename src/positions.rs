//! The open-positions listing: one page, shown by `GET /positions` as JSON and by
//! `vigil positions` as JSON or a table. Pure: the caller reads the positions.

use crate::domain::Position;
use crate::domain::{counted, Money};
use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde::Serialize;

/// What `GET /positions` answers and `vigil positions --format json` prints.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PositionsPage {
    /// The open positions, by instrument and entry time.
    pub positions: Vec<PositionView>,
    /// Whether more are open than [`crate::store::MAX_LISTED_POSITIONS`], the most one page
    /// lists.
    pub truncated: bool,
}

/// One open position as an operator reads it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PositionView {
    /// Its id, as the database holds it.
    pub id: String,
    /// The instrument traded.
    pub instrument: String,
    /// The TradingView position label.
    pub label: String,
    /// `long`: vigil trades long positions only.
    pub side: &'static str,
    /// `base`, or `pyramid` for an addition to the base.
    pub kind: &'static str,
    /// Size in lots.
    pub lots: Decimal,
    /// Fill price.
    pub entry_price: Decimal,
    /// Protective stop.
    pub stop_price: Decimal,
    /// What the position risks down to its stop, in account currency.
    pub risk: Decimal,
    /// The margin it holds, in account currency.
    pub margin: Decimal,
    /// When it was opened.
    pub entry_time: DateTime<Utc>,
    /// For a pyramid, the base it adds to.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub base_position_id: Option<String>,
}

impl PositionsPage {
    /// The page of `positions`; `truncated` when more are open than it lists.
    pub fn new(positions: Vec<Position>, truncated: bool) -> PositionsPage {
        PositionsPage {
            positions: positions.into_iter().map(PositionView::from).collect(),
            truncated,
        }
    }

    /// The page as a table, one position per line, with the totals at the end.
    pub fn text(&self) -> String {
        let mut text = format!(
            "{:<12} {:<12} {:<5} {:<8} {:>8} {:>14} {:>14} {:>16} {:>16}  {}\n",
            "INSTRUMENT",
            "LABEL",
            "SIDE",
            "KIND",
            "LOTS",
            "ENTRY",
            "STOP",
            "RISK",
            "MARGIN",
            "OPENED"
        );
        for view in &self.positions {
            text.push_str(&format!(
                "{:<12} {:<12} {:<5} {:<8} {:>8} {:>14} {:>14} {:>16} {:>16}  {}\n",
                view.instrument,
                view.label,
                view.side,
                view.kind,
                view.lots.normalize().to_string(),
                view.entry_price.normalize().to_string(),
                view.stop_price.normalize().to_string(),
                Money(view.risk).to_string(),
                Money(view.margin).to_string(),
                view.entry_time
                    .to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            ));
        }
        let count = self.positions.len();
        match (count, self.truncated) {
            (0, _) => text.push_str("(no open positions)\n"),
            (_, false) => text.push_str(&format!("{} open\n", counted(count, "position"))),
            (_, true) => text.push_str(&format!(
                "the first {} open; more are open than one listing shows\n",
                counted(count, "position")
            )),
        }
        text
    }
}

impl From<Position> for PositionView {
    fn from(position: Position) -> PositionView {
        PositionView {
            id: position.id,
            instrument: position.instrument,
            label: position.label,
            side: "long",
            kind: if position.is_base_position {
                "base"
            } else {
                "pyramid"
            },
            lots: position.lots,
            entry_price: position.entry_price,
            stop_price: position.stop_price,
            risk: position.risk_amount,
            margin: position.margin,
            entry_time: position.entry_time,
            base_position_id: position.base_position_id,
        }
    }
}
