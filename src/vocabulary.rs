//! The words every part of vigil shares: the kinds of failure a policy answers and the
//! kinds of trading signal a degraded instance may still accept.

use serde::{Deserialize, Serialize};
use std::fmt;

/// A class of failure that a policy file chooses a response for.
///
/// The names are the error codes operators know (`DB_UNAVAILABLE` is `db_unavailable`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureKind {
    /// The database refused or timed out a connection, or its pool is exhausted.
    DbUnavailable,
    /// Stored state cannot be decoded or holds impossible values.
    DataCorrupt,
    /// Stored state decodes but fails a consistency check.
    ValidationFailed,
    /// Redis, used for coordination between instances, does not answer.
    RedisUnavailable,
    /// The broker that executes orders does not answer.
    BrokerUnavailable,
    /// Anything not classified above.
    Unexpected,
}

impl FailureKind {
    /// Every kind, in the order policies and reports list them.
    pub const ALL: [FailureKind; 6] = [
        FailureKind::DbUnavailable,
        FailureKind::DataCorrupt,
        FailureKind::ValidationFailed,
        FailureKind::RedisUnavailable,
        FailureKind::BrokerUnavailable,
        FailureKind::Unexpected,
    ];

    /// The name used in policy files, events and log fields.
    pub const fn as_str(self) -> &'static str {
        match self {
            FailureKind::DbUnavailable => "db_unavailable",
            FailureKind::DataCorrupt => "data_corrupt",
            FailureKind::ValidationFailed => "validation_failed",
            FailureKind::RedisUnavailable => "redis_unavailable",
            FailureKind::BrokerUnavailable => "broker_unavailable",
            FailureKind::Unexpected => "unexpected",
        }
    }

    /// The error code operators see in alerts and receipts.
    pub const fn code(self) -> &'static str {
        match self {
            FailureKind::DbUnavailable => "DB_UNAVAILABLE",
            FailureKind::DataCorrupt => "DATA_CORRUPT",
            FailureKind::ValidationFailed => "VALIDATION_FAILED",
            FailureKind::RedisUnavailable => "REDIS_UNAVAILABLE",
            FailureKind::BrokerUnavailable => "BROKER_UNAVAILABLE",
            FailureKind::Unexpected => "UNEXPECTED",
        }
    }

    /// Position of this kind in [`FailureKind::ALL`], for fixed-size tables.
    pub const fn index(self) -> usize {
        self as usize
    }

    /// Whether the instance must run recovery again before it serves normally once this
    /// failure clears. Losing the database, or finding its state wrong, means the in-memory
    /// state may be stale; losing Redis or the broker does not touch stored positions.
    pub const fn needs_recovery(self) -> bool {
        matches!(
            self,
            FailureKind::DbUnavailable
                | FailureKind::DataCorrupt
                | FailureKind::ValidationFailed
                | FailureKind::Unexpected
        )
    }

    /// Whether this failure is only ever found by a recovery that read every stored position
    /// (a consistency check failed), so the positions are known while it is tolerated and
    /// what the policy accepts for it can be honoured from the start.
    pub const fn found_with_positions_read(self) -> bool {
        matches!(self, FailureKind::ValidationFailed)
    }

    /// Whether something besides this kind's probe reports the dependency's return while the
    /// instance serves: Redis's heartbeat does, so it may hear Redis back before a pending
    /// retry is due. The database and the broker are only heard back from by their probe
    /// (a retry, or a watch while tolerated).
    pub const fn return_heard_by_heartbeat(self) -> bool {
        matches!(self, FailureKind::RedisUnavailable)
    }

    /// Looks a kind up by its policy-file name.
    pub fn parse(name: &str) -> Option<FailureKind> {
        FailureKind::ALL
            .into_iter()
            .find(|kind| kind.as_str() == name)
    }
}

impl fmt::Display for FailureKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A TradingView alert's signal type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum SignalType {
    /// Opens the base position of an instrument.
    #[serde(rename = "BASE_ENTRY")]
    BaseEntry,
    /// Adds a position linked to the open base.
    #[serde(rename = "PYRAMID")]
    Pyramid,
    /// Closes the instrument's positions.
    #[serde(rename = "EXIT")]
    Exit,
}

impl SignalType {
    /// Every signal type.
    pub const ALL: [SignalType; 3] = [SignalType::BaseEntry, SignalType::Pyramid, SignalType::Exit];

    /// The name TradingView alerts and policy files use.
    pub const fn as_str(self) -> &'static str {
        match self {
            SignalType::BaseEntry => "BASE_ENTRY",
            SignalType::Pyramid => "PYRAMID",
            SignalType::Exit => "EXIT",
        }
    }

    /// Looks a signal type up by name.
    pub fn parse(name: &str) -> Option<SignalType> {
        SignalType::ALL
            .into_iter()
            .find(|signal| signal.as_str() == name)
    }

    const fn bit(self) -> u8 {
        1 << (self as u8)
    }
}

impl fmt::Display for SignalType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A set of signal types, small enough to copy into every effect.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct SignalSet(u8);

impl SignalSet {
    /// No signal is accepted.
    pub const NONE: SignalSet = SignalSet(0);
    /// Every signal is accepted.
    pub const ALL: SignalSet = SignalSet(0b111);

    /// Adds one signal type.
    #[must_use]
    pub const fn with(self, signal: SignalType) -> SignalSet {
        SignalSet(self.0 | signal.bit())
    }

    /// Whether `signal` is in the set.
    pub const fn contains(self, signal: SignalType) -> bool {
        self.0 & signal.bit() != 0
    }

    /// The signal types in both sets.
    #[must_use]
    pub const fn intersect(self, other: SignalSet) -> SignalSet {
        SignalSet(self.0 & other.0)
    }

    /// The members, in [`SignalType::ALL`] order.
    pub fn iter(self) -> impl Iterator<Item = SignalType> {
        SignalType::ALL
            .into_iter()
            .filter(move |signal| self.contains(*signal))
    }
}

impl FromIterator<SignalType> for SignalSet {
    fn from_iter<I: IntoIterator<Item = SignalType>>(iter: I) -> Self {
        iter.into_iter().fold(SignalSet::NONE, SignalSet::with)
    }
}

impl fmt::Display for SignalSet {
    /// Renders `none`, or the members joined by `+`, so log fields stay one token.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if *self == SignalSet::NONE {
            return f.write_str("none");
        }
        let names: Vec<&str> = self.iter().map(SignalType::as_str).collect();
        f.write_str(&names.join("+"))
    }
}

impl Serialize for SignalSet {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(self.iter())
    }
}
