//! The broker port: where orders are executed. The embedded default is a paper broker that
//! fills at the signal's price. A real adapter (for example an OpenAlgo REST client) goes
//! behind the same trait, using [`Order::client_order_id`] so that a resent order is
//! recognised by the broker, and reconciles its positions with vigil's at recovery.
//!
//! The port is a trait object (`Arc<dyn Broker>`): the HTTP layer executes orders through
//! it, the executor's probe asks its health, and tests inject one that fails, hangs or
//! recovers on cue.

use crate::vocabulary::SignalType;
use rust_decimal::Decimal;
use std::fmt;
use std::future::Future;
use std::pin::Pin;

/// A boxed future, so the port can be a trait object.
pub type BrokerFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

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

/// Why an order was not executed, or why the broker does not answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("broker unavailable: {0}")]
pub struct BrokerError(pub String);

/// Executes orders.
pub trait Broker: Send + Sync + fmt::Debug {
    /// Executes `order`.
    fn execute<'a>(&'a self, order: &'a Order) -> BrokerFuture<'a, Result<Fill, BrokerError>>;

    /// Whether the broker answers now: the probe that ends a `broker_unavailable`.
    fn health(&self) -> BrokerFuture<'_, Result<(), BrokerError>>;
}

/// Fills every order at once at the signal's price.
#[derive(Debug, Clone, Copy, Default)]
pub struct PaperBroker;

impl Broker for PaperBroker {
    fn execute<'a>(&'a self, order: &'a Order) -> BrokerFuture<'a, Result<Fill, BrokerError>> {
        Box::pin(async move { Ok(Fill { price: order.price }) })
    }

    fn health(&self) -> BrokerFuture<'_, Result<(), BrokerError>> {
        Box::pin(async { Ok(()) })
    }
}
