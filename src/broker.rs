//! The broker port: where orders are executed. The embedded default is a paper broker that
//! fills at the signal's price. A real adapter (for example an OpenAlgo REST client) goes
//! behind the same trait, using [`Order::client_order_id`] so that a resent order is
//! recognised by the broker, and reconciles its positions with vigil's at recovery.

use crate::vocabulary::SignalType;
use rust_decimal::Decimal;
use std::future::Future;

/// An order derived from a signal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Order {
    /// Derived from the signal's fingerprint: the same signal always makes the same id.
    pub client_order_id: String,
    /// Entry or exit.
    pub kind: SignalType,
    /// The instrument.
    pub instrument: String,
    /// Lots to buy (entries); exits close what is open.
    pub lots: Option<Decimal>,
    /// The signal's price.
    pub price: Decimal,
}

/// An execution.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fill {
    /// The price filled at.
    pub price: Decimal,
}

/// Why an order was not executed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("broker unavailable: {0}")]
pub struct BrokerError(pub String);

/// Executes orders.
pub trait Broker {
    /// Executes `order`.
    fn execute(&self, order: &Order) -> impl Future<Output = Result<Fill, BrokerError>> + Send;
}

/// Fills every order at once at the signal's price.
#[derive(Debug, Clone, Copy, Default)]
pub struct PaperBroker;

impl Broker for PaperBroker {
    async fn execute(&self, order: &Order) -> Result<Fill, BrokerError> {
        Ok(Fill { price: order.price })
    }
}
